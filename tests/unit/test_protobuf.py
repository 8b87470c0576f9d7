"""Kubernetes protobuf request bodies, checked against what real kubectl binaries send.

The fixtures in data/protobuf were captured by data/protobuf/capture.py: every
``<case>.pb`` is the body kubectl 1.33 sent (protobuf), and ``<case>.json`` the
body kubectl 1.31 -- the last minor sending JSON for built-in kinds -- sent for
the very same command. Decoding the first must give the second, key order
included. The wire-level tests build their inputs by hand."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.api import protobuf
from appliance.api.protobuf import (
    CONTENT_TYPE,
    ProtobufError,
    UnsupportedKindError,
    decode,
    decode_message,
    is_protobuf,
    iter_fields,
    read_varint,
    supported_kinds,
    to_int32,
    to_int64,
)

DATA = Path(__file__).parent / "data" / "protobuf"
INDEX = json.loads((DATA / "index.json").read_text())
CASES = INDEX["cases"]


def _body(name: str) -> bytes:
    return (DATA / f"{name}.pb").read_bytes()


def _expected(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


#: Kinds kubectl sends as protobuf that decode() leaves to JSON: JSON path of the pod template.
TEMPLATE_PATHS = {"Deployment": ["spec", "template"], "Job": ["spec", "template"],
                  "CronJob": ["spec", "jobTemplate", "spec", "template"]}
UNSUPPORTED = sorted(n for n, c in CASES.items() if c.get("template") or n == "priorityclass")
DECODABLE = sorted(n for n in CASES if n not in UNSUPPORTED)


# -- a minimal encoder for hand-made inputs ---------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def f_varint(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def f_bytes(number: int, data: bytes) -> bytes:
    return tag(number, 2) + varint(len(data)) + data


def f_str(number: int, text: str) -> bytes:
    return f_bytes(number, text.encode())


def f_msg(number: int, *parts: bytes) -> bytes:
    return f_bytes(number, b"".join(parts))


def f_map(number: int, key: str, value: bytes) -> bytes:
    """A map entry; ``value`` is the already encoded value field (number 2)."""
    return f_msg(number, f_str(1, key), value)


def f_fixed32(number: int, value: int) -> bytes:
    return tag(number, 5) + value.to_bytes(4, "little")


def f_fixed64(number: int, value: int) -> bytes:
    return tag(number, 1) + value.to_bytes(8, "little")


def envelope(api_version: str, kind: str, raw: bytes, encoding: str = "", content_type: str = "") -> bytes:
    return protobuf.MAGIC + f_msg(1, f_str(1, api_version), f_str(2, kind)) + f_bytes(2, raw) \
        + f_str(3, encoding) + f_str(4, content_type)


def meta(name: str, namespace: str = "") -> bytes:
    """ObjectMeta as Go writes it: every non-pointer field, creationTimestamp empty."""
    return f_msg(1, f_str(1, name), f_str(2, ""), f_str(3, namespace), f_str(4, ""), f_str(5, ""),
                 f_str(6, ""), f_varint(7, 0), f_bytes(8, b""))


def timestamp(seconds: int, nanos: int = 0) -> bytes:
    return f_varint(1, seconds) + f_varint(2, nanos)


# -- the captured kubectl bodies -------------------------------------------------------------


def test_index_describes_protobuf_and_json_captures() -> None:
    assert INDEX["protobuf_kubectl"].startswith("v1.33.")
    assert INDEX["json_kubectl"].startswith("v1.31.")
    for name, case in CASES.items():
        assert case["content_type"] == CONTENT_TYPE, name
        assert case["json_content_type"] == "application/json", name
        assert _body(name).startswith(b"k8s\x00"), name
    # kubectl 1.33 still sends these as JSON (or as patches): no fixture, nothing to decode
    json_only = INDEX["json_only"]
    assert json_only["run"]["content_type"] == "application/json"
    assert json_only["run"]["path"].startswith("/api/v1/namespaces/x/pods")
    assert json_only["delete"]["method"] == "DELETE"
    assert json_only["delete"]["content_type"] == "application/json"


@pytest.mark.parametrize("name", DECODABLE)
def test_decodes_to_what_kubectl_sends_as_json(name: str) -> None:
    got = decode(_body(name))
    expected = _expected(name)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected), "same keys, but not in Go's order"


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_kinds_are_refused_by_name(name: str) -> None:
    expected = _expected(name)
    with pytest.raises(UnsupportedKindError) as err:
        decode(_body(name))
    assert str(err.value) == (f"protobuf encoding of {expected['apiVersion']} {expected['kind']} "
                              "is not supported; send JSON")


@pytest.mark.parametrize("name", [n for n in UNSUPPORTED if CASES[n].get("template")])
def test_pod_templates_of_workloads_decode(name: str) -> None:
    """kubectl create deployment/job/cronjob: real protobuf PodSpecs, containers with
    command, ports, resources."""
    data: Any = memoryview(_body(name))[4:]
    for number in [2, *CASES[name]["template"]]:  # Unknown.raw, then down to the template
        data = next(v for n, _, v in iter_fields(data) if n == number)
    expected = _expected(name)
    for key in TEMPLATE_PATHS[expected["kind"]]:
        expected = expected[key]
    got = decode_message("PodTemplateSpec", bytes(data))
    assert got == expected
    assert got["spec"]["containers"]


def test_namespace() -> None:
    assert decode(_body("namespace")) == {
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": {"name": "ns1", "creationTimestamp": None}, "spec": {}, "status": {}}


def test_configmap_and_secret_data() -> None:
    cm = decode(_body("configmap"))
    assert cm["data"] == {"a": "1", "b": "two"}
    assert cm["metadata"] == {"name": "cm1", "namespace": "x", "creationTimestamp": None}
    secret = decode(_body("secret"))
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "user": b"admin", "pw": b"s3cr=t"}
    assert "type" not in secret  # an empty string under omitempty
    binary = decode(_body("secret-binary"))
    assert base64.b64decode(binary["data"]["blob"]) == bytes(range(256)) * 2
    assert binary["type"] == "example.com/custom"
    cmb = decode(_body("configmap-binary"))
    assert base64.b64decode(cmb["binaryData"]["blob"]) == bytes(range(256)) * 2
    assert cmb["data"] == {"plain": "text"}


def test_quota_role_binding_reviews_service() -> None:
    assert decode(_body("quota"))["spec"] == {"hard": {"count/pods": "2", "cpu": "1"}}
    assert decode(_body("role"))["rules"] == [{
        "verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods", "configmaps"],
        "resourceNames": ["a"]}]
    binding = decode(_body("rolebinding"))
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r1"}
    assert binding["subjects"][2] == {"kind": "ServiceAccount", "name": "sa", "namespace": "x"}
    ssar = decode(_body("ssar"))
    assert ssar["spec"] == {"resourceAttributes": {"namespace": "x", "verb": "create",
                                                   "resource": "pods"}}
    assert ssar["status"] == {"allowed": False}
    ssrr = decode(_body("ssrr"))
    assert ssrr["spec"] == {"namespace": "x"}
    assert ssrr["status"] == {"resourceRules": None, "nonResourceRules": None, "incomplete": False}
    svc = decode(_body("service"))
    assert svc["spec"]["ports"] == [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}]
    assert decode(_body("service-lb"))["spec"]["ports"][0]["targetPort"] == "https"


def test_pod_copy_covers_pod_spec() -> None:
    pod = decode(_body("pod-copy"))
    spec = pod["spec"]
    assert spec["priority"] == -5  # a negative int32, sign-extended to 10 bytes on the wire
    assert spec["terminationGracePeriodSeconds"] == 0  # a pointer: kept although zero
    assert spec["automountServiceAccountToken"] is False
    assert spec["volumes"][0] == {"name": "cfg", "configMap": {
        "name": "cm1", "items": [{"key": "k", "path": "k.txt", "mode": 256}], "defaultMode": 420}}
    assert spec["volumes"][2] == {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    container = spec["containers"][0]
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    assert container["readinessProbe"]["tcpSocket"]["port"] == 8080
    assert container["env"][1] == {"name": "EMPTY"}
    assert container["envFrom"][1] == {"secretRef": {"name": "s1", "optional": True}}
    assert pod["status"] == {}


def test_delete_options() -> None:
    assert decode(_body("drain")) == {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 7}
    assert decode(_body("drain-nograce")) == {"kind": "DeleteOptions", "apiVersion": "v1"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_truncation_fails_cleanly(name: str) -> None:
    body = _body(name)
    for end in range(len(body)):
        with contextlib.suppress(ProtobufError):
            decode(body[:end])


def test_corrupted_bodies_fail_cleanly() -> None:
    rng = random.Random(1)
    bodies = [_body(name) for name in sorted(CASES)]
    for _ in range(3000):
        body = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(4, len(body))] = rng.randrange(256)
        try:
            result = decode(bytes(body))
        except ProtobufError:
            continue
        json.dumps(result)  # whatever decodes is JSON-shaped


# -- the envelope ------------------------------------------------------------------------------


def test_bad_magic() -> None:
    for body in (b"", b"k8s", b"{\"kind\": \"Namespace\"}", b"k8s\x01" + _body("namespace")[4:]):
        with pytest.raises(ProtobufError, match="must start with") as err:
            decode(body)
        assert not isinstance(err.value, UnsupportedKindError)  # malformed: a 400, not a 415


def test_envelope_errors() -> None:
    with pytest.raises(ProtobufError, match="names no kind"):
        decode(protobuf.MAGIC)
    with pytest.raises(UnsupportedKindError, match="encoding 'gzip' is not supported"):
        decode(envelope("v1", "Namespace", meta("a"), encoding="gzip"))
    with pytest.raises(UnsupportedKindError, match="'application/json' data"):
        decode(envelope("v1", "Namespace", meta("a"), content_type="application/json"))
    with pytest.raises(UnsupportedKindError,
                       match="^protobuf encoding of apps/v1 Deployment is not supported; send JSON$"):
        decode(envelope("apps/v1", "Deployment", b""))
    with pytest.raises(ProtobufError, match="of rbac.authorization.k8s.io/v1beta1 Role is not supported"):
        decode(envelope("rbac.authorization.k8s.io/v1beta1", "Role", b""))
    # the explicit protobuf content type is fine
    assert decode(envelope("v1", "Namespace", meta("a"), content_type=CONTENT_TYPE))["metadata"] == {
        "name": "a", "creationTimestamp": None}


def test_is_protobuf() -> None:
    assert is_protobuf("application/vnd.kubernetes.protobuf")
    assert is_protobuf("application/vnd.kubernetes.protobuf; charset=utf-8")
    assert is_protobuf(" Application/Vnd.Kubernetes.Protobuf ")
    assert not is_protobuf("application/vnd.kubernetes.protobuf+json")
    assert not is_protobuf("application/json")
    assert not is_protobuf(None)


def test_supported_kinds() -> None:
    kinds = supported_kinds()
    for pair in [("v1", "Namespace"), ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ResourceQuota"),
                 ("v1", "Event"), ("v1", "Node"), ("v1", "Pod"), ("v1", "Service"),
                 ("v1", "DeleteOptions"), ("rbac.authorization.k8s.io/v1", "Role"),
                 ("rbac.authorization.k8s.io/v1", "ClusterRole"),
                 ("rbac.authorization.k8s.io/v1", "RoleBinding"),
                 ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
                 ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
                 ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
                 ("networking.k8s.io/v1", "NetworkPolicy")]:
        assert pair in kinds


# -- the wire decoder --------------------------------------------------------------------------


def test_varints() -> None:
    assert read_varint(b"\x00", 0) == (0, 1)
    assert read_varint(b"\x96\x01", 0) == (150, 2)
    assert read_varint(b"x\xac\x02", 1) == (300, 3)
    assert read_varint(varint(-1), 0) == ((1 << 64) - 1, 10)
    with pytest.raises(ProtobufError, match="truncated"):
        read_varint(b"\x96", 0)
    with pytest.raises(ProtobufError, match="truncated"):
        read_varint(b"", 0)
    with pytest.raises(ProtobufError, match="longer than 10 bytes"):
        read_varint(b"\xff" * 11 + b"\x01", 0)


def test_signed_integers() -> None:
    assert to_int64(read_varint(varint(-5), 0)[0]) == -5
    assert to_int32(read_varint(varint(-5), 0)[0]) == -5
    assert len(varint(-5)) == 10  # int32 negatives are sign-extended like int64 ones
    assert to_int32(2**31 - 1) == 2**31 - 1
    assert to_int32(2**31) == -(2**31)
    assert to_int64(2**63 - 1) == 2**63 - 1
    assert to_int64(2**63) == -(2**63)


def test_iter_fields_all_wire_types() -> None:
    data = (f_varint(1, 150) + f_fixed64(2, 2**40 + 7) + f_str(3, "hi") + f_fixed32(4, 9)
            + f_varint(536870911, 1))
    got = [(n, w, bytes(v) if isinstance(v, memoryview) else v) for n, w, v in iter_fields(data)]
    assert got == [(1, 0, 150), (2, 1, 2**40 + 7), (3, 2, b"hi"), (4, 5, 9), (536870911, 0, 1)]


@pytest.mark.parametrize("data, message", [
    (f_str(1, "hello")[:-1], "field 1 declares 5 bytes, 4 left"),
    (tag(2, 2), "truncated"),
    (f_fixed64(3, 1)[:-1], "truncated protobuf data: 64-bit field 3"),
    (f_fixed32(4, 1)[:-2], "truncated protobuf data: 32-bit field 4"),
    (f_varint(5, 300)[:-1], "truncated"),
    (tag(6, 3) + tag(6, 4), "unsupported protobuf wire type 3"),
    (tag(7, 6), "unsupported protobuf wire type 6"),
    (b"\x00\x01", "field number 0"),
])
def test_iter_fields_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        list(iter_fields(data))


def test_unknown_fields_are_skipped() -> None:
    unknown = (f_varint(99, 1) + f_str(98, "x") + f_fixed32(97, 1) + f_fixed64(96, 1)
               + f_msg(95, f_str(1, "y")))
    raw = (meta("a") + unknown + f_msg(2, f_str(1, "kubernetes"), unknown)
           + f_msg(3, f_str(1, "Active"), unknown))
    body = envelope("v1", "Namespace", raw + f_str(7, "trailing"))
    assert decode(body) == {"kind": "Namespace", "apiVersion": "v1",
                            "metadata": {"name": "a", "creationTimestamp": None},
                            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
    # an unknown field in the envelope itself
    assert decode(body + f_varint(15, 3))["status"] == {"phase": "Active"}


def test_wrong_wire_type_for_a_known_field() -> None:
    with pytest.raises(ProtobufError, match=r"^Namespace\.metadata\.name: wrong wire type varint"):
        decode(envelope("v1", "Namespace", f_msg(1, f_varint(1, 5))))
    with pytest.raises(ProtobufError, match=r"Namespace\.spec: wrong wire type varint"):
        decode(envelope("v1", "Namespace", f_varint(2, 5)))
    with pytest.raises(ProtobufError, match=r"ConfigMap\.data: wrong wire type 32-bit for a map"):
        decode(envelope("v1", "ConfigMap", f_fixed32(2, 5)))


def test_negative_int32_in_a_message() -> None:
    pod = envelope("v1", "Pod", meta("p") + f_msg(2, f_varint(25, -7), f_varint(4, 0), f_varint(5, -1)))
    assert decode(pod)["spec"] == {"containers": None, "terminationGracePeriodSeconds": 0,
                                   "activeDeadlineSeconds": -1, "priority": -7}


def test_repeated_scalars_packed_or_not() -> None:
    def groups(*parts: bytes) -> Any:
        pod = envelope("v1", "Pod", meta("p") + f_msg(2, f_msg(14, *parts)))
        return decode(pod)["spec"]["securityContext"]["supplementalGroups"]

    assert groups(f_varint(4, 1), f_varint(4, 2**40)) == [1, 2**40]
    assert groups(f_bytes(4, varint(1) + varint(2**40) + varint(-3))) == [1, 2**40, -3]
    assert groups(f_varint(4, 1), f_bytes(4, varint(2) + varint(3))) == [1, 2, 3]
    with pytest.raises(ProtobufError, match="truncated"):
        groups(f_bytes(4, varint(300)[:1]))


def test_message_fields_seen_twice_are_merged() -> None:
    raw = f_msg(1, f_str(1, "a"), f_map(11, "x", f_str(2, "1"))) + f_msg(1, f_str(3, "ns"),
                                                                         f_map(11, "y", f_str(2, "2")))
    assert decode(envelope("v1", "ConfigMap", raw))["metadata"] == {
        "name": "a", "namespace": "ns", "labels": {"x": "1", "y": "2"}}


def test_map_entries_with_missing_parts() -> None:
    raw = meta("cm") + f_msg(2, f_str(1, "only-key")) + f_msg(2, f_str(2, "only-value")) \
        + f_msg(3, f_str(1, "b")) + f_map(2, "dup", f_str(2, "1")) + f_map(2, "dup", f_str(2, "2"))
    assert decode(envelope("v1", "ConfigMap", raw))["data"] == {"only-key": "", "": "only-value", "dup": "2"}
    assert decode(envelope("v1", "ConfigMap", raw))["binaryData"] == {"b": ""}


def test_invalid_utf8_is_replaced_like_go_json() -> None:
    raw = f_msg(1, f_bytes(1, b"a\xffb"))
    assert decode(envelope("v1", "Namespace", raw))["metadata"]["name"] == "a\ufffdb"


# -- special types ------------------------------------------------------------------------------


def event(*fields: bytes) -> dict[str, Any]:
    return decode(envelope("v1", "Event", meta("e", "x") + b"".join(fields)))


def test_times() -> None:
    when = 1767323045  # 2026-01-02T03:04:05Z
    got = event(f_msg(6, timestamp(when, 999_999_999)), f_msg(7, b""),
                f_msg(10, timestamp(when, 123_456_789)), f_msg(11, f_varint(1, 2), f_msg(2, timestamp(0, 0))))
    assert got["firstTimestamp"] == "2026-01-02T03:04:05Z"  # whole seconds, as metav1.Time
    assert got["lastTimestamp"] is None  # the zero time
    assert got["eventTime"] == "2026-01-02T03:04:05.123456Z"  # microseconds, as metav1.MicroTime
    assert got["series"] == {"count": 2, "lastObservedTime": "1970-01-01T00:00:00.000000Z"}
    assert got["metadata"]["creationTimestamp"] is None
    assert event(f_msg(6, timestamp(-62135596800)))["firstTimestamp"] is None  # Go's zero time
    assert event(f_msg(6, timestamp(-62135596800 + 86400)))["firstTimestamp"] == "0001-01-02T00:00:00Z"
    assert event(f_msg(6, timestamp(-1)))["firstTimestamp"] == "1969-12-31T23:59:59Z"
    with pytest.raises(ProtobufError, match=r"Event\.firstTimestamp: timestamp .* out of range"):
        event(f_msg(6, timestamp(2**62)))


def test_event_required_fields_and_references() -> None:
    got = event(f_msg(2, f_str(1, "Pod"), f_str(3, "p"), f_str(2, "x")), f_str(3, "Started"),
                f_msg(5, f_str(1, "kubelet"), f_str(2, "n1")), f_varint(8, 1), f_str(9, "Normal"))
    assert got == {"kind": "Event", "apiVersion": "v1",
                   "metadata": {"name": "e", "namespace": "x", "creationTimestamp": None},
                   "involvedObject": {"kind": "Pod", "namespace": "x", "name": "p"},
                   "reason": "Started", "source": {"component": "kubelet", "host": "n1"},
                   "count": 1, "type": "Normal", "reportingComponent": "", "reportingInstance": ""}


def test_node() -> None:
    quantity = f_msg(2, f_str(1, "4"))
    raw = meta("n1") + f_msg(2, f_str(1, "10.0.0.0/24"), f_varint(4, 1),
                             f_msg(5, f_str(1, "k"), f_str(3, "NoSchedule"), f_msg(4, timestamp(0, 5)))) \
        + f_msg(3, f_map(1, "cpu", quantity), f_map(2, "cpu", f_msg(2, f_str(1, ""))),
                f_msg(4, f_str(1, "Ready"), f_str(2, "True"), f_msg(3, timestamp(1767323045))),
                f_msg(5, f_str(1, "InternalIP"), f_str(2, "10.0.0.5")),
                f_msg(6, f_msg(1, f_varint(1, 10250))), f_msg(7, f_str(10, "amd64")))
    node = decode(envelope("v1", "Node", raw))
    assert node["spec"] == {"podCIDR": "10.0.0.0/24", "unschedulable": True,
                            "taints": [{"key": "k", "effect": "NoSchedule",
                                        "timeAdded": "1970-01-01T00:00:00Z"}]}
    status = node["status"]
    assert status["capacity"] == {"cpu": "4"}
    assert status["allocatable"] == {"cpu": "0"}
    assert status["conditions"] == [{"type": "Ready", "status": "True",
                                     "lastHeartbeatTime": "2026-01-02T03:04:05Z"}]
    assert status["addresses"] == [{"type": "InternalIP", "address": "10.0.0.5"}]
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert status["nodeInfo"]["architecture"] == "amd64"
    assert status["nodeInfo"]["machineID"] == ""  # no omitempty in Go


def test_network_policy() -> None:
    port_int = f_msg(2, f_varint(1, 0), f_varint(2, 443), f_str(3, ""))
    port_str = f_msg(2, f_varint(1, 1), f_varint(2, 0), f_str(3, "dns"))
    selector = f_msg(1, f_map(1, "app", f_str(2, "web")))
    raw = meta("np", "x") + f_msg(
        2, selector,
        f_msg(2, f_msg(1, f_str(1, "TCP"), port_int, f_varint(3, 450)),
              f_msg(2, f_msg(3, f_str(1, "10.0.0.0/8"), f_str(2, "10.1.0.0/16"))),
              f_msg(2, f_msg(2, b""))),
        f_msg(3, f_msg(1, port_str)), f_str(4, "Ingress"), f_str(4, "Egress"))
    got = decode(envelope("networking.k8s.io/v1", "NetworkPolicy", raw))
    assert got["spec"] == {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"ports": [{"protocol": "TCP", "port": 443, "endPort": 450}],
                     "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                              {"namespaceSelector": {}}]}],
        "egress": [{"ports": [{"port": "dns"}]}],
        "policyTypes": ["Ingress", "Egress"]}


def test_owner_references_and_managed_fields() -> None:
    owner = f_msg(13, f_str(5, "apps/v1"), f_str(1, "ReplicaSet"), f_str(3, "rs"), f_str(4, "u1"),
                  f_varint(6, 1))
    managed = f_msg(17, f_str(1, "kubectl"), f_str(2, "Update"), f_str(3, "v1"),
                    f_msg(4, timestamp(1767323045)), f_str(6, "FieldsV1"),
                    f_msg(7, f_bytes(1, b'{"f:data":{".":{}}}')))
    got = decode(envelope("v1", "ConfigMap", f_msg(1, f_str(1, "cm"), owner, managed, f_varint(10, 0))))
    assert got["metadata"] == {
        "name": "cm", "deletionGracePeriodSeconds": 0,
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1",
                             "controller": True}],
        "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1",
                           "time": "2026-01-02T03:04:05Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:data": {".": {}}}}]}
    with pytest.raises(ProtobufError, match="fieldsV1 is not JSON"):
        decode(envelope("v1", "ConfigMap", f_msg(1, f_msg(17, f_msg(7, f_bytes(1, b"{nope"))))))


def test_service_account_token_request_and_whoami() -> None:
    sa = decode(envelope("v1", "ServiceAccount",
                         meta("sa", "x") + f_msg(3, f_str(1, "reg")) + f_varint(4, 0)))
    assert sa == {"kind": "ServiceAccount", "apiVersion": "v1",
                  "metadata": {"name": "sa", "namespace": "x", "creationTimestamp": None},
                  "imagePullSecrets": [{"name": "reg"}], "automountServiceAccountToken": False}
    token = decode(_body("token-bound"))
    assert token["spec"] == {"audiences": ["a1", "a2"], "expirationSeconds": 600,
                             "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "123"}}
    extra = f_map(4, "scopes", f_msg(2, f_str(1, "a"), f_str(1, "b")))
    whoami = decode(envelope("authentication.k8s.io/v1", "SelfSubjectReview",
                             meta("") + f_msg(2, f_msg(1, f_str(1, "alice"), f_str(3, "devs"), extra))))
    assert whoami["status"] == {"userInfo": {"username": "alice", "groups": ["devs"],
                                             "extra": {"scopes": ["a", "b"]}}}


def test_descriptors_are_consistent() -> None:
    for message in protobuf.MESSAGES.values():
        numbers = [f.number for f in message.fields]
        assert len(numbers) == len(set(numbers)), message.name
        names = [f.json for f in message.fields if f.json != "-"]
        assert len(names) == len(set(names)), message.name
    for pair, message in protobuf.KINDS.items():
        assert message in protobuf.MESSAGES, pair


# -- live: a fresh capture from the installed kubectl 1.33 ---------------------------------------


def _capture_module() -> Any:
    spec = importlib.util.spec_from_file_location("protobuf_capture", DATA / "capture.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.skipif(not Path("/usr/lib/google-cloud-sdk/bin/kubectl.1.33").exists(),
                    reason="kubectl 1.33 is not installed")
def test_fresh_capture_matches_fixtures(tmp_path: Path) -> None:
    capture = _capture_module()
    wanted = {"namespace", "secret", "ssar", "ssrr", "pod-copy", "service"}
    cases = [c for c in capture.CASES if c.name in wanted]
    for name, data in capture.FILES.items():
        (tmp_path / name).write_bytes(data)
    with capture.CaptureServer(tmp_path) as server:
        for case in cases:
            proc, requests = server.run(capture.PROTOBUF_KUBECTL, case.args)
            assert proc.returncode == 0, proc.stderr
            assert [r.content_type for r in requests] == [CONTENT_TYPE]
            assert requests[0].path == CASES[case.name]["path"]
            assert decode(requests[0].body) == _expected(case.name)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
