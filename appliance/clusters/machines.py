"""Making Machines the way KubeadmControlPlane and MachineSet both do.

A Machine is created first, naming its bootstrap config and infrastructure
machine by its own name; then those two are cloned (from a template, or from
the control plane's KubeadmConfigSpec) with the Machine as their owner.
``ensure_children`` runs on every pass for every machine, so a pass cut short
between the two steps is finished by the next one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from appliance.clusters.objects import (
    BOOTSTRAP,
    CAPI,
    CLUSTER_NAME,
    MACHINES,
    V1B1,
    clone_template,
    create_or_get,
    owner_reference,
    random_suffix,
    ref_for,
)
from appliance.controllers.base import TemporaryError
from appliance.kinds.registry import Obj
from appliance.resources import ResourceApi, get_or_none


class TemplateNotFound(TemporaryError):
    """A template a machine is made from does not exist (yet): no machine is made."""

    def __init__(self, template_ref: Obj, namespace: str) -> None:
        super().__init__(f"{template_ref.get('kind') or 'template'} "
                         f"{template_ref.get('name')!r} not found in namespace {namespace}",
                         10.0)


@dataclass(frozen=True)
class MachineRecipe:
    """What a new machine is made of."""

    cluster: str
    version: str
    infrastructure_template: Obj  # an ObjectReference to a *MachineTemplate
    labels: dict[str, str]
    annotations: dict[str, str]
    # Either a bootstrap config template reference or a KubeadmConfigSpec to copy.
    bootstrap_template: Obj | None = None
    bootstrap_spec: Obj | None = None
    node_drain_timeout: str | None = None
    failure_domain: str | None = None


def check_templates(api: ResourceApi, namespace: str, recipe: MachineRecipe) -> None:
    """Raise :class:`TemplateNotFound` unless every template of ``recipe`` exists."""
    for ref in (recipe.infrastructure_template, recipe.bootstrap_template):
        if ref is not None and get_or_none(api, ref_for(ref), namespace,
                                           ref.get("name", "")) is None:
            raise TemplateNotFound(ref, namespace)


def new_machine(api: ResourceApi, namespace: str, prefix: str, recipe: MachineRecipe,
                owner: Obj) -> Obj:
    """A new Machine with its infrastructure machine and bootstrap config; nothing is
    made when a template is missing."""
    check_templates(api, namespace, recipe)
    name = f"{prefix}-{random_suffix()}"
    infra_ref = recipe.infrastructure_template
    infra_kind = str(infra_ref.get("kind") or "").removesuffix("Template")
    spec: Obj = {
        "clusterName": recipe.cluster, "version": recipe.version,
        "bootstrap": {"configRef": {"apiVersion": f"{BOOTSTRAP}/{V1B1}",
                                    "kind": "KubeadmConfig", "name": name,
                                    "namespace": namespace}},
        "infrastructureRef": {"apiVersion": infra_ref.get("apiVersion"), "kind": infra_kind,
                              "name": name, "namespace": namespace}}
    if recipe.node_drain_timeout:
        spec["nodeDrainTimeout"] = recipe.node_drain_timeout
    if recipe.failure_domain:
        spec["failureDomain"] = recipe.failure_domain
    machine = api.create(MACHINES, namespace, {
        "apiVersion": f"{CAPI}/{V1B1}", "kind": "Machine",
        "metadata": {"name": name, "labels": {**recipe.labels, CLUSTER_NAME: recipe.cluster},
                     "annotations": dict(recipe.annotations),
                     "ownerReferences": [owner_reference(owner)]},
        "spec": spec})
    ensure_children(api, machine, recipe)
    return machine


def ensure_children(api: ResourceApi, machine: Obj, recipe: MachineRecipe) -> None:
    """The machine's infrastructure machine and bootstrap config, if missing."""
    meta, spec = machine["metadata"], machine.get("spec") or {}
    ns, name = meta["namespace"], meta["name"]
    labels = {k: v for k, v in (meta.get("labels") or {}).items()}
    infra = spec.get("infrastructureRef") or {}
    if get_or_none(api, ref_for(infra), ns, infra.get("name", "")) is None:
        template_ref = recipe.infrastructure_template
        template = get_or_none(api, ref_for(template_ref), ns, template_ref.get("name", ""))
        if template is None:
            raise TemplateNotFound(template_ref, ns)
        create_or_get(api, ref_for(infra), ns, clone_template(
            template, infra["name"], infra["kind"], labels, machine))
    config_ref = (spec.get("bootstrap") or {}).get("configRef") or {}
    if not config_ref or get_or_none(api, ref_for(config_ref), ns, name) is not None:
        return
    if recipe.bootstrap_template is not None:
        tref = recipe.bootstrap_template
        template = get_or_none(api, ref_for(tref), ns, tref.get("name", ""))
        if template is None:
            raise TemplateNotFound(tref, ns)
        body = clone_template(template, name, "KubeadmConfig", labels, machine)
    else:
        body = {"apiVersion": f"{BOOTSTRAP}/{V1B1}", "kind": "KubeadmConfig",
                "metadata": {"name": name, "labels": labels,
                             "ownerReferences": [owner_reference(machine)]},
                "spec": copy.deepcopy(recipe.bootstrap_spec or {})}
    create_or_get(api, ref_for(config_ref), ns, body)
