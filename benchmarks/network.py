"""Namespace-network benchmark: provisioning time, and TCP throughput against a plain bridge.

    python benchmarks/network.py [--namespaces 3] [--seconds 5] [--out FILE.json]

In one run, on this host (OVS datapath detected as the lab does it):

1. **Provisioning**: the network controllers run in-process over a throwaway
   store (as in ``tests/e2e/test_network.py``); for each of ``--namespaces``
   namespaces, the time from creating the Namespace to its VirtualNetwork
   being Ready (VLAN and subnet allocated, ``network-namespace.yml`` run:
   gateway port, flows, dnsmasq, nftables), with the playbook's own share.
   Then the time from creating a VirtualNetworkInterface to the workload
   holding its DHCP lease (address allocated, port plugged, flows installed,
   lease from dnsmasq).
2. **Throughput**: TCP between two workloads of one namespace (network
   namespaces on veth ports of the integration bridge, through the OpenFlow
   pipeline with conntrack), against the baseline of two network namespaces
   on a plain Linux bridge -- with the NICs' default offloads, and with
   transmit checksum offload off as the userspace datapath needs -- and of
   two on an OVS bridge of the same datapath with a single NORMAL flow (the
   datapath's own cost, without the lab's pipeline). iperf3
   (Debian's) when installed, else a Python socket sender.

Everything uses a random tag and addresses in 198.18.0.0/15; nothing leaves
the host. Needs root, Open vSwitch running, ansible in the virtual
environment.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import errors  # noqa: E402
from appliance.controllers.namespace import NamespaceController  # noqa: E402
from appliance.kinds import default_registry  # noqa: E402
from appliance.kinds import network as netkinds  # noqa: E402
from appliance.network.config import NetworkConfig  # noqa: E402
from appliance.network.controllers import NetworkStack  # noqa: E402
from appliance.network.world import INTERFACES, NETWORKS  # noqa: E402
from appliance.objects import ObjectService  # noqa: E402
from appliance.resources import LocalApi, Ref  # noqa: E402
from appliance.settings import load_settings  # noqa: E402
from appliance.store.db import make_engine, migrate  # noqa: E402
from appliance.store.repo import Store  # noqa: E402
from hypervisor import ovs  # noqa: E402
from hypervisor.proc import run  # noqa: E402

NAMESPACES = Ref("", "v1", "namespaces")
T = TypeVar("T")

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$subnet" dev "$interface"
               ip route replace default via "$router"; touch "$LEASE_FILE" ;;
esac
exit 0
"""

SINK = r'''
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); total = 0; start = None
while True:
    data = c.recv(1 << 20)
    if not data:
        break
    start = start or time.monotonic(); total += len(data)
print(f"{total} {time.monotonic() - start}", flush=True)
'''

SOURCE = r'''
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
buf = b"x" * (1 << 16); end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(buf)
c.close()
'''


def wait(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c.get("type") == type_), None)


class Bench:
    def __init__(self, base: Path, tag: str) -> None:
        self.base = base
        self.tag = tag
        self.settings = load_settings(environ={}, state_dir=base / "state")
        self.config = NetworkConfig.from_settings(
            self.settings, pool_cidr="198.18.32.0/24", subnet_prefix=28,
            ingress_cidr="198.18.64.0/26", cluster_ip_cidr="198.18.64.64/26",
            bridge=f"{tag}-int", tag=tag, uplink="")
        engine = make_engine(f"sqlite:///{base / 'state' / 'db.sqlite'}")
        migrate(engine)
        registry = default_registry()
        for kind in netkinds.KINDS:
            if registry.by_group_plural(kind.group, kind.plural) is None:
                registry.register(kind)
        self.service = ObjectService(Store(engine), registry)
        self.api = LocalApi(self.service)
        self.stack = NetworkStack(self.api, self.settings, self.config)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.netns: list[ovs.NetnsHost] = []
        self.playbook_seconds: list[tuple[str, float]] = []
        original = self.stack.networks.run_playbook

        def timed(name: str, extravars: dict[str, Any], involved: Any) -> Any:
            started = time.monotonic()
            try:
                return original(name, extravars, involved)
            finally:
                self.playbook_seconds.append((name, time.monotonic() - started))
        self.stack.networks.run_playbook = timed  # type: ignore[method-assign]

    def get(self, ref: Ref, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get(ref, ns, name)
        except errors.ApiError as err:
            if err.code == 404:
                return None
            raise

    def start(self) -> float:
        started = time.monotonic()
        self.stack.networks.ensure_host()
        host_seconds = time.monotonic() - started
        self.threads = self.stack.run(self.stop)
        self.threads.append(threading.Thread(target=NamespaceController(self.service).run,
                                             args=(self.stop,), daemon=True))
        self.threads[-1].start()
        return host_seconds

    def provision(self, name: str) -> dict[str, float]:
        before = len(self.playbook_seconds)
        started = time.monotonic()
        self.api.create(NAMESPACES, "", {"apiVersion": "v1", "kind": "Namespace",
                                         "metadata": {"name": name}})

        def ready() -> bool:
            cond = condition(self.get(NETWORKS, name, "default"), "Ready")
            return bool(cond and cond["status"] == "True")
        wait(f"{name} Ready", ready, 300)
        total = time.monotonic() - started
        runs = [s for n, s in self.playbook_seconds[before:] if n == "network-namespace.yml"]
        return {"seconds": total, "playbook_seconds": sum(runs), "playbook_runs": len(runs)}

    def attach(self, ns: str, name: str) -> tuple[ovs.NetnsHost, str, float]:
        started = time.monotonic()
        self.api.create(INTERFACES, ns, {"apiVersion": "vmware.com/v1alpha1",
                                         "kind": "VirtualNetworkInterface",
                                         "metadata": {"name": name}, "spec": {}})

        def assigned() -> dict[str, Any] | None:
            st = (self.get(INTERFACES, ns, name) or {}).get("status") or {}
            return st if st.get("ipAddresses") and st.get("portName") else None
        st = wait(f"address of {name}", assigned, 60)
        host = ovs.NetnsHost(f"{self.tag}-{name}", st["portName"], self.config.bridge,
                             st["macAddress"], st["vlan"])
        self.netns.append(host)
        host.create()
        lease = self.base / f"{name}.lease"
        wait(f"DHCP lease of {name}", lambda: self.lease(host, lease), 120, 0.0)
        return host, st["ipAddresses"][0]["ip"], time.monotonic() - started

    def lease(self, host: ovs.NetnsHost, lease: Path) -> bool:
        """One DHCP try of ``host`` (busybox udhcpc); whether it got a lease."""
        lease.unlink(missing_ok=True)
        host.exec(["env", f"LEASE_FILE={lease}", "busybox", "udhcpc", "-i", "eth0", "-n",
                   "-q", "-t", "2", "-T", "1", "-A", "1", "-s", str(self.base / "udhcpc.sh")],
                  check=False, timeout=30)
        return lease.exists()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:  # a playbook run in progress finishes first
            thread.join(300)
        try:
            self.stack.networks.remove_host()
        finally:
            for host in self.netns:
                host.destroy()


# -- throughput ---------------------------------------------------------------------------


def throughput(server: ovs.NetnsHost, client: ovs.NetnsHost, address: str, seconds: float,
               base: Path) -> dict[str, Any]:
    """Gbit/s from ``client`` to ``server`` (iperf3 if installed, else Python sockets)."""
    if shutil.which("iperf3"):
        srv = server.popen(["iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                done = client.exec(["iperf3", "-c", address, "-p", "5201", "-t", str(seconds),
                                    "--connect-timeout", "2000", "-J"], check=False,
                                   timeout=seconds + 30)
                try:
                    report = json.loads(done.stdout)
                except ValueError:
                    report = {"error": done.stderr or "no output"}
                if "error" not in report and "sum_received" in report.get("end", {}):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"iperf3 to {address} failed: {report.get('error')}")
                time.sleep(0.5)
            end = report["end"]
            return {"tool": "iperf3", "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
                    "retransmits": end["sum_sent"].get("retransmits")}
        finally:
            srv.terminate()
            srv.wait(10)
    (base / "sink.py").write_text(SINK)
    (base / "source.py").write_text(SOURCE)
    sink = server.popen([sys.executable, str(base / "sink.py"), "5201"], stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == b"ready"
        client.exec([sys.executable, str(base / "source.py"), address, "5201", str(seconds)],
                    timeout=seconds + 30)
        total, elapsed = sink.stdout.readline().split()
        return {"tool": "python sockets", "gbit_s": int(total) * 8 / float(elapsed) / 1e9}
    finally:
        sink.wait(10)
        if sink.stdout is not None:
            sink.stdout.close()


def linux_bridge_baseline(tag: str, seconds: float, base: Path, offload_off: bool
                          ) -> dict[str, Any]:
    bridge = f"{tag}-lbr"
    hosts = [ovs.NetnsHost(f"{tag}-lb{i}", f"{tag}lb{i}", bridge, f"02:00:00:00:0{i}:01",
                           csum_offload_off=offload_off) for i in (1, 2)]
    try:
        run(["ip", "link", "add", bridge, "type", "bridge"])
        run(["ip", "link", "set", bridge, "up"])
        for i, host in enumerate(hosts, 1):
            host.destroy()
            run(["ip", "netns", "add", host.name])
            run(["ip", "link", "add", host.port, "type", "veth", "peer", "name", "eth0",
                 "netns", host.name])
            run(["ip", "link", "set", host.port, "master", bridge, "up"])
            host.exec(["ip", "link", "set", "eth0", "up"])
            if offload_off:
                host.exec(["ethtool", "-K", "eth0", "tx", "off"])
            host.exec(["ip", "addr", "add", f"198.18.80.{i}/24", "dev", "eth0"])
        return throughput(hosts[1], hosts[0], "198.18.80.2", seconds, base)
    finally:
        for host in hosts:
            run(["ip", "link", "del", host.port], check=False)
            run(["ip", "netns", "del", host.name], check=False)
        run(["ip", "link", "del", bridge], check=False)


def ovs_normal_baseline(tag: str, datapath: str, seconds: float, base: Path) -> dict[str, Any]:
    """The same datapath without the lab's pipeline: one NORMAL flow, no conntrack."""
    bridge = f"{tag}-nbr"
    hosts = [ovs.NetnsHost(f"{tag}-nb{i}", f"{tag}nb{i}", bridge, f"02:00:00:00:1{i}:01",
                           tag=100) for i in (1, 2)]
    try:
        run(["ovs-vsctl", "--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
             f"datapath_type={datapath}", "fail_mode=secure"])
        run(["ovs-ofctl", "add-flow", bridge, "priority=0,actions=NORMAL"])
        for i, host in enumerate(hosts, 1):
            host.create()
            host.set_address(f"198.18.81.{i}/24")
        return throughput(hosts[1], hosts[0], "198.18.81.2", seconds, base)
    finally:
        for host in hosts:
            host.destroy()
        run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    tag = "b" + "".join(random.choice(string.ascii_lowercase) for _ in range(2))
    base = Path(tempfile.mkdtemp(prefix=f"pacific-netbench-{tag}-", dir="/var/tmp"))
    base.chmod(0o711)
    (base / "udhcpc.sh").write_text(UDHCPC_SCRIPT)
    (base / "udhcpc.sh").chmod(0o755)
    bench = Bench(base, tag)
    result: dict[str, Any] = {"datapath": bench.stack.networks.datapath,
                              "cpus": len(__import__("os").sched_getaffinity(0))}
    try:
        result["host_setup_seconds"] = bench.start()
        runs = [bench.provision(f"bench-{tag}-{i}") for i in range(args.namespaces)]
        result["provision"] = runs
        result["provision_median_seconds"] = statistics.median(r["seconds"] for r in runs)
        ns = f"bench-{tag}-0"
        h1, _, t1 = bench.attach(ns, "w1")
        h2, ip2, t2 = bench.attach(ns, "w2")
        result["attach_to_lease_seconds"] = [t1, t2]
        result["ovs_segment"] = throughput(h2, h1, ip2, args.seconds, base)
    finally:
        try:
            bench.close()
        finally:
            shutil.rmtree(base / "state", ignore_errors=True)
    result["ovs_normal_only"] = ovs_normal_baseline(tag, result["datapath"], args.seconds, base)
    result["linux_bridge"] = linux_bridge_baseline(tag, args.seconds, base, offload_off=False)
    result["linux_bridge_tx_csum_off"] = linux_bridge_baseline(tag, args.seconds, base,
                                                               offload_off=True)
    shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
