"""The network controllers: namespace segments, interfaces, load balancers, policies.

- :class:`NamespaceNetworks` gives every namespace a VirtualNetwork ``default``
  (as NCP does when a vSphere Namespace is created).
- :class:`VirtualNetworkController` is the one that configures the host: per
  namespace it allocates a VLAN and subnets (another subnet when the
  namespace runs out), compiles isolation and NetworkPolicy into flows,
  DHCP/DNS from the interfaces, SNAT and load balancers, and runs
  ``network-namespace.yml`` through the ansible-runner wrapper when the
  result differs from what was last applied or the host drifted (a port, a
  flow, a daemon, an nft table gone). Deleting the network runs
  ``network-namespace-absent.yml`` and releases the VLAN and subnets.
  Playbook events become Events on the VirtualNetwork (in the namespace); a
  failing task becomes its Ready condition.
- :class:`InterfaceController` gives each VirtualNetworkInterface an address
  (one create of an IPAddress record) and releases it on delete.
- :class:`ServiceController` gives LoadBalancer services a VIP from the
  ingress range (ClusterIP services one from the cluster-IP range), fills
  ``status.loadBalancer.ingress`` and reports a service that selects nothing.
- :class:`PolicyController` reports NetworkPolicy entries that cannot be
  enforced and has the networks recompiled.

All of them write conditions (``set_condition``) and work over a
ResourceApi, so they run in the supervisor or in a host agent alike. Only
:class:`VirtualNetworkController` runs playbooks (one thread: runs never
overlap on a host).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance import errors
from appliance.ansible import PlaybookError, PlaybookEvent, PlaybookResult, run_playbook
from appliance.controllers.base import (
    Controller,
    PermanentError,
    TemporaryError,
    add_finalizer,
    drop_finalizer,
)
from appliance.controllers.scheduler import set_condition
from appliance.kinds.network import (
    DEFAULT_NETWORK,
    INTERFACE_FINALIZER,
    NET_GROUP,
    NET_VERSION,
    NETWORK_FINALIZER,
    SERVICE_FINALIZER,
)
from appliance.kinds.registry import Obj
from appliance.network import events, hostconfig, ipam, ovsview
from appliance.network.allocator import ADDRESSES, SUBNETS, VLANS, Allocator
from appliance.network.config import NetworkConfig, mac_for
from appliance.network.model import Segment
from appliance.network.policy import compile_policies
from appliance.network.services import BALANCED_TYPES, listeners, problems, select_backends, view
from appliance.network.world import (
    INTERFACES,
    NAMESPACES,
    NETWORKS,
    POLICIES,
    SERVICES,
    VMSERVICES,
    World,
    list_or_empty,
    read_world,
    served,
)
from appliance.resources import Ref, ResourceApi, get_or_none
from appliance.settings import Settings

LOG = logging.getLogger(__name__)

READY = "Ready"
Kick = Callable[[str], None]


class NetworkConfigError(Exception):
    """A network playbook failed; ``reason`` and ``message`` go into a condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _failure_message(playbook: str, result: PlaybookResult) -> str:
    if result.failures:
        return "; ".join(f"{playbook}: task '{f.task}' failed: {f.message}"
                         for f in result.failures)
    return f"{playbook}: status {result.status} (rc={result.rc}, unreachable={result.unreachable})"


def _write_status(api: ResourceApi, ref: Ref, obj: Obj, status: Obj) -> None:
    if status == (obj.get("status") or {}):
        return
    meta = obj["metadata"]
    try:
        api.patch(ref, meta.get("namespace", ""), meta["name"], {"status": status},
                  subresource="status")
    except errors.ApiError as err:
        if err.code != 404:
            raise


def detect_datapath(settings: Settings) -> str:
    """The OVS datapath of this host: from the host facts, else measured now."""
    try:
        facts = json.loads(settings.host_facts_path.read_text())
        if facts.get("ovs_datapath") in ("system", "netdev"):
            return str(facts["ovs_datapath"])
    except (OSError, ValueError):
        pass
    from hypervisor.hostfacts import detect_ovs_datapath

    return detect_ovs_datapath()


# -- namespaces ---------------------------------------------------------------------------


#: Namespace annotations read when the namespace's network is made (vSphere's
#: "override the supervisor's network settings" when a namespace is created).
CIDRS_ANNOTATION = "pacific.lab/network-cidrs"  # comma-separated subnets
PREFIX_ANNOTATION = "pacific.lab/subnet-prefix-length"
SNAT_ANNOTATION = "pacific.lab/snat"  # "false": routed, no NAT


def network_spec_from(ns: Obj, config: NetworkConfig) -> Obj:
    notes = ns["metadata"].get("annotations") or {}
    spec: Obj = {"snat": config.snat_default}
    if notes.get(SNAT_ANNOTATION, "").strip().lower() in ("false", "no", "0", "off"):
        spec["snat"] = False
    cidrs = [c.strip() for c in notes.get(CIDRS_ANNOTATION, "").split(",") if c.strip()]
    if cidrs:
        spec["cidrs"] = cidrs
    prefix = notes.get(PREFIX_ANNOTATION, "").strip()
    if prefix.isdigit():
        spec["subnetPrefixLength"] = int(prefix)
    return spec


class NamespaceNetworks(Controller):
    """Every namespace gets a VirtualNetwork ``default`` (unless excluded)."""

    group, version, plural, name = "", "v1", "namespaces", "namespace-networks"
    resync = 300.0

    def __init__(self, api: ResourceApi, config: NetworkConfig, kick_all: Callable[[], None]
                 ) -> None:
        super().__init__(api)
        self.config = config
        self.kick_all = kick_all

    def reconcile(self, ns: Obj) -> float | None:
        name = ns["metadata"]["name"]
        self.kick_all()  # namespace labels feed namespaceSelectors
        if ns["metadata"].get("deletionTimestamp") or self.config.excluded(name):
            return None
        if get_or_none(self.api, NETWORKS, name, DEFAULT_NETWORK) is None:
            try:
                self.api.create(NETWORKS, name, {
                    "apiVersion": f"{NET_GROUP}/{NET_VERSION}", "kind": "VirtualNetwork",
                    "metadata": {"name": DEFAULT_NETWORK},
                    "spec": network_spec_from(ns, self.config)})
                LOG.info("[%s] VirtualNetwork %s created", name, DEFAULT_NETWORK)
            except errors.ApiError as err:
                if err.code == 422:  # bad annotations: say so on the namespace
                    events.record(self.api, ns, "Warning", "InvalidNetworkSettings",
                                  err.message)
                elif err.code not in (403, 409):  # 403: the namespace is terminating
                    raise
        return None


# -- the segment of each namespace, on this host -------------------------------------------


class VirtualNetworkController(Controller):
    group, version, plural, name = NET_GROUP, NET_VERSION, "virtualnetworks", "network-controller"
    resync = 15.0
    port_poll = 1.0

    def __init__(self, api: ResourceApi, settings: Settings, config: NetworkConfig,
                 datapath: str | None = None, install_packages: bool = True) -> None:
        super().__init__(api)
        self.settings = settings
        self.config = config
        self.allocator = Allocator(api, config)
        self.datapath = datapath or detect_datapath(settings)
        self.install_packages = install_packages
        self.host_ready = False
        # namespace -> (digest, when, the ofports its flows were installed against)
        self.applied: dict[str, tuple[str, float, dict[str, int]]] = {}
        self.port_index: dict[str, str] = {}  # OVS port name -> namespace
        self._lock = threading.Lock()

    # -- kicks from the other controllers ----------------------------------------------

    def kick(self, namespace: str) -> None:
        self.queue.add((namespace, DEFAULT_NETWORK), 0.2)

    def kick_all(self) -> None:
        for ns in list(self._known_namespaces()):
            self.kick(ns)

    def _known_namespaces(self) -> set[str]:
        with self._lock:
            return set(self.port_index.values()) | set(self.applied)

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self._watch_ports, args=(stop,), name=f"{self.name}-ports",
                         daemon=True).start()
        for ref in (INTERFACES, POLICIES, SERVICES, VMSERVICES, NAMESPACES):
            threading.Thread(target=self._watch_related, args=(ref, stop),
                             name=f"{self.name}-{ref.plural}", daemon=True).start()
        super().run(stop)

    def _watch_related(self, ref: Ref, stop: threading.Event) -> None:
        """Anything that feeds a namespace's configuration re-queues its network."""
        if not served(self.api, ref):
            return
        while not stop.is_set():
            try:
                _, rv = self.api.list(ref)
                for ev in self.api.watch(ref, rv, "", timeout=300):
                    if stop.is_set():
                        return
                    if ev is None:
                        continue
                    meta = ev[1].get("metadata") or {}
                    if ref is NAMESPACES or ref is POLICIES:
                        self.kick_all()  # labels and peers reach across namespaces
                        if meta.get("name") and ref is NAMESPACES:
                            self.kick(meta["name"])
                    elif meta.get("namespace"):
                        self.kick(meta["namespace"])
                        if ref is INTERFACES:
                            self.kick_all()  # a workload may be a peer elsewhere
            except errors.ApiError as err:
                LOG.info("%s: watch of %s ended (%s)", self.name, ref.plural, err)
                stop.wait(1.0)
            except Exception:
                LOG.exception("%s: watch of %s failed", self.name, ref.plural)
                stop.wait(5.0)

    def _watch_ports(self, stop: threading.Event) -> None:
        """A workload port appearing (a VM started) or a port vanishing re-queues its
        namespace: flows name ports by OpenFlow number, resolved at install time."""
        seen: dict[str, int] = {}
        while not stop.wait(self.port_poll):
            try:
                ports = {p.name: p.ofport for p in ovsview.ports(self.config.bridge)}
            except Exception as exc:  # noqa: BLE001 - OVS may be restarting
                LOG.debug("port poll failed: %s", exc)
                continue
            changed = {n for n in set(ports) | set(seen) if ports.get(n) != seen.get(n)}
            seen = ports
            with self._lock:
                index = dict(self.port_index)
            for name in changed:
                if name in index:
                    self.kick(index[name])

    # -- reconcile -------------------------------------------------------------------------

    def reconcile(self, network: Obj) -> float | None:
        meta = network["metadata"]
        ns = meta["namespace"]
        status = copy.deepcopy(network.get("status") or {})
        conditions = list(status.get("conditions") or [])
        gen = meta.get("generation")
        if meta["name"] != DEFAULT_NETWORK:
            status["conditions"] = set_condition(
                conditions, READY, "False", "Unsupported",
                f"a namespace has one network, {DEFAULT_NETWORK!r}", gen)
            _write_status(self.api, self.ref, network, status)
            if meta.get("deletionTimestamp"):
                drop_finalizer(self.api, self.ref, network, NETWORK_FINALIZER)
            return None
        if meta.get("deletionTimestamp"):
            return self.teardown(network)
        try:
            network = add_finalizer(self.api, self.ref, network, NETWORK_FINALIZER)
            self.ensure_host()
            vlan = self.allocator.vlan_for(network)
            subnets = self.ensure_subnets(network)
            world = read_world(self.api, self.config)
            host = self.desired(network, vlan, subnets, world)
            self.apply(network, host)
            used = world.used_by_namespace.get(ns, 0)
            status.update({
                "vlan": vlan, "bridge": self.config.bridge,
                "gateway": str(host.segment.gateways[0]), "gatewayPort": host.segment.gateway_port,
                "dnsDomain": self.config.dns_domain_of(ns),
                "subnets": [{"cidr": str(s), "gateway": str(ipam.gateway_of(s))}
                            for s in subnets],
                "snat": {"enabled": host.segment.snat, "uplink": host.uplink},
                "addresses": {"used": used, "total": ipam.capacity(subnets)},
                "observedGeneration": gen})
            conditions = set_condition(
                conditions, READY, "True", "Configured",
                f"VLAN {vlan} on {self.config.bridge}, gateway {host.segment.gateways[0]}, "
                f"{len(host.workloads)} workloads, {len(host.listeners)} load-balanced ports",
                gen)
            return self.resync
        except ipam.IpamError as exc:
            conditions = self._fail(network, conditions, exc.reason, exc.message, gen)
            raise TemporaryError(exc.message, 30.0) from exc
        except NetworkConfigError as exc:
            conditions = self._fail(network, conditions, exc.reason, exc.message, gen)
            raise TemporaryError(exc.message, 15.0) from exc
        finally:
            status["conditions"] = conditions
            _write_status(self.api, self.ref, network, status)

    def _fail(self, network: Obj, conditions: list[Obj], reason: str, message: str,
              gen: int | None) -> list[Obj]:
        old = next((c for c in conditions if c.get("type") == READY), {})
        if old.get("reason") != reason or old.get("message") != message:
            events.record(self.api, network, "Warning", reason, message)
        return set_condition(conditions, READY, "False", reason, message, gen)

    def ensure_subnets(self, network: Obj) -> list[ipam.Network]:
        ns = network["metadata"]["namespace"]
        requested = [ipam.parse_network(c, "spec.cidrs entry")
                     for c in (network.get("spec") or {}).get("cidrs") or []]
        owned = self.allocator.subnets_of(network)
        for net in requested:
            if net not in owned:
                owned.append(self.allocator.add_subnet(network, net))
        if not owned:
            owned.append(self.allocator.add_subnet(network))
        # Grow: another subnet while interfaces wait for an address that no subnet has.
        interfaces = [i for i in list_or_empty(self.api, INTERFACES, ns)
                      if not i["metadata"].get("deletionTimestamp")]
        have = {r["spec"]["owner"]["uid"] for r in self.allocator.in_namespace(ADDRESSES, ns)
                if r["spec"].get("purpose") == "Workload"}
        waiting = sum(1 for i in interfaces if i["metadata"]["uid"] not in have)
        free = ipam.capacity(owned) - len(have)
        while free < waiting:
            if requested:
                raise ipam.SubnetExhausted(
                    f"all {ipam.capacity(owned)} addresses of {', '.join(map(str, owned))} are "
                    f"in use and {waiting - free} more are wanted; add a CIDR to spec.cidrs")
            net = self.allocator.add_subnet(network)
            events.record(self.api, network, "Normal", "SubnetAdded",
                          f"namespace {ns} ran out of addresses: subnet {net} added")
            owned.append(net)
            free += ipam.capacity([net])
        return sorted(owned)

    def desired(self, network: Obj, vlan: int, subnets: list[ipam.Network], world: World
                ) -> hostconfig.NamespaceHost:
        ns = network["metadata"]["namespace"]
        snat = bool((network.get("spec") or {}).get("snat", self.config.snat_default))
        segment = Segment(ns, vlan, tuple(subnets), self.config.gateway_port(vlan), snat)
        here = world.workloads_in(ns)
        policies = list_or_empty(self.api, POLICIES, ns)
        compiled, policy_problems = compile_policies(policies, world.namespaces, world.workloads)
        for problem in policy_problems:
            LOG.warning("[%s] %s", ns, problem)
        lbs: list[hostconfig.Listener] = []
        cluster_ips = []
        names = []
        for ref in (VMSERVICES, SERVICES):
            for svc in list_or_empty(self.api, ref, ns):
                if svc["metadata"].get("deletionTimestamp"):
                    continue
                v = view(svc)
                for purpose, addr in world.service_addresses.get(svc["metadata"]["uid"], []):
                    if purpose != v.type or v.type not in BALANCED_TYPES:
                        continue
                    lbs += listeners(v, addr, here)
                    names.append((v.name, addr))
                    if purpose == "ClusterIP":
                        cluster_ips.append(addr)
        uplink = self.config.uplink or ovsview.default_route_interface() or ""
        with self._lock:
            for w in here:
                self.port_index[w.port] = ns
            self.port_index[segment.gateway_port] = ns
        return hostconfig.NamespaceHost(
            self.config, segment, tuple(here), tuple(compiled), tuple(lbs),
            tuple(cluster_ips), tuple(sorted(set(names))), uplink)

    # -- the host ---------------------------------------------------------------------------

    def run_playbook(self, name: str, extravars: dict[str, Any], involved: Obj | None
                     ) -> PlaybookResult:
        changed: list[str] = []

        def on_event(ev: PlaybookEvent) -> None:
            if ev.event == "runner_on_ok" and ev.changed and ev.task:
                changed.append(ev.task)
        try:
            result = run_playbook(self.settings, name, extravars, on_event=on_event,
                                  playbooks_dir=self.config.playbooks_dir, timeout=600)
        except PlaybookError as exc:
            raise NetworkConfigError("PlaybookError", f"{name}: {exc}") from exc
        if involved is not None and result.succeeded and changed:
            events.record(self.api, involved, "Normal", "NetworkConfigured",
                          f"{name}: {len(changed)} changed: " + "; ".join(changed))
        if not result.succeeded:
            raise NetworkConfigError("PlaybookFailed", _failure_message(name, result))
        return result

    def ensure_host(self) -> None:
        if self.host_ready:
            drift = ovsview.host_drift(self.config)
            if not drift:
                return
            LOG.info("integration bridge %s drifted: %s", self.config.bridge, "; ".join(drift))
        self.run_playbook(hostconfig.HOST_PLAYBOOK,
                          hostconfig.host_vars(self.config, self.datapath,
                                               self.install_packages), None)
        self.host_ready = True
        LOG.info("integration bridge %s ready (datapath %s)", self.config.bridge, self.datapath)

    def apply(self, network: Obj, host: hostconfig.NamespaceHost) -> None:
        ns = network["metadata"]["namespace"]
        digest = host.digest()
        last = self.applied.get(ns)
        due = last is None or last[0] != digest or \
            time.monotonic() - last[1] > self.config.resync_seconds
        drift = [] if due or last is None else ovsview.drift(host, last[2])
        if not due and not drift:
            return
        if drift:
            LOG.info("[%s] host drifted: %s", ns, "; ".join(drift))
            events.record(self.api, network, "Warning", "NetworkDrift",
                          "repairing: " + "; ".join(drift))
        # Flows name ports but hold their OpenFlow numbers of the moment they are installed.
        # A port that someone else made again while the playbook ran (a VM powered off and
        # on) may have its flows with its old number: the next drift check repairs it.
        names = ovsview.referenced_ports(host)
        before = ovsview.ofports(self.config.bridge, names)
        self.run_playbook(hostconfig.NAMESPACE_PLAYBOOK, host.extravars(), network)
        after = ovsview.ofports(self.config.bridge, names)
        installed = {name: -1 if before.get(name, number) != number else number
                     for name, number in after.items()}
        with self._lock:
            self.applied[ns] = (digest, time.monotonic(), installed)

    def teardown(self, network: Obj) -> float | None:
        meta = network["metadata"]
        ns = meta["namespace"]
        status = copy.deepcopy(network.get("status") or {})
        conditions = list(status.get("conditions") or [])
        try:
            left = [i["metadata"]["name"] for i in list_or_empty(self.api, INTERFACES, ns)
                    if (i.get("spec") or {}).get("virtualNetwork", DEFAULT_NETWORK) ==
                    meta["name"]]
            if left:
                conditions = set_condition(conditions, READY, "False", "Terminating",
                                           f"waiting for {len(left)} interfaces to go: "
                                           + ", ".join(left[:5]))
                raise TemporaryError("interfaces remain", 2.0)
            vlans = [int(r["spec"]["vlan"]) for r in self.allocator.owned(VLANS, meta["uid"])]
            if status.get("vlan"):
                vlans.append(int(status["vlan"]))
            for vlan in sorted(set(vlans)):
                self.run_playbook(hostconfig.NAMESPACE_ABSENT_PLAYBOOK,
                                  hostconfig.absent_vars(self.config, ns, vlan), network)
            released = self.allocator.release(meta["uid"], (SUBNETS, VLANS))
            LOG.info("[%s] network removed (VLAN %s, %d allocations released)", ns,
                     ",".join(map(str, sorted(set(vlans)))) or "-", released)
            with self._lock:
                self.applied.pop(ns, None)
                self.port_index = {p: n for p, n in self.port_index.items() if n != ns}
            drop_finalizer(self.api, self.ref, network, NETWORK_FINALIZER)
            return None
        except NetworkConfigError as exc:
            conditions = self._fail(network, conditions, exc.reason, exc.message, None)
            raise TemporaryError(exc.message, 10.0) from exc
        finally:
            status["conditions"] = conditions
            _write_status(self.api, self.ref, network, status)

    def remove_host(self) -> None:
        """Everything on this host, bridge included (``lab down``, tests)."""
        self.run_playbook(hostconfig.HOST_ABSENT_PLAYBOOK,
                          hostconfig.host_absent_vars(self.config), None)
        self.host_ready = False
        with self._lock:
            self.applied.clear()


def remove_host_network(settings: Settings, config: NetworkConfig | None = None) -> None:
    """Remove everything the network layer made on this host (``lab down``).

    Safe while the host service is stopped: on the next start the controllers
    configure every namespace again from the store. Raises NetworkConfigError
    naming the failing task.
    """
    config = config or NetworkConfig.from_settings(settings)
    try:
        result = run_playbook(settings, hostconfig.HOST_ABSENT_PLAYBOOK,
                              hostconfig.host_absent_vars(config),
                              playbooks_dir=config.playbooks_dir, timeout=600)
    except PlaybookError as exc:
        raise NetworkConfigError("PlaybookError", str(exc)) from exc
    if not result.succeeded:
        raise NetworkConfigError("PlaybookFailed", _failure_message(
            hostconfig.HOST_ABSENT_PLAYBOOK, result))


# -- interfaces -----------------------------------------------------------------------------


class InterfaceController(Controller):
    group, version, plural, name = NET_GROUP, NET_VERSION, "virtualnetworkinterfaces", \
        "interface-controller"
    resync = 60.0

    def __init__(self, api: ResourceApi, config: NetworkConfig, allocator: Allocator,
                 kick: Kick) -> None:
        super().__init__(api)
        self.config = config
        self.allocator = allocator
        self.kick = kick

    def reconcile(self, itf: Obj) -> float | None:
        meta = itf["metadata"]
        ns = meta["namespace"]
        if meta.get("deletionTimestamp"):
            self.allocator.release(meta["uid"], (ADDRESSES,))
            drop_finalizer(self.api, self.ref, itf, INTERFACE_FINALIZER)
            self.kick(ns)
            return None
        spec = itf.get("spec") or {}
        status = copy.deepcopy(itf.get("status") or {})
        conditions = list(status.get("conditions") or [])
        gen = meta.get("generation")
        try:
            itf = add_finalizer(self.api, self.ref, itf, INTERFACE_FINALIZER)
            network_name = spec.get("virtualNetwork") or DEFAULT_NETWORK
            network = get_or_none(self.api, NETWORKS, ns, network_name)
            if network is None:
                conditions = set_condition(conditions, READY, "False", "NetworkNotFound",
                                           f"VirtualNetwork {network_name!r} does not exist in "
                                           f"namespace {ns}", gen)
                raise TemporaryError("no network", 5.0)
            vlan = (network.get("status") or {}).get("vlan")
            subnets = self.allocator.subnets_of(network)
            if not vlan or not subnets:
                conditions = set_condition(conditions, READY, "False", "WaitingForNetwork",
                                           f"VirtualNetwork {network_name!r} has no segment yet",
                                           gen)
                raise TemporaryError("network not ready", 1.0)
            try:
                addr, subnet = self.allocator.address_for(itf, subnets)
            except ipam.SubnetExhausted as exc:
                self.kick(ns)  # the network controller adds a subnet (or says why not)
                conditions = set_condition(conditions, READY, "False", "WaitingForAddress",
                                           f"{exc.message}; waiting for another subnet", gen)
                raise TemporaryError(exc.message, 2.0) from exc
            domain = self.config.dns_domain_of(ns)
            hostname = spec.get("hostName") or meta["name"]
            wanted = {
                "ipAddresses": [{"ip": str(addr), "prefixLength": subnet.prefixlen,
                                 "subnetMask": str(subnet.netmask),
                                 "gateway": str(ipam.gateway_of(subnet))}],
                "macAddress": str(spec.get("macAddress") or mac_for(meta["uid"])).lower(),
                "portName": self.config.workload_port(meta["uid"]), "vlan": int(vlan),
                "bridge": self.config.bridge, "dnsName": f"{hostname}.{domain}",
                "nameservers": [str(ipam.gateway_of(subnet))], "searchDomains": [domain]}
            if any(status.get(k) != v for k, v in wanted.items()):
                self.kick(ns)
            status.update(wanted)
            conditions = set_condition(conditions, READY, "True", "AddressAssigned",
                                       f"{addr}/{subnet.prefixlen} on VLAN {vlan}, port "
                                       f"{wanted['portName']}", gen)
            return None
        finally:
            status["conditions"] = conditions
            _write_status(self.api, self.ref, itf, status)


# -- load balancers -------------------------------------------------------------------------


class ServiceController(Controller):
    """VIPs for VirtualMachineService or core/v1 Service (one instance per kind)."""

    resync = 15.0

    def __init__(self, api: ResourceApi, ref: Ref, config: NetworkConfig,
                 allocator: Allocator, kick: Kick) -> None:
        self.group, self.version, self.plural = ref.group, ref.version, ref.plural
        self.name = f"lb-controller-{ref.plural}"
        super().__init__(api)
        self.config = config
        self.allocator = allocator
        self.kick = kick

    def reconcile(self, svc: Obj) -> float | None:
        meta = svc["metadata"]
        ns = meta["namespace"]
        if meta.get("deletionTimestamp"):
            self.allocator.release(meta["uid"], (ADDRESSES,))
            drop_finalizer(self.api, self.ref, svc, SERVICE_FINALIZER)
            self.kick(ns)
            return None
        v = view(svc)
        status = copy.deepcopy(svc.get("status") or {})
        conditions = list(status.get("conditions") or [])
        gen = meta.get("generation")
        if v.type not in BALANCED_TYPES:
            if self.allocator.release(meta["uid"], (ADDRESSES,)):
                self.kick(ns)
            status.pop("loadBalancer", None)
            status["conditions"] = set_condition(conditions, READY, "True", "NotBalanced",
                                                 f"type {v.type} has no load balancer", gen)
            _write_status(self.api, self.ref, svc, status)
            drop_finalizer(self.api, self.ref, svc, SERVICE_FINALIZER)
            return None
        try:
            svc = add_finalizer(self.api, self.ref, svc, SERVICE_FINALIZER)
            for record in self.allocator.owned(ADDRESSES, meta["uid"]):
                if record["spec"]["purpose"] != v.type:  # the type changed
                    self.allocator.api.delete(ADDRESSES, "", record["metadata"]["name"])
            wanted = (svc.get("spec") or {}).get("loadBalancerIP") or "" \
                if v.type == "LoadBalancer" else ""
            try:
                addr = self.allocator.vip_for(svc, v.type, wanted)
            except ipam.IpamError as exc:
                conditions = self._set(svc, conditions, "False", exc.reason, exc.message, gen)
                raise PermanentError(exc.message) from exc
            if v.type == "LoadBalancer":
                # Published once the VIP is on the host: an address handed out earlier
                # would be routed wherever the host's routes say until then.
                network = get_or_none(self.api, NETWORKS, ns, DEFAULT_NETWORK) or {}
                gateway_port = (network.get("status") or {}).get("gatewayPort") or ""
                if not gateway_port or not ovsview.has_address(gateway_port, str(addr)):
                    status.pop("loadBalancer", None)
                    conditions = set_condition(conditions, READY, "False", "Provisioning",
                                               f"VIP {addr} is being configured on the host",
                                               gen)
                    self.kick(ns)
                    return 1.0
                status["loadBalancer"] = {"ingress": [{"ip": str(addr)}]}
            else:
                status.pop("loadBalancer", None)
                if not (svc.get("spec") or {}).get("clusterIP"):
                    svc = self.api.patch(self.ref, ns, meta["name"],
                                         {"spec": {"clusterIP": str(addr)}})
            world = read_world(self.api, self.config)
            trouble = problems(v, world.workloads_in(ns))
            if trouble:
                conditions = self._set(svc, conditions, "False", "NoBackends"
                                       if "selects no workloads" in " ".join(trouble)
                                       or "no selector" in " ".join(trouble)
                                       else "PartiallyBalanced", "; ".join(trouble), gen)
            else:
                count = len(select_backends(v, world.workloads_in(ns)))
                conditions = set_condition(conditions, READY, "True", "Balanced",
                                           f"{addr}: {count} backends", gen)
            self.kick(ns)
            return self.resync
        finally:
            status["conditions"] = conditions
            _write_status(self.api, self.ref, svc, status)

    def _set(self, svc: Obj, conditions: list[Obj], state: str, reason: str, message: str,
             gen: int | None) -> list[Obj]:
        old = next((c for c in conditions if c.get("type") == READY), {})
        if old.get("reason") != reason or old.get("message") != message:
            events.record(self.api, svc, "Warning", reason, message)
        return set_condition(conditions, READY, state, reason, message, gen)


# -- NetworkPolicy ----------------------------------------------------------------------------


class PolicyController(Controller):
    """Has every network recompiled when a policy changes; reports what cannot be enforced."""

    group, version, plural, name = "networking.k8s.io", "v1", "networkpolicies", \
        "policy-controller"
    resync = 300.0

    def __init__(self, api: ResourceApi, config: NetworkConfig, kick_all: Callable[[], None]
                 ) -> None:
        super().__init__(api)
        self.config = config
        self.kick_all = kick_all
        self.reported: dict[str, tuple[str, ...]] = {}

    def _process(self, key: tuple[str, str]) -> None:
        self.kick_all()  # deletions too: a deleted policy no longer isolates anything
        super()._process(key)

    def reconcile(self, policy: Obj) -> float | None:
        world = read_world(self.api, self.config)
        compiled, trouble = compile_policies([policy], world.namespaces, world.workloads)
        warnings = tuple(trouble) + (compiled[0].warnings if compiled else ())
        uid = policy["metadata"]["uid"]
        if warnings and self.reported.get(uid) != warnings:
            for warning in warnings:
                events.record(self.api, policy, "Warning", "NotEnforced", warning)
        self.reported[uid] = warnings
        return None


# -- all of it ---------------------------------------------------------------------------------


class NetworkStack:
    """The network controllers, wired together; ``controllers()`` for the host service."""

    def __init__(self, api: ResourceApi, settings: Settings, config: NetworkConfig, *,
                 datapath: str | None = None, install_packages: bool = True) -> None:
        self.api = api
        self.config = config
        self.networks = VirtualNetworkController(api, settings, config, datapath,
                                                 install_packages)
        kick = self.networks.kick
        self.allocator = self.networks.allocator
        self.namespaces = NamespaceNetworks(api, config, self.networks.kick_all)
        self.interfaces = InterfaceController(api, config, self.allocator, kick)
        self.policies = PolicyController(api, config, self.networks.kick_all)
        self.services = [ServiceController(api, ref, config, self.allocator, kick)
                         for ref in (VMSERVICES, SERVICES) if served(api, ref)]

    def controllers(self) -> list[Controller]:
        return [self.networks, self.namespaces, self.interfaces, self.policies, *self.services]

    def run(self, stop: threading.Event) -> list[threading.Thread]:
        threads = []
        for c in self.controllers():
            t = threading.Thread(target=c.run, args=(stop,), name=c.name, daemon=True)
            t.start()
            threads.append(t)
        return threads
