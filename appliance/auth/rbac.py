"""RBAC authorisation over the Role/ClusterRole/Binding objects in the store.

This follows Kubernetes' RBAC authorizer: permissions are additive, granted
by ClusterRoleBindings everywhere and by RoleBindings inside their
namespace. Creating or changing a role or binding is an escalation check:
the user must already hold every permission it would grant (or the ``bind``
/ ``escalate`` verb), which is what lets a namespace owner manage the role
bindings of its own namespace and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from appliance.auth.users import UserInfo
from appliance.store.repo import Key, ReadTxn

RBAC = "rbac.authorization.k8s.io"
Rule = dict[str, Any]


@dataclass(frozen=True)
class Attributes:
    user: UserInfo
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""  # non-resource requests only

    @property
    def is_resource(self) -> bool:
        return not self.path

    def describe(self) -> str:
        """The tail of Kubernetes' "forbidden" message."""
        who = f'User "{self.user.name}"'
        if not self.is_resource:
            return f'{who} cannot {self.verb} path "{self.path}"'
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f'in the namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        return f'{who} cannot {self.verb} resource "{res}" in API group "{self.group}" {where}'


def _subject_matches(subject: dict[str, Any], user: UserInfo, binding_ns: str) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.name)
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user.name == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


def _has(values: Iterable[str] | None, wanted: str) -> bool:
    values = list(values or [])
    return "*" in values or wanted in values


def rule_allows(rule: Rule, attrs: Attributes) -> bool:
    if not _has(rule.get("verbs"), attrs.verb):
        return False
    if not attrs.is_resource:
        for url in rule.get("nonResourceURLs") or []:
            if url == "*" or url == attrs.path or (url.endswith("*") and
                                                  attrs.path.startswith(url[:-1])):
                return True
        return False
    if not _has(rule.get("apiGroups"), attrs.group):
        return False
    resources = rule.get("resources") or []
    if attrs.subresource:
        full = f"{attrs.resource}/{attrs.subresource}"
        ok = "*" in resources or full in resources or f"*/{attrs.subresource}" in resources
    else:
        ok = "*" in resources or attrs.resource in resources
    if not ok:
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


class Authorizer:
    def rules_for(self, txn: ReadTxn, user: UserInfo, namespace: str) -> list[Rule]:
        """Every rule that applies to ``user`` in ``namespace`` ("" for cluster scope)."""
        rules: list[Rule] = []
        for binding in txn.iterate(RBAC, "clusterrolebindings"):
            if any(_subject_matches(s, user, "") for s in binding.get("subjects") or []):
                rules += self._role_rules(txn, binding.get("roleRef") or {}, "")
        if namespace:
            for binding in txn.iterate(RBAC, "rolebindings", namespace):
                if any(_subject_matches(s, user, namespace) for s in binding.get("subjects") or []):
                    rules += self._role_rules(txn, binding.get("roleRef") or {}, namespace)
        return rules

    def _role_rules(self, txn: ReadTxn, ref: dict[str, Any], namespace: str) -> list[Rule]:
        if ref.get("kind") == "ClusterRole":
            role = txn.get(Key(RBAC, "clusterroles", "", str(ref.get("name"))))
        elif ref.get("kind") == "Role" and namespace:
            role = txn.get(Key(RBAC, "roles", namespace, str(ref.get("name"))))
        else:
            role = None
        return list((role or {}).get("rules") or [])

    def allowed(self, txn: ReadTxn, attrs: Attributes) -> bool:
        # Requests about a namespace object are evaluated inside that namespace,
        # so a RoleBinding in "dev" can grant "get namespace dev".
        namespace = attrs.namespace
        if attrs.is_resource and attrs.group == "" and attrs.resource == "namespaces" \
                and attrs.name and not namespace:
            namespace = attrs.name
        return any(rule_allows(r, attrs) for r in self.rules_for(txn, attrs.user, namespace))

    def covers(self, txn: ReadTxn, user: UserInfo, namespace: str, rules: list[Rule]) -> list[str]:
        """The permissions in ``rules`` that ``user`` does not hold in ``namespace``."""
        held = self.rules_for(txn, user, namespace)
        missing = []
        for rule in rules:
            for verb in rule.get("verbs") or []:
                if rule.get("nonResourceURLs"):
                    for url in rule["nonResourceURLs"]:
                        a = Attributes(user, verb, path=url)
                        if not any(rule_allows(h, a) for h in held):
                            missing.append(f"{verb} {url}")
                    continue
                for group in rule.get("apiGroups") or [""]:
                    for resource in rule.get("resources") or []:
                        res, _, sub = resource.partition("/")
                        for name in rule.get("resourceNames") or [""]:
                            a = Attributes(user, verb, group, res, sub, namespace, name)
                            if not any(_covered(h, a) for h in held):
                                missing.append(f"{verb} {resource}.{group or 'core'}")
        return missing


def _covered(held: Rule, wanted: Attributes) -> bool:
    """Like rule_allows, but a wildcard in the wanted rule needs a wildcard held."""
    return rule_allows(held, wanted)
