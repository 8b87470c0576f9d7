"""Namespace networks for real: Open vSwitch, dnsmasq, nftables and HAProxy on this host.

The network controllers run in-process over a throwaway store; workloads are
network namespaces plugged into the segments as OVS ports (veth pairs), which
get their addresses by DHCP from the namespace's dnsmasq (busybox udhcpc).
Two namespaces with two workloads each. Everything the test makes carries a
random tag and uses addresses from 198.18.0.0/15 that the lab's defaults do
not use; traffic stays on this host (the "uplink" for SNAT is a veth into a
network namespace the test makes).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance import errors
from appliance.controllers.base import TemporaryError
from appliance.controllers.namespace import NamespaceController
from appliance.kinds import default_registry
from appliance.kinds import network as netkinds
from appliance.network import hostconfig
from appliance.network.allocator import ADDRESSES, SUBNETS, VLANS
from appliance.network.config import NetworkConfig
from appliance.network.controllers import NetworkStack, VirtualNetworkController
from appliance.network.world import INTERFACES, NETWORKS, POLICIES, SERVICES, VMSERVICES
from appliance.objects import ObjectService, Target
from appliance.resources import LocalApi, Ref
from appliance.settings import Settings, load_settings
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store
from hypervisor import ovs
from hypervisor.proc import run
from tests.support.server import address_offset
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

NAMESPACES = Ref("", "v1", "namespaces")
EVENTS = Ref("", "v1", "events")

SERVER = r'''
import socket, socketserver, sys, threading
name, echo_peer, ports = sys.argv[1], sys.argv[2] == "peer", [int(p) for p in sys.argv[3:]]
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(((self.client_address[0] if echo_peer else name) + "\n").encode())
class S(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
servers = [S(("0.0.0.0", p), H) for p in ports]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
'''

PROBE = r'''
import socket, sys
http = len(sys.argv) > 4 and sys.argv[4] == "http"
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as c:
        c.settimeout(float(sys.argv[3]))
        if http:
            c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = c.recv(100)
            if not chunk:
                break
            data += chunk
    text = data.decode(errors="replace").strip()
    print(text.splitlines()[-1] if http and text else text)
except OSError as exc:
    print("FAIL", exc)
    sys.exit(1)
'''

UDHCPC_SCRIPT = r'''#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface" ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$subnet" dev "$interface"
    ip route replace default via "$router"
    printf '{"ip": "%s", "subnet": "%s", "router": "%s", "dns": "%s", "domain": "%s"}\n' \
      "$ip" "$subnet" "$router" "$dns" "$domain" > "$LEASE_FILE"
    ;;
esac
exit 0
'''


# -- the lab -------------------------------------------------------------------------------


@dataclass
class Host:
    namespace: str
    name: str
    netns: ovs.NetnsHost
    ip: str
    gateway: str
    lease: dict[str, str]
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)


@dataclass
class Lab:
    tag: str
    octet: int
    base: Path
    settings: Settings
    config: NetworkConfig
    service: ObjectService
    api: LocalApi
    stack: NetworkStack
    stop: threading.Event
    scripts: Path
    threads: list[threading.Thread] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)
    extra_netns: list[ovs.NetnsHost] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)

    # names
    def ns(self, short: str) -> str:
        return f"net-{short}-{self.tag}"

    @property
    def uplink(self) -> str:
        return f"{self.tag}up0"

    @property
    def uplink_host_ip(self) -> str:
        return f"198.18.{96 + self.octet}.1"

    @property
    def remote_ip(self) -> str:
        return f"198.18.{112 + self.octet}.1"

    # store
    def target(self, ref: Ref, ns: str = "", name: str = "") -> Target:
        kind = self.service.registry.by_plural(ref.group, ref.version, ref.plural)
        assert kind is not None
        return Target(kind, ref.version, ns, name)

    def create(self, ref: Ref, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.create(ref, ns, body)

    def get(self, ref: Ref, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get(ref, ns, name)
        except errors.ApiError as err:
            if err.code == 404:
                return None
            raise

    def network(self, ns: str) -> dict[str, Any]:
        net = self.get(NETWORKS, ns, "default")
        assert net is not None
        return net

    def ready_network(self, ns: str, timeout: float = 120) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            net = self.get(NETWORKS, ns, "default")
            cond = _condition(net, "Ready")
            return net if cond and cond["status"] == "True" else None
        return wait_for(f"VirtualNetwork {ns}/default Ready", probe, timeout, 0.5,
                        describe=lambda: json.dumps((self.get(NETWORKS, ns, "default") or {})
                                                    .get("status"), indent=1))

    # workloads
    def add_host(self, short_ns: str, name: str, labels: dict[str, str]) -> Host:
        ns = self.ns(short_ns)
        self.create(INTERFACES, ns, {
            "apiVersion": "vmware.com/v1alpha1", "kind": "VirtualNetworkInterface",
            "metadata": {"name": name, "labels": labels}, "spec": {}})

        def assigned() -> dict[str, Any] | None:
            itf = self.get(INTERFACES, ns, name)
            status = (itf or {}).get("status") or {}
            return itf if status.get("ipAddresses") and status.get("portName") else None
        itf = wait_for(f"an address for {ns}/{name}", assigned, 60, 0.3)
        status = itf["status"]
        netns = ovs.NetnsHost(f"{self.tag}-{short_ns}-{name}", status["portName"],
                              self.config.bridge, status["macAddress"], status["vlan"])
        self.extra_netns.append(netns)
        netns.create()
        lease_file = self.base / f"{ns}-{name}.lease"

        def dhcp() -> dict[str, str] | None:
            netns.exec(["env", f"LEASE_FILE={lease_file}", "busybox", "udhcpc", "-i", "eth0",
                        "-n", "-q", "-t", "3", "-T", "1", "-A", "1",
                        "-s", str(self.scripts / "udhcpc.sh")], check=False, timeout=30)
            return json.loads(lease_file.read_text()) if lease_file.exists() else None
        lease = wait_for(f"a DHCP lease for {ns}/{name}", dhcp, 90, 0.2)
        host = Host(ns, name, netns, status["ipAddresses"][0]["ip"],
                    status["ipAddresses"][0]["gateway"], lease)
        self.hosts[f"{short_ns}/{name}"] = host
        return host

    def serve(self, host: Host, *ports: int, echo_peer: bool = False) -> subprocess.Popen[bytes]:
        proc = host.netns.popen([sys.executable, str(self.scripts / "server.py"), host.name,
                                 "peer" if echo_peer else "name", *map(str, ports)],
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        host.servers.append(proc)
        self.processes.append(proc)
        return proc

    def probe(self, netns: ovs.NetnsHost | None, ip: str, port: int, timeout: float = 1.5,
              http: bool = False) -> str | None:
        cmd = [sys.executable, str(self.scripts / "probe.py"), ip, str(port), str(timeout),
               *(["http"] if http else [])]
        done = (netns.exec(cmd, check=False, timeout=timeout + 10) if netns is not None
                else run(cmd, check=False, timeout=timeout + 10))
        return done.stdout.strip() if done.rc == 0 else None

    def reaches(self, src: str, dst: str, port: int, timeout: float = 1.5) -> bool:
        answer = self.probe(self.hosts[src].netns, self.hosts[dst].ip, port, timeout)
        return answer == self.hosts[dst].name


def _condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c.get("type") == type_), None)


def _registry():  # type: ignore[no-untyped-def]
    registry = default_registry()
    for kind in netkinds.KINDS:
        if registry.by_group_plural(kind.group, kind.plural) is None:
            registry.register(kind)
    return registry


def _make_uplink(lab: Lab) -> None:
    """A veth into a network namespace that stands in for the host's uplink."""
    peer = ovs.NetnsHost(f"{lab.tag}-uplink", lab.uplink, lab.config.bridge, "02:00:00:00:00:01",
                         csum_offload_off=False)
    lab.extra_netns.append(peer)
    peer.destroy()
    run(["ip", "netns", "add", peer.name])
    run(["ip", "link", "add", lab.uplink, "type", "veth", "peer", "name", "eth0", "netns",
         peer.name])
    run(["ip", "addr", "add", f"{lab.uplink_host_ip}/30", "dev", lab.uplink])
    run(["ip", "link", "set", lab.uplink, "up"])
    peer.exec(["ip", "link", "set", "lo", "up"])
    peer.exec(["ip", "link", "set", "eth0", "up"])
    peer.exec(["ip", "addr", "add", f"198.18.{96 + lab.octet}.2/30", "dev", "eth0"])
    peer.exec(["ip", "addr", "add", f"{lab.remote_ip}/32", "dev", "lo"])
    # routed (no-SNAT) namespaces' addresses come back through the host
    peer.exec(["ip", "route", "add", lab.config.pool_cidr, "via", lab.uplink_host_ip])
    run(["ip", "route", "replace", f"{lab.remote_ip}/32", "via", f"198.18.{96 + lab.octet}.2"])
    proc = peer.popen([sys.executable, str(lab.scripts / "server.py"), "remote", "peer", "9000"],
                      stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    lab.processes.append(proc)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    tag = "x" + "".join(random.choice(string.ascii_lowercase) for _ in range(2))
    octet = address_offset()
    base = Path(tempfile.mkdtemp(prefix=f"pacific-net-{tag}-", dir="/var/tmp"))
    base.chmod(0o711)  # dnsmasq drops to nobody and re-reads its hosts files
    scripts = base / "scripts"
    scripts.mkdir()
    (scripts / "server.py").write_text(SERVER)
    (scripts / "probe.py").write_text(PROBE)
    (scripts / "udhcpc.sh").write_text(UDHCPC_SCRIPT)
    (scripts / "udhcpc.sh").chmod(0o755)
    settings = load_settings(environ={}, state_dir=base / "state")
    config = NetworkConfig.from_settings(
        settings, pool_cidr=f"198.18.{16 + octet}.0/24", subnet_prefix=28,
        ingress_cidr=f"198.18.{48 + octet}.0/26", cluster_ip_cidr=f"198.18.{48 + octet}.64/26",
        bridge=f"{tag}-int", tag=tag, uplink=f"{tag}up0")
    engine = make_engine(f"sqlite:///{base / 'state' / 'db.sqlite'}")
    migrate(engine)
    service = ObjectService(Store(engine), _registry())
    api = LocalApi(service)
    stack = NetworkStack(api, settings, config, install_packages=True)
    stop = threading.Event()
    lab = Lab(tag, octet, base, settings, config, service, api, stack, stop, scripts)
    try:
        _make_uplink(lab)
        stack.networks.ensure_host()  # installs ethtool etc. before test hosts need them
        lab.threads += stack.run(stop)
        namespaces = NamespaceController(service)
        lab.threads.append(threading.Thread(target=namespaces.run, args=(stop,), daemon=True))
        lab.threads[-1].start()
        yield lab
    finally:
        stop.set()
        for thread in lab.threads:  # a playbook run in progress finishes first
            thread.join(300)
        for proc in lab.processes:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        if lab.domains:
            from hypervisor.libvirt_driver import LibvirtDriver

            driver = LibvirtDriver()
            try:
                for name in lab.domains:
                    driver.ensure_absent(name)
            finally:
                driver.close()
        try:
            stack.networks.remove_host()
        finally:
            for netns in lab.extra_netns:
                netns.destroy()
            run(["ip", "route", "del", f"{lab.remote_ip}/32"], check=False)
            run(["ip", "link", "del", lab.uplink], check=False)
            shutil.rmtree(base, ignore_errors=True)


# -- the tests (in order: they build on each other) ----------------------------------------


def test_playbooks_are_idempotent(lab: Lab) -> None:
    host_vars = hostconfig.host_vars(lab.config, lab.stack.networks.datapath)
    first = lab.stack.networks.run_playbook(hostconfig.HOST_PLAYBOOK, host_vars, None)
    second = lab.stack.networks.run_playbook(hostconfig.HOST_PLAYBOOK, host_vars, None)
    assert first.succeeded and second.succeeded
    assert second.changed == 0, second
    assert ovs.bridge_datapath(lab.config.bridge) == lab.stack.networks.datapath
    # nothing addressed to the lab's ranges can follow the default route off the host
    for cidr in (lab.config.pool_cidr, lab.config.ingress_cidr, lab.config.cluster_ip_cidr):
        probe = str(next(ipaddress.ip_network(cidr).hosts()))
        done = run(["ip", "route", "get", probe], check=False)
        assert done.rc != 0 and "No route to host" in done.stderr, done
    expected = "system" if Path("/sys/module/openvswitch").is_dir() else None
    if expected:
        assert lab.stack.networks.datapath == expected


def test_namespaces_get_segments(lab: Lab) -> None:
    for short, team in (("a", "alpha"), ("b", "beta")):
        lab.create(NAMESPACES, "", {"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": lab.ns(short),
                                                 "labels": {"team": team}}})
    a, b = lab.ready_network(lab.ns("a")), lab.ready_network(lab.ns("b"))
    assert a["status"]["vlan"] != b["status"]["vlan"]
    pool = lab.config.layout.pool
    for net in (a, b):
        subnet = net["status"]["subnets"][0]
        assert subnet["cidr"].endswith("/28")
        assert ipaddress.ip_network(subnet["cidr"]).subnet_of(pool)
        port = next(p for p in ovs.list_ports(lab.config.bridge)
                    if p.name == net["status"]["gatewayPort"])
        assert port.tag == net["status"]["vlan"] and port.type == "internal"
        assert f"{subnet['gateway']}/28" in ovs.link_addresses(port.name)
    assert ovs.bridge_datapath(lab.config.bridge) in ("system", "netdev")
    events, _ = lab.api.list(EVENTS, lab.ns("a"))
    assert any(e["reason"] == "NetworkConfigured" and "Create the gateway port" in e["message"]
               for e in events)


def test_dhcp_gives_each_workload_its_address(lab: Lab) -> None:
    for short in ("a", "b"):
        lab.add_host(short, "web", {"app": "web", "lb": "yes"})
        lab.add_host(short, "db", {"app": "db", "lb": "yes"})
    for host in lab.hosts.values():
        net = lab.network(host.namespace)
        assert host.lease["ip"] == host.ip
        assert host.lease["router"] == host.gateway == net["status"]["gateway"]
        assert host.lease["dns"] == host.gateway
        assert host.lease["domain"] == f"{host.namespace}.{lab.config.dns_domain}"
        assert host.netns.addresses() == [f"{host.ip}/28"]


def test_dns_names_inside_a_namespace(lab: Lab) -> None:
    web, db = lab.hosts["a/web"], lab.hosts["a/db"]
    for name in ("db", f"db.{db.namespace}.{lab.config.dns_domain}"):
        out = web.netns.exec(["busybox", "nslookup", name, web.gateway], check=False).stdout
        assert db.ip in out, out
    # another namespace's names are not in this namespace's DNS ...
    out = web.netns.exec(["busybox", "nslookup", f"web.{lab.ns('b')}.{lab.config.dns_domain}",
                          web.gateway], check=False)
    assert lab.hosts["b/web"].ip not in out.stdout
    # ... and its DNS server is not reachable from here
    other = lab.hosts["b/web"].gateway
    out = web.netns.exec(["busybox", "timeout", "5", "busybox", "nslookup", "web", other],
                         check=False)
    assert lab.hosts["b/web"].ip not in out.stdout


def test_tcp_inside_a_namespace_works_and_across_is_dropped(lab: Lab) -> None:
    for host in lab.hosts.values():
        lab.serve(host, 8080, 8081)
    wait_for("a/web -> a/db", lambda: lab.reaches("a/web", "a/db", 8080), 30, 0.5)
    wait_for("b/db -> b/web", lambda: lab.reaches("b/db", "b/web", 8081), 30, 0.5)
    assert lab.reaches("a/db", "a/web", 8081)
    for src, dst in (("a/web", "b/web"), ("a/db", "b/db"), ("b/web", "a/web"),
                     ("b/db", "a/db")):
        assert not lab.reaches(src, dst, 8080), f"{src} reached {dst}"
    # the host itself (load balancers, health checks) reaches every workload
    assert lab.probe(None, lab.hosts["b/web"].ip, 8080) == "web"


VM_INIT = """\
ip link set lo up
ip link set eth0 up
i=0
until udhcpc -i eth0 -q -n -t 5 -T 1 -s /bin/dhcp.sh; do
  i=$((i+1)); [ $i -ge 30 ] && break
done
httpd -p 8080 -h /www
echo "VM-READY"
sleep 900
poweroff -f
"""
VM_DHCP = b"""#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$subnet" dev "$interface"
    ip route add default via "$router"
    echo "VM-LEASE ip=$ip router=$router domain=$domain"
    ;;
esac
exit 0
"""


def test_a_vm_on_the_segment(lab: Lab) -> None:
    """A real guest (busybox micro-VM, direct kernel boot) on namespace A's VLAN: it gets
    its address from dnsmasq, answers inside the namespace, not across, and behind a VIP."""
    from hypervisor.domain import QBOOT_ROM, DomainSpec, KernelBoot, NicSpec
    from hypervisor.hostfacts import detect_accelerator
    from hypervisor.libvirt_driver import LibvirtDriver
    from tests.support.busybox import VIRTIO_NET_MODULES, build_initramfs, find_kernel

    ns = lab.ns("a")
    lab.create(INTERFACES, ns, {
        "apiVersion": "vmware.com/v1alpha1", "kind": "VirtualNetworkInterface",
        "metadata": {"name": "vm1", "labels": {"app": "vm"}}, "spec": {}})
    itf = wait_for("the VM's address", lambda: (lambda i: i if ((i or {}).get("status") or {})
                                                 .get("ipAddresses") else None)(
        lab.get(INTERFACES, ns, "vm1")), 60, 0.3)
    status = itf["status"]
    vmlinuz, release = find_kernel()
    boot = lab.base / "boot"
    boot.mkdir(mode=0o755, exist_ok=True)
    kernel = boot / vmlinuz.name
    shutil.copyfile(vmlinuz, kernel)
    kernel.chmod(0o644)
    initrd = build_initramfs(boot / "initrd.gz", VM_INIT, VIRTIO_NET_MODULES,
                             kernel_release=release,
                             extra_files={"/bin/dhcp.sh": VM_DHCP, "/www/index.html": b"vm1\n"})
    console = lab.base / "vm1.console"
    name = f"pytest-net-{lab.tag}-vm1"
    accel = detect_accelerator()[0]
    spec = DomainSpec(
        name=name, uuid=itf["metadata"]["uid"], vcpus=1, memory_mib=192,
        accelerator="kvm" if accel == "kvm" else "tcg", loader_rom=QBOOT_ROM,
        kernel=KernelBoot(kernel, initrd, "console=ttyS0 panic=-1"),
        nics=(NicSpec(status["macAddress"], "ovs", status["bridge"],
                      port_name=status["portName"], vlan=status["vlan"],
                      csum_offload_off=lab.stack.networks.datapath == "netdev"),),
        serial_log=console)
    driver = LibvirtDriver()
    try:
        lab.domains.append(name)
        driver.ensure_defined(spec)
        driver.ensure_power(name, "running")
    finally:
        driver.close()
    text = wait_for("the VM's DHCP lease and httpd", lambda: (
        console.read_text(errors="replace") if console.exists() and
        "VM-READY" in console.read_text(errors="replace") else None), 180, 1.0)
    ip = status["ipAddresses"][0]["ip"]
    assert f"VM-LEASE ip={ip} router={status['ipAddresses'][0]['gateway']} " \
           f"domain={ns}.{lab.config.dns_domain}" in text, text[-2000:]
    port = next(p for p in ovs.list_ports(lab.config.bridge) if p.name == status["portName"])
    assert port.tag == status["vlan"]
    answer = wait_for("a/web reaches the VM", lambda: lab.probe(
        lab.hosts["a/web"].netns, ip, 8080, 3, http=True), 60, 1.0)
    assert answer == "vm1"
    assert lab.probe(lab.hosts["b/web"].netns, ip, 8080, 2, http=True) is None
    lab.create(VMSERVICES, ns, {
        "apiVersion": "vmoperator.vmware.com/v1alpha5", "kind": "VirtualMachineService",
        "metadata": {"name": "vm"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "vm"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})

    def through_vip() -> str | None:
        svc = lab.get(VMSERVICES, ns, "vm") or {}
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        return lab.probe(None, ingress[0]["ip"], 80, 3, http=True) if ingress else None
    assert wait_for("the VM behind its VIP", through_vip, 60, 1.0) == "vm1"


def test_network_policy_opens_exactly_one_port(lab: Lab) -> None:
    ns_b = lab.ns("b")
    lab.create(POLICIES, ns_b, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web-from-alpha"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "alpha"}}}],
                              "ports": [{"protocol": "TCP", "port": 8080}]}]}})
    wait_for("a/web -> b/web:8080 allowed", lambda: lab.reaches("a/web", "b/web", 8080), 60, 0.5)
    assert lab.reaches("a/db", "b/web", 8080)
    assert not lab.reaches("a/web", "b/web", 8081)  # only that port
    assert not lab.reaches("a/web", "b/db", 8080)  # only the selected workload
    assert not lab.reaches("b/db", "b/web", 8080)  # b/web is isolated now: only alpha may in
    assert lab.reaches("b/web", "b/db", 8080)  # b/db is not selected: its namespace may in
    flows = ovs.dump_flows(lab.config.bridge, lab.network(ns_b)["status"]["vlan"])
    assert any("tp_dst=8080" in f and "priority=500" in f for f in flows)

    lab.api.delete(POLICIES, ns_b, "web-from-alpha")
    wait_for("b/db -> b/web allowed again", lambda: lab.reaches("b/db", "b/web", 8080), 60, 0.5)
    assert not lab.reaches("a/web", "b/web", 8080)


def test_snat_to_the_uplink_and_routed_mode(lab: Lab) -> None:
    web = lab.hosts["a/web"]
    seen = wait_for("a/web reaches the remote host",
                    lambda: lab.probe(web.netns, lab.remote_ip, 9000), 30, 0.5)
    assert seen == lab.uplink_host_ip  # masqueraded to the uplink's address
    table = ovs.nft_table_text("inet", lab.config.nft_table(lab.network(web.namespace)
                                                            ["status"]["vlan"]))
    assert table is not None and "masquerade" in table
    assert lab.network(web.namespace)["status"]["snat"] == {"enabled": True,
                                                            "uplink": lab.uplink}
    # NSX's NAT mode is switchable: routed, the remote side sees the workload's address
    ns_b = lab.ns("b")
    lab.api.patch(NETWORKS, ns_b, "default", {"spec": {"snat": False}})
    bweb = lab.hosts["b/web"]
    wait_for("b/web reaches the remote host with its own address",
             lambda: lab.probe(bweb.netns, lab.remote_ip, 9000) == bweb.ip, 60, 0.5)
    lab.api.patch(NETWORKS, ns_b, "default", {"spec": {"snat": True}})
    wait_for("b/web masqueraded again",
             lambda: lab.probe(bweb.netns, lab.remote_ip, 9000) == lab.uplink_host_ip, 60, 0.5)


def _haproxy_servers(lab: Lab, ns: str, listener: str) -> dict[str, str]:
    """``server name -> status`` of one listener, from the namespace's HAProxy stats socket."""
    sock = lab.config.namespace_dir(lab.network(ns)["status"]["vlan"]) / "haproxy.sock"
    import socket as socketlib

    with socketlib.socket(socketlib.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b"show stat\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode().splitlines()[1:]:
        fields = line.split(",")
        if len(fields) > 17 and fields[0] == listener and \
                fields[1] not in ("FRONTEND", "BACKEND"):
            out[fields[1]] = fields[17]
    return out


def test_load_balancer_spreads_and_drops_a_dead_backend(lab: Lab) -> None:
    ns_a = lab.ns("a")
    lab.create(VMSERVICES, ns_a, {
        "apiVersion": "vmoperator.vmware.com/v1alpha5", "kind": "VirtualMachineService",
        "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"lb": "yes"},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})

    def vip() -> str | None:
        svc = lab.get(VMSERVICES, ns_a, "web")
        ingress = (((svc or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress")
        return ingress[0]["ip"] if ingress else None
    address = wait_for("a VIP", vip, 30, 0.3)
    assert ipaddress.ip_address(address) in lab.config.layout.ingress
    answers: list[str] = []

    def spread() -> bool:
        answer = lab.probe(None, address, 80)
        if answer:
            answers.append(answer)
        return {"web", "db"} <= set(answers[-6:])
    wait_for("both backends answer on the VIP", spread, 60, 0.2)
    # from another namespace too, through its own gateway
    assert lab.probe(lab.hosts["b/web"].netns, address, 80) in ("web", "db")
    # the name of the service resolves to its VIP inside the namespace
    out = lab.hosts["a/web"].netns.exec(["busybox", "nslookup", "web", lab.hosts["a/web"].gateway],
                                        check=False).stdout
    assert address in out, out
    cond = _condition(lab.get(VMSERVICES, ns_a, "web"), "Ready")
    assert cond is not None and cond["status"] == "True", cond

    for proc in lab.hosts["a/db"].servers:  # the db backend stops
        proc.terminate()
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    listener = "virtualmachineservice-web-tcp-80"
    wait_for("the health check marks the stopped backend DOWN",
             lambda: _haproxy_servers(lab, ns_a, listener) == {"web": "UP", "db": "DOWN"}, 30,
             0.5, describe=lambda: str(_haproxy_servers(lab, ns_a, listener)))
    assert all(lab.probe(None, address, 80) == "web" for _ in range(10))


def test_a_service_that_selects_nothing_says_so(lab: Lab) -> None:
    ns_b = lab.ns("b")
    lab.create(SERVICES, ns_b, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "nothing"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "nothing"},
                 "ports": [{"port": 80}]}})

    def condition() -> dict[str, Any] | None:
        cond = _condition(lab.get(SERVICES, ns_b, "nothing"), "Ready")
        return cond if cond and cond["reason"] == "NoBackends" else None
    cond = wait_for("a NoBackends condition", condition, 30, 0.3)
    assert cond["status"] == "False"
    assert cond["message"] == f"the selector app=nothing selects no workloads in namespace {ns_b}"
    svc = lab.get(SERVICES, ns_b, "nothing")
    assert svc is not None and svc["status"]["loadBalancer"]["ingress"][0]["ip"]
    events, _ = lab.api.list(EVENTS, ns_b)
    assert any(e["reason"] == "NoBackends" and e["type"] == "Warning" for e in events)
    # a balanced service in this namespace too, for the deletion test to find
    lab.create(SERVICES, ns_b, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                 "ports": [{"port": 80, "targetPort": 8080}]}})
    wait_for("ns-b's HAProxy serves web", lambda: lab.probe(None, _vip(lab, ns_b, "web"), 80)
             == "web", 60, 0.5)


def _vip(lab: Lab, ns: str, name: str) -> str:
    svc = lab.get(SERVICES, ns, name) or {}
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [{}]
    return str(ingress[0].get("ip") or "0.0.0.0")


def test_bad_input_gets_clear_conditions(lab: Lab) -> None:
    taken = lab.network(lab.ns("a"))["status"]["subnets"][0]["cidr"]
    lab.create(NAMESPACES, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": lab.ns("c"), "annotations": {"pacific.lab/network-cidrs": taken}}})
    lab.create(NAMESPACES, "", {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": lab.ns("d"), "annotations": {"pacific.lab/subnet-prefix-length": "24"}}})

    def reason(ns: str, wanted: str) -> dict[str, Any] | None:
        cond = _condition(lab.get(NETWORKS, ns, "default"), "Ready")
        return cond if cond and cond["reason"] == wanted else None
    overlap = wait_for("CIDROverlap", lambda: reason(lab.ns("c"), "CIDROverlap"), 60, 0.5)
    assert overlap["status"] == "False"
    assert overlap["message"] == f"CIDR {taken} overlaps {taken} (namespace {lab.ns('a')})"
    exhausted = wait_for("PoolExhausted", lambda: reason(lab.ns("d"), "PoolExhausted"), 60, 0.5)
    assert exhausted["message"] == (f"the namespace pool {lab.config.pool_cidr} has no free /24 "
                                    "left")
    # a failing playbook task is named in the condition (an uplink nft refuses)
    broken = VirtualNetworkController(lab.api, lab.settings, NetworkConfig.from_settings(
        lab.settings, pool_cidr=lab.config.pool_cidr, ingress_cidr=lab.config.ingress_cidr,
        cluster_ip_cidr=lab.config.cluster_ip_cidr, bridge=lab.config.bridge, tag=lab.tag,
        uplink="x" * 40), datapath=lab.stack.networks.datapath, install_packages=False)
    broken.host_ready = True
    with pytest.raises(TemporaryError):
        broken.reconcile(lab.network(lab.ns("a")))
    cond = _condition(lab.network(lab.ns("a")), "Ready")
    assert cond is not None and cond["status"] == "False" and cond["reason"] == "PlaybookFailed"
    assert "task 'Apply the namespace's nftables table' failed" in cond["message"]
    lab.ready_network(lab.ns("a"), timeout=90)  # the real controller puts it right again
    for short in ("c", "d"):
        lab.api.delete(NAMESPACES, "", lab.ns(short))


def test_drift_is_repaired(lab: Lab) -> None:
    net = lab.network(lab.ns("a"))
    gw, vlan = net["status"]["gatewayPort"], net["status"]["vlan"]
    run(["ovs-vsctl", "del-port", lab.config.bridge, gw])
    run(["ovs-ofctl", "del-flows", lab.config.bridge, f"cookie={vlan:#x}/-1,table=20"])
    pid = ovs.pid_alive(lab.config.namespace_dir(vlan) / "dnsmasq.pid", "dnsmasq")
    assert pid is not None
    os.kill(pid, 15)  # dnsmasq of this namespace, which the lab started

    def repaired() -> bool:
        ports = {p.name: p for p in ovs.list_ports(lab.config.bridge)}
        return (gw in ports and ports[gw].tag == vlan
                and ovs.pid_alive(lab.config.namespace_dir(vlan) / "dnsmasq.pid", "dnsmasq")
                is not None and lab.reaches("a/db", "a/web", 8080)
                and any("table=20" in f for f in ovs.dump_flows(lab.config.bridge, vlan)))
    wait_for("the gateway port, flows and dnsmasq are back", repaired, 90, 1.0)
    events, _ = lab.api.list(EVENTS, lab.ns("a"))
    assert any(e["reason"] == "NetworkDrift" for e in events)


def test_deleting_a_namespace_leaves_nothing(lab: Lab) -> None:
    ns_b = lab.ns("b")
    net = lab.network(ns_b)
    vlan, gw = net["status"]["vlan"], net["status"]["gatewayPort"]
    ns_dir = lab.config.namespace_dir(vlan)
    vips = [_vip(lab, ns_b, "web"), _vip(lab, ns_b, "nothing")]
    haproxy = ovs.pid_alive(ns_dir / "haproxy.pid", "haproxy")
    dnsmasq = ovs.pid_alive(ns_dir / "dnsmasq.pid", "dnsmasq")
    assert haproxy and dnsmasq
    lab.api.delete(NAMESPACES, "", ns_b)
    wait_for(f"namespace {ns_b} gone", lambda: lab.get(NAMESPACES, "", ns_b) is None, 120, 0.5)

    ports = [p for p in ovs.list_ports(lab.config.bridge) if p.tag == vlan or p.name == gw]
    assert ports == []
    assert ovs.dump_flows(lab.config.bridge, vlan) == []
    assert ovs.nft_table_text("inet", lab.config.nft_table(vlan)) is None
    assert not Path(f"/proc/{haproxy}").exists() and not Path(f"/proc/{dnsmasq}").exists()
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit()
            and str(ns_dir).encode() in _cmdline(p)]
    assert left == []
    assert not ns_dir.exists()  # dnsmasq's hosts files, HAProxy's configuration
    host_addrs = json.loads(run(["ip", "-j", "-4", "addr"]).stdout)
    assigned = {a["local"] for link in host_addrs for a in link.get("addr_info") or []}
    assert not assigned & set(vips)
    for ref in (VLANS, SUBNETS, ADDRESSES):
        items, _ = lab.api.list(ref, "", f"pacific.lab/namespace={ns_b}")
        assert items == [], ref.plural
    # the other namespace is untouched
    assert lab.reaches("a/db", "a/web", 8080)
    again = lab.stack.networks.run_playbook(hostconfig.NAMESPACE_ABSENT_PLAYBOOK,
                                            hostconfig.absent_vars(lab.config, ns_b, vlan), None)
    assert again.changed == 0


def test_namespace_playbook_is_idempotent(lab: Lab) -> None:
    ns_a = lab.ns("a")
    net = lab.network(ns_a)
    from appliance.network.world import read_world

    networks = lab.stack.networks
    host = networks.desired(net, net["status"]["vlan"],
                            networks.allocator.subnets_of(net), read_world(lab.api, lab.config))
    first = networks.run_playbook(hostconfig.NAMESPACE_PLAYBOOK, host.extravars(), None)
    second = networks.run_playbook(hostconfig.NAMESPACE_PLAYBOOK, host.extravars(), None)
    assert first.succeeded and second.changed == 0, second


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
