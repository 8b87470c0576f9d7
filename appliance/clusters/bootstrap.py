"""A KubeadmConfig rendered into cloud-config, the way CABPK does it.

CABPK's cloud-init templates (``bootstrap/kubeadm/internal/cloudinit``:
``controlplane_init.go``, ``controlplane_join.go``, ``node.go``) are
re-created as data: one dict, dumped once with a ``yaml.SafeDumper``.

* ``write_files``: the cluster's CAs and service-account keys under the
  certificates directory (init and control-plane joins; ``0640`` certs,
  ``0600`` keys, as CAPI's ``Certificates.AsFiles``), the user's ``files``
  (``contentFrom.secret`` resolved by the caller), the bootstrap script, and
  the kubeadm configuration (``/run/kubeadm/kubeadm.yaml`` for init,
  ``/run/kubeadm/kubeadm-join-config.yaml`` for joins).
* ``users``: the user's users with CAPI's names turned into cloud-init's,
  plus, always, vSphere's ``vmware-system-user`` with the cluster's SSH key.
* ``ntp``, ``bootcmd``, ``disk_setup``/``fs_setup`` and ``mounts`` when the spec has them.
* ``runcmd``: ``preKubeadmCommands``, then one bootstrap step (the script
  ``templates/clusters/kubeadm-bootstrap.sh``, which runs kubeadm, writes
  CAPI's sentinel and reports on the console), then ``postKubeadmCommands``,
  which run only when the bootstrap step succeeded (its line ends the runcmd
  script with ``exit 1`` otherwise).

:func:`parse_report` reads the script's report back out of a console log.
The rendered document holds keys and tokens: nothing here logs it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from appliance.clusters import kubeadm
from appliance.kinds.vmop import JINJA_HEADER, dump_cloud_config
from appliance.clusters.certs import (
    PURPOSE_CLUSTER_CA,
    PURPOSE_ETCD_CA,
    PURPOSE_FRONT_PROXY_CA,
    PURPOSE_SERVICE_ACCOUNT,
    KeyPair,
)
from appliance.settings import PROJECT_ROOT

DEFAULT_TEMPLATES_DIR = PROJECT_ROOT / "templates"
BOOTSTRAP_SCRIPT_TEMPLATE = "clusters/kubeadm-bootstrap.sh"
BOOTSTRAP_SCRIPT_PATH = "/usr/local/sbin/pacific-kubeadm-bootstrap"
INIT_CONFIG_PATH = "/run/kubeadm/kubeadm.yaml"
JOIN_CONFIG_PATH = "/run/kubeadm/kubeadm-join-config.yaml"
DEFAULT_CERTIFICATES_DIR = "/etc/kubernetes/pki"
SENTINEL_PATH = "/run/cluster-api/bootstrap-success.complete"

ROLE_INIT = "init"
ROLE_JOIN_CONTROL_PLANE = "join-control-plane"
ROLE_JOIN_WORKER = "join-worker"
ROLES = (ROLE_INIT, ROLE_JOIN_CONTROL_PLANE, ROLE_JOIN_WORKER)

VSPHERE_USER = "vmware-system-user"

REPORT_PREFIX = "PACIFIC-BOOTSTRAP"
REPORT_STATUSES = ("Running", "Failed", "Succeeded")
REPORT_MESSAGE_MAX = 300
REPORT_FIELD_MAX = 64

# (purpose, certificate file, key file) in CAPI's ``Certificates.AsFiles`` order.
_CERT_FILES = (
    (PURPOSE_CLUSTER_CA, "ca.crt", "ca.key"),
    (PURPOSE_ETCD_CA, "etcd/ca.crt", "etcd/ca.key"),
    (PURPOSE_FRONT_PROXY_CA, "front-proxy-ca.crt", "front-proxy-ca.key"),
    (PURPOSE_SERVICE_ACCOUNT, "sa.pub", "sa.key"),
)

# CAPI User field -> cloud-init users key (CABPK's users template).
_USER_KEYS = (
    ("name", "name"), ("gecos", "gecos"), ("groups", "groups"), ("homeDir", "homedir"),
    ("inactive", "inactive"), ("shell", "shell"), ("passwd", "passwd"),
    ("primaryGroup", "primary_group"), ("lockPassword", "lock_passwd"), ("sudo", "sudo"),
    ("sshAuthorizedKeys", "ssh_authorized_keys"),
)

# CAPI File field -> cloud-init write_files key.
_FILE_KEYS = (("owner", "owner"), ("permissions", "permissions"), ("encoding", "encoding"),
              ("append", "append"))


class BootstrapError(ValueError):
    """The bootstrap data cannot be rendered; a spec change (or missing data) must fix it."""


@dataclass(frozen=True)
class BootstrapInput:
    """Everything one machine's cloud-config is made from.

    ``spec`` is the KubeadmConfig spec in CAPI's bootstrap v1beta1 shape;
    ``certificates`` (init and control-plane joins only) maps CAPI's purposes
    ``ca``/``etcd``/``proxy``/``sa`` to key pairs; ``files_from_secrets``
    holds the resolved ``contentFrom.secret`` and ``passwdFrom.secret``
    values, keyed by (secret name, key). ``node_name`` (when given) becomes
    ``nodeRegistration.name``.
    """

    role: str
    cluster_name: str
    kubernetes_version: str
    endpoint_host: str
    endpoint_port: int
    pod_cidrs: tuple[str, ...]
    service_cidrs: tuple[str, ...]
    service_domain: str
    spec: Mapping[str, Any]
    certificates: Mapping[str, KeyPair]
    bootstrap_token: str
    ca_cert_hashes: tuple[str, ...]
    ssh_public_key: str
    files_from_secrets: Mapping[tuple[str, str], str] = field(default_factory=dict)
    node_name: str = ""

    @property
    def control_plane_endpoint(self) -> str:
        host = self.endpoint_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.endpoint_port}"


def render_cloud_config(inp: BootstrapInput, *, templates_dir: Path = DEFAULT_TEMPLATES_DIR) -> str:
    """The user-data for one machine: ``## template: jinja``, ``#cloud-config`` and one
    YAML document.

    Raises :class:`BootstrapError` or :class:`kubeadm.KubeadmConfigError`
    (both ``ValueError``) when the spec or the input cannot be rendered.
    """
    if inp.role not in ROLES:
        raise BootstrapError(f"unknown bootstrap role {inp.role!r}; expected one of {', '.join(ROLES)}")
    key = inp.ssh_public_key.strip()
    if not key or "\n" in key:
        raise BootstrapError("the cluster's SSH public key must be one non-empty line")
    spec = inp.spec or {}

    write_files: list[dict[str, Any]] = []
    if inp.role in (ROLE_INIT, ROLE_JOIN_CONTROL_PLANE):
        write_files += _certificate_files(inp.certificates, _certificates_dir(spec))
    for index, user_file in enumerate(spec.get("files") or []):
        write_files.append(_write_file(user_file, inp.files_from_secrets, index))
    script = (Path(templates_dir) / BOOTSTRAP_SCRIPT_TEMPLATE).read_text()
    write_files.append({"path": BOOTSTRAP_SCRIPT_PATH, "owner": "root:root",
                        "permissions": "0755", "content": script})
    config_path, config_text = _kubeadm_config(inp, spec)
    write_files.append({"path": config_path, "owner": "root:root", "permissions": "0640",
                        "content": config_text})

    cloud_config: dict[str, Any] = {"write_files": write_files}
    if spec.get("bootCommands"):
        cloud_config["bootcmd"] = list(spec["bootCommands"])
    step = f"{BOOTSTRAP_SCRIPT_PATH} {'init' if inp.role == ROLE_INIT else 'join'}"
    verbosity = spec.get("verbosity")
    if verbosity is not None:
        if not isinstance(verbosity, int) or isinstance(verbosity, bool) or verbosity < 0:
            raise BootstrapError("verbosity must be a non-negative integer")
        step += f" {verbosity}"
    cloud_config["runcmd"] = [*(spec.get("preKubeadmCommands") or []), f"{step} || exit 1",
                              *(spec.get("postKubeadmCommands") or [])]
    ntp = _ntp(spec.get("ntp"))
    if ntp:
        cloud_config["ntp"] = ntp
    cloud_config["users"] = _users(spec.get("users") or [], key, inp.files_from_secrets)
    disk_setup = spec.get("diskSetup") or {}
    if disk_setup.get("partitions"):
        cloud_config["disk_setup"] = _disk_setup(disk_setup["partitions"])
    if disk_setup.get("filesystems"):
        cloud_config["fs_setup"] = _fs_setup(disk_setup["filesystems"])
    if spec.get("mounts"):
        cloud_config["mounts"] = [list(m) for m in spec["mounts"]]
    body = dump_cloud_config(cloud_config)
    # As CABPK: cloud-init renders the user-data as a jinja template first, so the
    # ``{{ ds.meta_data.hostname }}`` of CAPV's templates becomes the node's name.
    return JINJA_HEADER + "\n#cloud-config\n" + body


def parse_report(line: str) -> dict[str, str] | None:
    """The last well-formed bootstrap report in a chunk of console text, or None.

    Console logs interleave kernel messages and carry garbage; a report that
    does not decode (cut off, overwritten) is skipped for the one before it.
    Returns ``{status, reason, message}``, strings without control characters
    (newlines and tabs kept in the message) and capped in length.
    """
    decoder = json.JSONDecoder()
    starts = [m.end() for m in re.finditer(re.escape(REPORT_PREFIX) + r"[ \t]*(?=\{)", line)]
    for start in reversed(starts):
        try:
            value, _ = decoder.raw_decode(line, start)
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue
        status = value.get("status")
        if status not in REPORT_STATUSES:
            continue
        return {
            "status": status,
            "reason": _clean(value.get("reason"), REPORT_FIELD_MAX, keep=""),
            "message": _clean(value.get("message"), REPORT_MESSAGE_MAX, keep="\n\t"),
        }
    return None


# -- pieces ----------------------------------------------------------------


def _kubeadm_config(inp: BootstrapInput, spec: Mapping[str, Any]) -> tuple[str, str]:
    if inp.role == ROLE_INIT:
        text = kubeadm.render_init_configuration(
            spec.get("clusterConfiguration"), spec.get("initConfiguration"),
            cluster_name=inp.cluster_name, kubernetes_version=inp.kubernetes_version,
            control_plane_endpoint=inp.control_plane_endpoint, pod_subnets=inp.pod_cidrs,
            service_subnets=inp.service_cidrs, dns_domain=inp.service_domain,
            bootstrap_token=inp.bootstrap_token, node_name=inp.node_name)
        return INIT_CONFIG_PATH, text
    text = kubeadm.render_join_configuration(
        spec.get("joinConfiguration"), kubernetes_version=inp.kubernetes_version,
        control_plane_endpoint=inp.control_plane_endpoint, bootstrap_token=inp.bootstrap_token,
        ca_cert_hashes=inp.ca_cert_hashes, control_plane=inp.role == ROLE_JOIN_CONTROL_PLANE,
        node_name=inp.node_name)
    return JOIN_CONFIG_PATH, text


def _certificates_dir(spec: Mapping[str, Any]) -> str:
    configured = (spec.get("clusterConfiguration") or {}).get("certificatesDir")
    return (configured or DEFAULT_CERTIFICATES_DIR).rstrip("/")


def _certificate_files(certificates: Mapping[str, KeyPair], directory: str) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    for purpose, cert_file, key_file in _CERT_FILES:
        pair = certificates.get(purpose)
        if pair is None or not pair.cert or not pair.key:
            raise BootstrapError(f"the cluster's {purpose!r} certificate and key are missing")
        files.append({"path": f"{directory}/{cert_file}", "owner": "root:root",
                      "permissions": "0640", "content": pair.cert.decode()})
        files.append({"path": f"{directory}/{key_file}", "owner": "root:root",
                      "permissions": "0600", "content": pair.key.decode()})
    return files


def _write_file(user_file: Mapping[str, Any], from_secrets: Mapping[tuple[str, str], str],
                index: int) -> dict[str, Any]:
    path = user_file.get("path")
    if not path:
        raise BootstrapError(f"files[{index}]: path is required")
    out: dict[str, Any] = {"path": path}
    for capi_key, cloud_init_key in _FILE_KEYS:
        value = user_file.get(capi_key)
        if value not in (None, "", False):
            out[cloud_init_key] = value
    source = (user_file.get("contentFrom") or {}).get("secret")
    if source:
        out["content"] = _from_secret(source, from_secrets, f"files[{index}] ({path})")
    else:
        out["content"] = user_file.get("content") or ""
    return out


def _users(users: list[Mapping[str, Any]], ssh_public_key: str,
           from_secrets: Mapping[tuple[str, str], str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    extra_keys: list[str] = []
    for index, user in enumerate(users):
        if user.get("name") == VSPHERE_USER:
            # The vSphere user is ours; only its extra SSH keys are kept.
            extra_keys += [k for k in user.get("sshAuthorizedKeys") or [] if k != ssh_public_key]
            continue
        converted: dict[str, Any] = {}
        for capi_key, cloud_init_key in _USER_KEYS:
            value = user.get(capi_key)
            if value is None or value == "" or value == []:
                continue
            converted[cloud_init_key] = list(value) if isinstance(value, list) else value
        source = (user.get("passwdFrom") or {}).get("secret")
        if source and "passwd" not in converted:
            converted["passwd"] = _from_secret(source, from_secrets, f"users[{index}].passwdFrom")
        if "name" not in converted:
            raise BootstrapError(f"users[{index}]: name is required")
        out.append(converted)
    out.append({"name": VSPHERE_USER, "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
                "lock_passwd": True, "ssh_authorized_keys": [ssh_public_key, *extra_keys]})
    return out


def _ntp(ntp: Mapping[str, Any] | None) -> dict[str, Any]:
    if not ntp:
        return {}
    out: dict[str, Any] = {}
    if ntp.get("enabled") is not None:
        out["enabled"] = bool(ntp["enabled"])
    if ntp.get("servers"):
        out["servers"] = list(ntp["servers"])
    return out


def _disk_setup(partitions: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in partitions:
        entry: dict[str, Any] = {"table_type": p.get("tableType") or "gpt",
                                 "layout": p.get("layout", True)}
        if p.get("overwrite") is not None:
            entry["overwrite"] = bool(p["overwrite"])
        out[p["device"]] = entry
    return out


def _fs_setup(filesystems: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    keys = (("label", "label"), ("filesystem", "filesystem"), ("device", "device"),
            ("partition", "partition"), ("overwrite", "overwrite"), ("replaceFS", "replace_fs"),
            ("extraOpts", "extra_opts"))
    return [{dst: fs[src] for src, dst in keys if fs.get(src) not in (None, "", [])}
            for fs in filesystems]


def _from_secret(source: Mapping[str, Any], from_secrets: Mapping[tuple[str, str], str],
                 where: str) -> str:
    ref = (str(source.get("name", "")), str(source.get("key", "")))
    if ref not in from_secrets:
        raise BootstrapError(f"{where}: secret {ref[0]!r} key {ref[1]!r} was not resolved")
    return from_secrets[ref]


def _clean(value: Any, limit: int, keep: str) -> str:
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    text = "".join(c for c in text if c in keep or (ord(c) >= 0x20 and ord(c) != 0x7F))
    return text[:limit]
