"""The host agent's VM reconciler: VirtualMachines placed on this host, on libvirt.

One pass, in order (cluster-api style phases; status is written in a
``finally`` whatever happened):

1. deleting: remove the domain, the boot disk and the seed, then the finalizer;
2. resolve the class, the image files and the cloud-init data;
3. the boot disk: a qcow2 overlay on the image, sized for the VM;
4. the NoCloud seed ISO (user-data, meta-data with instance-id = the VM's
   uid, network-config with the address the scheduler gave it);
5. the domain, defined from one typed spec;
6. power, as ``spec.powerState`` says;
7. observe: power state, address, and Ready once SSH answers.

Every step is idempotent and keyed by the VM's uid, so a pass interrupted by
a crash converges on the next one: no duplicate domain, no orphan disk.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliance import events
from appliance.agent.vmnames import disk_name, domain_name, orphans, seed_name, vm_prefix
from appliance.controllers.base import (
    Controller,
    PermanentError,
    TemporaryError,
    drop_finalizer,
    merge_diff,
)
from appliance.controllers.scheduler import (SSH_KEY_SECRET_SUFFIX, SYSTEM_NAMESPACE, set_condition,
                                             vm_address)
from appliance.kinds.registry import Obj
from appliance.kinds.vmop import (GROUP, GUEST_BOOTSTRAP, STORAGE, VM_FINALIZER, boot_disk_bytes,
                                  cloud_config_problem, dump_cloud_config, split_jinja_header,
                                  user_data_text)
from appliance.resources import Ref, ResourceApi, get_or_none
from appliance.settings import Settings
from appliance.vmservice.library import ImageFiles, LibraryError, image_files
from hypervisor.disks import DiskStore
from hypervisor.domain import DiskSpec, DomainSpec, KernelBoot, NicSpec, tcg_cmdline
from hypervisor.libvirt_driver import HypervisorError, LibvirtDriver, TransientHypervisorError
from hypervisor.seed import build_seed_iso

LOG = logging.getLogger(__name__)

CLASSES = Ref(GROUP, STORAGE, "virtualmachineclasses")
IMAGES = Ref(GROUP, STORAGE, "virtualmachineimages")
CLUSTER_IMAGES = Ref(GROUP, STORAGE, "clustervirtualmachineimages")
SECRETS = Ref("", "v1", "secrets")
CONFIGMAPS = Ref("", "v1", "configmaps")

POOL = "pacific-vms"
#: How much of the end of the serial log is searched for the guest's last report.
REPORT_WINDOW = 64 * 1024
SSH_USER = "pacific"
#: Run last on first boot: what cloud-init wrote (SSH host keys above all) reaches
#: the disk, so a hard power-off right after cannot leave empty key files behind.
FLUSH = ["sync"]

POWER = {"PoweredOn": "running", "PoweredOff": "shutoff", "Suspended": "paused"}
OBSERVED = {"running": "PoweredOn", "blocked": "PoweredOn", "paused": "Suspended",
            "pmsuspended": "Suspended", "shutoff": "PoweredOff", "shutdown": "PoweredOff",
            "crashed": "PoweredOff", "nostate": "PoweredOff"}


@dataclass(frozen=True)
class Bootstrap:
    user_data: str
    meta_data: dict[str, Any]
    network_config: dict[str, Any]


class VmController(Controller):
    group, version, plural, name = GROUP, STORAGE, "virtualmachines", "vm-agent"
    resync = 10.0  # how soon drift (a domain destroyed behind our back) is repaired

    def __init__(self, api: ResourceApi, node_name: str, settings: Settings,
                 accelerator: str, driver: LibvirtDriver, network_name: str, *,
                 ovs_datapath: str = "system", namespace_network: bool = False) -> None:
        super().__init__(api)
        self.ovs_datapath = ovs_datapath
        self.namespace_network = namespace_network
        self.node_name = node_name
        self.settings = settings
        self.accelerator = accelerator
        self.driver = driver
        self.disks = DiskStore(driver, settings.state_dir)
        self.network_name = network_name
        self.console_dir = settings.state_dir / "consoles"
        self.prefix = vm_prefix(settings.state_dir)
        # Pool names are global in libvirt; a state directory has its own pool.
        self.pool = f"{POOL}-{hashlib.sha256(str(settings.state_dir).encode()).hexdigest()[:8]}"

    def wants(self, vm: Obj) -> bool:
        return (vm.get("status") or {}).get("host") == self.node_name

    # -- the pass ----------------------------------------------------------------------

    def reconcile(self, vm: Obj) -> float | None:
        meta = vm["metadata"]
        if meta.get("deletionTimestamp"):
            self.teardown(vm)
            return None
        status = copy.deepcopy(vm.get("status") or {})
        conditions = list(status.get("conditions") or [])
        gen = int(meta.get("generation") or 1)
        again: float | None = None
        try:
            cls, image, boot = self.resolve(vm)
            conditions = set_condition(conditions, "VirtualMachineConditionClassReady", "True",
                                       "ClassFound", "", gen)
            conditions = set_condition(conditions, "VirtualMachineConditionImageReady", "True",
                                       "ImageFound", image.sha256[:12], gen)
            conditions = set_condition(conditions, "VirtualMachineConditionBootstrapReady",
                                       "True", "SeedWritten", "", gen)
            disk = self.ensure_disk(vm, cls, image)
            seed = self.ensure_seed(vm, boot)
            spec = self.domain_spec(vm, cls, image, disk, seed)
            existed = any(c.get("type") == "VirtualMachineConditionCreated"
                          and c.get("status") == "True" for c in conditions)
            if self.driver.ensure_defined(spec):
                LOG.info("[%s/%s] domain %s defined", meta["namespace"], meta["name"], spec.name)
                if existed and self.driver.observe(spec.name) is not None:
                    self.event(vm, "Normal", "DomainUpdated", f"domain {spec.name} redefined")
                else:
                    self.event(vm, "Normal", "Created", f"domain {spec.name} on "
                                                        f"{self.node_name}")
            conditions = set_condition(conditions, "VirtualMachineConditionCreated", "True",
                                       "Created", f"domain {spec.name}", gen)
            wanted = POWER[(vm.get("spec") or {}).get("powerState") or "PoweredOn"]
            soft = (vm.get("spec") or {}).get("powerOffMode") in ("Soft", "TrySoft")
            before = status.get("powerState")
            if self.driver.ensure_power(spec.name, wanted, 60.0 if soft else 0.0):
                LOG.info("[%s/%s] power -> %s", meta["namespace"], meta["name"], wanted)
                desired = (vm.get("spec") or {}).get("powerState") or "PoweredOn"
                if before == desired:  # it was as wanted: something changed it behind our back
                    self.event(vm, "Warning", "PowerStateRepaired",
                               f"the domain was not {desired}; restored")
                else:
                    self.event(vm, "Normal", desired, f"domain {spec.name} is {desired}")
            again, conditions = self.observe(vm, spec.name, status, conditions, gen)
        except PermanentError as exc:
            conditions = set_condition(conditions, "Ready", "False", exc.args[1], exc.args[0],
                                       gen)
            self.event(vm, "Warning", exc.args[1], exc.args[0])
            again = 60.0
        except (TemporaryError, TransientHypervisorError) as exc:
            conditions = set_condition(conditions, "Ready", "False", "Retrying", str(exc), gen)
            again = 5.0
        except HypervisorError as exc:
            conditions = set_condition(conditions, "Ready", "False", "HypervisorError", str(exc),
                                       gen)
            self.event(vm, "Warning", "HypervisorError", str(exc))
            again = 15.0
        finally:
            status["conditions"] = conditions
            status["host"] = self.node_name
            current = vm.get("status") or {}
            if status != current:
                self.api.patch(self.ref, meta["namespace"], meta["name"],
                               {"status": merge_diff(current, status)}, subresource="status")
        return again

    def event(self, vm: Obj, type_: str, reason: str, message: str) -> None:
        events.record(self.api, vm, type_, reason, message, component="pacific-lab-vm-agent")

    # -- phases ------------------------------------------------------------------------

    def resolve(self, vm: Obj) -> tuple[Obj, ImageFiles, Bootstrap]:
        ns, spec = vm["metadata"]["namespace"], vm.get("spec") or {}
        cls = get_or_none(self.api, CLASSES, ns, spec.get("className", ""))
        if cls is None:
            raise PermanentError(f"VirtualMachineClass {spec.get('className')!r} is not in "
                                 f"namespace {ns}", "ClassNotFound")
        image_name = spec.get("imageName") or (spec.get("image") or {}).get("name") or ""
        if get_or_none(self.api, IMAGES, ns, image_name) is None and \
                get_or_none(self.api, CLUSTER_IMAGES, "", image_name) is None:
            raise PermanentError(f"image {image_name!r} not found", "ImageNotFound")
        try:
            image = image_files(self.settings, image_name)
        except LibraryError as exc:
            raise PermanentError(str(exc), "ImageNotOnHost") from exc
        return cls, image, self.bootstrap(vm)

    def bootstrap(self, vm: Obj) -> Bootstrap:
        meta, spec = vm["metadata"], vm.get("spec") or {}
        ns = meta["namespace"]
        cloud = (spec.get("bootstrap") or {}).get("cloudInit") or {}
        text = "#cloud-config\n{}\n"
        if cloud.get("rawCloudConfig"):
            ref = cloud["rawCloudConfig"]
            key = ref.get("key") or "user-data"
            secret = get_or_none(self.api, SECRETS, ns, ref.get("name", ""))
            if secret is not None and key in (secret.get("data") or {}):
                text = base64.b64decode(secret["data"][key]).decode(errors="replace")
            else:
                cm = get_or_none(self.api, CONFIGMAPS, ns, ref.get("name", ""))
                if cm is None or key not in (cm.get("data") or {}):
                    raise TemporaryError(f"bootstrap secret {ref.get('name')!r} (key {key!r}) "
                                         "not found", 10.0)
                text = cm["data"][key]
        elif cloud.get("cloudConfig"):
            text = user_data_text(cloud["cloudConfig"])
        problem = cloud_config_problem(text)
        if problem:
            raise PermanentError(problem, "InvalidBootstrapData")
        user_data = self.with_access_key(vm, text, cloud.get("sshAuthorizedKeys") or [])
        hostname = (spec.get("network") or {}).get("hostName") or meta["name"].split(".")[0]
        address = vm_address(vm)
        iface = ((vm.get("status") or {}).get("network") or {}).get("interfaces") or [{}]
        prefix = str(((iface[0].get("ip") or {}).get("addresses") or [{}])[0].get(
            "address", "/24")).split("/")[1]
        eth0: dict[str, Any] = {
            "match": {"macaddress": mac_for(meta["uid"])}, "set-name": "eth0",
            "addresses": [f"{address}/{prefix}"] if address else [], "dhcp4": not address}
        gateway = ((iface[0].get("ip") or {}).get("gateway4")) or ""
        if address and gateway:
            eth0["routes"] = [{"to": "0.0.0.0/0", "via": gateway}]
        dns = iface[0].get("dns") or {}
        if dns.get("nameservers"):
            eth0["nameservers"] = {"addresses": list(dns["nameservers"]),
                                   "search": list(dns.get("searchDomains") or [])}
        network = {"version": 2, "ethernets": {"eth0": eth0}}
        # "hostname" as vm-operator's cloud-init metadata has it: CAPV's templates use
        # {{ ds.meta_data.hostname }}.
        return Bootstrap(user_data, {"instance-id": meta["uid"], "local-hostname": hostname,
                                     "hostname": hostname},
                         network)

    def with_access_key(self, vm: Obj, text: str, extra_keys: list[str]) -> str:
        """Add the appliance's user (key in the ``<vm>-ssh-key`` Secret) to the user-data."""
        ns, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        secret = get_or_none(self.api, SECRETS, ns, name + SSH_KEY_SECRET_SUFFIX)
        if secret is None:
            raise TemporaryError("waiting for the VM's SSH key secret", 2.0)
        public = base64.b64decode(secret["data"]["ssh-publickey"]).decode().strip()
        ours = {"name": SSH_USER, "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
                "lock_passwd": True, "ssh_authorized_keys": [public, *extra_keys]}
        return with_user(text, ours)

    def ensure_disk(self, vm: Obj, cls: Obj, image: ImageFiles) -> Path:
        self.disks.ensure_pool(self.pool, "vms")
        image_obj = get_or_none(self.api, IMAGES, vm["metadata"]["namespace"], image.name)
        size = int(boot_disk_bytes(vm, cls, image_obj))
        return self.disks.ensure_overlay(self.pool, disk_name(vm), image.disk, image.disk_format,
                                         max(size, image.capacity_bytes))

    def ensure_seed(self, vm: Obj, boot: Bootstrap) -> Path:
        pool_path = self.disks.ensure_pool(self.pool, "vms")
        path = pool_path / seed_name(vm)
        digest = hashlib.sha256(repr((boot.user_data, sorted(boot.meta_data.items()),
                                      boot.network_config)).encode()).hexdigest()
        stamp = pool_path / f".{seed_name(vm)}.sha256"
        if not path.exists() or not stamp.exists() or stamp.read_text() != digest:
            build_seed_iso(path, boot.user_data, boot.meta_data, boot.network_config)
            stamp.write_text(digest)
        return path

    def domain_spec(self, vm: Obj, cls: Obj, image: ImageFiles, disk: Path,
                    seed: Path) -> DomainSpec:
        meta = vm["metadata"]
        hw = (cls.get("spec") or {}).get("hardware") or {}
        from appliance.util.quantity import parse_quantity

        self.console_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        kernel = None
        if image.kernel is not None:
            cmdline = image.cmdline or "root=/dev/vda console=ttyS0"
            if self.accelerator != "kvm":
                cmdline = tcg_cmdline(cmdline)
            kernel = KernelBoot(image.kernel, image.initrd, cmdline)
        return DomainSpec(
            name=domain_name(vm, self.prefix), uuid=meta["uid"], vcpus=int(hw.get("cpus") or 1),
            memory_mib=int(parse_quantity(hw.get("memory") or "1Gi") / 2**20),
            accelerator="kvm" if self.accelerator == "kvm" else "tcg",
            disks=(DiskSpec(disk, "qcow2", "vda"), DiskSpec(seed, "raw", "vdb", readonly=True)),
            nics=(self.nic(vm),),
            serial_log=self.console_dir / f"{domain_name(vm, self.prefix)}.log", kernel=kernel,
            metadata={"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            guest_agent=True)

    def nic(self, vm: Obj) -> NicSpec:
        """The VM's NIC: an OVS port on its namespace's segment, or the appliance network."""
        meta = vm["metadata"]
        if not self.namespace_network or meta["namespace"] == SYSTEM_NAMESPACE:
            return NicSpec(mac_for(meta["uid"]), "network", self.network_name)
        from appliance.network.attach import INTERFACES, attachment, interface_name

        nic = attachment(get_or_none(self.api, INTERFACES, meta["namespace"],
                                     interface_name(meta["name"])) or {})
        if nic is None:
            raise TemporaryError("waiting for the VM's network interface", 2.0)
        return NicSpec(nic.mac or mac_for(meta["uid"]), "ovs", nic.bridge,
                       port_name=nic.port_name, vlan=nic.vlan,
                       csum_offload_off=self.ovs_datapath == "netdev")

    def observe(self, vm: Obj, dom: str, status: Obj, conditions: list[Obj], gen: int
                ) -> tuple[float | None, list[Obj]]:
        """Fill ``status`` from what libvirt and the guest show; the next look and conditions."""
        seen = self.driver.observe(dom)
        power = OBSERVED.get(seen.state, "PoweredOff") if seen else "PoweredOff"
        status["powerState"] = power
        if seen is not None:
            status["uniqueID"] = dom
            status["biosUUID"] = seen.uuid
            status["instanceUUID"] = seen.uuid
        conditions = self.guest_report(vm, dom, conditions, gen)
        address = vm_address(vm)
        answering = power == "PoweredOn" and address is not None and _port_open(address, 22)
        net = status.setdefault("network", {})
        if answering:
            net["primaryIP4"] = address
            conditions = set_condition(conditions, "Ready", "True", "GuestReady",
                                       f"SSH answers on {address}", gen)
            again = None
        else:
            net.pop("primaryIP4", None)
            wanted = (vm.get("spec") or {}).get("powerState") or "PoweredOn"
            reason = "PoweredOff" if wanted != "PoweredOn" else "Booting"
            conditions = set_condition(conditions, "Ready", "False", reason,
                                       "the guest does not answer yet" if reason == "Booting"
                                       else f"the VM is {wanted}", gen)
            again = 3.0 if wanted == "PoweredOn" else None
        return again, conditions

    def guest_report(self, vm: Obj, dom: str, conditions: list[Obj], gen: int) -> list[Obj]:
        """The guest's last bootstrap report on its serial console, as a condition.

        A guest bootstrapped by the Cluster API writes one line
        ``PACIFIC-BOOTSTRAP {"status": ..., "reason": ..., "message": ...}`` to its
        console (as VMware Tools reports guest customisation through guestinfo). The
        guest writes it, so it is input: parsed strictly, capped, and only ever a
        condition of the guest's own VM."""
        from appliance.clusters.bootstrap import parse_report

        path = self.console_dir / f"{dom}.log"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return conditions
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - REPORT_WINDOW))
            tail = f.read(REPORT_WINDOW).decode(errors="replace")
        report = parse_report(tail)
        if report is None:
            return conditions
        state = {"Succeeded": "True", "Failed": "False"}.get(report["status"], "Unknown")
        reason = report["reason"] or f"Bootstrap{report['status']}"
        before = next((c for c in conditions if c.get("type") == GUEST_BOOTSTRAP), {})
        if (before.get("status"), before.get("reason")) != (state, reason) and state == "False":
            self.event(vm, "Warning", reason, report["message"])
        return set_condition(conditions, GUEST_BOOTSTRAP, state, reason, report["message"], gen)

    # -- deletion ------------------------------------------------------------------------

    def teardown(self, vm: Obj) -> None:
        meta = vm["metadata"]
        self.driver.ensure_absent(domain_name(vm, self.prefix))
        self.disks.ensure_pool(self.pool, "vms")
        self.disks.remove_volume(self.pool, disk_name(vm))
        pool_path = self.disks.pool_path(self.pool)
        for leftover in (pool_path / seed_name(vm), pool_path / f".{seed_name(vm)}.sha256",
                         self.console_dir / f"{domain_name(vm, self.prefix)}.log"):
            leftover.unlink(missing_ok=True)
        drop_finalizer(self.api, self.ref, vm, VM_FINALIZER)
        LOG.info("[%s/%s] domain, disk and seed removed", meta["namespace"], meta["name"])

    def collect_orphans(self) -> list[str]:
        """Remove domains of ours whose VM is gone (its finalizer was forced off)."""
        items, _ = self.api.list(self.ref)
        removed = orphans(items, self.prefix, self.driver.list_domains(self.prefix))
        for dom in removed:
            self.driver.ensure_absent(dom)
        return removed


def with_user(text: str, user: dict[str, Any]) -> str:
    """User-data with ``user`` added (and the final ``sync``), keeping what it was: a
    cloud-config (a jinja template or not) stays one, a script becomes part of a
    multi-part archive."""
    header, text = split_jinja_header(text)
    if not text.startswith("#cloud-config"):
        return _multipart(("text/cloud-config", "#cloud-config\n" + yaml.safe_dump(
            {"users": ["default", user], "runcmd": [FLUSH]})),
                          ("text/x-shellscript", text))
    config = yaml.safe_load(text) or {}
    users = config.get("users")
    config["users"] = (list(users) if isinstance(users, list) else ["default"]) + [user]
    runcmd = config.get("runcmd")
    config["runcmd"] = (list(runcmd) if isinstance(runcmd, list) else []) + [FLUSH]
    return header + "#cloud-config\n" + dump_cloud_config(config)


def mac_for(uid: str) -> str:
    """A stable, locally administered MAC address from the VM's uid."""
    digest = hashlib.sha256(uid.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def _port_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _multipart(*parts: tuple[str, str]) -> str:
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    message = MIMEMultipart()
    for subtype, content in parts:
        message.attach(MIMEText(content, subtype.split("/")[1]))
    return message.as_string()
