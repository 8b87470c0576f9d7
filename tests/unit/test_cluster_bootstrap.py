"""CABPK's bootstrap data: kubeadm documents, the cloud-config, the bootstrap script, its reports.

Golden files live in ``tests/unit/data/clusters``; regenerate them with
``UPDATE_GOLDEN=1`` and review the diff. Their certificates are fixed
test-only certificates (``data/clusters/pki-test-only``, public halves only;
the private keys are placeholders), so they are stable.

The bootstrap script is shell, so its tests run it with ``bash`` on a PATH
holding only the tools it needs plus fake kubeadm/kubelet/containerd, with
the console and the log redirected to files (``PACIFIC_REPORT_TO``,
``PACIFIC_KUBEADM_LOG``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.clusters import kubeadm
from appliance.clusters.bootstrap import (
    BOOTSTRAP_SCRIPT_PATH,
    DEFAULT_TEMPLATES_DIR,
    BootstrapError,
    BootstrapInput,
    parse_report,
    render_cloud_config,
)
from appliance.clusters.certs import KeyPair

DATA = Path(__file__).parent / "data"
GOLDEN_DIR = DATA / "clusters"
PKI = GOLDEN_DIR / "pki-test-only"
FIELDS = json.loads((DATA / "kubeadm_fields.json").read_text())
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
SCRIPT = DEFAULT_TEMPLATES_DIR / "clusters" / "kubeadm-bootstrap.sh"

TOKEN = "abcdef.0123456789abcdef"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPacificLabTestOnlyKey pacific-test-only"
CA_HASH = "sha256:0551e104d6155d01137d425183c1945b6c1668676b802ec4d98ad0f5a34e32bc"


def fixed_certificates() -> dict[str, KeyPair]:
    """Fixed public certificates; the private keys are placeholders (no private key is
    kept in the repository, and the renderer copies them as given)."""
    return {p: KeyPair((PKI / f"{p}.crt").read_bytes(),
                       f"-----BEGIN PRIVATE KEY-----\nTEST-PLACEHOLDER-{p}\n"
                       "-----END PRIVATE KEY-----\n".encode())
            for p in ("ca", "etcd", "proxy", "sa")}


INIT_SPEC: dict[str, Any] = {
    "clusterConfiguration": {
        "apiServer": {"extraArgs": {"cloud-provider": "external", "audit-log-maxage": "30"},
                      "certSANs": ["tkc-1.dev.pacific.internal"], "timeoutForControlPlane": "8m0s"},
        "controllerManager": {"extraArgs": {"cloud-provider": "external"}},
        "etcd": {"local": {"dataDir": "/var/lib/etcd", "extraArgs": {"election-timeout": "2500"}}},
        "dns": {"imageRepository": "registry.k8s.io/coredns", "imageTag": "v1.11.1"},
        "imageRepository": "registry.k8s.io",
    },
    "initConfiguration": {"nodeRegistration": {
        "criSocket": "unix:///run/containerd/containerd.sock",
        "kubeletExtraArgs": {"cloud-provider": "external",
                             "node-labels": "run.tanzu.vmware.com/tkr=v1.30.4"},
        "name": "{{ ds.meta_data.hostname }}"}},
    "files": [
        {"path": "/etc/pacific/registry-ca.crt", "owner": "root:root", "permissions": "0644",
         "content": "-----BEGIN CERTIFICATE-----\nTEST-ONLY\n-----END CERTIFICATE-----\n"},
        {"path": "/etc/pacific/proxy.env", "permissions": "0600",
         "contentFrom": {"secret": {"name": "tkc-1-proxy-env", "key": "env"}}},
        {"path": "/etc/pacific/motd", "encoding": "base64", "content": "aGVsbG8K", "append": True},
    ],
    "users": [{"name": "ops", "gecos": "Operations", "groups": "wheel,docker", "homeDir": "/home/ops",
               "inactive": False, "lockPassword": False, "shell": "/bin/bash",
               "primaryGroup": "ops", "sudo": "ALL=(ALL) NOPASSWD:ALL",
               "sshAuthorizedKeys": ["ssh-ed25519 AAAAopsTestOnly ops@example"]}],
    "ntp": {"enabled": True, "servers": ["time1.pacific.internal", "time2.pacific.internal"]},
    "preKubeadmCommands": ["hostnamectl set-hostname tkc-1-control-plane-x7k2p",
                           "echo pre >/tmp/pre"],
    "postKubeadmCommands": ["echo post >/tmp/post"],
}

JOIN_SPEC: dict[str, Any] = {
    "joinConfiguration": {
        "nodeRegistration": {"kubeletExtraArgs": {"node-labels": "pool=workers",
                                                  "cloud-provider": "external"},
                             "taints": []},
        "discovery": {"timeout": "6m0s"},
    },
    "ntp": {"servers": ["time1.pacific.internal"]},
    "preKubeadmCommands": ["echo pre"],
    "postKubeadmCommands": ["echo post"],
}


def init_input(**changes: Any) -> BootstrapInput:
    inp = BootstrapInput(
        role="init", cluster_name="tkc-1", kubernetes_version="v1.30.4+vmware.1",
        endpoint_host="198.18.128.10", endpoint_port=6443,
        pod_cidrs=("192.168.0.0/16", "fd00:10:244::/56"), service_cidrs=("10.96.0.0/12",),
        service_domain="cluster.local", spec=copy.deepcopy(INIT_SPEC),
        certificates=fixed_certificates(), bootstrap_token=TOKEN, ca_cert_hashes=(CA_HASH,),
        ssh_public_key=SSH_KEY,
        files_from_secrets={("tkc-1-proxy-env", "env"): "HTTPS_PROXY=http://proxy:3128\n"},
        node_name="tkc-1-control-plane-x7k2p")
    return replace(inp, **changes)


def worker_input(**changes: Any) -> BootstrapInput:
    inp = BootstrapInput(
        role="join-worker", cluster_name="tkc-1", kubernetes_version="v1.31.1",
        endpoint_host="198.18.128.10", endpoint_port=6443, pod_cidrs=("192.168.0.0/16",),
        service_cidrs=("10.96.0.0/12",), service_domain="cluster.local",
        spec=copy.deepcopy(JOIN_SPEC), certificates={}, bootstrap_token=TOKEN,
        ca_cert_hashes=(CA_HASH,), ssh_public_key=SSH_KEY, node_name="tkc-1-workers-q8f4z-abcde")
    return replace(inp, **changes)


def control_plane_join_input() -> BootstrapInput:
    return worker_input(role="join-control-plane", certificates=fixed_certificates(),
                        spec={"joinConfiguration": {"nodeRegistration": {}}},
                        node_name="tkc-1-control-plane-m2n4q")


def parsed(text: str) -> dict[str, Any]:
    # CABPK's header: cloud-init renders jinja ({{ ds.meta_data.hostname }}) first.
    assert text.startswith("## template: jinja\n#cloud-config\n")
    body = text.split("\n", 1)[1]
    for marker in ("{{", "{%", "{#"):  # nothing of ours that jinja would touch
        assert marker not in body.replace("{{ ds.meta_data.hostname }}", "").replace(
            "{{ local_hostname }}", ""), marker
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def files_by_path(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["write_files"]}


def kubeadm_docs(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    files = files_by_path(doc)
    path = "/run/kubeadm/kubeadm.yaml" if "/run/kubeadm/kubeadm.yaml" in files \
        else "/run/kubeadm/kubeadm-join-config.yaml"
    return list(yaml.safe_load_all(files[path]["content"]))


def unknown_fields(value: Any, struct: str, table: Mapping[str, Any], path: str) -> list[str]:
    """Keys under ``value`` that kubeadm's ``struct`` does not have, walking nested structs."""
    fields = table[struct]
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key} (not a field of {struct})")
            continue
        kind = fields[key]
        if kind is None or kind == "map":
            continue
        if kind.startswith("[]"):
            assert isinstance(item, list), f"{path}.{key} should be a list"
            for i, element in enumerate(item):
                problems += unknown_fields(element, kind[2:], table, f"{path}.{key}[{i}]")
        else:
            assert isinstance(item, dict), f"{path}.{key} should be an object"
            problems += unknown_fields(item, kind, table, f"{path}.{key}")
    return problems


def assert_kubeadm_fields(doc: Mapping[str, Any]) -> None:
    table = FIELDS[doc["apiVersion"]]
    assert unknown_fields(doc, doc["kind"], table, doc["kind"]) == []


# -- golden files ----------------------------------------------------------


GOLDEN: dict[str, Callable[[], BootstrapInput]] = {
    "init-v1.30-v1beta3.cloud-config.yaml": init_input,
    "join-worker-v1.31-v1beta4.cloud-config.yaml": worker_input,
    "join-control-plane-v1.31-v1beta4.cloud-config.yaml": control_plane_join_input,
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_cloud_config(name: str) -> None:
    text = render_cloud_config(GOLDEN[name]())
    path = GOLDEN_DIR / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{path} is stale; rerun with UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_kubeadm_key_is_a_kubeadm_field(name: str) -> None:
    docs = kubeadm_docs(parsed(render_cloud_config(GOLDEN[name]())))
    assert docs
    for doc in docs:
        assert_kubeadm_fields(doc)


# -- kubeadm documents -----------------------------------------------------


@pytest.mark.parametrize(("version", "expected"), [
    ("v1.22.0", kubeadm.V1BETA3), ("1.30.4", kubeadm.V1BETA3), ("v1.30.4+vmware.1", kubeadm.V1BETA3),
    ("v1.31.0", kubeadm.V1BETA4), ("v1.31.1+vmware.2-fips", kubeadm.V1BETA4),
    ("v1.33.0-rc.1", kubeadm.V1BETA4), ("v2.0.0", kubeadm.V1BETA4),
])
def test_kubeadm_api_version(version: str, expected: str) -> None:
    assert kubeadm.kubeadm_api_version(version) == expected


@pytest.mark.parametrize("version", ["v1.21.14", "latest", "", "v1"])
def test_kubeadm_api_version_rejects_old_or_unparsable_versions(version: str) -> None:
    with pytest.raises(kubeadm.KubeadmConfigError):
        kubeadm.kubeadm_api_version(version)


def test_init_v1beta3_fills_in_what_the_controllers_know() -> None:
    cluster, init = kubeadm_docs(parsed(render_cloud_config(init_input())))
    assert (cluster["apiVersion"], cluster["kind"]) == (kubeadm.V1BETA3, "ClusterConfiguration")
    assert (init["apiVersion"], init["kind"]) == (kubeadm.V1BETA3, "InitConfiguration")
    assert cluster["clusterName"] == "tkc-1"
    assert cluster["kubernetesVersion"] == "v1.30.4+vmware.1"
    assert cluster["controlPlaneEndpoint"] == "198.18.128.10:6443"
    assert cluster["networking"] == {"podSubnet": "192.168.0.0/16,fd00:10:244::/56",
                                     "serviceSubnet": "10.96.0.0/12", "dnsDomain": "cluster.local"}
    assert cluster["apiServer"]["extraArgs"] == {"audit-log-maxage": "30", "cloud-provider": "external"}
    assert cluster["apiServer"]["timeoutForControlPlane"] == "8m0s"
    assert cluster["scheduler"] == {}
    assert init["bootstrapTokens"] == [{
        "token": TOKEN, "ttl": "24h0m0s", "usages": ["signing", "authentication"],
        "groups": ["system:bootstrappers:kubeadm:default-node-token"]}]
    # the jinja placeholder is not rendered by a plain cloud-config: the known name replaces it
    assert init["nodeRegistration"]["name"] == "tkc-1-control-plane-x7k2p"
    assert init["nodeRegistration"]["kubeletExtraArgs"]["cloud-provider"] == "external"


def test_init_v1beta4_converts_args_and_moves_the_control_plane_timeout() -> None:
    cluster, init = kubeadm.init_documents(
        INIT_SPEC["clusterConfiguration"], INIT_SPEC["initConfiguration"], cluster_name="c",
        kubernetes_version="v1.31.0", control_plane_endpoint="h:6443", bootstrap_token=TOKEN)
    assert cluster["apiVersion"] == kubeadm.V1BETA4
    assert cluster["apiServer"]["extraArgs"] == [
        {"name": "audit-log-maxage", "value": "30"}, {"name": "cloud-provider", "value": "external"}]
    assert "timeoutForControlPlane" not in cluster["apiServer"]
    assert init["timeouts"] == {"controlPlaneComponentHealthCheck": "8m0s"}
    assert cluster["etcd"]["local"]["extraArgs"] == [{"name": "election-timeout", "value": "2500"}]
    assert init["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "cloud-provider", "value": "external"},
        {"name": "node-labels", "value": "run.tanzu.vmware.com/tkr=v1.30.4"}]
    for doc in (cluster, init):
        assert_kubeadm_fields(doc)


def test_user_settings_win_over_filled_in_values_and_tokens_are_not_duplicated() -> None:
    cluster, init = kubeadm.init_documents(
        {"clusterName": "mine", "controlPlaneEndpoint": "lb:443",
         "networking": {"podSubnet": "10.0.0.0/8"}},
        {"bootstrapTokens": [{"token": TOKEN, "ttl": "1h0m0s"}]},
        cluster_name="c", kubernetes_version="1.30.0", control_plane_endpoint="h:6443",
        pod_subnets=("192.168.0.0/16",), service_subnets=("10.96.0.0/12",), bootstrap_token=TOKEN)
    assert cluster["clusterName"] == "mine" and cluster["controlPlaneEndpoint"] == "lb:443"
    assert cluster["kubernetesVersion"] == "v1.30.0"
    assert cluster["networking"] == {"podSubnet": "10.0.0.0/8", "serviceSubnet": "10.96.0.0/12"}
    assert init["bootstrapTokens"] == [{"token": TOKEN, "ttl": "1h0m0s"}]


def test_v1beta3_drops_v1beta4_only_fields_and_maps_list_args() -> None:
    cluster, init = kubeadm.init_documents(
        {"apiServer": {"extraArgs": [{"name": "v", "value": "1"}, {"name": "v", "value": "2"}],
                       "extraEnvs": [{"name": "A", "value": "b"}]}},
        {"nodeRegistration": {"imagePullSerial": True}, "timeouts": {"kubeletHealthCheck": "1m"}},
        cluster_name="c", kubernetes_version="v1.29.0", control_plane_endpoint="h:6443")
    assert cluster["apiServer"] == {"extraArgs": {"v": "2"}}
    assert "timeouts" not in init and "imagePullSerial" not in init["nodeRegistration"]
    assert "bootstrapTokens" not in init


def test_worker_join_v1beta4_discovery_and_timeouts() -> None:
    [join] = kubeadm_docs(parsed(render_cloud_config(worker_input())))
    assert (join["apiVersion"], join["kind"]) == (kubeadm.V1BETA4, "JoinConfiguration")
    assert join["discovery"] == {"bootstrapToken": {
        "apiServerEndpoint": "198.18.128.10:6443", "token": TOKEN, "caCertHashes": [CA_HASH]}}
    assert join["timeouts"] == {"tlsBootstrap": "6m0s"}
    assert "controlPlane" not in join
    assert join["nodeRegistration"]["taints"] == []
    assert join["nodeRegistration"]["name"] == "tkc-1-workers-q8f4z-abcde"
    assert join["nodeRegistration"]["kubeletExtraArgs"] == [
        {"name": "cloud-provider", "value": "external"}, {"name": "node-labels", "value": "pool=workers"}]


def test_control_plane_join_has_control_plane_and_certificates() -> None:
    doc = parsed(render_cloud_config(control_plane_join_input()))
    [join] = kubeadm_docs(doc)
    assert join["controlPlane"] == {}
    assert "/etc/kubernetes/pki/ca.key" in files_by_path(doc)


def test_join_v1beta3_keeps_the_discovery_timeout_and_user_discovery_values() -> None:
    join = kubeadm.join_document(
        {"discovery": {"timeout": "5m0s", "bootstrapToken": {"apiServerEndpoint": "lb:443"}},
         "controlPlane": {"localAPIEndpoint": {"advertiseAddress": "10.0.0.5", "bindPort": 6443}}},
        kubernetes_version="v1.30.0", control_plane_endpoint="h:6443", bootstrap_token=TOKEN,
        ca_cert_hashes=[CA_HASH], control_plane=True)
    assert join["discovery"]["timeout"] == "5m0s"
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "lb:443"
    assert join["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": "10.0.0.5",
                                                         "bindPort": 6443}}
    assert_kubeadm_fields(join)


def test_join_errors() -> None:
    common: dict[str, Any] = {"kubernetes_version": "v1.31.0", "control_plane_endpoint": "h:6443"}
    with pytest.raises(kubeadm.KubeadmConfigError, match="controlPlane is set"):
        kubeadm.join_document({"controlPlane": {}}, bootstrap_token=TOKEN, ca_cert_hashes=[CA_HASH],
                              control_plane=False, **common)
    with pytest.raises(kubeadm.KubeadmConfigError, match="CA cert hashes"):
        kubeadm.join_document(None, bootstrap_token=TOKEN, ca_cert_hashes=[], control_plane=False,
                              **common)
    with pytest.raises(kubeadm.KubeadmConfigError, match="bootstrap token"):
        kubeadm.join_document(None, bootstrap_token="", ca_cert_hashes=[CA_HASH],
                              control_plane=False, **common)
    with pytest.raises(kubeadm.KubeadmConfigError, match="form"):
        kubeadm.join_document(None, bootstrap_token="NOT-A-TOKEN", ca_cert_hashes=[CA_HASH],
                              control_plane=False, **common)
    unsafe = kubeadm.join_document(
        {"discovery": {"bootstrapToken": {"unsafeSkipCAVerification": True}}},
        bootstrap_token=TOKEN, ca_cert_hashes=[], control_plane=False, **common)
    assert unsafe["discovery"]["bootstrapToken"]["unsafeSkipCAVerification"] is True


def test_kubeadm_documents_drop_capi_only_fields() -> None:
    join = kubeadm.join_document(
        {"discovery": {"file": {"kubeConfigPath": "/etc/kubernetes/discovery.conf",
                                "kubeConfig": {"cluster": {"server": "https://x"}}},
                       "tlsBootstrapToken": TOKEN},
         "nodeRegistration": {"notAField": 1}},
        kubernetes_version="v1.31.0", control_plane_endpoint="h:6443", bootstrap_token=TOKEN,
        ca_cert_hashes=[CA_HASH], control_plane=False)
    assert join["discovery"] == {"file": {"kubeConfigPath": "/etc/kubernetes/discovery.conf"},
                                 "tlsBootstrapToken": TOKEN}
    assert_kubeadm_fields(join)


# -- the cloud-config ------------------------------------------------------


def test_certificates_are_written_as_capi_does_for_init_only_not_workers() -> None:
    files = files_by_path(parsed(render_cloud_config(init_input())))
    pki = fixed_certificates()
    expected = {"ca.crt": ("ca", "cert"), "ca.key": ("ca", "key"),
                "etcd/ca.crt": ("etcd", "cert"), "etcd/ca.key": ("etcd", "key"),
                "front-proxy-ca.crt": ("proxy", "cert"), "front-proxy-ca.key": ("proxy", "key"),
                "sa.pub": ("sa", "cert"), "sa.key": ("sa", "key")}
    for name, (purpose, part) in expected.items():
        f = files[f"/etc/kubernetes/pki/{name}"]
        assert f["owner"] == "root:root"
        assert f["permissions"] == ("0600" if part == "key" else "0640")
        assert f["content"].encode() == getattr(pki[purpose], part)
    worker = files_by_path(parsed(render_cloud_config(worker_input(certificates=pki))))
    assert not [p for p in worker if p.startswith("/etc/kubernetes/pki")]


def test_missing_certificates_fail_for_init() -> None:
    certificates = fixed_certificates()
    del certificates["sa"]
    with pytest.raises(BootstrapError, match="'sa'"):
        render_cloud_config(init_input(certificates=certificates))


def test_user_files_with_content_from_a_secret() -> None:
    files = files_by_path(parsed(render_cloud_config(init_input())))
    assert files["/etc/pacific/proxy.env"] == {
        "path": "/etc/pacific/proxy.env", "permissions": "0600",
        "content": "HTTPS_PROXY=http://proxy:3128\n"}
    assert files["/etc/pacific/motd"] == {"path": "/etc/pacific/motd", "encoding": "base64",
                                          "append": True, "content": "aGVsbG8K"}
    assert files["/etc/pacific/registry-ca.crt"]["owner"] == "root:root"
    with pytest.raises(BootstrapError, match="tkc-1-proxy-env"):
        render_cloud_config(init_input(files_from_secrets={}))


def test_users_are_converted_and_the_vsphere_user_is_always_there() -> None:
    users = parsed(render_cloud_config(init_input()))["users"]
    assert users == [
        {"name": "ops", "gecos": "Operations", "groups": "wheel,docker", "homedir": "/home/ops",
         "inactive": False, "shell": "/bin/bash", "primary_group": "ops", "lock_passwd": False,
         "sudo": "ALL=(ALL) NOPASSWD:ALL",
         "ssh_authorized_keys": ["ssh-ed25519 AAAAopsTestOnly ops@example"]},
        {"name": "vmware-system-user", "sudo": "ALL=(ALL) NOPASSWD:ALL", "shell": "/bin/bash",
         "lock_passwd": True, "ssh_authorized_keys": [SSH_KEY]},
    ]
    no_users = parsed(render_cloud_config(worker_input()))["users"]
    assert no_users == [users[1]]


def test_a_spec_vsphere_user_cannot_replace_the_cluster_key() -> None:
    spec = copy.deepcopy(JOIN_SPEC)
    spec["users"] = [{"name": "vmware-system-user", "shell": "/bin/sh",
                      "sshAuthorizedKeys": ["ssh-ed25519 AAAAextra extra"]}]
    users = parsed(render_cloud_config(worker_input(spec=spec)))["users"]
    assert users == [{"name": "vmware-system-user", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                      "shell": "/bin/bash", "lock_passwd": True,
                      "ssh_authorized_keys": [SSH_KEY, "ssh-ed25519 AAAAextra extra"]}]


def test_password_from_a_secret() -> None:
    spec = copy.deepcopy(JOIN_SPEC)
    spec["users"] = [{"name": "ops", "passwdFrom": {"secret": {"name": "pw", "key": "hash"}}}]
    users = parsed(render_cloud_config(worker_input(
        spec=spec, files_from_secrets={("pw", "hash"): "$6$salt$hash"})))["users"]
    assert users[0] == {"name": "ops", "passwd": "$6$salt$hash"}


def test_ntp() -> None:
    assert parsed(render_cloud_config(init_input()))["ntp"] == {
        "enabled": True, "servers": ["time1.pacific.internal", "time2.pacific.internal"]}
    assert parsed(render_cloud_config(worker_input()))["ntp"] == {"servers": ["time1.pacific.internal"]}
    spec = copy.deepcopy(JOIN_SPEC)
    del spec["ntp"]
    assert "ntp" not in parsed(render_cloud_config(worker_input(spec=spec)))


def test_runcmd_is_pre_then_one_bootstrap_step_then_post() -> None:
    doc = parsed(render_cloud_config(init_input()))
    assert doc["runcmd"] == ["hostnamectl set-hostname tkc-1-control-plane-x7k2p",
                             "echo pre >/tmp/pre",
                             f"{BOOTSTRAP_SCRIPT_PATH} init || exit 1",
                             "echo post >/tmp/post"]
    script = files_by_path(doc)[BOOTSTRAP_SCRIPT_PATH]
    assert script["permissions"] == "0755" and script["owner"] == "root:root"
    assert script["content"] == SCRIPT.read_text()
    join = parsed(render_cloud_config(worker_input()))["runcmd"]
    assert join == ["echo pre", f"{BOOTSTRAP_SCRIPT_PATH} join || exit 1", "echo post"]
    spec = copy.deepcopy(JOIN_SPEC)
    spec["verbosity"] = 5
    verbose = parsed(render_cloud_config(worker_input(spec=spec)))["runcmd"]
    assert verbose[1] == f"{BOOTSTRAP_SCRIPT_PATH} join 5 || exit 1"


def test_boot_commands_disks_and_mounts() -> None:
    spec = copy.deepcopy(JOIN_SPEC)
    spec.update(bootCommands=["echo boot"], mounts=[["LABEL=etcd", "/var/lib/etcd"]],
                diskSetup={"partitions": [{"device": "/dev/vdb", "layout": True,
                                           "overwrite": False, "tableType": "gpt"}],
                           "filesystems": [{"device": "/dev/vdb1", "filesystem": "ext4",
                                            "label": "etcd", "extraOpts": ["-F"]}]})
    doc = parsed(render_cloud_config(worker_input(spec=spec)))
    assert doc["bootcmd"] == ["echo boot"]
    assert doc["mounts"] == [["LABEL=etcd", "/var/lib/etcd"]]
    assert doc["disk_setup"] == {"/dev/vdb": {"table_type": "gpt", "layout": True, "overwrite": False}}
    assert doc["fs_setup"] == [{"label": "etcd", "filesystem": "ext4", "device": "/dev/vdb1",
                                "extra_opts": ["-F"]}]


@pytest.mark.parametrize(("changes", "match"), [
    ({"role": "join"}, "unknown bootstrap role"),
    ({"ssh_public_key": ""}, "SSH public key"),
    ({"ssh_public_key": "a\nb"}, "SSH public key"),
])
def test_bad_input(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(BootstrapError, match=match):
        render_cloud_config(worker_input(**changes))


def test_ipv6_endpoint_is_bracketed() -> None:
    [join] = kubeadm_docs(parsed(render_cloud_config(worker_input(endpoint_host="fd00::10"))))
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "[fd00::10]:6443"


# -- parse_report ----------------------------------------------------------


def test_parse_report_finds_the_last_report_in_console_garbage() -> None:
    console = (
        "[    1.234] random: crng init done\r\n\x1b[0m"
        'PACIFIC-BOOTSTRAP {"status": "Running", "reason": "BootstrapStarted", "message": "a"}\r\n'
        "[   12.000] EXT4-fs (vda1): mounted\r\n\x00\xff garbage {not json}\r\n"
        'PACIFIC-BOOTSTRAP {"status": "Failed", "reason": "KubeadmNotFound", '
        '"message": "no \\"kubeadm\\"\\nhere"}'
        "[   13.5] trailing kernel line\r\n"
    )
    assert parse_report(console) == {"status": "Failed", "reason": "KubeadmNotFound",
                                     "message": 'no "kubeadm"\nhere'}


def test_parse_report_skips_broken_reports() -> None:
    good = 'PACIFIC-BOOTSTRAP {"status": "Running", "reason": "BootstrapStarted", "message": ""}\n'
    cut = 'PACIFIC-BOOTSTRAP {"status": "Succeeded", "reason": "Kubead[  99.1] kernel: oops\n'
    assert parse_report(good + cut) == {"status": "Running", "reason": "BootstrapStarted",
                                        "message": ""}
    assert parse_report(cut) is None
    assert parse_report("") is None
    assert parse_report("PACIFIC-BOOTSTRAP []") is None
    assert parse_report('PACIFIC-BOOTSTRAP {"status": "Exploded"}') is None
    assert parse_report('PACIFIC-BOOTSTRAP {"status": "Succeeded"}') == {
        "status": "Succeeded", "reason": "", "message": ""}


def test_parse_report_caps_and_cleans_strings() -> None:
    report = {"status": "Failed", "reason": "R" * 500 + "\x07", "message": "m\x1b[31m" + "x" * 5000}
    result = parse_report("PACIFIC-BOOTSTRAP " + json.dumps(report))
    assert result is not None
    assert result["reason"] == "R" * 64
    assert len(result["message"]) == 300 and "\x1b" not in result["message"]
    assert parse_report('PACIFIC-BOOTSTRAP {"status": "Failed", "reason": 7, "message": null}') == {
        "status": "Failed", "reason": "7", "message": ""}


# -- the bootstrap script --------------------------------------------------


def test_script_syntax(tmp_path: Path) -> None:
    copy_path = tmp_path / "pacific-kubeadm-bootstrap"
    copy_path.write_text(SCRIPT.read_text())
    subprocess.run([_bash(), "-n", str(copy_path)], check=True, timeout=30)


def _bash() -> str:
    bash = shutil.which("bash")
    assert bash is not None
    return bash


class FakeNode:
    """A hermetic PATH: the script's tools, plus fakes for what a node image has."""

    TOOLS = ("cat", "grep", "mkdir", "mktemp", "rm", "tail", "tr")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for tool in self.TOOLS:
            found = shutil.which(tool)
            assert found is not None, tool
            (self.bin / tool).symlink_to(found)
        self.console = root / "console"
        self.log = root / "kubeadm.log"
        self.calls = root / "calls"

    def fake(self, name: str, body: str = "exit 0") -> None:
        path = self.bin / name
        path.write_text(f"#!{_bash()}\necho \"{name} $*\" >>{self.calls}\n{body}\n")
        path.chmod(0o755)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": str(self.bin), "PACIFIC_REPORT_TO": str(self.console),
               "PACIFIC_KUBEADM_LOG": str(self.log), "LC_ALL": "C.UTF-8"}
        return subprocess.run([_bash(), str(SCRIPT), *args], env=env, cwd=self.root,
                              capture_output=True, text=True, timeout=60)

    def reports(self) -> list[dict[str, Any]]:
        lines = self.console.read_text().splitlines()
        assert all(line.startswith("PACIFIC-BOOTSTRAP {") for line in lines)
        return [json.loads(line.split(" ", 1)[1]) for line in lines]

    def call_lines(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path)


def test_script_reports_kubeadm_not_found(node: FakeNode) -> None:
    result = node.run("init")
    assert result.returncode == 1
    assert [r["status"] for r in node.reports()] == ["Running", "Failed"]
    report = parse_report(node.console.read_text())
    assert report == {
        "status": "Failed", "reason": "KubeadmNotFound",
        "message": "kubeadm is not installed in the node image (no kubeadm on PATH); "
                   "use a node image from a Ready TanzuKubernetesRelease"}


@pytest.mark.parametrize(("present", "reason"), [
    (("kubeadm",), "KubeletNotFound"),
    (("kubeadm", "kubelet"), "ContainerRuntimeNotFound"),
])
def test_script_checks_kubelet_and_containerd(node: FakeNode, present: tuple[str, ...],
                                              reason: str) -> None:
    for name in present:
        node.fake(name)
    assert node.run("join").returncode == 1
    report = parse_report(node.console.read_text())
    assert report is not None and (report["status"], report["reason"]) == ("Failed", reason)
    assert not any(line.startswith("kubeadm join") for line in node.call_lines())


def test_script_reports_init_failure_with_exit_code_and_escaped_last_line(node: FakeNode) -> None:
    node.fake("kubelet")
    node.fake("containerd")
    node.fake("kubeadm", 'echo "[preflight] Running pre-flight checks"\n'
                         "printf 'error execution phase \"wait\": path C:\\\\x\\ttab\\n\\n'\n"
                         "exit 7")
    assert node.run("init").returncode == 1
    assert node.call_lines() == ["kubeadm init --config /run/kubeadm/kubeadm.yaml"]
    report = parse_report(node.console.read_text())
    assert report == {"status": "Failed", "reason": "KubeadmInitFailed",
                      "message": 'kubeadm init failed with exit code 7: '
                                 'error execution phase "wait": path C:\\x\ttab'}
    assert "Running pre-flight checks" in node.log.read_text()
    assert node.log.stat().st_mode & 0o777 == 0o600  # kubeadm's output can hold the token


def test_script_retries_join_with_reset_in_between_then_fails(node: FakeNode) -> None:
    node.fake("kubelet")
    node.fake("containerd")
    node.fake("sleep")
    node.fake("kubeadm", '[ "$1" = join ] && { echo "couldn'"'"'t validate the identity"; exit 1; }\nexit 0')
    assert node.run("join", "5").returncode == 1
    calls = node.call_lines()
    joins = [c for c in calls if c.startswith("kubeadm join")]
    assert joins == ["kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml --v=5"] * 5
    assert calls.count("kubeadm reset -f") == 4 and calls.count("sleep 15") == 4
    reports = node.reports()
    assert [r["reason"] for r in reports] == ["BootstrapStarted"] + ["KubeadmJoinRetrying"] * 4 + [
        "KubeadmJoinFailed"]
    assert parse_report(node.console.read_text()) == {
        "status": "Failed", "reason": "KubeadmJoinFailed",
        "message": "kubeadm join failed 5 times, last with exit code 1: couldn't validate the identity"}


def test_script_does_not_retry_an_invalid_join_configuration(node: FakeNode) -> None:
    for name in ("kubelet", "containerd", "sleep"):
        node.fake(name)
    node.fake("kubeadm", 'echo "unknown field"; exit 3')
    assert node.run("join").returncode == 1
    assert len([c for c in node.call_lines() if c.startswith("kubeadm join")]) == 1
    report = parse_report(node.console.read_text())
    assert report is not None and report["reason"] == "KubeadmJoinFailed"
    assert "exit code 3" in report["message"]


def test_script_caps_long_messages(node: FakeNode) -> None:
    for name in ("kubelet", "containerd"):
        node.fake(name)
    node.fake("kubeadm", "printf '%0800d\\n' 0; exit 1")
    node.run("init")
    line = node.console.read_text().splitlines()[-1]
    report = json.loads(line.split(" ", 1)[1])
    assert len(report["message"]) == 300 and report["message"].endswith("0" * 50)


def test_script_rejects_bad_arguments(node: FakeNode) -> None:
    assert node.run("upgrade").returncode == 1
    report = parse_report(node.console.read_text())
    assert report is not None and report["status"] == "Failed" and "usage" in report["message"]
    assert node.run("init", "5; rm -rf /").returncode == 1


def test_the_host_agent_keeps_a_jinja_cloud_config_renderable() -> None:
    """The host agent adds its own user to every VM's user-data and writes it out again;
    cloud-init then renders it with jinja. Nothing may fold a line inside ``{{ }}``
    (a worker's data once came out as ``{{\\`` and cloud-init ignored all of it)."""
    import jinja2

    from appliance.agent.vms import with_user

    text = render_cloud_config(worker_input())
    merged = with_user(text, {"name": "pacific", "ssh_authorized_keys": ["ssh-ed25519 X"]})
    header, body = merged.split("\n", 1)
    assert header == "## template: jinja"
    rendered = jinja2.Template(body).render(ds={"meta_data": {"hostname": "node-1"}},
                                            local_hostname="node-1")
    doc = yaml.safe_load(rendered)
    assert [u["name"] for u in doc["users"]][-2:] == ["vmware-system-user", "pacific"]
    assert doc["runcmd"][-1] == ["sync"]
    join = next(f for f in doc["write_files"] if f["path"].endswith("kubeadm-join-config.yaml"))
    assert "{{" not in join["content"] and "tkc-1-workers-q8f4z-abcde" in join["content"]
