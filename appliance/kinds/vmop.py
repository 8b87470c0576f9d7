"""VM Service kinds (vm-operator's ``vmoperator.vmware.com``).

Served versions: v1alpha1 (deprecated), v1alpha2, v1alpha3, v1alpha4 and
v1alpha5, all stored as v1alpha5. v1alpha2 onwards share a shape for the
fields this appliance implements; v1alpha1 differs (lower-case power states,
``vmMetadata`` instead of ``bootstrap``, ``networkInterfaces``,
``status.vmIp``) and is converted both ways. Fields v1alpha1 cannot express
survive a round trip in an annotation, as upstream's conversion does.

What the VM Service consumes from a namespace's quota: the class's CPUs and
memory and the boot disk's size, plus the object count.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from decimal import Decimal
from typing import Any

import yaml

from appliance.errors import Cause
from appliance.kinds.services import service_causes
from appliance.kinds.registry import AdmissionContext, Kind, Lookup, Obj, PrinterColumn, Version
from appliance.kinds.schema import (CONDITION, array, boolean, integer, obj, preserve,
                                    quantity, string, string_map, top_level)
from appliance.util.names import dns1123_subdomain
from appliance.util.quantity import QuantityError, parse_quantity

GROUP = "vmoperator.vmware.com"
STORAGE = "v1alpha5"
NEW_VERSIONS = ("v1alpha2", "v1alpha3", "v1alpha4", "v1alpha5")
VM_FINALIZER = "vmoperator.vmware.com/virtualmachine"
#: Administrators may give a class a boot-disk size; VMs of that class get it.
BOOT_DISK_ANNOTATION = "pacific.lab/boot-disk-size"
V1A1_ANNOTATION = "vmoperator.vmware.com/v1alpha1-fields"
DEFAULT_BOOT_DISK = "10Gi"
#: A VM's condition carrying its guest's own report of its bootstrap (kubeadm for
#: cluster nodes), read by the host agent from the VM's serial console.
GUEST_BOOTSTRAP = "GuestBootstrap"

POWER_STATES = ("PoweredOn", "PoweredOff", "Suspended")
V1A1_POWER = {"PoweredOn": "poweredOn", "PoweredOff": "poweredOff", "Suspended": "suspended"}
FROM_V1A1_POWER = {v: k for k, v in V1A1_POWER.items()}

AGE = PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp")
REF = obj({"apiVersion": string(), "kind": string(), "name": string()})
SECRET_KEY = obj({"name": string(), "key": string()}, required=["name"])

# -- VirtualMachine ---------------------------------------------------------------------

CLOUD_CONFIG = obj({
    "users": array(preserve(type="object")),
    "runcmd": preserve(),
    "writeFiles": array(preserve(type="object")),
    "defaultUserEnabled": boolean(),
    "ssh_pwauth": boolean(),
}, **{"x-kubernetes-preserve-unknown-fields": True})

VM_SPEC = obj({
    "className": string(), "imageName": string(),
    "image": obj({"kind": string(), "name": string()}),
    "storageClass": string(),
    "powerState": string(enum=list(POWER_STATES)),
    "powerOffMode": string(enum=["Hard", "Soft", "TrySoft"]),
    "suspendMode": string(enum=["Hard", "Soft", "TrySoft"]),
    "nextRestartTime": string(),
    "restartMode": string(enum=["Hard", "Soft", "TrySoft"]),
    "minHardwareVersion": integer(),
    "bootstrap": obj({
        "cloudInit": obj({"cloudConfig": CLOUD_CONFIG, "rawCloudConfig": SECRET_KEY,
                          "sshAuthorizedKeys": array(string()),
                          "instanceID": string(), "waitOnNetwork4": boolean()}),
        "linuxPrep": preserve(type="object"), "sysprep": preserve(type="object"),
        "vAppConfig": preserve(type="object"),
    }),
    "network": obj({
        "hostName": string(), "domainName": string(), "disabled": boolean(),
        "nameservers": array(string()), "searchDomains": array(string()),
        "interfaces": array(obj({
            "name": string(), "network": REF, "addresses": array(string()),
            "dhcp4": boolean(), "dhcp6": boolean(), "gateway4": string(), "gateway6": string(),
            "mtu": integer(), "nameservers": array(string()), "routes": array(
                preserve(type="object")), "searchDomains": array(string()),
        }), merge_key="name"),
    }),
    "advanced": obj({"bootDiskCapacity": quantity(), "changeBlockTracking": boolean(),
                     "defaultVolumeProvisioningMode": string()}),
    "volumes": array(preserve(type="object")),
    "readinessProbe": preserve(type="object"),
    "reserved": preserve(type="object"),
    "instanceUUID": string(), "biosUUID": string(), "guestID": string(),
})

VM_STATUS = obj({
    "powerState": string(), "host": string(), "uniqueID": string(), "biosUUID": string(),
    "instanceUUID": string(), "hardwareVersion": integer(), "class": REF,
    "network": obj({"primaryIP4": string(), "primaryIP6": string(),
                    "interfaces": array(preserve(type="object"))}),
    "conditions": array(CONDITION, merge_key="type"),
    "zone": string(), "lastRestartTime": string(), "changeBlockTracking": boolean(),
    "volumes": array(preserve(type="object")),
})

V1A1_SPEC = obj({
    "className": string(), "imageName": string(), "storageClass": string(),
    "powerState": string(enum=list(V1A1_POWER.values())),
    "powerOffMode": string(enum=["hard", "soft", "trySoft"]),
    "minHardwareVersion": integer(),
    "vmMetadata": obj({"configMapName": string(), "secretName": string(),
                       "transport": string(enum=["ExtraConfig", "OvfEnv", "vAppConfig",
                                                 "CloudInit", "Sysprep"])}),
    "networkInterfaces": array(obj({"networkName": string(), "networkType": string(),
                                    "ethernetCardType": string(), "providerRef": preserve(
                                        type="object")})),
    "advancedOptions": preserve(type="object"),
    "readinessProbe": preserve(type="object"),
    "volumes": array(preserve(type="object")),
})
V1A1_STATUS = obj({
    "powerState": string(), "host": string(), "uniqueID": string(), "biosUUID": string(),
    "instanceUUID": string(), "vmIp": string(), "phase": string(),
    "conditions": array(CONDITION, merge_key="type"),
    "hardwareVersion": integer(), "zone": string(),
    "networkInterfaces": array(preserve(type="object")),
    "volumes": array(preserve(type="object")),
})


def _vm_columns(ip_path: str, ip_name: str) -> tuple[PrinterColumn, ...]:
    return (PrinterColumn("Power-State", json_path=".status.powerState"),
            PrinterColumn("Class", json_path=".spec.className", priority=1),
            PrinterColumn("Image", json_path=".spec.imageName", priority=1),
            PrinterColumn(ip_name, json_path=ip_path, priority=1), AGE)


def vm_v1a1_to_storage(o: Obj) -> Obj:
    out = copy.deepcopy(o)
    spec = out.setdefault("spec", {})
    kept = json.loads(out.get("metadata", {}).get("annotations", {}).pop(V1A1_ANNOTATION, "{}")
                      or "{}")
    if "powerState" in spec:
        spec["powerState"] = FROM_V1A1_POWER.get(spec["powerState"], spec["powerState"])
    if "powerOffMode" in spec:
        spec["powerOffMode"] = spec["powerOffMode"][:1].upper() + spec["powerOffMode"][1:]
    meta = spec.pop("vmMetadata", None)
    if meta and meta.get("transport", "CloudInit") == "CloudInit":
        source = meta.get("secretName") or meta.get("configMapName")
        if source:
            spec["bootstrap"] = {"cloudInit": {"rawCloudConfig": {"name": source,
                                                                  "key": "user-data"}}}
    nics = spec.pop("networkInterfaces", None)
    if nics:
        spec["network"] = {"interfaces": [
            {"name": f"eth{i}", **({"network": {"name": n["networkName"]}}
                                   if n.get("networkName") else {})}
            for i, n in enumerate(nics)]}
    spec.pop("advancedOptions", None)
    for key, value in kept.items():  # fields only the newer versions have
        spec.setdefault(key, value)
    status = out.get("status")
    if status:
        if "vmIp" in status:
            status.setdefault("network", {})["primaryIP4"] = status.pop("vmIp")
        if "powerState" in status:
            status["powerState"] = FROM_V1A1_POWER.get(status["powerState"],
                                                       status["powerState"])
        status.pop("phase", None)
    return out


def vm_storage_to_v1a1(o: Obj) -> Obj:
    out = copy.deepcopy(o)
    spec = out.setdefault("spec", {})
    if "powerState" in spec:
        spec["powerState"] = V1A1_POWER.get(spec["powerState"], spec["powerState"])
    if "powerOffMode" in spec:
        spec["powerOffMode"] = spec["powerOffMode"][:1].lower() + spec["powerOffMode"][1:]
    boot = spec.pop("bootstrap", None) or {}
    raw = (boot.get("cloudInit") or {}).get("rawCloudConfig")
    kept: dict[str, Any] = {}
    if raw:
        spec["vmMetadata"] = {"secretName": raw["name"], "transport": "CloudInit"}
    elif boot:
        kept["bootstrap"] = boot
    net = spec.pop("network", None) or {}
    if net.get("interfaces"):
        spec["networkInterfaces"] = [
            {"networkName": (i.get("network") or {}).get("name", ""), "networkType": "nsx-t"}
            for i in net["interfaces"]]
    leftover = {k: v for k, v in net.items() if k != "interfaces"}
    if leftover:
        kept["network"] = leftover
    for key in ("advanced", "image", "suspendMode", "restartMode", "nextRestartTime"):
        if key in spec:
            kept[key] = spec.pop(key)
    if kept:
        out.setdefault("metadata", {}).setdefault("annotations", {})[V1A1_ANNOTATION] = \
            json.dumps(kept, sort_keys=True)
    status = out.get("status")
    if status:
        ip = (status.pop("network", None) or {}).get("primaryIP4")
        if ip:
            status["vmIp"] = ip
        if "powerState" in status:
            status["powerState"] = V1A1_POWER.get(status["powerState"], status["powerState"])
        status.pop("class", None)
    return out


def boot_disk_bytes(vm: Obj, cls: Obj | None, image: Obj | None) -> Decimal:
    """Boot disk size: the VM's bootDiskCapacity, else its class's, else the image's."""
    wanted = ((vm.get("spec") or {}).get("advanced") or {}).get("bootDiskCapacity")
    if wanted is None and cls is not None:
        wanted = (cls["metadata"].get("annotations") or {}).get(BOOT_DISK_ANNOTATION)
    if wanted is None and image is not None:
        disks = (image.get("status") or {}).get("disks") or []
        if disks:
            wanted = disks[0].get("capacity")
    try:
        return parse_quantity(wanted if wanted is not None else DEFAULT_BOOT_DISK)
    except QuantityError:
        return parse_quantity(DEFAULT_BOOT_DISK)


def find_image(lookup: Lookup, namespace: str, name: str) -> Obj | None:
    """As vm-operator resolves ``imageName``: a namespace image, then a cluster image."""
    if not name:
        return None
    return lookup(GROUP, "virtualmachineimages", namespace, name) or \
        lookup(GROUP, "clustervirtualmachineimages", "", name)


def _vm_consumes(vm: Obj, lookup: Lookup) -> dict[str, Decimal]:
    spec = vm.get("spec") or {}
    ns = vm["metadata"].get("namespace", "")
    cls = lookup(GROUP, "virtualmachineclasses", ns, spec.get("className", ""))
    hw = ((cls or {}).get("spec") or {}).get("hardware") or {}
    used = {"requests.storage": boot_disk_bytes(vm, cls, find_image(lookup, ns,
                                                                     spec.get("imageName", "")))}
    if hw:
        used["requests.cpu"] = Decimal(int(hw.get("cpus") or 0))
        used["requests.memory"] = parse_quantity(hw.get("memory") or "0")
    return used


#: cloud-init renders user-data that starts with this line as a jinja template first
#: (CABPK's output does, for ``{{ ds.meta_data.hostname }}`` and the like).
JINJA_HEADER = "## template: jinja"


def split_jinja_header(text: str) -> tuple[str, str]:
    """(the jinja header line with its newline, or "", the rest of the user-data)."""
    first, sep, rest = text.partition("\n")
    if first.strip() == JINJA_HEADER:
        return first + sep, rest
    return "", text


def cloud_config_problem(text: str) -> str | None:
    """Why ``text`` is not usable cloud-init user-data, or None."""
    _, text = split_jinja_header(text)
    if text.startswith("#!") or text.startswith("Content-Type: multipart"):
        return None
    if not text.startswith("#cloud-config"):
        return "user-data must begin with '#cloud-config' (or be a script starting with '#!')"
    from appliance.api.bodies import parse_yaml
    from appliance.errors import ApiError

    try:
        parsed = parse_yaml(text)
    except ApiError as err:
        return "invalid cloud-config YAML: " + err.message.replace(
            "error converting YAML to JSON: ", "")
    if parsed is not None and not isinstance(parsed, dict):
        return "cloud-config must be a YAML mapping"
    return None


def _validate_vm(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    import base64

    causes: list[Cause] = []
    spec = new.get("spec") or {}
    ns = new["metadata"].get("namespace", "")
    cls_name = spec.get("className") or ""
    if not cls_name:
        causes.append(Cause("spec.className", "Required value", "FieldValueRequired"))
    elif ctx.lookup(GROUP, "virtualmachineclasses", ns, cls_name) is None:
        catalog = ctx.lookup(GROUP, "virtualmachineclasses", CATALOG_NAMESPACE, cls_name)
        why = (f'VirtualMachineClass "{cls_name}" is not assigned to namespace "{ns}"'
               if catalog is not None else f'VirtualMachineClass "{cls_name}" not found')
        causes.append(Cause("spec.className", f"Invalid value: {cls_name!r}: {why}"))
    image = spec.get("imageName") or (spec.get("image") or {}).get("name") or ""
    if not image:
        causes.append(Cause("spec.imageName", "Required value", "FieldValueRequired"))
    elif find_image(ctx.lookup, ns, image) is None:
        causes.append(Cause("spec.imageName", f"Invalid value: {image!r}: VirtualMachineImage "
                                              f'"{image}" not found in namespace "{ns}"'))
    if old is None and spec.get("powerState") == "Suspended":
        causes.append(Cause("spec.powerState", "Invalid value: \"Suspended\": a new VM must be "
                                               "PoweredOn or PoweredOff"))
    cloud = (spec.get("bootstrap") or {}).get("cloudInit") or {}
    raw = cloud.get("rawCloudConfig")
    if raw and cloud.get("cloudConfig"):
        causes.append(Cause("spec.bootstrap.cloudInit", "Invalid value: cloudConfig and "
                                                        "rawCloudConfig are mutually exclusive"))
    if raw:
        key = raw.get("key") or "user-data"
        secret = ctx.lookup("", "secrets", ns, raw.get("name", ""))
        cm = ctx.lookup("", "configmaps", ns, raw.get("name", "")) if secret is None else None
        text = None
        if secret is not None and key in (secret.get("data") or {}):
            text = base64.b64decode(secret["data"][key]).decode(errors="replace")
        elif cm is not None and key in (cm.get("data") or {}):
            text = cm["data"][key]
        if text is not None:
            problem = cloud_config_problem(text)
            if problem:
                causes.append(Cause("spec.bootstrap.cloudInit.rawCloudConfig",
                                    f'Invalid value: secret "{raw.get("name")}" key "{key}": '
                                    f"{problem}"))
    for i, iface in enumerate((spec.get("network") or {}).get("interfaces") or []):
        for j, address in enumerate(iface.get("addresses") or []):
            where = f"spec.network.interfaces[{i}].addresses[{j}]"
            try:
                ipaddress.ip_interface(str(address))
            except ValueError:
                address = None
            if address is None or "/" not in str(address):
                causes.append(Cause(where, "Invalid value: want an ADDRESS/PREFIX, "
                                           "like 192.168.1.10/24"))
    host = (spec.get("network") or {}).get("hostName")
    if host and dns1123_subdomain(host):
        causes.append(Cause("spec.network.hostName", f"Invalid value: {host!r}: must be a DNS "
                                                     "name"))
    return causes


VIRTUALMACHINE = Kind(
    group=GROUP, kind="VirtualMachine", plural="virtualmachines", singular="virtualmachine",
    namespaced=True, short_names=("vm",), categories=("all",), consumes=_vm_consumes,
    validate=_validate_vm, immutable_fields=("spec.className", "spec.imageName"),
    default_finalizers=(VM_FINALIZER,), extra_subresources=("console",),
    versions=(
        Version("v1alpha1", top_level(spec=V1A1_SPEC, status=V1A1_STATUS), deprecated=True,
                deprecation_warning="vmoperator.vmware.com/v1alpha1 VirtualMachine is "
                                    "deprecated; use vmoperator.vmware.com/v1alpha5",
                printer_columns=_vm_columns(".status.vmIp", "Primary-IP"),
                to_storage=vm_v1a1_to_storage, from_storage=vm_storage_to_v1a1),
        *(Version(v, top_level(spec=VM_SPEC, status=VM_STATUS), storage=v == STORAGE,
                  printer_columns=_vm_columns(".status.network.primaryIP4", "Primary-IP4"))
          for v in NEW_VERSIONS),
    ),
)

# -- VirtualMachineClass ------------------------------------------------------------------

#: Where the administrator's catalog of classes lives (vm-operator's own namespace).
CATALOG_NAMESPACE = "vmware-system-vmop"

CLASS_SPEC = obj({
    "controllerName": string(), "description": string(), "displayName": string(),
    "hardware": obj({"cpus": integer(minimum=1), "memory": quantity(),
                     "devices": preserve(type="object"), "instanceStorage": preserve(
                         type="object")}),
    "policies": obj({"resources": obj({
        "requests": obj({"cpu": quantity(), "memory": quantity()}),
        "limits": obj({"cpu": quantity(), "memory": quantity()})})}),
    "configSpec": preserve(type="object"), "reservedProfileID": string(),
    "reservedSlots": integer(),
})


def _validate_class(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    hw = (new.get("spec") or {}).get("hardware") or {}
    causes = []
    if not hw.get("cpus"):
        causes.append(Cause("spec.hardware.cpus", "Required value", "FieldValueRequired"))
    try:
        if parse_quantity(hw.get("memory") or "0") <= 0:
            causes.append(Cause("spec.hardware.memory", "Invalid value: must be positive"))
    except QuantityError as exc:
        causes.append(Cause("spec.hardware.memory", f"Invalid value: {exc}"))
    disk = (new["metadata"].get("annotations") or {}).get(BOOT_DISK_ANNOTATION)
    if disk is not None:
        try:
            parse_quantity(disk)
        except QuantityError as exc:
            causes.append(Cause(f"metadata.annotations[{BOOT_DISK_ANNOTATION}]",
                                f"Invalid value: {exc}"))
    return causes


CLASS_COLUMNS = (PrinterColumn("CPU", type="integer", json_path=".spec.hardware.cpus"),
                 PrinterColumn("Memory", json_path=".spec.hardware.memory"), AGE,
                 PrinterColumn("Boot-Disk", priority=1,
                               json_path=".metadata.annotations.pacific\\.lab/boot-disk-size"))

VIRTUALMACHINECLASS = Kind(
    group=GROUP, kind="VirtualMachineClass", plural="virtualmachineclasses",
    singular="virtualmachineclass", namespaced=True, short_names=("vmclass",),
    validate=_validate_class,
    versions=tuple(Version(v, top_level(spec=CLASS_SPEC, status=obj({
        "ready": boolean(), "capabilities": array(string()),
        "conditions": array(CONDITION, merge_key="type")})), storage=v == STORAGE,
        deprecated=v == "v1alpha1", printer_columns=CLASS_COLUMNS)
        for v in ("v1alpha1", *NEW_VERSIONS)),
)

# -- VirtualMachineImage / ClusterVirtualMachineImage -------------------------------------

IMAGE_SPEC = obj({"providerRef": REF, "type": string(), "imageID": string(),
                  "productInfo": preserve(type="object"), "osInfo": preserve(type="object")})
IMAGE_STATUS = obj({
    "name": string(), "capabilities": array(string()), "firmware": string(),
    "hardwareVersion": integer(), "providerContentVersion": string(), "providerItemID": string(),
    "type": string(),
    "osInfo": obj({"id": string(), "type": string(), "version": string()}),
    "productInfo": obj({"product": string(), "vendor": string(), "version": string(),
                        "fullVersion": string()}),
    "disks": array(obj({"capacity": quantity(), "size": quantity()})),
    "conditions": array(CONDITION, merge_key="type"),
    "vmwareSystemProperties": array(preserve(type="object")),
})
IMAGE_COLUMNS = (
    PrinterColumn("Display-Name", json_path=".status.name"),
    PrinterColumn("Content-Version", json_path=".status.providerContentVersion"),
    PrinterColumn("OS", json_path=".status.osInfo.type", priority=1),
    PrinterColumn("Disk-Capacity", json_path=".status.disks[0].capacity", priority=1),
    AGE,
)


def _image_kind(kind: str, plural: str, namespaced: bool, short: tuple[str, ...]) -> Kind:
    return Kind(group=GROUP, kind=kind, plural=plural, singular=kind.lower(),
                namespaced=namespaced, short_names=short,
                versions=tuple(Version(v, top_level(spec=IMAGE_SPEC, status=IMAGE_STATUS),
                                       storage=v == STORAGE, deprecated=v == "v1alpha1",
                                       printer_columns=IMAGE_COLUMNS)
                               for v in ("v1alpha1", *NEW_VERSIONS)))


VIRTUALMACHINEIMAGE = _image_kind("VirtualMachineImage", "virtualmachineimages", True,
                                  ("vmi", "vmimage"))
CLUSTERVIRTUALMACHINEIMAGE = _image_kind("ClusterVirtualMachineImage",
                                         "clustervirtualmachineimages", False,
                                         ("cvmi", "cvmimage"))

# -- VirtualMachineService ----------------------------------------------------------------

SERVICE_TYPES = ("LoadBalancer", "ClusterIP", "ExternalName")


def _validate_service(new: Obj, old: Obj | None, ctx: AdmissionContext) -> list[Cause]:
    # spec.type is required by the schema, which is checked first.
    return service_causes(new.get("spec") or {}, SERVICE_TYPES, ("TCP", "UDP"), "")


VIRTUALMACHINESERVICE = Kind(
    group=GROUP, kind="VirtualMachineService", plural="virtualmachineservices",
    singular="virtualmachineservice", namespaced=True, short_names=("vmservice",),
    validate=_validate_service,
    versions=tuple(Version(v, top_level(spec=obj({
        "type": string(), "ports": array(obj({
            "name": string(), "protocol": string(default="TCP"), "port": integer(),
            "targetPort": integer()}, required=["port"]), merge_key="name"),
        "selector": string_map(), "loadBalancerIP": string(),
        "loadBalancerSourceRanges": array(string()), "clusterIP": string(),
        "externalName": string()}, required=["type"]),
        status=obj({"loadBalancer": obj({"ingress": array(obj({"ip": string(),
                                                               "hostname": string()}))}),
                    "conditions": array(CONDITION, merge_key="type")})),
        storage=v == STORAGE, deprecated=v == "v1alpha1", printer_columns=(
            PrinterColumn("Type", json_path=".spec.type"), AGE,
            PrinterColumn("Selector", json_path=".spec.selector", priority=1)))
        for v in ("v1alpha1", *NEW_VERSIONS)),
)

KINDS = (VIRTUALMACHINE, VIRTUALMACHINECLASS, VIRTUALMACHINEIMAGE, CLUSTERVIRTUALMACHINEIMAGE,
         VIRTUALMACHINESERVICE)


class _CloudConfigDumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings (PEM, scripts, kubeadm YAML) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_CloudConfigDumper.add_representer(str, _represent_str)


def dump_cloud_config(config: dict[str, Any]) -> str:
    """A cloud-config document's YAML (without the ``#cloud-config`` line): multi-line
    strings as literal blocks and no folded lines, so that user-data which is a jinja
    template (``{{ ds.meta_data.hostname }}``) is never cut inside a ``{{ }}``."""
    return yaml.dump(config, Dumper=_CloudConfigDumper, sort_keys=False,
                     default_flow_style=False, width=1 << 20)


def user_data_text(cloud_config: dict[str, Any]) -> str:
    """vm-operator's structured cloudConfig rendered as cloud-init user-data."""
    converted = copy.deepcopy(cloud_config)
    if "writeFiles" in converted:
        converted["write_files"] = converted.pop("writeFiles")
    for user in converted.get("users") or []:
        if isinstance(user, dict) and "sshAuthorizedKeys" in user:
            user["ssh_authorized_keys"] = user.pop("sshAuthorizedKeys")
    return "#cloud-config\n" + yaml.safe_dump(converted, default_flow_style=False)


