"""MachineHealthCheck: machines whose node never came or went bad are remediated.

As CAPI's: a machine it selects is unhealthy when it has no node
``nodeStartupTimeout`` after its infrastructure became ready (from the
machine's creation when that time is unknown), when its node is gone, or when
a node condition has matched an ``unhealthyConditions`` entry for longer than
its timeout. While no more than ``maxUnhealthy`` (and the count in
``unhealthyRange``) are unhealthy, each unhealthy machine is deleted (the
owning MachineSet or KubeadmControlPlane makes a new one); otherwise
remediation stops, and the condition says why.
"""

from __future__ import annotations

import copy
import logging
import re
from datetime import UTC, datetime
from pathlib import Path

from appliance.clusters.deployments import int_or_percent
from appliance.clusters.guest import GuestUnreachable, open_guest
from appliance.clusters.objects import (
    CAPI,
    MACHINES,
    V1B1,
    condition,
    controller_of,
    delete_quietly,
    listed,
    mark,
    record,
    write_status,
)
from appliance.controllers.base import Controller
from appliance.kinds.registry import Obj
from appliance.resources import ResourceApi
from appliance.util.labels import LabelSelector, SelectorError, parse_label_selector
from appliance.util.timefmt import parse_rfc3339

LOG = logging.getLogger(__name__)

DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms)")


def seconds(text: str | None, default: float) -> float:
    """A Go duration ("10m", "1h30m", "300s") in seconds."""
    if not text:
        return default
    parts = DURATION.findall(str(text))
    if not parts:
        return default
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def selector_of(mhc: Obj) -> LabelSelector | None:
    sel = (mhc.get("spec") or {}).get("selector") or {}
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        op = str(expr.get("operator", ""))
        values = ",".join(expr.get("values") or [])
        parts.append({"In": f"{expr['key']} in ({values})",
                      "NotIn": f"{expr['key']} notin ({values})",
                      "Exists": expr["key"], "DoesNotExist": f"!{expr['key']}"}.get(op, ""))
    try:
        return parse_label_selector(",".join(p for p in parts if p))
    except SelectorError:
        return None


class MachineHealthCheckController(Controller):
    group, version, plural, name = CAPI, V1B1, "machinehealthchecks", "capi-mhc"
    resync = 10.0

    def __init__(self, api: ResourceApi, run_dir: Path) -> None:
        super().__init__(api)
        self.run_dir = run_dir

    def reconcile(self, mhc: Obj) -> float | None:
        meta, spec = mhc["metadata"], mhc.get("spec") or {}
        ns = meta["namespace"]
        if meta.get("deletionTimestamp"):
            return None
        status = copy.deepcopy(mhc.get("status") or {})
        conditions = list(status.get("conditions") or [])
        selector = selector_of(mhc)
        if selector is None or selector.is_empty:
            status["conditions"] = mark(conditions, "RemediationAllowed", False,
                                        "InvalidSelector", "spec.selector selects nothing",
                                        "Error")
            write_status(self.api, self.ref, mhc, status)
            return None
        cluster = spec.get("clusterName") or ""
        machines = [m for m in listed(self.api, MACHINES, ns)
                    if (m.get("spec") or {}).get("clusterName") == cluster
                    and selector.matches(m["metadata"].get("labels") or {})
                    and not m["metadata"].get("deletionTimestamp")]
        nodes = self.nodes(ns, cluster)
        now = datetime.now(UTC)
        unhealthy: list[tuple[Obj, str]] = []
        for m in machines:
            why = self.problem(mhc, m, nodes, now)
            if why:
                unhealthy.append((m, why))
        total = len(machines)
        allowed = int_or_percent(spec.get("maxUnhealthy", "100%"), total, False)
        in_range = True
        if spec.get("unhealthyRange"):
            match = re.fullmatch(r"\[(\d+)-(\d+)\]", str(spec["unhealthyRange"]))
            in_range = bool(match) and int(match.group(1)) <= len(unhealthy) <= int(
                match.group(2))
        may_remediate = len(unhealthy) <= allowed and in_range
        status.update(expectedMachines=total, currentHealthy=total - len(unhealthy),
                      remediationsAllowed=max(0, allowed - len(unhealthy)),
                      targets=sorted(m["metadata"]["name"] for m in machines),
                      observedGeneration=meta.get("generation"))
        if unhealthy and not may_remediate:
            conditions = mark(conditions, "RemediationAllowed", False,
                              "TooManyUnhealthy",
                              f"Remediation is not allowed, the number of not started or "
                              f"unhealthy machines exceeds maxUnhealthy (total: {total}, "
                              f"unhealthy: {len(unhealthy)}, maxUnhealthy: "
                              f"{spec.get('maxUnhealthy', '100%')})", "Warning")
            record(self.api, mhc, "Warning", "RemediationRestricted",
                   conditions[-1]["message"] if conditions else "")
        else:
            conditions = mark(conditions, "RemediationAllowed", True)
            for m, why in unhealthy:
                if controller_of(m, "MachineSet") is None and \
                        controller_of(m, "KubeadmControlPlane") is None:
                    continue  # CAPI remediates only machines something will replace
                LOG.info("[%s/%s] remediating machine %s: %s", ns, meta["name"],
                         m["metadata"]["name"], why)
                record(self.api, m, "Normal", "MachineMarkedUnhealthy",
                       f"Machine {m['metadata']['name']} has been marked as unhealthy by "
                       f"{meta['name']}: {why}")
                delete_quietly(self.api, MACHINES, ns, m["metadata"]["name"])
        status["conditions"] = conditions
        write_status(self.api, self.ref, mhc, status)
        return None

    def nodes(self, ns: str, cluster: str) -> dict[str, Obj] | None:
        """The guest's Nodes by name, or None when its API does not answer."""
        try:
            guest = open_guest(self.api, ns, cluster, self.run_dir)
        except GuestUnreachable:
            return None
        try:
            return {n["metadata"]["name"]: n for n in guest.nodes()}
        except (GuestUnreachable, Exception):  # noqa: BLE001 - the guest's answer is input
            return None
        finally:
            guest.close()

    @staticmethod
    def problem(mhc: Obj, machine: Obj, nodes: dict[str, Obj] | None, now: datetime
                ) -> str:
        spec = mhc.get("spec") or {}
        status = machine.get("status") or {}
        node_ref = status.get("nodeRef")
        if not node_ref:
            timeout = seconds(spec.get("nodeStartupTimeout"), 600)
            infra = condition(machine, "InfrastructureReady") or {}
            since = infra.get("lastTransitionTime") if infra.get("status") == "True" else \
                machine["metadata"].get("creationTimestamp")
            if since and (now - parse_rfc3339(since)).total_seconds() > timeout:
                return f"no node after {spec.get('nodeStartupTimeout', '10m')} " \
                       "(NodeStartupTimeout)"
            return ""
        if nodes is None:
            return ""  # the guest's API is not reachable: nothing is known
        node = nodes.get(node_ref.get("name", ""))
        if node is None:
            return f"node {node_ref.get('name')} has been deleted (NodeNotFound)"
        for rule in spec.get("unhealthyConditions") or []:
            for c in (node.get("status") or {}).get("conditions") or []:
                if c.get("type") == rule.get("type") and c.get("status") == rule.get("status"):
                    since = c.get("lastTransitionTime")
                    if since and (now - parse_rfc3339(since)).total_seconds() > seconds(
                            rule.get("timeout"), 300):
                        return f"condition {rule['type']}={rule['status']} for more than " \
                               f"{rule.get('timeout')} (UnhealthyNode)"
        return ""

