"""A real, throwaway OCI registry (Debian's ``docker-registry``, CNCF Distribution) for tests.

Three ways to guard it, as real registries are:

- ``auth="none"``: anonymous pulls and pushes;
- ``auth="htpasswd"``: HTTP Basic against an htpasswd file of bcrypt hashes
  (made with Python's ``bcrypt``, which paramiko already brings);
- ``auth="token"``: the Docker token flow. ``TokenServer`` (a threaded
  ``http.server`` on loopback) checks Basic credentials and issues RS256 JWTs
  signed by a throwaway key; its self-signed certificate is the registry's
  ``rootcertbundle`` and travels in each token's ``x5c`` header.
  Authenticated users get the actions they ask for, anonymous callers get
  none (so anonymous pulls fail with 401, as on a private Harbor project).

Everything listens on 127.0.0.1 on free ports and lives in a temporary
directory that is removed, with the process killed, when the context ends::

    with LocalRegistry(auth="htpasswd", users={"alice": "s3cret"}) as reg:
        reg.host         # "127.0.0.1:41234"
        reg.policy()     # a RegistryPolicy that allows it (plain HTTP, loopback)
        reg.dockerconfigjson("alice", "s3cret")  # bytes of a pull secret

or with the pytest fixtures ``anonymous_registry``, ``basic_registry`` and
``token_registry`` (module scope; import them into a test module).
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl, urlsplit

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from hypervisor.oci import RegistryPolicy

LOG = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
SERVICE = "pacific-test-registry"
ISSUER = "pacific-test-token-issuer"
TOKEN_LIFETIME_S = 300
START_TIMEOUT_S = 20.0
DEFAULT_USERS: Mapping[str, str] = {"alice": "correct-horse-battery"}

AuthMode = Literal["none", "htpasswd", "token"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- the token server ---------------------------------------------------------------------------


class TokenServer:
    """Issues registry tokens per the Docker token spec, for the users it knows."""

    def __init__(self, users: Mapping[str, str], workdir: Path) -> None:
        self.users = dict(users)
        self.requests: list[dict[str, str]] = []  # query of every token request, for tests
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._cert = _self_signed(self._key)
        self.cert_path = workdir / "token-ca.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="token-server",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def issue(self, subject: str, scopes: list[str]) -> str:
        """A signed JWT granting ``subject`` the actions of ``scopes`` (``type:name:actions``)."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER))
                          .decode("ascii")]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 30,
                  "exp": now + TOKEN_LIFETIME_S, "jti": secrets.token_hex(12),
                  "access": [_access(scope) for scope in scopes] if subject else []}
        signing_input = (_b64url(json.dumps(header).encode()) + "."
                         + _b64url(json.dumps(claims).encode()))
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def check(self, authorization: str | None) -> str | None:
        """The user name for a valid Basic header, "" for none, None for wrong credentials."""
        if not authorization:
            return ""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        expected = self.users.get(user)
        if expected is None or not secrets.compare_digest(expected, password):
            return None
        return user

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                if parts.path != "/token":
                    self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
                    return
                query = parse_qsl(parts.query)
                server.requests.append(dict(query))
                user = server.check(self.headers.get("Authorization"))
                if user is None:
                    self._send(HTTPStatus.UNAUTHORIZED, {"details": "wrong credentials"})
                    return
                token = server.issue(user, [v for k, v in query if k == "scope"])
                self._send(HTTPStatus.OK, {"token": token, "access_token": token,
                                           "expires_in": TOKEN_LIFETIME_S})

            def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                LOG.debug("token server: %s %s", format, args)

        return Handler


def _access(scope: str) -> dict[str, Any]:
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    """A CA-less self-signed certificate without extended key usage (Go's verifier accepts it)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pacific-test-token-signer")])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


# -- the registry -------------------------------------------------------------------------------


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1, guarded by nothing, htpasswd or tokens."""

    def __init__(self, auth: AuthMode = "none", users: Mapping[str, str] | None = None,
                 workdir: Path | None = None) -> None:
        if shutil.which(REGISTRY_BINARY) is None:
            raise RuntimeError("docker-registry is not installed (Debian package docker-registry)")
        self.auth = auth
        self.users = dict(DEFAULT_USERS if users is None else users)
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="pacific-registry-")) if workdir is None else workdir
        self.port = 0
        self.token_server: TokenServer | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.dir / "registry.log"
        self._finalizer = weakref.finalize(self, _kill, None)

    # -- lifecycle --

    def start(self) -> Self:
        if self.auth == "token":
            self.token_server = TokenServer(self.users, self.dir)
            self.token_server.start()
        for _attempt in range(3):  # a free port can be taken before the registry binds it
            self.port = free_port()
            config = self._write_config()
            with self._log.open("ab") as log:
                self._proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)],
                                              stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True)
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _kill, self._proc)
            if self._wait_ready():
                return self
            self._stop_process()
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {self.log_tail()}")

    def stop(self) -> None:
        self._stop_process()
        if self.token_server is not None:
            self.token_server.stop()
            self.token_server = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        self._finalizer.detach()
        _kill(proc)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=2):
                    return True
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    # -- configuration --

    def _write_config(self) -> Path:
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.dir / "storage")},
                        "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": secrets.token_hex(16)},
        }
        if self.auth == "htpasswd":
            config["auth"] = {"htpasswd": {"realm": "pacific-test", "path": str(self._htpasswd())}}
        elif self.auth == "token":
            assert self.token_server is not None
            config["auth"] = {"token": {"realm": self.token_server.realm, "service": SERVICE,
                                        "issuer": ISSUER,
                                        "rootcertbundle": str(self.token_server.cert_path)}}
        path = self.dir / "config.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=True))
        return path

    def _htpasswd(self) -> Path:
        lines = []
        for user, password in sorted(self.users.items()):
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            lines.append(f"{user}:{hashed.replace('$2b$', '$2y$', 1)}\n")
        path = self.dir / "htpasswd"
        path.write_text("".join(lines))
        return path

    # -- what tests use --

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def policy(self) -> RegistryPolicy:
        """A policy that allows this registry (and its token server): loopback, plain HTTP."""
        hosts = {self.host}
        if self.token_server is not None:
            hosts.add(f"127.0.0.1:{self.token_server.port}")
        return RegistryPolicy(allowed_private=frozenset(hosts), insecure=frozenset(hosts))

    def credentials(self) -> tuple[str, str] | None:
        """The first user's name and password (for pushing), or None without auth."""
        if self.auth == "none" or not self.users:
            return None
        return next(iter(sorted(self.users.items())))

    def dockerconfigjson(self, username: str, password: str) -> bytes:
        """The ``.dockerconfigjson`` of a pull secret for this registry."""
        auth = base64.b64encode(f"{username}:{password}".encode()).decode()
        return json.dumps({"auths": {self.host: {"auth": auth}}}).encode()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with_group = True
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        with_group = False
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        if with_group:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=5)


# -- pytest fixtures ----------------------------------------------------------------------------


def _fixture(auth: AuthMode) -> Iterator[LocalRegistry]:
    with LocalRegistry(auth=auth) as registry:
        yield registry


@pytest.fixture(scope="module")
def anonymous_registry() -> Iterator[LocalRegistry]:
    """A registry without authentication."""
    yield from _fixture("none")


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[LocalRegistry]:
    """A registry with HTTP Basic authentication (user ``alice``, see ``DEFAULT_USERS``)."""
    yield from _fixture("htpasswd")


@pytest.fixture(scope="module")
def token_registry() -> Iterator[LocalRegistry]:
    """A registry with bearer-token authentication from a ``TokenServer``."""
    yield from _fixture("token")
