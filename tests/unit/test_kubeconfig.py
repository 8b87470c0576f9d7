"""kubeconfig files: one context per namespace, merging, and private files."""

from __future__ import annotations

import base64
import copy
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.kubeconfig import build, load, merge, write

SERVER = "https://supervisor.lab:6443"
CA = b"-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"


def _names(config: dict[str, Any], section: str) -> list[str]:
    return [e["name"] for e in config[section]]


# -- build -------------------------------------------------------------------------------------


def test_build_with_ca_data_and_one_context_per_namespace() -> None:
    config = build(SERVER, "alice", "plab-tok", ["dev", "prod"], CA)
    assert config["apiVersion"] == "v1"
    assert config["kind"] == "Config"
    assert config["clusters"] == [{"name": "supervisor.lab", "cluster": {
        "server": SERVER, "certificate-authority-data": base64.b64encode(CA).decode()}}]
    assert config["users"] == [{"name": "wcp:supervisor.lab:alice",
                                "user": {"token": "plab-tok"}}]
    assert config["contexts"] == [
        {"name": "supervisor.lab", "context": {"cluster": "supervisor.lab",
                                               "user": "wcp:supervisor.lab:alice"}},
        {"name": "dev", "context": {"cluster": "supervisor.lab",
                                    "user": "wcp:supervisor.lab:alice", "namespace": "dev"}},
        {"name": "prod", "context": {"cluster": "supervisor.lab",
                                     "user": "wcp:supervisor.lab:alice", "namespace": "prod"}},
    ]
    assert config["current-context"] == "dev"
    assert base64.b64decode(
        config["clusters"][0]["cluster"]["certificate-authority-data"]) == CA


def test_build_insecure_has_no_ca_data() -> None:
    for ca in (CA, None):
        cluster = build(SERVER, "alice", "t", [], ca, insecure=True)["clusters"][0]["cluster"]
        assert cluster == {"server": SERVER, "insecure-skip-tls-verify": True}


def test_build_without_ca_or_insecure_uses_system_trust() -> None:
    cluster = build(SERVER, "alice", "t", [], None)["clusters"][0]["cluster"]
    assert cluster == {"server": SERVER}


def test_build_without_namespaces_uses_the_cluster_context() -> None:
    config = build(SERVER, "alice", "t", [], CA)
    assert _names(config, "contexts") == ["supervisor.lab"]
    assert config["current-context"] == "supervisor.lab"


def test_build_explicit_current_context() -> None:
    assert build(SERVER, "a", "t", ["dev", "prod"], CA, current="prod")["current-context"] == \
        "prod"


def test_build_names_from_ip_and_missing_host() -> None:
    assert _names(build("https://10.0.0.5:6443", "a", "t", ["x"], None), "clusters") == \
        ["10.0.0.5"]
    assert _names(build("https://[::1]:6443", "a", "t", [], None), "clusters") == ["::1"]
    assert _names(build("not a url", "a", "t", [], None), "clusters") == ["supervisor"]


def test_build_is_safe_yaml() -> None:
    config = build(SERVER, "alice", "t", ["dev"], CA)
    assert yaml.safe_load(yaml.safe_dump(config)) == config


# -- merge -------------------------------------------------------------------------------------


def _other_cluster() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {"colors": True},
        "clusters": [{"name": "kind", "cluster": {"server": "https://127.0.0.1:1"}},
                     {"name": "supervisor.lab", "cluster": {"server": "https://old:6443"}}],
        "users": [{"name": "kind-admin", "user": {"token": "k"}},
                  {"name": "wcp:supervisor.lab:alice", "user": {"token": "old"}}],
        "contexts": [{"name": "kind", "context": {"cluster": "kind", "user": "kind-admin"}},
                     {"name": "dev", "context": {"cluster": "supervisor.lab",
                                                 "user": "wcp:supervisor.lab:alice",
                                                 "namespace": "dev"}}],
        "current-context": "kind",
    }


def test_merge_replaces_same_named_entries_and_keeps_others() -> None:
    existing = _other_cluster()
    before = copy.deepcopy(existing)
    new = build(SERVER, "alice", "fresh", ["dev", "prod"], CA)
    out = merge(existing, new)
    assert existing == before  # the input is not changed
    assert _names(out, "clusters") == ["kind", "supervisor.lab"]
    assert _names(out, "users") == ["kind-admin", "wcp:supervisor.lab:alice"]
    assert _names(out, "contexts") == ["kind", "supervisor.lab", "dev", "prod"]
    clusters = {e["name"]: e["cluster"] for e in out["clusters"]}
    assert clusters["supervisor.lab"]["server"] == SERVER
    assert clusters["kind"] == {"server": "https://127.0.0.1:1"}
    users = {e["name"]: e["user"] for e in out["users"]}
    assert users == {"kind-admin": {"token": "k"}, "wcp:supervisor.lab:alice": {"token": "fresh"}}
    assert out["current-context"] == "dev"
    assert out["preferences"] == {"colors": True}


def test_merge_into_nothing() -> None:
    new = build(SERVER, "alice", "t", ["dev"], CA)
    for empty in ({}, None):
        out = merge(empty, new)  # type: ignore[arg-type]
        assert out["apiVersion"] == "v1"
        assert out["kind"] == "Config"
        assert out["clusters"] == new["clusters"]
        assert out["users"] == new["users"]
        assert out["contexts"] == new["contexts"]
        assert out["current-context"] == "dev"


def test_merge_keeps_current_context_when_new_has_none() -> None:
    out = merge(_other_cluster(), {"clusters": [{"name": "x", "cluster": {"server": "s"}}]})
    assert out["current-context"] == "kind"
    assert _names(out, "clusters") == ["kind", "supervisor.lab", "x"]
    assert _names(out, "users") == ["kind-admin", "wcp:supervisor.lab:alice"]


def test_merge_tolerates_null_sections() -> None:
    existing = {"apiVersion": "v1", "kind": "Config", "clusters": None, "users": None,
                "contexts": None}
    out = merge(existing, build(SERVER, "a", "t", [], None))
    assert _names(out, "clusters") == ["supervisor.lab"]


# -- write and load ----------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_creates_a_private_file_and_parent(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".kube" / "config"
    config = build(SERVER, "alice", "secret-token", ["dev"], CA)
    write(path, config)
    assert _mode(path) == 0o600
    assert load(path) == config
    assert os.listdir(path.parent) == ["config"]  # no temporary file left behind


def test_write_over_a_world_readable_file_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("old: true\n")
    path.chmod(0o644)
    write(path, {"apiVersion": "v1", "kind": "Config"})
    assert _mode(path) == 0o600
    assert load(path) == {"apiVersion": "v1", "kind": "Config"}


def test_write_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write(tmp_path / "config", {"kind": "Config"})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "config") == 0o600


def test_write_keeps_key_order(tmp_path: Path) -> None:
    path = tmp_path / "config"
    write(path, build(SERVER, "alice", "t", [], None))
    keys = [line.split(":")[0] for line in path.read_text().splitlines()
            if line and not line.startswith((" ", "-"))]
    assert keys == ["apiVersion", "kind", "preferences", "clusters", "users", "contexts",
                    "current-context"]


def test_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    # The temporary name is random (O_EXCL|O_NOFOLLOW), and the final rename
    # replaces a symlink at the destination instead of writing through it.
    path = tmp_path / "config"
    target = tmp_path / "elsewhere"
    target.write_text("untouched")
    path.symlink_to(target)
    write(path, {"kind": "Config"})
    assert target.read_text() == "untouched"
    assert not path.is_symlink() and "Config" in path.read_text()


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}), ("null\n", {}), ("- a\n", {}), ("just text\n", {}),
    ("apiVersion: v1\n", {"apiVersion": "v1"}),
])
def test_load(tmp_path: Path, text: str, expected: dict[str, Any]) -> None:
    path = tmp_path / "config"
    path.write_text(text)
    assert load(path) == expected


def test_load_missing_file(tmp_path: Path) -> None:
    assert load(tmp_path / "nope") == {}


def test_round_trip_merge_write_load(tmp_path: Path) -> None:
    path = tmp_path / "config"
    write(path, _other_cluster())
    write(path, merge(load(path), build(SERVER, "alice", "t2", ["dev"], CA)))
    out = load(path)
    assert _names(out, "contexts") == ["kind", "supervisor.lab", "dev"]
    assert out["current-context"] == "dev"
    assert _mode(path) == 0o600
