"""SelfSubjectAccessReview and SelfSubjectRulesReview (``kubectl auth can-i``)."""

from __future__ import annotations

import copy
from typing import Any

from appliance import errors
from appliance.auth.rbac import Attributes
from appliance.auth.users import MASTERS, UserInfo
from appliance.objects import ObjectService

AUTHZ = "authorization.k8s.io/v1"


def _checked(body: Any, kind: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("spec"), dict):
        raise errors.bad_request(f"a {kind} needs a spec")
    if body.get("kind") not in (None, kind):
        raise errors.bad_request(f"the kind in the data ({body.get('kind')}) does not match "
                                 f"the expected kind ({kind})")
    return copy.deepcopy(body)


def access_review(service: ObjectService, user: UserInfo, body: Any) -> dict[str, Any]:
    review = _checked(body, "SelfSubjectAccessReview")
    spec = review["spec"]
    res = spec.get("resourceAttributes")
    non = spec.get("nonResourceAttributes")
    if isinstance(res, dict):
        attrs = Attributes(user, str(res.get("verb", "")), str(res.get("group", "")),
                           str(res.get("resource", "")), str(res.get("subresource", "")),
                           str(res.get("namespace", "")), str(res.get("name", "")))
    elif isinstance(non, dict):
        attrs = Attributes(user, str(non.get("verb", "")), path=str(non.get("path", "")))
    else:
        raise errors.invalid("SelfSubjectAccessReview", "authorization.k8s.io", "", [
            errors.Cause("spec.resourceAttributes",
                         "Required value: exactly one of nonResourceAttributes or "
                         "resourceAttributes must be specified", "FieldValueRequired")])
    with service.store.read() as txn:
        allowed = service.can(txn, attrs)
    review.update(apiVersion=AUTHZ, kind="SelfSubjectAccessReview")
    review.setdefault("metadata", {})["creationTimestamp"] = None
    review["status"] = {"allowed": allowed}
    if allowed:
        review["status"]["reason"] = "allowed by RBAC" if MASTERS not in user.groups else \
            "member of system:masters"
    return review


def rules_review(service: ObjectService, user: UserInfo, body: Any) -> dict[str, Any]:
    review = _checked(body, "SelfSubjectRulesReview")
    namespace = str(review["spec"].get("namespace") or "")
    resource_rules: list[dict[str, Any]] = []
    non_resource_rules: list[dict[str, Any]] = []
    with service.store.read() as txn:
        rules = service.authorizer.rules_for(txn, user, namespace)
    if MASTERS in user.groups:
        rules = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                 {"nonResourceURLs": ["*"], "verbs": ["*"]}, *rules]
    for rule in rules:
        if rule.get("nonResourceURLs"):
            non_resource_rules.append({"verbs": rule.get("verbs") or [],
                                       "nonResourceURLs": rule["nonResourceURLs"]})
        else:
            entry = {"verbs": rule.get("verbs") or [], "apiGroups": rule.get("apiGroups") or [],
                     "resources": rule.get("resources") or []}
            if rule.get("resourceNames"):
                entry["resourceNames"] = rule["resourceNames"]
            resource_rules.append(entry)
    review.update(apiVersion=AUTHZ, kind="SelfSubjectRulesReview")
    review.setdefault("metadata", {})["creationTimestamp"] = None
    review["status"] = {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules,
                        "incomplete": False}
    return review
