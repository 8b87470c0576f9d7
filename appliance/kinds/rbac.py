"""rbac.authorization.k8s.io/v1 and the authorization.k8s.io/v1 review kinds."""

from __future__ import annotations

from appliance.errors import Cause
from appliance.kinds.registry import AdmissionContext, Kind, Obj, PrinterColumn, Version
from appliance.kinds.schema import array, boolean, obj, preserve, string, top_level

GROUP = "rbac.authorization.k8s.io"

POLICY_RULE = obj({
    "apiGroups": array(string()), "resources": array(string()), "verbs": array(string()),
    "resourceNames": array(string()), "nonResourceURLs": array(string()),
}, required=["verbs"])

SUBJECT = obj({"kind": string(enum=["User", "Group", "ServiceAccount"]), "apiGroup": string(),
               "name": string(), "namespace": string()}, required=["kind", "name"])

ROLE_REF = obj({"apiGroup": string(), "kind": string(enum=["Role", "ClusterRole"]),
                "name": string()}, required=["apiGroup", "kind", "name"])

NAME = PrinterColumn("Name", format="name", json_path=".metadata.name")
CREATED = PrinterColumn("Created At", json_path=".metadata.creationTimestamp")
AGE = PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp")


def _subjects(kind: str):  # type: ignore[no-untyped-def]
    return lambda o: ", ".join(s.get("name", "") for s in o.get("subjects") or []
                               if s.get("kind") == kind)


def _validate_binding(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    causes = []
    if old is not None and old.get("roleRef") != new.get("roleRef"):
        causes.append(Cause("roleRef", "Invalid value: cannot change roleRef", "FieldValueInvalid"))
    ref = new.get("roleRef") or {}
    if ref.get("apiGroup") not in (GROUP, None):
        causes.append(Cause("roleRef.apiGroup", f"Unsupported value: {ref.get('apiGroup')!r}: "
                                                f'supported values: "{GROUP}"'))
    if new.get("kind") == "ClusterRoleBinding" and ref.get("kind") == "Role":
        causes.append(Cause("roleRef.kind", 'Unsupported value: "Role": supported values: '
                                            '"ClusterRole"'))
    for i, s in enumerate(new.get("subjects") or []):
        if s.get("kind") in ("User", "Group") and s.get("apiGroup", GROUP) != GROUP:
            causes.append(Cause(f"subjects[{i}].apiGroup", f"Unsupported value: "
                                                           f"{s.get('apiGroup')!r}"))
    return causes


def _binding_kind(kind: str, plural: str, namespaced: bool) -> Kind:
    return Kind(
        group=GROUP, kind=kind, plural=plural, singular=kind.lower(), namespaced=namespaced,
        builtin=True, has_status=False, name_rule="path", validate=_validate_binding,
        versions=(Version("v1", top_level(subjects=array(SUBJECT), roleRef=ROLE_REF),
                          storage=True, printer_columns=(
                              NAME, PrinterColumn("Role", compute=lambda o: "{}/{}".format(
                                  (o.get("roleRef") or {}).get("kind", ""),
                                  (o.get("roleRef") or {}).get("name", ""))), AGE,
                              PrinterColumn("Users", priority=1, compute=_subjects("User")),
                              PrinterColumn("Groups", priority=1, compute=_subjects("Group")))),),
    )


def _role_kind(kind: str, plural: str, namespaced: bool) -> Kind:
    fields = {"rules": array(POLICY_RULE)}
    if not namespaced:
        fields["aggregationRule"] = preserve(type="object")
    return Kind(
        group=GROUP, kind=kind, plural=plural, singular=kind.lower(), namespaced=namespaced,
        builtin=True, has_status=False, name_rule="path",
        versions=(Version("v1", top_level(**fields), storage=True,
                          printer_columns=(NAME, CREATED)),),
    )


ROLE = _role_kind("Role", "roles", True)
CLUSTERROLE = _role_kind("ClusterRole", "clusterroles", False)
ROLEBINDING = _binding_kind("RoleBinding", "rolebindings", True)
CLUSTERROLEBINDING = _binding_kind("ClusterRoleBinding", "clusterrolebindings", False)

# -- authorization.k8s.io: reviews are answered, never stored ----------------------------

AUTHZ_GROUP = "authorization.k8s.io"

SSAR_SCHEMA = top_level(
    spec=obj({"resourceAttributes": obj({
        "namespace": string(), "verb": string(), "group": string(), "version": string(),
        "resource": string(), "subresource": string(), "name": string(),
        "fieldSelector": preserve(type="object"), "labelSelector": preserve(type="object")}),
        "nonResourceAttributes": obj({"path": string(), "verb": string()})}),
    status=obj({"allowed": boolean(), "denied": boolean(), "reason": string(),
                "evaluationError": string()}),
)
SSRR_SCHEMA = top_level(spec=obj({"namespace": string()}), status=preserve(type="object"))

SELF_SUBJECT_ACCESS_REVIEW = Kind(
    group=AUTHZ_GROUP, kind="SelfSubjectAccessReview", plural="selfsubjectaccessreviews",
    singular="selfsubjectaccessreview", namespaced=False, builtin=True, storable=False,
    verbs=("create",), has_status=False,
    versions=(Version("v1", SSAR_SCHEMA, storage=True),),
)
SELF_SUBJECT_RULES_REVIEW = Kind(
    group=AUTHZ_GROUP, kind="SelfSubjectRulesReview", plural="selfsubjectrulesreviews",
    singular="selfsubjectrulesreview", namespaced=False, builtin=True, storable=False,
    verbs=("create",), has_status=False,
    versions=(Version("v1", SSRR_SCHEMA, storage=True),),
)

KINDS = (ROLE, CLUSTERROLE, ROLEBINDING, CLUSTERROLEBINDING,
         SELF_SUBJECT_ACCESS_REVIEW, SELF_SUBJECT_RULES_REVIEW)
