"""A VirtualMachine's whole life on real libvirt (TCG here, KVM where it works):
apply with kubectl, Ready with an IP, SSH as the cloud-config's user, power
off and on, drift repaired, delete leaves nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
from appliance.agent.vmnames import domain_name, vm_prefix
from pathlib import Path

import pytest
import yaml

from hypervisor.ssh import generate_keypair, run_command
from tests.e2e.conftest import kubeconfig_for
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

KUBECTL = Path("/usr/bin/kubectl")
BOOT_TIMEOUT = 600  # a full Debian boot to SSH is 100-120 s under TCG; generous for CI


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, timeout=60).stdout


def domain_state(name: str) -> str:
    return virsh("domstate", name).strip()


def prepare_namespace(lab: LabServer, kc: Kubectl, ns: str) -> None:
    kc.run("create", "namespace", ns)
    lab.lab("image", "assign", "debian-12", ns)
    lab.lab("class", "assign", "best-effort-xsmall", ns)


def vm_status(kc: Kubectl, ns: str, name: str) -> dict:
    proc = kc.run("get", "vm", name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout).get("status", {}) if proc.returncode == 0 else {}


def ready(kc: Kubectl, ns: str, name: str) -> dict | None:
    status = vm_status(kc, ns, name)
    cond = {c["type"]: c["status"] for c in status.get("conditions", [])}
    return status if cond.get("Ready") == "True" and status.get("network", {}).get(
        "primaryIP4") else None


def test_vm_lifecycle(vmlab: LabServer, tmp_path: Path) -> None:
    ns = "vm-life"
    kc = Kubectl(KUBECTL, kubeconfig_for(vmlab, tmp_path, ns), tmp_path / "cache")
    prepare_namespace(vmlab, kc, ns)
    private, public = generate_keypair("alice@test")
    # Written as in vm-operator's documentation: a Secret with the cloud-config,
    # referenced from spec.bootstrap.cloudInit.rawCloudConfig.
    user_data = "#cloud-config\n" + yaml.safe_dump({
        "users": ["default", {"name": "alice", "shell": "/bin/bash",
                              "sudo": "ALL=(ALL) NOPASSWD:ALL",
                              "ssh_authorized_keys": [public]}],
        "write_files": [{"path": "/srv/hello.txt", "content": "hello from cloud-init\n",
                         "permissions": "0644"}]})
    manifest = tmp_path / "web.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-1-cloud-init"},
         "stringData": {"user-data": user_data}},
        {"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
         "metadata": {"name": "web-1"},
         "spec": {"className": "best-effort-xsmall", "imageName": "debian-12",
                  "storageClass": "wcpglobal-storage-profile", "powerState": "PoweredOn",
                  "minHardwareVersion": 17,
                  "bootstrap": {"cloudInit": {"rawCloudConfig": {
                      "name": "web-1-cloud-init", "key": "user-data"}}}}}]))
    kc.run("apply", "-f", str(manifest))
    dom = domain_name({"metadata": {"namespace": ns, "name": "web-1"}},
                      vm_prefix(vmlab.state_dir))
    status = wait_for("web-1 Ready with an IP", lambda: ready(kc, ns, "web-1"), BOOT_TIMEOUT,
                      5, describe=lambda: json.dumps(vm_status(kc, ns, "web-1"))[:800])
    ip = status["network"]["primaryIP4"]
    wide = kc.run("get", "vm", "-n", ns, "-o", "wide").stdout
    assert "PoweredOn" in wide and "best-effort-xsmall" in wide and ip in wide
    known = tmp_path / "known_hosts"
    rc, out, _ = run_command(ip, "alice", private, "cat /srv/hello.txt", 120, known_hosts=known)
    assert rc == 0 and out == "hello from cloud-init\n"
    # As a user would, let cloud-init finish before pulling the plug.
    rc, out, _ = run_command(ip, "alice", private, "cloud-init status --wait", 600,
                             known_hosts=known)
    assert rc == 0 and "done" in out
    # `lab ssh` with the appliance's own key for the VM.
    proc = subprocess.run([*vmlab_cli(vmlab), "ssh", "vm", f"{ns}/web-1", "--kubeconfig",
                           str(kc.kubeconfig), "hostname"], env=vmlab.env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "web-1", proc.stderr
    console = subprocess.run([*vmlab_cli(vmlab), "console", f"{ns}/web-1", "--kubeconfig",
                              str(kc.kubeconfig)], env=vmlab.env, capture_output=True,
                             timeout=60)
    assert b"cloud-init" in console.stdout
    # Immutable fields stay immutable.
    bad = kc.run("patch", "vm", "web-1", "-n", ns, "--type", "merge",
                 "-p", '{"spec":{"className":"best-effort-small"}}', check=False)
    assert bad.returncode == 1 and "field is immutable" in bad.stderr
    # Power off and on through spec.powerState.
    kc.run("patch", "vm", "web-1", "-n", ns, "--type", "merge",
           "-p", '{"spec":{"powerState":"PoweredOff"}}')
    wait_for("PoweredOff", lambda: vm_status(kc, ns, "web-1").get("powerState") == "PoweredOff"
             and domain_state(dom) == "shut off", 120, 2)
    kc.run("patch", "vm", "web-1", "-n", ns, "--type", "merge",
           "-p", '{"spec":{"powerState":"PoweredOn"}}')
    status = wait_for("Ready again", lambda: ready(kc, ns, "web-1"), BOOT_TIMEOUT, 5)
    rc, out, _ = run_command(ip, "alice", private, "cat /srv/hello.txt", 120, known_hosts=known)
    assert rc == 0 and out == "hello from cloud-init\n"
    # Drift: destroyed and undefined behind the appliance's back, it comes back.
    virsh("destroy", dom)
    virsh("undefine", dom)
    wait_for("the domain to be redefined and running", lambda: domain_state(dom) == "running",
             120, 2)
    # What happened is in the VM's events, as `kubectl describe` shows them.
    def reasons() -> set[str]:
        got = kc.run("get", "events", "-n", ns, "--field-selector",
                     "involvedObject.name=web-1,involvedObject.kind=VirtualMachine", "-o", "json")
        return {e["reason"] for e in json.loads(got.stdout)["items"]}
    wait_for("the repair event", lambda: "PowerStateRepaired" in reasons(), 60, 2)
    assert {"Created", "PoweredOff", "PoweredOn"} <= reasons()
    assert "PowerStateRepaired" in kc.run("describe", "vm", "web-1", "-n", ns).stdout
    # Delete: nothing is left behind.
    kc.run("delete", "vm", "web-1", "-n", ns, "--timeout=180s")
    assert dom not in virsh("list", "--all", "--name").split()
    pool_dir = vmlab.state_dir / "vms"
    assert not [p.name for p in pool_dir.iterdir() if p.name.startswith(f"{ns}_web-1")]
    assert not (vmlab.state_dir / "consoles" / f"{dom}.log").exists()
    secrets = kc.run("get", "secrets", "-n", ns, "-o", "name").stdout.split()
    assert "secret/web-1-ssh-key" not in secrets
    vms = json.loads(kc.run("get", "vm", "-A", "-o", "json").stdout)["items"]
    assert ip not in json.dumps(vms)  # the address is free again


def test_restart_during_create_converges(vmlab: LabServer, tmp_path: Path) -> None:
    ns = "vm-crash"
    kc = Kubectl(KUBECTL, kubeconfig_for(vmlab, tmp_path, ns), tmp_path / "cache")
    prepare_namespace(vmlab, kc, ns)
    body = {"apiVersion": "vmoperator.vmware.com/v1alpha2", "kind": "VirtualMachine",
            "metadata": {"name": "db-1", "namespace": ns},
            "spec": {"className": "best-effort-xsmall", "imageName": "debian-12",
                     "powerState": "PoweredOn"}}
    kc.run("apply", "-f", "-", input=json.dumps(body))
    dom = domain_name({"metadata": {"namespace": ns, "name": "db-1"}},
                      vm_prefix(vmlab.state_dir))
    # Kill the host service as soon as the agent has started building the VM.
    wait_for("the agent to start building", lambda: (vmlab.state_dir / "vms").exists() and any(
        p.name.startswith(f"{ns}_db-1") for p in (vmlab.state_dir / "vms").iterdir()), 120, 0.2)
    vmlab.kill(signal.SIGKILL)
    vmlab.start()
    wait_for("db-1 to run", lambda: domain_state(dom) == "running", 180, 2)
    assert virsh("list", "--all", "--name").split().count(dom) == 1
    disks = [p.name for p in (vmlab.state_dir / "vms").iterdir()
             if p.name.startswith(f"{ns}_db-1") and not p.name.startswith(".")]
    assert sorted(disks) == [f"{ns}_db-1-seed.iso", f"{ns}_db-1.qcow2"]
    kc.run("delete", "vm", "db-1", "-n", ns, "--timeout=180s")
    assert dom not in virsh("list", "--all", "--name").split()


def vmlab_cli(lab: LabServer) -> list[str]:
    import sys

    return [sys.executable, "-m", "appliance.cli"]
