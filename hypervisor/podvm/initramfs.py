"""The pod VM's kernel and initramfs: the host's distro kernel plus a busybox initramfs.

``pod_kernel(cache_dir)`` returns a ``PodKernel``: the newest
``/boot/vmlinuz-*`` that has modules, unpacked to the plain ``vmlinux`` ELF
when the kernel can boot that way (PVH entry point, CONFIG_PVH; QEMU loads
it directly, which spares the guest decompressing itself: 3.7 s of a 6.5 s
boot under TCG for Debian's xz kernel), and ONE initramfs shared by every pod
VM, holding a static busybox, the pod init (``templates/podvm/init.sh``) and
exactly the kernel modules a pod needs (virtio PCI, virtio_blk, virtio_net,
erofs, overlay, ext4), resolved through ``modules.dep`` and
``modules.softdep`` into load order. Both files live under
``cache_dir/<key>/`` where the key hashes every input (kernel bytes, busybox
bytes, init text, module bytes and order, format version); they are written
atomically with mode 0644, so concurrent builders and a crash mid-build are
harmless and a kernel upgrade simply makes a new directory.

The archive is written by Python (newc cpio, no root, no ``cpio`` binary) and
the same inputs give the same bytes. ``build_initramfs()`` is the generic
builder that tests use for their own tiny guests (a standard preamble plus a
caller's script body).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from hypervisor.files import write_atomic

BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
MODULES_ROOT = Path("/lib/modules")
BOOT_DIR = Path("/boot")
INIT_TEMPLATE = Path(__file__).resolve().parent.parent.parent / "templates" / "podvm" / "init.sh"

# Bump when the layout of the archive changes (not its inputs): it is part of the cache key.
FORMAT_VERSION = "podvm-initramfs-1"

Compression = Literal["gzip", "none"]

# The order matters: insmod does not resolve dependencies (modules.dep order).
VIRTIO_NET_MODULES: tuple[str, ...] = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "failover", "net_failover", "virtio_net",
)
# virtio_blk on top of the virtio PCI transport (for image and seed disks).
VIRTIO_BLK_MODULES: tuple[str, ...] = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "virtio_blk",
)
# The ACPI power button as an input device, so that busybox ``acpid`` sees an
# ACPI shutdown request (``virsh shutdown``) and can power the guest off.
ACPI_POWER_BUTTON_MODULES: tuple[str, ...] = ("button", "evdev")

# What a pod VM needs; their dependencies are resolved from modules.dep.
POD_MODULES: tuple[str, ...] = ("virtio_pci", "virtio_blk", "virtio_net", "erofs", "overlay", "ext4")

# Shell lines an /init body can use to power off on the ACPI power button.
ACPI_POWEROFF_SNIPPET = """\
mkdir -p /etc/acpi/PWRF
cat > /etc/acpi/PWRF/00000080 <<'ACPI'
#!/bin/sh
echo "acpid: power button, powering off" > /dev/console
poweroff -f
ACPI
chmod 0755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /dev/null
"""

_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


class InitramfsError(RuntimeError):
    """A kernel, module or busybox binary that the image needs is missing."""


@dataclass(frozen=True)
class PodKernel:
    """The kernel and initramfs every pod VM boots (``release`` is the kernel's ``uname -r``)."""

    kernel: Path
    initrd: Path
    release: str


class BuiltVmlinux(Protocol):
    """A kernel built with everything a pod VM needs (``kernelbuild.BuiltKernel``)."""

    @property
    def vmlinux(self) -> Path: ...

    @property
    def release(self) -> str: ...


@dataclass(frozen=True)
class Module:
    """A kernel module to load: its name, its file, and whether a failed insmod is fatal.

    Soft dependencies are optional: ``crc32c_intel`` refuses CPUs without
    SSE4.2 (TCG's default model), and ``crc32c_generic`` does the job then.
    """

    name: str
    path: Path
    optional: bool = False


@dataclass(frozen=True)
class _Entry:
    name: str  # without a leading slash
    mode: int  # including the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


# -- finding things ----------------------------------------------------

def find_busybox() -> Path:
    """A *static* busybox (Debian's busybox-static); a dynamic one cannot run alone."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file() and b"/lib64/ld-linux" not in candidate.read_bytes()[:4096]:
            return candidate
    raise InitramfsError("no static busybox found; install the busybox-static package")


def has_busybox() -> bool:
    try:
        find_busybox()
    except InitramfsError:
        return False
    return True


def find_kernel(boot_dir: Path = BOOT_DIR, modules_root: Path = MODULES_ROOT) -> tuple[Path, str]:
    """Return ``(vmlinuz, release)`` for the newest installed kernel that has modules."""
    found = []
    for vmlinuz in boot_dir.glob("vmlinuz-*"):
        release = vmlinuz.name.removeprefix("vmlinuz-")
        if (modules_root / release / "modules.dep").is_file() and os.access(vmlinuz, os.R_OK):
            found.append((_version_key(release), vmlinuz, release))
    if not found:
        raise InitramfsError(f"no readable {boot_dir}/vmlinuz-* with modules under {modules_root};"
                             " install linux-image-amd64")
    _, vmlinuz, release = max(found)
    return vmlinuz, release


# -- modules -----------------------------------------------------------

@dataclass(frozen=True)
class _ModuleIndex:
    paths: dict[str, Path]
    deps: dict[str, tuple[str, ...]]  # modules.dep order (modprobe loads them last to first)
    softdeps: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # name -> (pre, post)
    aliases: dict[str, tuple[str, ...]]


def _module_index(kernel_release: str, modules_root: Path) -> _ModuleIndex:
    base = modules_root / kernel_release
    paths: dict[str, Path] = {}
    deps: dict[str, tuple[str, ...]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        rel, _, rest = line.partition(":")
        if rel.strip():
            name = _module_name(rel.strip())
            paths[name] = base / rel.strip()
            deps[name] = tuple(_module_name(dep) for dep in rest.split())
    softdeps: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    softdep_file = base / "modules.softdep"
    if softdep_file.is_file():
        for line in softdep_file.read_text().splitlines():
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            pre: list[str] = []
            post: list[str] = []
            target = pre
            for word in words[2:]:
                if word == "pre:":
                    target = pre
                elif word == "post:":
                    target = post
                else:
                    target.append(word)
            old_pre, old_post = softdeps.get(_module_name(words[1]), ((), ()))
            softdeps[_module_name(words[1])] = (old_pre + tuple(pre), old_post + tuple(post))
    aliases: dict[str, list[str]] = {}
    alias_file = base / "modules.alias"
    if alias_file.is_file():
        for line in alias_file.read_text().splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
                aliases.setdefault(words[1], []).append(_module_name(words[2]))
    return _ModuleIndex(paths, deps, softdeps, {k: tuple(v) for k, v in aliases.items()})


def resolve_modules(names: Iterable[str], kernel_release: str,
                    modules_root: Path = MODULES_ROOT) -> list[Module]:
    """``names`` with their dependencies, in an order ``insmod`` can load them.

    Hard dependencies come from ``modules.dep`` (loaded depth first, in the
    order modprobe uses: the last listed first); soft ``pre:``/``post:``
    dependencies from ``modules.softdep`` (names or aliases such as
    ``crypto-crc32c``) are included as optional. A name that is neither a
    module nor an alias (built into the kernel, say) is an error for the names
    asked for, and skipped for soft dependencies.
    """
    index = _module_index(kernel_release, modules_root)
    order: list[Module] = []
    seen: dict[str, Module] = {}
    visiting: set[str] = set()

    def lookup(name: str) -> tuple[str, ...]:
        key = _module_name(name)
        if key in index.paths:
            return (key,)
        return tuple(m for m in index.aliases.get(name, index.aliases.get(key, ()))
                     if m in index.paths)

    def visit(name: str, optional: bool) -> None:
        if name in seen:
            if seen[name].optional and not optional:  # hard after all
                seen[name] = Module(name, seen[name].path, False)
                order[:] = [seen[name] if m.name == name else m for m in order]
            return
        if name in visiting:
            return
        visiting.add(name)
        pre, post = index.softdeps.get(name, ((), ()))
        for soft in pre:
            for found in lookup(soft):
                visit(found, True)
        for dep in reversed(index.deps.get(name, ())):
            visit(dep, optional)
        visiting.discard(name)
        module = Module(name, index.paths[name], optional)
        seen[name] = module
        order.append(module)
        for soft in post:
            for found in lookup(soft):
                visit(found, True)

    base = modules_root / kernel_release
    for requested in names:
        found = lookup(requested)
        if not found:
            raise InitramfsError(f"module {requested!r} is not in {base / 'modules.dep'}"
                                 " (built in, or not built at all?)")
        for name in found:
            visit(name, False)
    return order


def module_paths(names: Iterable[str], kernel_release: str,
                 modules_root: Path = MODULES_ROOT) -> list[Path]:
    """Resolve module names (``-`` and ``_`` are the same) through ``modules.dep``, no deps added."""
    index = _module_index(kernel_release, modules_root)
    base = modules_root / kernel_release
    paths = []
    for name in names:
        key = _module_name(name)
        if key not in index.paths:
            raise InitramfsError(f"module {name!r} is not in {base / 'modules.dep'}"
                                 " (built in, or not built at all?)")
        paths.append(index.paths[key])
    return paths


# -- the generic builder (tests' tiny guests) --------------------------

def init_script(body: str, modules: Sequence[str] = ()) -> str:
    """The /init text: the standard preamble, ``insmod`` per module, then ``body``."""
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin",
        "/bin/busybox --install -s",
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        "mount -t devtmpfs devtmpfs /dev",
        "mount -t tmpfs tmpfs /tmp",
    ]
    for name in modules:
        module = _module_name(name)
        lines.append(f'insmod /lib/modules/{module}.ko || echo "init: insmod {module} failed"')
    return "\n".join(lines) + "\n" + body.rstrip("\n") + "\n"


def build_initramfs(dest: Path, body: str, modules: Sequence[str] = (), *,
                    kernel_release: str | None = None, modules_root: Path = MODULES_ROOT,
                    extra_files: Mapping[str, bytes] | None = None,
                    busybox: Path | None = None) -> Path:
    """Write a gzip'd newc initramfs to ``dest`` and return ``dest``.

    ``body`` runs after the preamble of :func:`init_script` as PID 1; it should
    end by powering off (``poweroff -f``) or exec'ing a long-running process.
    ``modules`` are loaded in the order given (no dependencies are added).
    ``extra_files`` maps absolute guest paths to contents (mode 0644, or 0755
    for paths under ``/bin``).
    """
    if modules and kernel_release is None:
        raise InitramfsError("kernel_release is needed to copy modules")
    entries = _base_entries(busybox or find_busybox(), init_script(body, modules))
    if modules:
        assert kernel_release is not None
        for path in module_paths(modules, kernel_release, modules_root):
            entries.append(_Entry(f"lib/modules/{_module_name(path.name)}.ko", stat.S_IFREG | 0o644,
                                  _read_module(path)))
    for guest_path, data in sorted((extra_files or {}).items()):
        name = guest_path.strip("/")
        if not name or ".." in name.split("/"):
            raise InitramfsError(f"bad guest path {guest_path!r}")
        for parent in _parents(name):
            if not any(e.name == parent for e in entries):
                entries.append(_Entry(parent, stat.S_IFDIR | 0o755))
        mode = 0o755 if name.startswith("bin/") else 0o644
        entries.append(_Entry(name, stat.S_IFREG | mode, data))
    _write_file(dest, _compress(_newc(entries), "gzip"))
    return dest


# -- the pod VM kernel and initramfs -----------------------------------

def pod_init_text() -> str:
    """The pod init script (PID 1 of every pod VM)."""
    return INIT_TEMPLATE.read_text()


def pod_kernel(cache_dir: Path, *, boot_dir: Path = BOOT_DIR, modules_root: Path = MODULES_ROOT,
               busybox: Path | None = None, init_text: str | None = None,
               modules: Sequence[str] = POD_MODULES,
               compression: Compression = "none", pvh: bool = True,
               built: BuiltVmlinux | None = None) -> PodKernel:
    """The kernel and the shared pod initramfs, built into ``cache_dir`` when not there yet.

    ``built`` is a kernel with everything a pod needs built in (the pod
    kernel of ``hypervisor.podvm.kernelbuild``): it boots instead of the
    host's, and the initramfs then holds no modules.

    ``cache_dir`` and the files are made readable for QEMU (0755/0644): the
    files hold no secrets. Cheap when cached (hashing ~15 MB of inputs).
    ``pvh=False`` keeps the compressed bzImage. The initramfs is uncompressed
    by default: 5.6 MB instead of 1.9 MB gzip'd, but the guest reaches its
    first container ~0.5 s sooner under TCG (median of 5 boots: 2.66 s
    against 3.15 s).

    Module signatures are stripped when the kernel does not insist on them
    (no CONFIG_MODULE_SIG_FORCE in ``/boot/config-<release>``): the modules
    come from the host's own kernel package, and checking RSA signatures
    under TCG costs the guest 0.2 s per boot. The guest kernel then says it
    is tainted ("module verification failed"), which changes nothing else.
    """
    busybox_bin = busybox or find_busybox()
    text = pod_init_text() if init_text is None else init_text
    if built is not None:
        release, kernel_bytes, resolved, strip = built.release, built.vmlinux.read_bytes(), [], False
    else:
        vmlinuz, release = find_kernel(boot_dir, modules_root)
        resolved = resolve_modules(modules, release, modules_root)
        kernel_bytes = vmlinuz.read_bytes()
        strip = _may_strip_signatures(boot_dir / f"config-{release}")
    busybox_bytes = busybox_bin.read_bytes()
    module_bytes = [(m, _strip_signature(_read_module(m.path)) if strip else _read_module(m.path))
                    for m in resolved]

    digest = hashlib.sha256()
    for part in (FORMAT_VERSION.encode(), compression.encode(), str(pvh).encode(), release.encode(),
                 hashlib.sha256(kernel_bytes).digest(), hashlib.sha256(busybox_bytes).digest(),
                 text.encode()):
        digest.update(len(part).to_bytes(8, "big") + part)
    for module, data in module_bytes:
        line = f"{module.name}:{int(module.optional)}".encode()
        digest.update(len(line).to_bytes(8, "big") + line + hashlib.sha256(data).digest())
    key = digest.hexdigest()[:24]

    target = Path(cache_dir) / f"{release}-{key}"
    initrd = target / ("initrd.img" if compression == "none" else "initrd.img.gz")
    for kernel in (target / "vmlinux", target / "vmlinuz"):
        if kernel.is_file() and initrd.is_file():
            return PodKernel(kernel, initrd, release)
    if built is not None:
        elf = kernel_bytes if _has_pvh_note(kernel_bytes) else None
        if elf is None:
            raise InitramfsError(f"{built.vmlinux} has no PVH entry point")
    else:
        elf = pvh_vmlinux(kernel_bytes) if pvh else None
    kernel = target / ("vmlinuz" if elf is None else "vmlinux")

    Path(cache_dir).mkdir(parents=True, exist_ok=True, mode=0o755)
    target.mkdir(exist_ok=True, mode=0o755)
    os.chmod(target, 0o755)
    entries = _base_entries(busybox_bin, text)
    load_list = "".join(f"{m.name} {'optional' if m.optional else 'required'}\n"
                        for m, _ in module_bytes)
    entries.append(_Entry("lib/modules/load", stat.S_IFREG | 0o644, load_list.encode()))
    entries.append(_Entry("lib/modules/release", stat.S_IFREG | 0o644, f"{release}\n".encode()))
    for module, data in module_bytes:
        entries.append(_Entry(f"lib/modules/{module.name}.ko", stat.S_IFREG | 0o644, data))
    _write_file(kernel, kernel_bytes if elf is None else elf)
    _write_file(initrd, _compress(_newc(entries), compression))
    return PodKernel(kernel, initrd, release)


# -- unpacking a bzImage -------------------------------------------------

_XEN_ELFNOTE_PHYS32_ENTRY = 18


def pvh_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF ``vmlinux`` inside a bzImage if it has a PVH entry point, else None.

    The compressed payload is where the boot header says (``payload_offset``
    and ``payload_length``, boot protocol 2.08+); xz, gzip, bzip2 and lzma
    payloads are unpacked (zstd and lz4 kernels fall back to the bzImage).
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    version = struct.unpack_from("<H", bzimage, 0x206)[0]
    if version < 0x208:
        return None
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start:start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor().decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        elif payload.startswith(b"BZh"):
            elf = bz2.BZ2Decompressor().decompress(payload)
        elif payload.startswith(b"\x5d\x00\x00"):
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        else:
            return None
    except (lzma.LZMAError, zlib.error, OSError, EOFError):
        return None
    return elf if _has_pvh_note(elf) else None


def _has_pvh_note(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF has the Xen PVH entry note (QEMU boots it directly)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        if base + 56 > len(elf):
            return False
        p_type, = struct.unpack_from("<I", elf, base)
        if p_type != 4:  # PT_NOTE
            continue
        p_offset, = struct.unpack_from("<Q", elf, base + 8)
        p_filesz, = struct.unpack_from("<Q", elf, base + 32)
        pos, end = p_offset, min(p_offset + p_filesz, len(elf))
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and n_type == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# -- helpers -----------------------------------------------------------

_SIGNATURE_MAGIC = b"~Module signature appended~\n"
_SIGNATURE_INFO = 12  # struct module_signature: 8 bytes of fields, then be32 sig_len


def _may_strip_signatures(kernel_config: Path) -> bool:
    try:
        text = kernel_config.read_text(errors="replace")
    except OSError:
        return False
    return "CONFIG_MODULE_SIG_FORCE=y" not in text.splitlines()


def _strip_signature(module: bytes) -> bytes:
    if not module.endswith(_SIGNATURE_MAGIC):
        return module
    info_end = len(module) - len(_SIGNATURE_MAGIC)
    sig_len, = struct.unpack_from(">I", module, info_end - 4)
    start = info_end - _SIGNATURE_INFO - sig_len
    return module[:start] if start > 0 else module

def _base_entries(busybox_bin: Path, init_text: str) -> list[_Entry]:
    return [
        *(_Entry(d, stat.S_IFDIR | 0o755)
          for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "root", "run", "sys", "tmp")),
        _Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        _Entry("bin/busybox", stat.S_IFREG | 0o755, busybox_bin.read_bytes()),
        _Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        _Entry("init", stat.S_IFREG | 0o755, init_text.encode()),
    ]


def _compress(archive: bytes, compression: Compression) -> bytes:
    if compression == "none":
        return archive
    if compression == "gzip":
        return gzip.compress(archive, compresslevel=6, mtime=0)
    raise InitramfsError(f"unknown compression {compression!r}")


def _write_file(dest: Path, data: bytes, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, data, mode)


def _module_name(path_or_name: str) -> str:
    name = Path(path_or_name).name
    name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        raise InitramfsError(f"{path}: zstd-compressed modules are not supported")
    return data


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", release))


def _newc(entries: Sequence[_Entry]) -> bytes:
    out = bytearray()
    for ino, entry in enumerate([*entries, _Entry(_TRAILER, 0)], start=1):
        name = entry.name.encode() + b"\0"
        fields = (ino if entry.name != _TRAILER else 0, entry.mode, 0, 0,
                  2 if stat.S_ISDIR(entry.mode) else 1, 0, len(entry.data),
                  0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
        out += _NEWC_MAGIC + b"".join(f"{value:08x}".encode() for value in fields)
        out += name
        out += b"\0" * (-len(out) % 4)
        out += entry.data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)
