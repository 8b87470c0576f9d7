"""`vagrant up lab` for real on this machine (no usable KVM here: TCG).

From this checkout: ``lab box build`` (the box cached by its inputs, added to a Vagrant
home of the test's own), ``vagrant up lab`` (vagrant-libvirt boots the local box, rsync,
Ansible runs playbooks/host.yml in the guest, then ``lab up``), the supervisor inside
answers kubectl in the guest and from this host through the forwarded port, a second
``vagrant up lab --provision`` changes nothing, and ``vagrant destroy -f`` leaves no
domain, volume, network or port forwarder behind. The guest never fetches an apt index.

Vagrant's state (VAGRANT_HOME, VAGRANT_DOTFILE_PATH) lives in
``$LAB_CACHE_DIR/vagrant-e2e/<token>/`` and is removed afterwards; the libvirt names carry
the token. The time of each phase is printed and written to
``test-artifacts/vagrant/vagrant-up.json``, each command's timed output beside it
(``benchmarks/vagrant.py`` runs the same steps and compares with ``./lab up`` here).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from hypervisor.boximage import list_boxes
from tests.support.hostnet import HostAddressesLock, libvirtd_in_use

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VAGRANT_DIR = ROOT / "vagrant"
CACHE_DIR = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab"))
STATE_DIR = Path(os.environ.get("LAB_STATE_DIR", "/var/lib/pacific-lab"))
ARTIFACTS = ROOT / "test-artifacts" / "vagrant"
ARTIFACT = ARTIFACTS / "vagrant-up.json"
LIBVIRT = "qemu:///system"
BOX = "pacific-lab/debian-12"
GUEST_LAB = "sudo /home/vagrant/pacific-lab/.venv/bin/lab"
GUEST_KUBECONFIG = "/var/lib/pacific-lab/admin.kubeconfig"
VM_CPUS, VM_MEMORY_MIB = 2, 3072
# A quarter of libvirt's default CPU weight: the scenario runs beside the end-to-end tier,
# whose VMs are on the suite's critical path (`lab test` runs this lane at low weight too,
# but the VM's QEMU is libvirt's child, not the lane's).
VM_CPU_SHARES = 256
# About 4x a quiet run (docs/benchmarks.md) and 2.5x a run beside the end-to-end tier
# (second `up --provision` 682 s there): a stalled VM still fails inside CI's time.
UP_TIMEOUT = 1800.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS = re.compile(r"Progress: \d+%")
RECAP = re.compile(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
INSECURE_KEY = "vagrant insecure public key"  # the comment on Vagrant's well-known keys
# Lines of `vagrant up` where its phases begin.
MARKERS = {
    "upload": "Uploading base box image as volume",
    "define": "Creating domain with the following settings",
    "start": "Starting domain.",
    "ssh": "Machine booted and ready!",
    "venv": "Running provisioner: venv",
    "ansible": "Running provisioner: host",
    "lab_up": "Running provisioner: lab-up",
    "lab_ready": "export KUBECONFIG=",  # the last line `lab up` prints
}


@dataclass
class Run:
    """A command's output lines, each with the seconds since it started."""

    argv: list[str]
    rc: int
    seconds: float
    lines: list[tuple[float, str]]

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, count: int = 60) -> str:
        return "\n".join(line for _, line in self.lines[-count:])

    def at(self, marker: str) -> float | None:
        return next((t for t, line in self.lines if marker in line), None)

    def recaps(self) -> list[dict[str, int]]:
        """Ansible's recap of each playbook run, in order."""
        found = [{"ok": int(ok), "changed": int(changed), "unreachable": int(unreachable),
                  "failed": int(failed)} for ok, changed, unreachable, failed
                 in RECAP.findall(self.text)]
        assert found, f"no Ansible recap in:\n{self.tail()}"
        return found


def up_phases(run: Run) -> dict[str, float]:
    """Seconds of each phase of a `vagrant up` (box upload, boot, provisioning, lab up)."""
    t = {name: run.at(marker) for name, marker in MARKERS.items()}
    phases: dict[str, float] = {}

    def span(name: str, start: float | None, end: float | None) -> None:
        if start is not None and end is not None:
            phases[name] = round(end - start, 1)

    span("box_upload", t["upload"], t["define"])
    span("boot_to_ssh", t["define"], t["ssh"])
    span("hostname_ports_rsync", t["ssh"], t["venv"])
    span("provision_venv", t["venv"], t["ansible"])
    span("provision_ansible", t["ansible"], t["lab_up"])
    span("lab_up", t["lab_up"], t["lab_ready"])
    span("vagrant_after_lab_up", t["lab_ready"], run.seconds)
    phases["total"] = round(run.seconds, 1)
    return phases


def stream(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float,
           echo: bool = False, steady: HostAddressesLock | None = None,
           steady_until: str | None = None) -> Run:
    """Run ``argv`` (its own process group), keeping each output line with its time.

    With ``steady``, hold that lock from the start until a line contains ``steady_until``
    (or to the end): while Vagrant makes or removes its network (``tests.support.hostnet``)."""
    if steady is not None:
        steady.acquire()
    started = time.monotonic()
    lines: list[tuple[float, str]] = []
    try:
        with subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True) as proc:
            timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
            timer.start()
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    text = ANSI.sub("", PROGRESS.sub("", raw.decode(errors="replace"))).rstrip()
                    lines.append((time.monotonic() - started, text))
                    if steady is not None and steady_until is not None and steady_until in text:
                        steady.release()
                    if echo:
                        print(f"{lines[-1][0]:7.1f} {text}", flush=True)
                rc = proc.wait()
            finally:
                timer.cancel()
    finally:
        if steady is not None:
            steady.release()
    return Run(argv, rc, time.monotonic() - started, lines)


def save(run: Run, name: str) -> None:
    """Keep a command's timed output in test-artifacts/vagrant/NAME.log."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.log").write_text(
        f"$ {' '.join(run.argv)}  (rc={run.rc}, {run.seconds:.1f} s)\n"
        + "".join(f"{t:7.1f} {line}\n" for t, line in run.lines))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_subnet() -> str:
    """A /24 for Vagrant's management network that no address or route here overlaps."""
    used = []
    for what in ("addr", "route"):
        out = subprocess.run(["ip", "-j", "-4", what], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        for item in json.loads(out or "[]"):
            for prefix in ([f"{a['local']}/{a['prefixlen']}" for a in item.get("addr_info", [])]
                           if what == "addr" else [item.get("dst", "")]):
                if prefix and prefix != "default":
                    used.append(ipaddress.ip_network(prefix, strict=False))
    for third in range(200, 251):
        candidate = ipaddress.ip_network(f"192.168.{third}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return str(candidate)
    raise AssertionError("no free 192.168.200-250.0/24 for Vagrant's network")


def virsh(*args: str) -> list[str]:
    with libvirtd_in_use():
        return _virsh(*args)


def _virsh(*args: str, check: bool = True) -> list[str]:
    out = subprocess.run(["virsh", "-c", LIBVIRT, *args], capture_output=True, text=True,
                         check=check, timeout=120).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def box_volumes() -> set[tuple[str, str]]:
    """(pool, volume) of every libvirt volume that holds a pacific-lab/debian-12 box."""
    found = set()
    for pool in virsh("pool-list", "--all", "--name"):
        if pool not in virsh("pool-list", "--name"):
            continue
        for line in virsh("vol-list", pool)[2:]:
            name = line.split()[0]
            if name.startswith("pacific-lab-VAGRANTSLASH-debian-12_vagrant_box_image_"):
                found.add((pool, name))
    return found


@dataclass
class VagrantLab:
    """One `vagrant up lab` with state and libvirt names of its own."""

    work: Path
    token: str
    api_port: int
    dashboard_port: int
    subnet: str
    runs: dict[str, Run] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    volumes_before: set[tuple[str, str]] = field(default_factory=set)
    pool_existed: bool = True

    @classmethod
    def create(cls, base: Path) -> VagrantLab:
        token = secrets.token_hex(3)
        work = base / token
        work.mkdir(parents=True)
        lab = cls(work=work, token=token, api_port=_free_port(), dashboard_port=_free_port(),
                  subnet=_free_subnet())
        lab.volumes_before = box_volumes()
        lab.pool_existed = "default" in virsh("pool-list", "--all", "--name")
        return lab

    @property
    def prefix(self) -> str:
        return f"pl-e2e-{self.token}-"

    @property
    def network(self) -> str:
        return f"pl-e2e-{self.token}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("VAGRANT_", "LAB_VM_", "LAB_VAGRANT_"))}
        env.update({
            "VAGRANT_HOME": str(self.work / "vagrant-home"),
            "VAGRANT_DOTFILE_PATH": str(self.work / "dotfile"),
            "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
            "LAB_VM_CPUS": str(VM_CPUS), "LAB_VM_MEMORY_MIB": str(VM_MEMORY_MIB),
            "LAB_VM_CPU_SHARES": str(VM_CPU_SHARES),
            "LAB_VAGRANT_API_PORT": str(self.api_port),
            "LAB_VAGRANT_DASHBOARD_PORT": str(self.dashboard_port),
            "LAB_VAGRANT_NETWORK": self.network, "LAB_VAGRANT_SUBNET": self.subnet,
            "LAB_VAGRANT_PREFIX": self.prefix,
            "LAB_VAGRANT_CONSOLE_LOG": str(self.work / "console.log"),
        })
        return env

    def build_box(self) -> Run:
        run = stream([sys.executable, "-m", "appliance.cli", "box", "build"], env=self.env(),
                     cwd=ROOT, timeout=UP_TIMEOUT)
        self.runs["box_build"] = run
        save(run, "box_build")
        assert run.rc == 0, f"lab box build failed:\n{run.tail()}"
        return run

    def vagrant(self, *args: str, timeout: float = UP_TIMEOUT, name: str | None = None,
                network_changes: bool = False) -> Run:
        """``vagrant ARGS``; with ``network_changes``, the host's addresses are held steady
        for the others (``tests.support.hostnet``) until the domain starts, or to the end."""
        with libvirtd_in_use():  # vagrant-libvirt talks to libvirtd throughout
            run = stream(["vagrant", *args, "--no-color"], env=self.env(), cwd=VAGRANT_DIR,
                         timeout=timeout,
                         steady=HostAddressesLock() if network_changes else None,
                         steady_until=MARKERS["start"] if args[:1] == ("up",) else None)
        if name:
            self.runs[name] = run
            save(run, name)
        return run

    def ssh(self, command: str, timeout: float = 300) -> str:
        with libvirtd_in_use():  # vagrant-libvirt asks libvirtd for the VM's address
            proc = subprocess.run(["vagrant", "ssh", "lab", "--no-tty", "-c", command],
                                  cwd=VAGRANT_DIR, env=self.env(), capture_output=True,
                                  text=True, timeout=timeout, check=False)
        assert proc.returncode == 0, f"{command!r} in the VM: rc={proc.returncode}\n" \
                                     f"{proc.stdout}{proc.stderr}"
        return proc.stdout

    def leftovers(self) -> dict[str, list[str]]:
        domains = [d for d in virsh("list", "--all", "--name") if d.startswith(self.prefix)]
        volumes = [f"{pool}/{line.split()[0]}" for pool in virsh("pool-list", "--name")
                   for line in virsh("vol-list", pool)[2:]
                   if line.split()[0].startswith(self.prefix)]
        networks = [n for n in virsh("net-list", "--all", "--name") if n == self.network]
        forwarders = subprocess.run(
            ["pgrep", "-f", "--", f"-L 127.0.0.1:({self.api_port}|{self.dashboard_port}):"],
            capture_output=True, text=True, check=False, timeout=30).stdout.split()
        return {"domains": domains, "volumes": volumes, "networks": networks,
                "port forwarders": forwarders}

    def console_tail(self, count: int = 40) -> str:
        try:
            text = (self.work / "console.log").read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(ANSI.sub("", text).splitlines()[-count:])

    def cleanup(self) -> None:
        """Destroy whatever is left, drop the box volume this test uploaded, remove state."""
        if any(self.leftovers().values()):
            self.vagrant("destroy", "-f", "lab", timeout=600, network_changes=True)
        with libvirtd_in_use():
            for pool, volume in box_volumes() - self.volumes_before:
                _virsh("vol-delete", "--pool", pool, volume, check=False)
            if not self.pool_existed and "default" in _virsh("pool-list", "--all", "--name") \
                    and len(_virsh("vol-list", "default")) <= 2:
                _virsh("pool-destroy", "default", check=False)
                _virsh("pool-undefine", "default", check=False)
        shutil.rmtree(self.work, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.work.parent.rmdir()  # only when no other run's state is in it


def host_accelerator() -> str:
    try:
        return str(json.loads((STATE_DIR / "host-facts.json").read_text())["accelerator"])
    except (OSError, ValueError, KeyError):
        return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


@pytest.fixture(scope="module")
def lab() -> Iterator[VagrantLab]:
    if shutil.which("vagrant") is None:
        raise AssertionError("vagrant is not installed: ./lab test installs it "
                             "(playbooks/test-deps.yml)")
    lab = VagrantLab.create(CACHE_DIR / "vagrant-e2e")
    try:
        box = lab.build_box()
        lab.timings["box_build_and_add"] = round(box.seconds, 1)
        first = lab.vagrant("up", "lab", name="first_up", network_changes=True)
        if first.rc != 0:
            raise AssertionError(f"vagrant up lab failed (rc={first.rc}):\n{first.tail(80)}\n"
                                 f"--- console ---\n{lab.console_tail()}")
        lab.timings["first_up"] = up_phases(first)
        print(f"vagrant up lab: {json.dumps(lab.timings['first_up'])}")
        yield lab
    finally:
        lab.cleanup()
        lab.timings["vm"] = {"cpus": VM_CPUS, "memory_mib": VM_MEMORY_MIB,
                             "cpu_shares": VM_CPU_SHARES,
                             "host_accelerator": host_accelerator()}
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        ARTIFACT.write_text(json.dumps(lab.timings, indent=2) + "\n")
        print(f"phases (also in {ARTIFACT}): {json.dumps(lab.timings, indent=2)}")


@pytest.mark.timeout(3000)
def test_up_boots_the_local_box_and_provisions_with_ansible(lab: VagrantLab) -> None:
    first = lab.runs["first_up"]
    driver = "kvm" if host_accelerator() == "kvm" else "qemu"

    assert re.search(rf"Base box:\s+{re.escape(BOX)}\b", first.text)
    assert re.search(rf"Domain type:\s+{driver}\b", first.text)
    assert "Setting hostname..." not in first.text  # the box is named already
    assert f"libvirt driver {driver}" in first.text  # the Vagrantfile says which and why
    assert re.search(r"added to|already in", lab.runs["box_build"].text)
    (recap,) = first.recaps()
    assert recap["failed"] == 0 and recap["unreachable"] == 0, recap
    assert "Running provisioner: lab-up" in first.text
    assert "Admin kubeconfig: /var/lib/pacific-lab/admin.kubeconfig" in first.text
    assert re.search(rf"-- Shares:\s+{VM_CPU_SHARES}\b", first.text)
    assert f"<shares>{VM_CPU_SHARES}</shares>" in virsh("dumpxml", f"{lab.prefix}lab")

    # The box trusts this install's key, and nothing else.
    authorized = lab.ssh("cat ~/.ssh/authorized_keys").strip().splitlines()
    public = (STATE_DIR / "vagrant" / "id_ed25519.pub").read_text().strip()
    assert authorized == [public]
    assert INSECURE_KEY not in "\n".join(authorized)
    # Provisioning fetched no apt index (every package was in the box).
    lists = lab.ssh("ls /var/lib/apt/lists").split()
    assert not [name for name in lists if name.endswith(("Packages", "Packages.lz4", "Release"))]


@pytest.mark.timeout(3000)
def test_the_lab_inside_answers_kubectl(lab: VagrantLab) -> None:
    status = lab.ssh(f"{GUEST_LAB} status")
    assert "host service: running" in status
    assert "API: ready" in status

    nodes = lab.ssh(f"sudo kubectl --kubeconfig {GUEST_KUBECONFIG} get nodes -o name")
    assert nodes.split() == ["node/pacific-lab"]
    root = lab.ssh("findmnt -n -b -o SIZE /").strip()
    assert int(root) > 30 * 1024 ** 3  # the box grew its root to LAB_VM_DISK_GIB (40)

    facts = json.loads(lab.ssh("sudo cat /var/lib/pacific-lab/host-facts.json"))
    if host_accelerator() != "kvm":
        # No nested KVM inside an emulated CPU: the guest's CPU offers neither SVM nor
        # VMX, so its lab finds no /dev/kvm and runs its own VMs under TCG at once.
        assert facts["accelerator"] == "tcg"
        assert facts["kvm_error"] == "/dev/kvm does not exist"
    # Under TCG the Vagrantfile boots the box's kernel directly with mitigations=off (an
    # emulated CPU never speculates); under KVM GRUB boots it with the kernel's defaults.
    cmdline = lab.ssh("cat /proc/cmdline").split()
    assert ("mitigations=off" in cmdline) == (host_accelerator() != "kvm")
    assert lab.ssh("hostname").strip() == "pacific-lab"  # from the box, not set by Vagrant


@pytest.mark.timeout(3000)
def test_kubectl_and_dashboard_from_the_host_through_forwarded_ports(lab: VagrantLab) -> None:
    config = yaml.safe_load(lab.ssh(f"sudo cat {GUEST_KUBECONFIG}"))
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://localhost:{lab.api_port}"
    path = lab.work / "lab.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    kubectl = shutil.which("kubectl")
    assert kubectl, "no kubectl on this host (playbooks/kubectl.yml installs one)"

    proc = subprocess.run([kubectl, "--kubeconfig", str(path), "get", "namespaces", "-o", "name"],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "HOME": str(lab.work)})
    assert proc.returncode == 0, proc.stderr
    assert "namespace/kube-system" in proc.stdout.split()

    ca = lab.work / "ca.crt"
    ca.write_bytes(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]))
    session = requests.Session()
    session.trust_env = False
    response = session.get(f"https://localhost:{lab.dashboard_port}/", verify=str(ca),
                           allow_redirects=False, timeout=60)
    assert response.status_code in (200, 302, 303), response.status_code


@pytest.mark.timeout(3000)
def test_second_up_with_provision_changes_nothing(lab: VagrantLab) -> None:
    unit = "pacific-lab.service"
    before = lab.ssh(f"systemctl show -p InvocationID --value {unit}").strip()
    second = lab.vagrant("up", "lab", "--provision", name="second_up")
    assert second.rc == 0, second.tail(80)
    lab.timings["second_up_provision"] = {
        "total": round(second.seconds, 1), "provisioning_rounds": len(second.recaps()),
        **{k: v for k, v in up_phases(second).items()
           if k.startswith(("provision", "lab_up", "vagrant_after"))}}

    # vagrant-libvirt 0.11 would run the provisioners of a running machine twice on
    # `up --provision` (vagrant-libvirt/vagrant-libvirt#1710); the Vagrantfile's
    # ProvisionOncePerAction makes it once.
    (recap,) = second.recaps()
    assert recap["changed"] == 0 and recap["failed"] == 0, recap
    assert second.text.count("Running provisioner: lab-up") == 1
    assert "preparing the virtual environment" not in second.text  # ./lab's venv is current
    assert "Administrator credentials:" in second.text  # the password is shown once only
    after = lab.ssh(f"systemctl show -p InvocationID --value {unit}").strip()
    assert before and after == before  # lab up did not restart the service
    lists = lab.ssh("ls /var/lib/apt/lists").split()
    assert not [name for name in lists if name.endswith(("Packages", "Release"))]


@pytest.mark.timeout(3000)
def test_destroy_leaves_no_domain_volume_or_network(lab: VagrantLab) -> None:
    before = lab.leftovers()
    assert before["domains"] == [f"{lab.prefix}lab"]
    assert len(before["port forwarders"]) == 2  # so that their absence below means something
    destroy = lab.vagrant("destroy", "-f", "lab", timeout=600, name="destroy",
                          network_changes=True)
    lab.timings["destroy"] = round(destroy.seconds, 1)

    assert destroy.rc == 0, destroy.tail()
    assert lab.leftovers() == {"domains": [], "volumes": [], "networks": [],
                               "port forwarders": []}


# -- without a VM ----------------------------------------------------------------------------


def _validate(tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("VAGRANT_", "LAB_VM_", "LAB_VAGRANT_"))}
    base.update({"VAGRANT_HOME": str(tmp / "home"), "VAGRANT_DOTFILE_PATH": str(tmp / "dot"),
                 "VAGRANT_CHECKPOINT_DISABLE": "1"}, **env)
    return subprocess.run(["vagrant", "validate"], cwd=VAGRANT_DIR, env=base,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("env", [{}, {"LAB_VM_DRIVER": "kvm"}, {"LAB_VM_DRIVER": "qemu"},
                                 {"LAB_VAGRANT_BOX_FALLBACK": "1"},
                                 {"LAB_VM_CPUS": "2", "LAB_VM_MEMORY_MIB": "3072",
                                  "LAB_VM_CPU_SHARES": "256"}])
def test_vagrantfile_validates(tmp_path: Path, env: dict[str, str]) -> None:
    proc = _validate(tmp_path, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully" in proc.stdout


def test_vagrantfile_refuses_a_bad_driver(tmp_path: Path) -> None:
    proc = _validate(tmp_path, LAB_VM_DRIVER="xen")
    assert proc.returncode != 0
    assert 'LAB_VM_DRIVER must be kvm or qemu, not "xen"' in proc.stdout + proc.stderr


def test_vagrantfile_refuses_a_bad_cpu_weight(tmp_path: Path) -> None:
    proc = _validate(tmp_path, LAB_VM_CPU_SHARES="1")
    assert proc.returncode != 0
    assert 'LAB_VM_CPU_SHARES must be a whole number from 2 to 262144, not "1"' in \
        proc.stdout + proc.stderr


def test_up_without_the_local_box_says_how_to_build_it(tmp_path: Path) -> None:
    prefix = f"pl-e2e-nobox-{secrets.token_hex(3)}-"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VAGRANT_", "LAB_VM_", "LAB_VAGRANT_"))}
    env.update({"VAGRANT_HOME": str(tmp_path / "home"), "VAGRANT_DOTFILE_PATH": str(tmp_path),
                "VAGRANT_CHECKPOINT_DISABLE": "1", "LAB_VAGRANT_PREFIX": prefix})
    proc = subprocess.run(["vagrant", "up", "lab", "--no-color"], cwd=VAGRANT_DIR, env=env,
                          capture_output=True, text=True, timeout=300, check=False)

    assert proc.returncode != 0
    assert "sudo ./lab box build" in proc.stdout + proc.stderr
    assert not [d for d in virsh("list", "--all", "--name") if d.startswith(prefix)]


def test_box_is_what_vagrant_libvirt_expects() -> None:
    """The packed box: a tar of metadata.json (v1: libvirt, qcow2, virtual size in GiB),
    the box's Vagrantfile (this install's key, no key insertion), box.img (qcow2 of that
    size, no backing file) and boot.json (the kernel kept beside the box)."""
    env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"}
    built = subprocess.run([sys.executable, "-m", "appliance.cli", "box", "build", "--no-add"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
                           check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    boxes = list_boxes(CACHE_DIR / "boxes")
    assert len(boxes) == 1
    box = boxes[0]
    with tarfile.open(box.path) as tar:
        assert sorted(tar.getnames()) == ["Vagrantfile", "boot.json", "box.img",
                                          "metadata.json"]
        metadata = json.load(tar.extractfile("metadata.json"))  # type: ignore[arg-type]
        boot = json.load(tar.extractfile("boot.json"))  # type: ignore[arg-type]
        vagrantfile = tar.extractfile("Vagrantfile").read().decode()  # type: ignore[union-attr]
        header = tar.extractfile("box.img").read(104)  # type: ignore[union-attr]
    assert metadata == {"provider": "libvirt", "format": "qcow2",
                        "virtual_size": box.virtual_size_gib}
    assert header[:4] == b"QFI\xfb"
    assert int.from_bytes(header[8:16], "big") == 0  # no backing file
    assert int.from_bytes(header[24:32], "big") == metadata["virtual_size"] * 1024 ** 3
    assert "config.ssh.insert_key = false" in vagrantfile
    # The kernel that the Vagrantfile boots directly under TCG, kept beside the box.
    assert boot["kernel"] == str(box.path.parent / "vmlinuz")
    assert boot["initrd"] == str(box.path.parent / "initrd.img")
    assert Path(boot["kernel"]).stat().st_size > 1024 ** 2
    assert re.fullmatch(r"root=UUID=[0-9a-f-]+ ro console=tty0 console=ttyS0,115200n8",
                        boot["cmdline"])
    assert f"config.ssh.private_key_path = '{STATE_DIR / 'vagrant' / 'id_ed25519'}'" \
        in vagrantfile
    key = STATE_DIR / "vagrant" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600
    catalog = json.loads(box.catalog.read_text())
    assert catalog["name"] == BOX
    assert catalog["versions"][0]["version"] == box.version
