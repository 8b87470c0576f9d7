"""First-start objects: RBAC roles, the administrator, node identities.

vSphere's per-namespace permissions map onto three ClusterRoles, granted in a
namespace with a RoleBinding (the dashboard and ``lab`` make those):

- ``pacific:namespace-owner``: everything in the namespace, including its
  role bindings (and so granting view/edit/owner to others); not status, which
  controllers write, nor the Namespace object beyond reading it;
- ``pacific:namespace-edit``: create, change and delete workloads; read the
  namespace's quota, bindings and events;
- ``pacific:namespace-view``: read everything except Secrets.

The edit and view roles are computed from the kind registry on every start,
so kinds added later are covered without touching this file.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from appliance import errors
from appliance.auth import users
from appliance.auth.rbac import RBAC
from appliance.kinds.registry import Registry
from appliance.objects import SYSTEM, ObjectService, Target, WriteOptions

LOG = logging.getLogger(__name__)

OWNER, EDIT, VIEW = "pacific:namespace-owner", "pacific:namespace-edit", "pacific:namespace-view"
ROLE_FOR = {"owner": OWNER, "edit": EDIT, "view": VIEW}
HOST_AGENT = "pacific:host-agent"
ADMIN_USER = "admin"

READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete", "deletecollection"]
#: Kinds that editors may read but not change: the administrator's levers.
ADMIN_ONLY = {("", "resourcequotas"), (RBAC, "roles"), (RBAC, "rolebindings"),
              ("vmoperator.vmware.com", "virtualmachineclasses"),
              ("vmoperator.vmware.com", "virtualmachineimages"),
              ("vmware.com", "virtualnetworks"),
              # Written by the registry front only; an owner may delete one.
              ("registry.pacific.lab", "repositories")}
#: The lab registry's actions are RBAC verbs on a namespace's repositories:
#: view pulls, edit pulls and pushes, owner also deletes (its WRITE verbs).
REGISTRY = ("registry.pacific.lab", "repositories")
#: Subresources viewers may read (Kubernetes' view role reads pod logs too).
VIEWABLE_SUBRESOURCES = {"pods/log"}
#: Kinds hidden from viewers: they carry credentials.
SECRET_KINDS = {("", "secrets")}


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def namespace_roles(registry: Registry) -> dict[str, list[dict[str, Any]]]:
    namespaced = [k for k in registry.kinds if k.namespaced and k.storable]
    edit: list[dict[str, Any]] = [_rule([""], ["namespaces"], ["get"])]
    view: list[dict[str, Any]] = [_rule([""], ["namespaces"], ["get"])]
    for kind in namespaced:
        key = (kind.group, kind.plural)
        subs = [f"{kind.plural}/{s}" for s in kind.extra_subresources]
        status = [f"{kind.plural}/status"] if kind.has_status else []
        if key not in SECRET_KINDS:
            logs = [s for s in subs if s in VIEWABLE_SUBRESOURCES]
            view.append(_rule([kind.group], [kind.plural, *status, *logs], READ))
        # Status is written by controllers only; people read it.
        edit.append(_rule([kind.group], [kind.plural, *status, *subs], READ))
        if key not in ADMIN_ONLY:
            edit.append(_rule([kind.group], [kind.plural, *subs], WRITE))
    view.append(_rule([REGISTRY[0]], [REGISTRY[1]], ["pull"]))
    edit.append(_rule([REGISTRY[0]], [REGISTRY[1]], ["pull", "push"]))
    # Everything in the namespace, but not "bind"/"escalate": an owner may grant
    # only permissions it holds itself. Kind by kind, not a wildcard: a wildcard
    # would also grant writing status (the controllers' alone: a VM's placement and
    # addresses live there) and changing or deleting the Namespace object itself
    # (requests about a namespace are decided inside it), which stays the
    # administrator's: its labels feed NetworkPolicy namespaceSelectors.
    owner: list[dict[str, Any]] = [_rule([""], ["namespaces"], ["get"])]
    for kind in namespaced:
        subs = [f"{kind.plural}/{s}" for s in kind.extra_subresources]
        status = [f"{kind.plural}/status"] if kind.has_status else []
        owner.append(_rule([kind.group], [kind.plural, *status, *subs], READ))
        owner.append(_rule([kind.group], [kind.plural, *subs], WRITE))
    owner.append(_rule([REGISTRY[0]], [REGISTRY[1]], ["pull", "push"]))
    return {OWNER: owner, EDIT: edit, VIEW: view}


def cluster_roles(registry: Registry) -> dict[str, list[dict[str, Any]]]:
    roles = namespace_roles(registry)
    roles["cluster-admin"] = [_rule(["*"], ["*"], ["*"]),
                              {"nonResourceURLs": ["*"], "verbs": ["*"]}]
    roles["system:basic-user"] = [_rule(["authorization.k8s.io"], [
        "selfsubjectaccessreviews", "selfsubjectrulesreviews"], ["create"])]
    roles["system:discovery"] = [{"nonResourceURLs": [
        "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/openapi",
        "/openapi/*", "/version", "/version/"], "verbs": ["get"]}]
    agent = [_rule([""], ["nodes", "nodes/status"], READ + WRITE),
             # Bootstrap data of the VMs placed on the host. (Kubernetes narrows this
             # with its node authorizer; here every host agent may read Secrets.)
             _rule([""], ["secrets"], ["get"]),
             # Removing its finalizer once a VM's domain and disks are gone.
             _rule(["vmoperator.vmware.com"], ["virtualmachines"], ["patch", "update"]),
             _rule([""], ["pods"], ["patch", "update"]),
             # A pod VM's address is released once the VM is gone (as a CNI plugin does).
             _rule(["vmware.com"], ["virtualnetworkinterfaces"], ["delete"]),
             _rule([""], ["events"], ["create", "update", "patch"])]
    for kind in registry.kinds:
        if kind.storable and (kind.group, kind.plural) not in SECRET_KINDS:
            agent.append(_rule([kind.group], [kind.plural], READ))
            if kind.has_status:
                agent.append(_rule([kind.group], [f"{kind.plural}/status"], ["get", "update",
                                                                              "patch"]))
    roles[HOST_AGENT] = agent
    # What every signed-in user may read, as on vSphere: the cluster-wide images and
    # the Kubernetes releases (`kubectl get tkr`) with their OS images.
    roles["pacific:image-viewer"] = [_rule(["vmoperator.vmware.com"],
                                           ["clustervirtualmachineimages"], READ),
                                     _rule(["run.tanzu.vmware.com"],
                                           ["tanzukubernetesreleases", "osimages"], READ)]
    return roles


CLUSTER_BINDINGS = {
    "cluster-admin": ("cluster-admin", users.MASTERS),
    "pacific:administrators": ("cluster-admin", users.ADMINS),
    "system:basic-user": ("system:basic-user", users.AUTHENTICATED),
    "system:discovery": ("system:discovery", users.AUTHENTICATED),
    HOST_AGENT: (HOST_AGENT, users.NODES),
    "pacific:image-viewer": ("pacific:image-viewer", users.AUTHENTICATED),
}


def _ensure(service: ObjectService, plural: str, name: str, body: dict[str, Any]) -> None:
    kind = service.registry.by_group_plural(RBAC, plural)
    assert kind is not None
    target = Target(kind, "v1", "", name)
    full = {"apiVersion": f"{RBAC}/v1", "kind": kind.kind, "metadata": {
        "name": name, "labels": {"pacific.lab/bootstrap": "true"}}, **body}
    try:
        current = service.get(SYSTEM, target)
    except errors.ApiError as err:
        if err.code != 404:
            raise
        service.create(SYSTEM, Target(kind, "v1"), full, WriteOptions())
        return
    if any(current.get(k) != v for k, v in body.items()):
        full["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        service.update(SYSTEM, target, full)


def ensure_rbac(service: ObjectService) -> None:
    for name, rules in cluster_roles(service.registry).items():
        _ensure(service, "clusterroles", name, {"rules": rules})
    for name, (role, group) in CLUSTER_BINDINGS.items():
        _ensure(service, "clusterrolebindings", name, {
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "Group", "apiGroup": RBAC, "name": group}]})


def ensure_admin(service: ObjectService) -> str | None:
    """Make the administrator on first start; returns its password only then."""
    with service.store.write() as txn:
        if users.user_exists(txn.session, ADMIN_USER):
            return None
        password = secrets.token_urlsafe(18)
        users.create_user(txn.session, ADMIN_USER, password, [users.MASTERS, users.ADMINS])
    LOG.info("administrator %r created", ADMIN_USER)
    return password


def grant(service: ObjectService, actor: users.UserInfo, namespace: str, user: str,
          role: str) -> None:
    """Give ``user`` the vSphere role ``role`` (owner, edit, view) in ``namespace``."""
    if role not in ROLE_FOR:
        raise errors.bad_request(f"unknown role {role!r}: choose owner, edit or view")
    kind = service.registry.by_group_plural(RBAC, "rolebindings")
    assert kind is not None
    body = {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding",
            "metadata": {"name": f"pacific-{role}-{user}", "namespace": namespace,
                         "labels": {"pacific.lab/role": role, "pacific.lab/user": user}},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": ROLE_FOR[role]},
            "subjects": [{"kind": "User", "apiGroup": RBAC, "name": user}]}
    service.create(actor, Target(kind, "v1", namespace), body)
