"""The network templates rendered from a namespace's extravars, as Ansible renders them."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import jinja2
import pytest

from appliance.network.config import NetworkConfig
from appliance.network.hostconfig import Backend, Listener, NamespaceHost
from appliance.network.ipam import parse_network
from appliance.network.model import Segment, Workload

ROOT = Path(__file__).resolve().parents[2]


def render(name: str, extravars: dict[str, Any]) -> str:
    # Ansible's template module: trim_blocks on, undefined names are errors.
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROOT / "templates/network")),
                             trim_blocks=True, undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    return env.get_template(name).render(**extravars)


@pytest.fixture
def host(tmp_path: Path) -> NamespaceHost:
    cfg = NetworkConfig(state_dir=tmp_path, tag="pl")
    seg = Segment("dev-team", 101, (parse_network("198.19.0.0/28"),
                                    parse_network("198.19.0.32/28")), "plg101", snat=True)
    w1 = Workload("dev-team", "web-1-eth0", ipaddress.IPv4Address("198.19.0.2"),
                  "52:54:00:aa:00:01", "plwaaaaaaaaa1", "web-1", {"app": "web"})
    w2 = Workload("dev-team", "web-2-eth0", ipaddress.IPv4Address("198.19.0.34"),
                  "52:54:00:aa:00:02", "plwaaaaaaaaa2", "web-2", {"app": "web"})
    vip = ipaddress.IPv4Address("198.18.128.1")
    lb = Listener("VirtualMachineService", "web", vip, 80, "TCP",
                  (Backend("web-1-eth0", w1.ip, 8080), Backend("web-2-eth0", w2.ip, 8080)))
    udp = Listener("Service", "dns", ipaddress.IPv4Address("198.18.128.2"), 53, "UDP", ())
    return NamespaceHost(cfg, seg, (w1, w2), (), (lb, udp),
                         (ipaddress.IPv4Address("198.18.129.1"),),
                         (("web", vip),), uplink="eth9")


def test_dnsmasq(host: NamespaceHost) -> None:
    text = render("dnsmasq.conf.j2", host.extravars())
    # On the gateways only, not on the VIPs that share their port (issue 17's exposure).
    assert "listen-address=198.19.0.1\nlisten-address=198.19.0.33\n" in text
    assert "\ninterface=" not in text and "bind-dynamic\n" in text
    assert "dhcp-range=set:s0,198.19.0.0,static,255.255.255.240,12h\n" in text
    assert "dhcp-option=tag:s1,option:router,198.19.0.33\n" in text
    assert "domain=dev-team.pacific.internal\n" in text
    assert "local=/dev-team.pacific.internal/\n" in text
    hosts = render("dhcp-hosts.j2", host.extravars())
    assert "52:54:00:aa:00:01,198.19.0.2,web-1\n" in hosts
    names = render("dns-hosts.j2", host.extravars())
    assert "198.19.0.34 web-2.dev-team.pacific.internal web-2\n" in names
    assert "198.18.128.1 web.dev-team.pacific.internal web\n" in names


def test_nftables_with_snat(host: NamespaceHost) -> None:
    text = render("nftables.nft.j2", host.extravars())
    assert 'iifname "plg101" oifname "plg*" accept' in text
    assert 'iifname "plg101" oifname "eth9" accept' in text
    assert 'oifname "plg101" iifname "eth9" accept' not in text  # SNAT: no inbound routing
    assert ('oifname "eth9" ip saddr { 198.19.0.0/28, 198.19.0.32/28 } counter masquerade'
            in text)
    assert 'ip daddr { 198.19.0.1, 198.19.0.33 } udp dport 53 accept' in text
    assert 'ip daddr { 198.18.129.1 } accept' in text
    assert 'ip daddr 198.18.128.0/24 accept' in text


def test_nftables_routed(host: NamespaceHost) -> None:
    routed = NamespaceHost(host.config, Segment("dev-team", 101, host.segment.subnets, "plg101",
                                                snat=False),
                           host.workloads, (), uplink="eth9")
    text = render("nftables.nft.j2", routed.extravars())
    assert "masquerade" not in text and "postrouting" not in text
    assert 'oifname "plg101" iifname "eth9" accept' in text


def test_haproxy(host: NamespaceHost) -> None:
    text = render("haproxy.cfg.j2", host.extravars())
    assert "listen virtualmachineservice-web-tcp-80\n    bind 198.18.128.1:80\n" in text
    assert "    server web-1-eth0 198.19.0.2:8080 check\n" in text
    assert "    server web-2-eth0 198.19.0.34:8080 check\n" in text
    assert "balance roundrobin" in text and "fall 2 rise 2" in text
    assert "198.18.128.2" not in text  # UDP is not balanced by HAProxy


def test_extravars_put_vips_on_the_gateway(host: NamespaceHost) -> None:
    ns = host.extravars()["lab_ns"]
    assert ns["gateway_addresses"] == ["198.19.0.1/28", "198.19.0.33/28", "198.18.128.1/32",
                                       "198.18.128.2/32", "198.18.129.1/32"]
    assert ns["cookie"] == 101 and ns["nft_table"] == "pl_ns101"
    assert host.digest() == host.digest()
