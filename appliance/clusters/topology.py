"""CAPI's topology controller: a Cluster with ``spec.topology`` becomes the objects its
ClusterClass describes (upstream ``internal/controllers/topology/cluster``).

A pass: read the ClusterClass and its templates (the blueprint); resolve the
topology's variables against the class's definitions (schema defaults, required
ones, values checked against their schema); work out each object's version (the
control plane first, MachineDeployments once it is stable, as upstream's upgrade
tracker); apply the class's inline JSON patches to copies of the templates, with the
builtin variables; build the desired objects from the patched templates; then create
what is missing, patch what differs, point the Cluster at its infrastructure cluster
and control plane, delete MachineDeployments gone from the topology and delete
generated templates nothing references any more.

Templates are immutable: when a template's desired spec changes a new clone is made
(a new random name) and the reference moves to it, which makes the control plane or
the MachineDeployment roll its machines; the old clone goes once no
KubeadmControlPlane, MachineDeployment or MachineSet names it.

Upstream applies with server-side apply, so it owns only the fields it sets. Here the
fields set on a mutable object (labels, annotations, spec) are kept as JSON in the
:data:`APPLIED` annotation and the next pass patches a three-way diff: what the
desired state sets, plus removal of what was set before and is no longer desired;
fields written by anyone else (defaults, an endpoint) are left alone.

Not done here (deliberately): external patches (runtime extensions) and lifecycle
hooks, MachinePools, MachineHealthChecks from the topology, ClusterClass status
(``status.variables``) and ``definitionFrom``. Go templates in ``enabledIf``,
``valueFrom.template`` and naming strategies are supported only as text whose
actions are ``{{ .path.to.variable }}``, a literal, or ``eq``/``ne``/``not``/``and``/
``or`` over those (no pipelines, sprig functions, ``if`` or ``range``).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jsonpatch
import jsonschema
import yaml

from appliance import errors
from appliance.clusters.objects import (
    CAPI,
    CLUSTER_NAME,
    CLUSTERCLASSES,
    CLUSTERS,
    CONTROLPLANES,
    KUBEADMCONFIGTEMPLATES,
    KUBEADMCONTROLPLANETEMPLATES,
    MACHINEDEPLOYMENTS,
    MACHINES,
    MACHINESETS,
    V1B1,
    VSPHERECLUSTERTEMPLATES,
    VSPHEREMACHINETEMPLATES,
    clone_template,
    create_or_get,
    deleting,
    delete_quietly,
    listed,
    mark,
    owned_by,
    owner_reference,
    random_suffix,
    record,
    ref_for,
    spec_hash,
    transition,
    write_status,
)
from appliance.controllers.base import Controller, owners
from appliance.kinds.registry import Obj
from appliance.kinds.schema import _to_jsonschema, apply_defaults
from appliance.resources import Ref, ResourceApi, get_or_none

LOG = logging.getLogger(__name__)

OWNED = "topology.cluster.x-k8s.io/owned"
TOPOLOGY_DEPLOYMENT = "topology.cluster.x-k8s.io/deployment-name"
#: The labels, annotations and spec this controller last set on a mutable object (JSON).
APPLIED = "topology.pacific.lab/applied"
#: The digest of a generated template's ``spec``: a different desired digest is a new clone.
TEMPLATE_DIGEST = "topology.pacific.lab/template-digest"
CONDITION = "TopologyReconciled"

# Reasons: upstream's v1beta1 ones, plus three more precise failures of our own.
RECONCILE_FAILED = "TopologyReconcileFailed"
CLASS_NOT_FOUND = "ClusterClassNotFound"
VARIABLES_FAILED = "VariablesReconcileFailed"
PATCHES_FAILED = "PatchesApplyFailed"
CP_UPGRADE_PENDING = "ControlPlaneUpgradePending"
MD_UPGRADE_PENDING = "MachineDeploymentsUpgradePending"
MD_CREATE_PENDING = "MachineDeploymentsCreatePending"

#: Kinds of the templates generated for a topology (ClusterController deletes them last).
TEMPLATE_REFS = (KUBEADMCONFIGTEMPLATES, VSPHEREMACHINETEMPLATES, KUBEADMCONTROLPLANETEMPLATES,
                 VSPHERECLUSTERTEMPLATES)
_TIMEOUTS = ("nodeDrainTimeout", "nodeVolumeDetachTimeout", "nodeDeletionTimeout")
_MAX_NAME, _RANDOM = 63, 5


class TopologyError(Exception):
    """Why the topology cannot be reconciled now: a condition reason and a message."""

    def __init__(self, reason: str, message: str, delay: float = 30.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.delay = delay


# -- templates of text: a small subset of Go's text/template -------------------------------

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.S)
_FIELD = re.compile(r"\.[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[\d+\])*")
_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_FUNCTIONS = {"eq": 2, "ne": 2, "not": 1, "and": 2, "or": 2}


def lookup(variables: Obj, path: str) -> Any:
    """The value at ``path`` ("name", "obj.field", "list[0].field") of the variables."""
    value: Any = variables
    for part in path.split("."):
        m = _PART.fullmatch(part)
        if m is None:
            raise ValueError(f"variable path {path!r} is not valid")
        if not isinstance(value, dict) or m.group(1) not in value:
            raise ValueError(f"variable {path!r} does not exist")
        value = value[m.group(1)]
        for index in re.findall(r"\[(\d+)\]", m.group(2)):
            if not isinstance(value, list) or int(index) >= len(value):
                raise ValueError(f"variable {path!r} does not exist")
            value = value[int(index)]
    return copy.deepcopy(value)


def _operand(token: str, data: Obj) -> Any:
    if _FIELD.fullmatch(token):
        try:
            return lookup(data, token[1:])
        except ValueError:
            return None  # Go renders a missing key as "<no value>"
    if token.startswith('"'):
        return json.loads(token)
    if token in ("true", "false"):
        return token == "true"
    try:
        return json.loads(token)
    except ValueError:
        raise ValueError(f"template operand {token!r} is not supported") from None


def _evaluate(expr: str, data: Obj) -> Any:
    """``.path``, a literal, or one of eq/ne/not/and/or over such operands."""
    tokens = _TOKEN.findall(expr)
    if len(tokens) == 1:
        return _operand(tokens[0], data)
    name = tokens[0]
    if _FUNCTIONS.get(name) != len(tokens) - 1:
        raise ValueError(f"template action {{{{ {expr} }}}} is not supported: only "
                         "{{ .path }}, literals and eq/ne/not/and/or are")
    args = [_operand(t, data) for t in tokens[1:]]
    if name == "eq":
        return args[0] == args[1]
    if name == "ne":
        return args[0] != args[1]
    if name == "not":
        return not args[0]
    return (args[0] and args[1]) if name == "and" else (args[0] or args[1])


def render(text: str, data: Obj) -> str:
    """``text`` with each ``{{ ... }}`` action replaced by its scalar value."""
    def one(m: re.Match[str]) -> str:
        value = _evaluate(m.group(1), data)
        if isinstance(value, dict | list):
            raise ValueError(f"template action {{{{ {m.group(1)} }}}} is not a scalar")
        if isinstance(value, bool):
            return "true" if value else "false"
        return "<no value>" if value is None else str(value)
    return _ACTION.sub(one, text)


def render_value(text: str, data: Obj) -> Any:
    """A rendered template parsed as YAML, as upstream unmarshals it."""
    return yaml.safe_load(render(text, data))


def generate_name(template: str, data: Obj) -> str:
    """A name from a naming strategy template (``{{ .random }}`` is five random
    characters); too long a name is cut to 58 characters plus five random ones."""
    name = render(template, {**data, "random": random_suffix(_RANDOM)})
    if len(name) > _MAX_NAME:
        name = name[:_MAX_NAME - _RANDOM] + random_suffix(_RANDOM)
    return name


def prefixed_name(prefix: str) -> str:
    """Kubernetes' generateName: the prefix (cut to 58 characters) and five random ones."""
    return prefix[:_MAX_NAME - _RANDOM] + random_suffix(_RANDOM)


# -- variables ------------------------------------------------------------------------------


@lru_cache(maxsize=128)
def _validator(schema_json: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_to_jsonschema(json.loads(schema_json)))


def resolve_variables(definitions: dict[str, Obj], given: list[Obj] | None, path: str,
                      create: bool) -> Obj:
    """Variable values by name: ``given`` checked against the class's ``definitions``,
    defaulted from each schema (variables not given are created only when ``create``),
    required ones checked (only when ``create``) and values validated."""
    values: Obj = {}
    for v in given or []:
        name = str(v.get("name") or "")
        if name == "builtin":
            continue  # upstream ignores a user variable shadowing the builtins
        if name not in definitions:
            raise TopologyError(VARIABLES_FAILED, f"{path}[{name}]: Invalid value: "
                                                  f"{name!r}: variable is not defined")
        if name in values:
            raise TopologyError(VARIABLES_FAILED, f"{path}[{name}]: Duplicate value: "
                                                  f"variable names must be unique")
        values[name] = copy.deepcopy(v.get("value"))
    for name, definition in definitions.items():
        schema = ((definition.get("schema") or {}).get("openAPIV3Schema")) or {}
        wrapped = {name: values[name]} if name in values else {}
        if create or name in values:
            apply_defaults(wrapped, {"type": "object", "properties": {name: schema}})
        if name in wrapped:
            values[name] = wrapped[name]
            problems = sorted(_validator(json.dumps(schema, sort_keys=True)).iter_errors(
                values[name]), key=lambda e: list(e.absolute_path))
            if problems:
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                for p in problems[0].absolute_path)
                raise TopologyError(VARIABLES_FAILED, f"{path}[{name}].value{where}: Invalid "
                                                      f"value: {problems[0].message}")
        elif create and definition.get("required"):
            raise TopologyError(VARIABLES_FAILED, f"{path}: Required value: required variable "
                                                  f"with name {name!r} must be defined")
    return values


def merge_variables(*maps: Obj) -> Obj:
    """Later maps win; the ``builtin`` objects are merged key by key."""
    out: Obj = {}
    for m in maps:
        for key, value in m.items():
            if key == "builtin" and isinstance(out.get(key), dict):
                out[key] = _deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def _deep_merge(a: Obj, b: Obj) -> Obj:
    out = copy.deepcopy(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if isinstance(out.get(key), dict) and \
            isinstance(value, dict) else copy.deepcopy(value)
    return out


# -- inline patches -------------------------------------------------------------------------


@dataclass
class PatchTarget:
    """One template the patches may change, with where its clone is held (upstream's
    GeneratePatchesRequestItem) and the variables it sees."""

    holder_kind: str
    holder_field: str
    template: Obj
    variables: Obj
    md_class: str = ""


def _class_matches(names: list[str], md_class: str) -> bool:
    return any(n == "*" or n == md_class or
               (n.startswith("*") and md_class.endswith(n[1:])) or
               (n.endswith("*") and md_class.startswith(n[:-1])) for n in names)


def selector_matches(target: PatchTarget, selector: Obj) -> bool:
    template = target.template
    if template.get("apiVersion") != selector.get("apiVersion") or \
            template.get("kind") != selector.get("kind"):
        return False
    match = selector.get("matchResources") or {}
    holder = (target.holder_kind, target.holder_field)
    if match.get("infrastructureCluster") and holder == ("Cluster", "spec.infrastructureRef"):
        return True
    if match.get("controlPlane") and (holder == ("Cluster", "spec.controlPlaneRef") or
                                      target.holder_field ==
                                      "spec.machineTemplate.infrastructureRef"):
        return True
    md = match.get("machineDeploymentClass")
    return bool(md) and target.holder_kind == "MachineDeployment" and \
        _class_matches(list(md.get("names") or []), target.md_class)


def patch_enabled(enabled_if: str | None, variables: Obj) -> bool:
    return enabled_if is None or render_value(enabled_if, variables) is True


def patch_value(p: Obj, variables: Obj) -> Any:
    value_from = p.get("valueFrom")
    if "value" in p and value_from:
        raise ValueError("both .value and .valueFrom are set")
    if "value" in p:
        return copy.deepcopy(p["value"])
    if not value_from:
        raise ValueError("neither .value nor .valueFrom are set")
    variable, template = value_from.get("variable"), value_from.get("template")
    if (variable is None) == (template is None):
        raise ValueError("exactly one of .valueFrom.variable and .valueFrom.template must be "
                         "set")
    return lookup(variables, variable) if variable is not None else \
        render_value(template, variables)


def apply_patches(patches: list[Obj], targets: list[PatchTarget]) -> None:
    """The class's inline patches, in order, applied to the matching targets in place."""
    for patch in patches:
        name = patch.get("name") or "?"
        if patch.get("external"):
            raise TopologyError(PATCHES_FAILED, f"patch {name!r}: external patches (runtime "
                                                "extensions) are not supported")
        for target in targets:
            definitions = [d for d in patch.get("definitions") or []
                           if selector_matches(target, d.get("selector") or {})]
            if not definitions:
                continue
            try:
                if not patch_enabled(patch.get("enabledIf"), target.variables):
                    continue
                ops = []
                for definition in definitions:
                    for p in definition.get("jsonPatches") or []:
                        op: Obj = {"op": p.get("op"), "path": p.get("path")}
                        if p.get("op") in ("add", "replace"):
                            op["value"] = patch_value(p, target.variables)
                        ops.append(op)
                target.template = jsonpatch.apply_patch(target.template, ops)
            except (ValueError, yaml.YAMLError, jsonpatch.JsonPatchException,
                    jsonpatch.JsonPointerException) as exc:
                raise TopologyError(PATCHES_FAILED, f"patch {name!r} on "
                                                    f"{target.template.get('kind')} "
                                                    f"({target.holder_kind} "
                                                    f"{target.holder_field}): {exc}") from exc


# -- three-way apply -------------------------------------------------------------------------


def covers(desired: Any, current: Any) -> bool:
    """``current`` holds everything ``desired`` sets (defaults may add more)."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(
            k in current and covers(v, current[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(current, list) and len(desired) == len(current) and all(
            covers(d, c) for d, c in zip(desired, current, strict=True))
    return bool(desired == current)


def apply_diff(last: Any, desired: Obj, current: Obj) -> Obj:
    """The merge patch that sets what ``desired`` sets and removes what ``last`` set and
    ``desired`` no longer does; nothing else in ``current`` is touched."""
    patch: Obj = {}
    last = last if isinstance(last, dict) else {}
    for key, value in desired.items():
        if key not in current:
            patch[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(current[key], dict):
            sub = apply_diff(last.get(key), value, current[key])
            if sub:
                patch[key] = sub
        elif not covers(value, current[key]):
            patch[key] = copy.deepcopy(value)
    for key in last:
        if key not in desired and key in current:
            patch[key] = None
    return patch


def object_ref(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
            "namespace": meta.get("namespace") or ""}


def describe(obj: Obj) -> str:
    """An object as upstream's events name it: "Kind namespace/name"."""
    meta = obj["metadata"]
    return f"{obj.get('kind')} {meta.get('namespace', '')}/{meta['name']}"


# -- state ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerClass:
    spec: Obj  # the class's spec.workers.machineDeployments[] entry
    bootstrap: Obj  # a KubeadmConfigTemplate
    infrastructure: Obj  # a VSphereMachineTemplate


@dataclass(frozen=True)
class Blueprint:
    cluster_class: Obj
    infrastructure: Obj  # a VSphereClusterTemplate
    control_plane: Obj  # a KubeadmControlPlaneTemplate
    control_plane_machine: Obj | None  # a VSphereMachineTemplate
    workers: dict[str, WorkerClass]


@dataclass
class CurrentDeployment:
    deployment: Obj
    bootstrap: Obj | None
    infrastructure: Obj | None


@dataclass
class Current:
    infrastructure: Obj | None
    control_plane: Obj | None
    control_plane_machine: Obj | None
    deployments: dict[str, CurrentDeployment]  # by topology name


@dataclass
class DesiredDeployment:
    deployment: Obj
    bootstrap: Obj
    infrastructure: Obj


@dataclass
class Desired:
    infrastructure: Obj
    control_plane: Obj
    control_plane_machine: Obj | None
    deployments: dict[str, DesiredDeployment] = field(default_factory=dict)
    #: (reason, message) when part of the topology is held back (an upgrade in order).
    pending: tuple[str, str] | None = None


def _spec(obj: Obj | None) -> Obj:
    return (obj or {}).get("spec") or {}


def _status(obj: Obj | None) -> Obj:
    return (obj or {}).get("status") or {}


def _meta_merge(*metas: Obj | None) -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations of CAPI metadata blocks; earlier ones win (upstream's
    mergeMap, topology over class)."""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    for m in reversed(metas):
        labels.update((m or {}).get("labels") or {})
        annotations.update((m or {}).get("annotations") or {})
    return labels, annotations


def cp_scaling(cp: Obj) -> bool:
    """Upstream's contract IsScaling: no status yet counts as scaling."""
    status = _status(cp)
    if status.get("replicas") is None:
        return True
    desired = _spec(cp).get("replicas")
    desired = 1 if desired is None else int(desired)
    replicas = int(status["replicas"])
    return desired != replicas or int(status.get("updatedReplicas") or 0) != replicas or \
        int(status.get("readyReplicas") or 0) != replicas or \
        int(status.get("unavailableReplicas") or 0) > 0


def cp_upgrading(cp: Obj) -> bool:
    version = _status(cp).get("version")
    return bool(version) and version != _spec(cp).get("version")


# -- the controller -------------------------------------------------------------------------


class TopologyController(Controller):
    group, version, plural, name = CAPI, V1B1, "clusters", "capi-topology"
    resync = 30.0
    workers = 2

    def __init__(self, api: ResourceApi) -> None:
        super().__init__(api)

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        # the upgrade order waits on the control plane and the MachineDeployments
        return [(CONTROLPLANES, owners("Cluster")), (MACHINEDEPLOYMENTS, owners("Cluster"))]

    def wants(self, obj: Obj) -> bool:
        return bool(_spec(obj).get("topology"))

    def reconcile(self, cluster: Obj) -> float | None:
        if not self.wants(cluster) or deleting(cluster):
            return None  # ClusterController takes a Cluster apart, top down
        meta = cluster["metadata"]
        outcome: tuple[bool | None, str, str] = (False, RECONCILE_FAILED,
                                                 "reconcile did not finish")
        again: float | None = None
        try:
            blueprint = self.blueprint(cluster)
            current = self.current(cluster)
            desired = self.desired(cluster, blueprint, current)
            self.apply(cluster, current, desired)
            if desired.pending:
                outcome = (False, *desired.pending)
                again = 10.0
            else:
                outcome = (True, "", "")
        except TopologyError as exc:
            LOG.info("[%s/%s] topology: %s: %s", meta["namespace"], meta["name"], exc.reason,
                     exc)
            outcome = (False, exc.reason, str(exc))
            again = exc.delay
        except errors.ApiError as err:
            outcome = (False, RECONCILE_FAILED, err.message)
            raise
        except Exception as exc:
            outcome = (False, RECONCILE_FAILED, str(exc) or type(exc).__name__)
            raise
        finally:
            self.write_condition(cluster, *outcome)
        return again

    def write_condition(self, cluster: Obj, ok: bool | None, reason: str, message: str) -> None:
        """TopologyReconciled and observedGeneration, on a fresh read (ClusterController
        writes the other conditions)."""
        meta = cluster["metadata"]
        fresh = get_or_none(self.api, CLUSTERS, meta["namespace"], meta["name"])
        if fresh is None or deleting(fresh):
            return
        status = copy.deepcopy(_status(fresh))
        pending = reason in (CP_UPGRADE_PENDING, MD_UPGRADE_PENDING, MD_CREATE_PENDING)
        conditions = mark(list(status.get("conditions") or []), CONDITION, ok, reason, message,
                          "Info" if pending else "Error")
        status["conditions"] = conditions
        status["observedGeneration"] = fresh["metadata"].get("generation")
        updated = write_status(self.api, CLUSTERS, fresh, status)
        transition(self.api, updated, fresh, conditions, CONDITION)

    # -- reading ------------------------------------------------------------------------

    def blueprint(self, cluster: Obj) -> Blueprint:
        topology = _spec(cluster)["topology"]
        ns = topology.get("classNamespace") or cluster["metadata"]["namespace"]
        name = str(topology.get("class") or "")
        cc = get_or_none(self.api, CLUSTERCLASSES, ns, name)
        if cc is None:
            raise TopologyError(CLASS_NOT_FOUND, f"ClusterClass {ns}/{name} not found", 10.0)
        spec = _spec(cc)

        def template(ref: Obj | None, what: str) -> Obj:
            if not ref:
                raise TopologyError(RECONCILE_FAILED, f"ClusterClass {ns}/{name} has no "
                                                      f"{what} template")
            try:
                obj = get_or_none(self.api, ref_for(ref), ref.get("namespace") or ns,
                                  str(ref.get("name") or ""))
            except errors.ApiError as err:
                raise TopologyError(RECONCILE_FAILED, f"ClusterClass {ns}/{name} {what}: "
                                                      f"{err.message}") from err
            if obj is None:
                raise TopologyError(RECONCILE_FAILED, f"{ref.get('kind')} {ns}/"
                                                      f"{ref.get('name')} ({what} of "
                                                      f"ClusterClass {name}) not found", 10.0)
            return obj

        cp = spec.get("controlPlane") or {}
        machine_ref = (cp.get("machineInfrastructure") or {}).get("ref")
        workers = {}
        for wc in (spec.get("workers") or {}).get("machineDeployments") or []:
            tmpl = wc.get("template") or {}
            what = f"machineDeployment class {wc.get('class')}"
            workers[str(wc.get("class"))] = WorkerClass(
                wc, template((tmpl.get("bootstrap") or {}).get("ref"), f"{what} bootstrap"),
                template((tmpl.get("infrastructure") or {}).get("ref"),
                         f"{what} infrastructure"))
        return Blueprint(
            cc, template((spec.get("infrastructure") or {}).get("ref"), "infrastructure"),
            template(cp.get("ref"), "controlPlane"),
            template(machine_ref, "controlPlane machineInfrastructure") if machine_ref else None,
            workers)

    def _get(self, object_ref: Obj | None, ns: str) -> Obj | None:
        if not object_ref or not object_ref.get("name"):
            return None
        return get_or_none(self.api, ref_for(object_ref), ns, str(object_ref["name"]))

    def current(self, cluster: Obj) -> Current:
        ns, name = cluster["metadata"]["namespace"], cluster["metadata"]["name"]
        spec = _spec(cluster)
        cp = self._get(spec.get("controlPlaneRef"), ns)
        deployments = {}
        for md in listed(self.api, MACHINEDEPLOYMENTS, ns, f"{CLUSTER_NAME}={name},{OWNED}"):
            topology_name = (md["metadata"].get("labels") or {}).get(TOPOLOGY_DEPLOYMENT)
            if not topology_name or deleting(md) or not owned_by(md, cluster):
                continue
            tspec = (_spec(md).get("template") or {}).get("spec") or {}
            deployments[topology_name] = CurrentDeployment(
                md, self._get((tspec.get("bootstrap") or {}).get("configRef"), ns),
                self._get(tspec.get("infrastructureRef"), ns))
        return Current(self._get(spec.get("infrastructureRef"), ns), cp,
                       self._get((_spec(cp).get("machineTemplate") or {}).get(
                           "infrastructureRef"), ns) if cp else None, deployments)

    def deployment_upgrading(self, cluster: Obj, md: Obj) -> bool:
        """Machines of the MachineDeployment still at another version (upstream's
        MachineDeployments.Upgrading)."""
        meta = cluster["metadata"]
        version = ((_spec(md).get("template") or {}).get("spec") or {}).get("version")
        topology_name = (md["metadata"].get("labels") or {}).get(TOPOLOGY_DEPLOYMENT, "")
        return any(_spec(m).get("version") != version for m in listed(
            self.api, MACHINES, meta["namespace"],
            f"{CLUSTER_NAME}={meta['name']},{TOPOLOGY_DEPLOYMENT}={topology_name}"))

    # -- desired state --------------------------------------------------------------------

    def desired(self, cluster: Obj, bp: Blueprint, current: Current) -> Desired:
        meta = cluster["metadata"]
        ns, name = meta["namespace"], meta["name"]
        topology = _spec(cluster)["topology"]
        version = str(topology.get("version") or "")
        class_spec = _spec(bp.cluster_class)
        definitions = {str(v.get("name")): v for v in class_spec.get("variables") or []}
        values = resolve_variables(definitions, topology.get("variables"),
                                   "spec.topology.variables", create=True)
        builtin = {"cluster": {"name": name, "namespace": ns, "uid": meta.get("uid"),
                               "topology": {"version": version,
                                            "class": topology.get("class")}}}
        network = _spec(cluster).get("clusterNetwork")
        if network is not None:
            builtin["cluster"]["network"] = self.network_builtins(network)
        global_vars = {**values, "builtin": builtin}
        names = {"cluster": {"name": name}}
        pending: list[tuple[str, str]] = []

        cp_topology = topology.get("controlPlane") or {}
        cp_class = class_spec.get("controlPlane") or {}
        cur_cp = current.control_plane
        cp_version, cp_stable, held = self.control_plane_version(cluster, current, version)
        if held:
            pending.append((CP_UPGRADE_PENDING, held))
        cp_name = cur_cp["metadata"]["name"] if cur_cp else generate_name(
            (cp_class.get("namingStrategy") or {}).get("template") or
            "{{ .cluster.name }}-{{ .random }}", names)
        cp_machine_name = (current.control_plane_machine or {}).get("metadata", {}).get(
            "name") or prefixed_name(f"{name}-")
        cp_overrides = resolve_variables(definitions, (cp_topology.get("variables") or {}).get(
            "overrides"), "spec.topology.controlPlane.variables.overrides", create=False)
        cp_builtin: Obj = {"name": cp_name, "version": cp_version}
        if cp_topology.get("replicas") is not None:
            cp_builtin["replicas"] = int(cp_topology["replicas"])
        if bp.control_plane_machine is not None:
            cp_builtin["machineTemplate"] = {"infrastructureRef": {"name": cp_machine_name}}
        cp_vars = merge_variables(global_vars, cp_overrides,
                                  {"builtin": {"controlPlane": cp_builtin}})
        targets = [PatchTarget("Cluster", "spec.infrastructureRef",
                               copy.deepcopy(bp.infrastructure), global_vars),
                   PatchTarget("Cluster", "spec.controlPlaneRef",
                               copy.deepcopy(bp.control_plane), cp_vars)]
        if bp.control_plane_machine is not None:
            targets.append(PatchTarget("KubeadmControlPlane",
                                       "spec.machineTemplate.infrastructureRef",
                                       copy.deepcopy(bp.control_plane_machine), cp_vars))

        # The MachineDeployments (upstream's computeMachineDeploymentVersion).
        plans: list[tuple[Obj, WorkerClass, str, str, str, str, PatchTarget, PatchTarget]] = []
        create_pending, upgrade_pending = [], []
        for md_topology in (topology.get("workers") or {}).get("machineDeployments") or []:
            md_name_t = str(md_topology.get("name") or "")
            wc = bp.workers.get(str(md_topology.get("class") or ""))
            if wc is None:
                raise TopologyError(RECONCILE_FAILED, f"MachineDeployment class "
                                                      f"{md_topology.get('class')!r} of "
                                                      f"topology {md_name_t!r} not found in "
                                                      f"ClusterClass {topology.get('class')}")
            cur = current.deployments.get(md_name_t)
            if cur is None:
                if cur_cp is not None and not cp_stable:
                    create_pending.append(md_name_t)
                    continue
                md_version = version
            else:
                md_version = str(((_spec(cur.deployment).get("template") or {}).get("spec")
                                  or {}).get("version") or version)
                if md_version != version:
                    if cp_stable:
                        md_version = version
                    else:
                        upgrade_pending.append(cur.deployment["metadata"]["name"])
            md_name = cur.deployment["metadata"]["name"] if cur else generate_name(
                (wc.spec.get("namingStrategy") or {}).get("template") or
                "{{ .cluster.name }}-{{ .machineDeployment.topologyName }}-{{ .random }}",
                {**names, "machineDeployment": {"topologyName": md_name_t}})
            bootstrap_name = ((cur.bootstrap if cur else None) or {}).get(
                "metadata", {}).get("name") or prefixed_name(f"{name}-{md_name_t}-")
            infra_name = ((cur.infrastructure if cur else None) or {}).get(
                "metadata", {}).get("name") or prefixed_name(f"{name}-{md_name_t}-")
            overrides = resolve_variables(
                definitions, (md_topology.get("variables") or {}).get("overrides"),
                f"spec.topology.workers.machineDeployments[{md_name_t}].variables.overrides",
                create=False)
            md_builtin: Obj = {"version": md_version, "class": md_topology.get("class"),
                               "name": md_name, "topologyName": md_name_t,
                               "bootstrap": {"configRef": {"name": bootstrap_name}},
                               "infrastructureRef": {"name": infra_name}}
            if md_topology.get("replicas") is not None:
                md_builtin["replicas"] = int(md_topology["replicas"])
            md_vars = merge_variables(global_vars, overrides,
                                      {"builtin": {"machineDeployment": md_builtin}})
            md_class = str(md_topology.get("class") or "")
            bt = PatchTarget("MachineDeployment", "spec.template.spec.bootstrap.configRef",
                             copy.deepcopy(wc.bootstrap), md_vars, md_class)
            it = PatchTarget("MachineDeployment", "spec.template.spec.infrastructureRef",
                             copy.deepcopy(wc.infrastructure), md_vars, md_class)
            targets += [bt, it]
            plans.append((md_topology, wc, md_name, md_version, bootstrap_name, infra_name,
                          bt, it))
        apply_patches(list(class_spec.get("patches") or []), targets)

        owned = {CLUSTER_NAME: name, OWNED: ""}
        infra = clone_template(targets[0].template, (current.infrastructure or {}).get(
            "metadata", {}).get("name") or generate_name(
            (class_spec.get("infrastructureNamingStrategy") or {}).get("template") or
            "{{ .cluster.name }}-{{ .random }}", names),
            bp.infrastructure["kind"].removesuffix("Template"), owned, cluster)
        cp_machine = None
        if bp.control_plane_machine is not None:
            cp_machine = self.template_clone(targets[2].template, cluster, owned,
                                             current.control_plane_machine, cp_machine_name,
                                             f"{name}-")
        control_plane = self.control_plane(cluster, targets[1].template, cp_name, cp_version,
                                           cp_topology, cp_class, cp_machine, owned)
        desired = Desired(infra, control_plane, cp_machine)
        for md_topology, wc, md_name, md_version, bootstrap_name, infra_name, bt, it in plans:
            md_name_t = str(md_topology["name"])
            cur = current.deployments.get(md_name_t)
            labels = {**owned, TOPOLOGY_DEPLOYMENT: md_name_t}
            bootstrap = self.template_clone(bt.template, cluster, labels,
                                            cur.bootstrap if cur else None, bootstrap_name,
                                            f"{name}-{md_name_t}-")
            machine = self.template_clone(it.template, cluster, labels,
                                          cur.infrastructure if cur else None, infra_name,
                                          f"{name}-{md_name_t}-")
            desired.deployments[md_name_t] = DesiredDeployment(
                self.deployment(cluster, md_topology, wc, md_name, md_version, bootstrap,
                                machine), bootstrap, machine)
        if create_pending:
            pending.append((MD_CREATE_PENDING, f"MachineDeployment(s) for Topologies "
                                               f"{', '.join(create_pending)} creation on hold."))
        if upgrade_pending:
            pending.append((MD_UPGRADE_PENDING, f"MachineDeployment(s) "
                                                f"{', '.join(upgrade_pending)} rollout and "
                                                f"upgrade to version {version} on hold."))
        if pending:
            reasons = [p[0] for p in pending]
            reason = next(r for r in (CP_UPGRADE_PENDING, MD_UPGRADE_PENDING,
                                      MD_CREATE_PENDING) if r in reasons)
            desired.pending = (reason, " ".join(p[1] for p in pending))
        return desired

    def control_plane_version(self, cluster: Obj, current: Current, version: str
                              ) -> tuple[str, bool, str | None]:
        """The control plane's version, whether it is stable (upstream's
        computeControlPlaneVersion and isControlPlaneStable), and a message when its
        upgrade is on hold (provisioning, upgrading, scaling, or workers upgrading)."""
        cp = current.control_plane
        if cp is None:
            return version, True, None
        if _spec(cp).get("version") == version:
            return version, not (cp_upgrading(cp) or cp_scaling(cp)), None
        if not _status(cp).get("version") or cp_upgrading(cp) or cp_scaling(cp) or any(
                self.deployment_upgrading(cluster, d.deployment)
                for d in current.deployments.values()):
            return (str(_spec(cp).get("version") or version), False,
                    f"Control plane rollout and upgrade to version {version} on hold.")
        return version, False, None  # the upgrade starts now: not stable

    @staticmethod
    def network_builtins(network: Obj) -> Obj:
        pods = list((network.get("pods") or {}).get("cidrBlocks") or [])
        services = list((network.get("services") or {}).get("cidrBlocks") or [])
        families = set()
        for cidr in pods + services:
            try:
                families.add(ipaddress.ip_network(cidr, strict=False).version)
            except ValueError:
                families.add(0)
        family = "IPv4" if families in (set(), {4}) else "IPv6" if families == {6} else \
            "DualStack" if families == {4, 6} else "Invalid"
        out: Obj = {"ipFamily": family}
        if network.get("serviceDomain"):
            out["serviceDomain"] = network["serviceDomain"]
        if services:
            out["services"] = services
        if pods:
            out["pods"] = pods
        return out

    @staticmethod
    def template_clone(patched: Obj, cluster: Obj, labels: dict[str, str],
                       current: Obj | None, name: str, prefix: str) -> Obj:
        """A template cloned from the class's (patched) one, named ``name`` (the current
        clone's name, or the one planned for a new clone); a current clone whose spec
        differs is replaced by one with a new name from ``prefix`` (a rotation)."""
        spec = {"template": copy.deepcopy(_spec(patched).get("template") or {})}
        digest = spec_hash(spec)
        group = patched["apiVersion"].rpartition("/")[0]
        same = current is not None and (current["metadata"].get("annotations") or {}).get(
            TEMPLATE_DIGEST) == digest
        return {"apiVersion": patched["apiVersion"], "kind": patched["kind"],
                "metadata": {
                    "name": name if current is None or same else prefixed_name(prefix),
                    "namespace": cluster["metadata"]["namespace"],
                    "labels": dict(labels),
                    "annotations": {"cluster.x-k8s.io/cloned-from-name":
                                    patched["metadata"]["name"],
                                    "cluster.x-k8s.io/cloned-from-groupkind":
                                    f"{patched['kind']}.{group}",
                                    TEMPLATE_DIGEST: digest},
                    "ownerReferences": [owner_reference(cluster)]},
                "spec": spec}

    @staticmethod
    def control_plane(cluster: Obj, patched: Obj, name: str, version: str, cp_topology: Obj,
                      cp_class: Obj, machine: Obj | None, owned: dict[str, str]) -> Obj:
        labels, annotations = _meta_merge(cp_topology.get("metadata"), cp_class.get("metadata"))
        cp = clone_template(patched, name, patched["kind"].removesuffix("Template"),
                            {**labels, **owned}, cluster, annotations)
        cp["metadata"]["namespace"] = cluster["metadata"]["namespace"]
        spec = cp["spec"]
        if cp_topology.get("replicas") is not None:
            spec["replicas"] = int(cp_topology["replicas"])
        spec["version"] = version
        template = spec.setdefault("machineTemplate", {})
        if labels or annotations:
            template["metadata"] = {k: v for k, v in (("labels", labels),
                                                      ("annotations", annotations)) if v}
        if machine is not None:
            template["infrastructureRef"] = object_ref(machine)
        for key in (*_TIMEOUTS, "readinessGates"):
            value = cp_topology.get(key, cp_class.get(key))
            if value is not None:
                template[key] = copy.deepcopy(value)
        return cp

    @staticmethod
    def deployment(cluster: Obj, md_topology: Obj, wc: WorkerClass, name: str, version: str,
                   bootstrap: Obj, machine: Obj) -> Obj:
        cluster_name = cluster["metadata"]["name"]
        selector = {CLUSTER_NAME: cluster_name, OWNED: "",
                    TOPOLOGY_DEPLOYMENT: str(md_topology["name"])}
        labels, annotations = _meta_merge(md_topology.get("metadata"),
                                          (wc.spec.get("template") or {}).get("metadata"))
        machine_spec: Obj = {"clusterName": cluster_name, "version": version,
                             "bootstrap": {"configRef": object_ref(bootstrap)},
                             "infrastructureRef": object_ref(machine)}
        for key in ("failureDomain", *_TIMEOUTS, "readinessGates"):
            value = md_topology.get(key, wc.spec.get(key))
            if value is not None:
                machine_spec[key] = copy.deepcopy(value)
        template_meta: Obj = {"labels": {**labels, **selector}}
        if annotations:
            template_meta["annotations"] = dict(annotations)
        spec: Obj = {"clusterName": cluster_name, "selector": {"matchLabels": dict(selector)},
                     "template": {"metadata": template_meta, "spec": machine_spec}}
        if md_topology.get("replicas") is not None:
            spec["replicas"] = int(md_topology["replicas"])
        for key in ("minReadySeconds", "strategy"):
            value = md_topology.get(key, wc.spec.get(key))
            if value is not None:
                spec[key] = copy.deepcopy(value)
        metadata: Obj = {"name": name, "namespace": cluster["metadata"]["namespace"],
                         "labels": {**labels, **selector},
                         "ownerReferences": [owner_reference(cluster)]}
        if annotations:
            metadata["annotations"] = dict(annotations)
        return {"apiVersion": f"{CAPI}/{V1B1}", "kind": "MachineDeployment",
                "metadata": metadata, "spec": spec}

    # -- writing ------------------------------------------------------------------------

    def apply(self, cluster: Obj, current: Current, desired: Desired) -> None:
        """Upstream's reconcileState order: infrastructure cluster, control plane (its
        machine template first), the Cluster's references, MachineDeployments, cleanup."""
        infra = self.ensure(cluster, desired.infrastructure, current.infrastructure)
        if desired.control_plane_machine is not None:
            self.ensure_template(cluster, desired.control_plane_machine,
                                 current.control_plane_machine)
        cp = self.ensure(cluster, desired.control_plane, current.control_plane)
        self.set_refs(cluster, infra, cp)
        for topology_name, want in desired.deployments.items():
            cur = current.deployments.get(topology_name)
            self.ensure_template(cluster, want.bootstrap, cur.bootstrap if cur else None)
            self.ensure_template(cluster, want.infrastructure, cur.infrastructure if cur
                                 else None)
            self.ensure(cluster, want.deployment, cur.deployment if cur else None)
        topology_names = {str(md.get("name")) for md in ((_spec(cluster)["topology"].get(
            "workers") or {}).get("machineDeployments") or [])}
        for topology_name, cur in current.deployments.items():
            if topology_name not in topology_names:
                md = cur.deployment
                delete_quietly(self.api, MACHINEDEPLOYMENTS, md["metadata"]["namespace"],
                               md["metadata"]["name"])
                record(self.api, cluster, "Normal", "TopologyDelete", f'Deleted "{describe(md)}"')
        self.collect_templates(cluster)

    def ensure(self, cluster: Obj, desired: Obj, current: Obj | None) -> Obj:
        """Create ``desired``, or patch ``current`` by the three-way diff."""
        ref = ref_for(desired)
        ns = cluster["metadata"]["namespace"]
        meta = desired["metadata"]
        managed = {"labels": meta.get("labels") or {},
                   "annotations": meta.get("annotations") or {},
                   "spec": desired.get("spec") or {}}
        applied = json.dumps(managed, sort_keys=True, separators=(",", ":"))
        if current is None:
            body = copy.deepcopy(desired)
            body["metadata"]["annotations"] = {**managed["annotations"], APPLIED: applied}
            obj = create_or_get(self.api, ref, ns, body)
            record(self.api, cluster, "Normal", "TopologyCreate", f'Created "{describe(obj)}"')
            return obj
        cmeta = current["metadata"]
        annotations = dict(cmeta.get("annotations") or {})
        last_text = annotations.pop(APPLIED, "")
        try:
            last = json.loads(last_text) if last_text else {}
        except ValueError:
            last = {}
        diff = apply_diff(last, managed, {"labels": cmeta.get("labels") or {},
                                          "annotations": annotations,
                                          "spec": current.get("spec") or {}})
        owners = None
        if not owned_by(current, cluster):
            owners = [*(o for o in cmeta.get("ownerReferences") or []
                        if o.get("kind") != "Cluster"), owner_reference(cluster)]
        if not diff and last_text == applied and owners is None:
            return current
        patch: Obj = {"metadata": {"annotations": {**diff.get("annotations", {}),
                                                   APPLIED: applied}}}
        if "labels" in diff:
            patch["metadata"]["labels"] = diff["labels"]
        if owners is not None:
            patch["metadata"]["ownerReferences"] = owners
        if "spec" in diff:
            patch["spec"] = diff["spec"]
        obj = self.api.patch(ref, ns, cmeta["name"], patch)
        if diff:
            record(self.api, cluster, "Normal", "TopologyUpdate", f'Updated "{describe(obj)}"')
        return obj

    def ensure_template(self, cluster: Obj, desired: Obj, current: Obj | None) -> None:
        """A template is made once; a different desired spec has a different name."""
        if current is not None and current["metadata"]["name"] == desired["metadata"]["name"]:
            return
        obj = create_or_get(self.api, ref_for(desired), cluster["metadata"]["namespace"],
                            desired)
        if current is not None:
            LOG.info("[%s/%s] topology: %s rotated to %s", cluster["metadata"]["namespace"],
                     cluster["metadata"]["name"], describe(current), obj["metadata"]["name"])
        record(self.api, cluster, "Normal", "TopologyCreate", f'Created "{describe(obj)}"')

    def set_refs(self, cluster: Obj, infra: Obj, cp: Obj) -> None:
        spec = _spec(cluster)
        want = {"infrastructureRef": object_ref(infra), "controlPlaneRef": object_ref(cp)}
        if all(covers(v, spec.get(k)) for k, v in want.items()):
            return
        meta = cluster["metadata"]
        self.api.patch(CLUSTERS, meta["namespace"], meta["name"], {"spec": want})

    def collect_templates(self, cluster: Obj) -> None:
        """Delete generated templates that no control plane, MachineDeployment or
        MachineSet of the cluster names any more (rotated out, or their MachineDeployment
        is gone)."""
        meta = cluster["metadata"]
        ns, name = meta["namespace"], meta["name"]
        selector = f"{CLUSTER_NAME}={name}"
        used: set[tuple[str, str]] = set()

        def use(object_ref: Obj | None) -> None:
            if object_ref:
                used.add((str(object_ref.get("kind")), str(object_ref.get("name"))))

        fresh = get_or_none(self.api, CLUSTERS, ns, name) or cluster
        cp = self._get(_spec(fresh).get("controlPlaneRef"), ns)
        use((_spec(cp).get("machineTemplate") or {}).get("infrastructureRef"))
        for ref in (MACHINEDEPLOYMENTS, MACHINESETS):
            for obj in listed(self.api, ref, ns, selector):
                tspec = (_spec(obj).get("template") or {}).get("spec") or {}
                use((tspec.get("bootstrap") or {}).get("configRef"))
                use(tspec.get("infrastructureRef"))
        for ref in (KUBEADMCONFIGTEMPLATES, VSPHEREMACHINETEMPLATES):
            for template in listed(self.api, ref, ns, f"{selector},{OWNED}"):
                if (template["kind"], template["metadata"]["name"]) in used or \
                        deleting(template) or not owned_by(template, cluster):
                    continue
                delete_quietly(self.api, ref, ns, template["metadata"]["name"])
                record(self.api, cluster, "Normal", "TopologyDelete",
                       f'Deleted "{describe(template)}"')


__all__ = ["OWNED", "TEMPLATE_REFS", "TOPOLOGY_DEPLOYMENT", "TopologyController",
           "TopologyError", "apply_diff", "lookup", "render", "resolve_variables"]
