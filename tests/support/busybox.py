"""Tiny busybox initramfs images for tests' direct-kernel-boot guests.

The builder is product code now (``hypervisor.podvm.initramfs``: the pod VM
initramfs is built the same way); this module re-exports what tests use.

    kernel, release = find_kernel()
    build_initramfs(tmp / "initrd.gz", 'echo hello\\npoweroff -f\\n',
                    modules=VIRTIO_NET_MODULES, kernel_release=release)
"""

from hypervisor.podvm.initramfs import (
    ACPI_POWER_BUTTON_MODULES,
    ACPI_POWEROFF_SNIPPET,
    VIRTIO_BLK_MODULES,
    VIRTIO_NET_MODULES,
    InitramfsError,
    build_initramfs,
    find_busybox,
    find_kernel,
    has_busybox,
    init_script,
    module_paths,
)

__all__ = [
    "ACPI_POWEROFF_SNIPPET", "ACPI_POWER_BUTTON_MODULES", "VIRTIO_BLK_MODULES",
    "VIRTIO_NET_MODULES", "InitramfsError", "build_initramfs", "find_busybox", "find_kernel",
    "has_busybox", "init_script", "module_paths",
]
