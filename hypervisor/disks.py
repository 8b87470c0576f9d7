"""Disks: directory-backed libvirt storage pools under the state directory.

One pool per purpose (``pacific-vms`` at ``<state_dir>/vms``, ...), created,
started and marked autostart idempotently through libvirt. VM disks are qcow2
overlays (linked clones) on a base image, made by libvirt's storage driver
(``qemu-img create -f qcow2 -b BASE -F FMT``) and grown, never shrunk, to the
requested size.

Every path handled here lies under the state directory given to
``DiskStore``; volume and pool names are single path components (no ``/``,
no ``..``). Files this module writes itself are opened with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt

from hypervisor.domain import render_template
from hypervisor.libvirt_driver import HypervisorError, LibvirtDriver, StorageNotFound, error_code
from hypervisor.proc import ProcessError, run

LOG = logging.getLogger(__name__)

POOL_TEMPLATE = "libvirt/pool.xml.j2"
VOLUME_TEMPLATE = "libvirt/volume.xml.j2"
POOL_DIR_MODE = 0o711  # QEMU runs as its own user: it must reach the files by path
VOLUME_MODE = "0600"
BACKING_FORMATS = ("qcow2", "raw")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")


class VolumeConflict(HypervisorError):
    """A volume of that name exists but is not what was asked for (e.g. another backing file)."""


def check_name(name: str, what: str = "volume name") -> str:
    """A pool/volume/file name: one path component, no '..', no leading dot."""
    if not _NAME_RE.match(name) or ".." in name:
        raise ValueError(f"bad {what} {name!r}: letters, digits and _.+- only, one path component")
    return name


@dataclass(frozen=True)
class VolumeInfo:
    pool: str
    name: str
    path: Path
    format: str | None  # qcow2, raw, ... (as libvirt probed it)
    capacity: int  # virtual size, bytes
    allocation: int  # bytes used on the host
    backing: Path | None
    backing_format: str | None


class DiskStore:
    """Storage pools and volumes under ``state_dir``, through ``driver``'s libvirt connection."""

    def __init__(self, driver: LibvirtDriver, state_dir: Path) -> None:
        self.driver = driver
        self.state_dir = Path(state_dir).absolute()

    # -- pools ---------------------------------------------------------

    def ensure_pool(self, pool: str, subdir: str) -> Path:
        """Make pool ``pool`` at ``<state_dir>/<subdir>`` exist, run and autostart; return its path."""
        check_name(pool, "pool name")
        path = self.state_dir / check_name(subdir, "pool directory")
        self._make_pool_dir(path)

        def apply(conn: libvirt.virConnect) -> Path:
            obj = _pool_or_none(conn, pool)
            if obj is None:
                LOG.info("[pool %s] defining at %s", pool, path)
                xml = render_template(POOL_TEMPLATE, templates_dir=self.driver.templates_dir,
                                      name=pool, path=path, mode=f"{POOL_DIR_MODE:04o}")
                obj = conn.storagePoolDefineXML(xml, 0)
            have = _pool_path(obj)
            if have != path:
                raise HypervisorError(f"[pool {pool}] exists at {have}, not at {path}")
            if not obj.isActive():
                LOG.info("[pool %s] starting", pool)
                obj.create(0)
            if not obj.autostart():
                obj.setAutostart(1)
            return path

        return self.driver.call(f"ensure pool {pool}", apply)

    def pool_path(self, pool: str) -> Path:
        """The directory of a defined pool (``StorageNotFound`` if it is not defined)."""
        check_name(pool, "pool name")
        return self.driver.call(f"look up pool {pool}",
                                lambda conn: _pool_path(conn.storagePoolLookupByName(pool)))

    def remove_pool(self, pool: str, *, delete_volumes: bool = False) -> bool:
        """Stop and undefine a pool (its directory goes too when it is empty); idempotent.

        Refuses while the pool holds volumes, unless ``delete_volumes``.
        """
        check_name(pool, "pool name")

        def remove(conn: libvirt.virConnect) -> bool:
            obj = _pool_or_none(conn, pool)
            if obj is None:
                return False
            path = _pool_path(obj)
            if obj.isActive():
                obj.refresh(0)
                names = obj.listVolumes()
                if names and not delete_volumes:
                    raise HypervisorError(f"[pool {pool}] still holds volumes: {sorted(names)}")
                for name in names:
                    LOG.info("[pool %s] deleting volume %s", pool, name)
                    obj.storageVolLookupByName(name).delete(0)
                obj.destroy()
            LOG.info("[pool %s] undefining", pool)
            obj.undefine()
            if self._inside(path) and path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            return True

        return self.driver.call(f"remove pool {pool}", remove)

    # -- volumes -------------------------------------------------------

    def ensure_overlay(self, pool: str, name: str, backing: Path, backing_format: str,
                       size_bytes: int) -> Path:
        """A qcow2 overlay ``name`` in ``pool`` on ``backing``; return its path.

        Its virtual size is at least ``size_bytes`` (and at least the
        backing image's): an existing overlay is grown, never shrunk. An
        existing volume with another backing file raises ``VolumeConflict``.
        """
        check_name(name)
        check_name(pool, "pool name")
        if backing_format not in BACKING_FORMATS:
            raise ValueError(f"backing format must be one of {BACKING_FORMATS}")
        if size_bytes <= 0:
            raise ValueError("size_bytes must be positive")
        base = self._inside_state_dir(Path(backing), "backing image")
        if not base.is_file():
            raise HypervisorError(f"backing image {base} does not exist")

        def apply(conn: libvirt.virConnect) -> Path:
            obj = conn.storagePoolLookupByName(pool)
            vol = _volume_or_none(obj, name)
            if vol is None:
                capacity = max(size_bytes, image_virtual_size(base))
                xml = render_template(VOLUME_TEMPLATE, templates_dir=self.driver.templates_dir,
                                      name=name, capacity=capacity, mode=VOLUME_MODE,
                                      backing=base, backing_format=backing_format)
                LOG.info("[pool %s] creating overlay %s on %s (%d bytes)", pool, name, base, capacity)
                try:
                    vol = obj.createXML(xml, 0)
                except libvirt.libvirtError as exc:
                    if error_code(exc) != libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                        raise
                    vol = _volume_or_none(obj, name)  # made by someone else meanwhile
                    if vol is None:
                        raise
                else:
                    return Path(vol.path())
            info = _volume_info(pool, vol)
            if info.backing is None or info.backing.resolve() != base or info.format != "qcow2":
                raise VolumeConflict(f"[pool {pool}] volume {name} exists with backing "
                                     f"{info.backing} ({info.format}), not a qcow2 overlay on {base}")
            if info.backing_format not in (None, backing_format):
                raise VolumeConflict(f"[pool {pool}] volume {name} has backing format "
                                     f"{info.backing_format}, not {backing_format}")
            if info.capacity < size_bytes:
                LOG.info("[pool %s] growing %s from %d to %d bytes", pool, name, info.capacity,
                         size_bytes)
                vol.resize(size_bytes, 0)
            return info.path

        return self.driver.call(f"ensure overlay {pool}/{name}", apply)

    def remove_volume(self, pool: str, name: str) -> bool:
        """Delete volume ``name`` from ``pool``; return whether there was one."""
        check_name(name)
        check_name(pool, "pool name")

        def remove(conn: libvirt.virConnect) -> bool:
            vol = _volume_or_none(conn.storagePoolLookupByName(pool), name)
            if vol is None:
                return False
            LOG.info("[pool %s] deleting volume %s", pool, name)
            try:
                vol.delete(0)
            except libvirt.libvirtError as exc:
                if error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise
            return True

        return self.driver.call(f"remove volume {pool}/{name}", remove)

    def volume_info(self, pool: str, name: str) -> VolumeInfo | None:
        """Format, sizes and backing file of a volume, or None when there is none."""
        check_name(name)
        check_name(pool, "pool name")

        def look(conn: libvirt.virConnect) -> VolumeInfo | None:
            vol = _volume_or_none(conn.storagePoolLookupByName(pool), name)
            return None if vol is None else _volume_info(pool, vol)

        return self.driver.call(f"look up volume {pool}/{name}", look)

    def list_volumes(self, pool: str) -> list[str]:
        """Names of the volumes in ``pool`` (after a refresh), sorted."""
        check_name(pool, "pool name")

        def names(conn: libvirt.virConnect) -> list[str]:
            obj = conn.storagePoolLookupByName(pool)
            obj.refresh(0)
            return sorted(obj.listVolumes())

        return self.driver.call(f"list volumes of {pool}", names)

    # -- plain files ---------------------------------------------------

    def full_copy(self, src: Path, dst: Path) -> Path:
        """Copy ``src`` byte for byte to a new file ``dst`` (holes stay holes); return ``dst``.

        What a clone costs without a backing file (the benchmark's baseline).
        Both paths must be under the state directory; ``dst`` must not exist.
        """
        source = self._inside_state_dir(Path(src), "source")
        target = self._inside_state_dir(Path(dst), "destination", must_exist=False)
        check_name(target.name, "file name")
        src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(src_fd).st_size
            dst_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600)
            try:
                _sparse_copy(src_fd, dst_fd, size)
                os.fsync(dst_fd)
            except BaseException:
                os.close(dst_fd)
                target.unlink(missing_ok=True)
                raise
            os.close(dst_fd)
        finally:
            os.close(src_fd)
        return target

    # -- path checks ---------------------------------------------------

    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.state_dir.resolve())
        except ValueError:
            return False
        return True

    def _inside_state_dir(self, path: Path, what: str, *, must_exist: bool = True) -> Path:
        if not path.is_absolute():
            raise ValueError(f"{what} {path} is not an absolute path")
        if ".." in path.parts:
            raise ValueError(f"{what} {path} contains '..'")
        resolved = path.resolve() if must_exist else path.parent.resolve() / path.name
        if not self._inside(resolved if must_exist else resolved.parent):
            raise ValueError(f"{what} {path} is not under the state directory {self.state_dir}")
        return resolved

    def _make_pool_dir(self, path: Path) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, POOL_DIR_MODE)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise HypervisorError(f"{path} exists and is not a directory (or is a symlink)")
        if stat.S_IMODE(st.st_mode) != POOL_DIR_MODE:
            os.chmod(path, POOL_DIR_MODE)


# -- helpers -----------------------------------------------------------

def image_virtual_size(path: Path) -> int:
    """The virtual size of a disk image (``qemu-img info``), bytes."""
    try:
        done = run(["qemu-img", "info", "--output=json", "-U", str(path)], timeout=60)
    except ProcessError as exc:
        raise HypervisorError(f"cannot read image {path}: {exc}") from exc
    return int(json.loads(done.stdout)["virtual-size"])


def _pool_or_none(conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return None
        raise


def _pool_path(obj: libvirt.virStoragePool) -> Path:
    path = ET.fromstring(obj.XMLDesc(0)).findtext("target/path")
    if not path:
        raise StorageNotFound(f"pool {obj.name()} has no target path")
    return Path(path)


def _volume_or_none(obj: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
    """Look a volume up; refresh the pool first when the file exists but libvirt missed it."""
    for attempt in (1, 2):
        try:
            return obj.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if error_code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        if attempt == 1 and os.path.lexists(_pool_path(obj) / name):
            obj.refresh(0)
            continue
        return None
    return None


def _volume_info(pool: str, vol: libvirt.virStorageVol) -> VolumeInfo:
    root = ET.fromstring(vol.XMLDesc(0))
    _kind, capacity, allocation = vol.info()
    backing = root.findtext("backingStore/path")
    backing_format = root.find("backingStore/format")
    fmt = root.find("target/format")
    return VolumeInfo(
        pool=pool,
        name=vol.name(),
        path=Path(vol.path()),
        format=fmt.get("type") if fmt is not None else None,
        capacity=int(capacity),
        allocation=int(allocation),
        backing=Path(backing) if backing else None,
        backing_format=backing_format.get("type") if backing_format is not None else None,
    )


def _sparse_copy(src_fd: int, dst_fd: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src_fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(src_fd, data, os.SEEK_HOLE)
        _copy_range(src_fd, dst_fd, data, end)
        offset = end
    os.ftruncate(dst_fd, size)


def _copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        count = min(end - pos, 64 * 1024 * 1024)
        try:
            done = os.copy_file_range(src_fd, dst_fd, count, pos, pos)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            chunk = os.pread(src_fd, min(count, 4 * 1024 * 1024), pos)
            done = os.pwrite(dst_fd, chunk, pos) if chunk else 0
        if done == 0:
            raise HypervisorError("short copy: the source shrank while it was copied")
        pos += done
