"""Open watches are capped (``LAB_MAX_WATCHES``, 256 by default): a watch holds a worker
thread while it is open, and beyond the cap the API answers 429 with ``Retry-After``
instead of letting watches take every thread (issue 17: ``benchmarks/burst.py`` found 100
watches holding all 96 threads of the time)."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest
import requests

from tests.support.server import LabServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.api

CAP = 12  # the lab's own agents hold a few watches too


def _abort(resp: requests.Response) -> None:
    """Close a watch with a reset, as a client that died would: the server's next
    bookmark fails then, not the one after (a closed socket takes one more write)."""
    sock = resp.raw.connection.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    resp.close()


def test_watches_beyond_the_cap_get_429_and_requests_still_answer(tmp_path: Path) -> None:
    lab = LabServer(tmp_path / "state", extra_env={"LAB_MAX_WATCHES": str(CAP)})
    lab.start()
    try:
        session = requests.Session()
        session.trust_env = False
        session.verify = lab.ca_file
        session.headers["Authorization"] = f"Bearer {lab.admin_token()}"
        url = lab.url + "/api/v1/namespaces/default/configmaps"
        opened: list[requests.Response] = []
        refused: list[requests.Response] = []
        lock = threading.Lock()

        def one_more() -> None:
            # Long enough that no watch of the test ends (and frees its slot for a late
            # one) before all are counted, however slow the machine; with bookmarks, so
            # the server writes now and then and notices when the test closes them.
            resp = requests.get(url, params={"watch": "true", "timeoutSeconds": "300",
                                             "allowWatchBookmarks": "true"},
                                headers=dict(session.headers), verify=lab.ca_file,
                                stream=True, timeout=60)
            with lock:
                (refused if resp.status_code == 429 else opened).append(resp)

        # All at once: a watch's answer can take a few seconds to start.
        for _ in range(CAP + 4):
            threading.Thread(target=one_more, daemon=True).start()
        wait_for("every watch to be answered or refused",
                 lambda: len(opened) + len(refused) == CAP + 4, 60, 0.2,
                 describe=lambda: f"{len(opened)} open, {len(refused)} refused")
        assert refused and len(opened) <= CAP
        assert all(r.status_code == 200 for r in opened)
        over = refused[0]
        assert over.headers["Retry-After"] == "1"
        assert over.json()["reason"] == "TooManyRequests"
        assert session.get(url, timeout=30).status_code == 200  # a list still answers
        for resp in opened:
            _abort(resp)

        def accepted() -> bool:
            r = session.get(url, params={"watch": "true", "timeoutSeconds": "1"}, timeout=30)
            return r.status_code == 200

        wait_for("a watch to be accepted once others closed", accepted, 60, 0.5)
    finally:
        lab.stop()
