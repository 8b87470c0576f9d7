"""NoCloud seed images: round trip through pycdlib, label cidata, mode 0600, no content in logs."""

from __future__ import annotations

import logging
import shutil
import stat
import subprocess
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
import yaml

from hypervisor.seed import SeedError, build_seed_iso, read_seed_iso, volume_label

SECRET = "s3cr3t-token-do-not-log"
USER_DATA = {
    "hostname": "web-1",
    "users": [{"name": "lab", "ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nza lab"],
               "sudo": "ALL=(ALL) NOPASSWD:ALL"}],
    "write_files": [{"path": "/etc/token", "content": SECRET, "permissions": "0600"}],
}
META_DATA = {"instance-id": "i-0f1e2d3c", "local-hostname": "web-1"}
NETWORK = {"version": 2, "ethernets": {"eth0": {"match": {"macaddress": "52:54:00:12:34:56"},
                                                "addresses": ["10.10.0.5/24"]}}}


def test_round_trip(tmp_path: Path) -> None:
    path = build_seed_iso(tmp_path / "seed.iso", USER_DATA, META_DATA, NETWORK)
    files = read_seed_iso(path)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert files["user-data"].startswith(b"#cloud-config\n")
    assert yaml.safe_load(files["user-data"]) == USER_DATA
    assert yaml.safe_load(files["meta-data"]) == META_DATA
    assert yaml.safe_load(files["network-config"]) == NETWORK
    assert volume_label(path) == "cidata"


def test_without_network_config(tmp_path: Path) -> None:
    files = read_seed_iso(build_seed_iso(tmp_path / "seed.iso", USER_DATA, META_DATA))
    assert sorted(files) == ["meta-data", "user-data"]


def test_text_user_data_is_kept_as_given(tmp_path: Path) -> None:
    script = "#!/bin/sh\necho hello > /run/hello\n"
    files = read_seed_iso(build_seed_iso(tmp_path / "a.iso", script, META_DATA))
    assert files["user-data"] == script.encode()
    config = "#cloud-config\nhostname: x\n"
    files = read_seed_iso(build_seed_iso(tmp_path / "b.iso", config, META_DATA))
    assert files["user-data"] == config.encode()
    message = MIMEMultipart()
    message.attach(MIMEText("#cloud-config\nhostname: x\n", "cloud-config"))
    message.attach(MIMEText(script, "x-shellscript"))
    files = read_seed_iso(build_seed_iso(tmp_path / "c.iso", message.as_string(), META_DATA))
    assert files["user-data"] == message.as_string().encode()
    jinja = "## template: jinja\n#cloud-config\nhostname: '{{ ds.meta_data.hostname }}'\n"
    files = read_seed_iso(build_seed_iso(tmp_path / "d.iso", jinja, META_DATA))
    assert files["user-data"] == jinja.encode()  # cloud-init renders it, not us


@pytest.mark.parametrize(("user_data", "meta_data"), [
    ("hostname: x\n", META_DATA),  # neither #cloud-config nor a script
    ("## template: jinja\nhostname: x\n", META_DATA),  # a template of neither
    (USER_DATA, {"local-hostname": "x"}),  # no instance-id
    (["not", "a", "dict"], META_DATA),
])
def test_refused(tmp_path: Path, user_data: object, meta_data: dict[str, str]) -> None:
    with pytest.raises(SeedError):
        build_seed_iso(tmp_path / "seed.iso", user_data, meta_data)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_private_atomic_and_silent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "seed.iso"
    path.write_bytes(b"old")
    path.chmod(0o644)
    build_seed_iso(path, USER_DATA, META_DATA)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]  # no temporary file left
    assert SECRET not in caplog.text
    assert "lab" not in caplog.text.replace(str(tmp_path), "")


@pytest.mark.skipif(shutil.which("isoinfo") is None, reason="isoinfo (genisoimage) not installed")
def test_isoinfo_sees_cidata_and_names(tmp_path: Path) -> None:
    path = build_seed_iso(tmp_path / "seed.iso", USER_DATA, META_DATA, NETWORK)
    header = subprocess.run(["isoinfo", "-d", "-i", str(path)], capture_output=True, text=True,
                            check=True).stdout
    assert "Volume id: cidata" in header
    assert "Joliet" in header and "Rock Ridge" in header
    listing = subprocess.run(["isoinfo", "-R", "-f", "-i", str(path)], capture_output=True,
                             text=True, check=True).stdout.split()
    assert sorted(listing) == ["/meta-data", "/network-config", "/user-data"]
    joliet = subprocess.run(["isoinfo", "-J", "-f", "-i", str(path)], capture_output=True,
                            text=True, check=True).stdout.split()
    assert sorted(joliet) == ["/meta-data", "/network-config", "/user-data"]


@pytest.mark.skipif(shutil.which("blkid") is None, reason="blkid not installed")
def test_blkid_sees_label_cidata(tmp_path: Path) -> None:
    path = build_seed_iso(tmp_path / "seed.iso", USER_DATA, META_DATA)
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True, text=True)
    fields = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert fields.get("TYPE") == "iso9660"
    assert fields.get("LABEL") == "cidata"
