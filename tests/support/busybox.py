"""Build tiny busybox initramfs images for direct-kernel-boot guests.

``build_initramfs()`` writes a gzip-compressed newc cpio archive holding a
static busybox, the device nodes the kernel needs before ``/dev`` is mounted
(``/dev/console``, ``/dev/null``), the requested kernel modules copied from
``/lib/modules/<release>`` and an ``/init`` script: a fixed preamble (mount
``/proc``, ``/sys`` and ``devtmpfs``, install busybox applets, ``insmod`` each
module in the given order) followed by the caller's script body.

The archive is written by Python, so it needs no root privileges, no staging
directory and no ``cpio`` binary, and the same inputs give the same bytes.

    kernel, release = find_kernel()
    build_initramfs(tmp / "initrd.gz", 'echo hello\\npoweroff -f\\n',
                    modules=VIRTIO_NET_MODULES, kernel_release=release)
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
MODULES_ROOT = Path("/lib/modules")
BOOT_DIR = Path("/boot")

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
class _Entry:
    name: str  # without a leading slash
    mode: int  # including the file type bits
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def find_busybox() -> Path:
    """A *static* busybox (Debian's busybox-static); a dynamic one cannot run alone."""
    for candidate in BUSYBOX_CANDIDATES:
        if candidate.is_file() and b"/lib64/ld-linux" not in candidate.read_bytes()[:4096]:
            return candidate
    raise InitramfsError("no static busybox found; install the busybox-static package")


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


def module_paths(names: Iterable[str], kernel_release: str,
                 modules_root: Path = MODULES_ROOT) -> list[Path]:
    """Resolve module names (``-`` and ``_`` are the same) through ``modules.dep``."""
    base = modules_root / kernel_release
    index: dict[str, Path] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        rel = line.partition(":")[0].strip()
        if rel:
            index[_module_name(rel)] = base / rel
    paths = []
    for name in names:
        key = name.replace("-", "_")
        if key not in index:
            raise InitramfsError(f"module {name!r} is not in {base / 'modules.dep'}"
                                 " (built in, or not built at all?)")
        paths.append(index[key])
    return paths


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
    ``extra_files`` maps absolute guest paths to contents (mode 0644, or 0755
    for paths under ``/bin``).
    """
    if modules and kernel_release is None:
        raise InitramfsError("kernel_release is needed to copy modules")
    busybox_bin = busybox or find_busybox()
    entries: list[_Entry] = [
        *(_Entry(d, stat.S_IFDIR | 0o755)
          for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "root", "sys", "tmp")),
        _Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
        _Entry("bin/busybox", stat.S_IFREG | 0o755, busybox_bin.read_bytes()),
        _Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        _Entry("init", stat.S_IFREG | 0o755, init_script(body, modules).encode()),
    ]
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
    archive = _newc(entries)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(archive)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


# -- helpers -----------------------------------------------------------

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


def has_busybox() -> bool:
    try:
        find_busybox()
    except InitramfsError:
        return False
    return True
