"""Decoding of Kubernetes protobuf request bodies (``application/vnd.kubernetes.protobuf``).

kubectl 1.32 and newer send the bodies of the built-in kinds it builds itself
(``kubectl create namespace|configmap|secret|quota|role|...``, ``kubectl auth
can-i``, ``kubectl drain``'s DeleteOptions, ...) as Kubernetes protobuf, while
still accepting JSON answers. :func:`decode` turns such a body into the dict the
same object's JSON encoding would have parsed to, so the rest of the API server
only ever sees JSON-shaped objects.

The wire format (``k8s.io/apimachinery/pkg/runtime/serializer/protobuf``) is the
4-byte magic ``k8s\\x00`` followed by a ``runtime.Unknown`` message::

    message Unknown { TypeMeta typeMeta = 1; bytes raw = 2;
                      string contentEncoding = 3; string contentType = 4; }
    message TypeMeta { string apiVersion = 1; string kind = 2; }

``raw`` is the object's own message (its TypeMeta is not part of it). The
messages are described declaratively below with the field numbers of the
``generated.proto`` files of k8s.io/api and k8s.io/apimachinery, and the JSON
rules of the Go structs (``omitempty``, pointers, inlined embedded structs):

* Go's protobuf encoder (gogo) always writes non-pointer fields, zero values
  included, and writes pointer fields only when set. So a non-pointer scalar
  is dropped when zero (``omitempty``), a pointer scalar is kept whenever it was
  on the wire (``?``), and a field without ``omitempty`` (``!``) is always
  emitted -- as its zero value, or ``null`` for absent pointers, lists and maps,
  just as ``encoding/json`` does.
* Messages that were on the wire are emitted (Go emits non-pointer structs even
  with ``omitempty``); ``metav1.Time``/``MicroTime`` become RFC 3339 strings, or
  ``null`` for the zero time (``"creationTimestamp": null``).
* ``bytes`` become base64 strings (Secret ``data``, ConfigMap ``binaryData``),
  ``resource.Quantity`` its string, ``intstr.IntOrString`` an int or a string,
  ``map<k, v>`` fields (repeated ``{key = 1; value = 2}`` entries) dicts.

Unknown fields are skipped, as Go's decoder does. Malformed input -- a bad
magic, truncated data, a known field with the wrong wire type -- raises
:class:`ProtobufError` (a ``ValueError``) with a readable message; kinds not
described here raise its subclass :class:`UnsupportedKindError`.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "CONTENT_TYPE",
    "MAGIC",
    "ProtobufError",
    "UnsupportedKindError",
    "decode",
    "decode_message",
    "is_protobuf",
    "supported_kinds",
]

#: The media type of Kubernetes protobuf bodies.
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
#: The 4 bytes every Kubernetes protobuf body starts with.
MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """A request body that is not a decodable Kubernetes protobuf object."""


class UnsupportedKindError(ProtobufError):
    """A well-formed body this module cannot decode: a kind it does not describe, or a
    content encoding/type it does not handle. (kube-apiserver's answer would be 415
    Unsupported Media Type; malformed bodies are a 400 Bad Request.)"""


def is_protobuf(content_type: str | None) -> bool:
    """True for ``application/vnd.kubernetes.protobuf`` (parameters ignored)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == CONTENT_TYPE


# -- wire format --------------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
_WIRE_NAMES = {VARINT: "varint", I64: "64-bit", LEN: "length-delimited", SGROUP: "group start",
               EGROUP: "group end", I32: "32-bit"}
_U64 = (1 << 64) - 1


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``pos``: (unsigned 64-bit value, next position)."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise ProtobufError("truncated protobuf data: varint runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("malformed protobuf data: varint longer than 10 bytes")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) for each field of a message.

    The value is an ``int`` for varint, 64-bit and 32-bit fields (unsigned, as
    on the wire) and a ``memoryview`` for length-delimited ones. Groups
    (wire types 3/4, unused by Kubernetes) are rejected."""
    view = memoryview(buf)
    pos = 0
    end = len(view)
    while pos < end:
        key, pos = read_varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("malformed protobuf data: field number 0")
        if wire == VARINT:
            value, pos = read_varint(view, pos)
        elif wire == I64:
            if pos + 8 > end:
                raise ProtobufError(f"truncated protobuf data: 64-bit field {number}")
            value = int.from_bytes(view[pos:pos + 8], "little")
            pos += 8
        elif wire == I32:
            if pos + 4 > end:
                raise ProtobufError(f"truncated protobuf data: 32-bit field {number}")
            value = int.from_bytes(view[pos:pos + 4], "little")
            pos += 4
        elif wire == LEN:
            length, pos = read_varint(view, pos)
            if length > end - pos:
                raise ProtobufError(f"truncated protobuf data: field {number} declares {length} "
                                    f"bytes, {end - pos} left")
            value = view[pos:pos + length]
            pos += length
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire} ({_WIRE_NAMES.get(wire, '?')}) "
                                f"in field {number}")
        yield number, wire, value


def to_int64(value: int) -> int:
    """A varint's unsigned 64 bits as Go's int64 (two's complement)."""
    value &= _U64
    return value - (1 << 64) if value >= 1 << 63 else value


def to_int32(value: int) -> int:
    """A varint as Go's int32: negative int32 values are sign-extended to 10-byte varints
    on the wire, and Go keeps the low 32 bits."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


# -- message descriptors --------------------------------------------------------------

#: Scalar types: name -> (wire type, zero value).
_SCALARS: dict[str, tuple[int, Any]] = {
    "string": (LEN, ""), "bytes": (LEN, ""), "bool": (VARINT, False),
    "int32": (VARINT, 0), "int64": (VARINT, 0), "double": (I64, 0.0),
}


@dataclass(frozen=True)
class Field:
    number: int
    json: str            # JSON name; "-" for an embedded struct inlined into its parent
    type: str            # a scalar name, a special type or a message name
    repeated: bool = False
    map: bool = False    # map<string, type>
    pointer: bool = False
    keep: bool = False   # no omitempty: always emitted


@dataclass(frozen=True)
class Message:
    name: str
    fields: tuple[Field, ...]

    def by_number(self) -> dict[int, Field]:
        return {f.number: f for f in self.fields}


MESSAGES: dict[str, Message] = {}
_BY_NUMBER: dict[str, dict[int, Field]] = {}


def _define(name: str, spec: str) -> None:
    """Describe a message, one field a line: ``number jsonName type [flags]``.

    Types: ``string`` ``bytes`` ``bool`` ``int32`` ``int64`` ``double``, the
    specials ``Time`` ``MicroTime`` ``Quantity`` ``IntOrString`` ``FieldsV1``
    ``ExtraValue``, or a message name; ``[]T`` is repeated, ``map[T]`` a map
    with string keys. Flags: ``?`` a Go pointer (zero values are kept), ``!`` no
    ``omitempty`` (always emitted). A JSON name of ``-`` inlines an embedded
    struct (``json:",inline"``). Lines are in Go struct order, which is the
    order of the JSON keys."""
    fields = []
    for line in spec.strip().splitlines():
        if line.strip().startswith("#"):
            continue
        parts = line.split()
        number, json_name, type_name, flags = int(parts[0]), parts[1], parts[2], "".join(parts[3:])
        repeated = type_name.startswith("[]")
        is_map = type_name.startswith("map[")
        if repeated:
            type_name = type_name[2:]
        elif is_map:
            type_name = type_name[4:-1]
        fields.append(Field(number, json_name, type_name, repeated=repeated, map=is_map,
                            pointer="?" in flags, keep="!" in flags))
    numbers = [f.number for f in fields]
    assert len(numbers) == len(set(numbers)), f"duplicate field number in {name}"
    message = Message(name, tuple(fields))
    MESSAGES[name] = message
    _BY_NUMBER[name] = message.by_number()


# k8s.io/apimachinery/pkg/apis/meta/v1

_define("ObjectMeta", """
    1 name string
    2 generateName string
    3 namespace string
    4 selfLink string
    5 uid string
    6 resourceVersion string
    7 generation int64
    8 creationTimestamp Time
    9 deletionTimestamp Time
    10 deletionGracePeriodSeconds int64 ?
    11 labels map[string]
    12 annotations map[string]
    13 ownerReferences []OwnerReference
    14 finalizers []string
    # 15 was clusterName, removed in Kubernetes 1.25: skipped like any unknown field, as
    # kube-apiserver does (emitting it would trip strict field validation)
    17 managedFields []ManagedFieldsEntry
""")
_define("OwnerReference", """
    5 apiVersion string !
    1 kind string !
    3 name string !
    4 uid string !
    6 controller bool ?
    7 blockOwnerDeletion bool ?
""")
_define("ManagedFieldsEntry", """
    1 manager string
    2 operation string
    3 apiVersion string
    4 time Time
    6 fieldsType string
    7 fieldsV1 FieldsV1
    8 subresource string
""")
_define("LabelSelector", """
    1 matchLabels map[string]
    2 matchExpressions []LabelSelectorRequirement
""")
_define("LabelSelectorRequirement", """
    1 key string !
    2 operator string !
    3 values []string
""")
_define("Condition", """
    1 type string !
    2 status string !
    3 observedGeneration int64
    4 lastTransitionTime Time !
    5 reason string !
    6 message string !
""")
_define("DeleteOptions", """
    1 gracePeriodSeconds int64 ?
    2 preconditions Preconditions
    3 orphanDependents bool ?
    4 propagationPolicy string ?
    5 dryRun []string
    6 ignoreStoreReadErrorWithClusterBreakingPotential bool ?
""")
_define("Preconditions", """
    1 uid string ?
    2 resourceVersion string ?
""")

# k8s.io/api/core/v1: references and small shared types

_define("ObjectReference", """
    1 kind string
    2 namespace string
    3 name string
    4 uid string
    5 apiVersion string
    6 resourceVersion string
    7 fieldPath string
""")
_define("LocalObjectReference", """
    1 name string
""")
_define("TypedLocalObjectReference", """
    1 apiGroup string ?
    2 kind string !
    3 name string !
""")

# Namespace, ConfigMap, Secret, ServiceAccount

_define("Namespace", """
    1 metadata ObjectMeta
    2 spec NamespaceSpec
    3 status NamespaceStatus
""")
_define("NamespaceSpec", """
    1 finalizers []string
""")
_define("NamespaceStatus", """
    1 phase string
    2 conditions []NamespaceCondition
""")
_define("NamespaceCondition", """
    1 type string !
    2 status string !
    4 lastTransitionTime Time
    5 reason string
    6 message string
""")
_define("ConfigMap", """
    1 metadata ObjectMeta
    4 immutable bool ?
    2 data map[string]
    3 binaryData map[bytes]
""")
_define("Secret", """
    1 metadata ObjectMeta
    5 immutable bool ?
    2 data map[bytes]
    4 stringData map[string]
    3 type string
""")
_define("ServiceAccount", """
    1 metadata ObjectMeta
    2 secrets []ObjectReference
    3 imagePullSecrets []LocalObjectReference
    4 automountServiceAccountToken bool ?
""")

# ResourceQuota

_define("ResourceQuota", """
    1 metadata ObjectMeta
    2 spec ResourceQuotaSpec
    3 status ResourceQuotaStatus
""")
_define("ResourceQuotaSpec", """
    1 hard map[Quantity]
    2 scopes []string
    3 scopeSelector ScopeSelector
""")
_define("ScopeSelector", """
    1 matchExpressions []ScopedResourceSelectorRequirement
""")
_define("ScopedResourceSelectorRequirement", """
    1 scopeName string !
    2 operator string !
    3 values []string
""")
_define("ResourceQuotaStatus", """
    1 hard map[Quantity]
    2 used map[Quantity]
""")

# Event (core/v1)

_define("Event", """
    1 metadata ObjectMeta
    2 involvedObject ObjectReference
    3 reason string
    4 message string
    5 source EventSource
    6 firstTimestamp Time
    7 lastTimestamp Time
    8 count int32
    9 type string
    10 eventTime MicroTime
    11 series EventSeries
    12 action string
    13 related ObjectReference
    14 reportingComponent string !
    15 reportingInstance string !
""")
_define("EventSource", """
    1 component string
    2 host string
""")
_define("EventSeries", """
    1 count int32
    2 lastObservedTime MicroTime
""")

# Node

_define("Node", """
    1 metadata ObjectMeta
    2 spec NodeSpec
    3 status NodeStatus
""")
_define("NodeSpec", """
    1 podCIDR string
    7 podCIDRs []string
    3 providerID string
    4 unschedulable bool
    5 taints []Taint
    6 configSource NodeConfigSource
    2 externalID string
""")
_define("Taint", """
    1 key string !
    2 value string
    3 effect string !
    4 timeAdded Time
""")
_define("NodeConfigSource", """
    2 configMap ConfigMapNodeConfigSource
""")
_define("ConfigMapNodeConfigSource", """
    1 namespace string !
    2 name string !
    3 uid string
    4 resourceVersion string
    5 kubeletConfigKey string !
""")
_define("NodeStatus", """
    1 capacity map[Quantity]
    2 allocatable map[Quantity]
    3 phase string
    4 conditions []NodeCondition
    5 addresses []NodeAddress
    6 daemonEndpoints NodeDaemonEndpoints
    7 nodeInfo NodeSystemInfo
    8 images []ContainerImage
    9 volumesInUse []string
    10 volumesAttached []AttachedVolume
    11 config NodeConfigStatus
    12 runtimeHandlers []NodeRuntimeHandler
    13 features NodeFeatures
""")
_define("NodeCondition", """
    1 type string !
    2 status string !
    3 lastHeartbeatTime Time
    4 lastTransitionTime Time
    5 reason string
    6 message string
""")
_define("NodeAddress", """
    1 type string !
    2 address string !
""")
_define("NodeDaemonEndpoints", """
    1 kubeletEndpoint DaemonEndpoint
""")
_define("DaemonEndpoint", """
    1 Port int32 !
""")
_define("NodeSystemInfo", """
    1 machineID string !
    2 systemUUID string !
    3 bootID string !
    4 kernelVersion string !
    5 osImage string !
    6 containerRuntimeVersion string !
    7 kubeletVersion string !
    8 kubeProxyVersion string !
    9 operatingSystem string !
    10 architecture string !
""")
_define("ContainerImage", """
    1 names []string !
    2 sizeBytes int64
""")
_define("AttachedVolume", """
    1 name string !
    2 devicePath string !
""")
_define("NodeConfigStatus", """
    1 assigned NodeConfigSource
    2 active NodeConfigSource
    3 lastKnownGood NodeConfigSource
    4 error string
""")
_define("NodeRuntimeHandler", """
    1 name string !
    2 features NodeRuntimeHandlerFeatures
""")
_define("NodeRuntimeHandlerFeatures", """
    1 recursiveReadOnlyMounts bool ?
    2 userNamespaces bool ?
""")
_define("NodeFeatures", """
    1 supplementalGroupsPolicy bool ?
""")

# Pod

_define("Pod", """
    1 metadata ObjectMeta
    2 spec PodSpec
    3 status PodStatus
""")
_define("PodTemplateSpec", """
    1 metadata ObjectMeta
    2 spec PodSpec
""")
_define("PodSpec", """
    1 volumes []Volume
    20 initContainers []Container
    2 containers []Container !
    34 ephemeralContainers []EphemeralContainer
    3 restartPolicy string
    4 terminationGracePeriodSeconds int64 ?
    5 activeDeadlineSeconds int64 ?
    6 dnsPolicy string
    7 nodeSelector map[string]
    8 serviceAccountName string
    9 serviceAccount string
    21 automountServiceAccountToken bool ?
    10 nodeName string
    11 hostNetwork bool
    12 hostPID bool
    13 hostIPC bool
    27 shareProcessNamespace bool ?
    14 securityContext PodSecurityContext
    15 imagePullSecrets []LocalObjectReference
    16 hostname string
    17 subdomain string
    18 affinity Affinity
    19 schedulerName string
    22 tolerations []Toleration
    23 hostAliases []HostAlias
    24 priorityClassName string
    25 priority int32 ?
    26 dnsConfig PodDNSConfig
    28 readinessGates []PodReadinessGate
    29 runtimeClassName string ?
    30 enableServiceLinks bool ?
    31 preemptionPolicy string ?
    32 overhead map[Quantity]
    33 topologySpreadConstraints []TopologySpreadConstraint
    35 setHostnameAsFQDN bool ?
    36 os PodOS
    37 hostUsers bool ?
    38 schedulingGates []PodSchedulingGate
    39 resourceClaims []PodResourceClaim
    40 resources ResourceRequirements
    41 hostnameOverride string ?
""")
_CONTAINER_FIELDS = """
    1 name string !
    2 image string
    3 command []string
    4 args []string
    5 workingDir string
    6 ports []ContainerPort
    19 envFrom []EnvFromSource
    7 env []EnvVar
    8 resources ResourceRequirements
    23 resizePolicy []ContainerResizePolicy
    24 restartPolicy string ?
    25 restartPolicyRules []ContainerRestartRule
    9 volumeMounts []VolumeMount
    21 volumeDevices []VolumeDevice
    10 livenessProbe Probe
    11 readinessProbe Probe
    22 startupProbe Probe
    12 lifecycle Lifecycle
    13 terminationMessagePath string
    20 terminationMessagePolicy string
    14 imagePullPolicy string
    15 securityContext SecurityContext
    16 stdin bool
    17 stdinOnce bool
    18 tty bool
"""
_define("Container", _CONTAINER_FIELDS)
_define("EphemeralContainerCommon", _CONTAINER_FIELDS)
_define("EphemeralContainer", """
    1 - EphemeralContainerCommon
    2 targetContainerName string
""")
_define("ContainerPort", """
    1 name string
    2 hostPort int32
    3 containerPort int32 !
    4 protocol string
    5 hostIP string
""")
_define("EnvVar", """
    1 name string !
    2 value string
    3 valueFrom EnvVarSource
""")
_define("EnvVarSource", """
    1 fieldRef ObjectFieldSelector
    2 resourceFieldRef ResourceFieldSelector
    3 configMapKeyRef ConfigMapKeySelector
    4 secretKeyRef SecretKeySelector
    5 fileKeyRef FileKeySelector
""")
_define("ObjectFieldSelector", """
    1 apiVersion string
    2 fieldPath string !
""")
_define("ResourceFieldSelector", """
    1 containerName string
    2 resource string !
    3 divisor Quantity
""")
_define("ConfigMapKeySelector", """
    1 - LocalObjectReference
    2 key string !
    3 optional bool ?
""")
_define("SecretKeySelector", """
    1 - LocalObjectReference
    2 key string !
    3 optional bool ?
""")
_define("FileKeySelector", """
    1 volumeName string !
    2 path string !
    3 key string !
    4 optional bool ?
""")
_define("EnvFromSource", """
    1 prefix string
    2 configMapRef ConfigMapEnvSource
    3 secretRef SecretEnvSource
""")
_define("ConfigMapEnvSource", """
    1 - LocalObjectReference
    2 optional bool ?
""")
_define("SecretEnvSource", """
    1 - LocalObjectReference
    2 optional bool ?
""")
_define("ResourceRequirements", """
    1 limits map[Quantity]
    2 requests map[Quantity]
    3 claims []ResourceClaim
""")
_define("ResourceClaim", """
    1 name string !
    2 request string
""")
_define("ContainerResizePolicy", """
    1 resourceName string !
    2 restartPolicy string !
""")
_define("ContainerRestartRule", """
    1 action string
    2 exitCodes ContainerRestartRuleOnExitCodes
""")
_define("ContainerRestartRuleOnExitCodes", """
    1 operator string
    2 values []int32
""")
_define("VolumeMount", """
    1 name string !
    2 readOnly bool
    7 recursiveReadOnly string ?
    3 mountPath string !
    4 subPath string
    5 mountPropagation string ?
    6 subPathExpr string
""")
_define("VolumeDevice", """
    1 name string !
    2 devicePath string !
""")
_define("Probe", """
    1 - ProbeHandler
    2 initialDelaySeconds int32
    3 timeoutSeconds int32
    4 periodSeconds int32
    5 successThreshold int32
    6 failureThreshold int32
    7 terminationGracePeriodSeconds int64 ?
""")
_define("ProbeHandler", """
    1 exec ExecAction
    2 httpGet HTTPGetAction
    3 tcpSocket TCPSocketAction
    4 grpc GRPCAction
""")
_define("ExecAction", """
    1 command []string
""")
_define("HTTPGetAction", """
    1 path string
    2 port IntOrString
    3 host string
    4 scheme string
    5 httpHeaders []HTTPHeader
""")
_define("HTTPHeader", """
    1 name string !
    2 value string !
""")
_define("TCPSocketAction", """
    1 port IntOrString
    2 host string
""")
_define("GRPCAction", """
    1 port int32 !
    2 service string ?!
""")
_define("Lifecycle", """
    1 postStart LifecycleHandler
    2 preStop LifecycleHandler
    3 stopSignal string ?
""")
_define("LifecycleHandler", """
    1 exec ExecAction
    2 httpGet HTTPGetAction
    3 tcpSocket TCPSocketAction
    4 sleep SleepAction
""")
_define("SleepAction", """
    1 seconds int64 !
""")
_define("SecurityContext", """
    1 capabilities Capabilities
    2 privileged bool ?
    3 seLinuxOptions SELinuxOptions
    10 windowsOptions WindowsSecurityContextOptions
    4 runAsUser int64 ?
    8 runAsGroup int64 ?
    5 runAsNonRoot bool ?
    6 readOnlyRootFilesystem bool ?
    7 allowPrivilegeEscalation bool ?
    9 procMount string ?
    11 seccompProfile SeccompProfile
    12 appArmorProfile AppArmorProfile
""")
_define("Capabilities", """
    1 add []string
    2 drop []string
""")
_define("SELinuxOptions", """
    1 user string
    2 role string
    3 type string
    4 level string
""")
_define("WindowsSecurityContextOptions", """
    1 gmsaCredentialSpecName string ?
    2 gmsaCredentialSpec string ?
    3 runAsUserName string ?
    4 hostProcess bool ?
""")
_define("SeccompProfile", """
    1 type string !
    2 localhostProfile string ?
""")
_define("AppArmorProfile", """
    1 type string !
    2 localhostProfile string ?
""")
_define("PodSecurityContext", """
    1 seLinuxOptions SELinuxOptions
    8 windowsOptions WindowsSecurityContextOptions
    2 runAsUser int64 ?
    6 runAsGroup int64 ?
    3 runAsNonRoot bool ?
    4 supplementalGroups []int64
    12 supplementalGroupsPolicy string ?
    5 fsGroup int64 ?
    7 sysctls []Sysctl
    9 fsGroupChangePolicy string ?
    10 seccompProfile SeccompProfile
    11 appArmorProfile AppArmorProfile
    13 seLinuxChangePolicy string ?
""")
_define("Sysctl", """
    1 name string !
    2 value string !
""")
_define("Volume", """
    1 name string !
    2 - VolumeSource
""")
# The volume sources a supervisor pod can use; the in-tree cloud/storage plugins are skipped.
_define("VolumeSource", """
    1 hostPath HostPathVolumeSource
    2 emptyDir EmptyDirVolumeSource
    6 secret SecretVolumeSource
    7 nfs NFSVolumeSource
    10 persistentVolumeClaim PersistentVolumeClaimVolumeSource
    16 downwardAPI DownwardAPIVolumeSource
    19 configMap ConfigMapVolumeSource
    26 projected ProjectedVolumeSource
    28 csi CSIVolumeSource
    30 image ImageVolumeSource
""")
_define("HostPathVolumeSource", """
    1 path string !
    2 type string ?
""")
_define("EmptyDirVolumeSource", """
    1 medium string
    2 sizeLimit Quantity
""")
_define("SecretVolumeSource", """
    1 secretName string
    2 items []KeyToPath
    3 defaultMode int32 ?
    4 optional bool ?
""")
_define("ConfigMapVolumeSource", """
    1 - LocalObjectReference
    2 items []KeyToPath
    3 defaultMode int32 ?
    4 optional bool ?
""")
_define("KeyToPath", """
    1 key string !
    2 path string !
    3 mode int32 ?
""")
_define("NFSVolumeSource", """
    1 server string !
    2 path string !
    3 readOnly bool
""")
_define("PersistentVolumeClaimVolumeSource", """
    1 claimName string !
    2 readOnly bool
""")
_define("DownwardAPIVolumeSource", """
    1 items []DownwardAPIVolumeFile
    2 defaultMode int32 ?
""")
_define("DownwardAPIVolumeFile", """
    1 path string !
    2 fieldRef ObjectFieldSelector
    3 resourceFieldRef ResourceFieldSelector
    4 mode int32 ?
""")
_define("ProjectedVolumeSource", """
    1 sources []VolumeProjection !
    2 defaultMode int32 ?
""")
_define("VolumeProjection", """
    1 secret SecretProjection
    2 downwardAPI DownwardAPIProjection
    3 configMap ConfigMapProjection
    4 serviceAccountToken ServiceAccountTokenProjection
""")
_define("SecretProjection", """
    1 - LocalObjectReference
    2 items []KeyToPath
    4 optional bool ?
""")
_define("ConfigMapProjection", """
    1 - LocalObjectReference
    2 items []KeyToPath
    4 optional bool ?
""")
_define("DownwardAPIProjection", """
    1 items []DownwardAPIVolumeFile
""")
_define("ServiceAccountTokenProjection", """
    1 audience string
    2 expirationSeconds int64 ?
    3 path string !
""")
_define("CSIVolumeSource", """
    1 driver string !
    2 readOnly bool ?
    3 fsType string ?
    4 volumeAttributes map[string]
    5 nodePublishSecretRef LocalObjectReference
""")
_define("ImageVolumeSource", """
    1 reference string
    2 pullPolicy string
""")
_define("Toleration", """
    1 key string
    2 operator string
    3 value string
    4 effect string
    5 tolerationSeconds int64 ?
""")
_define("Affinity", """
    1 nodeAffinity NodeAffinity
    2 podAffinity PodAffinity
    3 podAntiAffinity PodAntiAffinity
""")
_define("NodeAffinity", """
    1 requiredDuringSchedulingIgnoredDuringExecution NodeSelector
    2 preferredDuringSchedulingIgnoredDuringExecution []PreferredSchedulingTerm
""")
_define("NodeSelector", """
    1 nodeSelectorTerms []NodeSelectorTerm !
""")
_define("NodeSelectorTerm", """
    1 matchExpressions []NodeSelectorRequirement
    2 matchFields []NodeSelectorRequirement
""")
_define("NodeSelectorRequirement", """
    1 key string !
    2 operator string !
    3 values []string
""")
_define("PreferredSchedulingTerm", """
    1 weight int32 !
    2 preference NodeSelectorTerm
""")
_define("PodAffinity", """
    1 requiredDuringSchedulingIgnoredDuringExecution []PodAffinityTerm
    2 preferredDuringSchedulingIgnoredDuringExecution []WeightedPodAffinityTerm
""")
_define("PodAntiAffinity", """
    1 requiredDuringSchedulingIgnoredDuringExecution []PodAffinityTerm
    2 preferredDuringSchedulingIgnoredDuringExecution []WeightedPodAffinityTerm
""")
_define("PodAffinityTerm", """
    1 labelSelector LabelSelector
    2 namespaces []string
    3 topologyKey string !
    4 namespaceSelector LabelSelector
    5 matchLabelKeys []string
    6 mismatchLabelKeys []string
""")
_define("WeightedPodAffinityTerm", """
    1 weight int32 !
    2 podAffinityTerm PodAffinityTerm
""")
_define("HostAlias", """
    1 ip string !
    2 hostnames []string
""")
_define("PodDNSConfig", """
    1 nameservers []string
    2 searches []string
    3 options []PodDNSConfigOption
""")
_define("PodDNSConfigOption", """
    1 name string
    2 value string ?
""")
_define("PodReadinessGate", """
    1 conditionType string !
""")
_define("TopologySpreadConstraint", """
    1 maxSkew int32 !
    2 topologyKey string !
    3 whenUnsatisfiable string !
    4 labelSelector LabelSelector
    5 minDomains int32 ?
    6 nodeAffinityPolicy string ?
    7 nodeTaintsPolicy string ?
    8 matchLabelKeys []string
""")
_define("PodOS", """
    1 name string !
""")
_define("PodSchedulingGate", """
    1 name string !
""")
_define("PodResourceClaim", """
    1 name string !
    3 resourceClaimName string ?
    4 resourceClaimTemplateName string ?
""")
_define("PodStatus", """
    1 phase string
    2 conditions []PodCondition
    3 message string
    4 reason string
    11 nominatedNodeName string
    5 hostIP string
    16 hostIPs []HostIP
    6 podIP string
    12 podIPs []PodIP
    7 startTime Time
    10 initContainerStatuses []ContainerStatus
    8 containerStatuses []ContainerStatus
    9 qosClass string
    13 ephemeralContainerStatuses []ContainerStatus
    14 resize string
    15 resourceClaimStatuses []PodResourceClaimStatus
""")
_define("PodResourceClaimStatus", """
    1 name string !
    2 resourceClaimName string ?
""")
_define("PodCondition", """
    1 type string !
    2 status string !
    3 lastProbeTime Time
    4 lastTransitionTime Time
    5 reason string
    6 message string
""")
_define("HostIP", """
    1 ip string !
""")
_define("PodIP", """
    1 ip string !
""")
_define("ContainerStatus", """
    1 name string !
    2 state ContainerState
    3 lastState ContainerState
    4 ready bool !
    5 restartCount int32 !
    6 image string !
    7 imageID string !
    8 containerID string
    9 started bool ?
    10 allocatedResources map[Quantity]
    11 resources ResourceRequirements
    12 volumeMounts []VolumeMountStatus
    13 user ContainerUser
""")
_define("VolumeMountStatus", """
    1 name string !
    2 mountPath string !
    3 readOnly bool
    4 recursiveReadOnly string ?
""")
_define("ContainerUser", """
    1 linux LinuxContainerUser
""")
_define("LinuxContainerUser", """
    1 uid int64 !
    2 gid int64 !
    3 supplementalGroups []int64
""")
_define("ContainerState", """
    1 waiting ContainerStateWaiting
    2 running ContainerStateRunning
    3 terminated ContainerStateTerminated
""")
_define("ContainerStateWaiting", """
    1 reason string
    2 message string
""")
_define("ContainerStateRunning", """
    1 startedAt Time
""")
_define("ContainerStateTerminated", """
    1 exitCode int32 !
    2 signal int32
    3 reason string
    4 message string
    5 startedAt Time
    6 finishedAt Time
    7 containerID string
""")

# Service

_define("Service", """
    1 metadata ObjectMeta
    2 spec ServiceSpec
    3 status ServiceStatus
""")
_define("ServiceSpec", """
    1 ports []ServicePort
    2 selector map[string]
    3 clusterIP string
    18 clusterIPs []string
    4 type string
    5 externalIPs []string
    7 sessionAffinity string
    8 loadBalancerIP string
    9 loadBalancerSourceRanges []string
    10 externalName string
    11 externalTrafficPolicy string
    12 healthCheckNodePort int32
    13 publishNotReadyAddresses bool
    14 sessionAffinityConfig SessionAffinityConfig
    19 ipFamilies []string
    17 ipFamilyPolicy string ?
    20 allocateLoadBalancerNodePorts bool ?
    21 loadBalancerClass string ?
    22 internalTrafficPolicy string ?
    23 trafficDistribution string ?
""")
_define("ServicePort", """
    1 name string
    2 protocol string
    6 appProtocol string ?
    3 port int32 !
    4 targetPort IntOrString
    5 nodePort int32
""")
_define("SessionAffinityConfig", """
    1 clientIP ClientIPConfig
""")
_define("ClientIPConfig", """
    1 timeoutSeconds int32 ?
""")
_define("ServiceStatus", """
    1 loadBalancer LoadBalancerStatus
    2 conditions []Condition
""")
_define("LoadBalancerStatus", """
    1 ingress []LoadBalancerIngress
""")
_define("LoadBalancerIngress", """
    1 ip string
    2 hostname string
    3 ipMode string ?
    4 ports []PortStatus
""")
_define("PortStatus", """
    1 port int32 !
    2 protocol string !
    3 error string ?
""")

# k8s.io/api/rbac/v1

_define("Role", """
    1 metadata ObjectMeta
    2 rules []PolicyRule !
""")
_define("ClusterRole", """
    1 metadata ObjectMeta
    2 rules []PolicyRule !
    3 aggregationRule AggregationRule
""")
_define("AggregationRule", """
    1 clusterRoleSelectors []LabelSelector
""")
_define("PolicyRule", """
    1 verbs []string !
    2 apiGroups []string
    3 resources []string
    4 resourceNames []string
    5 nonResourceURLs []string
""")
_define("RoleBinding", """
    1 metadata ObjectMeta
    2 subjects []Subject
    3 roleRef RoleRef
""")
_define("ClusterRoleBinding", """
    1 metadata ObjectMeta
    2 subjects []Subject
    3 roleRef RoleRef
""")
_define("Subject", """
    1 kind string !
    2 apiGroup string
    3 name string !
    4 namespace string
""")
_define("RoleRef", """
    1 apiGroup string !
    2 kind string !
    3 name string !
""")

# k8s.io/api/authorization/v1

_define("SelfSubjectAccessReview", """
    1 metadata ObjectMeta
    2 spec SelfSubjectAccessReviewSpec
    3 status SubjectAccessReviewStatus
""")
_define("SelfSubjectAccessReviewSpec", """
    1 resourceAttributes ResourceAttributes
    2 nonResourceAttributes NonResourceAttributes
""")
_define("SubjectAccessReview", """
    1 metadata ObjectMeta
    2 spec SubjectAccessReviewSpec
    3 status SubjectAccessReviewStatus
""")
_define("SubjectAccessReviewSpec", """
    1 resourceAttributes ResourceAttributes
    2 nonResourceAttributes NonResourceAttributes
    3 user string
    4 groups []string
    5 extra map[ExtraValue]
    6 uid string
""")
_define("ResourceAttributes", """
    1 namespace string
    2 verb string
    3 group string
    4 version string
    5 resource string
    6 subresource string
    7 name string
    8 fieldSelector FieldSelectorAttributes
    9 labelSelector LabelSelectorAttributes
""")
_define("FieldSelectorAttributes", """
    1 rawSelector string
    2 requirements []FieldSelectorRequirement
""")
_define("FieldSelectorRequirement", """
    1 key string !
    2 operator string !
    3 values []string
""")
_define("LabelSelectorAttributes", """
    1 rawSelector string
    2 requirements []LabelSelectorRequirement
""")
_define("NonResourceAttributes", """
    1 path string
    2 verb string
""")
_define("SubjectAccessReviewStatus", """
    1 allowed bool !
    4 denied bool
    2 reason string
    3 evaluationError string
""")
_define("SelfSubjectRulesReview", """
    1 metadata ObjectMeta
    2 spec SelfSubjectRulesReviewSpec
    3 status SubjectRulesReviewStatus
""")
_define("SelfSubjectRulesReviewSpec", """
    1 namespace string
""")
_define("SubjectRulesReviewStatus", """
    1 resourceRules []ResourceRule !
    2 nonResourceRules []NonResourceRule !
    3 incomplete bool !
    4 evaluationError string
""")
_define("ResourceRule", """
    1 verbs []string !
    2 apiGroups []string
    3 resources []string
    4 resourceNames []string
""")
_define("NonResourceRule", """
    1 verbs []string !
    2 nonResourceURLs []string
""")

# k8s.io/api/authentication/v1

_define("SelfSubjectReview", """
    1 metadata ObjectMeta
    2 status SelfSubjectReviewStatus
""")
_define("SelfSubjectReviewStatus", """
    1 userInfo UserInfo
""")
_define("UserInfo", """
    1 username string
    2 uid string
    3 groups []string
    4 extra map[ExtraValue]
""")
_define("TokenRequest", """
    1 metadata ObjectMeta
    2 spec TokenRequestSpec
    3 status TokenRequestStatus
""")
_define("TokenRequestSpec", """
    1 audiences []string !
    4 expirationSeconds int64 ?!
    3 boundObjectRef BoundObjectReference !
""")
_define("BoundObjectReference", """
    1 kind string
    2 apiVersion string
    3 name string
    4 uid string
""")
_define("TokenRequestStatus", """
    1 token string !
    2 expirationTimestamp Time !
""")

# k8s.io/api/networking/v1

_define("NetworkPolicy", """
    1 metadata ObjectMeta
    2 spec NetworkPolicySpec
""")
_define("NetworkPolicySpec", """
    1 podSelector LabelSelector
    2 ingress []NetworkPolicyIngressRule
    3 egress []NetworkPolicyEgressRule
    4 policyTypes []string
""")
_define("NetworkPolicyIngressRule", """
    1 ports []NetworkPolicyPort
    2 from []NetworkPolicyPeer
""")
_define("NetworkPolicyEgressRule", """
    1 ports []NetworkPolicyPort
    2 to []NetworkPolicyPeer
""")
_define("NetworkPolicyPeer", """
    1 podSelector LabelSelector
    2 namespaceSelector LabelSelector
    3 ipBlock IPBlock
""")
_define("IPBlock", """
    1 cidr string !
    2 except []string
""")
_define("NetworkPolicyPort", """
    1 protocol string ?
    2 port IntOrString
    3 endPort int32 ?
""")

#: (apiVersion, kind) -> top-level message.
KINDS: dict[tuple[str, str], str] = {
    **{("v1", k): k for k in ("Namespace", "ConfigMap", "Secret", "ServiceAccount", "ResourceQuota",
                              "Event", "Node", "Pod", "Service", "DeleteOptions")},
    ("meta.k8s.io/v1", "DeleteOptions"): "DeleteOptions",
    **{("rbac.authorization.k8s.io/v1", k): k
       for k in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")},
    **{("authorization.k8s.io/v1", k): k
       for k in ("SelfSubjectAccessReview", "SelfSubjectRulesReview", "SubjectAccessReview")},
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"): "SubjectAccessReview",
    ("authentication.k8s.io/v1", "SelfSubjectReview"): "SelfSubjectReview",
    ("authentication.k8s.io/v1", "TokenRequest"): "TokenRequest",
    ("networking.k8s.io/v1", "NetworkPolicy"): "NetworkPolicy",
}

_SPECIALS = {"Time", "MicroTime", "Quantity", "IntOrString", "FieldsV1", "ExtraValue"}


def _check_descriptors() -> None:
    for message in MESSAGES.values():
        for f in message.fields:
            assert f.type in _SCALARS or f.type in _SPECIALS or f.type in MESSAGES, \
                f"{message.name}.{f.json}: unknown type {f.type}"
            assert f.json != "-" or f.type in MESSAGES, f"{message.name}: only messages inline"
    for name in KINDS.values():
        assert name in MESSAGES, name


_check_descriptors()


def supported_kinds() -> list[tuple[str, str]]:
    """The (apiVersion, kind) pairs :func:`decode` understands."""
    return sorted(KINDS)


# -- decoding -------------------------------------------------------------------------


def _text(data: memoryview) -> str:
    # Go's encoding/json replaces invalid UTF-8 with U+FFFD, so the JSON body would too.
    return bytes(data).decode("utf-8", errors="replace")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_GO_ZERO_SECONDS = -62135596800  # 0001-01-01T00:00:00Z, Go's zero time.Time


def _timestamp(data: memoryview, path: str, micro: bool) -> str | None:
    """``metav1.Time``/``MicroTime``: an empty message is the zero time (JSON null)."""
    if len(data) == 0:
        return None
    seconds = nanos = 0
    for number, wire, value in iter_fields(data):
        if number == 1 and wire == VARINT:
            seconds = to_int64(value)
        elif number == 2 and wire == VARINT:
            nanos = to_int32(value)
    if seconds == _GO_ZERO_SECONDS and nanos == 0:
        return None
    try:
        moment = _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError:
        raise ProtobufError(f"{path}: timestamp {seconds}s is out of range") from None
    if not 1 <= moment.year <= 9999:
        raise ProtobufError(f"{path}: timestamp {seconds}s is out of range")
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
            f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}")
    return f"{text}.{moment.microsecond:06d}Z" if micro else f"{text}Z"


def _special(type_name: str, data: memoryview, path: str) -> Any:
    if type_name in ("Time", "MicroTime"):
        return _timestamp(data, path, micro=type_name == "MicroTime")
    if type_name == "Quantity":
        text = ""
        for number, wire, value in iter_fields(data):
            if number == 1 and wire == LEN:
                text = _text(value)
        return text or "0"
    if type_name == "IntOrString":
        kind = int_val = 0
        str_val = ""
        for number, wire, value in iter_fields(data):
            if number == 1 and wire == VARINT:
                kind = to_int64(value)
            elif number == 2 and wire == VARINT:
                int_val = to_int32(value)
            elif number == 3 and wire == LEN:
                str_val = _text(value)
        return str_val if kind == 1 else int_val
    if type_name == "FieldsV1":
        raw = b""
        for number, wire, value in iter_fields(data):
            if number == 1 and wire == LEN:
                raw = bytes(value)
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ProtobufError(f"{path}: fieldsV1 is not JSON") from None
    if type_name == "ExtraValue":
        return [_text(value) for number, wire, value in iter_fields(data) if number == 1 and wire == LEN]
    raise AssertionError(type_name)


def _scalar(type_name: str, wire: int, value: Any, path: str) -> Any:
    expected = _SCALARS[type_name][0]
    if wire != expected:
        raise ProtobufError(f"{path}: wrong wire type {_WIRE_NAMES.get(wire, wire)} for a "
                            f"{type_name} field (expected {_WIRE_NAMES[expected]})")
    if type_name == "string":
        return _text(value)
    if type_name == "bytes":
        return base64.b64encode(bytes(value)).decode("ascii")
    if type_name == "bool":
        return value != 0
    if type_name == "int32":
        return to_int32(value)
    if type_name == "int64":
        return to_int64(value)
    if type_name == "double":
        return struct.unpack("<d", value.to_bytes(8, "little"))[0]
    raise AssertionError(type_name)


def _zero(type_name: str) -> Any:
    if type_name in _SCALARS:
        return _SCALARS[type_name][1]
    if type_name == "Quantity":
        return "0"
    if type_name == "IntOrString":
        return 0
    if type_name == "ExtraValue":
        return None
    return None if type_name in ("Time", "MicroTime", "FieldsV1") else {}


def _value(type_name: str, wire: int, value: Any, path: str) -> Any:
    """One (non-repeated) value of a field of any type."""
    if type_name in _SCALARS:
        return _scalar(type_name, wire, value, path)
    if wire != LEN:
        raise ProtobufError(f"{path}: wrong wire type {_WIRE_NAMES.get(wire, wire)} for a "
                            f"{type_name} field (expected length-delimited)")
    if type_name in _SPECIALS:
        return _special(type_name, value, path)
    return _message(type_name, value, path)


def _repeated_scalars(f: Field, wire: int, value: Any, path: str) -> list[Any]:
    """Repeated numeric fields may arrive one per tag or packed into one length-delimited field."""
    expected = _SCALARS[f.type][0]
    if wire == LEN and expected != LEN:
        out: list[Any] = []
        pos = 0
        while pos < len(value):
            if expected == VARINT:
                item, pos = read_varint(value, pos)
            else:
                size = 8 if expected == I64 else 4
                if pos + size > len(value):
                    raise ProtobufError(f"truncated protobuf data: packed {path}")
                item = int.from_bytes(value[pos:pos + size], "little")
                pos += size
            out.append(_scalar(f.type, expected, item, path))
        return out
    return [_scalar(f.type, wire, value, path)]


def _map_entry(f: Field, data: memoryview, path: str) -> tuple[str, Any]:
    key = ""
    val: Any = _zero(f.type)
    for number, wire, value in iter_fields(data):
        if number == 1:
            key = _scalar("string", wire, value, f"{path} key")
        elif number == 2:
            val = _value(f.type, wire, value, f"{path}[{key}]")
    return key, val


def _message(name: str, data: memoryview | bytes, path: str) -> dict[str, Any]:
    """Decode one message into its JSON-shaped dict."""
    fields = _BY_NUMBER[name]
    seen: dict[int, Any] = {}
    for number, wire, value in iter_fields(data):
        f = fields.get(number)
        if f is None:
            continue  # an unknown field: skipped, as Go's decoder does
        where = f"{path}.{f.json}" if f.json != "-" else path
        if f.map:
            if wire != LEN:
                raise ProtobufError(f"{where}: wrong wire type {_WIRE_NAMES.get(wire, wire)} for a map")
            key, val = _map_entry(f, value, where)
            seen.setdefault(number, {})[key] = val
        elif f.repeated:
            items = seen.setdefault(number, [])
            if f.type in _SCALARS:
                items.extend(_repeated_scalars(f, wire, value, where))
            else:
                items.append(_value(f.type, wire, value, f"{where}[{len(items)}]"))
        elif f.type in _SCALARS:
            seen[number] = _scalar(f.type, wire, value, where)
        else:
            if wire != LEN:
                raise ProtobufError(f"{where}: wrong wire type {_WIRE_NAMES.get(wire, wire)} for a "
                                    f"{f.type} field (expected length-delimited)")
            # A message field seen twice is merged; concatenating the encodings does that.
            seen[number] = bytes(seen.get(number, b"")) + bytes(value)

    out: dict[str, Any] = {}
    for f in MESSAGES[name].fields:
        where = f"{path}.{f.json}" if f.json != "-" else path
        if f.number not in seen:
            if f.keep:
                out[f.json] = None if (f.pointer or f.repeated or f.map or f.type not in _SCALARS) \
                    else _zero(f.type)
            continue
        got = seen[f.number]
        if f.map or f.repeated:
            if got or f.keep:
                out[f.json] = got or None
        elif f.type in _SCALARS:
            if f.pointer or f.keep or got != _SCALARS[f.type][1]:
                out[f.json] = got
        elif f.json == "-":
            out.update(_message(f.type, got, where))
        else:
            out[f.json] = _value(f.type, LEN, memoryview(got), where)
    return out


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    """Decode the bare message ``name`` (no envelope), e.g. a PodTemplateSpec."""
    if name not in MESSAGES:
        raise ProtobufError(f"no protobuf description for message {name}")
    return _message(name, memoryview(data), name)


def _envelope(raw: bytes) -> tuple[str, str, memoryview, str, str]:
    if len(raw) < len(MAGIC) or raw[:len(MAGIC)] != MAGIC:
        raise ProtobufError("not a Kubernetes protobuf body: it must start with the 4 bytes 'k8s\\x00'")
    api_version = kind = encoding = content_type = ""
    payload = memoryview(b"")
    for number, wire, value in iter_fields(memoryview(raw)[len(MAGIC):]):
        if wire != LEN:
            continue
        if number == 1:
            for n, w, v in iter_fields(value):
                if n == 1 and w == LEN:
                    api_version = _text(v)
                elif n == 2 and w == LEN:
                    kind = _text(v)
        elif number == 2:
            payload = value
        elif number == 3:
            encoding = _text(value)
        elif number == 4:
            content_type = _text(value)
    return api_version, kind, payload, encoding, content_type


def decode(raw: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf request body as the dict its JSON encoding parses to.

    ``kind`` and ``apiVersion`` come from the envelope and lead the dict, as in
    Go's JSON; the rest follows the Go struct's field order."""
    api_version, kind, payload, encoding, content_type = _envelope(bytes(raw))
    if not kind:
        raise ProtobufError("protobuf body names no kind in its envelope")
    if encoding:
        raise UnsupportedKindError(f"protobuf content encoding {encoding!r} is not supported")
    if content_type and content_type != CONTENT_TYPE:
        raise UnsupportedKindError(f"protobuf envelope holds {content_type!r} data, which is not supported")
    message = KINDS.get((api_version, kind))
    if message is None:
        gv = api_version or "(no apiVersion)"
        raise UnsupportedKindError(f"protobuf encoding of {gv} {kind} is not supported; send JSON")
    body = _message(message, payload, kind)
    return {"kind": kind, "apiVersion": api_version, **body}
