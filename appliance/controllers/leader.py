"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it.

Several supervisors may share one store (control-plane VMs over one PostgreSQL
cluster); their controllers must run in one of them at a time. Each supervisor
runs a ``LeaderElector``: it takes the Lease when it is free or has not been
renewed for ``lease_duration`` (measured on this supervisor's own clock, from
when it last saw the Lease change, so clocks need not agree), renews it every
``retry_period``, and steps down when it cannot renew within ``renew_deadline``.
Every write is guarded by the Lease's resourceVersion, so two candidates never
both succeed.

Stepping down sets the term's stop event and waits for the controllers to end
before the Lease can expire (``renew_deadline`` < ``lease_duration``), so the
next leader starts only after the last one stopped. On a clean shutdown the
leader releases the Lease for the next one at once.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi, get_or_none

LOG = logging.getLogger(__name__)
LEASES = Ref("coordination.k8s.io", "v1", "leases")
NAMESPACES = Ref("", "v1", "namespaces")


def identity(state_dir: str = "") -> str:
    """``host_id``, readable in ``kubectl get leases``.

    With a state directory the id is the same for every start of the supervisor that
    owns it (one at a time: its pid file sees to that), so a supervisor restarted after a
    crash takes its own Lease back at once instead of waiting for it to expire."""
    suffix = uuid.uuid5(uuid.NAMESPACE_URL, f"file://{state_dir}").hex[:8] if state_dir \
        else uuid.uuid4().hex[:8]
    return f"{socket.gethostname()}_{suffix}"


def _micro(now: dt.datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Term:
    """One period of leadership: ``stop`` ends it."""

    number: int
    stop: threading.Event


class LeaderElector:
    def __init__(self, api: ResourceApi, namespace: str, name: str, me: str, *,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("want retry_period < renew_deadline < lease_duration")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.me = me
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._observed: tuple[str, float] = ("", 0.0)  # (resourceVersion, when seen)
        self.leading = False

    # -- one attempt ---------------------------------------------------------------------

    def try_acquire_or_renew(self) -> bool:
        """Hold the Lease after this call? (One read and at most one guarded write.)"""
        now = dt.datetime.now(dt.UTC)
        lease = get_or_none(self.api, LEASES, self.namespace, self.name)
        if lease is None:
            self._ensure_namespace()
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, acquired=now, transitions=0)}
            try:
                self._seen(self.api.create(LEASES, self.namespace, body))
            except errors.ApiError as err:
                if err.code == 409:
                    return False
                raise
            return True
        self._seen(lease)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.me and not self._expired():
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != self.me:
            transitions += 1
        acquired = now if holder != self.me else None
        lease["spec"] = self._spec(now, acquired, transitions, spec.get("acquireTime"))
        try:
            self._seen(self.api.update(LEASES, self.namespace, lease))
        except errors.ApiError as err:
            if err.code in (409, 404):
                return False
            raise
        return True

    def release(self) -> None:
        """Give the Lease up now (a clean shutdown), so the next leader need not wait."""
        lease = get_or_none(self.api, LEASES, self.namespace, self.name)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.me:
            return
        spec = dict(lease["spec"])
        spec.update({"holderIdentity": "", "leaseDurationSeconds": 1,
                     "renewTime": _micro(dt.datetime.now(dt.UTC))})
        lease["spec"] = spec
        try:
            self.api.update(LEASES, self.namespace, lease)
        except errors.ApiError as err:
            LOG.info("leader election: could not release %s: %s", self.name, err.message)

    def _spec(self, now: dt.datetime, acquired: dt.datetime | None, transitions: int,
              previous_acquire: str | None = None) -> Obj:
        return {"holderIdentity": self.me,
                "leaseDurationSeconds": int(round(self.lease_duration)),
                "acquireTime": _micro(acquired) if acquired else previous_acquire,
                "renewTime": _micro(now), "leaseTransitions": transitions}

    def _seen(self, lease: Obj) -> None:
        rv = str(lease["metadata"].get("resourceVersion") or "")
        if rv != self._observed[0]:
            self._observed = (rv, time.monotonic())

    def _expired(self) -> bool:
        return time.monotonic() - self._observed[1] > self.lease_duration

    def _ensure_namespace(self) -> None:
        if get_or_none(self.api, NAMESPACES, "", self.namespace) is not None:
            return
        try:
            self.api.create(NAMESPACES, "", {"apiVersion": "v1", "kind": "Namespace",
                                             "metadata": {"name": self.namespace}})
        except errors.ApiError as err:
            if err.code != 409:
                raise

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event, lead: Callable[[Term], list[threading.Thread]]
            ) -> None:
        """Until ``stop``: whenever this supervisor becomes leader, call ``lead`` with a new
        term; it starts the controllers' threads and returns them. When the term ends they
        are joined before leadership can pass on."""
        term: Term | None = None
        threads: list[threading.Thread] = []
        last_renew = 0.0
        number = 0
        while not stop.is_set():
            try:
                held = self.try_acquire_or_renew()
            except Exception as exc:  # noqa: BLE001 - the store may be failing over
                LOG.warning("leader election: %s", exc)
                held = False
            now = time.monotonic()
            if held:
                last_renew = now
                if term is None:
                    number += 1
                    term = Term(number, threading.Event())
                    self.leading = True
                    LOG.info("leader election: %s leads (%s/%s); starting controllers",
                             self.me, self.namespace, self.name)
                    threads = lead(term)
            elif term is not None and now - last_renew > self.renew_deadline:
                LOG.warning("leader election: %s lost %s/%s; stopping controllers", self.me,
                            self.namespace, self.name)
                self._end(term, threads)
                term, threads = None, []
            stop.wait(self.retry_period)
        if term is not None:
            self._end(term, threads)
            self.release()

    def _end(self, term: Term, threads: list[threading.Thread]) -> None:
        term.stop.set()
        deadline = time.monotonic() + max(self.lease_duration - self.renew_deadline - 1, 1)
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            LOG.warning("leader election: still finishing after stepping down: %s",
                        ", ".join(alive))
        self.leading = False
        LOG.info("leader election: %s stopped controllers", self.me)
