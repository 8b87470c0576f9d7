"""Linux inotify through libc: learn that a file was written the moment it is, without polling.

The pod agent reads what a pod VM's init reports (its event and output logs,
which QEMU writes as the guest sends them) as soon as QEMU writes it: one
``Inotify`` watches the directory of every running pod VM, and ``wait()``
returns the directories written since the last call. ``wake()`` ends a wait
early from another thread (a new pod VM to watch).

Only what the standard library lacks is here: the three system calls
(``inotify_init1``, ``inotify_add_watch``, ``inotify_rm_watch``) and the
parsing of ``struct inotify_event``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import select
import struct
from pathlib import Path

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_IGNORED = 0x00008000  # the watch was removed (explicitly, or its directory went away)
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class Inotify:
    """Watches on directories; ``wait()`` says which were written to."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _os_error("inotify_init1")
        self.fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._paths: dict[int, Path] = {}

    def add(self, directory: Path, mask: int = IN_MODIFY | IN_CLOSE_WRITE) -> int:
        """Watch ``directory`` (not following a symlink); returns the watch descriptor."""
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(directory), mask | 0x02000000)  # DONT_FOLLOW
        if wd < 0:
            raise _os_error(f"inotify_add_watch {directory}")
        self._paths[wd] = Path(directory)
        return wd

    def remove(self, wd: int) -> None:
        """Stop watching (nothing happens when the watch is already gone)."""
        if self._paths.pop(wd, None) is not None:
            _libc.inotify_rm_watch(self.fd, wd)

    def wake(self) -> None:
        """End a ``wait()`` in another thread at once."""
        # BlockingIOError: a wake-up is already pending; OSError: closed meanwhile.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def wait(self, timeout: float) -> tuple[set[Path], bool]:
        """Directories written to since the last call (within ``timeout`` seconds), and
        whether events were lost (the kernel's queue overflowed: look at everything)."""
        ready, _, _ = select.select([self.fd, self._wake_r], [], [], timeout)
        if self._wake_r in ready:
            while True:
                try:
                    if not os.read(self._wake_r, 4096):
                        break
                except BlockingIOError:
                    break
        written: set[Path] = set()
        overflow = False
        while self.fd in ready:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                break
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, pos)
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                elif mask & IN_IGNORED:
                    self._paths.pop(wd, None)
                elif wd in self._paths:
                    written.add(self._paths[wd])
        return written, overflow

    def close(self) -> None:
        fds, self.fd, self._wake_r, self._wake_w = (self.fd, self._wake_r, self._wake_w), -1, -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        self._paths.clear()

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _os_error(what: str) -> OSError:
    code = ctypes.get_errno() or errno.EIO
    return OSError(code, f"{what}: {os.strerror(code)}")
