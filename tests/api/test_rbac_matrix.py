"""The RBAC matrix of issue 17, generated from discovery.

Every resource and subresource the API's discovery lists (``/api/v1``, ``/apis``
and each group version's resource list) is asked for with every verb it serves,
by six identities (no token, a user with no role, view/edit/owner in ``team-a``,
the administrator), in the identity's own namespace (``team-a``), in someone
else's (``team-b``), across all namespaces and at the cluster scope, by name for
an object that exists and for one that does not. Every write is a dry run.

What each cell should answer comes from the role table below (:func:`allowed`),
written down from the documented vSphere semantics, not from the server's RBAC
code. Allowed means neither 401 nor 403 (and a 404 for a missing name); refused
means 403 (401 without a token), never a 404 that tells the refused whether the
object exists. ``pytest -s`` prints the matrix.

A second test walks every route of the dashboard's url_map as the same identities:
pages, actions a role may not take (refused, nothing changed) and POSTs without a
valid CSRF token (refused, for everyone).
"""

from __future__ import annotations

import copy
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.api.conftest import PASSWORD, Api, People
from tests.support.server import LabServer

pytestmark = pytest.mark.api

OWN, OTHER = "team-a", "team-b"  # the people fixture's roles are all in team-a
RBAC = "rbac.authorization.k8s.io"
VMOP = "vmoperator.vmware.com"
TANZU = "run.tanzu.vmware.com"
AUTHZ = "authorization.k8s.io"

#: Identity -> the user of the people fixture ("" for none).
IDENTITIES = {"anonymous": "", "nobody": "nobody", "view": "vera", "edit": "eddie",
              "owner": "olivia", "admin": ""}
ROLES = ("view", "edit", "owner")
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
VERB_LETTERS = {"get": "g", "list": "l", "watch": "w", "create": "c", "update": "u",
                "patch": "p", "delete": "d", "deletecollection": "D"}
READ = ("get", "list", "watch")
BY_NAME = ("get", "update", "patch", "delete")
COLLECTION = ("list", "watch", "create", "deletecollection")

MISSING = "rbac-matrix-missing"  # a name nothing has, in any namespace
FIXTURE = "rbac-matrix"  # objects this test makes as the administrator
NEW = "rbac-matrix-new"  # what the dry-run creates ask for
MARK = {"metadata": {"labels": {"rbac-matrix": "probe"}}}  # every dry-run patch


# -- the role table ---------------------------------------------------------------------------

#: Cluster-wide kinds every signed-in user may read, as on vSphere: the image library
#: and the Kubernetes releases (``kubectl get tkr``) with their OS images. Only the
#: objects: their status is granted to nobody but the administrator.
EVERYONE_READS = {(VMOP, "clustervirtualmachineimages"), (TANZU, "tanzukubernetesreleases"),
                  (TANZU, "osimages")}
#: Namespaced kinds an editor reads but does not change: the administrator's levers
#: (limits, VM classes and images assigned to the namespace, its network), the role
#: bindings and roles (granting is the owner's), and the registry's repositories
#: (written by pushes to the registry; an owner may delete one through the API).
EDITORS_READ_ONLY = {("", "resourcequotas"), (RBAC, "roles"), (RBAC, "rolebindings"),
                     (VMOP, "virtualmachineclasses"), (VMOP, "virtualmachineimages"),
                     ("vmware.com", "virtualnetworks"), ("registry.pacific.lab", "repositories")}
#: What "read everything except Secrets" leaves out for viewers: Secrets, and a VM's
#: serial console (it prints what cloud-init does, credentials included; the
#: dashboard hides it from viewers too). A pod's log is readable, as with Kubernetes'
#: own view role.
HIDDEN_FROM_VIEWERS = {("", "secrets", ""), (VMOP, "virtualmachines", "console")}


def allowed(identity: str, verb: str, group: str, resource: str, sub: str, scope: str) -> bool:
    """May ``identity`` ``verb`` ``resource[/sub]`` of ``group`` in ``scope``?

    ``scope`` is ``own`` (team-a, where view/edit/owner hold their role), ``other``
    (team-b, where nobody but the administrator holds one), ``all`` (a namespaced
    kind across every namespace) or ``cluster`` (a cluster-scoped kind). For the
    Namespace kind, ``own``/``other`` are the namespace objects team-a/team-b."""
    if identity == "anonymous":
        return False  # every resource request needs a token: 401
    if identity == "admin":
        return True  # the administrator is cluster-admin
    key = (group, resource)
    if key == ("", "namespaces") and scope in ("own", "other"):
        # A role in a namespace lets one read the namespace object (`kubectl get ns
        # team-a`, `lab login` lists it), but changing or deleting it is the
        # administrator's, who carves namespaces out: even for its owner. Its labels
        # feed NetworkPolicy namespaceSelectors (isolation), its finalizers hold the
        # cleanup of everything in it, and status/finalize are the controllers'.
        return scope == "own" and identity in ROLES and verb == "get" and not sub
    if scope in ("cluster", "all"):
        # Namespace users see nothing cluster-wide (not the hosts, the namespaces, the
        # cluster roles, the address pools) and list nothing across namespaces; the
        # exceptions are the shared image library and reviews of one's own access.
        if key in EVERYONE_READS and not sub and verb in READ:
            return True
        return group == AUTHZ and verb == "create"
    if scope == "other" or identity == "nobody":
        return False  # a role in team-a gives nothing in team-b
    if sub == "status" and verb not in READ:
        return False  # status is written by controllers only, never by people
    if identity == "view":
        return verb in READ and (group, resource, "") not in HIDDEN_FROM_VIEWERS and \
            (group, resource, sub) not in HIDDEN_FROM_VIEWERS
    if identity == "edit":
        return verb in READ or key not in EDITORS_READ_ONLY
    # The owner: everything in the namespace, including granting roles. That includes
    # its quota (tests/api/test_kubectl.py: the owner may update resourcequotas), VM
    # classes and images, which a vSphere Owner could not change: the project's choice.
    return True


# -- what is asked ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One entry of a group version's discovery document."""

    group: str
    version: str
    plural: str
    sub: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]

    @property
    def label(self) -> str:
        res = f"{self.plural}/{self.sub}" if self.sub else self.plural
        return f"{res}.{self.group}" if self.group else res

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str = "", name: str = "") -> str:
        """The collection's URL, or the named object's (its subresource's)."""
        root = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        out = root + (f"/namespaces/{namespace}" if namespace else "") + f"/{self.plural}"
        if name:
            out += f"/{name}" + (f"/{self.sub}" if self.sub else "")
        return out


@dataclass(frozen=True, eq=False)  # hashed by identity: each request is its own
class Probe:
    """One request: a cell of the matrix (row, identity, verb) may hold several."""

    resource: Resource
    scope: str
    identity: str
    verb: str
    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    body: Any = None
    content_type: str = "application/json"
    missing: bool = False  # a by-name request for a name that does not exist

    @property
    def row(self) -> tuple[str, str]:
        return self.resource.label, self.scope

    @property
    def expected(self) -> bool:
        r = self.resource
        return allowed(self.identity, self.verb, r.group, r.plural, r.sub, self.scope)

    def judge(self, code: int) -> str:
        """Why ``code`` is not what the role table says ("" when it is)."""
        if not self.expected:
            want = 401 if self.identity == "anonymous" else 403
            return "" if code == want else f"expected {want} (refused)"
        if code in (401, 403) or code >= 500:
            return "expected allowed"
        if self.missing and self.verb in ("get", "patch", "delete") and code != 404:
            return "expected 404 (allowed, no such object)"
        return ""

    def describe(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.params)
        return f"{self.method} {self.path}{'?' + query if query else ''}"


def discover(admin: requests.Session, url: str) -> list[Resource]:
    """Every resource and subresource of every served group version, once: a resource
    served in several versions is asked for in its group's preferred version."""
    versions = [("", "v1")]
    for group in admin.get(url + "/apis", timeout=30).json()["groups"]:
        preferred = group["preferredVersion"]["version"]
        rest = [v["version"] for v in group["versions"] if v["version"] != preferred]
        versions += [(group["name"], v) for v in (preferred, *rest)]
    found: dict[tuple[str, str], Resource] = {}
    for group, version in versions:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        reply = admin.get(url + path, timeout=30)
        assert reply.status_code == 200, (path, reply.text)
        for entry in reply.json()["resources"]:
            plural, _, sub = entry["name"].partition("/")
            found.setdefault((group, entry["name"]), Resource(
                group, version, plural, sub, entry["kind"], entry["namespaced"],
                tuple(entry["verbs"])))
    return list(found.values())


#: Bodies for kinds whose create needs more than a name to say anything.
EXAMPLE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    (AUTHZ, "SelfSubjectAccessReview"): {"spec": {"resourceAttributes": {
        "verb": "get", "resource": "configmaps", "namespace": OWN}}},
    (AUTHZ, "SelfSubjectRulesReview"): {"spec": {"namespace": OWN}},
}
#: Inert objects the administrator makes in both namespaces, so that by-name requests
#: meet an object that exists (kinds whose objects start VMs or networks are left out:
#: for those only the missing name is asked for).
FIXTURE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("", "configmaps"): {"data": {"k": "v"}},
    ("", "secrets"): {"stringData": {"k": "v"}},
    ("", "events"): {"reason": "RbacMatrix", "message": "an event to read",
                     "involvedObject": {"kind": "ConfigMap", "name": FIXTURE}},
    (RBAC, "roles"): {"rules": []},
    (RBAC, "rolebindings"): {
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "pacific:namespace-view"},
        "subjects": [{"kind": "User", "apiGroup": RBAC, "name": "rbac-matrix-ghost"}]},
    ("coordination.k8s.io", "leases"): {"spec": {"holderIdentity": "rbac-matrix"}},
}


@dataclass
class World:
    """What exists: for each (resource, scope) the name of one object (or none) and
    its body as the administrator reads it, plus a template for creates."""

    names: dict[tuple[str, str, str], str] = field(default_factory=dict)
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    templates: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)


def _namespace_of(r: Resource, scope: str) -> str:
    return {"own": OWN, "other": OTHER}.get(scope, "") if r.namespaced else ""


def survey(admin: requests.Session, url: str, resources: list[Resource]) -> World:
    world = World()
    for r in resources:
        if r.sub or "list" not in r.verbs:
            continue
        if r.group == "" and r.plural == "namespaces":
            for scope, name in (("own", OWN), ("other", OTHER)):
                world.names[(r.group, r.plural, scope)] = name
                world.objects[(r.group, r.plural, scope)] = admin.get(
                    url + r.path(name=name), timeout=30).json()
            continue
        for scope in ("own", "other") if r.namespaced else ("cluster",):
            items = admin.get(url + r.path(_namespace_of(r, scope)), timeout=30).json()["items"]
            ours = [i for i in items if i["metadata"]["name"] == FIXTURE] or items
            if ours:
                world.names[(r.group, r.plural, scope)] = ours[0]["metadata"]["name"]
                world.objects[(r.group, r.plural, scope)] = ours[0]
                world.templates.setdefault((r.group, r.plural), ours[0])
    return world


def _body(r: Resource, world: World, name: str) -> dict[str, Any]:
    """A body the kind's schema accepts where we know one: a copy of an existing object
    renamed, else its apiVersion, kind and name (and an example spec)."""
    template = world.templates.get((r.group, r.plural))
    if template is None:
        return {"apiVersion": r.api_version, "kind": r.kind, "metadata": {"name": name},
                **copy.deepcopy(EXAMPLE_BODIES.get((r.group, r.kind), {}))}
    body = {k: copy.deepcopy(v) for k, v in template.items() if k not in ("status", "metadata")}
    body["metadata"] = {"name": name}
    return body


@dataclass(frozen=True)
class Ask:
    """A request without its identity."""

    verb: str
    method: str
    path: str
    params: tuple[tuple[str, str], ...] = ()
    body: Any = None
    content_type: str = "application/json"
    missing: bool = False


DRY = (("dryRun", "All"),)


def _asks(r: Resource, scope: str, world: World) -> list[Ask]:
    """The requests of one row: each verb ``r`` serves, by name and on the collection."""
    namespaces_kind = r.group == "" and r.plural == "namespaces"
    ns = _namespace_of(r, scope)
    by_name = scope != "all" and not (namespaces_kind and scope == "cluster")
    collection = not r.sub and not (namespaces_kind and scope != "cluster")
    existing = world.names.get((r.group, r.plural, scope)) if by_name else None
    names = [(n, n == MISSING) for n in (existing, MISSING) if n] if by_name else []
    if namespaces_kind and scope == "own":
        names = [(OWN, False)]  # a missing namespace is nobody's own: see "other"
    asks: list[Ask] = []
    for verb in r.verbs:
        for name, missing in names if verb in BY_NAME else []:
            path = r.path(ns, name)
            if verb == "get":
                asks.append(Ask(verb, "GET", path, missing=missing))
            elif verb == "update":
                obj = world.objects.get((r.group, r.plural, scope))
                body = copy.deepcopy(obj) if obj and not missing else _body(r, world, name)
                asks.append(Ask(verb, "PUT", path, DRY, body, missing=missing))
            elif verb == "patch":
                asks.append(Ask(verb, "PATCH", path, DRY, MARK, "application/merge-patch+json",
                                missing))
            else:
                asks.append(Ask(verb, "DELETE", path, DRY, missing=missing))
        if verb not in COLLECTION or not collection:
            continue
        path = r.path(ns)
        if verb == "list":
            asks.append(Ask(verb, "GET", path))
        elif verb == "watch":
            asks.append(Ask(verb, "GET", path, (("watch", "true"), ("timeoutSeconds", "1"))))
        elif verb == "create" and scope != "all":
            asks.append(Ask(verb, "POST", path, DRY, _body(r, world, NEW)))
        elif verb == "deletecollection":
            asks.append(Ask(verb, "DELETE", path, DRY))
    return asks


def plan(resources: list[Resource], world: World) -> list[Probe]:
    probes: list[Probe] = []
    for r in resources:
        if r.group == "" and r.plural == "namespaces":
            scopes: tuple[str, ...] = ("own", "other", "cluster")
        else:
            scopes = ("own", "other", "all") if r.namespaced else ("cluster",)
        for scope in scopes:
            for ask in _asks(r, scope, world):
                probes += [Probe(r, scope, identity, ask.verb, ask.method, ask.path, ask.params,
                                 ask.body, ask.content_type, ask.missing)
                           for identity in IDENTITIES]
    return probes


class Client:
    """Sends probes over a requests.Session per thread, with the identity's token on
    each request. Few threads, each keeping its connection: cheroot keeps only ten
    idle keep-alive connections, and a new one is a TLS handshake on both sides."""

    def __init__(self, lab: LabServer, tokens: dict[str, str]) -> None:
        self.lab = lab
        self.tokens = tokens
        self.local = threading.local()

    def session(self) -> requests.Session:
        s: requests.Session | None = getattr(self.local, "session", None)
        if s is None:
            s = self.local.session = requests.Session()
            s.trust_env = False
            s.verify = self.lab.ca_file
        return s

    def send(self, probe: Probe) -> int:
        headers = {}
        if self.tokens.get(probe.identity):
            headers["Authorization"] = f"Bearer {self.tokens[probe.identity]}"
        kw: dict[str, Any] = {"params": list(probe.params), "timeout": 30}
        if probe.body is not None:
            kw["json"] = probe.body
            headers["Content-Type"] = probe.content_type
        if self.lasting(probe):
            # An allowed watch lasts its timeoutSeconds: those go on connections of
            # their own, closed after them, not to crowd out the others' idle ones.
            headers["Connection"] = "close"
        return self.session().request(probe.method, self.lab.url + probe.path, headers=headers,
                                      **kw).status_code

    @staticmethod
    def lasting(probe: Probe) -> bool:
        return probe.verb == "watch" and probe.expected

    def send_all(self, probes: list[Probe]) -> dict[Probe, int]:
        """Every probe's status code; watches (which take their timeout) beside the rest."""
        watches = [p for p in probes if self.lasting(p)]
        rest = [p for p in probes if not self.lasting(p)]
        with ThreadPoolExecutor(max_workers=24) as slow, ThreadPoolExecutor(max_workers=6) as fast:
            waiting = slow.map(self.send, watches)
            codes = dict(zip(rest, fast.map(self.send, rest), strict=True))
            codes.update(zip(watches, waiting, strict=True))
        return codes


# -- the test ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixtures(lab: LabServer, admin_api: Api, people: People) -> Iterator[list[str]]:
    """Inert objects named ``rbac-matrix`` in both namespaces (removed afterwards)."""
    made = []
    resources = discover(admin_api.session(), lab.url)
    for r in resources:
        if r.sub or (r.group, r.plural) not in FIXTURE_BODIES or "create" not in r.verbs:
            continue
        for ns in (OWN, OTHER):
            body = {"apiVersion": r.api_version, "kind": r.kind,
                    "metadata": {"name": FIXTURE}, **FIXTURE_BODIES[(r.group, r.plural)]}
            reply = admin_api.call("POST", r.path(ns), json=body)
            assert reply.status_code == 201, reply.text
            made.append(r.path(ns, FIXTURE))
    yield made
    for path in made:
        admin_api.call("DELETE", path)


def _table(probes: list[Probe], verdicts: dict[Probe, str]) -> str:
    """Rows: resource and scope; columns: identity x verb. ``+`` allowed, ``-`` refused
    (as the table says), ``!`` granted though the table refuses, ``?`` any other
    disagreement (refused though allowed, a 5xx, a 200 for a missing name)."""
    cells: dict[tuple[str, str], dict[tuple[str, str], list[Probe]]] = defaultdict(
        lambda: defaultdict(list))
    for p in probes:
        cells[p.row][(p.identity, p.verb)].append(p)
    width = max(len(f"{label} {scope}") for label, scope in cells) + 1
    head = " " * width + " ".join(f"{i[:8]:<8}" for i in IDENTITIES)
    letters = "".join(VERB_LETTERS.values())
    lines = [head, " " * width + " ".join(letters for _ in IDENTITIES)]
    for (label, scope), row in cells.items():
        blocks = []
        for identity in IDENTITIES:
            chars = ""
            for verb in VERBS:
                ps = row.get((identity, verb), [])
                if not ps:
                    chars += "."
                elif all(not verdicts[p] for p in ps):
                    chars += "+" if ps[0].expected else "-"
                else:
                    chars += "?" if ps[0].expected else "!"
            blocks.append(chars)
        lines.append(f"{f'{label} {scope}':<{width}}" + " ".join(blocks))
    lines.append("g get, l list, w watch, c create, u update, p patch, d delete, "
                 "D deletecollection; + allowed, - refused, . not asked in this row; "
                 "! granted against the table, ? other disagreement")
    return "\n".join(lines)


def test_rbac_matrix(lab: LabServer, admin_api: Api, people: People,
                     fixtures: list[str]) -> None:
    admin = admin_api.session()
    resources = discover(admin, lab.url)
    kinds = {(r.group, r.plural) for r in resources}
    subs = {r.sub for r in resources}
    # Discovery, not a list in this file, says what there is: it must at least hold
    # these, or the matrix asks about too little.
    assert {("", "configmaps"), ("", "namespaces"), ("", "pods"), (VMOP, "virtualmachines"),
            (RBAC, "rolebindings")} <= kinds
    assert {"status", "log", "console"} <= subs

    world = survey(admin, lab.url, resources)
    tokens = {"admin": lab.admin_token(), **{i: people.tokens[u]
                                            for i, u in IDENTITIES.items() if u}}
    client = Client(lab, tokens)
    probes = plan(resources, world)
    codes = client.send_all(probes)

    # A verb discovery lists that the server does not serve for anyone (405 to the
    # administrator) is no cell of the matrix: e.g. update on pods/log.
    unserved = {(p.resource, p.verb) for p in probes
                if p.identity == "admin" and codes[p] == 405}
    probes = [p for p in probes if (p.resource, p.verb) not in unserved]
    verdicts = {p: p.judge(codes[p]) for p in probes}

    cells = {(p.row, p.identity, p.verb) for p in probes}
    print(f"\nRBAC matrix: {len(cells)} cells ({len(probes)} requests) over {len(resources)} "
          "resources and subresources from discovery")
    print(_table(probes, verdicts))
    if unserved:
        print("listed by discovery but answered 405 to everyone (not in the matrix): " +
              ", ".join(sorted(f"{v} {r.label}" for r, v in unserved)))

    wrong = [f"{p.identity:9} {p.verb:16} {p.scope:7} {p.describe()} -> {codes[p]}: {verdicts[p]}"
             for p in probes if verdicts[p]]
    assert not wrong, f"{len(wrong)} of {len(probes)} cells disagree with the role table:\n" + \
        "\n".join(wrong)

    # The dry runs changed nothing: the fixtures are as they were, nothing new exists,
    # and neither namespace is being deleted.
    after = survey(admin, lab.url, resources)
    for key, obj in world.objects.items():
        if obj["metadata"]["name"] == FIXTURE:
            now = after.objects.get(key)
            assert now is not None and now["metadata"]["resourceVersion"] == \
                obj["metadata"]["resourceVersion"], key
    for ns in (OWN, OTHER):
        assert not admin_api.call("GET", f"/api/v1/namespaces/{ns}").json()[
            "metadata"].get("deletionTimestamp")
        assert admin_api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{NEW}"
                              ).status_code == 404


# -- the dashboard --------------------------------------------------------------------------------

#: Who may take each dashboard action (a POST) in their own namespace; the
#: administrator may take every one anywhere. Every POST route of the url_map must be
#: here (or in EVERYONE_POSTS): a new action needs its row.
EDITORS = ("edit", "owner")
ACTION_ROLES: dict[str, tuple[str, ...]] = {
    # Workloads: editors and owners.
    "workloads.create": EDITORS, "workloads.power": EDITORS, "workloads.delete": EDITORS,
    "clusters.create": EDITORS, "clusters.scale": EDITORS, "clusters.delete": EDITORS,
    # A guest cluster's kubeconfig is a Secret: not for viewers.
    "clusters.kubeconfig": EDITORS,
    # The namespace's settings: limits (see allowed(): the owner's), roles, classes, images.
    "namespaces.set_limits": ("owner",), "namespaces.grant": ("owner",),
    "namespaces.revoke": ("owner",), "namespaces.classes": ("owner",),
    "namespaces.images": ("owner",),
    # A kubeconfig for oneself, with any role in the namespace.
    "namespaces.download_kubeconfig": ROLES,
    # The administrator's alone: namespaces and users.
    "namespaces.delete": (), "namespaces.create": (), "users.create": (), "users.password": (),
    "users.admin": (), "users.delete": (),
}
EVERYONE_POSTS = {"auth.login", "auth.logout"}
#: Pages only the administrator opens (the hosts, the users, a new namespace, the
#: cluster-scoped objects a namespace user may not list, e.g. the nodes).
ADMIN_PAGES = {"hosts.index", "users.index", "users.delete", "namespaces.create",
               "objects.cluster_listing", "objects.cluster_show"}
#: Pages that show a VM's serial console: not for viewers (see HIDDEN_FROM_VIEWERS).
CONSOLE_PAGES = {"workloads.console", "workloads.log", "workloads.log_download"}
PUBLIC_PAGES = {"auth.login", "healthz"}
CSRF_REFUSAL = "This form has expired or did not come from the dashboard"


def page_allowed(identity: str, endpoint: str, scope: str) -> bool:
    """May ``identity`` open the page ``endpoint`` (in namespace ``scope``, or "")?"""
    if identity == "admin" or endpoint in PUBLIC_PAGES:
        return True
    if identity == "anonymous" or endpoint in ADMIN_PAGES:
        return False
    if not scope:
        return True  # the namespace list, the cluster-wide objects one may list
    if scope == "other" or identity == "nobody":
        return False
    return identity != "view" or endpoint not in CONSOLE_PAGES


def action_allowed(identity: str, endpoint: str, scope: str) -> bool:
    if identity == "admin" or endpoint in EVERYONE_POSTS:
        return True
    if identity == "anonymous" or scope == "other":
        return False
    return identity in ACTION_ROLES[endpoint]


def _forms(ns: str) -> dict[str, dict[str, str]]:
    """Forms each action would accept, so that a refusal is the role check's."""
    secret = "rbac-matrix-password-1"
    return {
        "workloads.create": {"name": NEW, "class_name": "best-effort-small", "image": "debian-12",
                             "power": "PoweredOn", "login": "alice",
                             "cloud_config": "#cloud-config\n"},
        "workloads.power": {"state": "PoweredOff"}, "workloads.delete": {"uid": ""},
        "clusters.create": {"name": NEW, "cp_replicas": "1", "cp_class": "best-effort-small",
                            "tkr": "v1.31.1---vmware.1", "storage_class": "default",
                            "pool_name": "workers", "pool_replicas": "1"},
        "clusters.scale": {"pool": "workers", "replicas": "2"}, "clusters.delete": {"uid": ""},
        "namespaces.set_limits": {"cpu": "100"},
        "namespaces.grant": {"user": "nobody", "role": "owner"},
        "namespaces.classes": {"name": "best-effort-small", "action": "assign"},
        "namespaces.images": {"name": "debian-12", "action": "assign"},
        "namespaces.delete": {"confirm": ns},
        "namespaces.create": {"name": "rbac-matrix-ns", "cpu": "2"},
        "users.create": {"name": "mallory", "password": secret, "password2": secret},
        "users.password": {"password": secret}, "users.admin": {"admin": "1"},
    }


@dataclass(frozen=True)
class Route:
    endpoint: str
    method: str
    scope: str  # own, other, or "" for a route without a namespace
    path: str


def dashboard_routes(tmp_path: Path) -> list[Route]:
    """Every rule of the dashboard's url_map (but static files), with sample arguments:
    the namespaces team-a and team-b, names that do not exist (but the fixture
    ConfigMap for an object page and the user "nobody" for user pages), viewer
    vera's role binding in team-a."""
    from appliance.service import Supervisor
    from appliance.settings import Settings
    from web import create_app

    app = create_app({"TESTING": True},
                     supervisor=Supervisor.open(Settings(state_dir=tmp_path / "state")))
    urls = app.url_map.bind("dashboard.test")
    routes = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for scope in ("own", "other") if "ns" in rule.arguments else ("",):
            values = {"ns": OTHER if scope == "other" else OWN, "name": MISSING,
                      "binding": "pacific-view-vera", "group": "core", "plural": "configmaps",
                      "sub": "console", "part": "status" if rule.endpoint == "clusters.live"
                      else "workloads"}
            if rule.endpoint in ("objects.show", "objects.cluster_show"):
                values["name"] = FIXTURE if rule.endpoint == "objects.show" else "vm"
            if rule.endpoint.startswith("objects.cluster"):
                values["plural"] = "nodes"
            if rule.endpoint.startswith("users."):
                values["name"] = "nobody"
            if rule.endpoint in ("workloads.log", "workloads.log_download"):
                values.update(group=VMOP, plural="virtualmachines")
            path = urls.build(rule.endpoint, {k: values[k] for k in rule.arguments})
            routes += [Route(rule.endpoint, m, scope, path)
                       for m in sorted((rule.methods or set()) & {"GET", "POST"})]
    return routes


class Browser:
    """One identity in the lab's dashboard (HTTPS), with its session and CSRF token."""

    def __init__(self, lab: LabServer, user: str = "", password: str = "") -> None:
        self.url = lab.dashboard_url
        self.s = requests.Session()
        self.s.trust_env = False
        self.s.verify = lab.ca_file
        self.token = self.csrf("/login")
        if user:
            r = self.post("/login", {"username": user, "password": password})
            assert r.status_code == 302, r.text
            self.token = self.csrf("/")

    def csrf(self, path: str) -> str:
        page = self.s.get(self.url + path, timeout=30)
        m = re.search(r'data-csrf="([^"]+)"', page.text)
        assert m, page.text
        return m.group(1)

    def get(self, path: str) -> requests.Response:
        return self.s.get(self.url + path, allow_redirects=False, timeout=30)

    def post(self, path: str, data: dict[str, str], token: str | None = None,
             headers: dict[str, str] | None = None) -> requests.Response:
        form = {**data, "csrf_token": self.token if token is None else token}
        if token == "":
            form.pop("csrf_token")
        return self.s.post(self.url + path, data=form, headers=headers, allow_redirects=False,
                           timeout=30)


def _to_login(r: requests.Response) -> bool:
    return r.status_code == 302 and "/login" in r.headers.get("Location", "")


def _snapshot(admin: Api) -> dict[str, tuple[Any, Any]]:
    """What the dashboard's actions could change, as (generation, deletionTimestamp) by
    object: the namespaces, and the objects of team-a and team-b its forms write (status
    updates by controllers do not count)."""
    paths = ["/api/v1/namespaces"]
    for ns in (OWN, OTHER):
        paths += [f"/api/v1/namespaces/{ns}/{p}" for p in ("resourcequotas", "secrets")]
        paths += [f"/apis/{g}/namespaces/{ns}/{p}" for g, p in (
            ("rbac.authorization.k8s.io/v1", "rolebindings"),
            (f"{VMOP}/v1alpha5", "virtualmachineclasses"),
            (f"{VMOP}/v1alpha5", "virtualmachineimages"), (f"{VMOP}/v1alpha5", "virtualmachines"),
            (f"{TANZU}/v1alpha3", "tanzukubernetesclusters"))]
    out = {}
    for path in paths:
        for item in admin.call("GET", path).json()["items"]:
            meta = item["metadata"]
            out[f"{path}/{meta['name']}"] = (meta.get("generation"), meta.get("deletionTimestamp"))
    return out


def test_dashboard_routes(lab: LabServer, admin_api: Api, people: People,
                          fixtures: list[str], tmp_path: Path) -> None:
    routes = dashboard_routes(tmp_path)
    posts = {r.endpoint for r in routes if r.method == "POST"}
    assert posts - EVERYONE_POSTS <= set(ACTION_ROLES), \
        f"dashboard actions missing from ACTION_ROLES: {posts - EVERYONE_POSTS - set(ACTION_ROLES)}"
    admin_user, admin_password = lab.admin_credentials
    logins = {"anonymous": ("", ""), "admin": (admin_user, admin_password),
              **{i: (u, PASSWORD) for i, u in IDENTITIES.items() if u}}
    before = _snapshot(admin_api)

    def walk(identity: str) -> list[tuple[Route, str, str]]:
        """(route, check, problem or "") for every check of one identity, in order."""
        b = Browser(lab, *logins[identity])
        out: list[tuple[Route, str, str]] = []
        for route in routes:
            if route.method == "GET":
                r = b.get(route.path)
                ok = page_allowed(identity, route.endpoint, route.scope)
                if r.status_code >= 500:
                    problem = f"{r.status_code}"
                elif identity == "anonymous" and not ok:
                    problem = "" if _to_login(r) else f"{r.status_code}, not the login page"
                elif ok:
                    problem = f"{r.status_code}, refused" if r.status_code in (401, 403) else ""
                else:
                    problem = "" if r.status_code in (403, 404) else f"{r.status_code}, shown"
                out.append((route, "G", problem))
            elif not action_allowed(identity, route.endpoint, route.scope):
                # A valid token and a form it would take: the role check must refuse it.
                ns = OTHER if route.scope == "other" else OWN
                r = b.post(route.path, _forms(ns).get(route.endpoint, {}))
                refused = _to_login(r) if identity == "anonymous" else \
                    r.status_code in (403, 404)
                out.append((route, "P", "" if refused else f"{r.status_code}, not refused"))
        # Last, as they would end the session if they were taken: no token, a forged one,
        # the right one from another site. Each must be refused before anything happens.
        for route in routes:
            if route.method != "POST" or route.scope == "other":
                continue
            for token, headers in (("", None), ("forged", None),
                                   (None, {"Origin": "https://evil.example"})):
                r = b.post(route.path, {}, token, headers)
                problem = "" if r.status_code == 400 and CSRF_REFUSAL in r.text else \
                    f"{r.status_code} without a valid CSRF token"
                out.append((route, "C", problem))
        if identity != "anonymous":
            assert b.get("/").status_code == 200, f"{identity} was logged out"
        return out

    with ThreadPoolExecutor(max_workers=len(IDENTITIES)) as pool:
        results = dict(zip(IDENTITIES, pool.map(walk, IDENTITIES), strict=True))

    # The table: one row per route (and namespace), per identity G (its GET page),
    # P (its action, refused as the table says; "." where the table allows it: taking
    # it would change the lab) and C (the refused forged and missing CSRF tokens).
    rows: dict[tuple[str, str, str], dict[str, dict[str, list[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for identity, checks in results.items():
        for route, check, problem in checks:
            rows[(route.path.replace(OTHER, "<other>").replace(OWN, "<own>"), route.endpoint,
                  route.scope)][identity][check].append(problem)
    width = max(len(p) for p, _, _ in rows) + 1
    lines = [" " * width + " ".join(f"{i[:5]:<5}" for i in IDENTITIES),
             " " * width + " ".join("G P C" for _ in IDENTITIES)]
    wrong = []
    for key, by_identity in rows.items():
        blocks = []
        for identity in IDENTITIES:
            chars = []
            for check in "GPC":
                problems = by_identity[identity][check]
                chars.append("." if not problems else "!" if any(problems) else "+")
                wrong += [f"{identity:9} {check} {key[0]} ({key[1]}): {p}" for p in problems if p]
            blocks.append(" ".join(chars))
        lines.append(f"{key[0]:<{width}}" + " ".join(blocks))
    checked = sum(len(c) for c in results.values())
    print(f"\nDashboard: {checked} requests over {len(routes)} routes")
    print("\n".join(lines))
    print("G page as the table says, P action refused as the table says, C refused without a "
          "valid CSRF token; . not asked; ! disagrees")
    assert not wrong, f"{len(wrong)} of {checked} dashboard checks disagree:\n" + "\n".join(wrong)
    assert _snapshot(admin_api) == before, "a refused dashboard action changed something"
