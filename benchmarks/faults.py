"""Out-of-band changes to the namespace networks, and how long the lab takes to undo them.

    python benchmarks/faults.py [--changes 100] [--namespaces 3] [--out FILE.json]

The network controllers run in-process over a throwaway store, as in
``benchmarks/network.py`` (whose ``Bench`` this uses): ``--namespaces`` namespaces, each
with its VirtualNetwork Ready and one workload (a network namespace on a port of the
integration bridge) holding a DHCP lease. Then, round after round, every namespace gets
one change behind the lab's back, the kinds taken in turn:

- ``del-gateway-port``: ``ovs-vsctl del-port`` of the namespace's gateway port;
- ``del-flows``: ``ovs-ofctl del-flows`` of the namespace's cookie;
- ``kill-dnsmasq``: SIGKILL to the namespace's dnsmasq;
- ``del-nft-table``: ``nft delete table`` of the namespace's table;
- ``flush-addresses``: ``ip addr flush`` of the gateway port;
- ``retag-gateway``: ``ovs-vsctl set port`` of the gateway port to another VLAN;
- ``del-base-flows``: ``ovs-ofctl del-flows`` of the bridge-wide pipeline (one namespace
  of the round gets it; the others get the next kind).

A change has converged when what it changed is as it was before the run (the port with
its tag, the flow counts, a live dnsmasq, the nft table, the addresses) and the workload
gets a DHCP lease from its namespace again. Nobody but the controllers touches anything.
After the last round, "orphans" counts what is on the host that was not there before
the changes: ports, flows, nft tables, dnsmasq processes of the lab's network directory.

Needs root, Open vSwitch running, ansible in the virtual environment; everything uses a
random tag and addresses in 198.18.0.0/15.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from appliance.network import flows as flowlib  # noqa: E402
from appliance.network.config import BASE_COOKIE  # noqa: E402
from appliance.network.world import NETWORKS  # noqa: E402
from benchmarks.api import percentile  # noqa: E402
from benchmarks.network import UDHCPC_SCRIPT, Bench  # noqa: E402
from hypervisor import ovs  # noqa: E402

KINDS = ("del-gateway-port", "del-flows", "kill-dnsmasq", "del-nft-table", "flush-addresses",
         "retag-gateway", "del-base-flows")
CONVERGE_TIMEOUT = 300.0


@dataclass
class Segment:
    """One namespace's piece of the host, as the lab made it."""

    namespace: str
    vlan: int
    gateway_port: str
    nft_table: str
    directory: Path
    workload: ovs.NetnsHost
    lease: Path

    def state(self, bridge: str) -> dict[str, Any]:
        """What the changes touch, as it is now."""
        ports = {p.name: p.tag for p in ovs.list_ports(bridge)}
        return {
            "gateway_tag": ports.get(self.gateway_port),
            "flows": len(ovs.dump_flows(bridge, self.vlan)),
            "base_flows": len(ovs.dump_flows(bridge, BASE_COOKIE)),
            "dnsmasq": ovs.pid_alive(self.directory / "dnsmasq.pid", "dnsmasq") is not None,
            "nft": ovs.nft_table_text("inet", self.nft_table) is not None,
            "addresses": sorted(ovs.link_addresses(self.gateway_port))
            if self.gateway_port in ports else [],
        }


def change(kind: str, seg: Segment, bridge: str) -> None:
    """Make one out-of-band change, as an administrator's slip or a crash would."""
    if kind == "del-gateway-port":
        subprocess.run(["ovs-vsctl", "del-port", bridge, seg.gateway_port], check=True)
    elif kind == "del-flows":
        subprocess.run(["ovs-ofctl", "del-flows", bridge, f"cookie={seg.vlan:#x}/-1"],
                       check=True)
    elif kind == "kill-dnsmasq":
        pid = ovs.pid_alive(seg.directory / "dnsmasq.pid", "dnsmasq")
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
    elif kind == "del-nft-table":
        subprocess.run(["nft", "delete", "table", "inet", seg.nft_table], check=True)
    elif kind == "flush-addresses":
        subprocess.run(["ip", "addr", "flush", "dev", seg.gateway_port], check=True)
    elif kind == "retag-gateway":
        subprocess.run(["ovs-vsctl", "set", "port", seg.gateway_port, "tag=4000"], check=True)
    elif kind == "del-base-flows":
        subprocess.run(["ovs-ofctl", "del-flows", bridge, f"cookie={BASE_COOKIE:#x}/-1"],
                       check=True)
    else:
        raise ValueError(kind)


def converge(bench: Bench, seg: Segment, healthy: dict[str, Any], started: float) -> float:
    """Seconds from ``started`` until the segment is as it was and leases again."""
    deadline = started + CONVERGE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            same = seg.state(bench.config.bridge) == healthy
        except Exception:  # noqa: BLE001 - the host is mid-repair (a port half made)
            same = False
        if same and bench.lease(seg.workload, seg.lease):
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"{seg.namespace}: not converged after {CONVERGE_TIMEOUT:.0f} s: "
                       f"{seg.state(bench.config.bridge)} != {healthy}")


def host_inventory(bench: Bench) -> dict[str, Any]:
    """What the lab's networks have on the host: for the orphan count."""
    c = bench.config
    dnsmasqs = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"dnsmasq") and str(c.network_dir).encode() in cmdline:
                dnsmasqs.append(proc.name)
    return {
        "ports": sorted(p.name for p in ovs.list_ports(c.bridge)),
        "flows": len(ovs.dump_flows(c.bridge)),
        "nft_tables": sorted(n for _, n in ovs.nft_tables() if n.startswith(c.tag + "_")),
        "dnsmasq_processes": len(dnsmasqs),
    }


def parse_args(doc: str, unit: str, argv: list[str] | None) -> argparse.Namespace:
    """``--changes N``, ``--<unit> N`` (what gets the changes, 3 by default), ``--out``;
    shared with ``benchmarks/vm_faults.py``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument(f"--{unit}", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.changes < 1 or getattr(args, unit) < 1:
        parser.error(f"--changes and --{unit} must be at least 1")
    return args


def summary(results: list[dict[str, Any]], kinds: tuple[str, ...]) -> dict[str, Any]:
    """Convergence times overall (p50, p99, max) and by kind of change."""
    seconds = [r["seconds"] for r in results]
    return {
        "converged_seconds": {"p50": round(statistics.median(seconds), 1),
                              "p99": round(percentile(seconds, 0.99), 1),
                              "max": round(max(seconds), 1)},
        "by_kind": {k: {"count": len(v), "p50": round(statistics.median(v), 1),
                        "max": round(max(v), 1)}
                    for k in kinds if (v := [r["seconds"] for r in results if r["kind"] == k])},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, "namespaces", argv)
    tag = "f" + "".join(random.choice(string.ascii_lowercase) for _ in range(2))
    base = Path(tempfile.mkdtemp(prefix=f"pacific-faults-{tag}-", dir="/var/tmp"))
    base.chmod(0o711)
    script = base / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    bench = Bench(base, tag)
    bridge = bench.config.bridge
    results: list[dict[str, Any]] = []
    started_run = time.monotonic()
    try:
        bench.start()
        segments = []
        for i in range(args.namespaces):
            ns = f"fault-{tag}-{i}"
            bench.provision(ns)
            host, _ip, _t = bench.attach(ns, f"w{i}")
            status = bench.get(NETWORKS, ns, "default")["status"]  # type: ignore[index]
            segments.append(Segment(ns, status["vlan"], status["gatewayPort"],
                                    bench.config.nft_table(status["vlan"]),
                                    bench.config.namespace_dir(status["vlan"]), host,
                                    base / f"w{i}.lease"))
        healthy = {s.namespace: s.state(bridge) for s in segments}
        assert all(h["base_flows"] == len(flowlib.base_flows()) for h in healthy.values())
        before = host_inventory(bench)
        kinds = iter(KINDS * (args.changes // len(KINDS) + 2))
        done = 0
        while done < args.changes:
            batch = segments[:min(len(segments), args.changes - done)]
            planned = []
            for seg in batch:
                kind = next(kinds)
                if kind == "del-base-flows" and any(k == kind for k, _ in planned):
                    kind = next(kinds)
                planned.append((kind, seg))
            started = time.monotonic()
            for kind, seg in planned:
                change(kind, seg, bridge)
            with ThreadPoolExecutor(len(planned)) as pool:
                waits: list[tuple[str, Segment, Callable[[], float]]] = [
                    (kind, seg, pool.submit(converge, bench, seg, healthy[seg.namespace],
                                            started).result)
                    for kind, seg in planned]
                for kind, seg, result in waits:
                    seconds = result()
                    results.append({"kind": kind, "namespace": seg.namespace,
                                    "seconds": round(seconds, 2)})
                    print(f"{len(results):4d} {kind:17s} {seg.namespace}: {seconds:5.1f} s",
                          file=sys.stderr, flush=True)
            done += len(planned)
        after = host_inventory(bench)
    finally:
        try:
            bench.close()
        finally:
            shutil.rmtree(base, ignore_errors=True)
    orphans = {k: (after[k], before[k]) for k in before if after[k] != before[k]}
    report = {
        "command": "python benchmarks/faults.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv),
        "datapath": bench.stack.networks.datapath, "changes": len(results),
        **summary(results, KINDS), "orphans": orphans, "inventory_before": before,
        "total_seconds": round(time.monotonic() - started_run, 1), "results": results,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if not orphans else 1


if __name__ == "__main__":
    sys.exit(main())
