"""`lab registry url/login/logout` against a fake supervisor API (``http.server`` over TLS
on loopback, with a CA made by ``appliance.pki``); every file goes under ``tmp_path``."""

from __future__ import annotations

import base64
import json
import os
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from appliance import kubeconfig
from appliance.cli import main
from appliance.pki import Pki, ensure_pki
from appliance.registry.login import RegistryLoginError, check_hostport, default_certs_dirs

TOKEN = "plab-s3cret-token-never-printed"
HOST = "198.18.0.1:5000"
OTHER = {"auth": base64.b64encode(b"bob:hunter2").decode()}


def ours(user: str = "alice", token: str = TOKEN) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{token}".encode()).decode()}


@dataclass
class FakeApi:
    """``GET /registry`` as the supervisor serves it; remembers the Authorization headers."""

    pki: Pki
    reply: dict[str, Any] | None = field(default_factory=lambda: {
        "host": HOST, "user": "alice", "service": "pacific-lab-registry",
        "realm": f"https://{HOST}/service/token"})
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                fake.seen.append(self.headers.get("Authorization", ""))
                if self.path != "/registry" or fake.reply is None:
                    status, body = 404, {"kind": "Status", "reason": "NotFound",
                                         "message": "not found"}
                elif self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    status, body = 401, {"kind": "Status", "reason": "Unauthorized",
                                         "message": "Unauthorized"}
                else:
                    status, body = 200, fake.reply
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("pki"), ["localhost"], ["127.0.0.1"])


@pytest.fixture()
def api(pki: Pki) -> Iterator[FakeApi]:
    fake = FakeApi(pki)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME, no registry/docker/XDG variables, not root, not the lab host."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KUBECONFIG", str(home / "kubeconfig"))
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    for name in ("XDG_CONFIG_HOME", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "LAB_PUBLIC_HOST",
                 "LAB_REGISTRY_PORT", "LAB_REGISTRY_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    return home


@pytest.fixture()
def logged_in(home: Path, api: FakeApi, pki: Pki) -> Path:
    """The kubeconfig `lab login` writes (CA data and a bearer token)."""
    path = home / "kubeconfig"
    kubeconfig.write(path, kubeconfig.build(api.server, "alice", TOKEN, ["dev"], pki.ca_pem()))
    return path


def lab(*args: str) -> Result:
    result = CliRunner().invoke(main, ["registry", *args])
    assert TOKEN not in result.output + result.stderr
    return result


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def auth_file(home: Path) -> Path:
    return home / ".config" / "containers" / "auth.json"


def docker_file(home: Path) -> Path:
    return home / ".docker" / "config.json"


def user_ca(home: Path) -> Path:
    return home / ".config" / "containers" / "certs.d" / HOST / "ca.crt"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def load(path: Path) -> Any:
    return json.loads(path.read_text())


# -- url ----------------------------------------------------------------------------------------


def test_url_prints_host_port_from_the_api(logged_in: Path, api: FakeApi) -> None:
    result = lab("url")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{HOST}\n"
    assert api.seen == [f"Bearer {TOKEN}"]


def test_url_with_a_named_kubeconfig(home: Path, api: FakeApi, pki: Pki) -> None:
    path = home / "elsewhere.yaml"
    kubeconfig.write(path, kubeconfig.build(api.server, "alice", TOKEN, [], pki.ca_pem()))
    result = lab("url", "--kubeconfig", str(path))
    assert (result.exit_code, result.stdout) == (0, f"{HOST}\n")


def test_url_reads_a_certificate_authority_file(home: Path, api: FakeApi, pki: Pki) -> None:
    config = kubeconfig.build(api.server, "alice", TOKEN, [], pki.ca_pem())
    del config["clusters"][0]["cluster"]["certificate-authority-data"]
    config["clusters"][0]["cluster"]["certificate-authority"] = "lab-ca.crt"  # relative
    (home / "lab-ca.crt").write_bytes(pki.ca_pem())
    kubeconfig.write(home / "kubeconfig", config)
    result = lab("url")
    assert (result.exit_code, result.stdout) == (0, f"{HOST}\n")


def test_url_without_a_kubeconfig_off_the_lab_host(home: Path) -> None:
    line = error_line(lab("url"))
    assert line.startswith("Error: no usable kubeconfig at ")
    assert line.endswith('run "lab login" first')


def test_url_without_a_kubeconfig_on_the_lab_host(home: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_pki(tmp_path / "state" / "pki", ["localhost"], ["127.0.0.1"])
    monkeypatch.setenv("LAB_PUBLIC_HOST", "lab.example.test")
    monkeypatch.setenv("LAB_REGISTRY_PORT", "5443")
    result = lab("url")
    assert (result.exit_code, result.stdout) == (0, "lab.example.test:5443\n")
    monkeypatch.setenv("LAB_REGISTRY_ENABLED", "false")
    assert error_line(lab("url")) == "Error: the lab registry is disabled (registry_enabled)"


def test_url_with_an_expired_token(logged_in: Path) -> None:
    config = kubeconfig.load(logged_in)
    config["users"][0]["user"]["token"] = "plab-expired"
    kubeconfig.write(logged_in, config)
    line = error_line(lab("url"))
    assert "refused the token" in line and line.endswith('run "lab login" first')


def test_url_refuses_a_host_that_is_not_host_port(logged_in: Path, api: FakeApi) -> None:
    api.reply = {"host": "../../etc/evil:5000", "user": "alice"}
    assert error_line(lab("url")) == "Error: not a registry HOST:PORT: '../../etc/evil:5000'"


def test_url_when_the_registry_is_not_enabled(logged_in: Path, api: FakeApi) -> None:
    api.reply = None
    assert error_line(lab("url")) == f"Error: {api.server} has no lab registry (is it enabled?)"


# -- login --------------------------------------------------------------------------------------


def test_login_writes_both_auth_files_and_the_ca(logged_in: Path, home: Path, pki: Pki) -> None:
    result = lab("login")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"wrote {auth_file(home)}", f"wrote {docker_file(home)}",
                                          f"wrote {user_ca(home)}"]
    assert result.stderr == ""
    for path in (auth_file(home), docker_file(home)):
        assert load(path) == {"auths": {HOST: ours()}}
        assert mode(path) == 0o600
    for made in (home / ".config", home / ".config" / "containers", home / ".docker"):
        assert mode(made) == 0o700
    assert user_ca(home).read_bytes() == pki.ca_pem()
    assert mode(user_ca(home)) == 0o644


def test_login_merges_into_existing_files(logged_in: Path, home: Path) -> None:
    auth_file(home).parent.mkdir(parents=True)
    auth_file(home).write_text(json.dumps({"auths": {"quay.io": OTHER, HOST: {"auth": "old"}}}))
    docker_file(home).parent.mkdir(mode=0o755)
    docker_file(home).write_text(json.dumps({"auths": {"https://index.docker.io/v1/": OTHER},
                                             "HttpHeaders": {"User-Agent": "x"}}))
    os.chmod(docker_file(home), 0o644)
    assert lab("login").exit_code == 0
    assert load(auth_file(home)) == {"auths": {"quay.io": OTHER, HOST: ours()}}
    assert load(docker_file(home)) == {
        "auths": {"https://index.docker.io/v1/": OTHER, HOST: ours()},
        "HttpHeaders": {"User-Agent": "x"}}
    assert mode(docker_file(home)) == 0o600
    assert mode(docker_file(home).parent) == 0o755  # an existing directory is left alone
    assert lab("login").exit_code == 0  # again: the same files
    assert load(auth_file(home)) == {"auths": {"quay.io": OTHER, HOST: ours()}}


def test_login_follows_the_environment(logged_in: Path, home: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dockercfg"))
    assert lab("login").exit_code == 0
    assert load(tmp_path / "xdg" / "containers" / "auth.json") == {"auths": {HOST: ours()}}
    assert load(tmp_path / "dockercfg" / "config.json") == {"auths": {HOST: ours()}}
    assert (tmp_path / "xdg" / "containers" / "certs.d" / HOST / "ca.crt").is_file()
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "run" / "auth.json"))
    assert lab("login").exit_code == 0
    assert load(tmp_path / "run" / "auth.json") == {"auths": {HOST: ours()}}


def test_login_options_name_the_files(logged_in: Path, home: Path, tmp_path: Path,
                                      pki: Pki) -> None:
    (tmp_path / "docker").mkdir()
    result = lab("login", "--authfile", str(tmp_path / "a.json"), "--docker-config",
                 str(tmp_path / "docker"), "--certs-dir", str(tmp_path / "c1"),
                 "--certs-dir", str(tmp_path / "c2"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote {tmp_path / 'a.json'}", f"wrote {tmp_path / 'docker' / 'config.json'}",
        f"wrote {tmp_path / 'c1' / HOST / 'ca.crt'}", f"wrote {tmp_path / 'c2' / HOST / 'ca.crt'}"]
    assert (tmp_path / "c2" / HOST / "ca.crt").read_bytes() == pki.ca_pem()
    assert not auth_file(home).exists() and not docker_file(home).exists()


def test_login_refuses_a_symlinked_auth_file(logged_in: Path, home: Path) -> None:
    target = home / "elsewhere.json"
    target.write_text('{"auths": {}}')
    auth_file(home).parent.mkdir(parents=True)
    auth_file(home).symlink_to(target)
    line = error_line(lab("login"))
    assert line == f"Error: refusing to write {auth_file(home)}: it is a symbolic link"
    assert target.read_text() == '{"auths": {}}'
    assert auth_file(home).is_symlink()
    assert not docker_file(home).exists() and not user_ca(home).exists()  # checked first


@pytest.mark.parametrize(("content", "why"), [
    ("[]", "it is not a JSON object"), ("{not json", "it is not JSON"),
    ('{"auths": ["x"]}', 'its "auths" is not a JSON object')])
def test_login_refuses_a_file_that_is_not_a_json_object(logged_in: Path, home: Path,
                                                        content: str, why: str) -> None:
    docker_file(home).parent.mkdir()
    docker_file(home).write_text(content)
    assert error_line(lab("login")) == f"Error: refusing to write {docker_file(home)}: {why}"
    assert docker_file(home).read_text() == content
    assert not auth_file(home).exists()


def test_login_accepts_an_empty_file(logged_in: Path, home: Path) -> None:
    docker_file(home).parent.mkdir()
    docker_file(home).write_text("")
    assert lab("login").exit_code == 0
    assert load(docker_file(home)) == {"auths": {HOST: ours()}}


def test_login_warns_about_credential_helpers(logged_in: Path, home: Path) -> None:
    docker_file(home).parent.mkdir()
    docker_file(home).write_text(json.dumps({"credsStore": "desktop"}))
    result = lab("login")
    assert result.exit_code == 0
    assert result.stderr == (f"warning: {docker_file(home)}: credsStore 'desktop' is asked "
                             "first (docker)\n")


def test_login_without_a_token(home: Path, api: FakeApi, pki: Pki) -> None:
    config = kubeconfig.build(api.server, "alice", TOKEN, [], pki.ca_pem())
    config["users"][0]["user"] = {"client-certificate-data": "eA==", "client-key-data": "eA=="}
    kubeconfig.write(home / "kubeconfig", config)
    line = error_line(lab("login"))
    assert line == 'Error: the kubeconfig\'s current context has no token; run "lab login" first'
    assert api.seen == []
    assert not (home / ".config").exists() and not (home / ".docker").exists()


def test_login_without_a_kubeconfig(home: Path) -> None:
    assert error_line(lab("login")).endswith('run "lab login" first')
    assert not (home / ".config").exists() and not (home / ".docker").exists()


def test_login_without_a_ca_in_the_kubeconfig(home: Path, api: FakeApi) -> None:
    kubeconfig.write(home / "kubeconfig", kubeconfig.build(api.server, "alice", TOKEN, [], None,
                                                           insecure=True))
    result = lab("login")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"wrote {auth_file(home)}", f"wrote {docker_file(home)}"]
    assert result.stderr == "warning: the kubeconfig has no certificate authority; no ca.crt " \
                            "written\n"


def test_login_refuses_an_untrusted_server(home: Path, api: FakeApi, tmp_path: Path) -> None:
    other = ensure_pki(tmp_path / "other-pki", ["localhost"], ["127.0.0.1"])
    kubeconfig.write(home / "kubeconfig", kubeconfig.build(api.server, "alice", TOKEN, [],
                                                           other.ca_pem()))
    assert "is not trusted" in error_line(lab("login"))
    assert not (home / ".config").exists()


# -- logout -------------------------------------------------------------------------------------


def test_logout_removes_only_our_entry_and_ca(logged_in: Path, home: Path,
                                              tmp_path: Path) -> None:
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    certs = ("--certs-dir", str(c1), "--certs-dir", str(c2))
    auth_file(home).parent.mkdir(parents=True)
    auth_file(home).write_text(json.dumps({"auths": {"quay.io": OTHER}, "credHelpers": {}}))
    assert lab("login", *certs).exit_code == 0
    (c2 / HOST / "client.cert").write_text("theirs")
    result = lab("logout", *certs)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"removed {HOST} from {auth_file(home)}", f"removed {HOST} from {docker_file(home)}",
        f"removed {c1 / HOST / 'ca.crt'}", f"removed {c1 / HOST}", f"removed {c2 / HOST / 'ca.crt'}"]
    assert load(auth_file(home)) == {"auths": {"quay.io": OTHER}, "credHelpers": {}}
    assert load(docker_file(home)) == {"auths": {}}
    assert mode(auth_file(home)) == 0o600
    assert c1.is_dir() and not (c1 / HOST).exists()
    assert sorted(p.name for p in (c2 / HOST).iterdir()) == ["client.cert"]
    again = lab("logout", *certs)  # idempotent
    assert (again.exit_code, again.stdout) == (0, f"not logged in to {HOST}\n")


def test_logout_of_a_named_registry_needs_no_api(home: Path) -> None:
    docker_file(home).parent.mkdir()
    docker_file(home).write_text(json.dumps({"auths": {HOST: ours(), "quay.io": OTHER}}))
    user_ca(home).parent.mkdir(parents=True)
    user_ca(home).write_text("ca")
    result = lab("logout", HOST)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"removed {HOST} from {docker_file(home)}",
                                          f"removed {user_ca(home)}", f"removed {user_ca(home).parent}"]
    assert load(docker_file(home)) == {"auths": {"quay.io": OTHER}}
    assert not auth_file(home).exists()  # logout never creates a file


def test_logout_needs_a_registry_name(home: Path) -> None:
    line = error_line(lab("logout"))
    assert line.endswith("(or name the registry: lab registry logout HOST:PORT)")
    assert error_line(lab("logout", "../x:5000")) == "Error: not a registry HOST:PORT: '../x:5000'"


def test_logout_refuses_a_symlinked_auth_file(home: Path) -> None:
    target = home / "elsewhere.json"
    target.write_text(json.dumps({"auths": {HOST: ours()}}))
    docker_file(home).parent.mkdir()
    docker_file(home).symlink_to(target)
    line = error_line(lab("logout", HOST))
    assert line == f"Error: refusing to write {docker_file(home)}: it is a symbolic link"
    assert load(target) == {"auths": {HOST: ours()}}


# -- pieces -------------------------------------------------------------------------------------


def test_root_writes_the_ca_where_the_system_looks(tmp_path: Path) -> None:
    assert default_certs_dirs({}, tmp_path, is_root=True) == [
        Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d")]
    assert default_certs_dirs({"XDG_CONFIG_HOME": "/x"}, tmp_path, is_root=False) == [
        Path("/x/containers/certs.d")]


@pytest.mark.parametrize("good", ["198.18.0.1:5000", "lab.example.test:5000", "[::1]:5000",
                                  "localhost:65535"])
def test_hostport_accepted(good: str) -> None:
    assert check_hostport(good) == good


@pytest.mark.parametrize("bad", ["lab:0", "lab:65536", "lab", "../etc:5000", "a/b:5000",
                                 ".:5000", "lab:5000/x", "-lab:5000", "", "lab :5000"])
def test_hostport_refused(bad: str) -> None:
    with pytest.raises(RegistryLoginError):
        check_hostport(bad)


def test_the_kubeconfig_is_read_as_yaml(home: Path) -> None:
    (home / "kubeconfig").write_text(yaml.safe_dump(["not", "a", "config"]))
    assert error_line(lab("url")).startswith("Error: no usable kubeconfig at ")
