"""Distribution's filesystem storage, read (and pruned) from outside the registry.

The layout under ``<root>/docker/registry/v2`` (``storage.filesystem``)::

    blobs/sha256/ab/<hex>/data                              every blob, once
    repositories/<name>/_manifests/revisions/sha256/<hex>/link   manifests of <name>
    repositories/<name>/_manifests/tags/<tag>/current/link       "sha256:<hex>"
    repositories/<name>/_layers/sha256/<hex>/link                blobs linked into <name>
    repositories/<name>/_uploads/<uuid>/...                      uploads in progress

Reading follows no symbolic link and trusts no file to be small: links are
read up to 128 bytes, manifests up to the registry's own 4 MiB limit. The one
write is removing a deleted repository's directory, by descriptor from the
storage root, so neither a link nor a name can point it anywhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.registry.names import check_repository

V2 = ("docker", "registry", "v2")
MAX_MANIFEST = 4 * 1024 * 1024
_DIGEST = re.compile(r"sha256:([a-f0-9]{64})")
_HEX = re.compile(r"[a-f0-9]{64}")


@dataclass
class RepositoryInfo:
    name: str
    tags: list[tuple[str, str]] = field(default_factory=list)  # (tag, digest), sorted by tag
    manifests: int = 0
    size: int = 0  # distinct blobs referenced by the manifests, and the manifests
    blobs: dict[str, int] = field(default_factory=dict)  # those digests and their sizes
    revisions: list[str] = field(default_factory=list)  # digests of the stored manifests
    last_modified: float = 0.0


@contextlib.contextmanager
def _opendir(parent: int | None, name: str) -> Iterator[int]:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=parent)
    try:
        yield fd
    finally:
        os.close(fd)


def _walk_open(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of ``root/parts...``, each step refusing links; the caller closes it."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:
        os.close(fd)
        raise
    return fd


def _read_small(dirfd: int, name: str, limit: int) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


class Storage:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def v2(self) -> Path:
        return self.root.joinpath(*V2)

    def _fd(self, *parts: str) -> int:
        return _walk_open(self.root, (*V2, *parts))

    # -- reading ------------------------------------------------------------------------

    def repositories(self, project: str | None = None) -> list[str]:
        """Names of the stored repositories (of one project), sorted."""
        found: list[str] = []
        start = (project,) if project else ()
        try:
            fd = self._fd("repositories", *start)
        except OSError:
            return []
        try:
            self._scan(fd, list(start), found, 0)
        finally:
            os.close(fd)
        return sorted(found)

    def _scan(self, fd: int, prefix: list[str], found: list[str], depth: int) -> None:
        if depth > 16:
            return
        with os.scandir(fd) as entries:
            names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        if "_manifests" in names and len(prefix) >= 2:
            found.append("/".join(prefix))
        for name in names:
            if name.startswith("_"):
                continue
            try:
                with _opendir(fd, name) as child:
                    self._scan(child, [*prefix, name], found, depth + 1)
            except OSError:
                continue

    @contextlib.contextmanager
    def _blob_dir(self, digest: str) -> Iterator[int | None]:
        """A descriptor of the blob's directory, None if the digest is bad or not stored."""
        m = _DIGEST.fullmatch(digest)
        fd = None
        if m:
            with contextlib.suppress(OSError):
                fd = self._fd("blobs", "sha256", m.group(1)[:2], m.group(1))
        try:
            yield fd
        finally:
            if fd is not None:
                os.close(fd)

    def blob_size(self, digest: str) -> int | None:
        with self._blob_dir(digest) as fd:
            if fd is None:
                return None
            try:
                st = os.stat("data", dir_fd=fd, follow_symlinks=False)
            except OSError:
                return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def read_blob(self, digest: str, limit: int = MAX_MANIFEST) -> bytes | None:
        with self._blob_dir(digest) as fd:
            return None if fd is None else _read_small(fd, "data", limit)

    def describe(self, name: str) -> RepositoryInfo:
        """Tags, manifests and size of one repository (empty if it is not stored)."""
        check_repository(name)
        info = RepositoryInfo(name)
        parts = tuple(name.split("/"))
        revisions = self._link_dir(parts + ("_manifests", "revisions", "sha256"))
        tags_fd = None
        with contextlib.suppress(OSError):
            tags_fd = self._fd("repositories", *parts, "_manifests", "tags")
        if tags_fd is not None:
            try:
                with os.scandir(tags_fd) as entries:
                    tag_names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
                for tag in tag_names:
                    link = self._read_link(parts + ("_manifests", "tags", tag, "current"))
                    if link:
                        info.tags.append((tag, link[0]))
                        info.last_modified = max(info.last_modified, link[1])
            finally:
                os.close(tags_fd)
        sizes: dict[str, int] = {}
        for digest in revisions:
            body = self.read_blob(digest)
            if body is None:
                continue
            info.manifests += 1
            info.revisions.append(digest)
            sizes[digest] = len(body)
            for ref, declared in references(body):
                if ref not in sizes:
                    actual = self.blob_size(ref)
                    sizes[ref] = actual if actual is not None else max(declared, 0)
        info.blobs = sizes
        info.size = sum(sizes.values())
        return info

    def _link_dir(self, parts: tuple[str, ...]) -> list[str]:
        try:
            fd = self._fd("repositories", *parts)
        except OSError:
            return []
        try:
            with os.scandir(fd) as entries:
                names = [e.name for e in entries
                         if e.is_dir(follow_symlinks=False) and _HEX.fullmatch(e.name)]
            # A deleted manifest loses its link file; the directory may stay behind.
            return sorted(f"sha256:{n}" for n in names if _is_file(fd, f"{n}/link"))
        finally:
            os.close(fd)

    def _read_link(self, parts: tuple[str, ...]) -> tuple[str, float] | None:
        try:
            fd = self._fd("repositories", *parts)
        except OSError:
            return None
        try:
            data = _read_small(fd, "link", 128)
            mtime = os.stat("link", dir_fd=fd, follow_symlinks=False).st_mtime if data else 0.0
        except OSError:
            return None
        finally:
            os.close(fd)
        text = (data or b"").decode("ascii", "replace").strip()
        return (text, mtime) if _DIGEST.fullmatch(text) else None

    # -- removing -----------------------------------------------------------------------

    def remove(self, name: str) -> bool:
        """Remove a repository's own directories (its links, not the blobs); True if it
        existed. A nested repository (``dev/a/b`` inside ``dev/a``) is left alone.

        Call only while the registry cannot write (read-only or stopped)."""
        parts = check_repository(name).split("/")
        try:
            repo = self._fd("repositories", *parts)
        except OSError:
            return False
        found = False
        try:
            for own in ("_manifests", "_layers", "_uploads"):
                try:
                    st = os.stat(own, dir_fd=repo, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found = True
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(own, dir_fd=repo)
                else:
                    os.unlink(own, dir_fd=repo)
        finally:
            os.close(repo)
        # The repository's directory and its parents, each only once empty.
        for depth in range(len(parts), 0, -1):
            try:
                fd = self._fd("repositories", *parts[:depth - 1])
            except OSError:
                break
            try:
                os.rmdir(parts[depth - 1], dir_fd=fd)
            except OSError:
                break
            finally:
                os.close(fd)
        return found


def _is_file(dirfd: int, path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def references(body: bytes) -> list[tuple[str, int]]:
    """Digests and declared sizes a manifest or index refers to."""
    try:
        doc = json.loads(body)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    found: list[tuple[str, int]] = []
    # An index's "manifests" and a referrer's "subject" are manifests of the repository,
    # counted as revisions themselves.
    descriptors = [doc.get("config")] + list(doc.get("layers") or []) + \
        list(doc.get("blobs") or [])
    for d in descriptors:
        if isinstance(d, dict) and isinstance(d.get("digest"), str) and \
                _DIGEST.fullmatch(d["digest"]):
            size = d.get("size")
            found.append((d["digest"], size if isinstance(size, int) else 0))
    return found
