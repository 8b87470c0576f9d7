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

Usage (paths must be traversable by QEMU's user; image disks readable by it)::

    kernel = pod_kernel(cache_dir)                       # once; cached by its inputs
    write_config_disk(PodConfig(
        hostname="web-0", restart_policy="Always", address="198.18.200.5/24",
        gateway="198.18.200.1", nameservers=("198.18.200.1",),
        containers=(Container("web", 0, ("httpd", "-f", "-p", "8080"),
                              env=(("MODE", "prod"),), working_dir="/www",
                              volume_mounts=(VolumeMount("cfg", "/etc/web", read_only=True),)),),
        volumes=(FileVolume("cfg", {"web.conf": (b"...", 0o644)}),)), pod_dir / "config.tar")
    create_scratch_disk(pod_dir / "scratch.raw", 1 << 30)
    spec = PodVmSpec(name="pod-dev-web-0", uuid=pod_uid, vcpus=1, memory_mib=256,
                     accelerator=host_facts.accelerator, kernel=kernel,
                     image_disks=(image_erofs,), scratch=pod_dir / "scratch.raw",
                     config=pod_dir / "config.tar", console_log=pod_dir / "console.log",
                     event_log=pod_dir / "events.log", output_log=pod_dir / "output.log",
                     control_socket=run_dir / f"{pod_uid[:8]}.sock",
                     nic=NicSpec(mac, "ovs", bridge, port_name=port, vlan=vlan,
                                 csum_offload_off=datapath == "netdev"))
    runtime = PodVmRuntime(LibvirtDriver())
    runtime.start(spec)                       # False if it already runs
    events = EventReader(spec.event_log)      # events.read() -> [Booted, Started, Exited, ...]
    output = OutputReader(spec.output_log)    # output.read() -> [Output(container, stream, data)]
    runtime.terminate(spec)                   # TERM, acknowledged; the VM reports and powers off
    runtime.running(spec.name)                # False once it is gone
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
