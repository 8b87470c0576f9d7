"""Guest images: build a Debian cloud image from the package archive, or import one.

``build_debian_image()`` makes a qcow2 base image with ``mmdebstrap`` (using
the Debian mirror that this host's own apt sources name), ``mkfs.ext4 -d`` and
``qemu-img convert``. ``import_image()`` takes a qcow2 or raw image from a
local file or an ``https://`` URL and treats it as hostile. Both return a
``BuiltImage`` and report progress through a callback of ``ImageProgress``.

Built images boot by direct kernel boot
----------------------------------------
The disk has no partition table and no boot loader: it is one ext4 file
system (label ``pacific-root``, a UUID fixed per build) on the whole disk.
The image's own kernel and initrd are copied out next to the disk and the VM
boots them through libvirt's ``<os><kernel/><initrd/><cmdline/></os>``::

    root=UUID=<fs uuid> ro console=tty0 console=ttyS0,115200n8

(``BuiltImage.cmdline`` holds the exact line.) The serial console is the last
``console=``, so systemd and cloud-init write their progress there. Works
with SeaBIOS or qboot, ``machine='pc'`` or ``q35``. The root disk and the
NoCloud seed (label ``cidata``) must both be virtio disks: Debian's cloud
kernel has no SATA/AHCI driver. A kernel upgraded inside the guest is not
booted until the host copies it out; the image's files are what boots.

Inside the image: systemd, cloud-init restricted to the NoCloud datasource
(``datasource_list: [NoCloud, None]``), networking rendered by cloud-init for
systemd-networkd with systemd-resolved, openssh-server without host keys
(cloud-init makes them per VM), qemu-guest-agent, sudo, python3, an empty
``/etc/machine-id`` and no passwords. cloud-init grows the root file system to
the size of a larger overlay (``resize_rootfs``); ``growpart`` is off because
there is no partition to grow.

cloud-init 22.4 (bookworm) does not accept ``to: default`` in a v2 route:
write ``to: 0.0.0.0/0`` (or ``gateway4``), or cloud-init drops the whole
network config and the VM waits two minutes for a network that never comes.

Files
-----
``cache_dir/<name>-<key16>/`` holds one build (``disk.qcow2``, ``vmlinuz``,
``initrd.img``, ``build.json``); ``<key16>`` hashes the release, the package
list, the guest configuration, the disk size and ``BUILD_SCRIPT_VERSION``, so a
changed recipe builds anew (``force`` rebuilds the same recipe).

Derived images (Kubernetes node images, ``hypervisor.nodeimage``) pass an
``ImageRecipe``: more packages (names, or ``.deb`` files staged by its
``prepare`` step), more apt repositories with their keyrings, more files and
mmdebstrap customize hooks. The recipe's ``inputs`` (for example the
checksums of the ``.deb`` files) are part of the cache key, with everything
else in the recipe. Results are
published into ``out_dir`` under names that carry the first 12 hex digits
of the disk's sha256 (``debian-12-<sha12>.qcow2``, ``.vmlinuz``, ``.initrd``;
``<name>-<sha12>.qcow2`` for imports), hard-linked from the cache where
possible, read-only. A published file is never rewritten with other content,
so an overlay whose backing file it is stays valid after a rebuild.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import ssl
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import yaml

from hypervisor.proc import ProcessError, run

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3
TiB = 1024 ** 4

# Bump when the build steps change in a way the cache key cannot see.
BUILD_SCRIPT_VERSION = 1

ROOT_LABEL = "pacific-root"
RELEASES = {"bullseye": "11", "bookworm": "12", "trixie": "13"}
PACKAGES: tuple[str, ...] = (
    "systemd-sysv", "udev", "dbus", "systemd-resolved",
    "linux-image-cloud-amd64", "initramfs-tools", "e2fsprogs",
    "cloud-init", "cloud-guest-utils", "openssh-server", "qemu-guest-agent",
    "sudo", "ca-certificates", "python3",
    "iproute2", "iputils-ping", "netbase", "procps", "less",
)
# Services to enable in the image beyond what the packages enable themselves.
ENABLE_UNITS: tuple[str, ...] = ("systemd-networkd.service",)

CLOUD_CFG = {
    # Only the NoCloud seed: no waiting for metadata servers that are not there.
    "datasource_list": ["NoCloud", "None"],
    # The root file system fills the whole disk; there is no partition to grow.
    "growpart": {"mode": "off"},
    "resize_rootfs": True,
    "ssh_genkeytypes": ["rsa", "ecdsa", "ed25519"],
}
GUEST_FILES: dict[str, str] = {
    "etc/cloud/cloud.cfg.d/90_pacific.cfg":
        "# Pacific Lab image defaults\n" + yaml.safe_dump(CLOUD_CFG, sort_keys=True),
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
                 "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
    # With the system locale already C.UTF-8, cloud-init's locale module has
    # nothing to generate (there is no ``locales`` package in the image).
    "etc/default/locale": "LANG=C.UTF-8\n",
    # cloud-init makes the host keys once per instance. A hard power-off soon
    # after the first boot can leave them empty, and sshd would never start
    # again: make missing or empty keys anew before sshd checks its config.
    "etc/systemd/system/ssh.service.d/10-pacific-host-keys.conf":
        "[Service]\n"
        "ExecStartPre=\n"
        "ExecStartPre=/bin/sh -c 'for k in /etc/ssh/ssh_host_*_key; do [ -s \"$$k\" ] || "
        "rm -f \"$$k\" \"$$k.pub\"; done; exec /usr/bin/ssh-keygen -A'\n"
        "ExecStartPre=/usr/sbin/sshd -t\n",
}

MAX_IMPORT_BYTES = 64 * GiB
MAX_VIRTUAL_BYTES = 4 * TiB
MAX_REDIRECTS = 5
NET_TIMEOUT = 30.0
CHUNK = 1024 * 1024
QEMU_IMG_INFO_LIMITS = ("--as=1073741824", "--cpu=30")  # as OpenStack does for hostile images
BOOTSTRAP_TIMEOUT = 3600.0
CONVERT_TIMEOUT = 3600.0

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_RELEASE = re.compile(r"^[a-z]{2,32}$")
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")


class ImageError(RuntimeError):
    """An image could not be built or was refused; the message is one readable line."""


@dataclass(frozen=True)
class ImageProgress:
    phase: str
    fraction: float  # of the whole job, 0.0 to 1.0
    done_bytes: int | None = None
    total_bytes: int | None = None


@dataclass(frozen=True)
class BuiltImage:
    name: str
    disk: Path  # qcow2
    kernel: Path | None  # set for images that boot by direct kernel boot
    initrd: Path | None
    cmdline: str | None
    sha256: str  # of the qcow2 file
    size_bytes: int  # of the qcow2 file
    virtual_size_bytes: int  # the disk's capacity
    os: dict[str, str] = field(default_factory=dict)  # name, version
    source: str = ""


Progress = Callable[[ImageProgress], None] | None


@dataclass(frozen=True)
class AptRepository:
    """An apt repository besides Debian's, used while building and kept in the image."""

    name: str  # file stem of its keyring and sources list inside the image
    line: str  # a one-line source without "deb" and options: "URI SUITE [COMPONENT...]"
    keyring: bytes  # binary OpenPGP keyring that signs it


@dataclass(frozen=True)
class Prepared:
    """What a recipe's ``prepare`` step staged in the build's work directory."""

    includes: tuple[str, ...] = ()  # absolute paths of .deb files to install
    hooks: tuple[str, ...] = ()  # mmdebstrap --customize-hook commands, run in order


@dataclass(frozen=True)
class ImageRecipe:
    """What a derived image adds to the Debian base image.

    ``prepare`` runs only when the image is really built (not for a cached
    build), with a private directory to stage files in; what it stages must be
    covered by ``inputs``, which the cache key hashes."""

    name: str
    packages: tuple[str, ...] = ()  # Debian package names (``name=version`` allowed)
    repositories: tuple[AptRepository, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> text
    hooks: tuple[str, ...] = ()  # customize hooks after ``prepare``'s
    prepare: Callable[[Path], Prepared] | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "packages": sorted(self.packages),
                "repositories": [{"name": r.name, "line": r.line,
                                  "keyring": hashlib.sha256(r.keyring).hexdigest()}
                                 for r in self.repositories],
                "files": dict(self.files), "hooks": list(self.hooks),
                "inputs": dict(self.inputs)}


def _report(progress: Progress, phase: str, fraction: float, done: int | None = None,
            total: int | None = None) -> None:
    if progress is not None:
        progress(ImageProgress(phase, min(max(fraction, 0.0), 1.0), done, total))


# -- building --------------------------------------------------------------------------------


def build_debian_image(release: str = "bookworm", *, out_dir: Path, cache_dir: Path,
                       size_gib: int = 4, force: bool = False,
                       progress: Progress = None, recipe: ImageRecipe | None = None) -> BuiltImage:
    """Build (or take from ``cache_dir``) a Debian ``release`` image; publish it into ``out_dir``.

    With a ``recipe``, the image is the base image plus what the recipe adds,
    named (and cached) as ``recipe.name``."""
    if not _RELEASE.match(release):
        raise ImageError(f"invalid Debian release name {release!r}")
    if not 1 <= size_gib <= 1024:
        raise ImageError(f"image size must be 1 to 1024 GiB, not {size_gib}")
    if recipe is not None and not _DNS1123_LABEL.match(recipe.name):
        raise ImageError(f"invalid image name {recipe.name!r}")
    name = recipe.name if recipe is not None else f"debian-{RELEASES.get(release, release)}"
    key = cache_key(release, size_gib, recipe)
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = cache_dir / f"{name}-{key[:16]}"
    with _locked(cache_dir / f".{entry.name}.lock"):
        meta = None if force else _load_build(entry)
        if meta is None:
            meta = _build(release, name, key, entry, cache_dir, size_gib, progress, recipe)
            _prune_superseded(cache_dir, name, entry, size_gib)
        else:
            LOG.info("[%s] using the cached build %s", name, entry)
        built = _publish_build(name, entry, meta, out_dir)
    _report(progress, "done", 1.0)
    return built


def cache_key(release: str, size_gib: int, extra: ImageRecipe | None = None) -> str:
    recipe: dict[str, Any] = {
        "release": release, "packages": sorted(PACKAGES), "units": list(ENABLE_UNITS),
        "files": GUEST_FILES, "size_gib": size_gib, "label": ROOT_LABEL,
        "script": BUILD_SCRIPT_VERSION}
    if extra is not None:
        recipe["extra"] = extra.fingerprint()
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def kernel_cmdline(fs_uuid: str) -> str:
    return f"root=UUID={fs_uuid} ro console=tty0 console=ttyS0,115200n8"


def _build(release: str, name: str, key: str, entry: Path, cache_dir: Path, size_gib: int,
           progress: Progress, recipe: ImageRecipe | None = None) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise ImageError("building an image needs root (mmdebstrap, and files owned by root)")
    sources = host_apt_sources(release)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".build-{entry.name}-", dir=cache_dir))
    try:
        rootfs = work / "rootfs"
        prepared = Prepared()
        if recipe is not None and recipe.prepare is not None:
            _report(progress, "staging inputs", 0.01)
            staging = work / "inputs"
            staging.mkdir(mode=0o700)
            prepared = recipe.prepare(staging)
        _report(progress, "bootstrapping packages", 0.02)
        LOG.info("[%s] bootstrapping %s from %s", name, release,
                 ", ".join(sorted({line.split()[-3] for line in sources})))
        _bootstrap(release, rootfs, sources, recipe, prepared, work)

        _report(progress, "configuring", 0.70)
        fs_uuid = str(uuid.UUID(bytes=bytes.fromhex(key[:32]), version=4))
        configure_rootfs(rootfs, fs_uuid)
        if recipe is not None:
            apply_recipe(rootfs, recipe, work)
        os_info = _os_release(rootfs)
        out = work / "out"
        out.mkdir()
        kernel_version = _copy_boot_files(rootfs, out)

        _report(progress, "making filesystem", 0.75)
        raw = work / "root.raw"
        run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-U", fs_uuid, "-d", str(rootfs),
             str(raw), f"{size_gib}G"], timeout=CONVERT_TIMEOUT)
        shutil.rmtree(rootfs)

        _report(progress, "converting", 0.85)
        disk = out / "disk.qcow2"
        _convert_compressed(raw, disk)
        raw.unlink()

        _report(progress, "checksumming", 0.95)
        info = _qemu_img_info(disk, "qcow2")
        meta = {
            "name": name, "release": release, "key": key, "sha256": sha256_file(disk),
            "size_bytes": disk.stat().st_size, "virtual_size_bytes": int(info["virtual-size"]),
            "cmdline": kernel_cmdline(fs_uuid), "fs_uuid": fs_uuid, "os": os_info,
            "kernel_version": kernel_version, "size_gib": size_gib,
            "packages": sorted(PACKAGES + (recipe.packages if recipe else ())),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        _write_json(out / "build.json", meta)
        for child in out.iterdir():
            child.chmod(0o444)
        out.chmod(0o755)
        _replace_dir(out, entry, work)
        LOG.info("[%s] built %s in %.0f s (%d bytes, sha256 %s)", name, entry,
                 meta["build_seconds"], meta["size_bytes"], meta["sha256"][:16])
        return meta
    except (ProcessError, OSError) as exc:
        raise ImageError(f"building {name} failed: {_describe(exc)}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


FILE_MIRROR_HOOKS = "/usr/share/mmdebstrap/hooks/file-mirror-automount"


def _bootstrap(release: str, rootfs: Path, sources: Sequence[str],
               recipe: ImageRecipe | None = None, prepared: Prepared = Prepared(),
               work: Path | None = None) -> None:
    packages = PACKAGES + (recipe.packages if recipe else ())
    cmd = ["mmdebstrap", "--mode=root", "--variant=apt", "--format=directory",
           "--include=" + ",".join(packages)]
    # .deb files each get their own --include (paths are never split on commas).
    cmd += [f"--include={path}" for path in prepared.includes]
    if prepared.includes:
        cmd.append(f"--hook-dir={FILE_MIRROR_HOOKS}")
    cmd += [f"--aptopt={opt}" for opt in host_apt_options()]
    cmd += [f'--customize-hook=chroot "$1" systemctl enable {unit}' for unit in ENABLE_UNITS]
    cmd += [f"--customize-hook={hook}" for hook in prepared.hooks]
    cmd += [f"--customize-hook={hook}" for hook in (recipe.hooks if recipe else ())]
    lines = list(sources)
    for repo in recipe.repositories if recipe else ():
        assert work is not None
        keyring = _build_keyring(work, repo)
        lines.append(f"deb [signed-by={keyring}] {repo.line}")
    cmd += [release, str(rootfs), "-"]
    run(cmd, input="\n".join(lines) + "\n", timeout=BOOTSTRAP_TIMEOUT)


def _build_keyring(work: Path, repo: AptRepository) -> Path:
    path = work / "keyrings" / f"{repo.name}.gpg"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(repo.keyring)
    path.chmod(0o644)
    return path


def _write_tree_file(rootfs: Path, rel: str, data: str | bytes, mode: int = 0o644) -> None:
    path = rootfs / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():  # never write through a link out of the tree
        path.unlink()
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    path.chmod(mode)


def apply_recipe(rootfs: Path, recipe: ImageRecipe, work: Path) -> None:
    """A recipe's files, and its repositories as the image keeps them.

    While building, a repository's keyring lives in the build's work
    directory; in the image it moves to ``/etc/apt/keyrings`` with a
    sources list of its own, and the build's line is dropped."""
    for rel, text in recipe.files.items():
        _write_tree_file(rootfs, rel, text)
    if not recipe.repositories:
        return
    sources = rootfs / "etc/apt/sources.list"
    if sources.is_file() and not sources.is_symlink():
        marker = str(work / "keyrings") + "/"
        kept = [line for line in sources.read_text().splitlines() if marker not in line]
        sources.write_text("".join(line + "\n" for line in kept))
    for repo in recipe.repositories:
        _write_tree_file(rootfs, f"etc/apt/keyrings/{repo.name}.gpg", repo.keyring)
        _write_tree_file(rootfs, f"etc/apt/sources.list.d/{repo.name}.list",
                         f"deb [signed-by=/etc/apt/keyrings/{repo.name}.gpg] {repo.line}\n")


def configure_rootfs(rootfs: Path, fs_uuid: str) -> None:
    """Make a bootstrapped tree into a base image that every clone may boot as its own."""
    files = dict(GUEST_FILES)
    files["etc/fstab"] = f"UUID={fs_uuid}\t/\text4\trw,discard,errors=remount-ro\t0\t1\n"
    # Each clone gets its own identity on first boot: systemd fills machine-id.
    files["etc/machine-id"] = ""
    for rel, text in files.items():
        path = rootfs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():  # never write through a link out of the tree
            path.unlink()
        path.write_text(text)
        path.chmod(0o644 if text else 0o444)
    # cloud-init makes the SSH host keys on first boot.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    shutil.rmtree(rootfs / "var/lib/cloud", ignore_errors=True)
    for log in ("var/log/dpkg.log", "var/log/alternatives.log", "var/log/apt/history.log",
                "var/log/apt/term.log"):
        with contextlib.suppress(FileNotFoundError):
            (rootfs / log).unlink()


def _os_release(rootfs: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (rootfs / "etc/os-release").read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            values[k.strip()] = v.strip().strip('"')
    return {"name": values.get("ID", "debian"), "version": values.get("VERSION_ID", "")}


def _copy_boot_files(rootfs: Path, out: Path) -> str:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise ImageError(f"expected one kernel in the image's /boot, found {len(kernels)}")
    version = kernels[0].name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise ImageError(f"the image has no initrd for kernel {version}")
    shutil.copyfile(kernels[0], out / "vmlinuz")
    shutil.copyfile(initrd, out / "initrd.img")
    return version


def _convert_compressed(raw: Path, disk: Path) -> None:
    base = ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-c"]
    try:
        run(base + ["-o", "compression_type=zstd", str(raw), str(disk)], timeout=CONVERT_TIMEOUT)
    except ProcessError as exc:  # a QEMU built without zstd
        if "compression" not in (exc.stderr + exc.stdout).lower():
            raise
        run(base + [str(raw), str(disk)], timeout=CONVERT_TIMEOUT)


def _load_build(entry: Path) -> dict[str, Any] | None:
    try:
        meta: dict[str, Any] = json.loads((entry / "build.json").read_text())
        if (entry / "disk.qcow2").stat().st_size != meta["size_bytes"]:
            return None
        if not ((entry / "vmlinuz").is_file() and (entry / "initrd.img").is_file()):
            return None
        return meta
    except (OSError, ValueError, KeyError):
        return None


def _prune_superseded(cache_dir: Path, name: str, entry: Path, size_gib: int) -> None:
    """Drop cached builds of ``name`` and this size from older recipes.

    Published files are hard links or copies, so VMs never depend on these."""
    for other in cache_dir.glob(f"{name}-*"):
        if other == entry or not other.is_dir() or other.is_symlink():
            continue
        try:
            meta = json.loads((other / "build.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("size_gib", size_gib) == size_gib:
            LOG.info("[%s] removing the superseded build %s", name, other)
            shutil.rmtree(other, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (cache_dir / f".{other.name}.lock").unlink()


def _publish_build(name: str, entry: Path, meta: dict[str, Any], out_dir: Path) -> BuiltImage:
    stem = f"{name}-{meta['sha256'][:12]}"
    disk = _publish(entry / "disk.qcow2", out_dir / f"{stem}.qcow2")
    kernel = _publish(entry / "vmlinuz", out_dir / f"{stem}.vmlinuz")
    initrd = _publish(entry / "initrd.img", out_dir / f"{stem}.initrd")
    return BuiltImage(name=name, disk=disk, kernel=kernel, initrd=initrd, cmdline=meta["cmdline"],
                      sha256=meta["sha256"], size_bytes=meta["size_bytes"],
                      virtual_size_bytes=meta["virtual_size_bytes"], os=dict(meta["os"]),
                      source=f"debian:{meta['release']}")


# -- the host's apt configuration ----------------------------------------------------------------


def host_apt_sources(release: str, root: Path = Path("/")) -> list[str]:
    """One-line apt sources for ``release`` from the Debian entries of this host's apt sources.

    Entries for the host's own release (``X``, ``X-updates``, ``X-security``)
    are rewritten to ``release``; only the ``main`` component is used."""
    host_codename = _os_release_codename(root)
    entries = _read_apt_sources(root / "etc/apt")
    lines: list[str] = []
    for types, uris, suites, options in entries:
        if "deb" not in types:
            continue
        for suite in suites:
            base, _, pocket = suite.partition("-")
            if base not in {release, host_codename} or pocket not in ("", "updates", "security"):
                continue
            new_suite = release + (f"-{pocket}" if pocket else "")
            opts = f"[{' '.join(options)}] " if options else ""
            for uri in uris:
                line = f"deb {opts}{uri} {new_suite} main"
                if line not in lines:
                    lines.append(line)
    if not any(line.split()[-2] == release for line in lines):
        raise ImageError(f"no Debian mirror for {release!r} in this host's apt sources "
                         f"(looked for '{host_codename or release}' entries under {root / 'etc/apt'})")
    return lines


def _os_release_codename(root: Path) -> str:
    try:
        text = (root / "etc/os-release").read_text()
    except OSError:
        return ""
    match = re.search(r'^VERSION_CODENAME="?([a-z]+)"?\s*$', text, re.M)
    return match.group(1) if match else ""


SourceEntry = tuple[list[str], list[str], list[str], list[str]]


def _read_apt_sources(etc_apt: Path) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    files = [etc_apt / "sources.list"]
    files += sorted((etc_apt / "sources.list.d").glob("*.list"))
    for path in files:
        with contextlib.suppress(OSError):
            entries += _parse_one_line_sources(path.read_text())
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            entries += _parse_deb822_sources(path.read_text())
    return entries


def _parse_one_line_sources(text: str) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        options: list[str] = []
        match = re.match(r"^(\S+)\s+\[([^\]]*)\]\s+(.*)$", line)
        if match:
            kind, opts, rest = match.groups()
            options = [o for o in opts.split() if o.startswith("signed-by=")]
        else:
            kind, _, rest = line.partition(" ")
        parts = rest.split()
        if len(parts) >= 2:
            entries.append(([kind], [parts[0]], [parts[1]], options))
    return entries


def _parse_deb822_sources(text: str) -> list[SourceEntry]:
    entries: list[SourceEntry] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        current = ""
        for raw in stanza.splitlines():
            if raw.startswith("#") or not raw.strip():
                continue
            if raw[0].isspace() and current:
                fields[current] += "\n" + raw.strip()
                continue
            key, sep, value = raw.partition(":")
            if sep:
                current = key.strip().lower()
                fields[current] = value.strip()
        if fields.get("enabled", "yes").lower() == "no" or "uris" not in fields:
            continue
        signed_by = fields.get("signed-by", "")
        options = [f"signed-by={signed_by}"] if signed_by.startswith("/") and "\n" not in signed_by \
            else []
        entries.append((fields.get("types", "").split(), fields["uris"].split(),
                        fields.get("suites", "").split(), options))
    return entries


_APT_LINE = re.compile(r'^(Acquire::[\w:.-]+) "([^"]*)";$')
_APT_KEYS = frozenset({"Acquire::http::Proxy", "Acquire::https::Proxy", "Acquire::Check-Valid-Until",
                       "Acquire::Check-Date", "Acquire::Retries", "Acquire::ForceIPv4"})


def host_apt_options() -> list[str]:
    """The host's apt settings that decide whether and how the mirror is reached."""
    try:
        dump = run(["apt-config", "dump"], timeout=30).stdout
    except ProcessError:
        return []
    options = []
    for line in dump.splitlines():
        match = _APT_LINE.match(line.strip())
        if not match or not match.group(2):
            continue
        key = match.group(1)
        if key in _APT_KEYS or key.startswith(("Acquire::http::Proxy::", "Acquire::https::Proxy::")):
            options.append(f'{key} "{match.group(2)}"')
    return options


# -- importing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PinnedURL:
    """An https URL and the addresses it was checked at; the connection goes only there."""
    url: str
    host: str
    port: int
    addresses: tuple[str, ...]  # every one checked; tried in order
    target: str  # path and query for the request line

    @property
    def address(self) -> str:
        return self.addresses[0]


def import_image(source: str, name: str, out_dir: Path, *, allow_private: bool = False,
                 progress: Progress = None, max_bytes: int = MAX_IMPORT_BYTES,
                 cafile: Path | None = None) -> BuiltImage:
    """Import a qcow2 or raw image from a local path or an https:// URL into ``out_dir``.

    The input is treated as hostile: see ``resolve_url`` for the URL checks;
    local files must be regular files (opened with ``O_NOFOLLOW``); the format
    is read from the file's own header, qcow2 images with a backing file, an
    external data file or encryption are refused, and the result is always
    rewritten by ``qemu-img convert`` into a new, self-contained qcow2.
    ``cafile``, if given, is the CA bundle that the server's certificate must
    chain to instead of the system's (an administrator's own CA)."""
    if not _DNS1123_LABEL.match(name):
        raise ImageError(f"invalid image name {name!r}: use lower-case letters, digits and '-' "
                         "(at most 63, starting and ending with a letter or digit)")
    if max_bytes <= 0:
        raise ImageError("max_bytes must be positive")
    is_url = "://" in source
    if is_url:
        scheme = source.split("://", 1)[0].lower()
        if scheme != "https":
            raise ImageError(f"refusing a {scheme}:// URL: only https:// URLs are imported")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=out_dir))
    try:
        fetched = work / "source"
        if is_url:
            _download(source, fetched, allow_private=allow_private, max_bytes=max_bytes,
                      cafile=cafile, progress=progress)
            label = _redact(source)
        else:
            _copy_local(source, fetched, max_bytes=max_bytes, progress=progress)
            label = os.path.abspath(source)

        _report(progress, "verifying", 0.72)
        fmt = sniff_format(fetched)
        info = _qemu_img_info(fetched, fmt)
        _check_info(info, fmt)

        _report(progress, "converting", 0.78)
        disk = work / "disk.qcow2"
        run(["qemu-img", "convert", "-f", fmt, "-O", "qcow2", str(fetched), str(disk)],
            timeout=CONVERT_TIMEOUT)
        fetched.unlink()
        _check_info(_qemu_img_info(disk, "qcow2"), "qcow2")

        _report(progress, "checksumming", 0.95)
        digest = sha256_file(disk)
        size = disk.stat().st_size
        disk.chmod(0o444)
        final = _publish(disk, out_dir / f"{name}-{digest[:12]}.qcow2")
    except (ProcessError, OSError) as exc:
        raise ImageError(f"importing {name} failed: {_describe(exc)}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    LOG.info("[%s] imported from %s (%s image, %d bytes, sha256 %s)", name, label, fmt, size,
             digest[:16])
    _report(progress, "done", 1.0)
    return BuiltImage(name=name, disk=final, kernel=None, initrd=None, cmdline=None,
                      sha256=digest, size_bytes=size,
                      virtual_size_bytes=int(info["virtual-size"]),
                      os={"name": "unknown", "version": "unknown"}, source=label)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                    own: frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address] = frozenset(),
                    ) -> str | None:
    """Why ``address`` may not be fetched from without the administrator's switch, or None."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in own or address in own:
        return "an address of this host"
    if ip.is_private:
        return "a private address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if ip.is_reserved:
        return "a reserved address"
    return None


def host_addresses() -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address configured on this host's interfaces."""
    try:
        links = json.loads(run(["ip", "-j", "address", "show"], timeout=30).stdout or "[]")
    except (ProcessError, ValueError) as exc:
        raise ImageError(f"cannot list this host's addresses: {exc}") from exc
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for link in links:
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                found.add(ipaddress.ip_address(addr["local"]))
    return frozenset(found)


def resolve_url(url: str, *, allow_private: bool = False) -> PinnedURL:
    """Check an https URL and resolve its host once; refuse internal destinations.

    Every address the name resolves to must be acceptable (see
    ``address_refusal``) unless ``allow_private``; the connection goes to
    these addresses only, so a second DNS answer cannot send it elsewhere."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError as exc:
        raise ImageError(f"invalid URL {url!r}: {exc}") from exc
    if parts.scheme.lower() != "https":
        raise ImageError(f"refusing a {parts.scheme or 'schemeless'} URL: only https:// URLs "
                         "are imported")
    if parts.username is not None or parts.password is not None:
        raise ImageError("refusing a URL with credentials in it")
    host = parts.hostname
    if not host:
        raise ImageError(f"invalid URL {_redact(url)!r}: no host")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from exc
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]))
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise ImageError(f"cannot resolve {host}: no addresses")
    if not allow_private:
        own = host_addresses()
        for ip in addresses:
            reason = address_refusal(ip, own)
            if reason:
                shown = "" if host == str(ip) else f" (it resolves to {ip})"
                raise ImageError(f"refusing to fetch from {host}{shown}: {reason}; "
                                 "an administrator can allow private addresses")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return PinnedURL(url=url, host=host, port=port, addresses=tuple(str(a) for a in addresses),
                     target=target)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address; certificate and SNI still checked against the URL's host."""

    def __init__(self, pinned: PinnedURL, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(pinned.host, pinned.port, timeout=timeout, context=context)
        self._pinned = pinned
        self._ssl_context = context

    def connect(self) -> None:
        error: OSError | None = None
        for address in self._pinned.addresses:
            try:
                sock = socket.create_connection((address, self._pinned.port), self.timeout)
            except OSError as exc:
                error = exc
                continue
            try:
                self.sock = self._ssl_context.wrap_socket(sock, server_hostname=self._pinned.host)
            except BaseException:
                sock.close()
                raise
            return
        raise error or OSError(f"no address to connect to for {self._pinned.host}")


def _download(url: str, dest: Path, *, allow_private: bool, max_bytes: int,
              cafile: Path | None, progress: Progress) -> None:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    for _hop in range(MAX_REDIRECTS + 1):
        pinned = resolve_url(url, allow_private=allow_private)
        conn = _PinnedHTTPSConnection(pinned, context, NET_TIMEOUT)
        try:
            conn.request("GET", pinned.target, headers={
                "User-Agent": "pacific-lab-image-import", "Accept-Encoding": "identity"})
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise ImageError(f"{_redact(url)}: redirect without a Location")
                resp.close()  # an HTTP/1.0 response owns the socket: conn.close() leaves it open
                url = urljoin(url, location)
                LOG.info("import: redirected to %s", _redact(url))
                continue
            if resp.status != 200:
                raise ImageError(f"{_redact(url)}: HTTP {resp.status} {resp.reason}")
            total = _content_length(resp.getheader("Content-Length"))
            if total is not None and total > max_bytes:
                raise ImageError(f"{_redact(url)} is {total} bytes, more than the limit of "
                                 f"{max_bytes}")
            _stream(resp, dest, max_bytes=max_bytes, total=total, phase="downloading",
                    progress=progress)
            return
        except ssl.SSLError as exc:
            raise ImageError(f"TLS with {pinned.host} failed: "
                             f"{getattr(exc, 'verify_message', None) or exc.reason}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ImageError(f"downloading {_redact(url)} failed: {exc}") from exc
        finally:
            conn.close()
    raise ImageError(f"{_redact(url)}: more than {MAX_REDIRECTS} redirects")


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _stream(src: BinaryIO | http.client.HTTPResponse, dest: Path, *, max_bytes: int,
            total: int | None, phase: str, progress: Progress) -> None:
    done = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        _report(progress, phase, 0.0, 0, total)
        while True:
            chunk = src.read(CHUNK)
            if not chunk:
                break
            done += len(chunk)
            if done > max_bytes:
                raise ImageError(f"the image is larger than the limit of {max_bytes} bytes")
            out.write(chunk)
            if total:
                _report(progress, phase, 0.7 * done / total, done, total)
            else:
                _report(progress, phase, 0.0, done, None)
    if total is not None and done != total:
        raise ImageError(f"the transfer ended after {done} of {total} bytes")
    _report(progress, phase, 0.7, done, total)


def _copy_local(path: str, dest: Path, *, max_bytes: int, progress: Progress) -> None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(f"refusing {path}: it is a symbolic link") from exc
        raise ImageError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"refusing {path}: not a regular file")
        if st.st_size > max_bytes:
            raise ImageError(f"{path} is {st.st_size} bytes, more than the limit of {max_bytes}")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as src:
        _stream(src, dest, max_bytes=max_bytes, total=st.st_size, phase="copying",
                progress=progress)


_OTHER_FORMATS = (
    (0, b"KDMV", "VMDK"), (0, b"# Disk DescriptorFile", "VMDK descriptor"),
    (0, b"vhdxfile", "VHDX"), (0, b"conectix", "VHD"), (0, b"LUKS\xba\xbe", "LUKS"),
    (64, b"\x7f\x10\xda\xbe", "VDI"), (0, b"QEMU QED", "QED"),
)


def sniff_format(path: Path) -> str:
    """``"qcow2"`` or ``"raw"`` from the file's own bytes (never QEMU's format probing)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(64 * 1024)
    if head[:4] == b"QFI\xfb":
        _check_qcow2_header(head)
        return "qcow2"
    for offset, magic, kind in _OTHER_FORMATS:
        if head[offset:offset + len(magic)] == magic:
            raise ImageError(f"this is a {kind} image; only qcow2 and raw images are imported")
    if size == 0 or size % 512:
        raise ImageError("not a disk image: neither qcow2 nor a raw disk (size is not a "
                         "multiple of 512 bytes)")
    if not (head[510:512] == b"\x55\xaa"  # MBR or protective MBR of GPT
            or head[1080:1082] == b"\x53\xef"  # ext2/3/4 on the whole disk
            or head[:4] == b"XFSB"
            or head[32769:32774] == b"CD001"):  # ISO 9660
        raise ImageError("not a disk image: neither qcow2 nor a raw disk with a partition "
                         "table or a file system")
    return "raw"


def _check_qcow2_header(head: bytes) -> None:
    if len(head) < 72:
        raise ImageError("not a disk image: truncated qcow2 header")
    version = int.from_bytes(head[4:8], "big")
    if version not in (2, 3):
        raise ImageError(f"unsupported qcow version {version}")
    if int.from_bytes(head[8:16], "big") or int.from_bytes(head[16:20], "big"):
        raise ImageError("refusing a qcow2 image with a backing file")
    if int.from_bytes(head[32:36], "big"):
        raise ImageError("refusing an encrypted qcow2 image")
    if version == 3 and len(head) >= 80:
        incompatible = int.from_bytes(head[72:80], "big")
        if incompatible & (1 << 2):
            raise ImageError("refusing a qcow2 image with an external data file")


def _qemu_img_info(path: Path, fmt: str) -> dict[str, Any]:
    out = run(["prlimit", *QEMU_IMG_INFO_LIMITS, "--", "qemu-img", "info", "--output=json",
               "-f", fmt, str(path)], timeout=60).stdout
    try:
        info: dict[str, Any] = json.loads(out)
    except ValueError as exc:
        raise ImageError(f"qemu-img info gave no JSON for {path.name}") from exc
    return info


def _check_info(info: dict[str, Any], fmt: str) -> None:
    if info.get("format") != fmt:
        raise ImageError(f"qemu-img reads this image as {info.get('format')!r}, not {fmt}")
    if "backing-filename" in info or "full-backing-filename" in info:
        raise ImageError("refusing a qcow2 image with a backing file")
    data = (info.get("format-specific") or {}).get("data") or {}
    if "data-file" in data or data.get("data-file-raw"):
        raise ImageError("refusing a qcow2 image with an external data file")
    if info.get("encrypted"):
        raise ImageError("refusing an encrypted image")
    if data.get("corrupt"):
        raise ImageError("refusing a qcow2 image that is marked corrupt")
    virtual = int(info.get("virtual-size", 0))
    if not 0 < virtual <= MAX_VIRTUAL_BYTES:
        raise ImageError(f"refusing a disk of virtual size {virtual} bytes "
                         f"(the limit is {MAX_VIRTUAL_BYTES})")


# -- files -----------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _publish(src: Path, dest: Path) -> Path:
    """Put ``src`` at ``dest`` read-only (hard link, else copy); an existing ``dest`` is kept.

    Names carry a content hash, so an existing file of the same size is the
    same content; it may be the backing file of running VMs and is never
    rewritten."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        existing = os.lstat(dest)
        if stat.S_ISREG(existing.st_mode) and existing.st_size == src.stat().st_size:
            return dest
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        tmp.chmod(0o444)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _describe(exc: BaseException) -> str:
    """One line for a failed step; a failed command's whole output goes to the log."""
    if isinstance(exc, ProcessError):
        LOG.error("%s failed (rc=%s)\n%s%s", shlex.join(exc.cmd), exc.rc, exc.stdout, exc.stderr)
        lines = (exc.stderr or exc.stdout).strip().splitlines()
        detail = lines[-1] if lines else exc.reason
        return f"{Path(exc.cmd[0]).name} failed (rc={exc.rc}): {detail}"
    return str(exc)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _replace_dir(new: Path, dest: Path, work: Path) -> None:
    """Move directory ``new`` to ``dest``; an old ``dest`` is moved into ``work`` first."""
    if dest.exists():
        dest.rename(work / "replaced")
    new.rename(dest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
