"""A full VM on its namespace's network, through the real host service and kubectl:
address from the namespace's subnet, gateway and DNS from cloud-init, SSH on the
segment and through a VirtualMachineService VIP; the namespace's deletion removes
VM and network alike."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from appliance.network.config import NetworkConfig
from hypervisor import ovs
from hypervisor.ssh import generate_keypair, run_command
from tests.e2e.conftest import kubeconfig_for
from tests.support.kubectl import Kubectl
from tests.support.server import LabServer, network_lab
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

KUBECTL = Path("/usr/bin/kubectl")
BOOT_TIMEOUT = 600


@pytest.fixture(scope="module")
def netlab() -> Iterator[tuple[LabServer, NetworkConfig, str]]:
    with network_lab("vm") as net:
        yield net.server, net.config, f"netvm-{net.tag}"


def test_vm_on_its_namespace_network(netlab: tuple[LabServer, NetworkConfig, str],
                                     tmp_path: Path) -> None:
    lab, config, ns = netlab
    kc = Kubectl(KUBECTL, kubeconfig_for(lab, tmp_path, ns), tmp_path / "cache")
    kc.run("create", "namespace", ns)
    lab.lab("image", "assign", "debian-12", ns)
    lab.lab("class", "assign", "best-effort-xsmall", ns)
    private, public = generate_keypair("alice@test")
    user_data = "#cloud-config\n" + yaml.safe_dump({"users": ["default", {
        "name": "alice", "shell": "/bin/bash", "ssh_authorized_keys": [public]}]})
    manifest = tmp_path / "web.yaml"
    manifest.write_text(yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-1-cloud-init"},
         "stringData": {"user-data": user_data}},
        {"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
         "metadata": {"name": "web-1", "labels": {"app": "web"}},
         "spec": {"className": "best-effort-xsmall", "imageName": "debian-12",
                  "powerState": "PoweredOn", "bootstrap": {"cloudInit": {"rawCloudConfig": {
                      "name": "web-1-cloud-init", "key": "user-data"}}}}},
        {"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachineService",
         "metadata": {"name": "web"},
         "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                  "ports": [{"name": "ssh", "port": 22, "targetPort": 22}]}}]))
    kc.run("apply", "-f", str(manifest))

    def ready() -> dict | None:
        out = kc.run("get", "vm", "web-1", "-n", ns, "-o", "json", check=False)
        status = json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}
        conds = {c["type"]: c["status"] for c in status.get("conditions", [])}
        return status if conds.get("Ready") == "True" else None
    status = wait_for("web-1 Ready", ready, BOOT_TIMEOUT, 5.0)
    ip = status["network"]["primaryIP4"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(config.pool_cidr)
    vnet = json.loads(kc.run("get", "virtualnetwork", "default", "-n", ns, "-o",
                             "json").stdout)["status"]
    vnif = json.loads(kc.run("get", "virtualnetworkinterface", "web-1-eth0", "-n", ns, "-o",
                             "json").stdout)["status"]
    assert vnif["ipAddresses"][0]["ip"] == ip
    port = next(p for p in ovs.list_ports(config.bridge) if p.name == vnif["portName"])
    assert port.tag == vnet["vlan"]

    known = tmp_path / "known_hosts"
    rc, out, err = run_command(ip, "alice", private, "ip -4 route; resolvectl dns eth0; "
                               "getent ahostsv4 web-1", 60, known_hosts=known)
    assert rc == 0, err
    assert f"default via {vnet['gateway']}" in out
    assert f"eth0): {vnet['gateway']}" in out  # the namespace's dnsmasq
    assert f"{ip}     STREAM web-1.{ns}.{config.dns_domain}" in out  # and its names

    def vip() -> str | None:
        out = kc.run("get", "vmservice", "web", "-n", ns, "-o", "json", check=False)
        ingress = (json.loads(out.stdout).get("status", {}).get("loadBalancer", {})
                   .get("ingress") if out.returncode == 0 else None)
        return ingress[0]["ip"] if ingress else None
    address = wait_for("a VIP", vip, 120, 1.0)
    assert ipaddress.ip_address(address) in ipaddress.ip_network(config.ingress_cidr)

    def banner() -> str | None:
        try:
            with socket.create_connection((address, 22), timeout=3) as s:
                return s.recv(64).decode(errors="replace")
        except OSError:
            return None
    assert wait_for("SSH through the VIP", banner, 60, 1.0).startswith("SSH-2.0")
    rc, out, err = run_command(address, "alice", private, "hostname", 60, known_hosts=known)
    assert rc == 0 and "web-1" in out, err

    kc.run("delete", "vm", "web-1", "-n", ns, "--wait=false")
    wait_for("web-1 deleted", lambda: kc.run("get", "vm", "web-1", "-n", ns, check=False)
             .returncode != 0, 300, 2.0)
    kc.run("delete", "namespace", ns, "--wait=false")
    wait_for("namespace gone", lambda: kc.run("get", "namespace", ns, check=False)
             .returncode != 0, 300, 2.0)
    assert [p for p in ovs.list_ports(config.bridge) if p.tag == vnet["vlan"]] == []
    assert ovs.dump_flows(config.bridge, vnet["vlan"]) == []
    assert ovs.nft_table_text("inet", config.nft_table(vnet["vlan"])) is None
    assert not config.namespace_dir(vnet["vlan"]).exists()
