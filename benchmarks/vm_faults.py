"""Out-of-band ``virsh`` changes to running VMs, and how long the VM agent takes to undo them.

    python benchmarks/vm_faults.py [--changes 100] [--vms 3] [--out FILE.json]

The companion of ``benchmarks/faults.py`` (which changes the namespace networks): a real
host service on loopback (``tests/support/server.py``), the debian-12 image from the
cache, ``--vms`` VirtualMachines of class best-effort-xsmall, PoweredOn. Then, round after
round, every VM gets one change behind the lab's back, the kinds taken in turn:

- ``destroy``: ``virsh destroy`` (a hard power-off);
- ``undefine``: ``virsh undefine`` of the running domain (it goes on as a transient one,
  and would vanish at its next power-off);
- ``destroy-undefine``: both: the domain is gone;
- ``suspend``: ``virsh suspend``;
- ``setmaxmem-config``: ``virsh setmaxmem --config`` to twice the class's memory (the
  next cold start would boot another machine than the class says).

A change has converged when the domain runs, is persistent, has the same UUID, and its
persistent definition has the class's memory again. Nobody but the VM agent touches
anything; its resync is 10 s, so about 10 s is what a lone change should take. After the
last round, "orphans" counts what is on the host that was not there before the changes:
domains of the lab, volumes in its pool.

Needs root and libvirtd. Under TCG the VMs are emulated: a hard power-off means a new
boot, and the first minutes of each boot are busy, which is part of what is measured.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from appliance.agent.vmnames import domain_name, vm_prefix  # noqa: E402
from benchmarks.faults import parse_args, summary  # noqa: E402
from tests.support.server import LabServer  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

KINDS = ("destroy", "undefine", "destroy-undefine", "suspend", "setmaxmem-config")
CONVERGE_TIMEOUT = 300.0
NAMESPACE = "vm-faults"


def virsh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["virsh", "-q", *args], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def state(dom: str) -> dict[str, Any]:
    """What the changes touch, as it is now (``{}`` when the domain is gone)."""
    info = virsh("dominfo", dom, check=False)
    if not info:
        return {}
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    persistent = fields.get("Persistent", "").strip() == "yes"
    memory = None
    if persistent:
        root = ET.fromstring(virsh("dumpxml", "--inactive", dom))
        memory = int(root.findtext("memory") or 0)
    return {"state": fields.get("State", "").strip(), "persistent": persistent,
            "uuid": fields.get("UUID", "").strip(), "memory_kib": memory}


def change(kind: str, dom: str, memory_kib: int) -> None:
    """Make one out-of-band change, as an administrator's slip or a crash would."""
    if kind == "destroy":
        virsh("destroy", dom)
    elif kind == "undefine":
        virsh("undefine", dom)
    elif kind == "destroy-undefine":
        virsh("destroy", dom)
        virsh("undefine", dom)
    elif kind == "suspend":
        virsh("suspend", dom)
    elif kind == "setmaxmem-config":
        virsh("setmaxmem", dom, str(memory_kib * 2), "--config")
    else:
        raise ValueError(kind)


def converge(dom: str, healthy: dict[str, Any], started: float) -> float:
    """Seconds from ``started`` until the domain is as it was."""
    deadline = started + CONVERGE_TIMEOUT
    while time.monotonic() < deadline:
        if state(dom) == healthy:
            return time.monotonic() - started
        time.sleep(0.25)
    raise RuntimeError(f"{dom}: not converged after {CONVERGE_TIMEOUT:.0f} s: "
                       f"{state(dom)} != {healthy}")


def inventory(lab: LabServer, pool: str) -> dict[str, Any]:
    prefix = vm_prefix(lab.state_dir)
    return {"domains": sorted(d for d in virsh("list", "--all", "--name").split()
                              if d.startswith(prefix)),
            "volumes": sorted(line.split()[0] for line in virsh(
                "vol-list", pool, check=False).splitlines() if line.strip())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, "vms", argv)
    # QEMU runs as libvirt-qemu: every directory above the disks must be traversable.
    base = Path(tempfile.mkdtemp(prefix="pacific-vm-faults-", dir="/var/tmp"))
    base.chmod(0o711)
    lab = LabServer(base / "state", extra_env={"LAB_CACHE_DIR": "/var/cache/pacific-lab"})
    results: list[dict[str, Any]] = []
    started_run = time.monotonic()
    lab.start()
    try:
        lab.lab("image", "build", "debian-12")
        kc = ["kubectl", "--kubeconfig", str(lab.admin_kubeconfig)]
        subprocess.run([*kc, "create", "namespace", NAMESPACE], check=True,
                       capture_output=True)
        lab.lab("image", "assign", "debian-12", NAMESPACE)
        lab.lab("class", "assign", "best-effort-xsmall", NAMESPACE)
        names = [f"f{i}" for i in range(args.vms)]
        for name in names:
            vm = {"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
                  "metadata": {"name": name, "namespace": NAMESPACE},
                  "spec": {"className": "best-effort-xsmall", "imageName": "debian-12",
                           "powerState": "PoweredOn"}}
            subprocess.run([*kc, "apply", "-f", "-"], input=json.dumps(vm), text=True,
                           check=True, capture_output=True)
        doms = [domain_name({"metadata": {"namespace": NAMESPACE, "name": n}},
                            vm_prefix(lab.state_dir)) for n in names]
        wait_for("every VM's domain running",
                 lambda: all(state(d).get("state") == "running" for d in doms), 600, 1)
        healthy = {d: state(d) for d in doms}
        # the VM agent's pool (appliance.agent.vms): one per state directory
        pool = f"pacific-vms-{hashlib.sha256(str(lab.state_dir).encode()).hexdigest()[:8]}"
        before = inventory(lab, pool)
        kinds = iter(KINDS * (args.changes // len(KINDS) + 2))
        while len(results) < args.changes:
            batch = doms[:min(len(doms), args.changes - len(results))]
            planned = [(next(kinds), d) for d in batch]
            started = time.monotonic()
            for kind, dom in planned:
                change(kind, dom, int(healthy[dom]["memory_kib"]))
            with ThreadPoolExecutor(len(planned)) as pool_:
                waits = [(kind, dom, pool_.submit(converge, dom, healthy[dom], started))
                         for kind, dom in planned]
                for kind, dom, future in waits:
                    seconds = future.result()
                    results.append({"kind": kind, "domain": dom, "seconds": round(seconds, 2)})
                    print(f"{len(results):4d} {kind:17s} {dom}: {seconds:5.1f} s",
                          file=sys.stderr, flush=True)
        after = inventory(lab, pool)
        for name in names:
            subprocess.run([*kc, "delete", "vm", name, "-n", NAMESPACE, "--timeout=300s"],
                           check=True, capture_output=True, timeout=330)
        left = inventory(lab, pool)
    finally:
        lab.stop(check_exposure=False)
        lab.remove_leftovers()
        subprocess.run(["rm", "-rf", str(base)], check=False)
    orphans = {k: (after[k], before[k]) for k in before if after[k] != before[k]}
    report = {
        "command": "python benchmarks/vm_faults.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "vms": args.vms, "changes": len(results), **summary(results, KINDS),
        "orphans": orphans, "inventory_before": before,
        "left_after_delete": left,
        "total_seconds": round(time.monotonic() - started_run, 1), "results": results,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not orphans and not left["domains"] and not left["volumes"] else 1


if __name__ == "__main__":
    sys.exit(main())
