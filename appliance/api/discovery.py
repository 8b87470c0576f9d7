"""API discovery documents, legacy and aggregated (apidiscovery.k8s.io v2/v2beta1)."""

from __future__ import annotations

from typing import Any

from appliance.kinds.registry import Kind, Registry

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"


def aggregated_version(accept: str) -> str | None:
    """The aggregated discovery version to answer with, in the client's order of preference."""
    for part in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip()
                  for p in part.split(";")[1:] if "=" in p}
        if params.get("g") == "apidiscovery.k8s.io" and \
                params.get("as") == "APIGroupDiscoveryList" and params.get("v") in ("v2", "v2beta1"):
            return params["v"]
    return None


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": server_address}]}


def _group_entry(registry: Registry, group: str) -> dict[str, Any]:
    versions = registry.group_versions(group)
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group_entry(registry, g) for g in registry.groups() if g]}


def api_group(registry: Registry, group: str) -> dict[str, Any]:
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_entry(registry, group)}


def _subresources(kind: Kind) -> list[str]:
    subs = list(kind.extra_subresources)
    if kind.has_status:
        subs.insert(0, "status")
    return subs


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for kind in registry.kinds_in(group, version):
        entry: dict[str, Any] = {
            "name": kind.plural, "singularName": kind.singular, "namespaced": kind.namespaced,
            "kind": kind.kind, "verbs": list(kind.verbs),
        }
        if kind.short_names:
            entry["shortNames"] = list(kind.short_names)
        if kind.categories:
            entry["categories"] = list(kind.categories)
        if kind.storable:
            entry["storageVersionHash"] = kind.storage_version.name
        resources.append(entry)
        for sub in _subresources(kind):
            resources.append({"name": f"{kind.plural}/{sub}", "singularName": "",
                              "namespaced": kind.namespaced, "kind": kind.kind,
                              "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": resources}


def _aggregated_resource(kind: Kind, version: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": kind.plural,
        "responseKind": {"group": kind.group, "version": version, "kind": kind.kind},
        "scope": "Namespaced" if kind.namespaced else "Cluster",
        "singularResource": kind.singular, "verbs": list(kind.verbs),
    }
    if kind.short_names:
        entry["shortNames"] = list(kind.short_names)
    if kind.categories:
        entry["categories"] = list(kind.categories)
    subs = _subresources(kind)
    if subs:
        entry["subresources"] = [{
            "subresource": s, "responseKind": {"group": kind.group, "version": version,
                                               "kind": kind.kind},
            "verbs": ["get", "patch", "update"]} for s in subs]
    return entry


def aggregated(registry: Registry, core: bool, version: str) -> dict[str, Any]:
    groups = [""] if core else [g for g in registry.groups() if g]
    items = []
    for group in groups:
        versions = []
        for v in registry.group_versions(group):
            versions.append({"version": v, "freshness": "Current",
                             "resources": [_aggregated_resource(k, v)
                                           for k in registry.kinds_in(group, v)]})
        items.append({"metadata": {"name": group}, "versions": versions})
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}
