"""Issue 17's exposure check, on every lab of the suite as it stops.

``LabServer.stop`` runs it, so a lab is checked after everything its tests did to it:

- **listeners**: the host service and what it started (dnsmasq, HAProxy), and the QEMU
  of each of the lab's VMs and pod VMs, listen on loopback only, except the namespace's
  DNS on its gateway, DHCP, HAProxy on a Service's VIP, and (in the host role) the log
  endpoint for the control-plane VMs on the host's appliance-network address. Test labs bind their API
  and dashboard to loopback (``LAB_API_BIND``); VNC listens on loopback;
- **logs**: no log of the lab (the service log, Ansible's output, consoles) holds the
  admin token or password, a token or password the tests used, or any value of any
  Secret in the lab;
- **what a viewer sees**: a user with the view role in every namespace that holds
  something lists it all; none of those responses holds such a value, and Secrets are
  403.

``tests/e2e/test_vm_lifecycle.py`` keeps its stricter check of one VM behind a Service
(dnsmasq on exactly its gateway, HAProxy on exactly the VIP and port).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import os
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import yaml

from tests.support.listeners import Listener, listeners, process_group

if TYPE_CHECKING:
    from tests.support.server import LabServer

#: Shorter values are words, names or numbers that may well appear anywhere.
SHORTEST = 12
#: Keys and beginnings of values that are public by nature: certificates and public keys.
PUBLIC_KEYS = ("ca.crt", "tls.crt", ".crt", ".pub", "known_hosts", "ssh-publickey")
PUBLIC_STARTS = ("-----BEGIN CERTIFICATE", "ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-")
#: The parts of a cloud-config that carry secrets, besides the files only root may read.
CLOUD_SECRET_WORDS = ("pass", "token", "secret", "private", "key")
PRIVATE_MODES = {"0600", "0400", "0640", "0440", "600", "400", "640", "440"}


def sensitive(key: str, raw: bytes) -> set[str]:
    """The strings of one Secret value that must never show: the value, and the lines of a
    private key or the secret fields of a cloud-config inside it."""
    if key.endswith(PUBLIC_KEYS):
        return set()
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return set()
    text = text.strip()
    if text.startswith(PUBLIC_STARTS) or len(text) < SHORTEST:
        return set()
    found = {text}
    if "PRIVATE KEY-----" in text:  # any line of the key's body gives it away
        found |= {line for line in text.splitlines() if len(line) >= 40
                  and not line.startswith("-----")}
    if text.startswith("#cloud-config"):
        with contextlib.suppress(yaml.YAMLError):
            found |= set(_cloud_secrets(yaml.safe_load(text)))
    return found


def _cloud_secrets(node: Any, key: str = "") -> Iterator[str]:
    """The secret strings of a parsed cloud-config: fields named like a password, token or
    key, and the content of ``write_files`` entries that only their owner may read (a
    file others may read can be public, such as one a KubeadmConfig spells out inline)."""
    if isinstance(node, dict):
        if str(node.get("permissions", "")) in PRIVATE_MODES and isinstance(
                node.get("content"), str) and len(node["content"].strip()) >= SHORTEST:
            yield node["content"].strip()
        for k, v in node.items():
            yield from _cloud_secrets(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _cloud_secrets(v, key)
    elif isinstance(node, str) and any(w in key.lower() for w in CLOUD_SECRET_WORDS):
        value = node.strip()
        if len(value) >= SHORTEST and not value.startswith(PUBLIC_STARTS):
            yield value


def secret_values(items: Iterable[dict[str, Any]]) -> set[str]:
    values: set[str] = set()
    for item in items:
        for key, encoded in (item.get("data") or {}).items():
            try:
                values |= sensitive(key, base64.b64decode(encoded))
            except (binascii.Error, TypeError):
                continue
    return values


def listener_leaks(lab: LabServer) -> list[str]:
    """Sockets beyond loopback that the lab did not mean to open."""
    assert lab.proc is not None
    pids = process_group(os.getpgid(lab.proc.pid))
    for pidfile in lab.state_dir.rglob("*.pid"):  # dnsmasq and HAProxy run detached
        text = pidfile.read_text(errors="replace").strip()
        if text.isdigit():
            pids.add(int(text))
    qemu = {}
    for dom in lab_domains(lab):
        pid = Path(f"/run/libvirt/qemu/{dom}.pid")
        if pid.exists() and pid.read_text().strip().isdigit():
            qemu[int(pid.read_text().strip())] = dom

    # In the host role, the log endpoint for the control-plane VMs (appliance.nodeapi):
    # on the host's address in the appliance network only.
    cidr = ipaddress.ip_network(lab.env.get("LAB_APPLIANCE_CIDR") or "198.18.0.0/24")
    node_api = (str(next(cidr.hosts())), int(lab.env.get("LAB_NODE_API_PORT") or 10250))

    def meant(x: Listener) -> bool:
        if x.pid in qemu:
            return False
        if x.pid in pids and (str(x.address), x.port) == node_api and x.protocol == "tcp":
            return True
        if x.command == "dnsmasq":  # DNS on a gateway (never the wildcard), DHCP
            return (x.port == 53 and not x.address.is_unspecified) or (
                (x.protocol, x.port) == ("udp", 67) and x.address.is_unspecified)
        return x.command == "haproxy" and x.protocol == "tcp" and not x.address.is_unspecified

    found = [x for pid in pids | set(qemu) for x in listeners(pid)]
    return [f"{qemu.get(x.pid, '')} {x}".strip() for x in found
            if x.beyond_loopback and not meant(x)]


def lab_domains(lab: LabServer) -> list[str]:
    """The running domains of this lab's VMs and pod VMs, from libvirt's status files."""
    from appliance.agent.vmnames import pod_prefix, vm_prefix

    prefixes = (vm_prefix(lab.state_dir), pod_prefix(lab.state_dir))
    run = Path("/run/libvirt/qemu")
    if not run.is_dir():
        return []
    return [p.stem for p in run.glob("*.xml") if p.stem.startswith(prefixes)]


def console_leaks(lab: LabServer) -> list[str]:
    """Graphics consoles of the lab's domains that listen beyond loopback."""
    leaks = []
    for dom in lab_domains(lab):
        try:
            root = ET.parse(f"/run/libvirt/qemu/{dom}.xml").getroot()
        except (OSError, ET.ParseError):
            continue  # gone meanwhile
        for g in root.iter("graphics"):
            listens = [g.get("listen")] + [x.get("address") for x in g.findall("listen")]
            if any(a not in (None, "127.0.0.1", "::1") for a in listens):
                leaks.append(f"{dom}: {g.get('type')} listens on {listens}")
    return leaks


def log_leaks(state_dir: Path, values: Iterable[str]) -> list[str]:
    """Which logs of the lab hold which of ``values`` (by index, never the value)."""
    logs = [p for p in state_dir.rglob("*") if p.is_file() and not p.is_symlink() and (
        p.suffix == ".log" or {"logs", "ansible", "consoles"} & set(
            p.relative_to(state_dir).parts[:-1]))]
    wanted = [v.encode() for v in values]
    found = []
    for p in logs:
        data = p.read_bytes()
        found += [f"{p.relative_to(state_dir)} holds secret #{i}"
                  for i, v in enumerate(wanted) if v in data]
    return found


class _Api:
    def __init__(self, lab: LabServer, token: str) -> None:
        self.lab = lab
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = lab.ca_file
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.lab.url + path, timeout=30)

    def close(self) -> None:
        self.session.close()


def listable(api: _Api) -> list[str]:
    """The collection path of every namespaced kind the API lists, e.g. ``/api/v1/pods``."""
    versions = ["/api/v1"]
    for group in api.get("/apis").json().get("groups", []):
        versions.append(f"/apis/{group['preferredVersion']['groupVersion']}")
    paths = []
    for base in versions:
        for r in api.get(base).json().get("resources", []):
            if r.get("namespaced") and "/" not in r["name"] and "list" in r.get("verbs", []):
                paths.append(f"{base}/{r['name']}")
    return paths


def viewer_leaks(lab: LabServer, admin: _Api, values: set[str]) -> list[str]:
    """Give a new user the view role in every namespace that holds something, list it all
    as that user, and report any response that holds a secret value."""
    from appliance.auth.bootstrap import ROLE_FOR

    held: dict[str, set[str]] = {}  # collection path -> namespaces with objects in it
    for path in listable(admin):
        r = admin.get(path)
        if r.status_code == 200:
            for item in r.json().get("items", []):
                held.setdefault(path, set()).add(item["metadata"]["namespace"])
    namespaces = set().union(*held.values()) if held else set()
    user, password = f"exposure-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
    lab.add_user(user, password)
    for ns in sorted(namespaces):
        r = admin.session.post(
            f"{lab.url}/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
            json={"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                  "metadata": {"name": f"{user}-view", "namespace": ns},
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                              "kind": "ClusterRole", "name": ROLE_FOR["view"]},
                  "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io",
                                "name": user}]}, timeout=30)
        if r.status_code == 404:  # deleted meanwhile
            continue
        assert r.status_code == 201, r.text
    viewer = _Api(lab, lab.login(user, password)["token"])
    leaks = []
    try:
        for path, spaces in sorted(held.items()):
            prefix, plural = path.rsplit("/", 1)
            for ns in sorted(spaces):
                r = viewer.get(f"{prefix}/namespaces/{ns}/{plural}")
                if plural == "secrets":
                    if r.status_code != 403:
                        leaks.append(f"a viewer lists secrets in {ns}: HTTP {r.status_code}")
                    continue
                leaks += [f"a viewer's list of {plural} in {ns} holds a secret value"
                          for v in values if v in r.text][:1]
    finally:
        viewer.close()
    return leaks


def check(lab: LabServer) -> None:
    """The whole check on a running lab; then ``finish`` once it has stopped."""
    problems = listener_leaks(lab) + console_leaks(lab)
    values = set(lab.used_secrets)
    with contextlib.suppress(OSError, KeyError, TypeError, yaml.YAMLError):
        values.add(lab.admin_token())
    with contextlib.suppress(OSError, KeyError, ValueError):
        values.add(lab.admin_credentials[1])
    if lab.ready() and lab.admin_kubeconfig.exists():
        admin = _Api(lab, lab.admin_token())
        try:
            r = admin.get("/api/v1/secrets")
            assert r.status_code == 200, r.text
            values |= secret_values(r.json().get("items", []))
            problems += viewer_leaks(lab, admin, values)
        finally:
            admin.close()
    lab.exposure_values = values
    assert not problems, "exposure:\n" + "\n".join(problems)


def finish(lab: LabServer) -> None:
    """After the lab stopped: its logs hold none of the values ``check`` gathered."""
    leaks = log_leaks(lab.state_dir, lab.exposure_values)
    assert not leaks, "exposure:\n" + "\n".join(leaks)
