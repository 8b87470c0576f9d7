"""Build small OCI test images offline and push them to a ``LocalRegistry``.

Each builder makes an OCI image layout once, keeps it in the cache directory
(``$LAB_CACHE_DIR/test-images``, by default /var/cache/pacific-lab) under a
name keyed by its inputs, and pushes it with ``skopeo copy`` each time
(registries in tests are fresh). Functions return the pushed reference::

    with LocalRegistry() as reg:
        ref = push_busybox(reg)   # "127.0.0.1:PORT/demo/busybox:1.36"

- ``push_busybox``: Debian's static busybox with every applet as a symlink
  (``busybox --list-full``), in two layers: the second deletes
  ``BUSYBOX_WHITED_OUT`` from the first (so the layer has a whiteout) and
  adds ``BUSYBOX_LAYER2_FILE``. Built with umoci in about a second.
- ``push_python3``: a Debian bookworm root file system with python3-minimal
  and its standard library (libpython3-stdlib: json, http.server, ...),
  made by ``mmdebstrap --variant=essential`` from the mirror in this host's
  apt sources, as one layer. The rootfs tarball is cached as
  ``test-images/python3-rootfs.tar`` (its recipe next to it in
  ``python3-rootfs.json``); the first build takes about half a minute here.
- ``push_arm64_only``: an image whose only platform is linux/arm64 (as an
  index, or as a single manifest whose config says arm64). Its one file is
  text, not an arm64 binary; it exists to be refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from hypervisor.images import host_apt_options, host_apt_sources
from hypervisor.proc import run
from tests.support.registry import LocalRegistry

RECIPE_VERSION = 1
BUSYBOX = Path("/bin/busybox")
BUSYBOX_WHITED_OUT = "etc/deleted-by-layer2"
BUSYBOX_LAYER2_FILE = "etc/layer2"
BUSYBOX_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
# python3-minimal alone has no json, http or email modules; libpython3-stdlib adds
# the standard library (what "python3" brings, without its documentation helpers).
PYTHON3_PACKAGES: tuple[str, ...] = ("python3-minimal", "libpython3-stdlib")
PYTHON3_RELEASE = "bookworm"
# Leave documentation and translations out of the test image: smaller, faster to push.
_DPKG_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
                  "/usr/share/locale/*", "/usr/share/lintian/*")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYOUT_TAG = "image"


def cache_dir() -> Path:
    """Where built test images are kept between runs."""
    return Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab")) / "test-images"


# -- pushing -----------------------------------------------------------------------------------


def push_layout(layout: Path, registry: LocalRegistry, repository: str, tag: str, *,
                all_platforms: bool = False) -> str:
    """Copy the image tagged ``LAYOUT_TAG`` in ``layout`` to ``registry``; return the reference."""
    reference = f"{registry.host}/{repository}:{tag}"
    cmd = ["skopeo", "copy", "--insecure-policy", "--quiet", "--dest-tls-verify=false"]
    credentials = registry.credentials()
    if credentials is not None:
        cmd.append(f"--dest-creds={credentials[0]}:{credentials[1]}")
    if all_platforms:
        cmd.append("--all")
    run(cmd + [f"oci:{layout}:{LAYOUT_TAG}", f"docker://{reference}"], timeout=600)
    return reference


def push_busybox(registry: LocalRegistry, repository: str = "demo/busybox",
                 tag: str = "1.36") -> str:
    return push_layout(busybox_layout(), registry, repository, tag)


def push_python3(registry: LocalRegistry, repository: str = "demo/python3",
                 tag: str = "3.11") -> str:
    return push_layout(python3_layout(), registry, repository, tag)


def push_arm64_only(registry: LocalRegistry, repository: str = "demo/arm64only",
                    tag: str = "1.0", *, as_index: bool = True) -> str:
    return push_layout(arm64_layout(as_index), registry, repository, tag, all_platforms=as_index)


# -- the cache ---------------------------------------------------------------------------------


def _cached(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """``cache_dir()/<name>-<key>``, made by ``build(tmp)`` unless it is there already."""
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"{name}-{key[:16]}"
    with _locked(base / f".{name}.lock"):
        if (final / "index.json").is_file():
            return final
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
        try:
            build(work)
            for old in base.glob(f"{name}-*"):  # older recipes
                shutil.rmtree(old, ignore_errors=True)
            (work / "oci").rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _umoci_config(image: str, *, cmd: Sequence[str], env: Sequence[str], workdir: str = "/",
                  architecture: str = "amd64") -> None:
    args = ["umoci", "config", "--image", image, "--os", "linux", "--architecture", architecture,
            "--config.workingdir", workdir, "--author", "pacific-lab tests",
            "--created", "2024-01-01T00:00:00Z", "--history.created", "2024-01-01T00:00:00Z"]
    for item in cmd:
        args += ["--config.cmd", item]
    for item in env:
        args += ["--config.env", item]
    run(args, timeout=120)


# -- busybox -----------------------------------------------------------------------------------


def busybox_layout() -> Path:
    """The two-layer busybox image as an OCI layout (built once per busybox binary)."""
    digest = hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()
    key = hashlib.sha256(f"{RECIPE_VERSION}:{digest}".encode()).hexdigest()
    return _cached("busybox", key, _build_busybox)


def _build_busybox(work: Path) -> None:
    layout, bundle = work / "oci", work / "bundle"
    image = f"{layout}:{LAYOUT_TAG}"
    run(["umoci", "init", "--layout", str(layout)], timeout=60)
    run(["umoci", "new", "--image", image], timeout=60)
    run(["umoci", "unpack", "--image", image, str(bundle)], timeout=120)
    _busybox_rootfs(bundle / "rootfs")
    # Without --refresh-bundle the next repack would diff against the empty base again.
    run(["umoci", "repack", "--refresh-bundle", "--image", image, str(bundle)], timeout=120)
    (bundle / "rootfs" / BUSYBOX_WHITED_OUT).unlink()
    (bundle / "rootfs" / BUSYBOX_LAYER2_FILE).write_text("written by the second layer\n")
    run(["umoci", "repack", "--image", image, str(bundle)], timeout=120)
    _umoci_config(image, cmd=["sh"], env=BUSYBOX_ENV)
    run(["umoci", "gc", "--layout", str(layout)], timeout=60)


def _busybox_rootfs(rootfs: Path) -> None:
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev",
                      "var", "home"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").mkdir(mode=0o1777)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX, rootfs / "bin/busybox")
    for path in run([str(BUSYBOX), "--list-full"], timeout=30).stdout.split():
        link = rootfs / path
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                       "nobody:x:65534:65534:nobody:/:/bin/false\n")
    (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (rootfs / BUSYBOX_WHITED_OUT).write_text("the second layer deletes this file\n")


# -- python3 -----------------------------------------------------------------------------------


def python3_rootfs_tar(packages: Sequence[str] = PYTHON3_PACKAGES) -> Path:
    """A bookworm rootfs tarball with ``packages``, made by mmdebstrap once and cached."""
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    suffix = "" if tuple(packages) == PYTHON3_PACKAGES else \
        "-" + hashlib.sha256(",".join(packages).encode()).hexdigest()[:12]
    tar = base / f"python3-rootfs{suffix}.tar"
    recipe_file = tar.with_suffix(".json")
    recipe = {"version": RECIPE_VERSION, "release": PYTHON3_RELEASE, "packages": list(packages),
              "excludes": list(_DPKG_EXCLUDES)}
    with _locked(base / ".python3-rootfs.lock"):
        with contextlib.suppress(OSError, ValueError):
            if tar.is_file() and json.loads(recipe_file.read_text()) == recipe:
                return tar
        partial = base / f".{tar.name}.partial.tar"
        cmd = ["mmdebstrap", "--mode=root", "--variant=essential", "--format=tar",
               "--include=" + ",".join(packages)]
        cmd += [f"--aptopt={opt}" for opt in host_apt_options()]
        cmd += [f"--dpkgopt=path-exclude={pattern}" for pattern in _DPKG_EXCLUDES]
        cmd += [PYTHON3_RELEASE, str(partial), "-"]
        try:
            run(cmd, input="\n".join(host_apt_sources(PYTHON3_RELEASE)) + "\n", timeout=1800)
            partial.rename(tar)
            recipe_file.write_text(json.dumps(recipe, sort_keys=True) + "\n")
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return tar


def python3_layout(packages: Sequence[str] = PYTHON3_PACKAGES) -> Path:
    """The python3 image as an OCI layout: one layer, the rootfs tarball as it is."""
    tar = python3_rootfs_tar(packages)
    st = tar.stat()
    key = hashlib.sha256(f"{RECIPE_VERSION}:{tar.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    name = "python3" if tuple(packages) == PYTHON3_PACKAGES else f"python3-{tar.stem[-12:]}"

    def build(work: Path) -> None:
        layout = work / "oci"
        image = f"{layout}:{LAYOUT_TAG}"
        run(["umoci", "init", "--layout", str(layout)], timeout=60)
        run(["umoci", "new", "--image", image], timeout=60)
        run(["umoci", "raw", "add-layer", "--image", image, str(tar)], timeout=900)
        _umoci_config(image, cmd=["python3"], env=BUSYBOX_ENV + ("LANG=C.UTF-8",))
        run(["umoci", "gc", "--layout", str(layout)], timeout=60)

    return _cached(name, key.hexdigest(), build)


# -- arm64 only --------------------------------------------------------------------------------


def arm64_layout(as_index: bool = True) -> Path:
    """An OCI layout whose image exists only for linux/arm64."""
    key = hashlib.sha256(f"{RECIPE_VERSION}:arm64:{as_index}".encode()).hexdigest()
    name = "arm64-index" if as_index else "arm64-manifest"
    return _cached(name, key, lambda work: _build_arm64(work / "oci", as_index))


def _build_arm64(layout: Path, as_index: bool) -> None:
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer_tar = _tar_bytes({"hello": b"this image is for linux/arm64 only\n"})
    layer = put(gzip.compress(layer_tar, mtime=0), OCI_LAYER_GZIP)
    config = put(json.dumps({
        "architecture": "arm64", "variant": "v8", "os": "linux",
        "config": {"Cmd": ["/hello"], "Env": list(BUSYBOX_ENV)},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }, sort_keys=True).encode(), OCI_CONFIG)
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                               "layers": [layer]}, sort_keys=True).encode(), OCI_MANIFEST)
    top = manifest
    if as_index:
        entry = {**manifest, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}
        top = put(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]},
                             sort_keys=True).encode(), OCI_INDEX)
    top = {**top, "annotations": {"org.opencontainers.image.ref.name": LAYOUT_TAG}}
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
