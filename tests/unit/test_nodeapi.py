"""appliance.nodeapi: the host's log endpoint for a supervisor in control-plane VMs, and
the supervisor's reader of it, over real TLS on loopback."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from werkzeug.test import EnvironBuilder

from appliance import errors
from appliance.api.app import file_log
from appliance.nodeapi import (CONSOLE, POD_LOG, NodeLogApp, RemoteLogs, control_plane_client,
                               serve)
from appliance.pki import Pki, authenticates_clients, ensure_pki, issue_server_cert

VM = {"apiVersion": "vmoperator.vmware.com/v1alpha3", "kind": "VirtualMachine",
      "metadata": {"namespace": "kube-system", "name": "pacific-cp-0"},
      "status": {"host": "lab-host"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return ensure_pki(tmp_path / "pki", ["lab-host"], ["127.0.0.1"])


def _client_files(tmp_path: Path, pki: Pki, addresses: list[str]) -> tuple[Path, Path]:
    cert, key = issue_server_cert(pki, ["pacific-cp-0"], addresses)
    cert_path, key_path = tmp_path / f"cp-{len(addresses)}.crt", tmp_path / f"cp-{len(addresses)}.key"
    cert_path.write_text(cert)
    key_path.write_text(key)
    return cert_path, key_path


def _server_only_cert(pki: Pki) -> str:
    """A certificate from the lab's CA for servers only (as the VMs' were before)."""
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                __import__("ipaddress").ip_address("198.18.0.5"))]), False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_only_a_lab_client_certificate_that_names_its_address_may_ask(
        tmp_path: Path, pki: Pki) -> None:
    allowed = control_plane_client(pki.ca_cert)
    cert = issue_server_cert(pki, ["pacific-cp-0"], ["198.18.0.5", "198.18.0.2"])[0]
    assert authenticates_clients(cert.encode())
    assert allowed(cert, "198.18.0.5") and allowed(cert, "::ffff:198.18.0.2")
    assert not allowed(cert, "198.18.0.9")  # another machine with a copy of it
    assert not allowed("", "198.18.0.5")
    old = _server_only_cert(pki)
    assert not authenticates_clients(old.encode()) and not allowed(old, "198.18.0.5")
    other = ensure_pki(tmp_path / "other", ["x"], ["198.18.0.5"])
    foreign = issue_server_cert(other, ["pacific-cp-0"], ["198.18.0.5"])[0]
    assert not allowed(foreign, "198.18.0.5")


def _call(app: NodeLogApp, path: str, body: Any, cert: str = "PEM",
          method: str = "POST") -> tuple[str, bytes]:
    environ = EnvironBuilder(path=path, method=method, data=json.dumps(body),
                             content_type="application/json").get_environ()
    environ.update({"SSL_CLIENT_CERT": cert, "REMOTE_ADDR": "198.18.0.5"})
    status: list[str] = []
    chunks = app(environ, lambda s, headers: status.append(s))
    return status[0], b"".join(chunks)


def _app(console: Path, allowed: bool = True) -> NodeLogApp:
    def read_console(vm: Any, args: Mapping[str, str], timeout: float) -> Iterator[bytes]:
        return file_log(console, args, timeout, "no console log yet")

    def read_pod(pod: Any, args: Mapping[str, str], timeout: float) -> Iterator[bytes]:
        raise errors.bad_request(f"container {args.get('container')} is not valid")

    return NodeLogApp({CONSOLE: read_console, POD_LOG: read_pod},
                      lambda cert, peer: allowed, timeout=5)


def test_the_endpoint_answers_with_the_reader_s_bytes_or_a_status(tmp_path: Path) -> None:
    console = tmp_path / "console.log"
    console.write_text("one\ntwo\nthree\n")
    app = _app(console)
    path = "/logs/vmoperator.vmware.com/virtualmachines/console"
    assert _call(app, path, {"object": VM, "args": {"tailLines": "2"}}) == (
        "200 OK", b"two\nthree\n")
    status, body = _call(app, "/logs/core/pods/log", {"object": {
        "metadata": {"namespace": "a", "name": "p", "uid": str(uuid.uuid4())},
        "spec": {"containers": [{"name": "c"}]}}, "args": {"container": "x"}})
    assert status.startswith("400") and json.loads(body)["message"] == "container x is not valid"
    assert _call(_app(console, allowed=False), path, {"object": VM})[0].startswith("403")
    assert _call(app, "/logs/core/secrets/data", {"object": VM})[0].startswith("404")
    assert _call(app, path, {"object": VM}, method="PUT")[0].startswith("405")


@pytest.mark.parametrize("obj", [
    "not an object",
    {"metadata": {"namespace": "../..", "name": "x", "uid": str(uuid.uuid4())}},
    {"metadata": {"namespace": "a", "name": "p", "uid": "../../../etc"},
     "spec": {"containers": [{"name": "c"}]}},
    {"metadata": {"namespace": "a", "name": "p", "uid": str(uuid.uuid4())},
     "spec": {"containers": [{"name": "../c"}]}},
])
def test_names_that_would_become_paths_are_refused(tmp_path: Path, obj: Any) -> None:
    status, body = _call(_app(tmp_path / "c.log"), "/logs/core/pods/log", {"object": obj})
    assert status.startswith("400"), body


def test_the_supervisor_reads_a_console_through_the_host_and_follows_it(
        tmp_path: Path, pki: Pki) -> None:
    console = tmp_path / "console.log"
    console.write_text("booting\n")
    app = NodeLogApp({CONSOLE: lambda vm, args, timeout: file_log(
        console, args, timeout, "no console log yet")}, control_plane_client(pki.ca_cert),
        timeout=30)
    port = _free_port()
    server = serve(app, "127.0.0.1", port, pki)
    node = {"metadata": {"name": "lab-host"}, "status": {
        "addresses": [{"type": "InternalIP", "address": "192.0.2.10"},
                      {"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}
    try:
        cert, key = _client_files(tmp_path, pki, ["127.0.0.1"])
        remote = RemoteLogs(lambda name: node if name == "lab-host" else None, "127.0.0.0/8",
                            pki.ca_cert, cert, key)
        assert b"".join(remote.read(CONSOLE, VM, {}, 5)) == b"booting\n"

        def later() -> None:
            time.sleep(1.0)
            with console.open("a") as f:
                f.write("login: \n")

        threading.Thread(target=later).start()
        seen = b""
        for chunk in remote.read(CONSOLE, VM, {"follow": "true"}, 3):
            seen += chunk
            if b"login:" in seen:
                break
        assert seen == b"booting\nlogin: \n"

        # A client certificate of another CA: TLS refuses it, and the reader says so.
        # (Every certificate of the lab names loopback, so the address check, which
        # refuses a VM's certificate used from another address, is tested above.)
        other = ensure_pki(tmp_path / "other", ["x"], ["127.0.0.1"])
        foreign, foreign_key = _client_files(tmp_path / "other", other, ["127.0.0.1"])
        with pytest.raises(errors.ApiError) as refused:
            list(RemoteLogs(lambda name: node, "127.0.0.0/8", pki.ca_cert, foreign,
                            foreign_key).read(CONSOLE, VM, {}, 5))
        assert refused.value.code == 503 and "SSLError" in refused.value.message
        # No Node, no endpoint: a clear 503; no host yet: 400.
        with pytest.raises(errors.ApiError) as gone:
            remote.read(CONSOLE, {**VM, "status": {"host": "elsewhere"}}, {}, 5)
        assert gone.value.code == 503 and "elsewhere" in gone.value.message
        with pytest.raises(errors.ApiError) as unplaced:
            remote.read(CONSOLE, {**VM, "status": {}}, {}, 5)
        assert unplaced.value.code == 400
    finally:
        server.stop()


def test_without_a_client_certificate_tls_refuses(tmp_path: Path, pki: Pki) -> None:
    import requests

    port = _free_port()
    server = serve(_app(tmp_path / "c.log"), "127.0.0.1", port, pki)
    try:
        with requests.Session() as s, pytest.raises(requests.exceptions.SSLError):
            s.post(f"https://127.0.0.1:{port}/logs/core/pods/log", json={},
                   verify=str(pki.ca_cert), timeout=10)
    finally:
        server.stop()
