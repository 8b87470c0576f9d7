"""ResourceQuota admission and accounting.

A namespace's ResourceQuota objects are checked on every create and on
updates that change what an object consumes; the check runs inside the
write transaction, so two concurrent creates cannot both squeeze under a
limit. ``status.used`` is recomputed in the same transaction as every write
that changes usage, so it is always current.

Resource names understood in ``spec.hard``:

- ``count/<plural>`` (core kinds) and ``count/<plural>.<group>``, plus the
  legacy core names ``pods``, ``configmaps``, ``secrets``, ``services``,
  ``resourcequotas``;
- anything a kind declares it consumes (``requests.cpu``,
  ``requests.memory``, ``requests.storage``, ...). ``cpu`` and ``memory``
  are aliases of the ``requests.`` names, as in Kubernetes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from decimal import Decimal

from appliance import errors
from appliance.kinds.registry import Kind, Lookup, Obj, Registry
from appliance.store.repo import Key, WriteTxn
from appliance.util.quantity import format_quantity, parse_quantity

LEGACY_COUNTS = {"pods", "configmaps", "secrets", "services", "resourcequotas",
                 "persistentvolumeclaims"}
ALIASES = {"cpu": "requests.cpu", "memory": "requests.memory"}


def _fmt(amount: Decimal, resource: str) -> str:
    """Format usage as Kubernetes does: binary suffixes for memory and storage."""
    binary = resource.endswith(("memory", "storage"))
    return format_quantity(amount, "memory" if binary else "")


def count_names(kind: Kind) -> list[str]:
    names = [f"count/{kind.qualified_plural}"]
    if kind.group == "" and kind.plural in LEGACY_COUNTS:
        names.append(kind.plural)
    return names


def _lookup(txn: WriteTxn) -> Lookup:
    def lookup(group: str, plural: str, namespace: str, name: str) -> Obj | None:
        return txn.get(Key(group, plural, namespace, name))
    return lookup


def consumption(kind: Kind, obj: Obj | None, lookup: Lookup) -> dict[str, Decimal]:
    """What one object takes from its namespace's quota."""
    if obj is None:
        return {}
    used = {name: Decimal(1) for name in count_names(kind)}
    if kind.consumes is not None:
        for name, amount in kind.consumes(obj, lookup).items():
            used[name] = used.get(name, Decimal(0)) + Decimal(amount)
    for alias, name in ALIASES.items():
        if name in used:
            used[alias] = used[name]
    return used


def _quotas(txn: WriteTxn, namespace: str) -> list[Obj]:
    """The namespace's ResourceQuotas, read once per transaction (a create checks them and
    then refreshes their status) unless the transaction wrote a quota since."""
    key = ("resourcequotas", namespace)
    writes = txn.writes_to("", "resourcequotas")
    seen = txn.memo.get(key)
    if seen is None or seen[0] != writes:
        seen = txn.memo[key] = (writes, list(txn.iterate("", "resourcequotas", namespace)))
    return copy.deepcopy(seen[1])


def usage(txn: WriteTxn, registry: Registry, namespace: str, names: set[str]) -> dict[str, Decimal]:
    """Current usage of ``names`` in ``namespace``, computed from the store."""
    totals = {name: Decimal(0) for name in names}
    for kind in registry.kinds:
        if not kind.namespaced or not kind.storable:
            continue
        counts = [n for n in count_names(kind) if n in names]
        if counts:
            n = Decimal(txn.count(kind.group, kind.plural, namespace))
            for name in counts:
                totals[name] += n
        if kind.consumes is None:
            continue
        for obj in txn.iterate(kind.group, kind.plural, namespace):
            for name, amount in consumption(kind, obj, _lookup(txn)).items():
                if name in totals and not name.startswith("count/") and name not in LEGACY_COUNTS:
                    totals[name] += amount
    return totals


def check(txn: WriteTxn, registry: Registry, kind: Kind, namespace: str, name: str,
          new: Obj | None, old: Obj | None) -> None:
    """Refuse the write if it would take any quota in the namespace over its limit."""
    if not namespace or not kind.storable:
        return
    quotas = _quotas(txn, namespace)
    if not quotas:
        return
    after = consumption(kind, new, _lookup(txn))
    before = consumption(kind, old, _lookup(txn))
    delta = {k: after.get(k, Decimal(0)) - before.get(k, Decimal(0)) for k in after}
    delta = {k: v for k, v in delta.items() if v > 0}
    if not delta:
        return
    wanted = {k for q in quotas for k in ((q.get("spec") or {}).get("hard") or {}) if k in delta}
    if not wanted:
        return
    current = usage(txn, registry, namespace, wanted)
    for quota in quotas:
        hard = (quota.get("spec") or {}).get("hard") or {}
        over = [k for k in sorted(hard) if k in delta
                and current[k] + delta[k] > parse_quantity(hard[k])]
        if over:
            requested = ",".join(f"{k}={_fmt(delta[k], k)}" for k in over)
            used = ",".join(f"{k}={_fmt(current[k], k)}" for k in over)
            limited = ",".join(f"{k}={hard[k]}" for k in over)
            raise errors.forbidden(
                f'{kind.qualified_plural} "{name}" is forbidden: exceeded quota: '
                f'{quota["metadata"]["name"]}, requested: {requested}, used: {used}, '
                f'limited: {limited}', kind.plural, kind.group, name)


def refresh(txn: WriteTxn, registry: Registry, namespace: str,
            only: Mapping[str, Obj] | None = None) -> None:
    """Recompute ``status`` of the namespace's quotas and store those that changed."""
    quotas = list(only.values()) if only is not None else _quotas(txn, namespace)
    if not quotas:
        return
    names = {k for q in quotas for k in ((q.get("spec") or {}).get("hard") or {})}
    current = usage(txn, registry, namespace, names)
    for quota in quotas:
        hard = dict((quota.get("spec") or {}).get("hard") or {})
        status = {"hard": hard,
                  "used": {k: _fmt(current[k], k) for k in sorted(hard)}}
        if quota.get("status") != status:
            quota["status"] = status
            key = Key("", "resourcequotas", namespace, quota["metadata"]["name"])
            if txn.get(key) is not None:
                txn.update(key, quota)


def affects_quota(kind: Kind) -> bool:
    return kind.namespaced and kind.storable
