"""Pod VMs on the real qemu:///system: the pod init, its channels and the runtime API.

Each test boots real micro-VMs (this host's kernel, the shared pod initramfs,
qboot, TCG here) from a tiny erofs "container image" built in the fixture
(busybox-static and its applet links) and checks what the host sees: events,
demultiplexed output, restarts, start failures, TERM/KILL, a NIC on a Linux
bridge answering ping and HTTP, and that the domain is gone afterwards.
Timings (``virsh create`` to Started, a bare QEMU boot of the same kernel and
initramfs, QEMU's RSS) are printed, never asserted.

Everything is named with a per-run prefix and removed even when a step fails.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hypervisor.domain import NicSpec
from hypervisor.hostfacts import detect_accelerator
from hypervisor.libvirt_driver import LibvirtDriver
from hypervisor.podvm import (
    Container,
    Done,
    EmptyDirVolume,
    Event,
    EventReader,
    Exited,
    FileVolume,
    Finished,
    NetworkUp,
    OutputReader,
    PodConfig,
    PodKernel,
    PodVmRuntime,
    PodVmSpec,
    Started,
    StartFailed,
    Terminating,
    VolumeMount,
    Waiting,
    create_scratch_disk,
    pod_kernel,
    send_control,
    write_config_disk,
)
from hypervisor.podvm.channel import Malformed, Output

pytestmark = pytest.mark.e2e

URI = "qemu:///system"
RUN = uuid.uuid4().hex[:6]
PREFIX = f"pytest-podvm-{RUN}-"
BOOT_DEADLINE = 60.0


@dataclass
class Lab:
    base: Path
    kernel: PodKernel
    images: tuple[Path, ...]
    accelerator: str
    driver: LibvirtDriver
    runtime: PodVmRuntime
    timings: dict[str, list[float]] = field(default_factory=dict)

    def note(self, what: str, value: float, unit: str = "s") -> None:
        self.timings.setdefault(what, []).append(value)
        print(f"\n[podvm timing] {what}: {value:.2f} {unit}")


def build_image(root: Path, dest: Path, marker: str) -> Path:
    """A minimal image: busybox-static with its applets as links, like a busybox image."""
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for directory in ("etc", "tmp", "srv", "var", "www"):
        (root / directory).mkdir()
    (root / "var/run").symlink_to("/run")  # as in many images: must resolve inside the root
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/marker").write_text(marker + "\n")
    subprocess.run(["mkfs.erofs", "--quiet", "--all-root", str(dest), str(root)], check=True,
                   capture_output=True)
    dest.chmod(0o644)
    return dest


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    probe = subprocess.run(["virsh", "-c", URI, "version"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        raise AssertionError("libvirtd does not answer (run the suite with ./lab test, which "
                             f"prepares the host first): {probe.stderr.strip()}")
    if shutil.which("mkfs.erofs") is None:
        raise AssertionError("mkfs.erofs is missing (erofs-utils)")
    # QEMU runs as its own user: every directory on the way must be searchable.
    base = Path(tempfile.mkdtemp(prefix=f"podvm-{RUN}-", dir="/var/tmp"))
    base.chmod(0o711)
    driver = LibvirtDriver(URI)
    runtime = PodVmRuntime(driver)
    try:
        started = time.monotonic()
        kernel = pod_kernel(base / "kernel")
        build_seconds = time.monotonic() - started
        images = tuple(build_image(base / f"image{i}", base / f"image{i}.erofs", f"image-{i}")
                       for i in range(2))
        accelerator = detect_accelerator()[0]
        lab = Lab(base, kernel, images, accelerator, driver, runtime)
        lab.note("pod_kernel build (vmlinux + initramfs)", build_seconds)
        print(f"[podvm] kernel {kernel.kernel.name} {kernel.kernel.stat().st_size} bytes, "
              f"initrd {kernel.initrd.stat().st_size} bytes, accelerator {accelerator}")
        yield lab
    finally:
        try:
            for name in runtime.list(PREFIX):
                runtime.kill(name)
        finally:
            driver.close()
            shutil.rmtree(base, ignore_errors=True)


@dataclass
class Pod:
    lab: Lab
    spec: PodVmSpec
    events: EventReader
    output: OutputReader
    seen: list[Event] = field(default_factory=list)
    records: list[Output] = field(default_factory=list)
    created: float = 0.0

    def poll(self) -> None:
        self.seen.extend(self.events.read())
        for record in self.output.read():
            assert not isinstance(record, Malformed), record
            self.records.append(record)

    def console(self) -> str:
        path = self.spec.console_log
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no console log)"

    def wait_event(self, what: str, match: Callable[[Event], bool],
                   timeout: float = BOOT_DEADLINE) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            for event in self.seen:
                if match(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                     f"events: {self.seen}\nconsole:\n{self.console()}")
            time.sleep(0.05)

    def wait_gone(self, timeout: float = 30.0) -> float:
        started = time.monotonic()
        while self.lab.runtime.running(self.spec.name):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{self.spec.name} still runs after {timeout:.0f}s\n"
                                     f"{self.console()}")
            time.sleep(0.05)
        self.poll()
        return time.monotonic() - started

    def out(self, container: str, stream: str = "stdout") -> bytes:
        self.poll()
        return b"".join(r.data for r in self.records
                        if r.container == container and r.stream == stream)

    def of(self, kind: type, container: str | None = None) -> list:
        return [e for e in self.seen if isinstance(e, kind)
                and (container is None or getattr(e, "container", None) == container)]


def start_pod(lab: Lab, name: str, config: PodConfig, *, nic: NicSpec | None = None,
              images: tuple[Path, ...] | None = None) -> Pod:
    pod_dir = lab.base / "pods" / name
    pod_dir.mkdir(parents=True, mode=0o711)
    pod_dir.chmod(0o711)
    write_config_disk(config, pod_dir / "config.tar")
    create_scratch_disk(pod_dir / "scratch.raw", 256 * 1024 * 1024)
    spec = PodVmSpec(
        name=PREFIX + name, uuid=str(uuid.uuid4()), vcpus=1, memory_mib=256,
        accelerator="kvm" if lab.accelerator == "kvm" else "tcg", kernel=lab.kernel,
        image_disks=images or lab.images, scratch=pod_dir / "scratch.raw",
        config=pod_dir / "config.tar", console_log=pod_dir / "console.log",
        event_log=pod_dir / "events.log", output_log=pod_dir / "output.log",
        control_socket=pod_dir / "control.sock", nic=nic,
        metadata={"pacific-lab/test": name})
    pod = Pod(lab, spec, EventReader(spec.event_log), OutputReader(spec.output_log))
    pod.created = time.monotonic()
    assert lab.runtime.start(spec) is True
    assert lab.runtime.start(spec) is False  # idempotent while it runs
    return pod


def sh(name: str, script: str, **kwargs: object) -> Container:
    return Container(name, kwargs.pop("image", 0), ("sh", "-c", script), **kwargs)  # type: ignore[arg-type]


def is_kind(kind: type, container: str | None = None) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, kind) and (container is None or
                                              getattr(e, "container", None) == container)


# -- tests -------------------------------------------------------------

def test_run_to_completion_output_and_start_failure(lab: Lab) -> None:
    """exit 0 and exit 3 with stdout/stderr (binary, a line longer than a record), a missing
    command (StartFailed), restartPolicy Never: the pod reports done and the domain goes."""
    long_line = "x" * 60000
    config = PodConfig(hostname="once", restart_policy="Never", containers=(
        sh("echo", f"echo hello; echo oops >&2; printf '\\000\\377bin'; echo; echo {long_line}"),
        sh("three", "echo three; exit 3"),
        Container("broken", 0, ("no-such-command", "--flag")),
        Container("slash", 0, ("/bin/nope",)),
    ))
    pod = start_pod(lab, "once", config)
    started = pod.wait_event("echo started", is_kind(Started, "echo"))
    lab.note("virsh create -> first Started (incl. createXML)", time.monotonic() - pod.created)
    assert started.restart_count == 0
    pod.wait_event("done", is_kind(Done))
    gone = pod.wait_gone()
    lab.note("done -> domain gone", gone)

    assert [e.exit_code for e in pod.of(Exited, "echo")] == [0]
    assert [e.exit_code for e in pod.of(Exited, "three")] == [3]
    assert pod.out("echo") == f"hello\n\0\xffbin\n{long_line}\n".encode("latin-1")
    assert pod.out("echo", "stderr") == b"oops\n"
    assert pod.out("three") == b"three\n"
    assert max(len(r.data) for r in pod.records) <= 24576  # long lines were split
    failed = pod.of(StartFailed, "broken")
    assert len(failed) == 1 and failed[0].reason == "StartError", pod.seen
    assert failed[0].message == 'exec: "no-such-command": executable file not found in $PATH'
    assert pod.of(StartFailed, "slash")[0].message == \
        'exec: "/bin/nope": stat /bin/nope: no such file or directory'
    assert not pod.of(Started, "broken")
    assert {e.container for e in pod.of(Finished)} == {"echo", "three", "broken", "slash"}
    # The domain is transient: nothing is left behind in libvirt.
    assert PREFIX + "once" not in lab.runtime.list(PREFIX)


def test_pod_features_and_term(lab: Lab) -> None:
    """Two containers sharing the network (a server on 127.0.0.1 and a client), env,
    workingDir, a configMap-like file volume with a subPath, disk and Memory emptyDirs shared
    between the containers, a second image; then TERM: the server sees SIGTERM and the VM
    powers off within the grace period."""
    server = sh("server", (
        "trap 'echo got SIGTERM; kill $pid; exit 0' TERM; "
        "echo served-by-server > /www/index.html; echo mem > /mem/from-server; "
        "httpd -f -p 127.0.0.1:8080 -h /www & pid=$!; echo listening; "
        "wait $pid"), volume_mounts=(VolumeMount("www", "/www"), VolumeMount("mem", "/mem")))
    client = sh("client", (
        'echo "FOO=$FOO"; echo "ENVIRON=$(tr "\\0" "\\n" </proc/$$/environ | sort | tr "\\n" " ")"; '
        'echo "PWD=$(pwd)"; '
        "echo cfg=$(cat /etc/app/greeting); echo secret=$(cat /var/run/secrets/token); "
        "echo sub=$(cat /etc/one.conf); echo marker=$(cat /etc/marker); "
        "stat -c %a /var/run/secrets/token; "
        "for i in $(seq 100); do body=$(wget -q -O - http://127.0.0.1:8080/index.html) && break;"
        " sleep 0.1; done; echo http=$body; "
        "for i in $(seq 50); do [ -e /mem/from-server ] && break; sleep 0.1; done; "
        "echo mem=$(cat /mem/from-server) memfs=$(grep ' /mem ' /proc/mounts | cut -d' ' -f3); "
        "echo hostname=$(hostname) oom=$(cat /proc/$$/oom_score_adj); "
        "touch /etc/app/x 2>/dev/null || echo readonly-ok; "
        "exit 3"),
        image=1, working_dir="/srv/work",
        env=(("FOO", "bar baz"), ("my.odd", "dotted")),
        volume_mounts=(VolumeMount("config", "/etc/app", read_only=True),
                       VolumeMount("secret", "/var/run/secrets"),
                       VolumeMount("config", "/etc/one.conf", sub_path="one.conf"),
                       VolumeMount("www", "/www"), VolumeMount("mem", "/mem")))
    config = PodConfig(
        hostname="features", restart_policy="Never", termination_grace_period_seconds=20,
        containers=(server, client),
        volumes=(FileVolume("config", {"greeting": (b"hello from configmap\n", 0o644),
                                       "one.conf": (b"single-file\n", 0o644)}),
                 FileVolume("secret", {"token": (b"s3cr3t\n", 0o600)}),
                 EmptyDirVolume("www"), EmptyDirVolume("mem", "Memory", 8 * 1024 * 1024)))
    pod = start_pod(lab, "features", config)
    exited = pod.wait_event("the client's exit", is_kind(Exited, "client"))
    assert exited.exit_code == 3, pod.out("client", "stderr")
    out = pod.out("client").decode()
    assert "FOO=bar baz\n" in out, out
    # Exactly the container's environment, names a shell cannot hold included (the client's
    # shell is its main process), plus containerd's defaults.
    assert "ENVIRON=FOO=bar baz HOME=/root HOSTNAME=features PATH=/usr/local/sbin:" \
        "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin my.odd=dotted \n" in out, out
    assert "PWD=/srv/work" in out
    assert "cfg=hello from configmap" in out
    assert "secret=s3cr3t" in out and "\n600\n" in out
    assert "sub=single-file" in out
    assert "marker=image-1" in out  # the client's own image
    assert "http=served-by-server" in out, (out, pod.out("client", "stderr"))
    assert "mem=mem memfs=tmpfs" in out
    assert "hostname=features oom=0" in out  # the OOM killer spares only the init
    assert "readonly-ok" in out
    assert pod.out("server") == b"listening\n"
    assert lab.runtime.running(pod.spec.name)
    lab.note("QEMU RSS of an idle pod VM", qemu_rss_mib(pod.spec.name), "MiB")

    sent = time.monotonic()
    lab.runtime.terminate(pod.spec)
    term = pod.wait_event("terminating", is_kind(Terminating), timeout=15)
    assert (term.signal, term.grace_seconds) == ("TERM", 20)
    pod.wait_event("done", is_kind(Done), timeout=25)
    pod.wait_gone()
    lab.note("TERM -> domain gone", time.monotonic() - sent)
    assert time.monotonic() - sent < 20
    assert b"got SIGTERM" in pod.out("server")
    assert [e.exit_code for e in pod.of(Exited, "server")] == [0]


def test_restart_on_failure_with_backoff(lab: Lab) -> None:
    """OnFailure: a container that fails twice then succeeds is restarted with the
    (shortened) CrashLoopBackOff, each restart counted, each with a fresh writable layer."""
    script = ("[ -e /written-by-last-run ] && echo stale-layer; touch /written-by-last-run; "
              "n=$(cat /state/n 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /state/n; "
              "echo run $n; [ $n -ge 3 ]")
    config = PodConfig(hostname="flaky", restart_policy="OnFailure", backoff_base_seconds=0.5,
                       backoff_max_seconds=2.0, volumes=(EmptyDirVolume("state"),),
                       containers=(sh("flaky", script,
                                      volume_mounts=(VolumeMount("state", "/state"),)),))
    pod = start_pod(lab, "flaky", config)
    pod.wait_event("done", is_kind(Done))
    pod.wait_gone()
    assert [(e.restart_count, e.exit_code) for e in pod.of(Exited)] == [(0, 1), (1, 1), (2, 0)]
    assert [e.restart_count for e in pod.of(Started)] == [0, 1, 2]
    # kubelet's timing: no delay before the first restart, then base, doubling.
    assert [(e.restart_count, e.delay_seconds) for e in pod.of(Waiting)] == [(1, 0.5)]
    assert all(w.reason == "CrashLoopBackOff" for w in pod.of(Waiting))
    assert pod.out("flaky") == b"run 1\nrun 2\nrun 3\n"
    assert [r.restart_count for r in pod.records] == [0, 1, 2]


def test_term_while_booting(lab: Lab) -> None:
    """A TERM sent right after the start is held until the init reads its control port
    (send_control returns on the init's ack), with the caller's grace period."""
    config = PodConfig(hostname="early", containers=(sh("sleeper", "exec sleep 300"),))
    pod = start_pod(lab, "early", config)
    lab.runtime.terminate(pod.spec, grace_seconds=3)
    lab.note("start -> TERM acknowledged (VM booting)", time.monotonic() - pod.created)
    term = pod.wait_event("terminating", is_kind(Terminating), timeout=5)
    assert (term.signal, term.grace_seconds) == ("TERM", 3)
    pod.wait_event("done", is_kind(Done), timeout=20)
    pod.wait_gone()
    # sleep dies of SIGTERM (143) if it started before the TERM was read.
    assert all(e.exit_code == 143 for e in pod.of(Exited))


def test_network_on_a_bridge_and_kill(lab: Lab) -> None:
    """A pod VM with a NIC on a Linux bridge answers ping and HTTP from the host at its
    static address; KILL powers it off at once."""
    bridge, host_ip, pod_ip = make_bridge()
    try:
        server = sh("web", "echo pod-says-hi > /www/index.html; exec httpd -f -p 8080 -h /www",
                    volume_mounts=(VolumeMount("www", "/www"),))
        config = PodConfig(hostname="net", containers=(server,), volumes=(EmptyDirVolume("www"),),
                           address=f"{pod_ip}/24", gateway=host_ip, nameservers=(host_ip,),
                           searches=("default.svc.cluster.local",))
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))
        pod = start_pod(lab, "net", config, nic=NicSpec(mac, "bridge", bridge))
        up = pod.wait_event("network up", is_kind(NetworkUp))
        assert (up.address, up.gateway) == (f"{pod_ip}/24", host_ip)
        pod.wait_event("web started", is_kind(Started, "web"))
        ping = subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", pod_ip], capture_output=True,
                              text=True, timeout=10)
        deadline = time.monotonic() + 30
        while ping.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            ping = subprocess.run(["busybox", "ping", "-c", "1", "-W", "2", pod_ip], capture_output=True,
                                  text=True, timeout=10)
        assert ping.returncode == 0, ping.stdout + pod.console()
        body = http_get(f"http://{pod_ip}:8080/index.html", 30)
        assert body == "pod-says-hi\n"
        lab.note("virsh create -> HTTP answer from the host", time.monotonic() - pod.created)
        send_control(pod.spec.control_socket, "KILL")
        pod.wait_gone(timeout=15)
        assert pod.of(Terminating)[0].signal == "KILL"
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_bare_qemu_floor(lab: Lab) -> None:
    """Not a check: the same kernel, initramfs and disks booted by QEMU directly (no
    libvirt), to compare with the libvirt figures printed above."""
    config = PodConfig(hostname="bare", restart_policy="Never",
                       containers=(sh("c", "echo bare"),))
    pod_dir = lab.base / "pods" / "bare"
    pod_dir.mkdir(parents=True)
    write_config_disk(config, pod_dir / "config.tar")
    create_scratch_disk(pod_dir / "scratch.raw", 256 * 1024 * 1024)
    spec = PodVmSpec(
        name=PREFIX + "bare", uuid=str(uuid.uuid4()), vcpus=1, memory_mib=256, accelerator="tcg",
        kernel=lab.kernel, image_disks=lab.images[:1], scratch=pod_dir / "scratch.raw",
        config=pod_dir / "config.tar", console_log=pod_dir / "console.log",
        event_log=pod_dir / "events.log", output_log=pod_dir / "output.log",
        control_socket=pod_dir / "control.sock")
    accel = ["-accel", "kvm", "-cpu", "host"] if lab.accelerator == "kvm" else \
        ["-accel", "tcg", "-cpu", "Nehalem"]
    drives = []
    for path, serial, ro in ((spec.config, "config", True), (spec.scratch, "scratch", False),
                             (lab.images[0], "image0", True)):
        drives += ["-drive", f"file={path},if=none,id={serial},format=raw"
                   + (",readonly=on" if ro else ",cache=unsafe"),
                   "-device", f"virtio-blk-pci,drive={serial},serial={serial}"]
    cmd = ["qemu-system-x86_64", "-M", "pc", *accel, "-m", "256", "-nodefaults",
           "-no-user-config", "-display", "none", "-no-reboot",
           "-bios", "/usr/share/qemu/qboot.rom", "-kernel", str(lab.kernel.kernel),
           "-initrd", str(lab.kernel.initrd), "-append", spec.cmdline, *drives,
           "-serial", f"file:{spec.console_log}", "-serial", f"file:{spec.event_log}",
           "-serial", f"file:{spec.output_log}", "-serial", "null"]
    started = time.monotonic()
    stderr = pod_dir / "qemu.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        events = EventReader(spec.event_log)
        seen: list[Event] = []
        first_start = None
        while proc.poll() is None and time.monotonic() - started < BOOT_DEADLINE:
            seen += events.read()
            if first_start is None and any(isinstance(e, Started) for e in seen):
                first_start = time.monotonic() - started
            time.sleep(0.02)
        proc.wait(timeout=BOOT_DEADLINE)
        seen += events.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(isinstance(e, Done) for e in seen), (seen, stderr.read_text())
    assert first_start is not None
    lab.note("bare qemu: process start -> Started", first_start)
    lab.note("bare qemu: process start -> exit (ran to Done)", time.monotonic() - started)
    summary = {what: statistics.median(values) for what, values in lab.timings.items()}
    print("\n[podvm timing summary] " + "; ".join(f"{k}: {v:.2f}" for k, v in summary.items()))


# -- helpers -----------------------------------------------------------

def qemu_rss_mib(name: str) -> float:
    pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def make_bridge() -> tuple[str, str, str]:
    """A Linux bridge of our own in a free /24 of 198.18.200-249.0/24 (TEST-NET benchmarking
    range), so concurrent runs do not collide; returns (bridge, host address, pod address)."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True, check=True).stdout
    bridge = f"pltest{RUN[:4]}"
    for octet in [200 + (os.getpid() + i) % 50 for i in range(50)]:
        if f"198.18.{octet}." in routes:
            continue
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"198.18.{octet}.1/24", "dev", bridge], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        return bridge, f"198.18.{octet}.1", f"198.18.{octet}.10"
    raise AssertionError("no free /24 in 198.18.200.0-198.18.249.0")


def http_get(url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
