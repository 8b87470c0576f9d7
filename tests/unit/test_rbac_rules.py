"""RBAC policy rules as Kubernetes' rbac authorizer matches them
(``k8s.io/kubernetes/pkg/apis/rbac/v1/evaluation_helpers.go``)."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.auth.rbac import Attributes, rule_allows
from appliance.auth.users import UserInfo

ALICE = UserInfo("alice", ("devs",))
VMOP = "vmoperator.vmware.com"


def res(verb: str, resource: str, *, group: str = VMOP, sub: str = "", ns: str = "dev",
        name: str = "") -> Attributes:
    return Attributes(ALICE, verb, group, resource, sub, ns, name)


def url(verb: str, path: str) -> Attributes:
    return Attributes(ALICE, verb, path=path)


VM_READER = {"verbs": ["get", "list", "watch"], "apiGroups": [VMOP],
             "resources": ["virtualmachines"]}


@pytest.mark.parametrize(("rule", "attrs", "allowed"), [
    # plain matches
    (VM_READER, res("get", "virtualmachines"), True),
    (VM_READER, res("list", "virtualmachines", ns=""), True),
    (VM_READER, res("delete", "virtualmachines"), False),
    (VM_READER, res("get", "virtualmachineclasses"), False),
    (VM_READER, res("get", "virtualmachines", group=""), False),
    (VM_READER, res("get", "virtualmachines", group="kubevirt.io"), False),
    # wildcards
    ({"verbs": ["*"], "apiGroups": [VMOP], "resources": ["virtualmachines"]},
     res("deletecollection", "virtualmachines"), True),
    ({"verbs": ["get"], "apiGroups": ["*"], "resources": ["virtualmachines"]},
     res("get", "virtualmachines", group="kubevirt.io"), True),
    ({"verbs": ["get"], "apiGroups": [VMOP], "resources": ["*"]},
     res("get", "anything"), True),
    ({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
     res("escalate", "roles", group="rbac.authorization.k8s.io"), True),
    # the core group is "" and must be listed as such
    ({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]},
     res("get", "configmaps", group=""), True),
    ({"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"]},
     res("get", "configmaps", group="apps"), False),
    # missing lists grant nothing
    ({"verbs": ["get"], "resources": ["configmaps"]}, res("get", "configmaps", group=""), False),
    ({"apiGroups": ["*"], "resources": ["*"]}, res("get", "configmaps", group=""), False),
    ({"verbs": ["get"], "apiGroups": ["*"]}, res("get", "configmaps", group=""), False),
    ({}, res("get", "configmaps", group=""), False),
    # subresources
    (VM_READER, res("get", "virtualmachines", sub="status"), False),
    ({"verbs": ["patch"], "apiGroups": [VMOP], "resources": ["virtualmachines/status"]},
     res("patch", "virtualmachines", sub="status"), True),
    ({"verbs": ["patch"], "apiGroups": [VMOP], "resources": ["virtualmachines/status"]},
     res("patch", "virtualmachines"), False),
    ({"verbs": ["patch"], "apiGroups": [VMOP], "resources": ["virtualmachines/status"]},
     res("patch", "virtualmachineclasses", sub="status"), False),
    ({"verbs": ["patch"], "apiGroups": [VMOP], "resources": ["*/status"]},
     res("patch", "virtualmachines", sub="status"), True),
    ({"verbs": ["patch"], "apiGroups": [VMOP], "resources": ["*/status"]},
     res("patch", "virtualmachines", sub="scale"), False),
    ({"verbs": ["patch"], "apiGroups": [VMOP], "resources": ["*/status"]},
     res("patch", "virtualmachines"), False),
    ({"verbs": ["get"], "apiGroups": [VMOP], "resources": ["*"]},
     res("get", "virtualmachines", sub="status"), True),
    ({"verbs": ["update"], "apiGroups": [""], "resources": ["namespaces/finalize"]},
     res("update", "namespaces", group="", sub="finalize", name="dev", ns=""), True),
    # resourceNames
    ({"verbs": ["get"], "apiGroups": [VMOP], "resources": ["virtualmachines"],
      "resourceNames": ["vm1", "vm2"]}, res("get", "virtualmachines", name="vm2"), True),
    ({"verbs": ["get"], "apiGroups": [VMOP], "resources": ["virtualmachines"],
      "resourceNames": ["vm1"]}, res("get", "virtualmachines", name="vm3"), False),
    ({"verbs": ["list"], "apiGroups": [VMOP], "resources": ["virtualmachines"],
      "resourceNames": ["vm1"]}, res("list", "virtualmachines"), False),
    ({"verbs": ["get"], "apiGroups": [VMOP], "resources": ["virtualmachines"],
      "resourceNames": []}, res("get", "virtualmachines", name="any"), True),
    ({"verbs": ["get"], "apiGroups": [VMOP], "resources": ["virtualmachines/status"],
      "resourceNames": ["vm1"]}, res("get", "virtualmachines", sub="status", name="vm1"), True),
])
def test_resource_rules(rule: dict[str, Any], attrs: Attributes, allowed: bool) -> None:
    assert rule_allows(rule, attrs) is allowed


@pytest.mark.parametrize(("rule", "attrs", "allowed"), [
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}, url("get", "/healthz"), True),
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}, url("get", "/healthz/etcd"), False),
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}, url("post", "/healthz"), False),
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz/*"]}, url("get", "/healthz/etcd"), True),
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz/*"]}, url("get", "/healthz/"), True),
    ({"verbs": ["get"], "nonResourceURLs": ["/healthz/*"]}, url("get", "/healthz"), False),
    ({"verbs": ["get"], "nonResourceURLs": ["/api*"]}, url("get", "/apis/x/v1"), True),
    ({"verbs": ["get"], "nonResourceURLs": ["/api*"]}, url("get", "/version"), False),
    ({"verbs": ["get"], "nonResourceURLs": ["*"]}, url("get", "/anything/at/all"), True),
    ({"verbs": ["*"], "nonResourceURLs": ["/metrics"]}, url("get", "/metrics"), True),
    ({"verbs": ["get"], "nonResourceURLs": ["/version", "/openapi/*"]},
     url("get", "/openapi/v3/apis/x/v1"), True),
    # resource rules never grant non-resource URLs, nor the reverse
    ({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}, url("get", "/healthz"), False),
    ({"verbs": ["*"], "nonResourceURLs": ["*"]}, res("get", "virtualmachines"), False),
    ({"verbs": ["get"]}, url("get", "/healthz"), False),
])
def test_non_resource_rules(rule: dict[str, Any], attrs: Attributes, allowed: bool) -> None:
    assert rule_allows(rule, attrs) is allowed


def test_is_resource() -> None:
    assert res("get", "virtualmachines").is_resource
    assert not url("get", "/healthz").is_resource


@pytest.mark.parametrize(("attrs", "text"), [
    (res("list", "virtualmachines"),
     ('User "alice" cannot list resource "virtualmachines" in API group '
      '"vmoperator.vmware.com" in the namespace "dev"')),
    (res("list", "virtualmachines", ns=""),
     ('User "alice" cannot list resource "virtualmachines" in API group '
      '"vmoperator.vmware.com" at the cluster scope')),
    (res("get", "configmaps", group=""),
     'User "alice" cannot get resource "configmaps" in API group "" in the namespace "dev"'),
    (res("patch", "virtualmachines", sub="status", name="vm1"),
     ('User "alice" cannot patch resource "virtualmachines/status" in API group '
      '"vmoperator.vmware.com" in the namespace "dev"')),
    (res("get", "namespaces", group="", ns="", name="prod"),
     'User "alice" cannot get resource "namespaces" in API group "" at the cluster scope'),
    (url("get", "/metrics"), 'User "alice" cannot get path "/metrics"'),
])
def test_describe(attrs: Attributes, text: str) -> None:
    assert attrs.describe() == text


def test_describe_service_account_name_verbatim() -> None:
    sa = UserInfo("system:serviceaccount:dev:builder")
    attrs = Attributes(sa, "create", "", "secrets", namespace="dev")
    assert attrs.describe() == ('User "system:serviceaccount:dev:builder" cannot create '
                                'resource "secrets" in API group "" in the namespace "dev"')
