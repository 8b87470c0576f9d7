"""The pod VM's scratch disk: a sparse raw file formatted ext4 on the host.

It holds every container's writable layer (overlayfs upper/work) and the
disk-backed emptyDirs. It lives as long as the pod, so it needs no journal
(a crash loses the pod anyway); ``lazy_itable_init=0`` on a sparse file
costs nothing (mke2fs zeroes by punching holes) and spares the guest the
lazy-init thread. Measured here: ~10 ms for 1 GiB or 10 GiB, ~0.7/4.3 MiB
allocated.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypervisor.proc import run

MKFS = "mkfs.ext4"
MKFS_OPTIONS = ("-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=0",
                "-L", "pod-scratch")
MIN_SIZE = 16 * 1024 * 1024


def create_scratch_disk(path: Path, size_bytes: int) -> Path:
    """Make ``path`` a sparse ext4 image of ``size_bytes`` (mode 0600); return ``path``.

    An existing file is replaced: a scratch disk is never reused.
    """
    if size_bytes < MIN_SIZE:
        raise ValueError(f"scratch disk must be at least {MIN_SIZE} bytes, not {size_bytes}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size_bytes - size_bytes % 4096)
    finally:
        os.close(fd)
    try:
        run([MKFS, *MKFS_OPTIONS, str(tmp)], timeout=120)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
