"""The control-plane VMs' configuration: the plan, its secrets, and what each VM's cloud-init
writes (rendered here, checked by the real tools in tests/e2e/test_controlplane_config.py)."""

from __future__ import annotations

import base64
import configparser
import ipaddress
import json
import logging
import re
import stat
from pathlib import Path

import psycopg.conninfo
import pytest
import yaml
from sqlalchemy.engine import make_url

from appliance.controlplane import config
from appliance.controlplane.config import (KEEPALIVED_CONF, LAB_ENV, LAB_UNIT, PATRONI_CONFIG,
                                           POST_BOOTSTRAP, SERVICES, Member, PkiFiles, Plan,
                                           PlanError, Secrets, meta_data, network_config,
                                           plan_for, render_member, shared_settings,
                                           user_data)
from appliance.controllers.scheduler import free_appliance_address
from appliance.pki import ensure_pki
from appliance.settings import load_settings
from appliance.store.db import make_engine

CIDR = "198.18.0.0/24"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9g7Fz5n0m2r7fQ3oYvY7pQnSx1dJq8xv2kq6n4ZkT1 lab@host"
ETCD_ENV = "/etc/default/etcd"
PKI = "/var/lib/pacific-lab/pki"
# Which files may hold which secret; nothing else may hold any.
SECRET_FILES = {
    "postgres_password": {PATRONI_CONFIG},
    "replication_password": {PATRONI_CONFIG},
    "pacific_password": {POST_BOOTSTRAP, LAB_ENV},
    "vrrp_password": {KEEPALIVED_CONF},
    "patroni_api_password": {PATRONI_CONFIG},
    "etcd_token": {ETCD_ENV},
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiFiles:
    made = ensure_pki(tmp_path_factory.mktemp("pki"), ["pacific-lab"], ["198.18.0.5"])
    return PkiFiles.read(made)


def plan(n: int, tmp_path: Path) -> Plan:
    return plan_for(n, CIDR, tmp_path / "state")


def env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile of KEY="value" lines (what the templates write)."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert value.startswith('"') and value.endswith('"'), line
            values[key] = value[1:-1]
    return values


def keepalived_block(text: str, name: str) -> list[str]:
    """The words of a ``name { ... }`` block of keepalived.conf (no nesting inside)."""
    match = re.search(rf"\b{name} \{{([^{{}}]*)\}}", text)
    assert match, name
    return match.group(1).split()


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


# -- the plan -----------------------------------------------------------------------------------


def test_three_members_take_addresses_the_scheduler_never_hands_out(tmp_path: Path) -> None:
    p = plan(3, tmp_path)
    assert [(m.name, m.address) for m in p.members] == [
        ("pacific-cp-1", "198.18.0.6"), ("pacific-cp-2", "198.18.0.7"),
        ("pacific-cp-3", "198.18.0.8")]
    assert (p.vip, p.prefix_length, p.gateway, p.interface) == ("198.18.0.5", 24, "198.18.0.1",
                                                                 "eth0")
    network = ipaddress.ip_network(CIDR)
    first_scheduled = free_appliance_address(network, set())
    assert first_scheduled == "198.18.0.10"
    for address in (p.vip, *(m.address for m in p.members)):
        assert ipaddress.ip_address(p.gateway) < ipaddress.ip_address(address) \
            < ipaddress.ip_address(first_scheduled)
    macs = [m.mac for m in p.members]
    assert len(set(macs)) == 3 and all(re.match(r"^52:54:00(:[0-9a-f]{2}){3}$", m) for m in macs)
    assert plan(3, tmp_path) == p  # the same plan again, secrets and all


def test_one_member(tmp_path: Path) -> None:
    p = plan(1, tmp_path)
    assert [(m.name, m.address) for m in p.members] == [("pacific-cp-1", "198.18.0.6")]
    assert p.vip == "198.18.0.5" and p.size == 1


def test_other_networks(tmp_path: Path) -> None:
    p = plan_for(3, "10.77.4.0/28", tmp_path)
    assert (p.vip, p.gateway, [m.address for m in p.members]) == (
        "10.77.4.5", "10.77.4.1", ["10.77.4.6", "10.77.4.7", "10.77.4.8"])
    for cidr in ("10.77.4.0/29", "fd00::/64", "10.77.4.1/24", "nonsense"):
        with pytest.raises(PlanError):
            plan_for(3, cidr, tmp_path)


@pytest.mark.parametrize("n", [0, 2, 4, 5])
def test_only_one_or_three_members(n: int, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=f"1 or 3 VMs, not {n}"):
        plan_for(n, CIDR, tmp_path)
    three = plan(3, tmp_path)
    if n:
        members = tuple(Member(config.member_name(i), f"198.18.0.{20 + i}",
                               config.mac_for(config.member_name(i))) for i in range(n))
        with pytest.raises(PlanError, match="1 or 3 VMs"):
            Plan(members, three.vip, 24, three.gateway, three.secrets)


def test_a_plan_checks_its_addresses_and_names(tmp_path: Path) -> None:
    p = plan(3, tmp_path)
    m = p.members
    for bad in ({"vip": "198.18.1.5"}, {"vip": m[0].address}, {"gateway": "10.0.0.1"},
                {"members": (m[0], m[0], m[2])}, {"interface": "eth0; reboot"},
                {"virtual_router_id": 0}, {"members": m[:2]}):
        with pytest.raises(PlanError):
            Plan(**{"members": m, "vip": p.vip, "prefix_length": 24, "gateway": p.gateway,
                    "secrets": p.secrets, **bad})  # type: ignore[arg-type]
    for name, address, mac in (("CP_1", "198.18.0.6", m[0].mac), ("cp-1", "::1", m[0].mac),
                               ("cp-1", "198.18.0.6", "00:11:22:33:44:55")):
        with pytest.raises(PlanError):
            Member(name, address, mac)
    with pytest.raises(PlanError, match="no member 3"):
        p.member(3)


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_are_kept_0600_and_loaded_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = Secrets.load_or_create(state)
    path = state / Secrets.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == first.values()
    assert Secrets.load_or_create(state) == first
    assert plan_for(3, CIDR, state).secrets == first
    values = first.values()
    assert len(set(values.values())) == len(values)  # each made on its own
    assert len(first.vrrp_password) == 8  # keepalived's PASS authentication uses 8 at most
    for name, value in values.items():
        assert re.match(r"^[A-Za-z0-9_-]+$", value), name
        assert len(value) >= (8 if name == "vrrp_password" else 22), name
    assert Secrets.load_or_create(tmp_path / "other") != first  # another install


def test_a_secrets_file_readable_by_others_is_made_0600(tmp_path: Path) -> None:
    first = Secrets.load_or_create(tmp_path)
    path = tmp_path / Secrets.FILE_NAME
    path.chmod(0o644)
    assert Secrets.load_or_create(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_broken_secrets_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / Secrets.FILE_NAME
    for text, message in (("{not json", "is not JSON"), ('{"etcd_token": "abcdefgh"}', "keys"),
                          (json.dumps({**Secrets.generate().values(), "vrrp_password": "x" * 9}),
                           "longer than 8"),
                          (json.dumps({**Secrets.generate().values(), "etcd_token": "a b c d e"}),
                           "URL-safe")):
        path.write_text(text)
        path.chmod(0o600)
        with pytest.raises(PlanError, match=message):
            Secrets.load_or_create(tmp_path)
        assert path.read_text() == text
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(OSError):
        Secrets.load_or_create(tmp_path)
    assert not (tmp_path / "elsewhere.json").exists()


def test_two_callers_at_once_share_one_set_of_secrets(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    theirs = Secrets.generate()
    real_generate = Secrets.generate

    def generate_while_another_caller_writes() -> Secrets:
        (tmp_path / Secrets.FILE_NAME).write_text(json.dumps(theirs.values()))
        (tmp_path / Secrets.FILE_NAME).chmod(0o600)
        return real_generate()
    monkeypatch.setattr(Secrets, "generate", staticmethod(generate_while_another_caller_writes))
    assert Secrets.load_or_create(tmp_path) == theirs
    assert [p.name for p in tmp_path.iterdir()] == [Secrets.FILE_NAME]  # no temporary file left


def test_repr_hides_the_secrets(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    for text in (repr(p), str(p), repr(p.secrets), str(p.secrets), f"{p}", repr(pki)):
        for value in p.secrets.values().values():
            assert value not in text
        assert pki.server_key not in text
    assert "vrrp_password=<hidden>" in repr(p.secrets)
    assert "server_key=<hidden>" in repr(pki)


# -- the files ----------------------------------------------------------------------------------


def test_every_member_gets_the_same_set_of_files(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    expected = {ETCD_ENV: (0o600, "root:root"), PATRONI_CONFIG: (0o600, "postgres:postgres"),
                POST_BOOTSTRAP: (0o700, "postgres:postgres"),
                "/etc/systemd/system/patroni.service.d/pacific-lab.conf": (0o644, "root:root"),
                KEEPALIVED_CONF: (0o600, "root:root"),
                "/etc/keepalived/supervisor-ready": (0o755, "root:root"),
                LAB_ENV: (0o600, "root:root"), LAB_UNIT: (0o644, "root:root"),
                f"{PKI}/ca.crt": (0o644, "root:root"), f"{PKI}/server.crt": (0o644, "root:root"),
                f"{PKI}/server.key": (0o600, "root:root")}
    for index in range(3):
        files = render_member(p, index, pki)
        assert {path: (f.mode, f.owner) for path, f in files.items()} == expected
        assert files[f"{PKI}/server.key"].content == pki.server_key
        assert files[f"{PKI}/ca.crt"].content == pki.ca_cert
        for path, f in files.items():
            assert f.content.endswith("\n"), path
            if not path.startswith(PKI):
                assert p.members[index].name in f.content, path  # says whose it is


def test_etcd_lists_every_member(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    cluster = ",".join(f"{m.name}=http://{m.address}:2380" for m in p.members)
    for index, member in enumerate(p.members):
        env = env_file(render_member(p, index, pki)[ETCD_ENV].content)
        assert env == {
            "ETCD_NAME": member.name, "ETCD_DATA_DIR": "/var/lib/etcd/pacific-lab",
            "ETCD_LISTEN_PEER_URLS": f"http://{member.address}:2380",
            "ETCD_LISTEN_CLIENT_URLS": f"http://{member.address}:2379,http://127.0.0.1:2379",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"http://{member.address}:2380",
            "ETCD_ADVERTISE_CLIENT_URLS": f"http://{member.address}:2379",
            "ETCD_INITIAL_CLUSTER": cluster, "ETCD_INITIAL_CLUSTER_STATE": "new",
            "ETCD_INITIAL_CLUSTER_TOKEN": p.secrets.etcd_token, "ETCD_ENABLE_V2": "false",
                "ETCD_HEARTBEAT_INTERVAL": "500", "ETCD_ELECTION_TIMEOUT": "5000"}


def test_patroni_three_members_synchronous(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    s = p.secrets
    for index, member in enumerate(p.members):
        doc = yaml.safe_load(render_member(p, index, pki)[PATRONI_CONFIG].content)
        assert doc["scope"] == "pacific-lab" and doc["name"] == member.name
        assert doc["restapi"] == {"listen": "0.0.0.0:8008",
                                  "connect_address": f"{member.address}:8008",
                                  "authentication": {"username": "patroni",
                                                     "password": s.patroni_api_password}}
        assert doc["etcd3"] == {"hosts": [f"{m.address}:2379" for m in p.members]}
        dcs = doc["bootstrap"]["dcs"]
        assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
        assert dcs["synchronous_node_count"] == 1 and dcs["failsafe_mode"] is True
        assert dcs["postgresql"]["use_pg_rewind"] is True
        assert dcs["postgresql"]["parameters"] == {
            "wal_level": "replica", "hot_standby": "on", "synchronous_commit": "on",
            "max_wal_senders": 10, "max_replication_slots": 10,
            "password_encryption": "scram-sha-256", "max_connections": 200}
        assert doc["bootstrap"]["post_bootstrap"] == POST_BOOTSTRAP
        assert "users" not in doc["bootstrap"]
        pg = doc["postgresql"]
        assert (pg["listen"], pg["connect_address"], pg["data_dir"], pg["bin_dir"]) == (
            "0.0.0.0:5432", f"{member.address}:5432", "/var/lib/postgresql/15/pacific",
            "/usr/lib/postgresql/15/bin")
        assert pg["authentication"] == {
            "superuser": {"username": "postgres", "password": s.postgres_password},
            "replication": {"username": "replicator", "password": s.replication_password},
            "rewind": {"username": "postgres", "password": s.postgres_password}}
        # a dead VM's connections are dropped within about 25 s
        assert pg["parameters"] == {"unix_socket_directories": "/var/run/postgresql",
                                    "tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5,
                                    "tcp_keepalives_count": 3}
        assert pg["basebackup"] == {"checkpoint": "fast"}
        assert pg["pg_hba"] == doc["bootstrap"]["pg_hba"]
        hba = [line.split() for line in pg["pg_hba"]]
        assert ["host", "pacific", "pacific", CIDR, "scram-sha-256"] in hba
        assert ["host", "replication", "replicator", "127.0.0.1/32", "scram-sha-256"] in hba
        for m in p.members:
            assert ["host", "replication", "replicator", f"{m.address}/32",
                    "scram-sha-256"] in hba
        assert all(line[-1] in ("scram-sha-256", "peer") for line in hba)
        assert [line for line in hba if line[-1] == "peer"] == [["local", "all", "postgres",
                                                                 "peer"]]
        assert doc["watchdog"] == {"mode": "off"}


def test_patroni_one_member_is_not_synchronous(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(1, tmp_path)
    doc = yaml.safe_load(render_member(p, 0, pki)[PATRONI_CONFIG].content)
    dcs = doc["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is False and dcs["failsafe_mode"] is True
    assert "synchronous_mode_strict" not in dcs
    assert dcs["postgresql"]["parameters"]["synchronous_commit"] == "on"
    assert doc["etcd3"] == {"hosts": ["198.18.0.6:2379"]}


def test_post_bootstrap_makes_the_role_and_database(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    script = render_member(p, 0, pki)[POST_BOOTSTRAP].content
    assert script.startswith("#!/bin/sh\n")
    assert "--dbname=\"$1\"" in script and "ON_ERROR_STOP=1" in script
    assert f"CREATE ROLE pacific LOGIN PASSWORD '{p.secrets.pacific_password}';" in script
    assert "CREATE DATABASE pacific OWNER pacific;" in script


def test_keepalived_priorities_peers_and_vip(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    priorities = []
    for index, member in enumerate(p.members):
        text = render_member(p, index, pki)[KEEPALIVED_CONF].content
        instance = text[text.index("vrrp_instance"):]
        words = dict(re.findall(r"^\s+(state|interface|virtual_router_id|priority|"
                                r"unicast_src_ip|advert_int) (\S+)$", instance, re.M))
        assert words == {"state": "BACKUP", "interface": "eth0", "virtual_router_id": "51",
                         "priority": str(150 - 10 * index), "unicast_src_ip": member.address,
                         "advert_int": "2"}
        priorities.append(int(words["priority"]))
        assert "nopreempt" in instance.split()
        assert keepalived_block(text, "unicast_peer") == [m.address for m in p.members
                                                          if m != member]
        assert keepalived_block(text, "authentication") == [
            "auth_type", "PASS", "auth_pass", p.secrets.vrrp_password]
        assert keepalived_block(text, "virtual_ipaddress") == ["198.18.0.5/24", "dev", "eth0"]
        assert keepalived_block(text, "track_script") == ["supervisor_ready"]
        assert 'script "/etc/keepalived/supervisor-ready"' in text
        assert "script_user nobody nogroup" in text and "enable_script_security" in text
    assert len(set(priorities)) == 3


def test_keepalived_alone_has_no_peers(tmp_path: Path, pki: PkiFiles) -> None:
    text = render_member(plan(1, tmp_path), 0, pki)[KEEPALIVED_CONF].content
    assert "unicast" not in text
    assert keepalived_block(text, "virtual_ipaddress") == ["198.18.0.5/24", "dev", "eth0"]


def test_the_ready_check_asks_the_local_supervisor(tmp_path: Path, pki: PkiFiles) -> None:
    script = render_member(plan(3, tmp_path), 0, pki)["/etc/keepalived/supervisor-ready"].content
    assert script.startswith("#!/usr/bin/python3 -IS\n")
    assert 'URL = "https://127.0.0.1:6443/readyz"' in script
    compile(script, "supervisor-ready", "exec")


def test_the_supervisor_settings_and_unit(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    files = render_member(p, 1, pki)
    env = env_file(files[LAB_ENV].content)
    assert env == {"LAB_STATE_DIR": "/var/lib/pacific-lab", "LAB_DATABASE_URL": p.database_url(),
                   "LAB_PUBLIC_HOST": "198.18.0.5", "LAB_API_PORT": "6443",
                   "LAB_APPLIANCE_CIDR": CIDR, "LAB_NETWORK_ENABLED": "false",
                   "LAB_REGISTRY_ENABLED": "false", "LAB_ROLE": "control-plane"}
    settings = load_settings(env)  # as the supervisor reads them
    assert settings.role == "control-plane"
    assert (settings.state_dir, settings.database_url, settings.public_host) == (
        Path("/var/lib/pacific-lab"), p.database_url(), "198.18.0.5")
    assert not settings.network_enabled and not settings.registry_enabled
    # With the host's settings: namespace networks and the lab's ranges as on the host.
    host = load_settings({"LAB_NETWORK_POOL_CIDR": "198.19.0.0/17"})
    shared = render_member(p, 1, pki, shared=shared_settings(host))[LAB_ENV].content
    vm = load_settings(env_file(shared))
    assert vm.network_enabled and vm.role == "control-plane"
    assert (vm.network_pool_cidr, vm.network_ingress_cidr, vm.network_cluster_ip_cidr) == (
        "198.19.0.0/17", host.network_ingress_cidr, host.network_cluster_ip_cidr)
    service = unit(files[LAB_UNIT].content)
    assert service["Unit"]["After"].split() == ["network-online.target", "patroni.service"]
    assert service["Service"]["ExecStart"] == "/opt/pacific-lab/.venv/bin/lab serve"
    assert service["Service"]["EnvironmentFile"] == LAB_ENV
    assert service["Service"]["Restart"] == "always"
    assert service["Install"]["WantedBy"] == "multi-user.target"
    dropin = unit(files["/etc/systemd/system/patroni.service.d/pacific-lab.conf"].content)
    assert dict(dropin["Unit"]) == {"Wants": "etcd.service", "After": "etcd.service"}


def test_the_database_url_parses_as_several_hosts(tmp_path: Path) -> None:
    p = plan(3, tmp_path)
    url = p.database_url()
    engine = make_engine(url)  # postgresql:// becomes postgresql+psycopg://; nothing connects
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.url.query["host"] == ("198.18.0.6:5432", "198.18.0.7:5432",
                                            "198.18.0.8:5432")
        args, kwargs = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    kwargs.pop("context", None)  # psycopg's adapters, not a libpq parameter
    conninfo = psycopg.conninfo.conninfo_to_dict(psycopg.conninfo.make_conninfo(*args, **kwargs))
    assert conninfo == {"host": "198.18.0.6,198.18.0.7,198.18.0.8", "port": "5432,5432,5432",
                        "dbname": "pacific", "user": "pacific",
                        "password": p.secrets.pacific_password,
                        "target_session_attrs": "read-write"}
    # libpq's own multi-host form is what SQLAlchemy's URL parser refuses
    with pytest.raises(ValueError):
        make_url("postgresql+psycopg://pacific:pw@198.18.0.6:5432,198.18.0.7:5432/pacific")
    one = plan(1, tmp_path / "one").database_url()
    assert make_url(one).query["host"] == "198.18.0.6:5432"


# -- cloud-init ---------------------------------------------------------------------------------


def test_user_data(tmp_path: Path, pki: PkiFiles) -> None:
    p = plan(3, tmp_path)
    text = user_data(p, 2, pki, SSH_KEY + "\n")
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert doc["hostname"] == "pacific-cp-3"
    assert doc["users"] == [{"name": "pacific", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                             "shell": "/bin/bash", "lock_passwd": True,
                             "ssh_authorized_keys": [SSH_KEY]}]
    files = render_member(p, 2, pki)
    written = {item["path"]: item for item in doc["write_files"]}
    assert sorted(written) == sorted(files)
    for path, f in files.items():
        item = written[path]
        assert item["encoding"] == "b64" and item["owner"] == f.owner
        assert int(item["permissions"], 8) == f.mode and item["permissions"].startswith("0")
        assert base64.b64decode(item["content"]).decode() == f.content
    assert doc["runcmd"] == [["systemctl", "daemon-reload"],
                             ["systemctl", "enable", "--now", "--no-block", "etcd.service"],
                             ["systemctl", "enable", "--now", "patroni.service"],
                             ["systemctl", "enable", "--now", "keepalived.service"],
                             ["systemctl", "enable", "--now", "pacific-lab.service"]]
    assert [cmd[-1] for cmd in doc["runcmd"][1:]] == list(SERVICES)


@pytest.mark.parametrize("key", ["", "not a key", SSH_KEY + "\nssh-rsa AAAA evil",
                                 "ssh-ed25519 AAAA$(reboot)"])
def test_user_data_wants_one_ssh_key(key: str, tmp_path: Path, pki: PkiFiles) -> None:
    with pytest.raises(PlanError, match="SSH public key"):
        user_data(plan(1, tmp_path), 0, pki, key)


def test_network_config(tmp_path: Path) -> None:
    p = plan(3, tmp_path)
    assert network_config(p, 1) == {"version": 2, "ethernets": {"eth0": {
        "match": {"macaddress": p.members[1].mac}, "set-name": "eth0",
        "addresses": ["198.18.0.7/24"], "routes": [{"to": "0.0.0.0/0", "via": "198.18.0.1"}],
        "nameservers": {"addresses": ["198.18.0.1"]}}}}


def test_meta_data_instance_id_follows_the_plan(tmp_path: Path) -> None:
    p = plan(3, tmp_path)
    ids = [meta_data(p, i)["instance-id"] for i in range(3)]
    assert len(set(ids)) == 3 and ids[0].startswith("pacific-cp-1-")
    assert meta_data(p, 0) == {"instance-id": ids[0], "local-hostname": "pacific-cp-1"}
    assert meta_data(plan(3, tmp_path), 0)["instance-id"] == ids[0]  # lab up again: same
    assert meta_data(plan(1, tmp_path), 0)["instance-id"] != ids[0]  # another plan
    assert meta_data(plan(3, tmp_path / "reinstall"), 0)["instance-id"] != ids[0]


def test_no_secret_outside_the_files_meant_to_hold_it(tmp_path: Path, pki: PkiFiles,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    every_secret = [pki.server_key]
    for n in (1, 3):
        p = plan(n, tmp_path / str(n))
        secrets = p.secrets.values()
        every_secret += secrets.values()
        for index in range(n):
            files = render_member(p, index, pki)
            for path, f in files.items():
                holds = {name for name, value in secrets.items() if value in f.content}
                assert holds == {name for name, paths in SECRET_FILES.items() if path in paths}, \
                    path
                assert (pki.server_key in f.content) == path.endswith("/server.key"), path
            public = [user_data(p, index, pki, SSH_KEY), json.dumps(network_config(p, index)),
                      json.dumps(meta_data(p, index)), repr(p)]
            for text in public:
                for value in [*secrets.values(), pki.server_key]:
                    assert value not in text
    assert caplog.records, "nothing logged: the check below would prove nothing"
    for value in every_secret:
        assert value not in caplog.text


def test_values_that_would_be_syntax_are_refused() -> None:
    for bad in ("a b", 'a"b', "a$b", "a\\b", "a#b", "a{b", "a\nb", ""):
        with pytest.raises(PlanError):
            config._conf_word(bad)
    assert config._yaml_scalar('a"b: c') == '"a\\"b: c"'
    with pytest.raises(PlanError):
        config._yaml_scalar(["a list"])


# -- the control plane as VM Service objects ---------------------------------------------------


def test_the_control_plane_is_declared_as_vm_service_objects(tmp_path: Path, pki: PkiFiles) -> None:
    import base64
    import ipaddress

    from appliance.controllers.scheduler import SYSTEM_NAMESPACE, requested_address
    from appliance.controlplane.objects import CLASS_NAME, control_plane_objects

    p = plan(3, tmp_path)
    objects = control_plane_objects(p, pki)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert kinds == [("VirtualMachineClass", CLASS_NAME),
                     ("Secret", "pacific-cp-1-cloud-init"), ("VirtualMachine", "pacific-cp-1"),
                     ("Secret", "pacific-cp-2-cloud-init"), ("VirtualMachine", "pacific-cp-2"),
                     ("Secret", "pacific-cp-3-cloud-init"), ("VirtualMachine", "pacific-cp-3")]
    assert {o["metadata"]["namespace"] for o in objects} == {SYSTEM_NAMESPACE}
    vms = [o for o in objects if o["kind"] == "VirtualMachine"]
    network = ipaddress.ip_network(CIDR)
    # Each VM asks for its member's reserved address, which only kube-system may have.
    assert [requested_address(vm, network) for vm in vms] == [
        ("198.18.0.6", ""), ("198.18.0.7", ""), ("198.18.0.8", "")]
    for vm in vms:
        assert vm["spec"]["imageName"] == "pacific-appliance"
        assert vm["spec"]["className"] == CLASS_NAME
        secret = next(o for o in objects if o["metadata"]["name"] ==
                      vm["spec"]["bootstrap"]["cloudInit"]["rawCloudConfig"]["name"])
        document = yaml.safe_load(base64.b64decode(secret["data"]["user-data"]))
        assert document["hostname"] == vm["metadata"]["name"]
        assert "users" not in document  # the VM Service adds its access user itself
        paths = {f["path"] for f in document["write_files"]}
        assert LAB_ENV in paths and f"{PKI}/server.key" in paths and f"{PKI}/ca.crt" in paths
        assert f"{PKI}/ca.key" not in paths
