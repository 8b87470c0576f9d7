"""The pod kernel and initramfs, built from a fake /boot and /lib/modules tree."""

from __future__ import annotations

import gzip
import lzma
import stat
import struct
from pathlib import Path

import pytest

from hypervisor.podvm.kernelbuild import BuiltKernel
from hypervisor.podvm.initramfs import (
    InitramfsError,
    build_initramfs,
    find_kernel,
    pod_kernel,
    pvh_vmlinux,
    resolve_modules,
)

RELEASE = "9.9.9-test"
SIGNATURE_MAGIC = b"~Module signature appended~\n"

DEP = """\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci-legacy.ko \
kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci-legacy.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/lib/crc16.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko kernel/fs/jbd2/jbd2.ko
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/erofs/erofs.ko:
"""
SOFTDEP = """\
# comment
softdep ext4 pre: crypto-crc32c
softdep erofs post: crc16
softdep jbd2 pre: not-there-at-all
"""
ALIAS = """\
alias crypto-crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
"""


def signed(name: str) -> bytes:
    body = f"\x7fELF module {name}".encode()
    signature = b"S" * 40
    info = b"\0" * 8 + struct.pack(">I", len(signature))
    return body + signature + info + SIGNATURE_MAGIC


def elf_with_pvh_note(pvh: bool = True) -> bytes:
    note_name = b"Xen\0"
    note = struct.pack("<III", len(note_name), 4, 18 if pvh else 17) + note_name + b"\0\0\0\0"
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 120, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note + b"kernel text" * 10


def bzimage(payload: bytes) -> bytes:
    image = bytearray(1024)
    image[0x1F1] = 1  # setup_sects: the protected-mode part starts at 1024
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    struct.pack_into("<II", image, 0x248, 16, len(payload))
    return bytes(image) + b"\0" * 16 + payload + b"trailer"


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    boot = tmp_path / "boot"
    modules = tmp_path / "lib/modules"
    base = modules / RELEASE
    for line in DEP.splitlines():
        rel = line.partition(":")[0]
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        name = Path(rel).name.split(".ko")[0]
        path.write_bytes(lzma.compress(signed(name)) if rel.endswith(".xz") else signed(name))
    (base / "modules.dep").write_text(DEP)
    (base / "modules.softdep").write_text(SOFTDEP)
    (base / "modules.alias").write_text(ALIAS)
    boot.mkdir()
    (boot / f"vmlinuz-{RELEASE}").write_bytes(bzimage(lzma.compress(elf_with_pvh_note())))
    (boot / f"config-{RELEASE}").write_text("CONFIG_MODULE_SIG=y\n")
    (modules / "1.0.0-old").mkdir()
    (boot / "vmlinuz-1.0.0-old").write_bytes(b"old")  # no modules.dep: not a candidate
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF static busybox")
    return boot, modules, busybox


def newc(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) from a newc cpio archive."""
    found: dict[str, tuple[int, bytes]] = {}
    pos = 0
    while True:
        assert archive[pos:pos + 6] == b"070701"
        fields = [int(archive[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = archive[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        data = archive[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return found
        found[name] = (mode, data)


def test_resolve_modules_order_and_soft_dependencies(tree: tuple[Path, Path, Path]) -> None:
    _, modules, _ = tree
    order = resolve_modules(("virtio_pci", "virtio_blk", "erofs", "ext4"), RELEASE, modules)
    assert [(m.name, m.optional) for m in order] == [
        ("virtio_ring", False), ("virtio", False), ("virtio_pci_legacy", False),
        ("virtio_pci", False), ("virtio_blk", False), ("erofs", False), ("crc16", False),
        ("crc32c_intel", True), ("crc32c_generic", True), ("jbd2", False), ("ext4", False)]
    # crc16 came in as erofs' optional post-dependency; ext4 needs it for real, so it is
    # required, and loaded once, where it first came.
    assert [m.name for m in order].count("crc16") == 1
    assert order[-1].path.name == "ext4.ko.xz"


def test_resolve_soft_dependency_alone_is_optional(tree: tuple[Path, Path, Path]) -> None:
    _, modules, _ = tree
    order = resolve_modules(("erofs",), RELEASE, modules)
    assert [(m.name, m.optional) for m in order] == [("erofs", False), ("crc16", True)]


def test_resolve_unknown_module(tree: tuple[Path, Path, Path]) -> None:
    _, modules, _ = tree
    with pytest.raises(InitramfsError, match="virtio_net"):
        resolve_modules(("virtio_net",), RELEASE, modules)


def test_find_kernel_newest_with_modules(tree: tuple[Path, Path, Path]) -> None:
    boot, modules, _ = tree
    assert find_kernel(boot, modules) == (boot / f"vmlinuz-{RELEASE}", RELEASE)


def test_pod_kernel_builds_and_caches(tree: tuple[Path, Path, Path], tmp_path: Path) -> None:
    boot, modules, busybox = tree
    cache = tmp_path / "cache"
    kwargs = dict(boot_dir=boot, modules_root=modules, busybox=busybox,
                  modules=("virtio_blk", "ext4"))
    pod = pod_kernel(cache, init_text="#!/bin/sh\necho init\n", **kwargs)  # type: ignore[arg-type]
    assert pod.release == RELEASE
    assert pod.kernel.name == "vmlinux"  # unpacked: it has a PVH entry point
    assert pod.kernel.read_bytes() == elf_with_pvh_note()
    assert pod.initrd.name == "initrd.img"
    assert pod.kernel.parent.name.startswith(RELEASE + "-")
    for path in (pod.kernel, pod.initrd):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(pod.kernel.parent.stat().st_mode) == 0o755

    files = newc(pod.initrd.read_bytes())
    assert files["init"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\necho init\n")
    assert files["bin/busybox"][1] == busybox.read_bytes()
    assert files["bin/sh"] == (stat.S_IFLNK | 0o777, b"busybox")
    assert files["dev/console"][0] == stat.S_IFCHR | 0o600
    assert files["lib/modules/load"][1].decode().splitlines() == [
        "virtio_ring required", "virtio required", "virtio_blk required",
        "crc32c_intel optional", "crc32c_generic optional", "jbd2 required",
        "crc16 required", "ext4 required"]
    # Signatures are stripped (the kernel does not force them); xz modules unpacked.
    assert files["lib/modules/ext4.ko"][1] == b"\x7fELF module ext4"
    assert not any(n.endswith(".xz") for n in files)

    mtime = pod.initrd.stat().st_mtime_ns
    again = pod_kernel(cache, init_text="#!/bin/sh\necho init\n", **kwargs)  # type: ignore[arg-type]
    assert again == pod and pod.initrd.stat().st_mtime_ns == mtime  # cached, not rewritten
    other = pod_kernel(cache, init_text="#!/bin/sh\necho other\n", **kwargs)  # type: ignore[arg-type]
    assert other.initrd.parent != pod.initrd.parent  # the init text is part of the key
    gz = pod_kernel(cache, init_text="#!/bin/sh\necho init\n", compression="gzip", **kwargs)  # type: ignore[arg-type]
    assert gz.initrd.name == "initrd.img.gz"
    assert newc(gzip.decompress(gz.initrd.read_bytes())) == files
    assert not list(cache.rglob(".*.tmp"))


def test_signatures_kept_when_the_kernel_forces_them(tree: tuple[Path, Path, Path],
                                                     tmp_path: Path) -> None:
    boot, modules, busybox = tree
    (boot / f"config-{RELEASE}").write_text("CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n")
    pod = pod_kernel(tmp_path / "cache", boot_dir=boot, modules_root=modules, busybox=busybox,
                     init_text="#!/bin/sh\n", modules=("crc16",))
    assert newc(pod.initrd.read_bytes())["lib/modules/crc16.ko"][1] == signed("crc16")


def test_kernel_without_pvh_note_stays_compressed(tree: tuple[Path, Path, Path],
                                                  tmp_path: Path) -> None:
    boot, modules, busybox = tree
    vmlinuz = bzimage(gzip.compress(elf_with_pvh_note(pvh=False)))
    (boot / f"vmlinuz-{RELEASE}").write_bytes(vmlinuz)
    pod = pod_kernel(tmp_path / "cache", boot_dir=boot, modules_root=modules, busybox=busybox,
                     init_text="#!/bin/sh\n", modules=("crc16",))
    assert pod.kernel.name == "vmlinuz" and pod.kernel.read_bytes() == vmlinuz


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress])
def test_pvh_vmlinux(compress: object) -> None:
    elf = elf_with_pvh_note()
    assert pvh_vmlinux(bzimage(compress(elf))) == elf  # type: ignore[operator]


def test_pvh_vmlinux_refuses_what_it_cannot_read() -> None:
    assert pvh_vmlinux(b"not a kernel") is None
    assert pvh_vmlinux(bzimage(b"\x28\xb5\x2f\xfd zstd payload")) is None
    assert pvh_vmlinux(bzimage(b"\xfd7zXZ\x00 broken")) is None


def test_generic_builder(tree: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, modules, busybox = tree
    dest = build_initramfs(tmp_path / "tiny.gz", "echo hi\npoweroff -f\n", ("virtio", "crc16"),
                           kernel_release=RELEASE, modules_root=modules, busybox=busybox,
                           extra_files={"/bin/tool.sh": b"#!/bin/sh\n", "/www/index.html": b"x"})
    files = newc(gzip.decompress(dest.read_bytes()))
    init = files["init"][1].decode()
    assert "insmod /lib/modules/virtio.ko" in init and init.endswith("echo hi\npoweroff -f\n")
    assert files["bin/tool.sh"][0] == stat.S_IFREG | 0o755
    assert files["www/index.html"][0] == stat.S_IFREG | 0o644
    assert files["www"][0] == stat.S_IFDIR | 0o755
    with pytest.raises(InitramfsError, match="bad guest path"):
        build_initramfs(tmp_path / "x.gz", "", extra_files={"/../etc": b""}, busybox=busybox)


def test_a_built_kernel_boots_with_no_modules(tree: tuple[Path, Path, Path],
                                              tmp_path: Path) -> None:
    _, _, busybox = tree
    vmlinux = tmp_path / "built" / "vmlinux"
    vmlinux.parent.mkdir()
    vmlinux.write_bytes(elf_with_pvh_note())
    built = BuiltKernel(vmlinux, tmp_path / "built" / "config", "6.1.192-pod", "k" * 24)
    # No /boot or /lib/modules at all: the built kernel needs neither.
    pod = pod_kernel(tmp_path / "cache", boot_dir=tmp_path / "none", modules_root=tmp_path / "none",
                     busybox=busybox, init_text="#!/bin/sh\n", built=built)
    assert pod.release == "6.1.192-pod"
    assert pod.kernel.read_bytes() == elf_with_pvh_note()
    files = newc(pod.initrd.read_bytes())
    assert files["lib/modules/load"][1] == b""
    assert not any(name.endswith(".ko") for name in files)


def test_a_built_kernel_without_pvh_entry_is_refused(tree: tuple[Path, Path, Path],
                                                     tmp_path: Path) -> None:
    _, _, busybox = tree
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(elf_with_pvh_note(pvh=False))
    built = BuiltKernel(vmlinux, tmp_path / "config", "6.1.192-pod", "k" * 24)
    with pytest.raises(InitramfsError, match="no PVH entry point"):
        pod_kernel(tmp_path / "cache", busybox=busybox, init_text="#!/bin/sh\n", built=built)
