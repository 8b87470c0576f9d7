"""The control plane declared through the VM Service: what ``lab up --control-plane-vms N``
asks the supervisor to build.

Control-plane VMs are not a second way of making VMs. Each one is a vm-operator
``VirtualMachine`` in the supervisor's own namespace (``kube-system``, the only
namespace allowed the appliance network's reserved addresses), booting the
``pacific-appliance`` image with a static address from the plan
(``appliance.controlplane.config.plan_for``), and its cloud-config in a Secret
(``spec.bootstrap.cloudInit.rawCloudConfig``), as any user's VM would be. The
scheduler places it and the host's VM agent builds it, restarts it when it stops
and rebuilds it when it is lost, as it does for every VM; the class
``pacific-control-plane`` sizes it.

``control_plane_objects`` only renders the objects; applying them, waiting for the
floating IP to answer and moving the store are the caller's steps.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from appliance.controllers.scheduler import SYSTEM_NAMESPACE
from appliance.controlplane.config import PkiFiles, Plan, plan_for, shared_settings, user_data
from appliance.kinds.vmop import GROUP, STORAGE
from appliance.objects import ObjectService, Target
from appliance.pki import Pki, authenticates_clients, cert_covers, issue_server_cert
from appliance.settings import Settings
from appliance.util.files import write_atomic
from appliance.vmservice.library import APPLIANCE_IMAGE

CLASS_NAME = "pacific-control-plane"
#: Two vCPUs and 2 GiB: PostgreSQL, etcd, Patroni and the supervisor together stay
#: under 1 GiB resident when idle; the rest is page cache for the database.
CLASS_CPUS = 2
#: Without KVM every vCPU is a host thread emulating a CPU: three VMs of two vCPUs are
#: six busy threads on a host that may have two cores, and the supervisors starve.
#: One vCPU each emulates less in parallel and keeps the control plane answering.
CLASS_CPUS_TCG = 1
CLASS_MEMORY = "2Gi"
ROLE_LABEL = "pacific.lab/role"
ROLE = "control-plane"
SECRET_SUFFIX = "-cloud-init"

Obj = dict[str, Any]


def vm_class(cpus: int = CLASS_CPUS) -> Obj:
    return {"apiVersion": f"{GROUP}/{STORAGE}", "kind": "VirtualMachineClass",
            "metadata": {"name": CLASS_NAME, "namespace": SYSTEM_NAMESPACE,
                         "labels": {ROLE_LABEL: ROLE}},
            "spec": {"hardware": {"cpus": cpus, "memory": CLASS_MEMORY},
                     "description": "The supervisor's control-plane VMs"}}


def control_plane_objects(plan: Plan, pki: PkiFiles, cpus: int = CLASS_CPUS,
                          shared: dict[str, str] | None = None) -> list[Obj]:
    """The class, then for each member its cloud-init Secret and its VirtualMachine.
    ``shared``: the host's settings the VMs' supervisors share (``shared_settings``)."""
    objects = [vm_class(cpus)]
    for index, member in enumerate(plan.members):
        secret = member.name + SECRET_SUFFIX
        text = user_data(plan, index, pki, None, shared=shared)
        objects.append({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret, "namespace": SYSTEM_NAMESPACE,
                         "labels": {ROLE_LABEL: ROLE}},
            "data": {"user-data": base64.b64encode(text.encode()).decode()}})
        objects.append({
            "apiVersion": f"{GROUP}/{STORAGE}", "kind": "VirtualMachine",
            "metadata": {"name": member.name, "namespace": SYSTEM_NAMESPACE,
                         "labels": {ROLE_LABEL: ROLE}},
            "spec": {
                "className": CLASS_NAME, "imageName": APPLIANCE_IMAGE,
                "powerState": "PoweredOn",
                "network": {"hostName": member.name, "interfaces": [{
                    "name": plan.interface,
                    "addresses": [f"{member.address}/{plan.prefix_length}"]}]},
                "bootstrap": {"cloudInit": {"rawCloudConfig": {
                    "name": secret, "key": "user-data"}}},
            }})
    return objects


def server_certificate(pki: Pki, plan: Plan, directory: Path) -> tuple[str, str]:
    """The control-plane VMs' server certificate and key (PEM), issued once by the host's
    CA for the floating IP and every member, and kept in ``directory`` (0600) so a second
    ``declare`` renders the same Secrets."""
    cert_path, key_path = directory / "controlplane.crt", directory / "controlplane.key"
    names = [m.name for m in plan.members]
    addresses = [plan.vip, *(m.address for m in plan.members)]
    if cert_path.is_file() and key_path.is_file() and cert_covers(
            cert_path.read_bytes(), names, addresses) and authenticates_clients(
            cert_path.read_bytes()):
        return cert_path.read_text(), key_path.read_text()
    cert_pem, key_pem = issue_server_cert(pki, names, addresses)
    write_atomic(key_path, key_pem.encode(), 0o600)
    write_atomic(cert_path, cert_pem.encode(), 0o644)
    return cert_pem, key_pem


def declare(service: ObjectService, settings: Settings, n: int, pki: Pki) -> Plan:
    """Create or update the control plane's objects for ``n`` VMs; returns the plan.

    The appliance image must be published already (``lab image build
    pacific-appliance``); it is assigned to the supervisor's namespace here."""
    from appliance.objects import SYSTEM
    from appliance.vmservice.catalog import Catalog

    plan = plan_for(n, settings.appliance_cidr, settings.state_dir)
    cert, key = server_certificate(pki, plan, pki.directory)
    files = PkiFiles(pki.ca_cert.read_text(), cert, key)
    catalog = Catalog(service)
    catalog.assign_image(SYSTEM, APPLIANCE_IMAGE, SYSTEM_NAMESPACE)
    from appliance.service import load_facts

    emulated = load_facts(settings).get("accelerator") != "kvm"
    for obj in control_plane_objects(plan, files, CLASS_CPUS_TCG if emulated else CLASS_CPUS,
                                     shared_settings(settings)):
        group, _, version = obj["apiVersion"].rpartition("/")
        kind = service.registry.by_kind(group, obj["kind"])
        assert kind is not None
        catalog.ensure(SYSTEM, Target(kind, version, SYSTEM_NAMESPACE), obj)
    return plan
