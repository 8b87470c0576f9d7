"""Which registry URLs may be contacted: schemes, addresses, the administrator's exceptions.

Host names are resolved by a fake ``getaddrinfo``; no connection is made."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest

from hypervisor.oci import PolicyRefused, RegistryPolicy, RegistryUnreachable
from hypervisor.oci.policy import AddressGuard, check_url, redact_url

PUBLIC = "93.184.216.34"


def guard(*own: str) -> AddressGuard:
    return AddressGuard(own_addresses=lambda: frozenset(ipaddress.ip_address(a) for a in own))


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the fake resolver knows; IP literals resolve to themselves."""
    answers: dict[str, list[str]] = {}

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            if host not in answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            addresses = answers[host]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_public_https_is_pinned(dns: dict[str, list[str]]) -> None:
    dns["registry.example.com"] = [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"]
    target = check_url("https://registry.example.com/v2/x/manifests/1?a=b", RegistryPolicy(), guard())
    assert (target.scheme, target.host, target.port) == ("https", "registry.example.com", 443)
    assert target.addresses == (PUBLIC, "2606:2800:220:1:248:1893:25c8:1946")
    assert target.request_target == "/v2/x/manifests/1?a=b"
    assert target.display == "https://registry.example.com/v2/x/manifests/1"


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("198.18.0.1", "private"), ("192.0.2.1", "private"),
    ("fd00::1", "private"), ("100.64.0.1", "shared"), ("224.0.0.1", "multicast"),
    ("240.0.0.1", "private"),
])
def test_internal_addresses_refused(dns: dict[str, list[str]], address: str, why: str) -> None:
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(PolicyRefused, match=why) as info:
        check_url(f"https://{host}:5000/v2/", RegistryPolicy(), guard())
    assert "administrator" in str(info.value)


def test_a_name_with_one_bad_address_is_refused(dns: dict[str, list[str]]) -> None:
    dns["rebind.example.com"] = [PUBLIC, "127.0.0.1"]
    with pytest.raises(PolicyRefused, match=r"rebind.example.com:443 \(it resolves to 127.0.0.1\)"):
        check_url("https://rebind.example.com/v2/", RegistryPolicy(), guard())


def test_this_hosts_own_address_refused(dns: dict[str, list[str]]) -> None:
    with pytest.raises(PolicyRefused, match="this host"):
        check_url(f"https://{PUBLIC}/v2/", RegistryPolicy(), guard(PUBLIC))


def test_own_addresses_are_learned_lazily() -> None:
    calls: list[int] = []

    def own() -> frozenset[Any]:
        calls.append(1)
        return frozenset()

    checker = AddressGuard(own_addresses=own)
    assert checker.refusal(ipaddress.ip_address("127.0.0.1")) == "a loopback address"
    assert calls == []
    assert checker.refusal(ipaddress.ip_address(PUBLIC)) is None
    assert checker.refusal(ipaddress.ip_address(PUBLIC)) is None
    assert calls == [1]


def test_allowed_private_with_and_without_port(dns: dict[str, list[str]]) -> None:
    exact = RegistryPolicy(allowed_private=frozenset({"127.0.0.1:5000"}))
    assert check_url("https://127.0.0.1:5000/v2/", exact, guard()).addresses == ("127.0.0.1",)
    with pytest.raises(PolicyRefused):
        check_url("https://127.0.0.1:5001/v2/", exact, guard())
    any_port = RegistryPolicy(allowed_private=frozenset({"127.0.0.1"}))
    check_url("https://127.0.0.1:5001/v2/", any_port, guard())
    dns["lab-registry.internal"] = ["198.18.0.5"]
    named = RegistryPolicy(allowed_private=frozenset({"lab-registry.INTERNAL:443"}))
    check_url("https://Lab-Registry.internal/v2/", named, guard())


def test_ipv6_entries(dns: dict[str, list[str]]) -> None:
    policy = RegistryPolicy(allowed_private=frozenset({"[::1]:5000"}), insecure=frozenset({"[::1]:5000"}))
    target = check_url("http://[::1]:5000/v2/", policy, guard())
    assert (target.host, target.port, target.addresses) == ("::1", 5000, ("::1",))
    assert policy.registry_url("[::1]:5000") == "http://[::1]:5000"


def test_plain_http_needs_insecure(dns: dict[str, list[str]]) -> None:
    with pytest.raises(PolicyRefused, match="plain HTTP"):
        check_url(f"http://{PUBLIC}/v2/", RegistryPolicy(), guard())
    policy = RegistryPolicy(insecure=frozenset({PUBLIC}))
    assert check_url(f"http://{PUBLIC}/v2/", policy, guard()).port == 80
    # insecure does not mean private: loopback stays refused
    with pytest.raises(PolicyRefused, match="loopback"):
        check_url("http://127.0.0.1/v2/", RegistryPolicy(insecure=frozenset({"127.0.0.1"})), guard())


@pytest.mark.parametrize("url", [
    "ftp://registry.example.com/x", "file:///etc/passwd", "gopher://x/", "//no-scheme/x",
    "https:///nohost", f"https://user:pw@{PUBLIC}/v2/", f"https://{PUBLIC}:99999/",
])
def test_other_urls_refused(dns: dict[str, list[str]], url: str) -> None:
    with pytest.raises(PolicyRefused) as info:
        check_url(url, RegistryPolicy(), guard())
    assert "pw" not in str(info.value)


def test_unresolvable_is_unreachable(dns: dict[str, list[str]]) -> None:
    with pytest.raises(RegistryUnreachable, match="cannot resolve nowhere.example"):
        check_url("https://nowhere.example/v2/", RegistryPolicy(), guard())


def test_registry_url_scheme() -> None:
    policy = RegistryPolicy(insecure=frozenset({"127.0.0.1:5000", "plain.example.com"}))
    assert policy.registry_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert policy.registry_url("127.0.0.1:5001") == "https://127.0.0.1:5001"
    assert policy.registry_url("plain.example.com") == "http://plain.example.com"
    assert policy.registry_url("plain.example.com:8080") == "http://plain.example.com:8080"
    assert policy.registry_url("registry-1.docker.io") == "https://registry-1.docker.io"


def test_a_registry_ca_is_for_its_registry_only() -> None:
    lab_ca, bundle = Path("/lab/ca.crt"), Path("/etc/corp-ca.pem")
    policy = RegistryPolicy(registry_cas=(("lab.example:5000", lab_ca), ("[::1]:5000", lab_ca)))
    assert policy.ca_for("lab.example", 5000) == policy.ca_for("LAB.example", 5000) == lab_ca
    assert policy.ca_for("::1", 5000) == lab_ca
    assert policy.ca_for("lab.example", 443) is None  # the system's CAs
    assert policy.ca_for("registry.example.com", 443) is None
    with_bundle = RegistryPolicy(ca_bundle=bundle, registry_cas=(("lab.example", lab_ca),))
    assert with_bundle.ca_for("lab.example", 1234) == lab_ca  # no port: every port
    assert with_bundle.ca_for("registry.example.com", 443) == bundle


def test_redact_url() -> None:
    assert redact_url("https://u:p@s3.example.com:8443/b/k?X-Amz-Signature=s#f") == \
        "https://s3.example.com:8443/b/k"
    assert redact_url("http://[::1]:5000/v2/?token=t") == "http://[::1]:5000/v2/"
