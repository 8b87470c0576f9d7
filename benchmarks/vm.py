"""VM Service benchmark: time from apply to SSH-ready, split into phases.

    python benchmarks/vm.py [--out FILE.json]

Two measurements in one run, on this host's accelerator (KVM or TCG, printed):

1. The phases, driven through the same hypervisor functions the host agent
   uses: clone (qcow2 overlay on the library image), seed (NoCloud ISO),
   define (libvirt), boot (start until cloud-init starts, from the serial
   log) and cloud-init (until cloud-init reports finished), then SSH.
   In the same run: the overlay clone against a full copy of the same image.
2. End to end through the API: ``kubectl apply`` of a VirtualMachine until
   its Ready condition (SSH answers), on a real host service.

Needs the debian-12 image (built into the cache on first use). Traffic stays
on the appliance bridge of this host.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.settings import load_settings  # noqa: E402
from appliance.vmservice.library import build  # noqa: E402
from hypervisor.appliance_net import ApplianceNetwork, ensure_network  # noqa: E402
from hypervisor.disks import DiskStore  # noqa: E402
from hypervisor.domain import DiskSpec, DomainSpec, KernelBoot, NicSpec  # noqa: E402
from hypervisor.hostfacts import detect_accelerator  # noqa: E402
from hypervisor.libvirt_driver import LibvirtDriver  # noqa: E402
from hypervisor.seed import build_seed_iso  # noqa: E402
from hypervisor.ssh import generate_keypair, wait_for_ssh  # noqa: E402


def _wait_log(path: Path, marker: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_text(errors="replace"):
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"{marker!r} not in {path} after {timeout}s")


def phases(base: Path, accel: str, address: str) -> dict[str, float]:
    settings = load_settings(environ={}, state_dir=base / "state",
                             cache_dir=Path("/var/cache/pacific-lab"))
    files = build(settings, "debian-12")
    driver = LibvirtDriver()
    disks = DiskStore(driver, settings.state_dir)
    pool = f"bench-{uuid.uuid4().hex[:6]}"
    pool_dir = disks.ensure_pool(pool, "vms")
    network = ApplianceNetwork("pacific-appliance", "pacific0", "198.18.0.0/24")
    ensure_network(network)
    private, public = generate_keypair("bench")
    name = f"bench-{uuid.uuid4().hex[:6]}"
    out: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        disk = disks.ensure_overlay(pool, f"{name}.qcow2", files.disk, "qcow2", 10 * 2**30)
        t1 = time.monotonic()
        seed = build_seed_iso(pool_dir / f"{name}-seed.iso", {
            "users": [{"name": "bench", "ssh_authorized_keys": [public],
                       "sudo": "ALL=(ALL) NOPASSWD:ALL"}]},
            {"instance-id": name, "local-hostname": name},
            {"version": 2, "ethernets": {"eth0": {"match": {"macaddress": "52:54:00:be:ec:01"},
                                                  "set-name": "eth0",
                                                  "addresses": [f"{address}/24"]}}})
        t2 = time.monotonic()
        serial = base / f"{name}.log"
        spec = DomainSpec(name=name, uuid=str(uuid.uuid4()), vcpus=2, memory_mib=2048,
                          accelerator=accel, disks=(DiskSpec(disk, "qcow2", "vda"),
                                                    DiskSpec(seed, "raw", "vdb", readonly=True)),
                          nics=(NicSpec("52:54:00:be:ec:01", "network", network.name),),
                          serial_log=serial,
                          kernel=KernelBoot(files.kernel, files.initrd, files.cmdline or "")
                          if files.kernel else None)
        driver.ensure_defined(spec)
        t3 = time.monotonic()
        driver.ensure_power(name, "running")
        t_init = _wait_log(serial, "running 'init-local'", 600)
        t_done = _wait_log(serial, "finished at", 600)
        wait_for_ssh(address, "bench", private, 300, known_hosts=base / "known_hosts")
        t_ssh = time.monotonic()
        out = {"clone_s": t1 - t0, "seed_s": t2 - t1, "define_s": t3 - t2,
               "boot_to_cloud_init_s": t_init - t3, "cloud_init_s": t_done - t_init,
               "cloud_init_done_to_ssh_s": max(0.0, t_ssh - t_done), "total_s": t_ssh - t0}
        copy_start = time.monotonic()
        disks.full_copy(files.disk, pool_dir / f"{name}-full.qcow2")
        out["full_copy_s"] = time.monotonic() - copy_start
        out["clone_vs_full_copy"] = out["full_copy_s"] / max(out["clone_s"], 1e-6)
    finally:
        driver.ensure_absent(name)
        disks.remove_pool(pool, delete_volumes=True)
    return out


def end_to_end(base: Path) -> float:
    from tests.support.server import LabServer
    from tests.support.wait import wait_for

    lab = LabServer(base / "e2e-state")
    lab.start()
    try:
        lab.lab("image", "build", "debian-12")
        kc = ["kubectl", "--kubeconfig", str(lab.admin_kubeconfig)]
        subprocess.run([*kc, "create", "namespace", "bench"], check=True, capture_output=True)
        lab.lab("image", "assign", "debian-12", "bench")
        lab.lab("class", "assign", "best-effort-xsmall", "bench")
        vm = {"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
              "metadata": {"name": "bench-1", "namespace": "bench"},
              "spec": {"className": "best-effort-xsmall", "imageName": "debian-12"}}
        start = time.monotonic()
        subprocess.run([*kc, "apply", "-f", "-"], input=json.dumps(vm), text=True, check=True,
                       capture_output=True)

        def ready() -> bool:
            got = subprocess.run([*kc, "get", "vm", "bench-1", "-n", "bench", "-o", "json"],
                                 capture_output=True, text=True)
            conds = json.loads(got.stdout).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        wait_for("bench-1 Ready", ready, 900, 1)
        elapsed = time.monotonic() - start
        subprocess.run([*kc, "delete", "vm", "bench-1", "-n", "bench"], check=True,
                       capture_output=True)
        return elapsed
    finally:
        lab.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    accel, why = detect_accelerator()
    base = Path(tempfile.mkdtemp(prefix="pacific-bench-", dir="/var/tmp"))
    base.chmod(0o711)
    try:
        result = {"accelerator": accel, "kvm_error": why,
                  "phases": phases(base, accel, "198.18.0.250"),
                  "apply_to_ready_s": end_to_end(base)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
