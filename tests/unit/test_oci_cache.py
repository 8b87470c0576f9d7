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

import pytest

from hypervisor.oci import (BadLayer, BuildFailed, DigestMismatch, ImageCache, ImageNeverPull,
                            InvalidImageName, PolicyRefused, RegistryPolicy)
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
