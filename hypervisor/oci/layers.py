"""Unpack image layers (tar, gzip or zstd) into a root directory without trusting them.

Python 3.11.2 has no ``tarfile`` extraction filters, and even with them a
layer's whiteouts need our own code, so extraction is written here, walking
directory file descriptors and never following a symbolic link:

- names: no absolute names, no ``..`` component, at most 256 components;
  ``./`` prefixes and empty components are dropped;
- a path's parent directories are opened one at a time with ``O_NOFOLLOW``.
  When one of them is a symbolic link (``a`` a link, then an entry ``a/b``),
  the layer is **refused** (``BadLayer``): writing through it could land
  anywhere, and replacing the link with a directory would silently break the
  image (``bin -> usr/bin``). Missing parents are created (0755, root);
- an existing entry where a new one goes is removed first (a directory only
  when the new entry is not a directory, which then keeps its contents), so
  a new regular file never writes through an old hard link or symlink;
- symbolic links are created as they are, whatever they point at; nothing
  during extraction ever resolves them;
- hard links must name an entry that already exists inside the root (from
  this or a lower layer) and that is not a directory; they are made with
  ``linkat`` without following;
- device nodes and FIFOs are **skipped** and listed in ``LayerStats.skipped``:
  a pod VM gets ``/dev`` from devtmpfs, and device nodes from an untrusted
  archive have no business on the host, even in a private directory;
- file modes are kept with their setuid, setgid and sticky bits (this is a
  VM's root file system); owner and group are the numeric IDs of the archive
  (applied with ``fchown``/``lchown``, never through a link) when running as
  root; modification times are kept (directories' are set after the layer,
  since their contents change them); the ``security.capability`` extended
  attribute is kept (``ping`` needs it), other extended attributes are not;
- OCI whiteouts: ``.wh.NAME`` removes ``NAME`` of a lower layer, and
  ``.wh..wh..opq`` removes everything lower layers put in its directory;
  entries of the same layer are never removed by either. Whiteouts resolve
  their directory the same way (a symlink on the way refuses the layer) and
  remove a symlink itself, never what it points at; AUFS bookkeeping entries
  (``.wh..wh.plnk/...``, ``.wh..wh.aufs``) are ignored, as docker does;
- sizes: the decompressed stream and the bytes written are counted against
  a ``Budget`` shared by all layers of an image, and so is the number of
  entries, counting the missing parent directories they make (one entry
  may make 255); pax and GNU long-name headers over 1 MiB are refused
  before ``tarfile`` reads them into memory;
- a layer's ``diff_id`` (the digest of its uncompressed tar) is checked.

zstd layers are decompressed by the ``zstd`` program when it is installed
(Python 3.11 has no zstd module); without it they are refused with
``UnsupportedImage``.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import logging
import math
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, cast

from hypervisor.oci.errors import BadLayer, BuildFailed, DigestMismatch, TooLarge, UnsupportedImage

LOG = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_COMPONENTS = 256
MAX_META_HEADER = 1024 * 1024
MAX_NOTES = 50
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
AUFS_META_PREFIX = ".wh..wh."  # AUFS bookkeeping (.wh..wh.plnk, .wh..wh.aufs): never content
KEPT_XATTRS = frozenset({"security.capability"})
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HOST_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM})

Parts = tuple[str, ...]


@dataclass
class Budget:
    """Limits for one image, shared by its layers."""

    max_bytes: int
    max_entries: int
    stream_bytes: int = 0
    written_bytes: int = 0
    entries: int = 0

    def read(self, amount: int) -> None:
        self.stream_bytes += amount
        if self.stream_bytes > self.max_bytes:
            raise TooLarge(f"the image unpacks to more than the limit of {self.max_bytes} bytes")

    def wrote(self, amount: int) -> None:
        self.written_bytes += amount
        if self.written_bytes > self.max_bytes:
            raise TooLarge(f"the image's files are larger than the limit of {self.max_bytes} bytes")

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise TooLarge(f"the image has more than the limit of {self.max_entries} files")


@dataclass
class LayerStats:
    entries: int = 0
    whiteouts: int = 0
    skipped: list[str] = field(default_factory=list)  # notes, at most MAX_NOTES

    def note(self, text: str) -> None:
        if len(self.skipped) < MAX_NOTES:
            self.skipped.append(text)


def apply_layer(blob: Path, root: Path, *, diff_id: str | None = None,
                budget: Budget | None = None) -> LayerStats:
    """Unpack the layer in file ``blob`` onto ``root``; check its ``diff_id`` if given."""
    budget = budget or Budget(max_bytes=2 ** 62, max_entries=2 ** 62)
    algorithm = (diff_id or "sha256:").split(":", 1)[0]
    with _decompressed(blob) as stream:
        reader = _CountingReader(stream, budget, algorithm)
        stats = unpack_tar(cast(IO[bytes], reader), root, budget)
        _drain(reader)
    if diff_id is not None and reader.digest() != diff_id:
        raise DigestMismatch(f"a layer unpacks to {reader.digest()}, but the image config says "
                             f"{diff_id}")
    return stats


def unpack_tar(stream: IO[bytes], root: Path, budget: Budget | None = None) -> LayerStats:
    """Apply one uncompressed tar stream (a layer) onto the directory ``root``."""
    budget = budget or Budget(max_bytes=2 ** 62, max_entries=2 ** 62)
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        extractor = _Extractor(root_fd, budget)
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=_SafeTarInfo) as tar:
                for member in tar:
                    extractor.entry(tar, member)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise BadLayer(f"the layer is not a valid tar archive: {_short(exc)}") from None
        except OSError as exc:
            raise _os_error(exc, "reading the layer") from None
        extractor.finish()
        return extractor.stats
    finally:
        os.close(root_fd)


# -- decompression -------------------------------------------------------------------------------


@contextlib.contextmanager
def _decompressed(blob: Path) -> Iterator[BinaryIO]:
    fd = os.open(blob, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as raw:
        magic = os.pread(fd, 4, 0)
        if magic[:2] == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        elif magic == ZSTD_MAGIC:
            with _zstd(raw) as unzstd:
                yield unzstd
        else:
            yield raw


@contextlib.contextmanager
def _zstd(raw: BinaryIO) -> Iterator[BinaryIO]:
    """Decompress through the ``zstd`` program (default memory limit: 128 MiB window)."""
    program = shutil.which("zstd")
    if program is None:
        raise UnsupportedImage("the image has a zstd-compressed layer, and this host has no "
                               "zstd program (Python 3.11 cannot decompress zstd): install zstd")
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([program, "-d", "-c", "-q"], stdin=raw, stdout=subprocess.PIPE,
                                stderr=errors)
        assert proc.stdout is not None
        try:
            yield proc.stdout  # type: ignore[misc]
        finally:
            proc.stdout.close()  # an early stop ends zstd with SIGPIPE
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        if rc != 0:
            errors.seek(0)
            detail = errors.read(400).decode(errors="replace").strip().splitlines()
            raise BadLayer(f"the zstd layer does not decompress: {detail[-1] if detail else rc}")


class _CountingReader:
    """A read-only stream that hashes and counts what passes through it."""

    def __init__(self, inner: BinaryIO, budget: Budget, algorithm: str) -> None:
        self._inner = inner
        self._budget = budget
        self._hash = hashlib.new(algorithm)
        self._algorithm = algorithm

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size if size is not None and size >= 0 else CHUNK)
        self._budget.read(len(data))
        self._hash.update(data)
        return data

    def digest(self) -> str:
        return f"{self._algorithm}:{self._hash.hexdigest()}"


def _drain(reader: _CountingReader) -> None:
    """Read what follows the tar's end marker, so the diff ID covers the whole stream."""
    try:
        while reader.read(CHUNK):
            pass
    except (EOFError, zlib.error) as exc:
        raise BadLayer(f"the layer's compressed stream is damaged: {_short(exc)}") from None
    except OSError as exc:
        raise _os_error(exc, "reading the layer") from None


class _SafeTarInfo(tarfile.TarInfo):
    """Refuses huge pax and GNU long-name headers before ``tarfile`` reads them into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                         tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > MAX_META_HEADER:
            raise tarfile.HeaderError(f"a {self.size}-byte metadata header")
        return super()._proc_member(tarfile_)  # type: ignore[misc,no-any-return]


# -- names ----------------------------------------------------------------------------------------


def split_name(name: str) -> Parts:
    """The components of an archive path; raise ``BadLayer`` for names that leave the root."""
    if "\x00" in name:
        raise BadLayer(f"refusing the entry {_show(name)}: a NUL in its name")
    if name.startswith("/"):
        raise BadLayer(f"refusing the entry {_show(name)}: an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise BadLayer(f"refusing the entry {_show(name)}: a '..' component")
    if len(parts) > MAX_COMPONENTS:
        raise BadLayer(f"refusing the entry {_show(name)}: more than {MAX_COMPONENTS} components")
    return parts


def _show(name: str | Parts) -> str:
    text = "/".join(name) if isinstance(name, tuple) else name
    return repr(text[:200])


def _short(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


def _os_error(exc: OSError, doing: str) -> Exception:
    if exc.errno in _HOST_FAULTS:
        return BuildFailed(f"{doing} failed on this host: {exc.strerror}")
    return BadLayer(f"{doing} failed: {exc.strerror or _short(exc)}")


# -- extraction -----------------------------------------------------------------------------------


class _Extractor:
    """Applies tar members one by one under ``root_fd``; see the module docstring for the rules."""

    def __init__(self, root_fd: int, budget: Budget) -> None:
        self.root_fd = root_fd
        self.budget = budget
        self.stats = LayerStats()
        self.as_root = os.geteuid() == 0
        self.layer_paths: set[Parts] = set()  # entries this layer made
        self.ancestors: set[Parts] = set()  # directories above them
        self.dir_times: dict[Parts, int] = {}

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.budget.entry()
        self.stats.entries += 1
        parts = split_name(member.name)
        try:
            self._dispatch(tar, member, parts)
        except OSError as exc:
            raise _os_error(exc, f"unpacking {_show(parts)}") from None
        except ValueError as exc:  # an embedded NUL in a link target, a time out of range
            raise BadLayer(f"refusing the entry {_show(parts)}: {_short(exc)}") from None

    def _dispatch(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: Parts) -> None:
        base = parts[-1] if parts else ""
        if any(part.startswith(AUFS_META_PREFIX) for part in parts[:-1]):
            self.stats.note(f"ignored the AUFS metadata entry {'/'.join(parts)[:200]}")
            return
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts)
            return
        if not parts:
            if not member.isdir():
                raise BadLayer("refusing an entry for the root that is not a directory")
            return  # the root's own attributes stay ours
        if member.isreg():
            self._regular(tar, member, parts)
        elif member.isdir():
            self._directory(member, parts)
        elif member.issym():
            self._symlink(member, parts)
        elif member.islnk():
            self._hardlink(member, parts)
        else:
            kind = "device node" if member.ischr() or member.isblk() else \
                "FIFO" if member.isfifo() else f"entry of type {member.type!r}"
            self.stats.note(f"skipped the {kind} {'/'.join(parts)[:200]}")
            return
        self._remember(parts)

    def _remember(self, parts: Parts) -> None:
        self.layer_paths.add(parts)
        for depth in range(1, len(parts)):
            self.ancestors.add(parts[:depth])

    # -- walking ---------------------------------------------------------------------------------

    def open_dir(self, parts: Parts, *, create: bool) -> int | None:
        """An fd of directory ``parts`` under the root, never through a symlink.

        Missing directories are created when ``create``, else None is returned."""
        fd = os.dup(self.root_fd)
        try:
            for depth, name in enumerate(parts, start=1):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    self.budget.entry()  # a missing parent is a file too
                    os.mkdir(name, 0o700, dir_fd=fd)
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(child, 0o755)  # whatever the umask
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise self._not_a_directory(fd, name, parts[:depth]) from None
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _not_a_directory(fd: int, name: str, parts: Parts) -> BadLayer:
        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        if stat.S_ISLNK(mode):
            return BadLayer(f"refusing to write through the symbolic link {_show(parts)}: a layer "
                            "entry lies beneath it")
        return BadLayer(f"refusing an entry beneath {_show(parts)}, which is not a directory")

    @contextlib.contextmanager
    def parent_of(self, parts: Parts) -> Iterator[int]:
        fd = self.open_dir(parts[:-1], create=True)
        assert fd is not None
        try:
            yield fd
        finally:
            os.close(fd)

    def make_room(self, parent: int, name: str, *, keep_dir: bool) -> bool:
        """Remove whatever is at ``name`` (but keep a directory if ``keep_dir``); True if kept."""
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if keep_dir:
                return True
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return False

    # -- entry kinds -----------------------------------------------------------------------------

    def _regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: Parts) -> None:
        source = tar.extractfile(member)
        if source is None:
            raise BadLayer(f"the regular file {_show(parts)} has no data")
        with self.parent_of(parts) as parent:
            self.make_room(parent, parts[-1], keep_dir=False)
            fd = os.open(parts[-1], _NEW_FILE_FLAGS, 0o600, dir_fd=parent)
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(CHUNK):
                    self.budget.wrote(len(chunk))
                    out.write(chunk)
                out.flush()
                self._own(out.fileno(), member)
                os.utime(out.fileno(), ns=_times(member))

    def _directory(self, member: tarfile.TarInfo, parts: Parts) -> None:
        with self.parent_of(parts) as parent:
            if not self.make_room(parent, parts[-1], keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            try:
                self._own(fd, member)
            finally:
                os.close(fd)
        self.dir_times[parts] = _times(member)[1]

    def _symlink(self, member: tarfile.TarInfo, parts: Parts) -> None:
        if not member.linkname:
            raise BadLayer(f"the symbolic link {_show(parts)} has an empty target")
        with self.parent_of(parts) as parent:
            self.make_room(parent, parts[-1], keep_dir=False)
            os.symlink(member.linkname, parts[-1], dir_fd=parent)
            if self.as_root:
                os.chown(parts[-1], _id(member.uid), _id(member.gid), dir_fd=parent,
                         follow_symlinks=False)
            os.utime(parts[-1], ns=_times(member), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, member: tarfile.TarInfo, parts: Parts) -> None:
        target = split_name(member.linkname)
        if not target:
            raise BadLayer(f"the hard link {_show(parts)} points at the root")
        if target == parts:
            return
        source_dir = self.open_dir(target[:-1], create=False)
        if source_dir is None:
            raise BadLayer(f"the hard link {_show(parts)} points at {_show(target)}, which does "
                           "not exist (yet)")
        try:
            self._check_link_target(source_dir, target, parts)
            with self.parent_of(parts) as parent:
                self.make_room(parent, parts[-1], keep_dir=False)
                os.link(target[-1], parts[-1], src_dir_fd=source_dir, dst_dir_fd=parent,
                        follow_symlinks=False)
        finally:
            os.close(source_dir)

    @staticmethod
    def _check_link_target(source_dir: int, target: Parts, parts: Parts) -> None:
        try:
            mode = os.stat(target[-1], dir_fd=source_dir, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise BadLayer(f"the hard link {_show(parts)} points at {_show(target)}, which does "
                           "not exist (yet)") from None
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise BadLayer(f"the hard link {_show(parts)} points at {_show(target)}, which is not "
                           "a file")

    def _own(self, fd: int, member: tarfile.TarInfo) -> None:
        """Owner, then mode (chown clears setuid), then the kept extended attributes."""
        if self.as_root:
            os.fchown(fd, _id(member.uid), _id(member.gid))
        os.fchmod(fd, member.mode & 0o7777)
        for key, value in member.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key.removeprefix("SCHILY.xattr.")
            if name not in KEPT_XATTRS or not self.as_root:
                self.stats.note(f"dropped the extended attribute {name[:60]} of {member.name[:200]}")
                continue
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))

    # -- whiteouts -------------------------------------------------------------------------------

    def _whiteout(self, parts: Parts) -> None:
        self.stats.whiteouts += 1
        directory, base = parts[:-1], parts[-1]
        if base == OPAQUE_WHITEOUT:
            fd = self.open_dir(directory, create=False)
            if fd is not None:
                try:
                    self._prune(fd, directory)
                finally:
                    os.close(fd)
            return
        victim = base.removeprefix(WHITEOUT_PREFIX)
        if victim in ("", ".", ".."):
            raise BadLayer(f"refusing the whiteout {_show(parts)}: it names no entry")
        if base.startswith(AUFS_META_PREFIX):
            self.stats.note(f"ignored the AUFS metadata entry {'/'.join(parts)[:200]}")
            return
        if directory + (victim,) in self.layer_paths:
            return  # a whiteout hides lower layers only
        fd = self.open_dir(directory, create=False)
        if fd is None:
            return
        try:
            self.make_room(fd, victim, keep_dir=False)
        finally:
            os.close(fd)

    def _prune(self, fd: int, directory: Parts) -> None:
        """Remove what lower layers put under ``directory``; keep this layer's entries."""
        for name in os.listdir(fd):
            path = directory + (name,)
            if path not in self.layer_paths and path not in self.ancestors:
                self.make_room(fd, name, keep_dir=False)
                continue
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    self._prune(child, path)
                finally:
                    os.close(child)

    # -- end of layer ----------------------------------------------------------------------------

    def finish(self) -> None:
        """Set directories' modification times, now that nothing more is written into them."""
        for parts, mtime in sorted(self.dir_times.items(), key=lambda item: -len(item[0])):
            try:
                fd = self.open_dir(parts, create=False)
            except BadLayer:
                continue
            if fd is None:
                continue
            try:
                os.utime(fd, ns=(mtime, mtime))
            finally:
                os.close(fd)


def _id(value: int) -> int:
    if not 0 <= value < 2 ** 32 - 1:
        raise BadLayer(f"refusing the owner ID {value}")
    return value


def _times(member: tarfile.TarInfo) -> tuple[int, int]:
    mtime = member.mtime
    if not isinstance(mtime, (int, float)) or not math.isfinite(mtime) or \
            not 0 <= mtime < 2 ** 40:
        mtime = 0
    ns = int(mtime * 1_000_000_000)
    return ns, ns
