"""The registry client against hostile fake registries served by ``http.server`` on loopback.

The fakes are scripted per path, so each test shows one misbehaviour:
redirects to places the policy forbids, credentials that must not follow a
redirect, content that does not match its digest, answers that are too big,
tokens that try to inject headers, error bodies that echo secrets."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hypervisor.oci import (BadImage, Credentials, DigestMismatch, ImageNotFound, ImagePullError,
                            Limits, NoMatchingPlatform, PolicyRefused, RegistryClient,
                            RegistryError, RegistryPolicy, RegistryUnreachable, TooLarge,
                            Unauthorized, UnsupportedImage, parse_reference)
from hypervisor.oci.manifest import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST

Reply = tuple[int, dict[str, str], bytes]
Route = Callable[[BaseHTTPRequestHandler], Reply]
PASSWORD = "pa55-w0rd-do-not-leak"


@dataclass
class FakeServer:
    """A loopback HTTP server answering from ``routes``; remembers every request."""

    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer("HEAD")

            def _answer(self, method: str) -> None:
                fake.requests.append((method, self.path, dict(self.headers.items())))
                route = fake.routes.get(self.path.split("?", 1)[0])
                status, headers, body = route(self) if route else (404, {}, b"")
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[[], FakeServer]]:
    made: list[FakeServer] = []

    def make() -> FakeServer:
        made.append(FakeServer())
        return made[-1]

    yield make
    for server in made:
        server.close()


def allow(*servers: FakeServer) -> RegistryPolicy:
    hosts = frozenset(s.host for s in servers)
    return RegistryPolicy(allowed_private=hosts, insecure=hosts)


def ok(body: bytes, content_type: str = "application/octet-stream", **headers: str) -> Route:
    return lambda _h: (200, {"Content-Type": content_type, **headers}, body)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Image:
    """A one-layer image, its documents and the routes that serve them."""

    layer: bytes
    diff_id: str
    config: bytes
    manifest: bytes

    @classmethod
    def make(cls, arch: str = "amd64", layer_media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
             config_media_type: str = OCI_CONFIG) -> Image:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo("hello")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"hello"))
        raw = buffer.getvalue()
        layer = gzip.compress(raw, mtime=0)
        config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [sha(raw)]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_media_type, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": layer_media_type, "digest": sha(layer), "size": len(layer)}],
        }).encode()
        return cls(layer, sha(raw), config, manifest)

    def serve(self, server: FakeServer, repo: str = "demo/app", tag: str = "1.0") -> None:
        base = f"/v2/{repo}"
        manifest = ok(self.manifest, OCI_MANIFEST, **{"Docker-Content-Digest": sha(self.manifest)})
        server.routes[f"{base}/manifests/{tag}"] = manifest
        server.routes[f"{base}/manifests/{sha(self.manifest)}"] = manifest
        server.routes[f"{base}/blobs/{sha(self.config)}"] = ok(self.config)
        server.routes[f"{base}/blobs/{sha(self.layer)}"] = ok(self.layer)

    @property
    def layer_path(self) -> str:
        return f"/v2/demo/app/blobs/{sha(self.layer)}"


def client(server: FakeServer, policy: RegistryPolicy | None = None,
           credentials: Credentials | None = None, limits: Limits | None = None) -> RegistryClient:
    return RegistryClient(server.host, policy or allow(server), credentials, limits=limits)


def ref(server: FakeServer, rest: str = "demo/app:1.0") -> Any:
    return parse_reference(f"{server.host}/{rest}")


def fetch_layer(c: RegistryClient, server: FakeServer, image: Image, tmp_path: Path) -> Path:
    resolved = c.resolve(ref(server))
    dest = tmp_path / "layer"
    c.fetch_blob(resolved.reference, resolved.manifest.layers[0], dest)
    return dest


# -- the happy path ------------------------------------------------------------------------------


def test_resolve_and_fetch(servers: Callable[[], FakeServer], tmp_path: Path) -> None:
    registry = servers()
    image = Image.make()
    image.serve(registry)
    c = client(registry)
    resolved = c.resolve(ref(registry))
    assert resolved.digest == resolved.manifest_digest == sha(image.manifest)
    assert resolved.config.config.cmd == ["sh"]
    assert c.head_digest(ref(registry)) == sha(image.manifest)
    assert fetch_layer(c, registry, image, tmp_path).read_bytes() == image.layer
    accept = registry.requests[0][2]["Accept"]
    assert OCI_INDEX in accept and OCI_MANIFEST in accept


def test_index_picks_amd64(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    image = Image.make()
    image.serve(registry)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 9,
         "platform": {"os": "linux", "architecture": "arm64"}},
        {"mediaType": OCI_MANIFEST, "digest": sha(image.manifest), "size": len(image.manifest),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    registry.routes["/v2/demo/app/manifests/multi"] = ok(index, OCI_INDEX)
    resolved = client(registry).resolve(ref(registry, "demo/app:multi"))
    assert resolved.digest == sha(index)
    assert resolved.manifest_digest == sha(image.manifest)


def test_nested_indexes_have_a_limit(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    loop = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": "sha256:" + "2" * 64, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    inner = {"mediaType": OCI_INDEX, "digest": sha(loop), "size": len(loop),
             "platform": {"os": "linux", "architecture": "amd64"}}
    outer = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [inner]}).encode()
    inner2 = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**inner, "digest": sha(outer), "size": len(outer)}]}).encode()
    registry.routes["/v2/demo/app/manifests/deep"] = ok(inner2, OCI_INDEX)
    registry.routes[f"/v2/demo/app/manifests/{sha(outer)}"] = ok(outer, OCI_INDEX)
    registry.routes[f"/v2/demo/app/manifests/{sha(loop)}"] = ok(loop, OCI_INDEX)
    with pytest.raises(BadImage, match="nested"):
        client(registry).resolve(ref(registry, "demo/app:deep"))


def test_single_manifest_for_arm64_is_refused(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    Image.make(arch="arm64").serve(registry)
    with pytest.raises(NoMatchingPlatform, match="built for linux/arm64"):
        client(registry).resolve(ref(registry))


def test_not_a_container_image(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    Image.make(config_media_type="application/vnd.cncf.helm.config.v1+json").serve(registry)
    with pytest.raises(UnsupportedImage, match="not a container image"):
        client(registry).resolve(ref(registry))
    registry2 = servers()
    Image.make(layer_media_type="application/x-rar").serve(registry2)
    with pytest.raises(UnsupportedImage, match="layer of unsupported type"):
        client(registry2).resolve(ref(registry2))


# -- digests and sizes ---------------------------------------------------------------------------


def test_blob_that_does_not_match_its_digest(servers: Callable[[], FakeServer],
                                             tmp_path: Path) -> None:
    registry = servers()
    image = Image.make()
    image.serve(registry)
    tampered = bytearray(image.layer)
    tampered[-9] ^= 0xFF
    registry.routes[image.layer_path] = ok(bytes(tampered))
    with pytest.raises(DigestMismatch, match="tampered"):
        fetch_layer(client(registry), registry, image, tmp_path)
    assert not (tmp_path / "layer").exists()


def test_blob_longer_or_shorter_than_its_descriptor(servers: Callable[[], FakeServer],
                                                    tmp_path: Path) -> None:
    registry = servers()
    image = Image.make()
    image.serve(registry)
    registry.routes[image.layer_path] = ok(image.layer + b"extra")
    with pytest.raises(DigestMismatch, match="sends"):
        fetch_layer(client(registry), registry, image, tmp_path)
    registry.routes[image.layer_path] = lambda _h: (200, {"Transfer-Encoding": "chunked"},
                                                    _chunked(image.layer + b"extra"))
    with pytest.raises(DigestMismatch, match="larger"):
        fetch_layer(client(registry), registry, image, tmp_path)
    registry.routes[image.layer_path] = lambda _h: (200, {"Transfer-Encoding": "chunked"},
                                                    _chunked(image.layer[:-3]))
    with pytest.raises(RegistryUnreachable, match="ended after"):
        fetch_layer(client(registry), registry, image, tmp_path)


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n"


def test_manifest_by_digest_must_hash_to_it(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    image = Image.make()
    image.serve(registry)
    other = Image.make(arch="arm64")
    registry.routes[f"/v2/demo/app/manifests/{sha(image.manifest)}"] = ok(other.manifest, OCI_MANIFEST)
    with pytest.raises(DigestMismatch):
        client(registry).resolve(ref(registry, f"demo/app@{sha(image.manifest)}"))


def test_announced_digest_must_match(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    image = Image.make()
    image.serve(registry)
    registry.routes["/v2/demo/app/manifests/1.0"] = ok(
        image.manifest, OCI_MANIFEST, **{"Docker-Content-Digest": "sha256:" + "f" * 64})
    with pytest.raises(DigestMismatch, match="announced"):
        client(registry).resolve(ref(registry))


def test_size_caps(servers: Callable[[], FakeServer], tmp_path: Path) -> None:
    registry = servers()
    image = Image.make()
    image.serve(registry)
    small = Limits(max_manifest_bytes=100)
    with pytest.raises(TooLarge, match="manifest"):
        client(registry, limits=small).resolve(ref(registry))
    registry.routes["/v2/demo/app/manifests/chunked"] = lambda _h: (
        200, {"Transfer-Encoding": "chunked", "Content-Type": OCI_MANIFEST}, _chunked(image.manifest))
    with pytest.raises(TooLarge):
        client(registry, limits=small).resolve(ref(registry, "demo/app:chunked"))
    with pytest.raises(TooLarge, match="layer"):
        client(registry, limits=Limits(max_layer_bytes=10)).resolve(ref(registry))
    with pytest.raises(TooLarge, match="blob"):
        client(registry, limits=Limits(max_config_bytes=10)).resolve(ref(registry))


# -- errors --------------------------------------------------------------------------------------


def test_not_found_messages(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    registry.routes["/v2/demo/app/manifests/2.0"] = lambda _h: (
        404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')
    registry.routes["/v2/demo/app/tags/list"] = ok(b'{"name":"demo/app","tags":["1.0"]}')
    with pytest.raises(ImageNotFound) as info:
        client(registry).resolve(ref(registry, "demo/app:2.0"))
    assert str(info.value) == f"manifest unknown: {registry.host}/demo/app:2.0 not found"
    registry.routes["/v2/demo/gone/manifests/1.0"] = lambda _h: (
        404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
    registry.routes["/v2/demo/gone/tags/list"] = lambda _h: (
        404, {}, b'{"errors":[{"code":"NAME_UNKNOWN"}]}')
    with pytest.raises(ImageNotFound) as info:
        client(registry).resolve(ref(registry, "demo/gone:1.0"))
    assert str(info.value) == f"repository unknown: {registry.host}/demo/gone not found"
    assert info.value.reason == "ErrImagePull"


@pytest.mark.parametrize(("status", "error", "temporary"), [
    (500, RegistryError, True), (503, RegistryError, True), (429, RegistryError, True),
    (400, RegistryError, False), (403, Unauthorized, False), (418, RegistryError, False),
])
def test_status_codes(servers: Callable[[], FakeServer], status: int, error: type[ImagePullError],
                      temporary: bool) -> None:
    registry = servers()
    registry.routes["/v2/demo/app/manifests/1.0"] = lambda _h: (status, {}, b"nope")
    with pytest.raises(error) as info:
        client(registry).resolve(ref(registry))
    assert info.value.temporary is temporary


def test_connection_refused_and_timeouts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{sock.getsockname()[1]}"
        policy = RegistryPolicy(allowed_private=frozenset({host}), insecure=frozenset({host}))
        with pytest.raises(RegistryUnreachable, match="Connection refused") as info:
            RegistryClient(host, policy).resolve(parse_reference(f"{host}/demo/app:1"))
        assert info.value.temporary
        sock.listen(1)  # accepts, never answers
        with pytest.raises(RegistryUnreachable, match="timed out"):
            RegistryClient(host, policy, limits=Limits(timeout_s=0.3)).resolve(
                parse_reference(f"{host}/demo/app:1"))


def test_https_by_default(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    policy = RegistryPolicy(allowed_private=frozenset({registry.host}))  # not insecure
    with pytest.raises(RegistryUnreachable, match="TLS"):
        client(registry, policy).resolve(ref(registry))


def test_loopback_registry_not_in_policy(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    policy = RegistryPolicy(insecure=frozenset({registry.host}))
    with pytest.raises(PolicyRefused, match="loopback"):
        client(registry, policy).resolve(ref(registry))
    assert registry.requests == []


# -- redirects -----------------------------------------------------------------------------------


def redirect(location: str, status: int = 307) -> Route:
    return lambda _h: (status, {"Location": location}, b"")


def test_redirect_to_a_forbidden_host_is_refused(servers: Callable[[], FakeServer],
                                                 tmp_path: Path) -> None:
    registry, storage = servers(), servers()
    image = Image.make()
    image.serve(registry)
    registry.routes[image.layer_path] = redirect(f"http://{storage.host}/bucket/layer?sig=SECRET")
    storage.routes["/bucket/layer"] = ok(image.layer)
    with pytest.raises(PolicyRefused) as info:
        fetch_layer(client(registry), registry, image, tmp_path)
    assert storage.requests == []
    assert "SECRET" not in str(info.value)
    registry.routes[image.layer_path] = redirect("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(PolicyRefused, match="link-local|plain HTTP"):
        fetch_layer(client(registry), registry, image, tmp_path)


def test_credentials_never_follow_a_redirect(servers: Callable[[], FakeServer],
                                             tmp_path: Path) -> None:
    registry, storage = servers(), servers()
    image = Image.make()
    image.serve(registry)

    def guarded(route: Route) -> Route:
        def answer(handler: BaseHTTPRequestHandler) -> Reply:
            if handler.headers.get("Authorization") != Credentials("u", PASSWORD).basic_header():
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return route(handler)
        return answer

    for path, route in list(registry.routes.items()):
        registry.routes[path] = guarded(route)
    registry.routes[image.layer_path] = guarded(redirect(f"http://{storage.host}/blob?X-Sig=abc"))
    storage.routes["/blob"] = ok(image.layer)
    c = client(registry, allow(registry, storage), Credentials("u", PASSWORD))
    assert fetch_layer(c, registry, image, tmp_path).read_bytes() == image.layer
    assert [r[1] for r in storage.requests] == ["/blob?X-Sig=abc"]
    assert "Authorization" not in storage.requests[0][2]


def test_too_many_redirects(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    registry.routes["/v2/demo/app/manifests/1.0"] = redirect("/v2/demo/app/manifests/1.0", 302)
    with pytest.raises(RegistryError, match="redirects"):
        client(registry).resolve(ref(registry))
    registry.routes["/v2/demo/app/manifests/1.0"] = lambda _h: (302, {}, b"")
    with pytest.raises(RegistryError, match="without a Location"):
        client(registry).resolve(ref(registry))


# -- authentication ------------------------------------------------------------------------------


def token_registry(registry: FakeServer, realm: FakeServer, token: str,
                   image: Image) -> None:
    image.serve(registry)
    for path, route in list(registry.routes.items()):
        def answer(handler: BaseHTTPRequestHandler, route: Route = route) -> Reply:
            if handler.headers.get("Authorization") != f"Bearer {token}":
                challenge = (f'Bearer realm="http://{realm.host}/token",service="svc",'
                             'scope="repository:demo/app:pull"')
                return 401, {"WWW-Authenticate": challenge}, b""
            return route(handler)
        registry.routes[path] = answer


def test_bearer_token_flow(servers: Callable[[], FakeServer]) -> None:
    registry, realm = servers(), servers()
    token_registry(registry, realm, "tok-123", Image.make())

    def issue(handler: BaseHTTPRequestHandler) -> Reply:
        if handler.headers.get("Authorization") != Credentials("u", PASSWORD).basic_header():
            return 401, {}, b""
        return 200, {}, json.dumps({"access_token": "tok-123"}).encode()

    realm.routes["/token"] = issue
    c = client(registry, allow(registry, realm), Credentials("u", PASSWORD))
    c.resolve(ref(registry))
    assert realm.requests[0][1] == "/token?service=svc&scope=repository%3Ademo%2Fapp%3Apull"
    assert len(realm.requests) == 1  # the token is reused
    with pytest.raises(Unauthorized, match="refused the credentials") as info:
        client(registry, allow(registry, realm), Credentials("u", "wrong")).resolve(ref(registry))
    assert "wrong" not in str(info.value)
    with pytest.raises(Unauthorized, match="none were given"):
        client(registry, allow(registry, realm)).resolve(ref(registry))


def test_token_realm_is_checked_against_the_policy(servers: Callable[[], FakeServer]) -> None:
    registry, realm = servers(), servers()
    token_registry(registry, realm, "tok", Image.make())
    realm.routes["/token"] = ok(b'{"token": "tok"}')
    with pytest.raises(PolicyRefused):
        client(registry, allow(registry), Credentials("u", PASSWORD)).resolve(ref(registry))
    assert realm.requests == []  # the password never went there


@pytest.mark.parametrize("token", ["a\r\nX-Injected: 1", "", "x" * 20_000, "tok en"])
def test_unusable_tokens(servers: Callable[[], FakeServer], token: str) -> None:
    registry, realm = servers(), servers()
    token_registry(registry, realm, "tok", Image.make())
    realm.routes["/token"] = ok(json.dumps({"token": token}).encode())
    with pytest.raises(RegistryError, match="no usable token"):
        client(registry, allow(registry, realm)).resolve(ref(registry))


def test_secrets_never_in_messages(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    echo = json.dumps({"errors": [{"code": "DENIED",
                                   "message": f"bad password {PASSWORD} \x1b[31m"}]}).encode()

    def answer(handler: BaseHTTPRequestHandler) -> Reply:
        if handler.headers.get("Authorization"):
            return 403, {}, echo
        return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""

    registry.routes["/v2/demo/app/manifests/1.0"] = answer
    with pytest.raises(Unauthorized) as info:
        client(registry, credentials=Credentials("u", PASSWORD)).resolve(ref(registry))
    message = str(info.value)
    assert PASSWORD not in message and "\x1b" not in message
    assert "bad password ***" in message


def test_basic_auth_without_credentials(servers: Callable[[], FakeServer]) -> None:
    registry = servers()
    registry.routes["/v2/demo/app/manifests/1.0"] = lambda _h: (
        401, {"WWW-Authenticate": 'Basic realm="r"'}, b"")
    with pytest.raises(Unauthorized, match="requires credentials"):
        client(registry).resolve(ref(registry))
    registry.routes["/v2/demo/app/manifests/1.0"] = lambda _h: (
        401, {"WWW-Authenticate": 'Negotiate abc'}, b"")
    with pytest.raises(Unauthorized, match="does not speak"):
        client(registry).resolve(ref(registry))


def test_refusals_keep_the_registrys_reason(servers: Callable[[], FakeServer]) -> None:
    """401s from the registry and from its token service keep what they said, scrubbed of
    the password and of the Basic header that carries it (a token service may echo it)."""
    registry, realm = servers(), servers()
    token_registry(registry, realm, "tok", Image.make())
    creds = Credentials("u", PASSWORD)

    def refuse(handler: BaseHTTPRequestHandler) -> Reply:
        said = f"no pod of demo here; you sent {handler.headers.get('Authorization')}"
        return 401, {}, json.dumps({"errors": [{"code": "DENIED", "message": said}]}).encode()

    realm.routes["/token"] = refuse
    with pytest.raises(Unauthorized, match="refused the credentials") as info:
        client(registry, allow(registry, realm), creds).resolve(ref(registry))
    message = str(info.value)
    assert "no pod of demo here; you sent Basic ***" in message
    assert PASSWORD not in message and creds.basic_header().split()[1] not in message
    realm.routes["/token"] = ok(b'{"token": "not-enough"}')  # a token without the scope
    challenge = registry.routes["/v2/demo/app/manifests/1.0"]
    registry.routes["/v2/demo/app/manifests/1.0"] = lambda h: challenge(h)[:2] + (
        b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',)
    with pytest.raises(Unauthorized, match=r"refused the credentials .*\(authentication required\)"):
        client(registry, allow(registry, realm), creds).resolve(ref(registry))
