"""Guest cluster benchmark: a 1+1 Cluster API cluster from apply to both nodes
answering SSH, against one plain VirtualMachine from apply to SSH, in one run.

    python benchmarks/cluster.py [--out FILE.json]

Both go through a real host service with namespace networks (OVS, DHCP, the
endpoint VIP) and real kubectl, on this host's accelerator (printed). The
cluster's time is split into:

- expansion: ``kubectl apply`` until both VirtualMachines exist (Cluster,
  VSphereCluster and its VIP, KubeadmControlPlane, MachineDeployment,
  MachineSet, Machines, KubeadmConfigs and their bootstrap data,
  VSphereMachines);
- VM creation: until both domains are defined and started by the host agent;
- boot and cloud-init: until both nodes answer SSH;
- bootstrap report: until both Machines carry the guest's kubeadm report (on
  this build machine: KubeadmNotFound, as its images have no kubeadm).

The plain VM runs first, alone, then the cluster. Every wait has a deadline and
says which step ran out. Needs the debian-12 image (built into the cache on
first use).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypervisor.hostfacts import detect_accelerator  # noqa: E402
from tests.support.server import network_lab  # noqa: E402

NS = "bench"
BOOT_TIMEOUT = 900


class StepTimeout(RuntimeError):
    pass


def wait(step: str, probe: Any, timeout: float, interval: float = 0.5) -> float:
    """Poll ``probe`` until it is true; the time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(interval)
    raise StepTimeout(f"step {step!r} did not finish within {timeout:.0f} s")


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.base = ["kubectl", "--kubeconfig", str(kubeconfig), "-n", NS]

    def run(self, *args: str, input: str | None = None) -> str:
        return subprocess.run([*self.base, *args], input=input, text=True, check=True,
                              capture_output=True, timeout=120).stdout

    def items(self, kind: str, *args: str) -> list[dict[str, Any]]:
        out = subprocess.run([*self.base, "get", kind, *args, "-o", "json"], text=True,
                             capture_output=True, timeout=120)
        return json.loads(out.stdout).get("items", []) if out.returncode == 0 else []


def answering(vm: dict[str, Any]) -> bool:
    return bool(((vm.get("status") or {}).get("network") or {}).get("primaryIP4"))


def started(vm: dict[str, Any]) -> bool:
    return (vm.get("status") or {}).get("powerState") == "PoweredOn"


def plain_vm(kube: Kube) -> float:
    vm = {"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
          "metadata": {"name": "bench-1"},
          "spec": {"className": "best-effort-xsmall", "imageName": "debian-12"}}
    start = time.monotonic()
    kube.run("apply", "-f", "-", input=json.dumps(vm))
    done = wait("plain VM: apply to SSH", lambda: any(
        answering(v) for v in kube.items("vm") if v["metadata"]["name"] == "bench-1"),
        BOOT_TIMEOUT, 1.0)
    kube.run("delete", "vm", "bench-1", "--wait=true", "--timeout=300s")
    return done - start


def cluster(kube: Kube) -> dict[str, float]:
    manifest = (ROOT / "tests/e2e/data/capv-supervisor-cluster.yaml").read_text()
    selector = "capv.vmware.com/cluster.name=c1"
    start = time.monotonic()
    kube.run("apply", "-f", "-", input=manifest)
    expanded = wait("cluster: objects expanded to two VirtualMachines",
                    lambda: len(kube.items("vm", "-l", selector)) == 2, 300)
    created = wait("cluster: both domains started",
                   lambda: sum(started(v) for v in kube.items("vm", "-l", selector)) == 2, 300)
    ssh = wait("cluster: both nodes answering SSH",
               lambda: sum(answering(v) for v in kube.items("vm", "-l", selector)) == 2,
               BOOT_TIMEOUT, 1.0)

    def reported() -> bool:
        machines = kube.items("machines")
        return len(machines) == 2 and all(any(
            c["type"] == "BootstrapExecSucceeded" and c["status"] != "Unknown"
            for c in (m.get("status") or {}).get("conditions") or []) for m in machines)
    report = wait("cluster: bootstrap reported on both machines", reported, 600, 1.0)
    kube.run("delete", "cluster", "c1", "--wait=true", "--timeout=600s")
    return {"expansion_s": round(expanded - start, 2),
            "vm_creation_s": round(created - expanded, 2),
            "boot_and_cloud_init_s": round(ssh - created, 2),
            "apply_to_both_ssh_s": round(ssh - start, 2),
            "bootstrap_report_after_ssh_s": round(report - ssh, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    accel, why = detect_accelerator()
    with network_lab("bench-cluster") as net:
        lab = net.server
        subprocess.run(["kubectl", "--kubeconfig", str(lab.admin_kubeconfig), "create",
                        "namespace", NS], check=True, capture_output=True)
        lab.lab("image", "assign", "debian-12", NS)
        lab.lab("class", "assign", "best-effort-xsmall", NS)
        kube = Kube(lab.admin_kubeconfig)
        baseline = plain_vm(kube)
        figures = cluster(kube)
        result = {"accelerator": accel, "kvm_error": why,
                  "vm_apply_to_ssh_s": round(baseline, 2), "cluster": figures,
                  "cluster_to_vm_ratio": round(figures["apply_to_both_ssh_s"] / baseline, 2)}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
