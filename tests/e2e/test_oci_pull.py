"""Pulling images from a real registry (CNCF Distribution) into the erofs image cache.

Registries run as ``docker-registry`` processes on loopback in three modes
(anonymous, htpasswd, token); test images are built with umoci and pushed
with skopeo (``tests/support/ociimages.py``). Disks are checked with
``fsck.erofs``, which also extracts them, so nothing is mounted."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hypervisor.oci import (CachedImage, Credentials, ImageCache, ImageNeverPull, ImageNotFound,
                            NoMatchingPlatform, PolicyRefused, RegistryClient, RegistryPolicy,
                            RegistryUnreachable, Unauthorized, credentials_for, parse_reference)
from hypervisor.proc import run
from tests.support.ociimages import (BUSYBOX, BUSYBOX_LAYER2_FILE, BUSYBOX_WHITED_OUT,
                                     push_arm64_only, push_busybox, push_python3)
from tests.support.registry import (DEFAULT_USERS, LocalRegistry, anonymous_registry,  # noqa: F401
                                    basic_registry, token_registry)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = next(iter(DEFAULT_USERS.items()))


@pytest.fixture(scope="module")
def busybox(anonymous_registry: LocalRegistry) -> str:  # noqa: F811
    return push_busybox(anonymous_registry)


@pytest.fixture
def cache(tmp_path: Path, anonymous_registry: LocalRegistry) -> ImageCache:  # noqa: F811
    return ImageCache(tmp_path / "oci", anonymous_registry.policy())


def extract(disk: Path, dest: Path) -> Path:
    """Check the erofs image and extract it (fsck.erofs reads every block)."""
    run(["fsck.erofs", f"--extract={dest}", str(disk)], timeout=120)
    return dest


def leftovers(cache: ImageCache) -> list[str]:
    return sorted(p.name for p in (cache.root / "tmp").iterdir())


# -- anonymous pulls -----------------------------------------------------------------------------


def test_pull_busybox(cache: ImageCache, busybox: str, tmp_path: Path) -> None:
    events: list[str] = []
    image = cache.ensure(busybox, progress=lambda e: events.append(e.phase))
    assert image.built
    assert image.disk == cache.root / "images" / (image.manifest_digest.replace(":", "-") + ".erofs")
    assert stat.S_IMODE(os.stat(image.disk).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(image.disk.parent).st_mode) == 0o755
    assert image.size_bytes == image.disk.stat().st_size > 1_000_000
    assert image.config.cmd == ["sh"] and image.config.entrypoint is None
    assert image.config.env == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert image.config.working_dir == "/"
    meta = json.loads(image.metadata.read_text())
    assert meta["manifest_digest"] == image.manifest_digest and len(meta["layers"]) == 2
    assert events[0] == "resolving" and events[-1] == "done" and "building" in events
    assert leftovers(cache) == []

    rootfs = extract(image.disk, tmp_path / "extracted")
    assert not (rootfs / BUSYBOX_WHITED_OUT).exists()  # deleted by the second layer's whiteout
    assert (rootfs / BUSYBOX_LAYER2_FILE).read_text() == "written by the second layer\n"
    assert (rootfs / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert stat.S_IMODE(os.lstat(rootfs / "tmp").st_mode) == 0o1777


def test_second_pull_reuses_the_disk(cache: ImageCache, busybox: str) -> None:
    first = cache.ensure(busybox)
    inode = first.disk.stat().st_ino
    again = cache.ensure(busybox)  # the tag is resolved again: one HEAD request
    assert not again.built and again.disk == first.disk and again.disk.stat().st_ino == inode
    pinned = f"{busybox.rsplit(':', 1)[0]}@{first.digest}"
    # A policy that allows nothing proves there is no network access at all.
    offline = ImageCache(cache.root, RegistryPolicy())
    by_digest = offline.ensure(pinned)
    assert by_digest.disk == first.disk and by_digest.reference == pinned
    assert offline.ensure(busybox, pull="IfNotPresent").disk == first.disk
    assert offline.ensure(busybox, pull="Never").disk == first.disk
    assert offline.lookup(busybox) is not None
    with pytest.raises(PolicyRefused):
        offline.ensure(busybox)  # "Always" asks the registry
    with pytest.raises(ImageNeverPull) as info:
        offline.ensure(busybox.replace("1.36", "other"), pull="Never")
    assert info.value.reason == "ErrImageNeverPull"


def test_twenty_threads_build_once(cache: ImageCache, busybox: str) -> None:
    barrier = threading.Barrier(20)
    results: list[CachedImage | Exception] = []

    def pull() -> None:
        barrier.wait()
        try:
            results.append(cache.ensure(busybox))
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    images = [r for r in results if isinstance(r, CachedImage)]
    assert len(images) == 20, [r for r in results if isinstance(r, Exception)]
    assert sum(1 for image in images if image.built) == 1
    assert len({image.disk for image in images}) == 1
    assert leftovers(cache) == []


def test_processes_build_once(cache: ImageCache, busybox: str,
                              anonymous_registry: LocalRegistry) -> None:  # noqa: F811
    policy = anonymous_registry.policy()
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from hypervisor.oci import ImageCache, RegistryPolicy\n"
        "hosts = frozenset(json.loads(sys.argv[2]))\n"
        "cache = ImageCache(Path(sys.argv[1]), RegistryPolicy(allowed_private=hosts, insecure=hosts))\n"
        "image = cache.ensure(sys.argv[3])\n"
        "print(json.dumps({'built': image.built, 'disk': str(image.disk)}))\n"
    )
    args = [str(cache.root), json.dumps(sorted(policy.allowed_private)), busybox]
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(json.loads(out))
    assert sum(o["built"] for o in outputs) == 1
    assert len({o["disk"] for o in outputs}) == 1


def test_remove_unused(cache: ImageCache, busybox: str) -> None:
    image = cache.ensure(busybox)
    assert cache.remove_unused([image.digest]) == []
    assert image.disk.exists()
    assert cache.remove_unused([]) == [image.manifest_digest]
    assert not image.disk.exists() and not image.metadata.exists()
    assert list((cache.root / "blobs").iterdir()) == [] and list((cache.root / "refs").iterdir()) == []
    assert cache.lookup(busybox) is None
    assert cache.ensure(busybox).built


# -- errors --------------------------------------------------------------------------------------


def test_unknown_tag_and_repository(cache: ImageCache, busybox: str,
                                    anonymous_registry: LocalRegistry) -> None:  # noqa: F811
    host = anonymous_registry.host
    with pytest.raises(ImageNotFound) as info:
        cache.ensure(f"{host}/demo/busybox:9.9")
    assert str(info.value) == f"manifest unknown: {host}/demo/busybox:9.9 not found"
    assert info.value.reason == "ErrImagePull"
    with pytest.raises(ImageNotFound) as info:
        cache.ensure(f"{host}/demo/nope:1.0")
    assert str(info.value) == f"repository unknown: {host}/demo/nope not found"
    with pytest.raises(ImageNotFound):
        cache.ensure(f"{host}/demo/busybox@sha256:" + "0" * 64)


def test_unreachable_registry(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
        policy = RegistryPolicy(allowed_private=frozenset({host}), insecure=frozenset({host}))
        with pytest.raises(RegistryUnreachable) as info:
            ImageCache(tmp_path / "oci", policy).ensure(f"{host}/demo/busybox:1.36")
    assert "refused" in str(info.value) and info.value.temporary


def test_arm64_only_images(cache: ImageCache,
                           anonymous_registry: LocalRegistry) -> None:  # noqa: F811
    index = push_arm64_only(anonymous_registry)
    with pytest.raises(NoMatchingPlatform) as info:
        cache.ensure(index)
    assert str(info.value) == (f"no matching platform: {index} offers linux/arm64/v8, "
                               "not linux/amd64")
    single = push_arm64_only(anonymous_registry, "demo/arm64single", as_index=False)
    with pytest.raises(NoMatchingPlatform, match="built for linux/arm64/v8"):
        cache.ensure(single)
    assert leftovers(cache) == []


def test_loopback_registry_outside_the_policy(tmp_path: Path, busybox: str,
                                              anonymous_registry: LocalRegistry) -> None:  # noqa: F811
    host = anonymous_registry.host
    insecure_only = RegistryPolicy(insecure=frozenset({host}))
    with pytest.raises(PolicyRefused, match="loopback") as info:
        ImageCache(tmp_path / "oci", insecure_only).ensure(busybox)
    assert "administrator" in str(info.value)
    private_only = RegistryPolicy(allowed_private=frozenset({host}))  # so HTTPS, which it lacks
    with pytest.raises(RegistryUnreachable, match="TLS"):
        ImageCache(tmp_path / "oci", private_only).ensure(busybox)


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_authenticated_pulls(mode: str, tmp_path: Path, basic_registry: LocalRegistry,  # noqa: F811
                             token_registry: LocalRegistry) -> None:  # noqa: F811
    registry = basic_registry if mode == "basic" else token_registry
    reference = push_busybox(registry)
    cache = ImageCache(tmp_path / "oci", registry.policy())
    with pytest.raises(Unauthorized, match="none were given") as info:
        cache.ensure(reference)
    assert info.value.reason == "ErrImagePull"
    with pytest.raises(Unauthorized, match="refused the credentials") as info:
        cache.ensure(reference, Credentials(USER, "not-the-password"))
    assert "not-the-password" not in str(info.value)
    secret = registry.dockerconfigjson(USER, PASSWORD)
    creds = credentials_for(secret, parse_reference(reference).domain)
    image = cache.ensure(reference, creds)
    assert image.built and image.config.cmd == ["sh"]
    with pytest.raises(Unauthorized):  # a cached image is no excuse to skip the check
        cache.ensure(reference, Credentials(USER, "still-wrong"))
    if registry.token_server is not None:
        scopes = {r.get("scope") for r in registry.token_server.requests}
        assert "repository:demo/busybox:pull" in scopes


# -- the python3 image ---------------------------------------------------------------------------


def test_python3_image_builds_and_pushes(anonymous_registry: LocalRegistry) -> None:  # noqa: F811
    reference = push_python3(anonymous_registry)
    resolved = RegistryClient(anonymous_registry.host, anonymous_registry.policy()).resolve(
        parse_reference(reference))
    assert resolved.config.config.cmd == ["python3"]
    assert len(resolved.manifest.layers) == 1
    assert resolved.manifest.layers[0].size > 5_000_000
