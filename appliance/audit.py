"""The audit log: who did what, in Kubernetes' own format.

One ``audit.k8s.io/v1`` ``Event`` per request, as a JSON line, at the ``Metadata`` level
(who, from where, which verb on which object, and the answer's code; never a request or
response body, so never a Secret's data, a token or a password), stage
``ResponseComplete``. Written by the API for every request but the health checks, by the
dashboard for every page and form, and by the CLI for its writes (``lab user``, ``lab
grant``), into ``<state>/logs/audit.log``. The file rotates at ``MAX_BYTES`` into
``audit.log.1`` … ``audit.log.<KEEP>``.

Several processes append to the file (the host service, the CLI): each line is one
``write`` on a descriptor opened with ``O_APPEND``, and rotation happens under an
``flock`` on ``audit.log.lock``; a writer whose file was rotated away opens the new one.
``lab audit`` reads it back with filters, or follows it (``-f``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

FILE_NAME = "audit.log"
MAX_BYTES = 64 * 2**20
KEEP = 5
#: Requests not worth a line: the load balancer's and the tests' health probes.
UNAUDITED_PATHS = frozenset({"/healthz", "/livez", "/readyz"})


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Request:
    """What one request was, filled in as the request is understood."""

    uri: str
    method: str
    source: str
    user_agent: str = ""
    user: str = ""
    groups: tuple[str, ...] = ()
    verb: str = ""
    resource: str = ""
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    client: str = ""  # "dashboard", "cli"; empty for the API
    received: str = ""

    def __post_init__(self) -> None:
        self.received = self.received or now()

    def event(self, code: int) -> dict[str, Any]:
        event: dict[str, Any] = {
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": str(uuid.uuid4()), "stage": "ResponseComplete",
            "requestURI": self.uri[:2048], "verb": self.verb or self.method.lower(),
            "user": {"username": self.user or "system:anonymous",
                     **({"groups": list(self.groups)} if self.groups else {})},
            "sourceIPs": [self.source] if self.source else [],
            "userAgent": self.user_agent[:256],
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": self.received, "stageTimestamp": now(),
        }
        if self.resource:
            ref = {"resource": self.resource, "namespace": self.namespace, "name": self.name,
                   "apiGroup": self.api_group, "apiVersion": self.api_version,
                   "subresource": self.subresource}
            event["objectRef"] = {k: v for k, v in ref.items() if v}
        if self.client:
            event["annotations"] = {"pacific.lab/client": self.client}
        return event


def api_verb(method: str, collection: bool, watch: bool) -> str:
    """kube-apiserver's verb for a resource request."""
    if method in ("GET", "HEAD"):
        return "watch" if watch else "list" if collection else "get"
    if method == "DELETE":
        return "deletecollection" if collection else "delete"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


class AuditLog:
    """Appends Events to ``<log_dir>/audit.log``, rotating it."""

    def __init__(self, log_dir: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        self.path = log_dir / FILE_NAME
        self.max_bytes, self.keep = max_bytes, keep
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None

    def write(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n").encode()
        try:
            with self._lock:
                fd = self._open()
                size = os.fstat(fd).st_size
                if size and size + len(line) > self.max_bytes:
                    self._rotate(len(line))
                    fd = self._open()
                os.write(fd, line)
        except OSError as exc:  # the request has been answered; say so, once per failure
            LOG.warning("cannot write the audit log %s: %s", self.path, exc)

    def _open(self) -> int:
        try:
            st = os.stat(self.path, follow_symlinks=False)
            current: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if self._fd is not None and current == self._inode:
            return self._fd
        self.close()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW |
                     os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        self._fd, self._inode = fd, (st.st_dev, st.st_ino)
        return fd

    def _rotate(self, adding: int) -> None:
        lock = os.open(self.path.with_name(FILE_NAME + ".lock"),
                       os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            st = os.stat(self.path, follow_symlinks=False)
            if st.st_size + adding <= self.max_bytes:
                return  # another writer rotated it meanwhile
            for n in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{FILE_NAME}.{n}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{FILE_NAME}.{n + 1}"))
            os.replace(self.path, self.path.with_name(f"{FILE_NAME}.1"))
        finally:
            os.close(lock)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = self._inode = None


# -- reading it back (``lab audit``) ------------------------------------------------------


def files(log_dir: Path, keep: int = KEEP) -> list[Path]:
    """The audit log's files, oldest first."""
    path = log_dir / FILE_NAME
    rotated = [path.with_name(f"{FILE_NAME}.{n}") for n in range(keep, 0, -1)]
    return [p for p in [*rotated, path] if p.is_file() and not p.is_symlink()]


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("kind") == "Event":
            yield event


def matches(event: dict[str, Any], user: str = "", namespace: str = "") -> bool:
    if user and event.get("user", {}).get("username") != user:
        return False
    return not namespace or event.get("objectRef", {}).get("namespace") == namespace


def describe(event: dict[str, Any]) -> str:
    """One line for a person: time, user, source, verb, object, code."""
    ref = event.get("objectRef") or {}
    what = ref.get("resource", "")
    if ref.get("subresource"):
        what += "/" + ref["subresource"]
    if ref.get("apiGroup"):
        what += "." + ref["apiGroup"]
    target = "/".join(p for p in (ref.get("namespace", ""), ref.get("name", "")) if p)
    obj = f"{what} {target}".strip() or event.get("requestURI", "")
    client = (event.get("annotations") or {}).get("pacific.lab/client", "api")
    return (f"{event.get('stageTimestamp', '')[:23]}  {event['user'].get('username', '?')}  "
            f"{','.join(event.get('sourceIPs') or ['-'])}  {client}  {event.get('verb', '')}  "
            f"{obj}  {event.get('responseStatus', {}).get('code', '')}")


def follow(path: Path, poll: float = 0.5) -> Iterator[str]:
    """Lines appended to ``path`` from now on, across rotations (``tail -F``)."""
    handle = None
    inode = None
    while True:
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) != inode:
            if handle is not None:
                yield from handle  # what the old file got before it was rotated
                handle.close()
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            handle = os.fdopen(fd, "r", errors="replace")
            if inode is None:
                handle.seek(0, os.SEEK_END)
            inode = (st.st_dev, st.st_ino)
        if handle is not None:
            yield from handle
        time.sleep(poll)
