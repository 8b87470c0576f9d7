"""appliance.errors.disk_full: which failures mean "the state disk is full"."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from appliance.errors import disk_full


class PgError(Exception):
    """What psycopg raises for SQLSTATE 53100 (disk_full), without needing a server."""

    sqlstate = "53100"


def _wrapped(orig: BaseException) -> BaseException:
    return sa_exc.OperationalError("INSERT INTO objects ...", {}, orig)


def _raised_from(cause: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    sqlite3.OperationalError("database or disk is full"),
    _wrapped(sqlite3.OperationalError("database or disk is full")),
    _wrapped(PgError("could not extend file: No space left on device")),
    _raised_from(OSError(errno.ENOSPC, "No space left on device")),
])
def test_a_full_disk_is_recognised(exc: BaseException) -> None:
    assert disk_full(exc)


@pytest.mark.parametrize("exc", [
    None,
    OSError(errno.EACCES, "Permission denied"),
    sqlite3.OperationalError("database is locked"),
    _wrapped(sqlite3.OperationalError("no such table: objects")),
    ValueError("database or disk is full"),  # the words alone, in the wrong error
])
def test_other_failures_are_not(exc: BaseException | None) -> None:
    assert not disk_full(exc)
