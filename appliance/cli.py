"""`lab`: the Pacific Lab command line.

Every command fails with a non-zero exit and one readable line on bad input.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import requests
from rich.console import Console

from appliance import errors, kubeconfig
from appliance.settings import Settings, load_settings

console = Console(stderr=True)
out = Console(soft_wrap=True, highlight=False)

SERVICE_NAME = "pacific-lab"


def _settings() -> Settings:
    try:
        return load_settings()
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"bad settings: {exc}") from exc


def _pidfile(s: Settings) -> Path:
    return s.run_dir / "host-service.pid"


def _logfile(s: Settings) -> Path:
    return s.log_dir / "host-service.log"


def _keeper_state(s: Settings) -> Path:
    """What the keeper (``appliance.keeper``) says of the service it respawns."""
    return s.run_dir / "host-service.keeper.json"


class LabGroup(click.Group):
    """Commands whose API did not answer end with one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except requests.RequestException as exc:
            raise click.ClickException(unreachable(exc)) from exc


def unreachable(exc: requests.RequestException) -> str:
    from urllib.parse import urlsplit

    url = getattr(exc.request, "url", None) or ""
    where = f" at {urlsplit(url).netloc}" if url else ""
    if isinstance(exc, requests.Timeout):
        return f"the API{where} did not answer in time; is the supervisor up? (`lab status`)"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to the API{where}; is the supervisor up? (`lab status`)"
    return f"talking to the API{where} failed: {type(exc).__name__}"


@click.group(cls=LabGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug output.")
def main(verbose: bool) -> None:
    """Pacific Lab: vSphere with Tanzu on one Linux host."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- bring up / down --------------------------------------------------------------------------


@main.command()
@click.option("--skip-host-prep", is_flag=True, help="Do not run playbooks/host.yml.")
@click.option("--timeout", default=120, show_default=True, help="Seconds to wait for the API.")
@click.option("--control-plane-vms", "control_plane_vms", type=click.Choice(["0", "1", "3"]),
              default=None, help="Run the supervisor in this many control-plane VMs behind a "
              "floating IP (0: in the host service). Moves the lab's objects; kept until "
              "changed.")
def up(skip_host_prep: bool, timeout: int, control_plane_vms: str | None) -> None:
    """Prepare this host and start the host service."""
    s = _settings()
    if not skip_host_prep:
        _prepare_host(s)
        _build_pod_kernel(s)
    _start_service(s)
    _wait_ready(s, timeout)
    if control_plane_vms is not None:
        _place_control_plane(s, int(control_plane_vms))
    else:
        _roll_control_plane(s)
    _summary(s)


def _place_control_plane(s: Settings, wanted: int) -> None:
    """Move the supervisor into ``wanted`` control-plane VMs, or back into the host."""
    from appliance.controlplane import move
    from appliance.controlplane.config import PlanError
    from appliance.controlplane.placement import PlacementError

    try:
        have = move.current_size(s)
    except PlacementError as exc:
        raise click.ClickException(str(exc)) from exc
    if wanted == have:
        if not wanted:  # what a move that did not finish declared
            try:
                move.remove_declared(s, lambda line: console.print(f"[green]✓[/] {line}"))
            except move.MoveError as exc:
                raise click.ClickException(str(exc)) from exc
        _roll_control_plane(s)
        return

    def say(line: str) -> None:
        console.print(f"[green]✓[/] {line}")

    def stop() -> None:
        _stop_service(s)

    def start() -> None:
        _start_service(s)
        _wait_ready(s, 300)

    try:
        if not wanted:
            with console.status("moving the supervisor back into the host service"):
                move.move_out(s, stop=stop, start=start, say=say)
            return
        image = subprocess.run([sys.executable, "-m", "appliance.cli", "image", "build",
                                "pacific-appliance"], env={**os.environ}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if image.returncode != 0:
            last = (image.stdout.strip().splitlines() or ["no output"])[-1]
            raise click.ClickException(f"building the pacific-appliance image failed: {last}")
        if have:
            # etcd's and Patroni's clusters are formed for their size at first boot: another
            # size is another control plane, so the store goes through the host service.
            say(f"resizing from {have} to {wanted} control-plane VMs goes through the host "
                "service: moving back first")
            with console.status("moving the supervisor back into the host service"):
                move.move_out(s, stop=stop, start=start, say=say)
        with console.status(f"moving the supervisor into {wanted} control-plane VM(s)"):
            move.move_in(s, wanted, stop=stop, start=start, say=say)
    except (move.MoveError, PlanError, PlacementError) as exc:
        raise click.ClickException(str(exc)) from exc


def _roll_control_plane(s: Settings) -> None:
    """When the supervisor runs in control-plane VMs: bring them to this checkout's code,
    one VM at a time (``appliance.controlplane.upgrade``)."""
    from appliance.controlplane import move, upgrade
    from appliance.controlplane.config import PlanError
    from appliance.controlplane.placement import PlacementError

    try:
        if not move.current_size(s):
            return
        with console.status("comparing the control-plane VMs' code with this checkout"):
            rolled = upgrade.roll_lab(s, lambda line: console.print(f"[green]✓[/] {line}"))
    except (move.MoveError, PlanError, PlacementError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not rolled:
        console.print("[green]✓[/] the control-plane VMs run this checkout's code")


def _prepare_host(s: Settings) -> None:
    from appliance.hostprep import prepare_host

    with console.status("preparing the host (packages, libvirt, Open vSwitch)") as status:
        def on_event(ev: Any) -> None:
            task = getattr(ev, "task", None)
            if task:
                status.update(f"preparing the host: {task}")
        try:
            facts = prepare_host(s, on_event=on_event)
        except Exception as exc:
            raise click.ClickException(f"host preparation failed: {exc}") from exc
    accel = facts.get("accelerator", "?") if isinstance(facts, dict) else "?"
    console.print(f"[green]✓[/] host prepared ({accel}, OVS datapath "
                  f"{facts.get('ovs_datapath', '?') if isinstance(facts, dict) else '?'})")


def _build_pod_kernel(s: Settings) -> str:
    """Build the pod kernel once (cached by its inputs). Returns "" when it is there, else
    the one-line reason it is not (pod VMs then boot Debian's kernel; said here, and
    logged by the host service when it starts a pod)."""
    from rich.markup import escape

    from hypervisor.podvm.kernelbuild import KernelBuildError, build_pod_kernel, cached_pod_kernel

    cache = s.cache_dir / "pod-kernel"
    try:
        built = cached_pod_kernel(cache, source_dir=s.pod_kernel_source_dir)
        if built is None:
            started = time.monotonic()
            with _progress_bar() as progress:
                task = progress.add_task("building the pod kernel (once)", total=100)
                built = build_pod_kernel(cache, source_dir=s.pod_kernel_source_dir,
                                         progress=_on_progress(progress, task))
                progress.update(task, completed=100, description="built the pod kernel")
            console.print(f"[green]✓[/] pod kernel {built.release} built in "
                          f"{time.monotonic() - started:.0f} s (key {built.key})")
            if s.host_facts_path.is_file():
                _reprobe_host(s)  # KVM is trusted only if it boots this kernel
        else:
            console.print(f"[green]✓[/] pod kernel {built.release} (cached, key {built.key})")
        return ""
    except (KernelBuildError, OSError) as exc:
        console.print(f"[yellow]![/] pod VMs will boot the distro kernel: {escape(str(exc))}")
        return str(exc)


def _reprobe_host(s: Settings) -> None:
    """Record the host facts again, as ``host.yml`` does, now that the Linux probe boots
    the pod kernel."""
    with console.status("probing the host again with the pod kernel"):
        done = subprocess.run(
            [sys.executable, "-m", "hypervisor.hostfacts", "--out", str(s.host_facts_path),
             "--disk-path", str(s.state_dir), "--pod-kernel-cache",
             str(s.cache_dir / "pod-kernel")],
            cwd=s.project_root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise click.ClickException(f"probing the host failed: {lines[-1] if lines else done.returncode}")


def _service_argv() -> list[str]:
    return [sys.executable, "-m", "appliance.cli", "serve"]


def _service_env(s: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("LAB_")}
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:" \
                  f"/usr/bin:/sbin:/bin"
    env["LAB_STATE_DIR"] = str(s.state_dir)
    env["HOME"] = os.environ.get("HOME", "/root")
    env["PYTHONPATH"] = str(s.project_root)
    return env


def _code_file(s: Settings) -> Path:
    """The checkout code (``_checkout_code``) the running host service was started with."""
    return s.run_dir / "host-service.code"


def _start_service(s: Settings) -> None:
    """Start the host service, or leave it running; restart it when this checkout's code
    is not the code it was started with (``lab up`` after a ``git pull``)."""
    from appliance import daemon
    from appliance.util.files import write_atomic

    for d in (s.state_dir, s.log_dir, s.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    code = _checkout_code(s)
    try:
        started_with = _code_file(s).read_text().strip()
    except OSError:
        started_with = ""
    if code and started_with and code != started_with and _running(s):
        _stop_service(s)
        console.print(f"[green]✓[/] host service stopped to run this checkout's code "
                      f"({started_with} → {code})")
    write_atomic(_code_file(s), f"{code}\n".encode(), 0o644)
    if daemon.systemd_is_pid1():
        daemon.install_unit(SERVICE_NAME, _service_argv(), _service_env(s),
                            "Pacific Lab host service", templates_dir=s.templates_dir)
        console.print(f"[green]✓[/] systemd unit {SERVICE_NAME}.service running")
        return
    # Without systemd, the daemon is a keeper that starts the service again when it dies.
    keeper = [sys.executable, "-m", "appliance.keeper", str(_keeper_state(s)), "--",
              *_service_argv()]
    pid = daemon.start_daemon(keeper, _pidfile(s), _logfile(s), env=_service_env(s))
    console.print(f"[green]✓[/] host service running (kept up by pid {pid}, logs in "
                  f"{_logfile(s)})")


def _leader(s: Settings) -> str:
    """Who holds the controllers' Lease, read with the administrator's kubeconfig."""
    from appliance.errors import ApiError
    from appliance.service import LEADER_LEASE

    try:
        client, _ = _api_from_kubeconfig(str(s.admin_kubeconfig_path))
        lease = client.get(client.path("coordination.k8s.io", "v1", "leases",
                                       LEADER_LEASE[0], LEADER_LEASE[1]))
    except (ApiError, click.ClickException, requests.RequestException, OSError):
        return ""
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def _api_ready(s: Settings) -> bool:
    from appliance.controlplane.move import host_api_url

    ca = s.pki_dir / "ca.crt"
    if not ca.exists():
        return False
    session = requests.Session()
    session.trust_env = False
    try:
        return session.get(f"{host_api_url(s)}/readyz", verify=str(ca),
                           timeout=5).status_code == 200
    except requests.RequestException:
        return False
    finally:
        session.close()


def _wait_ready(s: Settings, timeout: int) -> None:
    deadline = time.monotonic() + timeout
    with console.status("waiting for the supervisor API"):
        while time.monotonic() < deadline:
            if _api_ready(s):
                return
            if not _running(s):
                raise click.ClickException(f"the host service exited; see `lab logs` "
                                           f"({_logfile(s)})")
            time.sleep(0.3)
    raise click.ClickException(f"the API did not answer within {timeout}s; see `lab logs`")


def _control_plane_status(s: Settings) -> None:
    """The control-plane VMs (when the supervisor runs in them): health, roles, and who
    holds the floating IP."""
    from appliance.controlplane.node import control_plane_summary
    from appliance.controlplane.placement import Placement
    from appliance.errors import ApiError

    placement = Placement.load(s.state_dir)
    if placement is None:
        out.print("supervisor: embedded in the host service")
        return
    out.print(f"supervisor: {placement.vms} control-plane VM(s) at {placement.api_url}")
    try:
        client, _ = _api_from_kubeconfig(str(s.admin_kubeconfig_path))
        nodes = client.get(client.path("", "v1", "nodes")).get("items") or []
    except (ApiError, click.ClickException, requests.RequestException, OSError) as exc:
        out.print(f"  cannot list the control-plane Nodes: {exc}", markup=False)
        return
    rows, holder = control_plane_summary(nodes)
    here = _checkout_code(s)
    for row in rows:
        behind = "" if row["code"] in (here, "unknown") or not here else \
            " (behind this checkout: `lab up` rolls it)"
        out.print(f"  {row['name']}: Ready={row['ready']}  database {row['database']}  "
                  f"etcd {row['etcd']}  code {row['code']}{behind}", markup=False)
    out.print(f"floating IP {placement.vip} held by {holder or 'nobody'}")


def _checkout_code(s: Settings) -> str:
    """This checkout's code as a control-plane Node reports it (``pacific.lab/code``)."""
    from hypervisor.applianceimage import files_digest, project_files
    from hypervisor.images import ImageError

    try:
        return files_digest(project_files(s.project_root))[:12]
    except (ImageError, OSError):
        return ""


def _running(s: Settings) -> bool:
    from appliance import daemon

    if daemon.systemd_is_pid1():
        return daemon.unit_active(SERVICE_NAME)
    return daemon.read_pid(_pidfile(s)) is not None


def _summary(s: Settings) -> None:
    from appliance.service import primary_address

    from appliance.controlplane.placement import Placement
    from appliance.settings import Settings as Defaults

    placement = Placement.load(s.state_dir)
    addr = s.public_host or primary_address()
    if placement:  # the control-plane VMs serve with their own (default) ports
        out.print(f"Supervisor: {placement.vms} control-plane VM(s), floating IP {placement.vip}")
        out.print(f"API:        {placement.api_url}")
        out.print(f"Dashboard:  https://{placement.vip}:{Defaults.dashboard_port}")
    else:
        out.print(f"API:        https://{addr}:{s.api_port}")
        out.print(f"Dashboard:  https://{addr}:{s.dashboard_port}")
    if s.registry_enabled and not placement:
        out.print(f"Registry:   {addr}:{s.registry_port}  (images: {addr}:{s.registry_port}"
                  "/NAMESPACE/IMAGE:TAG; `lab registry login`)")
    marker = s.run_dir / "admin-password-unshown"
    if marker.exists():
        out.print("Administrator (shown once; also kept in "
                  f"{s.admin_credentials_path}, readable by root only):")
        out.print(s.admin_credentials_path.read_text().rstrip())
        marker.unlink()
    else:
        out.print(f"Administrator credentials: {s.admin_credentials_path} (root only)")
    out.print(f"Admin kubeconfig: {s.admin_kubeconfig_path}")
    out.print(f"  export KUBECONFIG={s.admin_kubeconfig_path}")


@main.command()
def serve() -> None:
    """Run the host service in the foreground (used by `lab up`)."""
    from appliance.service import HostService

    logging.getLogger().setLevel(logging.INFO)
    s = _settings()
    HostService(s).run_forever()


def _stop_service(s: Settings) -> bool:
    """Stop the host service; False if it was not running."""
    from appliance import daemon

    if daemon.systemd_is_pid1():
        daemon.stop_unit(SERVICE_NAME)
        return True
    return bool(daemon.stop_daemon(_pidfile(s)))


@main.command()
def down() -> None:
    """Stop the host service."""
    s = _settings()
    if _stop_service(s):
        console.print("[green]✓[/] host service stopped")
    else:
        console.print("host service was not running")
    if s.network_enabled:
        # The next start configures every namespace again from the store.
        from appliance.network.controllers import NetworkConfigError, remove_host_network

        try:
            remove_host_network(s)
        except NetworkConfigError as exc:
            raise click.ClickException(f"removing the namespace networks: {exc}") from exc
        console.print("[green]✓[/] namespace networks removed from this host")


@main.command()
def status() -> None:
    """Show whether the host service runs and what the host is."""
    from appliance.controlplane.move import host_api_url
    from appliance.controlplane.placement import Placement
    from appliance.registry import registry_host
    from appliance.service import load_facts

    s = _settings()
    running = _running(s)
    out.print(f"host service: {'running' if running else 'stopped'}")
    if running:
        _keeper_status(s)
        _host_daemons_status(s)
    ready = running and _api_ready(s)
    if running:
        out.print(f"API: {'ready' if ready else 'not ready'} ({host_api_url(s)})")
    if ready:
        out.print(f"controllers: led by {_leader(s) or 'nobody yet'}")
        _control_plane_status(s)
        if s.registry_enabled and not Placement.load(s.state_dir):
            out.print(f"registry: {registry_host(s)}")
    facts = load_facts(s) if s.host_facts_path.exists() else {}
    if facts:
        out.print(f"accelerator: {facts.get('accelerator')}  OVS datapath: "
                  f"{facts.get('ovs_datapath')}  CPUs: {facts.get('cpus')}  memory: "
                  f"{int(facts.get('memory_bytes') or 0) // 2**20} MiB")
        if facts.get("kvm_error"):
            out.print(f"KVM not used: {facts['kvm_error']}", markup=False, highlight=False)
    if not running:
        sys.exit(3)


def _keeper_status(s: Settings) -> None:
    """Restarts of the host service by its keeper (hosts without systemd)."""
    from appliance import keeper

    state = keeper.read_state(_keeper_state(s))
    if not state:
        return
    last = state.get("last_exit") or {}
    line = f"restarts: {state.get('restarts', 0)}"
    if last:
        line += f" (last: {last.get('how')} after {last.get('ran_seconds')} s, at {last.get('at')})"
    out.print(line, markup=False, highlight=False)
    if state.get("crash_loop"):
        out.print(f"crash loop: the host service keeps dying; the keeper waits "
                  f"{state.get('next_start_in') or 0:.0f} s between starts; see `lab logs`",
                  markup=False, highlight=False)


def _host_daemons_status(s: Settings) -> None:
    """Restarts of libvirt's and Open vSwitch's daemons by the host service (hosts without
    systemd: ``appliance.hostdaemons``)."""
    from appliance import hostdaemons

    state = hostdaemons.read_state(s)
    if not state:
        return
    counts = ", ".join(f"{name} {n}" for name, n in sorted((state.get("restarts") or {}).items()))
    last = state.get("last") or {}
    line = f"host daemons restarted: {counts or 'none'}"
    if last:
        line += f" (last: {', '.join(last.get('daemons') or [])} at {last.get('at')}, " \
                f"{last.get('seconds')} s)"
    out.print(line, markup=False, highlight=False)
    if last.get("error"):
        out.print(f"host daemons: the last start failed: {last['error']}; see `lab logs`",
                  markup=False, highlight=False)


@main.command()
@click.option("-f", "--follow", is_flag=True)
@click.option("-n", "--lines", default=50, show_default=True)
def logs(follow: bool, lines: int) -> None:
    """Show the host service's log."""
    from appliance import daemon

    s = _settings()
    if daemon.systemd_is_pid1():
        cmd = ["journalctl", "-u", SERVICE_NAME, "-n", str(lines)] + (["-f"] if follow else [])
        sys.exit(subprocess.call(cmd))
    try:
        for line in daemon.follow_log(_logfile(s), lines=lines, follow=follow):
            out.print(line, markup=False, highlight=False)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--user", "user_name", default="", help="Only requests by this user.")
@click.option("--namespace", "-n", default="", help="Only requests on objects in NAMESPACE.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new requests.")
@click.option("--json", "as_json", is_flag=True, help="The Events as JSON lines.")
def audit(user_name: str, namespace: str, follow: bool, as_json: bool) -> None:
    """Who did what: the audit log of the API, the dashboard and the CLI (time, user,
    source address, client, verb, object, answer's code)."""
    import itertools
    import json as json_module

    from appliance import audit as audit_log

    log_dir = _settings().log_dir
    lines: Any = itertools.chain.from_iterable(
        p.open(errors="replace") for p in audit_log.files(log_dir))
    if follow:
        lines = itertools.chain(lines, audit_log.follow(log_dir / audit_log.FILE_NAME))
    try:
        for event in audit_log.events(lines):
            if audit_log.matches(event, user_name, namespace):
                text = json_module.dumps(event) if as_json else audit_log.describe(event)
                out.print(text, markup=False, highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        pass


# -- access ------------------------------------------------------------------------------------


@main.command()
@click.option("--server", required=True, help="Supervisor API URL, e.g. https://lab:6443")
@click.option("-u", "--username", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--insecure-skip-tls-verify", is_flag=True)
@click.option("--ca-file", type=click.Path(dir_okay=False, exists=True))
@click.option("--kubeconfig", "kubeconfig_path", type=click.Path(dir_okay=False),
              default=lambda: os.environ.get("KUBECONFIG", "").split(":")[0] or
              str(Path.home() / ".kube" / "config"))
def login(server: str, username: str, password_stdin: bool, insecure_skip_tls_verify: bool,
          ca_file: str | None, kubeconfig_path: str) -> None:
    """Log in like `kubectl vsphere login`: a token and a context per namespace."""
    from appliance.client import ApiClient

    server = server.rstrip("/")
    if not server.startswith("https://"):
        raise click.ClickException("--server must be an https:// URL")
    password = sys.stdin.readline().rstrip("\n") if password_stdin else \
        (os.environ.get("LAB_PASSWORD") or getpass.getpass(f"Password for {username}: "))
    if not ca_file and not insecure_skip_tls_verify:
        local_ca = _settings().pki_dir / "ca.crt"
        if local_ca.exists():  # on the lab host itself: trust the supervisor's own CA
            ca_file = str(local_ca)
    client = ApiClient(server, ca_file=ca_file)
    if insecure_skip_tls_verify:
        client.session.verify = False
        import urllib3

        urllib3.disable_warnings()
    try:
        reply = client.login(username, password)
    except errors.ApiError as err:
        raise click.ClickException(f"login failed: {err.message}") from err
    except requests.exceptions.SSLError as exc:
        raise click.ClickException(
            f"the certificate of {server} is not trusted: pass --ca-file with the supervisor "
            f"CA (GET {server}/ca.crt, or pki/ca.crt in the lab's state directory) or "
            f"--insecure-skip-tls-verify") from exc
    except requests.RequestException as exc:
        raise click.ClickException(f"cannot reach {server}: {exc.__class__.__name__}") from exc
    ca_pem = Path(ca_file).read_bytes() if ca_file else None
    namespaces = list(reply.get("namespaces") or [])
    config = kubeconfig.build(server, reply["user"], reply["token"], namespaces, ca_pem,
                              insecure=insecure_skip_tls_verify)
    path = Path(kubeconfig_path)
    kubeconfig.write(path, kubeconfig.merge(kubeconfig.load(path), config))
    out.print(f"Logged in as {reply['user']} (token expires {reply['expiresAt']}).")
    if namespaces:
        out.print("You have access to these contexts:")
        for ns in namespaces:
            out.print(f"   {ns}")
        out.print(f"Switch with: kubectl config use-context {namespaces[0]}")
    else:
        out.print("You have no namespaces yet; ask an administrator to grant you one.")


@main.command("kubeconfig")
@click.argument("ref", metavar="[NAMESPACE/CLUSTER]", required=False)
@click.option("--admin", is_flag=True, help="Print the path of the administrator's kubeconfig.")
@click.option("--kubeconfig", "kubeconfig_path", default=None,
              help="The supervisor kubeconfig to use (default: KUBECONFIG or ~/.kube/config).")
def kubeconfig_cmd(ref: str | None, admin: bool, kubeconfig_path: str | None) -> None:
    """Print a guest cluster's kubeconfig (editors and owners), or with --admin the path
    of the supervisor administrator's kubeconfig."""
    import base64

    if admin:
        s = _settings()
        if not s.admin_kubeconfig_path.exists():
            raise click.ClickException("no admin kubeconfig yet: run `lab up` first")
        out.print(str(s.admin_kubeconfig_path))
        return
    if not ref:
        raise click.ClickException("name a cluster (lab kubeconfig NAMESPACE/CLUSTER) or use "
                                   "--admin")
    client, default_ns = _api_from_kubeconfig(kubeconfig_path)
    ns, name = _split_ref(ref, default_ns)
    try:
        secret = client.get(client.path("", "v1", "secrets", ns, f"{name}-kubeconfig"))
    except errors.ApiError as err:
        if err.code == 404:
            raise click.ClickException(f"cluster {ns}/{name} has no kubeconfig yet (is its "
                                       "endpoint ready?)") from err
        raise click.ClickException(err.message) from err
    sys.stdout.write(base64.b64decode((secret.get("data") or {}).get("value", "")).decode())


# -- users -------------------------------------------------------------------------------------


@main.group()
def user() -> None:
    """Manage supervisor users (run on the lab host, as root)."""


def _open_supervisor() -> Any:
    from appliance.service import Supervisor

    return Supervisor.open(_settings())


def _audited(verb: str, resource: str, group: str = "", *, name: str = "name",
             namespace: str = "") -> Any:
    """Write an audit Event (``appliance.audit``) for a CLI command that changes the lab
    without going through the API: who ran it (the Unix user; ``sudo``'s caller), the
    object from its arguments, and 200/201, or the refusal's code."""
    import functools
    import pwd

    from appliance import audit

    def wrap(command: Any) -> Any:
        @functools.wraps(command)
        def run(**params: Any) -> Any:
            code = 201 if verb == "create" else 200
            try:
                return command(**params)
            except click.ClickException as exc:
                cause = exc.__cause__
                code = cause.code if isinstance(cause, errors.ApiError) else 400
                raise
            except BaseException:
                code = 500
                raise
            finally:
                words = " ".join(str(params[k]) for k in (namespace, name) if k and params[k])
                record = audit.Request(f"lab {command.__name__.replace('_', ' ')} {words}",
                                       "", "", "lab-cli", client="cli", verb=verb,
                                       resource=resource, api_group=group)
                record.user = "unix:" + (os.environ.get("SUDO_USER") or
                                         pwd.getpwuid(os.getuid()).pw_name)
                record.name = str(params.get(name) or "")
                record.namespace = str(params.get(namespace) or "") if namespace else ""
                audit.AuditLog(_settings().log_dir).write(record.event(code))
        return run
    return wrap


@user.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True)
@click.option("--admin", is_flag=True, help="Make the user a supervisor administrator.")
@_audited("create", "users", "pacific.lab")
def user_add(name: str, password_stdin: bool, admin: bool) -> None:
    from appliance.auth import users

    password = sys.stdin.readline().rstrip("\n") if password_stdin else \
        getpass.getpass(f"Password for {name}: ")
    sup = _open_supervisor()
    try:
        with sup.store.write() as txn:
            users.create_user(txn.session, name, password, [users.ADMINS] if admin else [])
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"[green]✓[/] user {name} created")


@user.command("list")
def user_list() -> None:
    from appliance.auth import users

    sup = _open_supervisor()
    with sup.store.read() as txn:
        for u in users.list_users(txn.session):
            out.print(f"{u.name}\t{','.join(u.groups) or '-'}")


@user.command("delete")
@click.argument("name")
@_audited("delete", "users", "pacific.lab")
def user_delete(name: str) -> None:
    from appliance.auth import users

    sup = _open_supervisor()
    try:
        with sup.store.write() as txn:
            users.delete_user(txn.session, name)
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"[green]✓[/] user {name} deleted")


@main.command()
@click.argument("namespace")
@click.argument("username")
@click.argument("role", type=click.Choice(["owner", "edit", "view"]))
@_audited("create", "rolebindings", "rbac.authorization.k8s.io", name="username",
          namespace="namespace")
def grant(namespace: str, username: str, role: str) -> None:
    """Give USERNAME the vSphere role ROLE in NAMESPACE."""
    from appliance.auth import bootstrap
    from appliance.objects import SYSTEM

    sup = _open_supervisor()
    try:
        bootstrap.grant(sup.service, SYSTEM, namespace, username, role)
    except errors.ApiError as err:
        raise click.ClickException(err.message) from err
    console.print(f"[green]✓[/] {username} can {role} in {namespace}")


# -- reaching VMs -------------------------------------------------------------------------------


def _api_from_kubeconfig(kubeconfig_path: str | None) -> tuple[Any, str]:
    """An ApiClient for the current kubeconfig context (KUBECONFIG or ~/.kube/config)."""
    import tempfile

    from appliance.client import ApiClient

    path = Path(kubeconfig_path or os.environ.get("KUBECONFIG", "").split(":")[0] or
                Path.home() / ".kube" / "config")
    try:
        ctx = kubeconfig.current(path)
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"no usable kubeconfig ({exc}); run `lab login` first") \
            from exc
    ca_file = None
    if ctx["ca_pem"]:
        fd, ca_file = tempfile.mkstemp(prefix="lab-ca-", suffix=".crt")
        with os.fdopen(fd, "wb") as fh:
            fh.write(ctx["ca_pem"])
    client = ApiClient(ctx["server"], ctx["token"], ca_file)
    if ctx["insecure"]:
        client.session.verify = False
    return client, ctx["namespace"]


def _split_ref(ref: str, default_ns: str) -> tuple[str, str]:
    ns, _, name = ref.rpartition("/")
    return (ns or default_ns), name


@main.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("kind", type=click.Choice(["vm", "cluster"]))
@click.argument("ref", metavar="NAMESPACE/NAME")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--kubeconfig", "kubeconfig_path", default=None)
def ssh_cmd(kind: str, ref: str, command: tuple[str, ...], kubeconfig_path: str | None) -> None:
    """SSH into a VM, or into a node of a guest cluster (needs edit on its namespace).

    \b
    lab ssh vm NAMESPACE/VM [-- COMMAND]
    lab ssh cluster NAMESPACE/CLUSTER [NODE] [-- COMMAND]

    A VM is reached as the appliance's user with the key in Secret <vm>-ssh-key; a
    cluster's node as vmware-system-user with the cluster's key (Secret <cluster>-ssh).
    """
    import base64

    from appliance.agent.vms import SSH_USER
    from appliance.clusters.objects import NODE_USER, SSH_SUFFIX, VM_CLUSTER, VM_ROLE
    from appliance.controllers.scheduler import SSH_KEY_SECRET_SUFFIX

    client, default_ns = _api_from_kubeconfig(kubeconfig_path)
    ns, name = _split_ref(ref, default_ns)
    vms = client.path("vmoperator.vmware.com", "v1alpha5", "virtualmachines", ns)
    try:
        if kind == "vm":
            vm = client.get(f"{vms}/{name}")
            secret = client.get(client.path("", "v1", "secrets", ns, name + SSH_KEY_SECRET_SUFFIX))
            user = SSH_USER
        else:
            client.get(client.path("cluster.x-k8s.io", "v1beta1", "clusters", ns, name))
            secret = client.get(client.path("", "v1", "secrets", ns, name + SSH_SUFFIX))
            nodes = sorted(client.get(vms, labelSelector=f"{VM_CLUSTER}={name}")["items"],
                           key=lambda v: ((v["metadata"].get("labels") or {}).get(VM_ROLE) !=
                                          "controlplane", v["metadata"]["name"]))
            if not nodes:
                raise click.ClickException(f"cluster {ns}/{name} has no nodes yet")
            node_args, command = _node_and_command(command)
            wanted = node_args[0] if node_args else ""
            vm = next((v for v in nodes if v["metadata"]["name"] == wanted), None) \
                if wanted else nodes[0]
            if vm is None:
                known_nodes = ", ".join(v["metadata"]["name"] for v in nodes)
                raise click.ClickException(f"cluster {ns}/{name} has no node {wanted!r} "
                                           f"(nodes: {known_nodes})")
            user = NODE_USER
    except errors.ApiError as err:
        raise click.ClickException(err.message) from err
    _ssh_into(vm, user, base64.b64decode(secret["data"]["ssh-privatekey"]).decode(), command)


def _node_and_command(args: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split ``[NODE] [-- COMMAND]``: what stands before ``--`` names the node; with no
    ``--``, the first word does and the rest is the command."""
    argv = sys.argv[1:]
    if "--" in argv:
        after = len(argv) - argv.index("--") - 1
        args = tuple(a for a in args if a != "--") if args.count("--") else args
        return args[:len(args) - after], args[len(args) - after:]
    return args[:1], args[1:]


def _ssh_into(vm: dict[str, Any], user: str, key: str, command: tuple[str, ...]) -> None:
    from hypervisor import ssh

    meta = vm["metadata"]
    address = ((vm.get("status") or {}).get("network") or {}).get("primaryIP4")
    if not address:
        raise click.ClickException(f"VM {meta['namespace']}/{meta['name']} has no address yet "
                                   "(is it Ready?)")
    # Addresses are reused by later VMs: pin host keys per VM (by uid), not per address.
    known = Path.home() / ".config" / "pacific-lab" / "known_hosts.d" / meta["uid"]
    known.parent.mkdir(parents=True, exist_ok=True)
    try:
        if command:
            rc, stdout, stderr = ssh.run_command(address, user, key, " ".join(command), 300,
                                                 known_hosts=known)
            sys.stdout.write(stdout)
            sys.stderr.write(stderr)
            sys.exit(rc)
        sys.exit(ssh.interactive_shell(address, user, key, known_hosts=known) or 0)
    except ssh.SshError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("console")
@click.argument("ref", metavar="NAMESPACE/NAME")
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", default=0, help="Only the last N lines.")
@click.option("--kubeconfig", "kubeconfig_path", default=None)
def console_cmd(ref: str, follow: bool, tail: int, kubeconfig_path: str | None) -> None:
    """Show (and follow) a VM's serial console, through the API."""
    client, default_ns = _api_from_kubeconfig(kubeconfig_path)
    ns, name = _split_ref(ref, default_ns)
    path = client.path("vmoperator.vmware.com", "v1alpha5", "virtualmachines", ns, name,
                       "console")
    params = {"follow": "true" if follow else "false", "tailLines": str(tail)}
    with client.session.get(client.server + path, params=params, stream=True,
                            timeout=(30, None)) as resp:
        if resp.status_code >= 400:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise click.ClickException(message)
        try:
            for chunk in resp.iter_content(chunk_size=None):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass


# -- VM classes and the content library ----------------------------------------------------------


@main.group("class")
def class_group() -> None:
    """VM classes: the catalog and their assignment to namespaces."""


@class_group.command("list")
def class_list() -> None:
    from appliance.vmservice.catalog import Catalog

    for name in Catalog(_open_supervisor().service).class_names():
        out.print(name)


@class_group.command("assign")
@click.argument("name")
@click.argument("namespace")
@_audited("create", "virtualmachineclassbindings", "vmoperator.vmware.com", namespace="namespace")
def class_assign(name: str, namespace: str) -> None:
    """Let VMs in NAMESPACE use class NAME."""
    from appliance.objects import SYSTEM
    from appliance.vmservice.catalog import Catalog

    try:
        Catalog(_open_supervisor().service).assign_class(SYSTEM, name, namespace)
    except errors.ApiError as err:
        raise click.ClickException(err.message) from err
    console.print(f"[green]✓[/] class {name} assigned to {namespace}")


@main.group("image")
def image_group() -> None:
    """The content library: build, import and assign VM images."""


def _publish(files: Any) -> None:
    from appliance.vmservice.catalog import Catalog

    Catalog(_open_supervisor().service).publish_image(
        files.name, display_name=files.name, capacity_bytes=files.capacity_bytes,
        size_bytes=files.size_bytes, sha256=files.sha256, os_name=files.os_name,
        os_version=files.os_version, content_version=files.sha256[:12])


def _progress_bar() -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
        "{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=console)


def _on_progress(progress: Any, task: Any) -> Any:
    def update(event: Any) -> None:
        phase = getattr(event, "phase", None) or getattr(event, "message", None) or "working"
        fraction = getattr(event, "fraction", None)
        progress.update(task, description=str(phase),
                        completed=(fraction * 100) if fraction is not None else None)
    return update


@main.group("pod-kernel")
def pod_kernel_group() -> None:
    """The kernel pod VMs boot: built once from Debian's linux-source, else Debian's own."""


@pod_kernel_group.command("build")
def pod_kernel_build() -> None:
    """Build the pod kernel (cached under the cache directory by its inputs)."""
    why = _build_pod_kernel(_settings())
    if why:
        raise click.ClickException(f"the pod kernel was not built: {why}")


@pod_kernel_group.command("status")
def pod_kernel_status() -> None:
    """Which kernel pod VMs boot now, and why."""
    from hypervisor.podvm.kernelbuild import pod_kernel_choice

    s = _settings()
    choice = pod_kernel_choice(s.cache_dir / "pod-kernel", source_dir=s.pod_kernel_source_dir)
    if choice.built is None:
        click.echo(f"pod VMs boot the distro kernel: {choice.reason}")
    else:
        click.echo(f"pod VMs boot {choice.reason}: {choice.built.vmlinux}")


@image_group.command("build")
@click.argument("name")
@click.option("--force", is_flag=True, help="Rebuild even if a cached build exists.")
def image_build(name: str, force: bool) -> None:
    """Build image NAME and publish it: debian-12, or pacific-appliance (the image of the
    supervisor's control-plane VMs)."""
    from appliance.vmservice.library import LibraryError, build

    s = _settings()
    try:
        with _progress_bar() as progress:
            task = progress.add_task("building", total=100)
            files = build(s, name, force=force, progress=_on_progress(progress, task))
            progress.update(task, completed=100, description="built")
    except (LibraryError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"image build failed: {exc}") from exc
    _publish(files)
    console.print(f"[green]✓[/] {name} published (sha256 {files.sha256[:16]}…)")


@image_group.command("import")
@click.argument("source")
@click.option("--name", required=True, help="Name of the library item.")
@click.option("--allow-private", is_flag=True,
              help="Allow URLs that point at private, loopback or this host's addresses.")
def image_import(source: str, name: str, allow_private: bool) -> None:
    """Import a qcow2 or raw image from a file or an https:// URL and publish it."""
    from appliance.vmservice.library import LibraryError, import_image

    s = _settings()
    try:
        with _progress_bar() as progress:
            task = progress.add_task("importing", total=100)
            files = import_image(s, source, name, allow_private=allow_private,
                                 progress=_on_progress(progress, task))
            progress.update(task, completed=100, description="imported")
    except (LibraryError, ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"image import failed: {exc}") from exc
    _publish(files)
    console.print(f"[green]✓[/] {name} published (sha256 {files.sha256[:16]}…)")


@image_group.command("assign")
@click.argument("name")
@click.argument("namespace")
@_audited("create", "virtualmachineimages", "vmoperator.vmware.com", namespace="namespace")
def image_assign(name: str, namespace: str) -> None:
    """Publish image NAME into NAMESPACE as a VirtualMachineImage."""
    from appliance.objects import SYSTEM
    from appliance.vmservice.catalog import Catalog

    try:
        Catalog(_open_supervisor().service).assign_image(SYSTEM, name, namespace)
    except errors.ApiError as err:
        raise click.ClickException(err.message) from err
    console.print(f"[green]✓[/] image {name} assigned to {namespace}")


@main.group("tkr")
def tkr_group() -> None:
    """Kubernetes releases: node images published as TanzuKubernetesReleases."""


@tkr_group.command("build")
@click.argument("version")
@click.option("--from", "from_dir", type=click.Path(path_type=Path), default=None,
              help="A directory of release files (.deb files, release tarballs or binaries, "
                   "each with a checksum) instead of the Kubernetes package repository.")
@click.option("--force", is_flag=True, help="Rebuild even if a cached build exists.")
def tkr_build(version: str, from_dir: Path | None, force: bool) -> None:
    """Build the node image of Kubernetes VERSION (v1.MINOR.PATCH) and publish its release."""
    from appliance.vmservice import tkr

    s = _settings()
    try:
        parsed = tkr.parse(version)
        service = _open_supervisor().service
        with _progress_bar() as progress:
            task = progress.add_task("finding Kubernetes binaries", total=100)
            result = tkr.build_release(s, service, parsed, from_dir, force,
                                       _on_progress(progress, task))
            progress.update(task, completed=100 if result.ready else 0,
                            description="done" if result.ready else "no node image built")
    except tkr.ReleaseError as exc:
        raise click.ClickException(str(exc)) from exc
    if not result.ready:
        raise click.ClickException(result.message)
    image = f" (node image {result.image.name})" if result.image else ""
    console.print(f"[green]✓[/] {result.names.release} ready{image}")


@tkr_group.command("import")
@click.argument("version")
@click.option("--image", required=True,
              help="A node image already in the content library (see `lab image import`).")
def tkr_import(version: str, image: str) -> None:
    """Publish the release of Kubernetes VERSION for a node image you brought."""
    from appliance.vmservice import tkr

    try:
        result = tkr.import_release(_open_supervisor().service, tkr.parse(version), image)
    except tkr.ReleaseError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"[green]✓[/] {result.names.release} ready (node image {image})")


@tkr_group.command("list")
def tkr_list() -> None:
    """Releases with their readiness (as `kubectl get tkr`)."""
    from appliance.vmservice import tkr

    for release in tkr.list_releases(_open_supervisor().service):
        ready = tkr.condition(release, "Ready")
        click.echo(f"{release['metadata']['name']}\t{release['spec']['version']}\t"
                   f"{ready.get('status', 'Unknown')}\t{ready.get('message', '')}".rstrip())


# -- the lab registry ----------------------------------------------------------------------------


@main.group("registry")
def registry_group() -> None:
    """The lab registry: its address, and credentials for skopeo, podman and docker."""


def _registry_kubeconfig(kubeconfig_path: str | None) -> Path:
    return Path(kubeconfig_path or os.environ.get("KUBECONFIG", "").split(":")[0] or
                Path.home() / ".kube" / "config")


def _registry_info(kubeconfig_path: str | None) -> tuple[Any, Any]:
    """The current kubeconfig context and ``GET /registry`` as its user."""
    from appliance.registry.login import RegistryLoginError, fetch_info, read_context

    try:
        ctx = read_context(_registry_kubeconfig(kubeconfig_path))
        return ctx, fetch_info(ctx)
    except RegistryLoginError as exc:
        raise click.ClickException(str(exc)) from exc


def _registry_host(kubeconfig_path: str | None) -> str:
    """``HOST:PORT`` from the API; on the lab host with no usable kubeconfig (no file,
    no context, no token), the host's own settings say it."""
    from appliance.registry import registry_host
    from appliance.registry.login import RegistryLoginError, fetch_info, read_context

    problem = ""
    try:
        ctx = read_context(_registry_kubeconfig(kubeconfig_path))
    except RegistryLoginError as exc:
        ctx, problem = None, str(exc)
    if ctx is None or not ctx.token:
        s = _settings()
        if (s.pki_dir / "ca.crt").exists():  # on the lab host itself
            if not s.registry_enabled:
                raise click.ClickException("the lab registry is disabled (registry_enabled)")
            return registry_host(s)
        if ctx is None:
            raise click.ClickException(problem)
    try:
        return fetch_info(ctx).host
    except RegistryLoginError as exc:
        raise click.ClickException(str(exc)) from exc


def _registry_files(authfile: str | None, docker_config: str | None,
                    certs_dirs: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """The auth files and certs directories: the options, else the usual places."""
    from appliance.registry import login as reg

    home = Path.home()
    auth_files = [Path(authfile) if authfile else reg.containers_auth_file(os.environ, home),
                  reg.docker_config_file(os.environ, home,
                                         Path(docker_config) if docker_config else None)]
    dirs = [Path(d) for d in certs_dirs] or \
        reg.default_certs_dirs(os.environ, home, os.geteuid() == 0)
    return auth_files, dirs


def _registry_file_options(f: Any) -> Any:
    f = click.option("--kubeconfig", "kubeconfig_path", default=None, metavar="PATH",
                     help="The supervisor kubeconfig (default: KUBECONFIG or ~/.kube/config).")(f)
    f = click.option("--certs-dir", "certs_dirs", multiple=True, metavar="DIR",
                     help="Where the lab CA goes as HOST:PORT/ca.crt; repeatable (default: "
                          "/etc/containers/certs.d and /etc/docker/certs.d as root, else "
                          "${XDG_CONFIG_HOME:-~/.config}/containers/certs.d).")(f)
    f = click.option("--docker-config", metavar="PATH", default=None,
                     help="Docker's config.json, or its directory (default: "
                          "${DOCKER_CONFIG:-~/.docker}/config.json).")(f)
    return click.option("--authfile", metavar="PATH", default=None,
                        help="The containers auth file (default: $REGISTRY_AUTH_FILE, else "
                             "${XDG_CONFIG_HOME:-~/.config}/containers/auth.json).")(f)


@registry_group.command("url", short_help="Print the registry's HOST:PORT.")
@click.option("--kubeconfig", "kubeconfig_path", default=None, metavar="PATH",
              help="The supervisor kubeconfig (default: KUBECONFIG or ~/.kube/config).")
def registry_url(kubeconfig_path: str | None) -> None:
    """Print the registry's HOST:PORT (push to HOST:PORT/NAMESPACE/IMAGE:TAG)."""
    click.echo(_registry_host(kubeconfig_path))


@registry_group.command("login", short_help="Store credentials for skopeo, podman, docker.")
@_registry_file_options
def registry_login(authfile: str | None, docker_config: str | None,
                   certs_dirs: tuple[str, ...], kubeconfig_path: str | None) -> None:
    """Let skopeo, podman and docker use the registry as you (your `lab login` token).

    The credentials last as long as the token: after the next `lab login`, run this again."""
    from appliance.registry.login import RegistryLoginError, login_files

    ctx, info = _registry_info(kubeconfig_path)
    auth_files, dirs = _registry_files(authfile, docker_config, certs_dirs)
    try:
        written, warnings = login_files(auth_files, dirs, info, ctx.token, ctx.ca_pem)
    except RegistryLoginError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename}: {exc.strerror}") from exc
    for path in written:
        click.echo(f"wrote {path}")
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if not ctx.ca_pem:
        click.echo("warning: the kubeconfig has no certificate authority; no ca.crt written",
                   err=True)


@registry_group.command("logout", short_help="Remove what `lab registry login` wrote.")
@click.argument("host", metavar="[HOST:PORT]", required=False)
@_registry_file_options
def registry_logout(host: str | None, authfile: str | None, docker_config: str | None,
                    certs_dirs: tuple[str, ...], kubeconfig_path: str | None) -> None:
    """Remove what `lab registry login` wrote (the registry's entry and its ca.crt)."""
    from appliance.registry.login import RegistryLoginError, check_hostport, logout_files

    auth_files, dirs = _registry_files(authfile, docker_config, certs_dirs)
    if not host:
        try:
            host = _registry_host(kubeconfig_path)
        except click.ClickException as exc:
            raise click.ClickException(f"{exc.message} (or name the registry: "
                                       "lab registry logout HOST:PORT)") from exc
    try:
        edited, removed = logout_files(auth_files, dirs, check_hostport(host))
    except RegistryLoginError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename}: {exc.strerror}") from exc
    for path in edited:
        click.echo(f"removed {host} from {path}")
    for path in removed:
        click.echo(f"removed {path}")
    if not edited and not removed:
        click.echo(f"not logged in to {host}")


# -- Vagrant boxes -------------------------------------------------------------------------------


@main.group("box")
def box_group() -> None:
    """Vagrant boxes: `vagrant up lab` (vagrant/) boots a lab host from the box built here."""


@box_group.command("build")
@click.option("--force", is_flag=True, help="Rebuild the image and pack the box again.")
@click.option("--user", "user_name", default=None,
              help="Add the box to this user's Vagrant and hand them the key pair "
                   "(default: the user who ran sudo, else this one).")
@click.option("--no-add", is_flag=True, help="Only make the box file; no `vagrant box add`.")
def box_build(force: bool, user_name: str | None, no_add: bool) -> None:
    """Build the box pacific-lab/debian-12 (cached by its inputs) and add it to Vagrant."""
    from hypervisor import boximage

    s = _settings()
    try:
        user = boximage.vagrant_user(user_name)
        started = time.monotonic()
        with _progress_bar() as progress:
            task = progress.add_task("building", total=100)
            box = boximage.build_box(s.project_root, s.cache_dir, s.state_dir / "vagrant",
                                     progress=_on_progress(progress, task), force=force,
                                     key_owner=(user.uid, user.gid))
            progress.update(task, completed=100, description="built")
        built = time.monotonic() - started
        added = False if no_add else boximage.add_box(box, user)
    except (boximage.ImageError, OSError) as exc:
        raise click.ClickException(f"box build failed: {exc}") from exc
    console.print(f"[green]✓[/] {box.name} {box.version} ({box.size_bytes // 2**20} MiB, "
                  f"{built:.0f} s): {box.path}")
    if no_add:
        console.print(f"  add it with: vagrant box add {box.catalog}")
    elif added:
        console.print(f"[green]✓[/] added to {user.vagrant_home} (user {user.name}, "
                      f"{time.monotonic() - started - built:.0f} s)")
    else:
        console.print(f"[green]✓[/] already in {user.vagrant_home} (user {user.name})")
    console.print(f"  SSH key: {box.private_key}")
    console.print(f"  next: cd {s.project_root / 'vagrant'} && vagrant up lab")


@box_group.command("list")
@click.option("--user", "user_name", default=None,
              help="Whose Vagrant to look in (default: the user who ran sudo, else this one).")
def box_list(user_name: str | None) -> None:
    """Boxes built here, and whether the user's Vagrant has them."""
    from hypervisor import boximage

    s = _settings()
    try:
        user = boximage.vagrant_user(user_name)
    except boximage.ImageError as exc:
        raise click.ClickException(str(exc)) from exc
    added = boximage.box_dirs(user.vagrant_home)
    boxes = boximage.list_boxes(s.cache_dir / "boxes")
    for box in boxes:
        state = "added" if box.version in added else "not added"
        click.echo(f"{box.name}\t{box.version}\t{box.size_bytes // 2**20} MiB\t{state}\t"
                   f"{box.path}")
    for version in sorted(set(added) - {box.version for box in boxes}):
        click.echo(f"{boximage.BOX_NAME}\t{version}\t-\tadded (no longer built here)\t"
                   f"{added[version]}")


# -- tests ---------------------------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--skip-deps", is_flag=True,
              help="Do not run playbooks/host.yml and playbooks/test-deps.yml.")
def test(pytest_args: tuple[str, ...], skip_deps: bool) -> None:
    """Prepare the host, install what the tests need, then run the suite (args go to pytest).

    The end-to-end tests boot VMs, so the host must be prepared exactly as ``lab up``
    prepares it (libvirtd, virtlogd and Open vSwitch running) before any test starts."""
    s = _settings()
    if not skip_deps:
        from appliance.ansible import run_playbook

        _prepare_host(s)
        if pytest_args:  # the whole suite builds it beside the tests (``_run_suite``)
            _build_pod_kernel(s)

        with console.status("installing test dependencies (playbooks/test-deps.yml)"):
            result = run_playbook(s, "test-deps.yml", {"lab_cache_dir": str(s.cache_dir)})
        if result.status != "successful":
            first = result.failures[0] if result.failures else None
            raise click.ClickException(
                f"test-deps.yml failed: {first.task}: {first.message}" if first else
                f"test-deps.yml failed (rc={result.rc})")
        console.print("[green]✓[/] test dependencies installed")
    if pytest_args:
        cmd = [sys.executable, "-m", "pytest", *pytest_args]
        console.print("running: " + " ".join(cmd[1:]))
        sys.exit(subprocess.call(cmd, cwd=s.project_root))
    sys.exit(_run_suite(s.project_root))


@dataclass(frozen=True)
class Tier:
    """One pytest run of the suite: what it is called, its paths, its CPU priority."""

    name: str
    paths: tuple[str, ...]
    niceness: int = 0  # added to the run's CPU niceness (a tier beside another)
    background: bool = False  # in a CPU cgroup of low weight (``_background_cgroup``)
    ignore: tuple[str, ...] = ()  # paths under ``paths`` that another tier runs

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "pytest", *self.paths,
                *(f"--ignore={path}" for path in self.ignore)]


#: The CPU cgroup of the tiers that run beside another (``Tier.background``), and its weight: a
#: quarter of a session's or of libvirt's ``machine`` group, so that it takes at most a
#: fifth of the CPU from busy VMs, and is never starved (tests of it wait on clocks too).
BACKGROUND_CGROUP = "pacific-lab-tests-beside"
BACKGROUND_SHARES = 256  # cgroup v1 cpu.shares (default 1024)
BACKGROUND_WEIGHT = 25  # cgroup v2 cpu.weight (default 100)


def _background_cgroup() -> Path | None:
    """The ``cgroup.procs`` file of a CPU cgroup of low weight, made if need be; None where
    there is no writable CPU controller.

    Niceness alone does not do this: the kernel's autogroups share the CPU between
    sessions first (every daemon a test starts has a session of its own, and libvirt's
    VMs all share its ``machine`` cgroup), so a niced tier and its servers took CPU from
    the emulated VMs of the tier beside as if at full priority. A task in a cgroup other
    than the root one is never in an autogroup: the whole tier, servers included, then
    shares the weight of its one cgroup."""
    for base, knobs in ((Path("/sys/fs/cgroup/cpu"), (("cpu.shares", str(BACKGROUND_SHARES)),)),
                        (Path("/sys/fs/cgroup"), (("cpu.weight", str(BACKGROUND_WEIGHT)),))):
        group = base / BACKGROUND_CGROUP
        try:
            if not (base / "cgroup.procs").exists() or not (
                    (base / "cpu.shares").exists() or "cpu" in (
                        base / "cgroup.controllers").read_text().split()):
                continue
            group.mkdir(exist_ok=True)
            for knob, value in knobs:
                if (group / knob).exists():
                    (group / knob).write_text(value)
                    break
            return group / "cgroup.procs"
        except OSError:
            continue
    return None


def _beside(tier: Tier, procs: Path | None) -> Any:
    """What a tier's process does before pytest starts: lower its priority."""

    def setup() -> None:
        os.nice(tier.niceness)
        if tier.background and procs is not None:
            with contextlib.suppress(OSError):
                procs.write_text(str(os.getpid()))

    return setup


#: How ``lab test`` runs the whole suite: the first tier in the foreground, the others
#: beside it, each in its own pytest process, told its place (``LAB_TEST_STREAM=i/n``) so
#: that it takes address ranges no other tier takes. Emulated VMs leave a core idle for
#: much of the end-to-end tier (waiting for boots, networks and daemons); the unit and API
#: tiers run beside it in a CPU cgroup of low weight (``_background_cgroup``), then the
#: ``vagrant up lab`` scenario, which needs nothing of the end-to-end tier's (its own
#: Vagrant home, libvirt network, names and ports; its VM in libvirt's cgroup like the
#: others). (Two halves of the end-to-end tier side by side were tried: their VMs filled
#: both cores and each half took about twice as long. A browser aborts a page load when
#: the host's addresses change: ``tests.support.hostnet`` keeps the browser test and the
#: making or removing of Vagrant's network apart.)
VAGRANT_E2E = "tests/e2e/test_vagrant.py"
#: The pod kernel's build (``lab pod-kernel build``, ~8 minutes of both cores when alone) runs
#: beside the tiers in the same low-weight cgroup, from the start: the end-to-end tier's first
#: test that boots pods (``tests/e2e/test_pod_kernel.py``, half an hour in) waits for it.
POD_KERNEL_BUILD: tuple[str, ...] = (sys.executable, "-m", "appliance.cli", "pod-kernel", "build")
POD_KERNEL_TIER = Tier("pod kernel build", (), niceness=10, background=True)
SUITE: tuple[Tier, ...] = (
    Tier("end-to-end tier", ("tests/e2e",), ignore=(VAGRANT_E2E,)),
    Tier("unit and API tiers, then vagrant up lab", ("tests/unit", "tests/api", VAGRANT_E2E),
         niceness=10, background=True),
)


def _run_suite(root: Path) -> int:
    """The tiers of :data:`SUITE` side by side. The first prints as it runs; the others
    write to ``test-artifacts/tier-<n>.log``, printed once the first is over. Non-zero
    when any tier fails."""
    artifacts = root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    first, others = SUITE[0], SUITE[1:]
    procs = _background_cgroup() if any(t.background for t in others) else None
    beside: list[tuple[Tier, subprocess.Popen[bytes], Path]] = []
    results: list[tuple[str, int]] = []
    kernel_build: subprocess.Popen[bytes] | None = None
    try:
        kernel_log = artifacts / "pod-kernel.log"
        console.print(f"running: lab pod-kernel build (beside; output in "
                      f"{kernel_log.relative_to(root)})")
        with kernel_log.open("wb") as out:
            kernel_build = subprocess.Popen(
                POD_KERNEL_BUILD, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_beside(POD_KERNEL_TIER, procs))
        for index, tier in enumerate(others, start=1):
            log = artifacts / f"tier-{index}.log"
            console.print(f"running: {' '.join(tier.argv()[1:])} (beside; output in "
                          f"{log.relative_to(root)})")
            with log.open("wb") as out:
                beside.append((tier, subprocess.Popen(
                    tier.argv(), cwd=root, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, "LAB_TEST_STREAM": f"{index}/{len(SUITE)}"},
                    preexec_fn=_beside(tier, procs)), log))
        console.print(f"running: {' '.join(first.argv()[1:])}")
        rc = subprocess.call(first.argv(), cwd=root,
                             env={**os.environ, "LAB_TEST_STREAM": f"0/{len(SUITE)}"})
        results.append((first.name, rc))
        if kernel_build.wait() != 0:  # pod VMs booted the distro kernel: say so, do not fail
            console.print("[yellow]![/] the pod kernel was not built: see "
                          f"{kernel_log.relative_to(root)}")
        for tier, proc, log in beside:
            results.append((tier.name, proc.wait()))
            sys.stdout.write(f"\n===== {tier.name} ({log.relative_to(root)}) =====\n")
            sys.stdout.write(log.read_text(errors="replace"))
            sys.stdout.flush()
    finally:
        for proc in [p for _, p, _ in beside] + ([kernel_build] if kernel_build else []):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
    for name, rc in results:
        console.print(f"{'[green]✓[/]' if rc == 0 else '[red]✗[/]'} {name}: "
                      f"{'passed' if rc == 0 else f'failed (pytest exit {rc})'}")
    return next((rc for _, rc in results if rc != 0), 0)


if __name__ == "__main__":
    main()
