"""The image cache when pulls fail: nothing half-made is published or left behind.

Uses the scripted fake registry of ``test_oci_registry``; the successful
path (which runs mkfs.erofs) is covered by ``tests/e2e/test_oci_pull.py``."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hypervisor.oci import (BadLayer, BuildFailed, Credentials, DigestMismatch, ImageCache,
                            ImageNeverPull, InvalidImageName, PolicyRefused, RegistryPolicy,
                            Unauthorized)
from hypervisor.oci.manifest import OCI_CONFIG, OCI_MANIFEST
from tests.unit.test_oci_registry import FakeServer, allow, ok, servers  # noqa: F401

Servers = Callable[[], FakeServer]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def serve_image(server: FakeServer, raw_layer: bytes, *, tamper: bool = False) -> str:
    """Serve a one-layer image at demo/app:1.0; return its reference."""
    layer = gzip.compress(raw_layer, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(raw_layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer), "size": len(layer)}]}).encode()
    server.routes["/v2/demo/app/manifests/1.0"] = ok(manifest, OCI_MANIFEST)
    server.routes[f"/v2/demo/app/blobs/{sha(config)}"] = ok(config)
    served = layer[:-9] + bytes(b ^ 0xFF for b in layer[-9:-8]) + layer[-8:] if tamper else layer
    server.routes[f"/v2/demo/app/blobs/{sha(layer)}"] = ok(served)
    return f"{server.host}/demo/app:1.0"


def tar_with(name: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return buffer.getvalue()


def contents(cache: ImageCache, sub: str) -> list[str]:
    return sorted(p.name for p in (cache.root / sub).iterdir())


def test_hostile_layer_leaves_nothing_behind(servers: Servers, tmp_path: Path) -> None:  # noqa: F811
    registry = servers()
    reference = serve_image(registry, tar_with("../../escaped"))
    cache = ImageCache(tmp_path / "oci", allow(registry))
    with pytest.raises(BadLayer, match="'..'"):
        cache.ensure(reference)
    assert contents(cache, "tmp") == [] and contents(cache, "images") == []
    assert not (tmp_path / "escaped").exists()
    assert cache.lookup(reference) is None


def test_tampered_layer_is_not_kept(servers: Servers, tmp_path: Path) -> None:  # noqa: F811
    registry = servers()
    reference = serve_image(registry, tar_with("fine"), tamper=True)
    cache = ImageCache(tmp_path / "oci", allow(registry))
    with pytest.raises(DigestMismatch):
        cache.ensure(reference)
    assert contents(cache, "tmp") == [] and contents(cache, "images") == []
    assert len(contents(cache, "blobs")) == 1  # only the verified config


def test_directory_modes(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "a" / "oci", RegistryPolicy())
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in cache.root.iterdir()}
    assert modes == {"images": "0o755", "blobs": "0o700", "refs": "0o700", "locks": "0o700",
                     "tmp": "0o700"}
    assert oct(cache.root.stat().st_mode & 0o777) == "0o755"


def test_a_cache_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "images").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BuildFailed, match="not a directory"):
        ImageCache(root, RegistryPolicy())


def test_symlinked_metadata_is_ignored(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "oci", RegistryPolicy())
    digest = "sha256:" + "a" * 64
    target = tmp_path / "forged.json"
    target.write_text(json.dumps({"version": 1, "size_bytes": 0}))
    (cache.root / "images" / f"sha256-{'a' * 64}.json").symlink_to(target)
    (cache.root / "images" / f"sha256-{'a' * 64}.erofs").write_bytes(b"")
    with pytest.raises(PolicyRefused):  # not served from the cache: it asks the (refused) registry
        cache.ensure(f"127.0.0.1:1/demo/app@{digest}")


def test_never_and_invalid_names(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "oci", RegistryPolicy())
    with pytest.raises(ImageNeverPull, match="pull policy is Never"):
        cache.ensure("example.com/demo/app:1.0", pull="Never")
    with pytest.raises(InvalidImageName):
        cache.ensure("Example.com/Demo/App")
    assert cache.remove_unused([]) == []
    assert os.listdir(cache.root / "tmp") == []


def test_authorize_asks_the_registry_before_a_cached_image_is_used(
        servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A cache shared by users who may not pull each other's images: with ``authorize``,
    cached tags and digests are handed out only when the registry accepts the caller."""
    monkeypatch.setattr(ImageCache, "_mkfs",
                        lambda _self, _rootfs, disk, _digest: disk.write_bytes(b"erofs"))
    registry = servers()
    reference = serve_image(registry, tar_with("fine"))
    manifest_route = registry.routes["/v2/demo/app/manifests/1.0"]
    digest = sha(manifest_route(None)[2])  # type: ignore[arg-type]
    registry.routes[f"/v2/demo/app/manifests/{digest}"] = manifest_route
    creds = Credentials("u", "pw-of-u")
    for path, route in list(registry.routes.items()):
        def guarded(handler: Any, route: Any = route) -> Any:
            if handler.headers.get("Authorization") != creds.basic_header():
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return route(handler)
        registry.routes[path] = guarded
    cache = ImageCache(tmp_path / "oci", allow(registry))
    assert cache.ensure(reference, creds, pull="IfNotPresent").built
    pinned = f"{registry.host}/demo/app@{digest}"
    # without authorize, anyone gets what is cached (IfNotPresent, or any digest)
    assert cache.ensure(reference, None, pull="IfNotPresent").manifest_digest == digest
    assert cache.ensure(pinned, None).manifest_digest == digest
    for name, pull in ((reference, "IfNotPresent"), (reference, "Never"), (pinned, "Always")):
        with pytest.raises(Unauthorized, match="requires credentials"):
            cache.ensure(name, None, pull=pull, authorize=True)  # type: ignore[arg-type]
        before = len(registry.requests)
        image = cache.ensure(name, creds, pull=pull, authorize=True)  # type: ignore[arg-type]
        assert not image.built and image.manifest_digest == digest
        assert not [r for r in registry.requests[before:] if "/blobs/" in r[1]]
    with pytest.raises(ImageNeverPull):  # nothing cached: Never still means never
        cache.ensure(f"{registry.host}/demo/other:1", creds, pull="Never", authorize=True)
