"""tests.support.exposure: which Secret values it looks for, and where it finds them."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.support.exposure import log_leaks, secret_values, sensitive

# Not a real key, and spelt in pieces: the appliance image's test looks for private keys
# in the files it installs (this checkout among them).
KIND = "OPENSSH " + "PRIVATE KEY"
KEY = f"""-----BEGIN {KIND}-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACBmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZgAAAJg=
-----END {KIND}-----"""


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_certificates_public_keys_and_short_words_are_not_secrets() -> None:
    assert sensitive("tls.crt", b"-----BEGIN CERTIFICATE-----\nMIIB...") == set()
    assert sensitive("anything", b"-----BEGIN CERTIFICATE-----\nMIIB...") == set()
    assert sensitive("id.pub", b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI alice") == set()
    assert sensitive("value", b"true") == set()
    assert sensitive("blob", b"\xff\xfe binary") == set()


def test_a_private_key_gives_itself_away_line_by_line() -> None:
    found = sensitive("ssh-privatekey", KEY.encode())
    assert KEY in found
    assert "QyNTUxOQAAACBmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZmZgAAAJg=" in found
    assert not any(line.startswith("-----") for line in found if "\n" not in line)


def test_the_secret_fields_of_a_cloud_config() -> None:
    user_data = """#cloud-config
users:
  - name: alice
    plain_text_passwd: s3cret-s3cret-s3cret
    ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI alice]
write_files:
  - path: /srv/secret.txt
    content: cloud-init-secret-0123456789
    permissions: "0600"
  - path: /etc/motd
    content: welcome to the lab host
runcmd: [echo a long but harmless command]
"""
    found = secret_values([{"data": {"user-data": encoded(user_data)}}])
    assert {"s3cret-s3cret-s3cret", "cloud-init-secret-0123456789"} <= found
    assert "echo a long but harmless command" not in found
    assert "welcome to the lab host" not in found  # others may read it: not a secret
    assert not any(v.startswith("ssh-ed25519") for v in found)


def test_logs_are_named_with_the_index_of_what_they_hold_never_the_value(
        tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "service").write_text("token plab-abcdefghijkl used\n")
    (tmp_path / "disks").mkdir()
    (tmp_path / "disks" / "vm.img").write_text("plab-abcdefghijkl")  # not a log
    (tmp_path / "run.log").write_text("nothing here\n")
    leaks = log_leaks(tmp_path, ["nothing-secret", "plab-abcdefghijkl"])
    assert leaks == ["logs/service holds secret #1"]
