"""The image cache: one read-only erofs disk per image, shared by every pod that uses it.

``ImageCache.ensure(reference)`` resolves a reference at its registry, and
the first time an image is seen downloads its blobs (verified), unpacks its
layers in order into a private work directory (``hypervisor.oci.layers``),
makes one erofs file system of the result with ``mkfs.erofs`` and publishes
it under a name taken from the platform manifest's digest. Later calls find
it again: a tag costs one HEAD request, a digest (or pull policy
``IfNotPresent``/``Never``) costs nothing on the network.

Files under ``root`` (created as needed)::

    images/sha256-<hex>.erofs   the disk, 0644 (QEMU runs as libvirt-qemu)
    images/sha256-<hex>.json    what the host agent needs: config, digests, size
    blobs/sha256-<hex>          verified blobs, 0600 (kept for rebuilds until GC)
    refs/<sha256 of key>.json   "name:tag" and "name@digest" → manifest digest
    locks/                      one lock file per image, and gc.lock
    tmp/                        downloads and build directories in progress, 0700

A disk appears with ``rename()`` and is complete once its JSON exists (the
JSON is written last), so a reader never sees half an image. Builds of one
image are serialised by an ``flock`` on its lock file, which works between
threads (each opens its own descriptor) and between processes; the second
caller finds the first one's result. Every ``ensure`` holds ``gc.lock``
shared and ``remove_unused`` holds it exclusively, so garbage collection
never removes a blob a build is about to unpack. Build directories are
removed on success and on failure, and stale ones (from a killed process)
when the same image is built again or at garbage collection.

Cached digests are trusted without credentials: a pod that names an image
by a digest that some other pod (with a pull secret) already pulled gets it,
as on a Kubernetes node with ``IfNotPresent``. The key includes the
repository name, so the digest alone is not enough. A caller that must not
hand one user's pulls to another passes ``authorize=True``: the registry then
confirms the caller's credentials before a cached image is used (Kubernetes'
``AlwaysPullImages``), which costs one HEAD and downloads nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hypervisor.oci.auth import Credentials
from hypervisor.oci.errors import BuildFailed, ImageNeverPull
from hypervisor.oci.layers import Budget, apply_layer
from hypervisor.oci.manifest import Descriptor, ImageConfig, Platform
from hypervisor.oci.policy import RegistryPolicy
from hypervisor.oci.reference import ImageReference, parse_reference
from hypervisor.oci.registry import Limits, RegistryClient, ResolvedImage
from hypervisor.proc import ProcessError, run

LOG = logging.getLogger(__name__)

PullPolicy = Literal["Always", "IfNotPresent", "Never"]
METADATA_VERSION = 1
MKFS_TIMEOUT = 3600.0
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class PullProgress:
    reference: str
    phase: str  # "resolving", "downloading", "unpacking", "building", "done"
    done_bytes: int | None = None
    total_bytes: int | None = None


@dataclass(frozen=True)
class CachedImage:
    """A published image: the disk to attach and how to start its container."""

    reference: str  # normalised, as asked for
    digest: str  # what the reference resolved to (an index or a manifest): the "repo digest"
    manifest_digest: str  # the linux/amd64 image manifest; names the files
    config_digest: str  # the image ID
    disk: Path  # read-only erofs
    metadata: Path  # JSON next to it
    config: ImageConfig
    size_bytes: int
    built: bool = False  # True only for the call that built the disk


Progress = Callable[[PullProgress], None] | None


class ImageCache:
    """Pulls images into erofs disks under ``root``; safe for threads and processes."""

    def __init__(self, root: Path, policy: RegistryPolicy, *, limits: Limits | None = None,
                 platform: Platform | None = None, compression: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.policy = policy
        self.limits = limits or Limits()
        self.platform = platform or Platform()
        self.compression = compression  # e.g. "lz4hc"; None makes an uncompressed image
        self._images = self.root / "images"
        self._blobs = self.root / "blobs"
        self._refs = self.root / "refs"
        self._locks = self.root / "locks"
        self._tmp = self.root / "tmp"
        self._prepare()

    def _prepare(self) -> None:
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self.root.chmod(0o755)  # QEMU (libvirt-qemu) must traverse it to reach images/
        for path, mode in ((self._images, 0o755), (self._blobs, 0o700), (self._refs, 0o700),
                           (self._locks, 0o700), (self._tmp, 0o700)):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=mode)
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise BuildFailed(f"the image cache's {path.name} is not a directory: {path}")
            if stat.S_IMODE(st.st_mode) != mode:
                path.chmod(mode)

    # -- public ----------------------------------------------------------------------------------

    def ensure(self, reference: str, credentials: Credentials | None = None, *,
               pull: PullPolicy = "Always", progress: Progress = None,
               authorize: bool = False) -> CachedImage:
        """The cached image for ``reference``, pulled and built first if needed.

        ``pull`` is the container's imagePullPolicy: ``Always`` resolves a tag
        at the registry (one HEAD when nothing changed), ``IfNotPresent`` uses
        a cached image for the same reference without asking, ``Never`` never
        asks (``ImageNeverPull`` when absent). Digest references never need
        the network once cached. ``authorize`` makes the registry confirm that
        ``credentials`` may pull ``reference`` before a cached image is handed
        out (a HEAD of its manifest, for digests and with ``Never`` too); a
        refusal raises the registry's error. Raises ``ImagePullError`` subclasses."""
        ref = parse_reference(reference)
        try:
            return self._ensure(ref, credentials, pull, progress, authorize)
        except OSError as exc:  # our own files: a full disk, a vanished directory
            raise BuildFailed(f"caching {ref} failed on this host: "
                              f"{exc.strerror or type(exc).__name__}") from exc

    def _ensure(self, ref: ImageReference, credentials: Credentials | None, pull: PullPolicy,
                progress: Progress, authorize: bool) -> CachedImage:
        with self._gc_lock(fcntl.LOCK_SH):
            local = self._local(ref, pull)
            if local is not None:
                if authorize:
                    self._authorize(ref, credentials)
                return local
            if pull == "Never":
                raise ImageNeverPull(f"{ref} is not in this host's image cache and the pull "
                                     "policy is Never")
            _report(progress, ref, "resolving")
            client = RegistryClient(ref.registry, self.policy, credentials, limits=self.limits)
            if ref.digest is None:
                current = client.head_digest(ref)
                found = self._found(ref, ref.with_digest(current)) if current else None
                if found is not None:
                    self._write_ref(_tag_key(ref, self.platform), ref, current or "",
                                    found.manifest_digest)
                    return found
            resolved = client.resolve(ref, self.platform)
            image = self._ensure_built(client, resolved, progress)
            self._record(ref, resolved)
        _report(progress, ref, "done", image.size_bytes, image.size_bytes)
        return dataclasses.replace(image, reference=str(ref), digest=resolved.digest)

    def _authorize(self, ref: ImageReference, credentials: Credentials | None) -> None:
        """Raise the registry's refusal unless ``credentials`` may pull ``ref`` now.

        Every other way through ``_ensure`` asks the registry with the credentials
        already (a HEAD of the tag, or the whole resolve)."""
        client = RegistryClient(ref.registry, self.policy, credentials, limits=self.limits)
        if client.head_digest(ref) is None:  # refused, or a registry that will not say:
            client.get_manifest(ref, ref.manifest_ref)  # a GET raises what it has to say

    def lookup(self, reference: str) -> CachedImage | None:
        """The cached image for ``reference`` without any network access, or None."""
        return self._local(parse_reference(reference), "IfNotPresent")

    def remove_unused(self, keep_digests: Iterable[str]) -> list[str]:
        """Delete every image whose digests are not in ``keep_digests``; return their digests.

        An image is kept when its manifest digest or a digest a reference
        resolved to is listed. Blobs no kept image needs, references to
        removed images and leftovers of interrupted pulls go too. Disks that
        running VMs hold open stay readable to them until they close them."""
        keep = set(keep_digests)
        removed: list[str] = []
        with self._gc_lock(fcntl.LOCK_EX):
            refs = self._all_refs()
            wanted = {r["manifest_digest"] for r in refs if r.get("digest") in keep} | keep
            needed_blobs: set[str] = set()
            for meta_path in sorted(self._images.glob("*.json")):
                meta = _read_json(meta_path)
                digest = meta.get("manifest_digest") if meta else None
                if meta is not None and digest in wanted:
                    needed_blobs.update(meta.get("layers", []) + [meta.get("config_digest", "")])
                    continue
                self._remove_image(meta_path)
                removed.append(str(digest or meta_path.stem))
            self._prune_refs(refs)
            self._prune_blobs(needed_blobs)
            self._prune_tmp()
        for digest in removed:
            LOG.info("[%s] removed from the image cache", digest)
        return removed

    # -- lookups ---------------------------------------------------------------------------------

    def _local(self, ref: ImageReference, pull: PullPolicy) -> CachedImage | None:
        if ref.digest is not None:
            key = _digest_key(ref, self.platform)
        elif pull in ("IfNotPresent", "Never"):
            key = _tag_key(ref, self.platform)
        else:
            return None
        record = _read_json(self._ref_path(key))
        if record is None or record.get("key") != key:
            return None
        image = self._load(record["manifest_digest"])
        if image is None:
            return None
        return dataclasses.replace(image, reference=str(ref), digest=record["digest"])

    def _found(self, ref: ImageReference, pinned: ImageReference) -> CachedImage | None:
        """The cached image that ``pinned`` (the tag's current digest) names, if any."""
        image = self._local(pinned, "IfNotPresent")
        return dataclasses.replace(image, reference=str(ref)) if image else None

    def _load(self, manifest_digest: str) -> CachedImage | None:
        name = _file_name(manifest_digest)
        meta = _read_json(self._images / f"{name}.json")
        disk = self._images / f"{name}.erofs"
        if meta is None or meta.get("version") != METADATA_VERSION:
            return None
        try:
            st = os.lstat(disk)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != meta.get("size_bytes"):
            return None
        return CachedImage(reference=meta["reference"], digest=meta["digest"],
                           manifest_digest=meta["manifest_digest"],
                           config_digest=meta["config_digest"], disk=disk,
                           metadata=self._images / f"{name}.json",
                           config=ImageConfig.from_json(meta["config"]), size_bytes=st.st_size)

    # -- building --------------------------------------------------------------------------------

    def _ensure_built(self, client: RegistryClient, resolved: ResolvedImage,
                      progress: Progress) -> CachedImage:
        name = _file_name(resolved.manifest_digest)
        image = self._load(resolved.manifest_digest)
        if image is not None:
            return image
        with _flock(self._locks / f"{name}.lock", fcntl.LOCK_EX):
            image = self._load(resolved.manifest_digest)
            if image is not None:
                return image
            self._remove_stale_builds(name)
            work = Path(tempfile.mkdtemp(prefix=f"build-{name}-", dir=self._tmp))
            try:
                return self._build(client, resolved, work, progress)
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _build(self, client: RegistryClient, resolved: ResolvedImage, work: Path,
               progress: Progress) -> CachedImage:
        ref = resolved.reference
        started = time.monotonic()
        manifest = resolved.manifest
        self._store_bytes(manifest.config.digest, resolved.config_bytes)
        blobs = self._download_layers(client, resolved, progress)
        _report(progress, ref, "unpacking")
        rootfs = work / "rootfs"
        rootfs.mkdir()
        rootfs.chmod(0o755)  # becomes the mode of the image's /
        budget = Budget(self.limits.max_unpacked_bytes, self.limits.max_entries)
        notes: list[str] = []
        for blob, diff_id in zip(blobs, resolved.config.diff_ids, strict=True):
            notes += apply_layer(blob, rootfs, diff_id=diff_id, budget=budget).skipped
        for note in notes[:10]:
            LOG.info("[%s] %s", ref, note)
        _report(progress, ref, "building")
        disk = work / "image.erofs"
        self._mkfs(rootfs, disk, resolved.manifest_digest)
        shutil.rmtree(rootfs)
        image = self._publish(resolved, disk, work, notes, time.monotonic() - started)
        LOG.info("[%s] built %s (%d bytes, %d layers) in %.1f s", ref, image.disk.name,
                 image.size_bytes, len(blobs), time.monotonic() - started)
        return dataclasses.replace(image, built=True)

    def _download_layers(self, client: RegistryClient, resolved: ResolvedImage,
                         progress: Progress) -> list[Path]:
        layers = resolved.manifest.layers
        total = sum(layer.size for layer in layers)
        done = 0
        paths: list[Path] = []
        for layer in layers:
            _report(progress, resolved.reference, "downloading", done, total)
            paths.append(self._fetch_blob(client, resolved.reference, layer,
                                          _byte_reporter(progress, resolved.reference, done, total)))
            done += layer.size
        return paths

    def _fetch_blob(self, client: RegistryClient, ref: ImageReference, layer: Descriptor,
                    progress: Callable[[int], None]) -> Path:
        path = self._blobs / _file_name(layer.digest)
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size == layer.size:
                return path  # written only after verification
        part = self._tmp / f"blob-{_file_name(layer.digest)}-{secrets.token_hex(4)}.part"
        client.fetch_blob(ref, layer, part, progress)
        os.replace(part, path)
        return path

    def _store_bytes(self, digest: str, data: bytes) -> None:
        """Keep an already verified small blob (the config) in the blob store."""
        path = self._blobs / _file_name(digest)
        if os.path.lexists(path):
            return
        part = self._tmp / f"blob-{_file_name(digest)}-{secrets.token_hex(4)}.part"
        _write_new(part, data, 0o600)
        os.replace(part, path)

    def _mkfs(self, rootfs: Path, disk: Path, manifest_digest: str) -> None:
        """One erofs image; a UUID derived from the digest; per-file times kept (for .pyc checks)."""
        fs_uuid = uuid.UUID(bytes=bytes.fromhex(manifest_digest.split(":", 1)[1][:32]), version=4)
        cmd = ["mkfs.erofs", "--quiet", f"-U{fs_uuid}", "--preserve-mtime"]
        if self.compression:
            cmd.append(f"-z{self.compression}")
        try:
            run(cmd + [str(disk), str(rootfs)], timeout=MKFS_TIMEOUT)
        except ProcessError as exc:
            lines = (exc.stderr or exc.stdout).strip().splitlines()
            detail = lines[-1] if lines else exc.reason
            raise BuildFailed(f"mkfs.erofs failed (rc={exc.rc}): {detail[:200]}") from None

    def _publish(self, resolved: ResolvedImage, disk: Path, work: Path, notes: list[str],
                 seconds: float) -> CachedImage:
        """Move the disk into place, then write its JSON: the JSON marks it complete."""
        name = _file_name(resolved.manifest_digest)
        fd = os.open(disk, _READ_FLAGS)
        try:
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        size = disk.stat().st_size
        os.replace(disk, self._images / f"{name}.erofs")
        meta = _metadata(resolved, self.platform, size, notes, seconds)
        staged = work / "image.json"
        _write_new(staged, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(), 0o644)
        os.replace(staged, self._images / f"{name}.json")
        _fsync_dir(self._images)
        image = self._load(resolved.manifest_digest)
        if image is None:
            raise BuildFailed(f"the image {name} vanished right after it was published")
        return image

    # -- references ------------------------------------------------------------------------------

    def _record(self, ref: ImageReference, resolved: ResolvedImage) -> None:
        pinned = ref.with_digest(resolved.digest)
        self._write_ref(_digest_key(pinned, self.platform), pinned, resolved.digest,
                        resolved.manifest_digest)
        if ref.digest is None:
            self._write_ref(_tag_key(ref, self.platform), ref, resolved.digest,
                            resolved.manifest_digest)

    def _write_ref(self, key: str, ref: ImageReference, digest: str, manifest_digest: str) -> None:
        record = {"key": key, "reference": str(ref), "digest": digest,
                  "manifest_digest": manifest_digest}
        staged = self._tmp / f"ref-{secrets.token_hex(8)}.json"
        _write_new(staged, json.dumps(record, sort_keys=True).encode(), 0o600)
        os.replace(staged, self._ref_path(key))

    def _ref_path(self, key: str) -> Path:
        return self._refs / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def _all_refs(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self._refs.glob("*.json")):
            record = _read_json(path)
            if record is not None:
                records.append(record)
        return records

    # -- garbage collection ----------------------------------------------------------------------

    def _remove_image(self, meta_path: Path) -> None:
        stem = meta_path.stem
        for path in (meta_path, self._images / f"{stem}.erofs", self._locks / f"{stem}.lock"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _prune_refs(self, refs: list[dict[str, Any]]) -> None:
        for record in refs:
            if self._load(str(record.get("manifest_digest", ""))) is None:
                with contextlib.suppress(FileNotFoundError):
                    self._ref_path(str(record.get("key", ""))).unlink()

    def _prune_blobs(self, needed: set[str]) -> None:
        keep = {_file_name(digest) for digest in needed if ":" in digest}
        for path in self._blobs.iterdir():
            if path.name not in keep:
                path.unlink()

    def _prune_tmp(self) -> None:
        for path in self._tmp.iterdir():
            _remove_any(path)

    def _remove_stale_builds(self, name: str) -> None:
        """Build directories of this image left by a killed process (we hold its lock)."""
        for path in self._tmp.glob(f"build-{name}-*"):
            _remove_any(path)

    @contextlib.contextmanager
    def _gc_lock(self, mode: int) -> Iterator[None]:
        with _flock(self._locks / "gc.lock", mode):
            yield


# -- helpers ----------------------------------------------------------------------------------------


def _report(progress: Progress, ref: ImageReference, phase: str, done: int | None = None,
            total: int | None = None) -> None:
    if progress is not None:
        progress(PullProgress(str(ref), phase, done, total))


def _byte_reporter(progress: Progress, ref: ImageReference, before: int,
                   total: int) -> Callable[[int], None]:
    """Turns "n bytes of this layer" into "downloading, before + n of total"."""
    def report(done: int) -> None:
        _report(progress, ref, "downloading", before + done, total)
    return report


def _file_name(digest: str) -> str:
    """``sha256:<hex>`` → ``sha256-<hex>``; digests were checked when parsed."""
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}-{hexpart}"


def _digest_key(ref: ImageReference, platform: Platform) -> str:
    return f"{platform}|{ref.name}@{ref.digest}"


def _tag_key(ref: ImageReference, platform: Platform) -> str:
    return f"{platform}|{ref.name}:{ref.tag}"


def _metadata(resolved: ResolvedImage, platform: Platform, size: int, notes: list[str],
              seconds: float) -> dict[str, Any]:
    manifest = resolved.manifest
    return {
        "version": METADATA_VERSION,
        "reference": str(resolved.reference),
        "digest": resolved.digest,
        "manifest_digest": resolved.manifest_digest,
        "config_digest": manifest.config.digest,
        "platform": str(platform),
        "config": resolved.config.config.to_json(),
        "layers": [layer.digest for layer in manifest.layers],
        "diff_ids": list(resolved.config.diff_ids),
        "size_bytes": size,
        "format": "erofs",
        "notes": notes[:50],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(seconds, 2),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object from a file that is not a symlink, or None."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(4 * 1024 * 1024))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, _WRITE_FLAGS, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fchmod(fh.fileno(), mode)
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_any(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)
