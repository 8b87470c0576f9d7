"""Cluster API v1beta1 kinds (cluster-api v1.8/v1.9), declared as data.

Groups: ``cluster.x-k8s.io`` (Cluster, Machine, MachineSet, MachineDeployment,
MachineHealthCheck, ClusterClass), ``bootstrap.cluster.x-k8s.io`` (KubeadmConfig,
KubeadmConfigTemplate), ``controlplane.cluster.x-k8s.io`` (KubeadmControlPlane,
KubeadmControlPlaneTemplate) and ``addons.cluster.x-k8s.io`` (ClusterResourceSet,
ClusterResourceSetBinding), all served and stored as v1beta1.

Field names, required fields, enums and printer columns follow upstream's CRDs.
Upstream's defaulting webhooks are mirrored by schema defaults where the default is
static (MachineDeployment strategy, KubeadmConfigSpec format, ...) and by
``prepare_create`` where it depends on other fields (cluster-name labels, the
``v`` prefix of versions). Upstream's validating webhooks are the ``validate`` hooks,
with upstream's messages. Upstream also defaults empty ``namespace``s of object
references to the object's own; here an empty one simply means "this namespace".
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from typing import Any

from appliance.errors import Cause
from appliance.kinds.registry import (AdmissionContext, Kind, Obj, PrinterColumn, Validator,
                                      Version)
from appliance.kinds.schema import (CONDITION, Schema, array, boolean, int_or_string, integer,
                                    map_of, obj, preserve, string, string_map, top_level)
from appliance.util.labels import SelectorError, selector_from_label_selector_object
from appliance.util.names import label_value

GROUP = "cluster.x-k8s.io"
BOOTSTRAP_GROUP = "bootstrap.cluster.x-k8s.io"
CONTROLPLANE_GROUP = "controlplane.cluster.x-k8s.io"
ADDONS_GROUP = "addons.cluster.x-k8s.io"
VERSION = "v1beta1"
CATEGORIES = ("cluster-api",)

CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
DEPLOYMENT_NAME_LABEL = "cluster.x-k8s.io/deployment-name"
SET_NAME_LABEL = "cluster.x-k8s.io/set-name"
MACHINE_CONTROL_PLANE_NAME_LABEL = "cluster.x-k8s.io/control-plane-name"

#: What kubeadm and CAPI's controllers use when a Cluster leaves these unset
#: (upstream's webhooks do not write them into the object).
DEFAULT_SERVICE_DOMAIN = "cluster.local"
DEFAULT_API_SERVER_PORT = 6443
#: Upstream's webhook defaults (``metav1.Duration`` strings as Go prints them).
DEFAULT_NODE_DELETION_TIMEOUT = "10s"
DEFAULT_NODE_STARTUP_TIMEOUT = "10m0s"

#: ``version.KubeSemver``: what CAPI accepts as a Kubernetes version.
KUBE_SEMVER = re.compile(r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
                         r"([-0-9a-zA-Z_.+]*)?$")
_IMAGE_TAG = re.compile(r"^[\w][\w.-]{0,127}$")

# -- shared schema pieces --------------------------------------------------------------------

DURATION = string  # a metav1.Duration such as "10m0s"

OBJECT_REFERENCE = obj({
    "apiVersion": string(), "kind": string(), "name": string(), "namespace": string(),
    "uid": string(), "resourceVersion": string(), "fieldPath": string(),
}, **{"x-kubernetes-map-type": "atomic"})

#: CAPI's own ObjectMeta: only labels and annotations.
CAPI_META = obj({"labels": string_map(), "annotations": string_map()})

LABEL_SELECTOR = obj({
    "matchLabels": string_map(),
    "matchExpressions": array(obj({"key": string(), "operator": string(),
                                   "values": array(string())}, required=["key", "operator"])),
}, **{"x-kubernetes-map-type": "atomic"})

API_ENDPOINT = obj({"host": string(), "port": integer()}, required=["host", "port"])

CONDITIONS = array(CONDITION)
V1BETA2_STATUS = preserve(type="object")
FAILURE_DOMAINS = map_of(obj({"controlPlane": boolean(), "attributes": string_map()}))
MACHINE_ADDRESSES = array(obj({
    "type": string(enum=["Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS"]),
    "address": string()}, required=["address", "type"]))
READINESS_GATES = array(obj({"conditionType": string(minLength=1)}, required=["conditionType"]))
AVAILABILITY_GATES = array(obj({"conditionType": string(minLength=1)},
                               required=["conditionType"]))
NAMING_STRATEGY = obj({"template": string()})
DELETE_POLICY = ("Random", "Newest", "Oldest")
FORMATS = ("cloud-config", "ignition")

AGE = PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp")
CLUSTER_FROM_LABEL = PrinterColumn(
    "Cluster", json_path=".metadata.labels.cluster\\.x-k8s\\.io/cluster-name",
    description="Cluster")
CLUSTER_FROM_SPEC = PrinterColumn("Cluster", json_path=".spec.clusterName", description="Cluster")

# -- KubeadmConfigSpec (bootstrap.cluster.x-k8s.io), shared by four kinds ---------------------

ENV_VAR = obj({"name": string(), "value": string(), "valueFrom": preserve(type="object")},
              required=["name"])
HOST_PATH_MOUNT = obj({"name": string(), "hostPath": string(), "mountPath": string(),
                       "readOnly": boolean(), "pathType": string()},
                      required=["hostPath", "mountPath", "name"])


def _control_plane_component(**extra: Schema) -> Schema:
    return obj({"extraArgs": string_map(), "extraVolumes": array(HOST_PATH_MOUNT),
                "extraEnvs": array(ENV_VAR), **extra})


CLUSTER_CONFIGURATION = obj({
    "apiVersion": string(), "kind": string(),
    "etcd": obj({
        "local": obj({"imageRepository": string(), "imageTag": string(), "dataDir": string(),
                      "extraArgs": string_map(), "extraEnvs": array(ENV_VAR),
                      "serverCertSANs": array(string()), "peerCertSANs": array(string())}),
        "external": obj({"endpoints": array(string()), "caFile": string(),
                         "certFile": string(), "keyFile": string()},
                        required=["caFile", "certFile", "endpoints", "keyFile"]),
    }),
    "networking": obj({"serviceSubnet": string(), "podSubnet": string(),
                       "dnsDomain": string()}),
    "kubernetesVersion": string(),
    "controlPlaneEndpoint": string(),
    "apiServer": _control_plane_component(certSANs=array(string()),
                                          timeoutForControlPlane=DURATION()),
    "controllerManager": _control_plane_component(),
    "scheduler": _control_plane_component(),
    "dns": obj({"imageRepository": string(), "imageTag": string()}),
    "certificatesDir": string(),
    "imageRepository": string(),
    "featureGates": map_of(boolean()),
    "clusterName": string(),
})

NODE_REGISTRATION = obj({
    "name": string(), "criSocket": string(),
    "taints": array(obj({"key": string(), "value": string(),
                         "effect": string(enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                         "timeAdded": string(nullable=True)}, required=["effect", "key"])),
    "kubeletExtraArgs": string_map(),
    "ignorePreflightErrors": array(string()),
    # KubeadmConfigSpec.Default() sets IfNotPresent on init and join registrations.
    "imagePullPolicy": string(enum=["Always", "IfNotPresent", "Never"], default="IfNotPresent"),
    "imagePullSerial": boolean(),
}, default={})
LOCAL_API_ENDPOINT = obj({"advertiseAddress": string(), "bindPort": integer()})
KUBEADM_PATCHES = obj({"directory": string()})

INIT_CONFIGURATION = obj({
    "apiVersion": string(), "kind": string(),
    "bootstrapTokens": array(obj({
        "token": string(), "description": string(), "ttl": DURATION(), "expires": string(),
        "usages": array(string()), "groups": array(string())}, required=["token"])),
    "nodeRegistration": NODE_REGISTRATION,
    "localAPIEndpoint": LOCAL_API_ENDPOINT,
    "skipPhases": array(string()),
    "patches": KUBEADM_PATCHES,
})

JOIN_CONFIGURATION = obj({
    "apiVersion": string(), "kind": string(),
    "nodeRegistration": NODE_REGISTRATION,
    "caCertPath": string(),
    "discovery": obj({
        "bootstrapToken": obj({"token": string(), "apiServerEndpoint": string(),
                               "caCertHashes": array(string()),
                               "unsafeSkipCAVerification": boolean()}, required=["token"]),
        "file": obj({"kubeConfigPath": string(), "kubeConfig": preserve(type="object")},
                    required=["kubeConfigPath"]),
        "tlsBootstrapToken": string(),
        "timeout": DURATION(),
    }),
    "controlPlane": obj({"localAPIEndpoint": LOCAL_API_ENDPOINT}),
    "skipPhases": array(string()),
    "patches": KUBEADM_PATCHES,
})

SECRET_KEY_REF = obj({"name": string(), "key": string()}, required=["key", "name"])

KUBEADM_FILE = obj({
    "path": string(), "owner": string(), "permissions": string(),
    "encoding": string(enum=["base64", "gzip", "gzip+base64"]),
    "append": boolean(), "content": string(),
    "contentFrom": obj({"secret": SECRET_KEY_REF}, required=["secret"]),
}, required=["path"])

KUBEADM_USER = obj({
    "name": string(), "gecos": string(), "groups": string(), "homeDir": string(),
    "inactive": boolean(), "shell": string(), "passwd": string(),
    "passwdFrom": obj({"secret": SECRET_KEY_REF}, required=["secret"]),
    "primaryGroup": string(), "lockPassword": boolean(), "sudo": string(),
    "sshAuthorizedKeys": array(string()),
}, required=["name"])

DISK_SETUP = obj({
    "partitions": array(obj({"device": string(), "layout": boolean(), "overwrite": boolean(),
                             "tableType": string()}, required=["device", "layout"])),
    "filesystems": array(obj({"device": string(), "filesystem": string(), "label": string(),
                              "partition": string(), "overwrite": boolean(),
                              "replaceFS": string(), "extraOpts": array(string())},
                             required=["device", "filesystem"])),
})

KUBEADM_CONFIG_SPEC = obj({
    "clusterConfiguration": CLUSTER_CONFIGURATION,
    "initConfiguration": INIT_CONFIGURATION,
    "joinConfiguration": JOIN_CONFIGURATION,
    "files": array(KUBEADM_FILE),
    "diskSetup": DISK_SETUP,
    "mounts": array(array(string())),
    "bootCommands": array(string()),
    "preKubeadmCommands": array(string()),
    "postKubeadmCommands": array(string()),
    "users": array(KUBEADM_USER),
    "ntp": obj({"servers": array(string()), "enabled": boolean()}),
    "format": string(enum=list(FORMATS), default="cloud-config"),
    "verbosity": integer(),
    "useExperimentalRetryJoin": boolean(),
    "ignition": obj({"containerLinuxConfig": obj({"additionalConfig": string(),
                                                  "strict": boolean()})}),
})

KUBEADM_CONFIG_STATUS = obj({
    "ready": boolean(), "dataSecretName": string(), "failureReason": string(),
    "failureMessage": string(), "observedGeneration": integer(), "conditions": CONDITIONS,
    "v1beta2": V1BETA2_STATUS,
})

# -- Machine ------------------------------------------------------------------------------

MACHINE_SPEC = obj({
    "clusterName": string(minLength=1),
    "bootstrap": obj({"configRef": OBJECT_REFERENCE, "dataSecretName": string()}),
    "infrastructureRef": OBJECT_REFERENCE,
    "version": string(),
    "providerID": string(),
    "failureDomain": string(),
    "readinessGates": READINESS_GATES,
    "nodeDrainTimeout": DURATION(),
    "nodeVolumeDetachTimeout": DURATION(),
    "nodeDeletionTimeout": DURATION(),
}, required=["bootstrap", "clusterName", "infrastructureRef"])

MACHINE_STATUS = obj({
    "nodeRef": OBJECT_REFERENCE,
    "nodeInfo": preserve(type="object"),
    "lastUpdated": string(),
    "failureReason": string(), "failureMessage": string(),
    "addresses": MACHINE_ADDRESSES,
    "phase": string(),
    "certificatesExpiryDate": string(),
    "bootstrapReady": boolean(), "infrastructureReady": boolean(),
    "observedGeneration": integer(),
    "conditions": CONDITIONS,
    "deletion": obj({"nodeDrainStartTime": string(),
                     "waitForNodeVolumeDetachStartTime": string()}),
    "v1beta2": V1BETA2_STATUS,
})

MACHINE_TEMPLATE_SPEC = obj({"metadata": CAPI_META, "spec": MACHINE_SPEC})

# -- MachineSet / MachineDeployment ------------------------------------------------------------


def _md_strategy(defaults: bool) -> Schema:
    """MachineDeploymentStrategy; ``defaults`` as upstream's MachineDeployment webhook sets
    them (the ``rollingUpdate`` block itself is added by ``_prepare_md`` for RollingUpdate)."""
    d: dict[str, Any] = {}
    return obj({
        "type": string(enum=["RollingUpdate", "OnDelete"],
                       **({"default": "RollingUpdate"} if defaults else d)),
        "rollingUpdate": obj({
            "maxUnavailable": int_or_string(**({"default": 0} if defaults else d)),
            "maxSurge": int_or_string(**({"default": 1} if defaults else d)),
            "deletePolicy": string(enum=list(DELETE_POLICY)),
        }),
        "remediation": obj({"maxInFlight": int_or_string()}),
    }, **({"default": {}} if defaults else d))


MACHINE_SET_SPEC = obj({
    "clusterName": string(minLength=1),
    "replicas": integer(default=1),
    "minReadySeconds": integer(),
    "deletePolicy": string(enum=list(DELETE_POLICY), default="Random"),
    "selector": LABEL_SELECTOR,
    "template": MACHINE_TEMPLATE_SPEC,
    "machineNamingStrategy": NAMING_STRATEGY,
}, required=["clusterName", "selector"])

MACHINE_SET_STATUS = obj({
    "selector": string(), "replicas": integer(), "fullyLabeledReplicas": integer(),
    "readyReplicas": integer(), "availableReplicas": integer(), "observedGeneration": integer(),
    "failureReason": string(), "failureMessage": string(), "conditions": CONDITIONS,
    "v1beta2": V1BETA2_STATUS,
})

MACHINE_DEPLOYMENT_SPEC = obj({
    "clusterName": string(minLength=1),
    "replicas": integer(default=1),
    "rolloutAfter": string(),
    "selector": LABEL_SELECTOR,
    "template": MACHINE_TEMPLATE_SPEC,
    "strategy": _md_strategy(defaults=True),
    "machineNamingStrategy": NAMING_STRATEGY,
    "minReadySeconds": integer(default=0),
    "revisionHistoryLimit": integer(default=1),
    "paused": boolean(),
    "progressDeadlineSeconds": integer(default=600),
}, required=["clusterName", "selector", "template"])

MACHINE_DEPLOYMENT_STATUS = obj({
    "observedGeneration": integer(), "selector": string(), "replicas": integer(),
    "updatedReplicas": integer(), "readyReplicas": integer(), "availableReplicas": integer(),
    "unavailableReplicas": integer(), "phase": string(), "conditions": CONDITIONS,
    "v1beta2": V1BETA2_STATUS,
})

# -- MachineHealthCheck ---------------------------------------------------------------------

UNHEALTHY_CONDITION = obj({"type": string(minLength=1), "status": string(minLength=1),
                           "timeout": DURATION()}, required=["status", "timeout", "type"])


def _mhc_fields(defaults: bool) -> dict[str, Schema]:
    return {
        "unhealthyConditions": array(UNHEALTHY_CONDITION),
        "maxUnhealthy": int_or_string(**({"default": "100%"} if defaults else {})),
        "unhealthyRange": string(pattern=r"^\[[0-9]+-[0-9]+\]$"),
        "nodeStartupTimeout": DURATION(
            **({"default": DEFAULT_NODE_STARTUP_TIMEOUT} if defaults else {})),
        "remediationTemplate": OBJECT_REFERENCE,
    }


MHC_SPEC = obj({"clusterName": string(minLength=1), "selector": LABEL_SELECTOR,
                **_mhc_fields(defaults=True)}, required=["clusterName", "selector"])
MHC_STATUS = obj({
    "expectedMachines": integer(minimum=0), "currentHealthy": integer(minimum=0),
    "remediationsAllowed": integer(minimum=0), "observedGeneration": integer(),
    "targets": array(string()), "conditions": CONDITIONS, "v1beta2": V1BETA2_STATUS,
})

# -- Cluster ---------------------------------------------------------------------------------

NETWORK_RANGES = obj({"cidrBlocks": array(string())}, required=["cidrBlocks"])
CLUSTER_VARIABLE = obj({"name": string(), "definitionFrom": string(), "value": preserve()},
                       required=["name", "value"])
VARIABLE_OVERRIDES = obj({"overrides": array(CLUSTER_VARIABLE)})
MHC_TOPOLOGY = obj({"enable": boolean(), **_mhc_fields(defaults=False)})
_NODE_TIMEOUTS = {"nodeDrainTimeout": DURATION(), "nodeVolumeDetachTimeout": DURATION(),
                  "nodeDeletionTimeout": DURATION()}

TOPOLOGY = obj({
    "class": string(), "classNamespace": string(), "version": string(),
    "rolloutAfter": string(),
    "controlPlane": obj({"metadata": CAPI_META, "replicas": integer(),
                         "machineHealthCheck": MHC_TOPOLOGY, **_NODE_TIMEOUTS,
                         "readinessGates": READINESS_GATES, "variables": VARIABLE_OVERRIDES}),
    "workers": obj({
        "machineDeployments": array(obj({
            "metadata": CAPI_META, "class": string(), "name": string(),
            "failureDomain": string(), "replicas": integer(),
            "machineHealthCheck": MHC_TOPOLOGY, **_NODE_TIMEOUTS,
            "minReadySeconds": integer(), "readinessGates": READINESS_GATES,
            "strategy": _md_strategy(defaults=False), "variables": VARIABLE_OVERRIDES,
        }, required=["class", "name"]), merge_key="name"),
        "machinePools": array(obj({
            "metadata": CAPI_META, "class": string(), "name": string(),
            "failureDomains": array(string()), **_NODE_TIMEOUTS,
            "minReadySeconds": integer(), "replicas": integer(),
            "variables": VARIABLE_OVERRIDES,
        }, required=["class", "name"]), merge_key="name"),
    }),
    "variables": array(CLUSTER_VARIABLE, merge_key="name"),
}, required=["class", "version"])

CLUSTER_SPEC = obj({
    "paused": boolean(),
    "clusterNetwork": obj({"apiServerPort": integer(), "services": NETWORK_RANGES,
                           "pods": NETWORK_RANGES, "serviceDomain": string()}),
    "controlPlaneEndpoint": API_ENDPOINT,
    "controlPlaneRef": OBJECT_REFERENCE,
    "infrastructureRef": OBJECT_REFERENCE,
    "topology": TOPOLOGY,
    "availabilityGates": AVAILABILITY_GATES,
})

CLUSTER_STATUS = obj({
    "failureDomains": FAILURE_DOMAINS, "failureReason": string(), "failureMessage": string(),
    "phase": string(), "infrastructureReady": boolean(), "controlPlaneReady": boolean(),
    "conditions": CONDITIONS, "observedGeneration": integer(), "v1beta2": V1BETA2_STATUS,
})

# -- ClusterClass -----------------------------------------------------------------------------

LOCAL_OBJECT_TEMPLATE = obj({"ref": OBJECT_REFERENCE}, required=["ref"])

CLUSTER_CLASS_SPEC = obj({
    "availabilityGates": AVAILABILITY_GATES,
    "infrastructure": LOCAL_OBJECT_TEMPLATE,
    "infrastructureNamingStrategy": NAMING_STRATEGY,
    "controlPlane": obj({
        "metadata": CAPI_META, "ref": OBJECT_REFERENCE,
        "machineInfrastructure": LOCAL_OBJECT_TEMPLATE,
        "machineHealthCheck": obj(_mhc_fields(defaults=False)),
        "namingStrategy": NAMING_STRATEGY, **_NODE_TIMEOUTS,
        "readinessGates": READINESS_GATES,
    }, required=["ref"]),
    "workers": obj({
        "machineDeployments": array(obj({
            "class": string(),
            "template": obj({"metadata": CAPI_META, "bootstrap": LOCAL_OBJECT_TEMPLATE,
                             "infrastructure": LOCAL_OBJECT_TEMPLATE},
                            required=["bootstrap", "infrastructure"]),
            "machineHealthCheck": obj(_mhc_fields(defaults=False)),
            "failureDomain": string(), "namingStrategy": NAMING_STRATEGY, **_NODE_TIMEOUTS,
            "minReadySeconds": integer(), "readinessGates": READINESS_GATES,
            "strategy": _md_strategy(defaults=False),
        }, required=["class", "template"]), merge_key="class"),
        "machinePools": array(obj({
            "class": string(),
            "template": obj({"metadata": CAPI_META, "bootstrap": LOCAL_OBJECT_TEMPLATE,
                             "infrastructure": LOCAL_OBJECT_TEMPLATE},
                            required=["bootstrap", "infrastructure"]),
            "failureDomains": array(string()), "namingStrategy": NAMING_STRATEGY,
            **_NODE_TIMEOUTS, "minReadySeconds": integer(),
        }, required=["class", "template"]), merge_key="class"),
    }),
    "variables": array(obj({
        "name": string(), "required": boolean(), "metadata": CAPI_META,
        "schema": obj({"openAPIV3Schema": preserve(type="object")},
                      required=["openAPIV3Schema"]),
    }, required=["name", "required", "schema"]), merge_key="name"),
    "patches": array(obj({
        "name": string(), "description": string(), "enabledIf": string(),
        "definitions": array(obj({
            "selector": obj({
                "apiVersion": string(), "kind": string(),
                "matchResources": obj({
                    "controlPlane": boolean(), "infrastructureCluster": boolean(),
                    "machineDeploymentClass": obj({"names": array(string())}),
                    "machinePoolClass": obj({"names": array(string())}),
                }),
            }, required=["apiVersion", "kind", "matchResources"]),
            "jsonPatches": array(obj({
                "op": string(enum=["add", "replace", "remove"]), "path": string(),
                "value": preserve(),
                "valueFrom": obj({"variable": string(), "template": string()}),
            }, required=["op", "path"])),
        }, required=["jsonPatches", "selector"])),
        "external": obj({"generateExtension": string(), "validateExtension": string(),
                         "discoverVariablesExtension": string(), "settings": string_map()}),
    }, required=["name"])),
})

CLUSTER_CLASS_STATUS = obj({
    "variables": array(preserve(type="object")), "conditions": CONDITIONS,
    "observedGeneration": integer(), "v1beta2": V1BETA2_STATUS,
})

# -- KubeadmControlPlane ------------------------------------------------------------------

ROLLOUT_STRATEGY = obj({
    "type": string(enum=["RollingUpdate"], default="RollingUpdate"),
    "rollingUpdate": obj({"maxSurge": int_or_string(default=1)}, default={}),
}, default={})
REMEDIATION_STRATEGY = obj({"maxRetry": integer(), "retryPeriod": DURATION(),
                            "minHealthyPeriod": DURATION()})
ROLLOUT_BEFORE = obj({"certificatesExpiryDays": integer()})

KCP_SPEC = obj({
    "replicas": integer(default=1),
    "version": string(),
    "machineTemplate": obj({"metadata": CAPI_META, "infrastructureRef": OBJECT_REFERENCE,
                            **_NODE_TIMEOUTS, "readinessGates": READINESS_GATES},
                           required=["infrastructureRef"]),
    "kubeadmConfigSpec": KUBEADM_CONFIG_SPEC,
    "rolloutBefore": ROLLOUT_BEFORE,
    "rolloutAfter": string(),
    "rolloutStrategy": ROLLOUT_STRATEGY,
    "remediationStrategy": REMEDIATION_STRATEGY,
    "machineNamingStrategy": NAMING_STRATEGY,
}, required=["kubeadmConfigSpec", "machineTemplate", "version"])

KCP_STATUS = obj({
    "selector": string(), "replicas": integer(), "version": string(),
    "updatedReplicas": integer(), "readyReplicas": integer(), "unavailableReplicas": integer(),
    "initialized": boolean(), "ready": boolean(), "failureReason": string(),
    "failureMessage": string(), "observedGeneration": integer(), "conditions": CONDITIONS,
    "lastRemediation": preserve(type="object"), "v1beta2": V1BETA2_STATUS,
})

KCP_TEMPLATE_SPEC = obj({"template": obj({
    "metadata": CAPI_META,
    "spec": obj({
        "machineTemplate": obj({"metadata": CAPI_META, **_NODE_TIMEOUTS}),
        "kubeadmConfigSpec": KUBEADM_CONFIG_SPEC,
        "rolloutBefore": ROLLOUT_BEFORE, "rolloutAfter": string(),
        "rolloutStrategy": ROLLOUT_STRATEGY, "remediationStrategy": REMEDIATION_STRATEGY,
        "machineNamingStrategy": NAMING_STRATEGY,
    }, required=["kubeadmConfigSpec"]),
}, required=["spec"])}, required=["template"])

# -- ClusterResourceSet ---------------------------------------------------------------------

CRS_SPEC = obj({
    "clusterSelector": LABEL_SELECTOR,
    "resources": array(obj({"name": string(minLength=1),
                            "kind": string(enum=["Secret", "ConfigMap"])},
                           required=["kind", "name"])),
    "strategy": string(enum=["ApplyOnce", "Reconcile"], default="ApplyOnce"),
}, required=["clusterSelector"])

CRS_BINDING_SPEC = obj({
    "clusterName": string(),
    "bindings": array(obj({
        "clusterResourceSetName": string(),
        "resources": array(obj({"name": string(minLength=1),
                                "kind": string(enum=["Secret", "ConfigMap"]),
                                "applied": boolean(), "hash": string(),
                                "lastAppliedTime": string()},
                               required=["applied", "kind", "name"])),
    }, required=["clusterResourceSetName"])),
})

# -- admission helpers ------------------------------------------------------------------------


def _q(value: Any) -> str:
    """A value in a field error, as Kubernetes prints it (strings double-quoted)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause(path, f"Invalid value: {_q(value)}: {detail}")


def forbidden(path: str, detail: str) -> Cause:
    return Cause(path, f"Forbidden: {detail}", "FieldValueForbidden")


def required(path: str, detail: str = "") -> Cause:
    return Cause(path, "Required value" + (f": {detail}" if detail else ""),
                 "FieldValueRequired")


def _spec(o: Obj | None) -> Obj:
    return ((o or {}).get("spec") or {}) if o is not None else {}


def _dig(o: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(o, dict):
            return None
        o = o.get(part)
    return o


def _set_label(meta_holder: Obj, key: str, value: str) -> None:
    meta = meta_holder.setdefault("metadata", {})
    labels = meta.get("labels") or {}
    labels[key] = value
    meta["labels"] = labels


def _v_prefix(holder: Obj | None, key: str) -> None:
    if isinstance(holder, dict) and isinstance(holder.get(key), str) and holder[key] \
            and not holder[key].startswith("v"):
        holder[key] = "v" + holder[key]


def parse_semver(text: str) -> tuple[int, int, int] | None:
    """Major, minor and patch of a Kubernetes version (``v1.30.2``, ``1.30.2+build``)."""
    m = KUBE_SEMVER.match(text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _semver_text(v: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in v)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go duration string (``10m0s``, ``1h30m``, ``0``), or None."""
    if text in ("0", "+0", "-0"):
        return 0.0
    body = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if not body:
        return None
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if not m:
            return None
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    return sign * total


def _int_or_percent_error(value: Any) -> str | None:
    """``intstr.GetScaledValueFromIntOrPercent``'s complaint about ``value``, if any."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None
    if isinstance(value, str):
        if value.endswith("%") and re.fullmatch(r"-?\d+", value[:-1]):
            return None
        return "invalid value for IntOrString: invalid type: string is not a percentage"
    return None


def _selector_causes(spec: Obj, template_labels: dict[str, str]) -> list[Cause]:
    """MachineSet/MachineDeployment: the selector parses and matches the template."""
    try:
        selector = selector_from_label_selector_object(spec.get("selector") or {})
    except SelectorError as exc:
        return [invalid("spec.selector", spec.get("selector"), str(exc))]
    if not selector.matches(template_labels):
        return [invalid("spec.template.metadata.labels", template_labels,
                        f"must match spec.selector {_q(str(selector))}")]
    return []


def _ref_namespace_causes(ref: Any, path: str, namespace: str) -> list[Cause]:
    if isinstance(ref, dict) and ref.get("namespace") and ref["namespace"] != namespace:
        return [invalid(f"{path}.namespace", ref["namespace"], "must match metadata.namespace")]
    return []


def _cluster_name_immutable(new: Obj, old: Obj | None) -> list[Cause]:
    if old is not None and _spec(new).get("clusterName") != _spec(old).get("clusterName"):
        return [forbidden("spec.clusterName", "field is immutable")]
    return []


def _version_causes(value: Any, path: str) -> list[Cause]:
    if value is not None and not KUBE_SEMVER.match(str(value)):
        return [invalid(path, value, "must be a valid semantic version")]
    return []


# -- KubeadmConfigSpec validation (KubeadmConfigSpec.Validate) -------------------------------

_IGNITION_GATE = "can be set only if the KubeadmBootstrapFormatIgnition feature gate is enabled"


def kubeadm_config_spec_causes(spec: Obj, prefix: str) -> list[Cause]:
    causes: list[Cause] = []
    seen: set[str] = set()
    for i, f in enumerate(spec.get("files") or []):
        at = f"{prefix}.files[{i}]"
        if f.get("content") and f.get("contentFrom") is not None:
            causes.append(invalid(at, f, "only one of content or contentFrom may be "
                                         "specified for a single file"))
        secret = (f.get("contentFrom") or {}).get("secret")
        if f.get("contentFrom") is not None:
            if not (secret or {}).get("name"):
                causes.append(required(f"{at}.contentFrom.secret.name",
                                       "secret file source must specify non-empty secret name"))
            if not (secret or {}).get("key"):
                causes.append(required(f"{at}.contentFrom.secret.key",
                                       "secret file source must specify non-empty secret key"))
        if f.get("path") in seen:
            causes.append(invalid(f"{at}.path", f, "path property must be unique among all "
                                                   "files"))
        seen.add(f.get("path"))
    for i, u in enumerate(spec.get("users") or []):
        at = f"{prefix}.users[{i}]"
        if u.get("passwd") is not None and u.get("passwdFrom") is not None:
            causes.append(invalid(at, u, "only one of passwd or passwdFrom may be specified "
                                         "for a single user"))
        if u.get("passwdFrom") is not None:
            secret = (u.get("passwdFrom") or {}).get("secret") or {}
            if not secret.get("name"):
                causes.append(required(f"{at}.passwdFrom.secret.name",
                                       "secret file source must specify non-empty secret name"))
            if not secret.get("key"):
                causes.append(required(f"{at}.passwdFrom.secret.key",
                                       "secret file source must specify non-empty secret key"))
    # schema.validate cannot see a property named "format" (it drops the OpenAPI keyword of
    # that name everywhere), so the enum is checked here.
    fmt = spec.get("format")
    if fmt is not None and fmt not in FORMATS:
        causes.append(Cause(f"{prefix}.format", f"Unsupported value: {fmt!r}: supported values: "
                            + ", ".join(f'"{f}"' for f in FORMATS), "FieldValueNotSupported"))
    # The KubeadmBootstrapFormatIgnition feature gate is off, as upstream's default.
    if fmt == "ignition":
        causes.append(forbidden(f"{prefix}.format", _IGNITION_GATE))
    if spec.get("ignition") is not None:
        causes.append(forbidden(f"{prefix}.ignition", _IGNITION_GATE))
    return causes


def _cluster_configuration_causes(new: Obj | None, old: Obj | None, prefix: str) -> list[Cause]:
    if not new:
        return []
    causes: list[Cause] = []
    dns_tag = _dig(new, "dns", "imageTag")
    if dns_tag and not _IMAGE_TAG.match(dns_tag):
        causes.append(forbidden(f"{prefix}.dns.imageTag", f"tag {dns_tag} is invalid"))
    etcd = new.get("etcd") or {}
    local_tag = _dig(etcd, "local", "imageTag")
    if local_tag and not _IMAGE_TAG.match(local_tag):
        causes.append(forbidden(f"{prefix}.etcd.local.imageTag", f"tag {local_tag} is invalid"))
    if etcd.get("local") is not None and etcd.get("external") is not None:
        causes.append(forbidden(f"{prefix}.etcd.local",
                                "cannot have both external and local etcd"))
    if old is not None:
        was_external = _dig(old, "etcd", "external") is not None
        if (etcd.get("external") is not None) != was_external:
            causes.append(forbidden(f"{prefix}.etcd.external",
                                    "cannot change between external and local etcd"))
    return causes


def _validate_kubeadm_config(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    return kubeadm_config_spec_causes(_spec(new), "spec")


def _validate_kubeadm_config_template(new: Obj, old: Obj | None,
                                      ctx: AdmissionContext) -> list[Cause]:
    spec = _dig(new, "spec", "template", "spec") or {}
    return kubeadm_config_spec_causes(spec, "spec.template.spec")


# -- Machine ---------------------------------------------------------------------------------


def _prepare_machine(o: Obj) -> None:
    spec = o.setdefault("spec", {})
    if spec.get("clusterName"):
        _set_label(o, CLUSTER_NAME_LABEL, spec["clusterName"])
    _v_prefix(spec, "version")
    spec.setdefault("nodeDeletionTimeout", DEFAULT_NODE_DELETION_TIMEOUT)


def _validate_machine(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = _spec(new)
    ns = new["metadata"].get("namespace", "")
    causes: list[Cause] = []
    for field_name in ("clusterName", "bootstrap", "infrastructureRef"):
        if field_name not in spec:
            causes.append(required(f"spec.{field_name}"))
    boot = spec.get("bootstrap")
    if isinstance(boot, dict) and boot.get("configRef") is None \
            and boot.get("dataSecretName") is None:
        causes.append(required("spec.bootstrap.data", "expected either "
                               "spec.bootstrap.dataSecretName or spec.bootstrap.configRef to "
                               "be populated"))
    causes += _ref_namespace_causes((boot or {}).get("configRef"), "spec.bootstrap.configRef",
                                    ns)
    causes += _ref_namespace_causes(spec.get("infrastructureRef"), "spec.infrastructureRef", ns)
    causes += _version_causes(spec.get("version"), "spec.version")
    causes += _cluster_name_immutable(new, old)
    return causes


# -- MachineSet / MachineDeployment ------------------------------------------------------------


def _label_selector_and_template(o: Obj, key: str, value: str) -> None:
    spec = o.setdefault("spec", {})
    selector = spec.setdefault("selector", {})
    match = selector.get("matchLabels") or {}
    match[key] = value
    selector["matchLabels"] = match
    _set_label(spec.setdefault("template", {}), key, value)


def _prepare_machine_set(o: Obj) -> None:
    spec = o.setdefault("spec", {})
    name = spec.get("clusterName") or ""
    if name:
        _set_label(o, CLUSTER_NAME_LABEL, name)
        _label_selector_and_template(o, CLUSTER_NAME_LABEL, name)
    _v_prefix(_dig(spec, "template", "spec"), "version")


def _prepare_machine_deployment(o: Obj) -> None:
    spec = o.setdefault("spec", {})
    selector = spec.get("selector") or {}
    if not selector.get("matchLabels") and not selector.get("matchExpressions"):
        _label_selector_and_template(o, DEPLOYMENT_NAME_LABEL, o["metadata"].get("name", ""))
    _prepare_machine_set(o)
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", 1)
        rolling.setdefault("maxUnavailable", 0)


def _template_causes(spec: Obj) -> list[Cause]:
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    return _selector_causes(spec, labels) + _version_causes(
        _dig(template, "spec", "version"), "spec.template.spec.version")


def _validate_machine_set(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    return _template_causes(_spec(new)) + _cluster_name_immutable(new, old)


def _validate_machine_deployment(new: Obj, old: Obj | None,
                                 ctx: AdmissionContext) -> list[Cause]:
    spec = _spec(new)
    causes = _template_causes(spec)
    rolling = _dig(spec, "strategy", "rollingUpdate") or {}
    for key in ("maxSurge", "maxUnavailable"):
        problem = _int_or_percent_error(rolling.get(key))
        if problem:
            causes.append(invalid(f"spec.strategy.rollingUpdate.{key}", rolling.get(key),
                                  f"must be either an int or a percentage: {problem}"))
    return causes + _cluster_name_immutable(new, old)


# -- MachineHealthCheck -------------------------------------------------------------------


def _prepare_mhc(o: Obj) -> None:
    name = _spec(o).get("clusterName")
    if name:
        _set_label(o, CLUSTER_NAME_LABEL, name)


def _validate_mhc(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = _spec(new)
    causes: list[Cause] = []
    raw = spec.get("selector") or {}
    try:
        selector = selector_from_label_selector_object(raw)
        if selector.is_empty:
            causes.append(required("spec.selector", "selector must not be empty"))
    except SelectorError as exc:
        causes.append(invalid("spec.selector", raw, str(exc)))
    named = (raw.get("matchLabels") or {}).get(CLUSTER_NAME_LABEL)
    if named is not None and named != spec.get("clusterName"):
        causes.append(invalid("spec.selector", raw, "cannot specify a cluster selector other "
                                                    "than the one specified by ClusterName"))
    timeout = spec.get("nodeStartupTimeout")
    if timeout is not None:
        seconds = parse_duration(str(timeout))
        if seconds is None:
            causes.append(invalid("spec.nodeStartupTimeout", timeout, "must be a duration"))
        elif seconds != 0 and seconds < 30:
            causes.append(invalid("spec.nodeStartupTimeout", timeout, "must be at least 30s"))
    problem = _int_or_percent_error(spec.get("maxUnhealthy"))
    if problem:
        causes.append(invalid("spec.maxUnhealthy", spec.get("maxUnhealthy"),
                              f"must be either an int or a percentage: {problem}"))
    if old is not None:
        causes += _cluster_name_immutable(new, old)
        if spec.get("selector") != _spec(old).get("selector"):
            causes.append(forbidden("spec.selector", "field is immutable"))
    return causes


# -- Cluster ---------------------------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _lab_networks(lab_ranges: Sequence[str]) -> list[tuple[Network, str]]:
    """``"CIDR"`` or ``"CIDR=label"`` -> (network, label)."""
    out = []
    for entry in lab_ranges:
        cidr, _, label = entry.partition("=")
        out.append((ipaddress.ip_network(cidr.strip(), strict=False), label.strip()))
    return out


def _prepare_cluster(o: Obj) -> None:
    _v_prefix(_dig(o, "spec", "topology"), "version")


def _cluster_validator(lab_ranges: Sequence[str]) -> Validator:
    lab = _lab_networks(lab_ranges)

    def validate(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
        name = new["metadata"].get("name", "")
        ns = new["metadata"].get("namespace", "")
        spec = _spec(new)
        old_spec = _spec(old) if old is not None else None
        causes = [invalid("metadata.name", name, f"must be a valid label value {e}")
                  for e in label_value(name)]
        for ref in ("infrastructureRef", "controlPlaneRef"):
            if old_spec is not None and spec.get(ref) is None and old_spec.get(ref) is not None:
                causes.append(forbidden(f"spec.{ref}", "cannot be removed"))
            causes += _ref_namespace_causes(spec.get(ref), f"spec.{ref}", ns)
        causes += _network_causes(spec.get("clusterNetwork") or {}, lab)
        topology = spec.get("topology")
        if topology is not None:
            causes += _topology_causes(topology, (old_spec or {}).get("topology"),
                                       old_spec is not None, ns, ctx)
        elif old_spec is not None and old_spec.get("topology") is not None:
            causes.append(forbidden("spec.topology", "cannot be removed from an existing "
                                                     "Cluster"))
        return causes

    return validate


def _network_causes(network: Obj, lab: list[tuple[Network, str]]) -> list[Cause]:
    causes: list[Cause] = []
    parsed: list[tuple[str, str, Network]] = []
    for part in ("pods", "services"):
        for i, cidr in enumerate((network.get(part) or {}).get("cidrBlocks") or []):
            path = f"spec.clusterNetwork.{part}.cidrBlocks[{i}]"
            try:
                if "/" not in cidr:
                    raise ValueError(cidr)
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                causes.append(invalid(path, cidr, f"invalid CIDR address: {cidr}"))
                continue
            for other_path, other_cidr, other in parsed:
                if other.version == net.version and net.overlaps(other) \
                        and other_path.split(".")[2] != part:
                    causes.append(invalid(path, cidr, f"overlaps {other_path} ({other_cidr})"))
            for lab_net, label in lab:
                if lab_net.version == net.version and net.overlaps(lab_net):
                    causes.append(invalid(path, cidr, f"overlaps the lab's network {lab_net}"
                                          + (f" ({label})" if label else "")))
            parsed.append((path, cidr, net))
    return causes


def _topology_causes(topology: Obj, old_topology: Obj | None, updating: bool, ns: str,
                     ctx: AdmissionContext) -> list[Cause]:
    cls = topology.get("class") or ""
    if not cls:
        return [required("spec.topology.class", "class cannot be empty")]
    causes: list[Cause] = []
    version = topology.get("version") or ""
    new_v = parse_semver(version)
    if new_v is None:
        causes.append(invalid("spec.topology.version", version,
                              "version must be a valid semantic version"))
    names: set[str] = set()
    for md in (topology.get("workers") or {}).get("machineDeployments") or []:
        if md.get("name") in names:
            causes.append(invalid("spec.topology.workers.machineDeployments", md,
                                  f"MachineDeployment names should be unique. MachineDeployment "
                                  f"with name {_q(md.get('name'))} is defined more than once."))
        names.add(md.get("name"))
    if not updating:
        return causes
    if not old_topology or not old_topology.get("class"):
        causes.append(forbidden("spec.topology.class",
                                "class cannot be set on an existing Cluster"))
        return causes
    if cls != old_topology.get("class"):
        class_ns = topology.get("classNamespace") or ns
        if ctx.lookup(GROUP, "clusterclasses", class_ns, cls) is None:
            causes.append(forbidden("spec.topology.class",
                                    f"ClusterClass {_q(cls)} not found in namespace "
                                    f"{_q(class_ns)}"))
    old_v = parse_semver(old_topology.get("version") or "")
    if new_v is not None and old_v is not None and new_v != old_v:
        if new_v < old_v:
            causes.append(invalid("spec.topology.version", version,
                                  f"version cannot be decreased from {_q(_semver_text(old_v))} "
                                  f"to {_q(_semver_text(new_v))}"))
        elif new_v >= (old_v[0], old_v[1] + 2, 0):
            causes.append(invalid("spec.topology.version", version,
                                  f"version cannot be increased from {_q(_semver_text(old_v))} "
                                  f"to {_q(_semver_text(new_v))}"))
    return causes


# -- KubeadmControlPlane -----------------------------------------------------------------------

#: Paths of a KubeadmControlPlane that may change after creation (upstream's allow list;
#: "*" allows everything below).
KCP_MUTABLE_PATHS: tuple[tuple[str, ...], ...] = tuple(tuple(p.split(".")) for p in (
    "metadata.*",
    "spec.kubeadmConfigSpec.clusterConfiguration.etcd.local",
    "spec.kubeadmConfigSpec.clusterConfiguration.etcd.local.*",
    "spec.kubeadmConfigSpec.clusterConfiguration.etcd.external.*",
    "spec.kubeadmConfigSpec.clusterConfiguration.dns",
    "spec.kubeadmConfigSpec.clusterConfiguration.dns.*",
    "spec.kubeadmConfigSpec.clusterConfiguration.imageRepository",
    "spec.kubeadmConfigSpec.clusterConfiguration.featureGates",
    "spec.kubeadmConfigSpec.clusterConfiguration.featureGates.*",
    "spec.kubeadmConfigSpec.clusterConfiguration.apiServer",
    "spec.kubeadmConfigSpec.clusterConfiguration.apiServer.*",
    "spec.kubeadmConfigSpec.clusterConfiguration.controllerManager",
    "spec.kubeadmConfigSpec.clusterConfiguration.controllerManager.*",
    "spec.kubeadmConfigSpec.clusterConfiguration.scheduler",
    "spec.kubeadmConfigSpec.clusterConfiguration.scheduler.*",
    "spec.kubeadmConfigSpec.initConfiguration.nodeRegistration",
    "spec.kubeadmConfigSpec.initConfiguration.nodeRegistration.*",
    "spec.kubeadmConfigSpec.initConfiguration.patches",
    "spec.kubeadmConfigSpec.initConfiguration.patches.directory",
    "spec.kubeadmConfigSpec.initConfiguration.skipPhases",
    "spec.kubeadmConfigSpec.initConfiguration.bootstrapTokens",
    "spec.kubeadmConfigSpec.initConfiguration.localAPIEndpoint",
    "spec.kubeadmConfigSpec.initConfiguration.localAPIEndpoint.*",
    "spec.kubeadmConfigSpec.joinConfiguration.nodeRegistration",
    "spec.kubeadmConfigSpec.joinConfiguration.nodeRegistration.*",
    "spec.kubeadmConfigSpec.joinConfiguration.patches",
    "spec.kubeadmConfigSpec.joinConfiguration.patches.directory",
    "spec.kubeadmConfigSpec.joinConfiguration.skipPhases",
    "spec.kubeadmConfigSpec.joinConfiguration.caCertPath",
    "spec.kubeadmConfigSpec.joinConfiguration.controlPlane",
    "spec.kubeadmConfigSpec.joinConfiguration.controlPlane.*",
    "spec.kubeadmConfigSpec.joinConfiguration.discovery",
    "spec.kubeadmConfigSpec.joinConfiguration.discovery.*",
    "spec.kubeadmConfigSpec.bootCommands",
    "spec.kubeadmConfigSpec.preKubeadmCommands",
    "spec.kubeadmConfigSpec.postKubeadmCommands",
    "spec.kubeadmConfigSpec.files",
    "spec.kubeadmConfigSpec.verbosity",
    "spec.kubeadmConfigSpec.users",
    "spec.kubeadmConfigSpec.ntp",
    "spec.kubeadmConfigSpec.ntp.*",
    "spec.kubeadmConfigSpec.ignition",
    "spec.kubeadmConfigSpec.ignition.*",
    "spec.kubeadmConfigSpec.diskSetup",
    "spec.kubeadmConfigSpec.diskSetup.*",
    "spec.kubeadmConfigSpec.format",
    "spec.kubeadmConfigSpec.mounts",
    "spec.machineTemplate.metadata",
    "spec.machineTemplate.metadata.*",
    "spec.machineTemplate.infrastructureRef.apiVersion",
    "spec.machineTemplate.infrastructureRef.name",
    "spec.machineTemplate.infrastructureRef.kind",
    "spec.machineTemplate.nodeDrainTimeout",
    "spec.machineTemplate.nodeVolumeDetachTimeout",
    "spec.machineTemplate.nodeDeletionTimeout",
    "spec.machineTemplate.readinessGates",
    "spec.replicas",
    "spec.version",
    "spec.remediationStrategy",
    "spec.remediationStrategy.*",
    "spec.machineNamingStrategy",
    "spec.machineNamingStrategy.*",
    "spec.rolloutAfter",
    "spec.rolloutBefore",
    "spec.rolloutBefore.*",
    "spec.rolloutStrategy",
    "spec.rolloutStrategy.*",
))


def changed_paths(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Leaf paths of the JSON merge patch from ``old`` to ``new``, as upstream's KCP webhook
    walks it: objects are descended into (an added object by its keys), lists are atomic."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, ...]] = []
        for key in sorted(set(old) | set(new)):
            if key not in new:
                out.append((*path, key))
            elif key not in old:
                out += changed_paths({}, new[key], (*path, key)) \
                    if isinstance(new[key], dict) else [(*path, key)]
            elif old[key] != new[key]:
                out += changed_paths(old[key], new[key], (*path, key))
        return out
    return [path] if old != new else []


def _path_allowed(path: tuple[str, ...]) -> bool:
    """Upstream's ``pathsMatch`` over :data:`KCP_MUTABLE_PATHS`."""
    for allowed in KCP_MUTABLE_PATHS:
        for i, part in enumerate(path):
            if i >= len(allowed) or (allowed[i] != "*" and part != allowed[i]):
                break
            if allowed[i] == "*":
                return True
        else:
            if len(path) == len(allowed):
                return True
    return False


def _prepare_kcp(o: Obj) -> None:
    _v_prefix(o.setdefault("spec", {}), "version")


def _rollout_causes(strategy: Obj | None, replicas: Any, prefix: str) -> list[Cause]:
    if not strategy:
        return []
    causes: list[Cause] = []
    if strategy.get("type") != "RollingUpdate":
        causes.append(required(f"{prefix}.type", "only RollingUpdateStrategyType is supported"))
    surge = (strategy.get("rollingUpdate") or {}).get("maxSurge", 1)
    if surge in (0, "0") and isinstance(replicas, int) and replicas < 3:
        causes.append(required(f"{prefix}.rollingUpdate", "when KubeadmControlPlane is "
                               "configured to scale-in, replica count needs to be at least 3"))
    if surge not in (0, 1, "0", "1"):
        causes.append(required(f"{prefix}.rollingUpdate.maxSurge", "value must be 1 or 0"))
    return causes


def _validate_kcp(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = _spec(new)
    ns = new["metadata"].get("namespace", "")
    causes: list[Cause] = []
    replicas = spec.get("replicas")
    config = spec.get("kubeadmConfigSpec") or {}
    cluster_config = config.get("clusterConfiguration")
    if replicas is None:
        causes.append(required("spec.replicas", "is required"))
    elif replicas <= 0:
        causes.append(forbidden("spec.replicas", "cannot be less than or equal to 0"))
    external = _dig(cluster_config, "etcd", "external") is not None
    if not external and isinstance(replicas, int) and replicas % 2 == 0:
        causes.append(forbidden("spec.replicas",
                                "cannot be an even number when etcd is stacked"))
    ref = _dig(spec, "machineTemplate", "infrastructureRef") or {}
    for key in ("apiVersion", "kind", "name"):
        if not ref.get(key):
            causes.append(invalid(f"spec.machineTemplate.infrastructure.{key}",
                                  ref.get(key, ""), "cannot be empty"))
    causes += _ref_namespace_causes(ref, "spec.machineTemplate.infrastructure", ns)
    causes += _version_causes(spec.get("version", ""), "spec.version")
    before = _dig(spec, "rolloutBefore", "certificatesExpiryDays")
    if isinstance(before, int) and before < 7:
        causes.append(invalid("spec.rolloutBefore.certificatesExpiryDays", before,
                              "must be greater than or equal to 7"))
    causes += _rollout_causes(spec.get("rolloutStrategy"), replicas, "spec.rolloutStrategy")
    causes += _naming_causes(spec.get("machineNamingStrategy"),
                             "spec.machineNamingStrategy.template")
    prefix = "spec.kubeadmConfigSpec"
    old_cluster_config = _dig(old, "spec", "kubeadmConfigSpec", "clusterConfiguration") \
        if old is not None else None
    causes += _cluster_configuration_causes(cluster_config, old_cluster_config,
                                            f"{prefix}.clusterConfiguration")
    causes += kubeadm_config_spec_causes(config, prefix)
    if old is not None:
        for path in changed_paths(_spec(old), spec, ("spec",)):
            if not _path_allowed(path):
                causes.append(forbidden(".".join(path), "cannot be modified"))
        causes += _kcp_version_change(_spec(old).get("version", ""), spec.get("version", ""))
    return causes


def _naming_causes(strategy: Obj | None, path: str) -> list[Cause]:
    template = (strategy or {}).get("template")
    if template and "{{ .random }}" not in template:
        return [invalid(path, template, "invalid template, {{ .random }} is missing")]
    return []


def _kcp_version_change(before: str, after: str) -> list[Cause]:
    old_v, new_v = parse_semver(before), parse_semver(after)
    if old_v is None or new_v is None or old_v == new_v:
        return []
    if new_v >= (old_v[0], old_v[1] + 2, 0):
        return [forbidden("spec.version",
                          f"cannot update Kubernetes version from {before} to {after}")]
    return []


def _validate_kcp_template(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = _dig(new, "spec", "template", "spec") or {}
    prefix = "spec.template.spec"
    causes = _rollout_causes(spec.get("rolloutStrategy"), None, f"{prefix}.rolloutStrategy")
    causes += _naming_causes(spec.get("machineNamingStrategy"),
                             f"{prefix}.machineNamingStrategy.template")
    config = spec.get("kubeadmConfigSpec") or {}
    causes += _cluster_configuration_causes(config.get("clusterConfiguration"), None,
                                            f"{prefix}.kubeadmConfigSpec.clusterConfiguration")
    causes += kubeadm_config_spec_causes(config, f"{prefix}.kubeadmConfigSpec")
    if old is not None and _dig(old, "spec", "template", "spec") != spec:
        causes.append(forbidden(prefix, "KubeadmControlPlaneTemplate spec.template.spec field "
                                        "is immutable. Please create new resource instead."))
    return causes


# -- ClusterResourceSet ----------------------------------------------------------------------


def _validate_crs(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    spec = _spec(new)
    causes: list[Cause] = []
    raw = spec.get("clusterSelector") or {}
    try:
        selector_from_label_selector_object(raw)
    except SelectorError as exc:
        causes.append(invalid("spec.clusterSelector", raw, str(exc)))
    if old is not None and _spec(old).get("strategy") != spec.get("strategy"):
        causes.append(invalid("spec.strategy", spec.get("strategy"), "field is immutable"))
    return causes


# -- the kinds ---------------------------------------------------------------------------------


def _kind(group: str, kind: str, plural: str, spec: Schema, status: Schema | None,
          columns: tuple[PrinterColumn, ...] = (AGE,), short: tuple[str, ...] = (),
          **extra: Any) -> Kind:
    return Kind(group=group, kind=kind, plural=plural, singular=kind.lower(), namespaced=True,
                short_names=short, categories=CATEGORIES, has_status=status is not None,
                versions=(Version(VERSION, top_level(spec=spec, status=status), storage=True,
                                  printer_columns=columns),), **extra)


def _col(name: str, path: str, type_: str = "string", priority: int = 0,
         description: str = "") -> PrinterColumn:
    return PrinterColumn(name, type=type_, json_path=path, priority=priority,
                         description=description)


def kinds(lab_ranges: Sequence[str] = ()) -> tuple[Kind, ...]:
    """Every Cluster API kind; a Cluster's pod and service ranges may not overlap
    ``lab_ranges`` ("CIDR" or "CIDR=label")."""
    cluster = _kind(
        GROUP, "Cluster", "clusters", CLUSTER_SPEC, CLUSTER_STATUS, short=("cl",),
        columns=(_col("ClusterClass", ".spec.topology.class"), _col("Phase", ".status.phase"),
                 AGE, _col("Version", ".spec.topology.version")),
        validate=_cluster_validator(lab_ranges), prepare_create=_prepare_cluster)
    machine = _kind(
        GROUP, "Machine", "machines", MACHINE_SPEC, MACHINE_STATUS, short=("ma",),
        columns=(CLUSTER_FROM_SPEC, _col("NodeName", ".status.nodeRef.name"),
                 _col("ProviderID", ".spec.providerID"), _col("Phase", ".status.phase"), AGE,
                 _col("Version", ".spec.version")),
        validate=_validate_machine, prepare_create=_prepare_machine)
    machine_set = _kind(
        GROUP, "MachineSet", "machinesets", MACHINE_SET_SPEC, MACHINE_SET_STATUS, short=("ms",),
        columns=(CLUSTER_FROM_SPEC, _col("Desired", ".spec.replicas", "integer", priority=10),
                 _col("Replicas", ".status.replicas", "integer"),
                 _col("Ready", ".status.readyReplicas", "integer"),
                 _col("Available", ".status.availableReplicas", "integer"), AGE,
                 _col("Version", ".spec.template.spec.version")),
        validate=_validate_machine_set, prepare_create=_prepare_machine_set)
    machine_deployment = _kind(
        GROUP, "MachineDeployment", "machinedeployments", MACHINE_DEPLOYMENT_SPEC,
        MACHINE_DEPLOYMENT_STATUS, short=("md",),
        columns=(CLUSTER_FROM_SPEC, _col("Desired", ".spec.replicas", "integer", priority=10),
                 _col("Replicas", ".status.replicas", "integer"),
                 _col("Ready", ".status.readyReplicas", "integer"),
                 _col("Updated", ".status.updatedReplicas", "integer"),
                 _col("Unavailable", ".status.unavailableReplicas", "integer"),
                 _col("Phase", ".status.phase"), AGE,
                 _col("Version", ".spec.template.spec.version")),
        validate=_validate_machine_deployment, prepare_create=_prepare_machine_deployment)
    mhc = _kind(
        GROUP, "MachineHealthCheck", "machinehealthchecks", MHC_SPEC, MHC_STATUS,
        short=("mhc", "mhcs"),
        columns=(CLUSTER_FROM_SPEC, _col("ExpectedMachines", ".status.expectedMachines",
                                         "integer"),
                 _col("MaxUnhealthy", ".spec.maxUnhealthy"),
                 _col("CurrentHealthy", ".status.currentHealthy", "integer"), AGE),
        validate=_validate_mhc, prepare_create=_prepare_mhc)
    cluster_class = _kind(GROUP, "ClusterClass", "clusterclasses", CLUSTER_CLASS_SPEC,
                          CLUSTER_CLASS_STATUS, short=("cc",))
    kubeadm_config = _kind(
        BOOTSTRAP_GROUP, "KubeadmConfig", "kubeadmconfigs", KUBEADM_CONFIG_SPEC,
        KUBEADM_CONFIG_STATUS, columns=(CLUSTER_FROM_LABEL, AGE),
        validate=_validate_kubeadm_config)
    kubeadm_config_template = _kind(
        BOOTSTRAP_GROUP, "KubeadmConfigTemplate", "kubeadmconfigtemplates",
        obj({"template": obj({"metadata": CAPI_META, "spec": KUBEADM_CONFIG_SPEC})},
            required=["template"]), None, validate=_validate_kubeadm_config_template)
    kcp = _kind(
        CONTROLPLANE_GROUP, "KubeadmControlPlane", "kubeadmcontrolplanes", KCP_SPEC, KCP_STATUS,
        short=("kcp",),
        columns=(CLUSTER_FROM_LABEL,
                 _col("Initialized", ".status.initialized", "boolean"),
                 _col("API Server Available", ".status.ready", "boolean"),
                 _col("Desired", ".spec.replicas", "integer", priority=10),
                 _col("Replicas", ".status.replicas", "integer"),
                 _col("Ready", ".status.readyReplicas", "integer"),
                 _col("Updated", ".status.updatedReplicas", "integer"),
                 _col("Unavailable", ".status.unavailableReplicas", "integer"), AGE,
                 _col("Version", ".spec.version")),
        validate=_validate_kcp, prepare_create=_prepare_kcp)
    kcp_template = _kind(
        CONTROLPLANE_GROUP, "KubeadmControlPlaneTemplate", "kubeadmcontrolplanetemplates",
        KCP_TEMPLATE_SPEC, None, validate=_validate_kcp_template)
    crs = _kind(ADDONS_GROUP, "ClusterResourceSet", "clusterresourcesets", CRS_SPEC,
                obj({"observedGeneration": integer(), "conditions": CONDITIONS,
                     "v1beta2": V1BETA2_STATUS}), validate=_validate_crs)
    crs_binding = _kind(ADDONS_GROUP, "ClusterResourceSetBinding", "clusterresourcesetbindings",
                        CRS_BINDING_SPEC, None)
    return (cluster, machine, machine_set, machine_deployment, mhc, cluster_class,
            kubeadm_config, kubeadm_config_template, kcp, kcp_template, crs, crs_binding)
