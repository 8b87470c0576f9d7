"""The host service: supervisor API, dashboard, controllers and host agent.

``lab serve`` runs this in the foreground; ``lab up`` runs it as a systemd
unit or as a daemon. Start-up order: database and migrations, bootstrap
objects (RBAC, administrator), PKI, then the HTTPS servers, then the
controllers and the host agent, which talk to the API like any client.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from appliance import errors, hostdaemons, kubeconfig
from appliance.agent.agent import HostAgent
from appliance.api.app import ApiApp
from appliance.auth import bootstrap, users
from appliance.audit import AuditLog
from appliance.auth.throttle import LoginThrottle
from appliance.client import ApiClient
from appliance.controllers.base import Controller
from appliance.controllers.namespace import NamespaceController
from appliance.controllers.podscheduler import PodScheduler
from appliance.controllers.scheduler import VmScheduler
from appliance.kinds import default_registry
from appliance.nodeapi import CONSOLE, POD_LOG
from appliance.objects import ObjectService
from appliance.pods.logs import PodLogs
from appliance.pki import Pki, ensure_pki, issued_pki
from appliance.resources import LocalApi, RemoteApi
from appliance.settings import Settings
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store
from appliance.util.files import write_atomic
from appliance.vmservice.catalog import Catalog

LOG = logging.getLogger(__name__)

ADMIN_TOKEN_TTL = 30 * 24 * 3600
#: The Lease whose holder runs the controllers (namespace, name).
LEADER_LEASE = ("kube-system", "pacific-lab-controllers")
NODE_TOKEN_TTL = 365 * 24 * 3600
#: The listen backlog of the API and the dashboard: a burst of a thousand clients waits in
#: the kernel's queue for a thread, not in SYN retries (cheroot's default is 5).
LISTEN_BACKLOG = 1024
#: Worker threads of each of the API's listeners (a watch holds one while it is open).
API_THREADS = 320
#: In the host role: how often the floating IP is asked, and after how long without an
#: answer the host starts the control-plane domains itself (_keep_control_plane_up). Only
#: domains that are shut off are started, so a VM that is slow or rebooting is never
#: touched; the grace (three checks) only keeps a blip from counting.
CONTROL_PLANE_CHECK = 15.0
CONTROL_PLANE_GRACE = 45.0


@dataclass
class Supervisor:
    """The in-process core shared by the API, the dashboard and the controllers."""

    settings: Settings
    store: Store
    service: ObjectService
    #: Password guesses, counted for the API's /login and the dashboard's form together.
    logins: LoginThrottle = field(default_factory=LoginThrottle)
    #: One Event per request of the API and the dashboard (``appliance.audit``).
    audit_log: AuditLog | None = None

    @classmethod
    def open(cls, settings: Settings) -> Supervisor:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        # QEMU runs as libvirt-qemu and must reach the disks below: others may pass
        # through, not list. Secrets in here are files of mode 0600.
        os.chmod(settings.state_dir, 0o711)
        engine = make_engine(settings.effective_database_url)
        migrate(engine)
        store = Store(engine, history=settings.watch_history)
        service = ObjectService(store, default_registry(lab_ranges(settings)))
        return cls(settings, store, service, audit_log=AuditLog(settings.log_dir))

    def bootstrap(self) -> str | None:
        bootstrap.ensure_rbac(self.service)
        Catalog(self.service).ensure_defaults()
        return bootstrap.ensure_admin(self.service)


def lab_ranges(settings: Settings) -> list[str]:
    """The lab's own networks, which a guest cluster's pod and service ranges must avoid."""
    return [f"{settings.appliance_cidr}=appliance network",
            f"{settings.network_pool_cidr}=namespace networks",
            f"{settings.network_ingress_cidr}=load-balancer VIPs",
            f"{settings.network_cluster_ip_cidr}=ClusterIP services"]


def local_addresses() -> list[str]:
    addrs = {"127.0.0.1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addrs.add(str(info[4][0]))
    except OSError:
        pass
    return sorted(a for a in addrs if not a.startswith("fe80"))


def primary_address() -> str:
    """The address other machines would use to reach this host (no traffic is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: connect() on UDP only picks a route
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def write_secret_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), 0o600)


class HostService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.servers: list[wsgi.Server] = []
        self.threads: list[threading.Thread] = []
        self.ready = threading.Event()
        self.registry_front: Any = None
        self.registry_daemon: Any = None

    def start(self) -> None:
        s = self.settings
        for d in (s.state_dir, s.log_dir, s.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        if s.role == "embedded" and s.keep_host_daemons and \
                not hostdaemons.service_manager_present():
            self._thread(hostdaemons.HostDaemons(s).run, "host-daemons")
        if s.role == "embedded":
            from appliance.controlplane.placement import Placement

            placement = Placement.load(s.state_dir)
            if placement is not None:  # the supervisor lives in control-plane VMs
                self._start_host_role(placement)
                return
        else:
            self._await_store()
        sup = Supervisor.open(s)
        self.supervisor = sup
        password = sup.bootstrap()
        if password is not None:
            write_secret_file(s.admin_credentials_path,
                              f"user: {bootstrap.ADMIN_USER}\npassword: {password}\n")
            # `lab up` shows the password once, then deletes this marker.
            write_secret_file(s.run_dir / "admin-password-unshown", "")
        host = s.public_host or socket.gethostname()
        addr = primary_address()
        if s.role == "control-plane":
            pki = issued_pki(s.pki_dir)
        else:
            pki = ensure_pki(s.pki_dir, [host, "localhost"],
                             sorted({*local_addresses(), addr}))
        self.pki = pki
        self.remote_logs: dict[Any, Any] = {}
        if s.role == "control-plane":  # the log files are on the host: ask it for them
            self.remote_logs = self._remote_logs(sup, pki).readers()
            logs, streams = {}, dict(self.remote_logs)
        else:
            logs = {CONSOLE: self._console_log}
            streams = {POD_LOG: PodLogs(s.pods_dir).read}
        api = ApiApp(sup.service, sup.service.registry, token_ttl=s.token_ttl_seconds,
                     max_body=s.max_body_bytes, server_address=f"{addr}:{s.api_port}",
                     ready=self.ready.is_set, ca_pem=pki.ca_pem(), logs=logs, streams=streams,
                     registry_info=self._registry_info if s.registry_enabled else None,
                     logins=sup.logins, audit_log=sup.audit_log,
                     max_watches=min(s.max_watches, API_THREADS - 64))
        self.api = api
        # A watch holds a worker thread for as long as it is open: the API's servers have
        # more threads than the watches it lets open (ApiApp.max_watches), so that a
        # hundred watches never leave a request waiting for a thread.
        self._serve(api, s.api_port, "api", threads=API_THREADS)
        self._serve(self._dashboard(sup), s.dashboard_port, "dashboard")
        self._write_admin_kubeconfig(sup, pki)
        if s.registry_enabled:
            self._start_registry(sup, pki)
        self._start_controllers(sup)
        if s.role == "embedded":
            facts = host_facts(s, host, addr)
            self._start_agents(self._node_client(sup, pki, str(facts["hostname"])), facts, pki)
        else:  # a control-plane VM runs no VMs or pods: it is a Node, tainted NoSchedule
            from appliance.controlplane.node import control_plane_annotations, vm_facts

            facts = vm_facts(socket.gethostname(), addr)
            client = self._node_client(sup, pki, str(facts["hostname"]))
            self._thread(HostAgent(client, facts, heartbeat=10.0, role="control-plane",
                                   annotations=lambda: control_plane_annotations(
                                       s.public_host)).run, "node-agent")
        self.ready.set()
        LOG.info("host service ready: API https://%s:%d, dashboard https://%s:%d", addr,
                 s.api_port, addr, s.dashboard_port)

    def _registry_info(self) -> dict[str, str]:
        from appliance.registry import SERVICE, TOKEN_PATH, registry_host

        host = registry_host(self.settings)
        return {"host": host, "service": SERVICE, "realm": f"https://{host}{TOKEN_PATH}"}

    def _start_registry(self, sup: Supervisor, pki: Pki) -> None:
        """The lab registry: Distribution as a supervised child, the front on its port,
        and the controller of Repository objects (appliance.registry)."""
        from appliance.registry import local_names, registry_host
        from appliance.registry.access import Access
        from appliance.registry.controller import RepositoryController
        from appliance.registry.daemon import RegistryDaemon
        from appliance.registry.front import RegistryFront
        from appliance.registry.projects import Projects
        from appliance.registry.storage import Storage
        from appliance.registry.tokens import Signer

        s = self.settings
        signer = Signer.ensure(s.registry_dir)
        daemon = RegistryDaemon(s.registry_dir, s.run_dir, s.log_dir / "registry.log",
                                registry_host(s))
        daemon.start()
        self.registry_daemon = daemon
        self._thread(daemon.supervise, "registry-daemon")
        projects = Projects(sup.service, Storage(daemon.storage_root))
        front = RegistryFront(Access(sup.service), signer, projects, daemon.socket_path,
                              s.registry_token_ttl_seconds, local_names(s), logins=sup.logins)
        front.serve(self.bind_addresses(), s.registry_port, pki.server_cert, pki.server_key)
        self.registry_front = front
        self._thread(RepositoryController(projects, daemon, front).run, "registry-controller")

    def _remote_logs(self, sup: Supervisor, pki: Pki) -> Any:
        from appliance.nodeapi import RemoteLogs
        from appliance.objects import SYSTEM, Target

        nodes = sup.service.registry.by_group_plural("", "nodes")
        assert nodes is not None

        def node(name: str) -> dict[str, Any] | None:
            try:
                return sup.service.get(SYSTEM, Target(nodes, "v1", "", name))
            except errors.ApiError:
                return None

        return RemoteLogs(node, self.settings.appliance_cidr, pki.ca_cert, pki.server_cert,
                          pki.server_key)

    def _appliance_network(self) -> Any:
        """The libvirt network of the VMs (and of the control-plane VMs, in the host role)."""
        from hypervisor.appliance_net import ApplianceNetwork

        s = self.settings
        return ApplianceNetwork("pacific-appliance", s.appliance_bridge, s.appliance_cidr)

    def _appliance_gateway(self) -> str:
        return str(self._appliance_network().gateway)

    def _serve_node_api(self, pki: Pki, stop: threading.Event) -> None:
        """The host's log endpoint for the control-plane VMs (appliance.nodeapi), on its
        address in the appliance network: tried until that address is up (the VM agent
        makes the appliance network)."""
        from appliance.api.app import file_log
        from appliance.nodeapi import NodeLogApp, control_plane_client, serve

        s = self.settings

        def console(vm: dict[str, Any], args: Any, timeout: float) -> Any:
            return file_log(self._console_log(vm), args, timeout,
                            f"VirtualMachine {vm['metadata']['name']!r} has no console "
                            "log yet")

        app = NodeLogApp({CONSOLE: console, POD_LOG: PodLogs(s.pods_dir).read},
                         control_plane_client(pki.ca_cert), timeout=1800.0)
        address, warned = self._appliance_gateway(), False
        while not stop.is_set():
            try:
                self.servers.append(serve(app, address, s.node_api_port, pki))
                return
            except OSError as exc:
                if not warned:
                    LOG.warning("the node API cannot listen on %s:%d yet (%s); trying again "
                                "every 5 s", address, s.node_api_port, exc)
                    warned = True
            stop.wait(5.0)

    def _console_log(self, vm: dict[str, Any]) -> Path:
        from appliance.agent.vmnames import domain_name, vm_prefix

        name = domain_name(vm, vm_prefix(self.settings.state_dir))
        return self.settings.state_dir / "consoles" / f"{name}.log"

    def _dashboard(self, sup: Supervisor) -> Any:
        from web import create_app

        return create_app(supervisor=sup, logs=self.api.logs, readers=self.remote_logs)

    def bind_addresses(self) -> list[str]:
        """Where the API and the dashboard listen.

        ``api_bind`` names them (comma-separated). The default, ``0.0.0.0``, means the
        host's own addresses and loopback, each bound by itself, never the wildcard: a
        wildcard socket on 6443 would hold that port on every address the lab adds to the
        host later, and a guest cluster's endpoint VIP needs exactly 6443."""
        wanted = [a.strip() for a in self.settings.api_bind.split(",") if a.strip()]
        if wanted != ["0.0.0.0"] or self.settings.role == "control-plane":
            # A control-plane VM serves on the wildcard: its address is in the appliance
            # network, and the floating IP comes and goes. No guest VIPs live there.
            return wanted
        import ipaddress

        lab = [ipaddress.ip_network(r.split("=")[0], strict=False)
               for r in lab_ranges(self.settings)]
        found = {"127.0.0.1", primary_address(), *local_addresses()}
        return sorted(a for a in found if ":" not in a and
                      not any(ipaddress.ip_address(a) in net for net in lab))

    def _serve(self, app: Any, port: int, name: str, threads: int = 96) -> None:
        addresses = self.bind_addresses()
        for address in addresses:
            server = wsgi.Server((address, port), app, numthreads=threads,
                                 server_name=f"pacific-lab-{name}", timeout=60,
                                 shutdown_timeout=2, request_queue_size=LISTEN_BACKLOG)
            server.ssl_adapter = BuiltinSSLAdapter(str(self.pki.server_cert),
                                                   str(self.pki.server_key))
            try:
                server.prepare()
            except OSError as exc:
                raise RuntimeError(f"cannot listen on {address}:{port} for the {name}: {exc}"
                                   ) from exc
            thread = threading.Thread(target=server.serve, name=f"{name}-server-{address}",
                                      daemon=True)
            thread.start()
            self.servers.append(server)
            self.threads.append(thread)

    def _write_admin_kubeconfig(self, sup: Supervisor, pki: Pki) -> None:
        with sup.store.write() as txn:
            token, _ = users.issue_token(txn.session, bootstrap.ADMIN_USER, ADMIN_TOKEN_TTL)
        s = self.settings
        # In a control-plane VM: the floating IP, which whichever VM holds it answers.
        host = s.public_host if s.role == "control-plane" and s.public_host else "127.0.0.1"
        server = f"https://{host}:{s.api_port}"
        config = kubeconfig.build(server, bootstrap.ADMIN_USER, token, [], pki.ca_pem())
        kubeconfig.write(self.settings.admin_kubeconfig_path, config)

    def _start_controllers(self, sup: Supervisor) -> None:
        """Controllers and schedulers run in one supervisor at a time: the one holding the
        Lease (appliance.controllers.leader). Alone on its store, that is this one."""
        from appliance.controllers.leader import LeaderElector, identity

        elector = LeaderElector(LocalApi(sup.service), LEADER_LEASE[0], LEADER_LEASE[1],
                                identity(str(self.settings.state_dir.resolve())))
        self.elector = elector
        self._thread(lambda stop: elector.run(stop, lambda term: self._lead(sup, term.stop)),
                     "leader-election")

    def _lead(self, sup: Supervisor, stop: threading.Event) -> list[threading.Thread]:
        """Start this term's controllers; they end when ``stop`` is set."""
        s = self.settings
        controllers: list[Controller] = [
            NamespaceController(sup.service),
            VmScheduler(LocalApi(sup.service), s.appliance_cidr, s.cpu_allocation_ratio,
                        namespace_network=s.network_enabled),
            PodScheduler(LocalApi(sup.service), s.appliance_cidr, s.cpu_allocation_ratio,
                         namespace_network=s.network_enabled),
        ]
        from appliance.clusters.stack import cluster_controllers

        controllers += cluster_controllers(LocalApi(sup.service), s.run_dir)
        if s.network_enabled and s.role == "embedded":
            # (In control-plane VMs the host's service runs them: they configure the host.)
            from appliance.network.config import NetworkConfig
            from appliance.network.controllers import NetworkStack

            controllers += NetworkStack(LocalApi(sup.service), s,
                                        NetworkConfig.from_settings(s)).controllers()
        threads = [threading.Thread(target=c.run, args=(stop,), name=c.name, daemon=True)
                   for c in controllers]
        threads.append(threading.Thread(target=self._housekeeping, args=(stop,),
                                        name="housekeeping", daemon=True))
        for t in threads:
            t.start()
        return threads

    def _housekeeping(self, stop: threading.Event) -> None:
        while not stop.wait(60.0):
            try:
                self.supervisor.store.compact()
                with self.supervisor.store.write() as txn:
                    users.purge_expired_tokens(txn.session)
            except Exception:
                LOG.exception("housekeeping failed")

    def _await_store(self) -> None:
        """A control-plane VM's supervisor serves only a lab's store: it waits until ``lab
        up --control-plane-vms`` has moved the objects into the database (one
        transaction, appliance.store.transfer), and never bootstraps an empty one that
        the move would then refuse to fill."""
        from sqlalchemy.exc import SQLAlchemyError

        from appliance.store.db import holds_objects

        engine = make_engine(self.settings.effective_database_url)
        try:
            for waited in itertools.count(step=2):
                try:
                    if holds_objects(engine):
                        return
                    reason = "the store is empty"
                except SQLAlchemyError as exc:
                    reason = f"the database does not answer ({type(exc).__name__})"
                if waited % 60 == 0:
                    LOG.info("waiting for the lab's objects to be moved in (lab up "
                             "--control-plane-vms): %s", reason)
                if self.stop.wait(2.0):
                    raise RuntimeError("stopped while waiting for the lab's objects")
        finally:
            engine.dispose()

    def _start_host_role(self, placement: Any) -> None:
        """The host of a lab whose supervisor runs in control-plane VMs: no store, API or
        controllers here; the agents (and the namespace networks' controllers, which
        configure this host) are clients of the API on the floating IP."""
        s = self.settings
        host = s.public_host or socket.gethostname()
        addr = primary_address()
        gateway = self._appliance_gateway()  # where the control-plane VMs ask for logs
        pki = ensure_pki(s.pki_dir, [host, "localhost"],
                         sorted({*local_addresses(), addr, gateway}))
        self.pki = pki
        facts = host_facts(s, host, addr)
        facts["node_api"] = {"address": gateway, "port": s.node_api_port}
        self._thread(lambda stop: self._serve_node_api(pki, stop), "node-api-start")
        client = ApiClient(placement.api_url, placement.node_token, str(pki.ca_cert))
        self._start_agents(client, facts, pki)
        if s.network_enabled:
            network = ApiClient(placement.api_url, placement.network_token, str(pki.ca_cert))
            self._thread(lambda stop: self._run_network_stack(network, stop), "network-stack")
        self._thread(lambda stop: self._keep_control_plane_up(placement, pki, stop),
                     "control-plane-watchdog")
        self.ready.set()
        LOG.info("host service ready in the host role: the supervisor is %d control-plane "
                 "VM(s) at %s", placement.vms, placement.api_url)

    def _keep_control_plane_up(self, placement: Any, pki: Pki, stop: threading.Event) -> None:
        """Start the control-plane VMs' domains when none of them can be asked to.

        The VM agent starts a stopped VM, but it learns of the VM from the API, which the
        control-plane VMs themselves serve: with all of them down at once (a host reboot,
        say) nothing would ever start them again. So when the floating IP has not answered
        for ``CONTROL_PLANE_GRACE`` seconds, this starts every control-plane domain of this
        lab that is defined and shut off (with its disk, as the VM agent made it); once the
        API answers, the VM agent is in charge again."""
        from appliance.agent.vmnames import domain_name, vm_prefix
        from appliance.controllers.scheduler import SYSTEM_NAMESPACE
        from appliance.controlplane.config import member_name
        from appliance.controlplane.move import readyz
        from hypervisor.libvirt_driver import LibvirtDriver

        prefix = vm_prefix(self.settings.state_dir)
        names = [domain_name({"metadata": {"namespace": SYSTEM_NAMESPACE,
                                           "name": member_name(i)}}, prefix)
                 for i in range(placement.vms)]
        answered = time.monotonic()
        while not stop.wait(CONTROL_PLANE_CHECK):
            if readyz(placement.api_url, pki.ca_cert):
                answered = time.monotonic()
                continue
            if time.monotonic() - answered < CONTROL_PLANE_GRACE:
                continue
            driver = LibvirtDriver()
            try:
                started = start_stopped(driver, names)
                if started:
                    LOG.warning("the floating IP has not answered for %.0f s: started the "
                                "control-plane domains %s", time.monotonic() - answered,
                                ", ".join(started))
            except (OSError, RuntimeError) as exc:
                LOG.warning("could not start the control-plane domains: %s", exc)
            finally:
                driver.close()
            answered = time.monotonic()  # give them time to boot before looking again

    def _run_network_stack(self, client: ApiClient, stop: threading.Event) -> None:
        from appliance.network.config import NetworkConfig
        from appliance.network.controllers import NetworkStack

        while not stop.is_set():
            try:
                stack = NetworkStack(RemoteApi(client), self.settings,
                                     NetworkConfig.from_settings(self.settings))
                break
            except Exception as exc:  # the floating IP may not answer yet
                LOG.warning("network stack: the supervisor does not answer (%s); retrying", exc)
                stop.wait(5.0)
        else:
            return
        threads = [threading.Thread(target=c.run, args=(stop,), name=c.name, daemon=True)
                   for c in stack.controllers()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _start_agents(self, client: ApiClient, facts: dict[str, Any], pki: Pki) -> None:
        self._thread(HostAgent(client, facts).run, "host-agent")
        self._thread(lambda stop: self._run_vm_agent(client, facts, stop,
                                                     node_token=client.token,
                                                     lab_ca=pki.ca_cert), "vm-agent")

    def _node_client(self, sup: Supervisor, pki: Pki, hostname: str) -> ApiClient:
        """An API client on loopback as ``system:node:<hostname>`` (made if missing)."""
        node_user = f"system:node:{hostname}"
        with sup.store.write() as txn:
            if not users.user_exists(txn.session, node_user):
                import secrets

                users.create_user(txn.session, node_user, secrets.token_urlsafe(24),
                                  [users.NODES])
            token, _ = users.issue_token(txn.session, node_user, NODE_TOKEN_TTL)
        return ApiClient(f"https://127.0.0.1:{self.settings.api_port}", token,
                         str(pki.ca_cert))

    def _run_vm_agent(self, client: ApiClient, facts: dict[str, Any], stop: threading.Event, *,
                      node_token: str, lab_ca: Path) -> None:
        """The VM reconciler of this host's agent; waits for libvirt if it is not up yet.

        The pod agent pulls from the lab registry as this node (``node_token``, the
        node's API token) and checks the registry's certificate against ``lab_ca``."""
        from appliance.agent.pods import PodController
        from appliance.agent.vms import VmController
        from hypervisor.appliance_net import NetworkError, ensure_network
        from hypervisor.libvirt_driver import LibvirtDriver

        s = self.settings
        network = self._appliance_network()
        while not stop.is_set():
            try:
                ensure_network(network)
                break
            except NetworkError as exc:
                LOG.warning("appliance network not ready (%s); retrying", exc)
                stop.wait(10.0)
        controller = VmController(RemoteApi(client), str(facts["hostname"]), s,
                                  str(facts.get("accelerator") or "tcg"), LibvirtDriver(),
                                  network.name,
                                  ovs_datapath=str(facts.get("ovs_datapath") or "system"),
                                  namespace_network=s.network_enabled)
        pods = PodController(RemoteApi(client), str(facts["hostname"]),
                             str(facts.get("address") or ""), s,
                             str(facts.get("accelerator") or "tcg"), LibvirtDriver(),
                             network.name,
                             ovs_datapath=str(facts.get("ovs_datapath") or "system"),
                             namespace_network=s.network_enabled, node_token=node_token,
                             lab_ca=lab_ca)
        for agent in (controller, pods):
            try:
                removed = agent.collect_orphans()
                if removed:
                    LOG.info("%s: removed domains whose objects are gone: %s", agent.name,
                             ", ".join(removed))
            except Exception as exc:  # best effort: the agent itself must still start
                LOG.warning("%s: could not look for orphaned domains: %s", agent.name, exc)
        self._thread(pods.run, "pod-agent")
        controller.run(stop)

    def _thread(self, fn: Any, name: str) -> None:
        t = threading.Thread(target=fn, args=(self.stop,), name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting requests; give open requests ``grace`` seconds.

        Every acknowledged write is already committed, so nothing is lost by
        not waiting for long-lived watches to end."""
        self.stop.set()
        for t in self.threads:
            if t.name == "leader-election":  # it releases the Lease for the next leader
                t.join(grace)
        if self.registry_front is not None:
            self.registry_front.shutdown()
        if self.registry_daemon is not None:
            self.registry_daemon.stop()
        stoppers = [threading.Thread(target=srv.stop, daemon=True) for srv in self.servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(grace)

    def run_forever(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            LOG.info("signal %d: shutting down", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            self.start()
        except Exception as exc:
            LOG.exception("host service failed to start: %s", exc)
            self.shutdown()
            logging.shutdown()
            os._exit(1)  # cheroot's worker threads are not daemon threads
        self.stop.wait()
        self.shutdown()
        logging.shutdown()
        os._exit(0)  # worker threads blocked on idle keep-alive sockets must not hold us


def start_stopped(driver: Any, names: list[str]) -> list[str]:
    """Start those of the domains ``names`` that are defined and shut off; the started."""
    started = []
    for name in names:
        seen = driver.observe(name)
        if seen is not None and seen.state == "shutoff":
            driver.ensure_power(name, "running")
            started.append(name)
    return started


def host_facts(settings: Settings, host: str, addr: str) -> dict[str, Any]:
    facts = load_facts(settings)
    facts.setdefault("hostname", host)
    facts.setdefault("address", addr)
    return facts


def load_facts(settings: Settings) -> dict[str, Any]:
    try:
        data = json.loads(settings.host_facts_path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        from hypervisor.hostfacts import probe_host

        try:
            return probe_host(settings.state_dir).to_dict()  # type: ignore[call-arg]
        except Exception:  # noqa: BLE001 - facts are informative; the host still registers
            LOG.warning("host facts unavailable; registering with what is known")
            return {"hostname": socket.gethostname(), "cpus": os.cpu_count() or 1}
