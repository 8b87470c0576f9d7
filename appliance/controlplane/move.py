"""Moving a running lab into control-plane VMs and back: ``lab up --control-plane-vms N``.

Into N VMs (from the embedded supervisor):

1. the control plane's objects are declared in the embedded store
   (``appliance.controlplane.objects.declare``); the host's VM agent builds the VMs
   like any VM;
2. once they are Ready and their PostgreSQL primary answers, the host service
   stops; the embedded store is copied into PostgreSQL in one transaction
   (``appliance.store.transfer.copy_store``: same objects, uids, resourceVersions,
   users and tokens). The VMs' supervisors wait for exactly that
   (``HostService._await_store``) and start serving;
3. the SQLite files are moved aside (kept, never deleted), the host's placement
   (``appliance.controlplane.placement``) is written with tokens issued before the
   copy, the admin kubeconfig is pointed at the floating IP, and the host service
   starts again in the ``host`` role.

Back to embedded (``--control-plane-vms 0``): the host service stops, the VMs'
database is made read-only (``default_transaction_read_only``, and the
supervisors' open sessions are ended) so no write can be acknowledged after the
copy and lost; the store is copied into a new SQLite file; the host service starts
embedded and deletes the control plane's objects, and its VM agent removes the VMs.
A failed copy changes nothing: the source is still the lab's store (unsealed
again on the way back) and the host service is started as it was.

The service's lifecycle (a systemd unit or a daemon) is the caller's: ``stop``
and ``start`` are given in.
"""

from __future__ import annotations

import logging
import ssl
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from appliance import kubeconfig
from appliance.auth import bootstrap, users
from appliance.controlplane.config import (APP_DATABASE, APP_USER, SIZES, Plan, member_name,
                                           plan_for)
from appliance.controlplane.objects import CLASS_NAME, SECRET_SUFFIX, declare
from appliance.controlplane.placement import Placement
from appliance.controllers.scheduler import SYSTEM_NAMESPACE
from appliance.errors import ApiError
from appliance.kinds.vmop import GROUP, STORAGE
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.pki import Pki
from appliance.settings import Settings
from appliance.store.db import make_engine
from appliance.store.transfer import copy_store

LOG = logging.getLogger(__name__)

#: Booting the appliance image and PostgreSQL's first start take minutes under TCG.
TIMEOUT = 1800
TOKEN_TTL = 365 * 24 * 3600
NETWORK_USER = "system:pacific-lab:host-network"  # the host's network stack, in host role
MOVED_ASIDE = "moved-stores"

Say = Callable[[str], None]


class MoveError(RuntimeError):
    """The move could not be made; what was there before is still there."""


def current_size(settings: Settings) -> int:
    placement = Placement.load(settings.state_dir)
    return placement.vms if placement else 0


def host_api_url(settings: Settings) -> str:
    """Where this host's supervisor answers: the floating IP, or loopback when embedded."""
    placement = Placement.load(settings.state_dir)
    return placement.api_url if placement else f"https://127.0.0.1:{settings.api_port}"


# -- into the VMs ----------------------------------------------------------------------------


def move_in(settings: Settings, n: int, *, stop: Callable[[], None], start: Callable[[], None],
            say: Say, timeout: float = TIMEOUT) -> Placement:
    """From the running embedded supervisor into ``n`` control-plane VMs."""
    from appliance.service import Supervisor

    deadline = time.monotonic() + timeout
    pki = Pki.at(settings.pki_dir)
    sup = Supervisor.open(settings)
    try:
        plan = declare(sup.service, settings, n, pki)
        say(f"declared {n} control-plane VM(s) in {SYSTEM_NAMESPACE} "
            f"({', '.join(m.name for m in plan.members)}; floating IP {plan.vip})")
        try:
            for member in plan.members:
                _wait(f"{member.name} to be Ready",
                      lambda m=member: _vm_ready(sup.service, m.name), deadline)
            say("the control-plane VMs are Ready")
            database = _host_database_url(plan)
            _wait("the control plane's PostgreSQL primary",
                  lambda: _database_answers(database), deadline)
        except MoveError as exc:
            raise MoveError(f"{exc}; the supervisor is still embedded and the control-plane "
                            f"VMs stay declared: `lab up --control-plane-vms {n}` goes on "
                            "waiting, `lab up --control-plane-vms 0` removes them") from None
    finally:
        sup.store.engine.dispose()
    say("their PostgreSQL primary answers")
    placement, admin_token = _issue_tokens(settings, plan)
    stop()
    try:
        copied = copy_store(settings.effective_database_url, database)
    except Exception:
        start()
        raise
    say(f"moved {copied.objects} objects (resourceVersion {copied.revision}), "
        f"{copied.users} users and {copied.tokens} tokens into the control plane")
    aside = _move_sqlite_aside(settings)
    if aside:
        say(f"the embedded store is kept in {aside}")
    placement.save(settings.state_dir)
    config = kubeconfig.build(placement.api_url, bootstrap.ADMIN_USER, admin_token, [],
                              (settings.pki_dir / "ca.crt").read_bytes())
    kubeconfig.write(settings.admin_kubeconfig_path, config)
    start()
    _wait(f"the supervisor on the floating IP {plan.vip}",
          lambda: readyz(placement.api_url, settings.pki_dir / "ca.crt"), deadline)
    return placement


def _issue_tokens(settings: Settings, plan: Plan) -> tuple[Placement, str]:
    """Tokens for the host's agents, its network stack and the admin kubeconfig, issued in
    the embedded store so that the copy carries them."""
    import secrets
    import socket

    from appliance.service import host_facts
    from appliance.store.repo import Store

    engine = make_engine(settings.effective_database_url)
    try:
        store = Store(engine)
        # The host's Node name, as the host agent registers it (appliance.service.host_facts).
        node_user = "system:node:" + str(host_facts(
            settings, settings.public_host or socket.gethostname(), "")["hostname"])
        tokens = {}
        with store.write() as txn:
            for name, groups in ((node_user, [users.NODES]),
                                 (NETWORK_USER, [users.MASTERS])):
                if not users.user_exists(txn.session, name):
                    users.create_user(txn.session, name, secrets.token_urlsafe(24), groups)
                tokens[name] = users.issue_token(txn.session, name, TOKEN_TTL)[0]
            admin_token, _ = users.issue_token(txn.session, bootstrap.ADMIN_USER, TOKEN_TTL)
    finally:
        engine.dispose()
    placement = Placement(vms=plan.size, vip=plan.vip, api_port=plan.api_port,
                          node_token=tokens[node_user],
                          network_token=tokens[NETWORK_USER])
    return placement, admin_token


def _move_sqlite_aside(settings: Settings) -> Path | None:
    """The embedded SQLite files, renamed into ``moved-stores/`` (never deleted)."""
    if settings.database_url:  # an external database stays where it is
        return None
    db = settings.state_dir / "supervisor.db"
    if not db.exists():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target_dir = settings.state_dir / MOVED_ASIDE
    target_dir.mkdir(mode=0o700, exist_ok=True)
    target = target_dir / f"supervisor-{stamp}.db"
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{db}{suffix}")
        if part.exists():
            part.rename(Path(f"{target}{suffix}"))
    return target


# -- back to embedded ------------------------------------------------------------------------


def move_out(settings: Settings, *, stop: Callable[[], None], start: Callable[[], None],
             say: Say, timeout: float = TIMEOUT) -> None:
    """From the control-plane VMs back into the host service's own SQLite store."""
    placement = Placement.load(settings.state_dir)
    if placement is None:
        return
    deadline = time.monotonic() + timeout
    plan = plan_for(placement.vms, settings.appliance_cidr, settings.state_dir)
    database = _host_database_url(plan)
    if (settings.state_dir / "supervisor.db").exists() and not settings.database_url:
        raise MoveError(f"{settings.state_dir / 'supervisor.db'} exists: the store would not "
                        "be empty; move it away first")
    stop()
    try:
        _seal(database, True)
        copied = copy_store(database, settings.effective_database_url)
    except Exception:
        _unseal_quietly(database)
        _remove_partial_sqlite(settings)
        start()
        raise
    say(f"moved {copied.objects} objects (resourceVersion {copied.revision}) back into "
        "the host service; the control plane's database is read-only now")
    Placement.remove(settings.state_dir)
    start()
    remove_control_plane(settings, [m.name for m in plan.members], deadline, say)


def remove_declared(settings: Settings, say: Say, timeout: float = TIMEOUT) -> None:
    """An embedded lab's control-plane objects that a move which did not finish left
    declared (``lab up --control-plane-vms 0`` on an embedded lab)."""
    from appliance.service import Supervisor

    sup = Supervisor.open(settings)
    try:
        names = [member_name(i) for i in range(max(SIZES)) if not _vm_gone(
            sup.service, member_name(i))]
    finally:
        sup.store.engine.dispose()
    if names:
        remove_control_plane(settings, names, time.monotonic() + timeout, say)


def remove_control_plane(settings: Settings, names: list[str], deadline: float,
                         say: Say) -> None:
    """Delete the control plane's objects from the (embedded, running) store, and wait for
    the host's VM agent to remove the VMs."""
    from appliance.service import Supervisor

    sup = Supervisor.open(settings)
    try:
        service = sup.service
        for name in names:
            _delete(service, GROUP, "VirtualMachine", STORAGE, SYSTEM_NAMESPACE, name)
            _delete(service, "", "Secret", "v1", SYSTEM_NAMESPACE, name + SECRET_SUFFIX)
            _delete(service, "", "Node", "v1", "", name)
        for name in names:
            _wait(f"{name} to be removed",
                  lambda n=name: _vm_gone(service, n), deadline)
        _delete(service, GROUP, "VirtualMachineClass", STORAGE, SYSTEM_NAMESPACE, CLASS_NAME)
    finally:
        sup.store.engine.dispose()
    say(f"removed the control-plane VMs ({', '.join(names)})")


def _seal(url: str, read_only: bool) -> None:
    """Make the supervisor's database read-only (or writable again) for every session:
    new ones by the database's default, the open ones by ending them."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET TRANSACTION READ WRITE"))
            setting = "SET default_transaction_read_only = on" if read_only else \
                "RESET default_transaction_read_only"
            conn.execute(text(f'ALTER DATABASE "{APP_DATABASE}" {setting}'))
            if read_only:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE usename = :user AND pid <> pg_backend_pid()"),
                             {"user": APP_USER})
    finally:
        engine.dispose()


def _unseal_quietly(url: str) -> None:
    try:
        _seal(url, False)
    except SQLAlchemyError as exc:
        LOG.warning("could not make the control plane's database writable again: %s", exc)


def _remove_partial_sqlite(settings: Settings) -> None:
    if settings.database_url:
        return
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.state_dir / 'supervisor.db'}{suffix}").unlink(missing_ok=True)


# -- helpers ---------------------------------------------------------------------------------


def _host_database_url(plan: Plan) -> str:
    """The supervisor's database URL as the host uses it: the primary by its recovery
    state, not by ``read-write`` (a sealed database is read-only, and the move out reads
    it), and a connect timeout, so that a VM that is not up yet is a quick failure."""
    url = plan.database_url()
    assert "target_session_attrs=read-write" in url
    return url.replace("target_session_attrs=read-write",
                       "target_session_attrs=primary") + "&connect_timeout=5"


def _database_answers(url: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def readyz(url: str, ca_file: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _target(service: ObjectService, group: str, kind_name: str, version: str, namespace: str,
            name: str) -> Target:
    kind = service.registry.by_kind(group, kind_name)
    assert kind is not None, kind_name
    return Target(kind, version, namespace, name)


def _get(service: ObjectService, group: str, kind: str, version: str, namespace: str,
         name: str) -> dict[str, Any] | None:
    try:
        return service.get(SYSTEM, _target(service, group, kind, version, namespace, name))
    except ApiError as err:
        if err.code == 404:
            return None
        raise


def _vm_ready(service: ObjectService, name: str) -> bool:
    vm = _get(service, GROUP, "VirtualMachine", STORAGE, SYSTEM_NAMESPACE, name)
    conditions = (vm or {}).get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _vm_gone(service: ObjectService, name: str) -> bool:
    return _get(service, GROUP, "VirtualMachine", STORAGE, SYSTEM_NAMESPACE, name) is None


def _delete(service: ObjectService, group: str, kind: str, version: str, namespace: str,
            name: str) -> None:
    try:
        service.delete(SYSTEM, _target(service, group, kind, version, namespace, name))
    except ApiError as err:
        if err.code != 404:
            raise


def wait_until(what: str, check: Callable[[], bool], deadline: float, poll: float = 3.0) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise MoveError(f"timed out waiting for {what}")
        time.sleep(poll)


_wait = wait_until
