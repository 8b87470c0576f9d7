"""Pod VMs: each Kubernetes Pod in its own direct-kernel-boot micro-VM (vSphere's "CRX").

The host's kernel (``initramfs.pod_kernel``: vmlinux via PVH when it can)
boots with one shared busybox initramfs whose init (``templates/podvm/init.sh``)
runs the pod's containers, each in an overlayfs root over its image's
read-only erofs disk, sharing the VM's network and hostname as containers
share a pod. The pieces:

- ``initramfs``: the kernel and the initramfs (``pod_kernel(cache_dir)``);
- ``config``: ``PodConfig`` and ``write_config_disk()`` (the pod's settings,
  secrets included, as a tar on a raw disk: never on the command line);
- ``scratch``: ``create_scratch_disk()`` (ext4 for writable layers, emptyDirs);
- ``domain``: ``PodVmSpec`` and ``render_podvm_xml()``;
- ``channel``: readers for the event and output logs, ``send_control()``;
- ``runtime``: ``PodVmRuntime`` (start, terminate, kill, running, list).

Usage::

    kernel = pod_kernel(cache_dir)
    write_config_disk(PodConfig(hostname="web", containers=(
        Container("web", 0, ("httpd", "-f", "-p", "80")),), address="198.18.200.5/24"),
        pod_dir / "config.tar")
    create_scratch_disk(pod_dir / "scratch.raw", 1 << 30)
    spec = PodVmSpec(name=..., uuid=..., vcpus=1, memory_mib=256, accelerator="tcg",
                     kernel=kernel, image_disks=(image_erofs,), scratch=..., config=...,
                     console_log=..., event_log=..., output_log=...,
                     control_socket=..., nic=NicSpec(mac, "bridge", "br0"))
    runtime = PodVmRuntime(LibvirtDriver())
    runtime.start(spec)
    events = EventReader(spec.event_log)      # events.read() -> [Started(...), ...]
    output = OutputReader(spec.output_log)    # output.read() -> [Output(...), ...]
    runtime.terminate(spec)                   # TERM; the VM reports and powers off
"""

from hypervisor.podvm.channel import (
    Booted,
    ControlError,
    Done,
    Event,
    EventReader,
    Exited,
    Finished,
    GuestError,
    Malformed,
    NetworkUp,
    Output,
    OutputReader,
    Started,
    StartFailed,
    Terminating,
    Waiting,
    read_events,
    read_output,
    send_control,
)
from hypervisor.podvm.config import (
    ConfigError,
    Container,
    EmptyDirVolume,
    FileVolume,
    HostAlias,
    PodConfig,
    VolumeMount,
    write_config_disk,
)
from hypervisor.podvm.domain import PodVmSpec, render_podvm_xml
from hypervisor.podvm.initramfs import PodKernel, pod_kernel
from hypervisor.podvm.runtime import PodVmRuntime
from hypervisor.podvm.scratch import create_scratch_disk

__all__ = [
    "Booted", "ConfigError", "Container", "ControlError", "Done", "EmptyDirVolume", "Event",
    "EventReader", "Exited", "FileVolume", "Finished", "GuestError", "HostAlias", "Malformed",
    "NetworkUp", "Output", "OutputReader", "PodConfig", "PodKernel", "PodVmRuntime", "PodVmSpec",
    "StartFailed", "Started", "Terminating", "VolumeMount", "Waiting", "create_scratch_disk",
    "pod_kernel", "read_events", "read_output", "render_podvm_xml", "send_control",
    "write_config_disk",
]
