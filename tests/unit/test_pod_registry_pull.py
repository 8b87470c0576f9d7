"""The pod agent and the lab registry: whose credentials a pull uses, the per-pod check
of cached images, and the lab CA.

Fakes only: an in-memory API, a scripted image cache, and a fake lab registry on
loopback that speaks HTTPS with a certificate of a throw-away lab CA and the Docker
token protocol (it grants the node identity ``pull`` on project ``team-a`` only).
No libvirt; ``mkfs.erofs`` is replaced by a file write."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from appliance import errors
from appliance.agent import pods as pods_module
from appliance.agent.pods import PodController, registry_policy
from appliance.kinds.registry import Obj
from appliance.pki import Pki, ensure_pki
from appliance.resources import Ref
from appliance.settings import Settings
from hypervisor.oci import (CachedImage, Credentials, ImageCache, ImageConfig, RegistryClient,
                            RegistryPolicy, RegistryUnreachable, Unauthorized, parse_reference)
from tests.unit.test_oci_registry import Image, Reply, Route, sha

NODE = "node-1"
TOKEN = "node-api-token-n3ver-in-a-message"
PUBLIC = "registry.example.com"

# -- fakes ---------------------------------------------------------------------------------------


class FakeApi:
    """Objects by (plural, namespace, name); status patches and events are kept."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.patches: list[Obj] = []

    def get(self, ref: Ref, namespace: str, name: str) -> Obj:
        try:
            return self.objects[(ref.plural, namespace, name)]
        except KeyError:
            raise errors.not_found(ref.plural, ref.group, name) from None

    def create(self, ref: Ref, namespace: str, body: Obj) -> Obj:
        self.objects[(ref.plural, namespace, body["metadata"]["name"])] = body
        return body

    def patch(self, ref: Ref, namespace: str, name: str, patch: Obj,
              subresource: str = "") -> Obj:
        self.patches.append(patch)
        return {}

    def events(self) -> list[Obj]:
        return [o for (plural, _, _), o in self.objects.items() if plural == "events"]


@dataclass
class FakeImages:
    """An image cache that records what it was asked; ``cached`` is what it holds."""

    cached: set[str] = field(default_factory=set)
    calls: list[tuple[str, Credentials | None, str, bool]] = field(default_factory=list)

    def lookup(self, reference: str) -> CachedImage | None:
        return _image(reference) if reference in self.cached else None

    def ensure(self, reference: str, credentials: Credentials | None = None, *,
               pull: str = "Always", progress: object = None,
               authorize: bool = False) -> CachedImage:
        self.calls.append((reference, credentials, pull, authorize))
        return _image(reference)


def _image(reference: str) -> CachedImage:
    digest = "sha256:" + "0" * 64
    return CachedImage(reference, digest, digest, digest, Path("/nonexistent.erofs"),
                       Path("/nonexistent.json"), ImageConfig(), 0)


def dockerconfig(registry: str, user: str, password: str) -> Obj:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    doc = json.dumps({"auths": {registry: {"auth": auth}}}).encode()
    return {"metadata": {"name": "pull"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64.b64encode(doc).decode()}}


def pod(namespace: str, image: str, *, policy: str = "IfNotPresent",
        secret: str | None = None) -> Obj:
    spec: Obj = {"nodeName": NODE,
                 "containers": [{"name": "app", "image": image, "imagePullPolicy": policy}]}
    if secret:
        spec["imagePullSecrets"] = [{"name": secret}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": namespace, "uid": f"uid-{namespace}"},
            "spec": spec, "status": {"podIP": "198.18.0.10"}}


@pytest.fixture
def lab_names(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Sets the names under which this host reaches the lab registry (no DNS looked at)."""
    def set_names(*names: str) -> None:
        def local_names(_settings: Settings) -> set[str]:
            return set(names)
        monkeypatch.setattr("appliance.registry.local_names", local_names)
        monkeypatch.setattr(pods_module, "local_names", local_names)
    return set_names


def controller(tmp_path: Path, api: FakeApi, images: FakeImages | None = None, *,
               token: str = TOKEN, lab_ca: Path | None = None) -> PodController:
    settings = Settings(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache")
    return PodController(api, NODE, "10.0.0.5", settings, "tcg", cast(Any, None), "net",
                         images=cast(Any, images), node_token=token, lab_ca=lab_ca)


def pull(ctl: PodController, p: Obj) -> dict[str, CachedImage]:
    return ctl._pull(p, ctl._run(p))


# -- which credentials ---------------------------------------------------------------------------


LAB = "lab.test:5000"


@pytest.mark.parametrize(("namespace", "image", "secret", "expected"), [
    # its own project on the lab registry: this node's identity
    ("team-a", f"{LAB}/team-a/app:1", None, ("system:node:node-1", TOKEN)),
    ("team-a", f"{LAB}/team-a/tools/app@sha256:" + "1" * 64, None, ("system:node:node-1", TOKEN)),
    # another namespace's project: nothing (the registry refuses anonymous pulls)
    ("team-b", f"{LAB}/team-a/app:1", None, None),
    ("team-b", f"{LAB.upper()}/team-a/app:1", None, None),
    # a matching imagePullSecret comes first, on the lab registry as anywhere
    ("team-b", f"{LAB}/team-a/app:1", LAB, ("robot", "secret-pw")),
    ("team-a", f"{LAB}/team-a/app:1", LAB, ("robot", "secret-pw")),
    # a secret for another registry does not match
    ("team-a", f"{LAB}/team-a/app:1", PUBLIC, ("system:node:node-1", TOKEN)),
    # not the lab registry: never the node's identity, whatever the path says
    ("team-a", f"{PUBLIC}/team-a/app:1", None, None),
    ("team-a", f"{PUBLIC}/team-a/app:1", PUBLIC, ("robot", "secret-pw")),
])
def test_credentials(tmp_path: Path, lab_names: Callable[..., None], namespace: str, image: str,
                     secret: str | None, expected: tuple[str, str] | None) -> None:
    lab_names(LAB)
    api, images = FakeApi(), FakeImages()
    if secret:
        api.objects[("secrets", namespace, "pull")] = dockerconfig(secret, "robot", "secret-pw")
    pull(controller(tmp_path, api, images), pod(namespace, image, secret="pull" if secret else None))
    [(_, creds, _, _)] = images.calls
    assert (None if creds is None else (creds.username, creds.password)) == expected


def test_no_node_token_no_node_identity(tmp_path: Path, lab_names: Callable[..., None]) -> None:
    lab_names(LAB)
    images = FakeImages()
    pull(controller(tmp_path, FakeApi(), images, token=""), pod("team-a", f"{LAB}/team-a/app:1"))
    assert images.calls[0][1] is None


def test_the_token_is_not_in_the_controllers_repr(tmp_path: Path,
                                                  lab_names: Callable[..., None]) -> None:
    lab_names(LAB)
    ctl = controller(tmp_path, FakeApi(), FakeImages())
    assert TOKEN not in repr(vars(ctl))


# -- cached images are authorised per pod --------------------------------------------------------


@pytest.mark.parametrize(("image", "policy", "asked", "authorize"), [
    (f"{LAB}/team-a/app:1", "IfNotPresent", True, True),
    (f"{LAB}/team-a/app:1", "Never", True, True),
    (f"{LAB}/team-a/app@sha256:" + "1" * 64, "IfNotPresent", True, True),
    (f"{LAB}/team-a/app:1", "Always", True, True),
    (f"{PUBLIC}/team-a/app:1", "IfNotPresent", False, False),  # as on any kubelet
    (f"{PUBLIC}/team-a/app:1", "Always", True, False),
])
def test_cached_lab_images_are_authorised(tmp_path: Path, lab_names: Callable[..., None],
                                          image: str, policy: str, asked: bool,
                                          authorize: bool) -> None:
    lab_names(LAB)
    api, images = FakeApi(), FakeImages(cached={image})
    got = pull(controller(tmp_path, api, images), pod("team-b", image, policy=policy))
    assert got[image].reference == image
    assert [(c[2], c[3]) for c in images.calls] == ([(policy, authorize)] if asked else [])
    assert not [e for e in api.events() if e["reason"] == "Pulling"]  # it was there already


def test_disabled_registry_is_not_the_lab(tmp_path: Path, lab_names: Callable[..., None]) -> None:
    lab_names(LAB)
    api, images = FakeApi(), FakeImages(cached={f"{LAB}/team-a/app:1"})
    settings = Settings(state_dir=tmp_path / "state", registry_enabled=False)
    ctl = PodController(api, NODE, "10.0.0.5", settings, "tcg", cast(Any, None), "net",
                        images=cast(Any, images), node_token=TOKEN)
    pull(ctl, pod("team-a", f"{LAB}/team-a/app:1"))
    assert images.calls == []


# -- the policy for the lab registry -------------------------------------------------------------


def test_policy_allows_and_trusts_the_lab_registry_only(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, registries_private=("10.1.1.1:5000",),
                        registries_insecure=("10.1.1.1:5000",))
    ca = tmp_path / "ca.crt"
    policy = registry_policy(settings, frozenset({"127.0.0.1:5000", "lab.test:5000"}), ca)
    assert policy.allows_private("127.0.0.1", 5000) and policy.allows_private("lab.test", 5000)
    assert policy.allows_private("10.1.1.1", 5000) and policy.is_insecure("10.1.1.1", 5000)
    assert not policy.allows_private("127.0.0.1", 5001)
    assert not policy.is_insecure("lab.test", 5000)  # HTTPS
    assert policy.ca_for("lab.test", 5000) == ca and policy.ca_for("LAB.test", 5000) == ca
    assert policy.ca_for("lab.test", 443) is None  # the system's CAs
    assert policy.ca_for(PUBLIC, 443) is None
    without_ca = registry_policy(settings, frozenset({"lab.test:5000"}), None)
    assert without_ca.registry_cas == ()


# -- against a fake lab registry -----------------------------------------------------------------


class LabRegistry:
    """HTTPS on loopback with the lab CA's certificate; ``routes`` as in test_oci_registry."""

    def __init__(self, pki: Pki) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.server_cert, pki.server_key)

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
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                sock, address = super().get_request()
                return tls.wrap_socket(sock, server_side=True), address

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that refused our certificate

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


REFUSAL = "no pod of namespace team-a is bound to node-1"


def protect(registry: LabRegistry, image: Image) -> None:
    """Serve ``image`` as team-a/app:1.0 behind the token protocol; the token service grants
    the node's identity pull on team-a, and refuses everyone else with a reason."""
    image.serve(cast(Any, registry), "team-a/app", "1.0")
    for path, route in list(registry.routes.items()):
        def answer(handler: BaseHTTPRequestHandler, route: Route = route) -> Reply:
            if handler.headers.get("Authorization") != "Bearer pull-team-a":
                challenge = (f'Bearer realm="https://{registry.host}/service/token",'
                             'service="pacific-lab-registry",scope="repository:team-a/app:pull"')
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                return 401, {"WWW-Authenticate": challenge}, body
            return route(handler)
        registry.routes[path] = answer

    def token(handler: BaseHTTPRequestHandler) -> Reply:
        scope = parse_qs(urlsplit(handler.path).query).get("scope", [""])[0]
        node = Credentials(f"system:node:{NODE}", TOKEN).basic_header()
        if handler.headers.get("Authorization") == node and scope == "repository:team-a/app:pull":
            return 200, {}, json.dumps({"token": "pull-team-a", "expires_in": 300}).encode()
        who = "system:node:node-1" if handler.headers.get("Authorization") else "anonymous"
        # a careless token service that echoes what it was sent
        echo = f"{who} ({handler.headers.get('Authorization')}) may not pull: {REFUSAL}"
        return 401, {}, json.dumps({"errors": [{"code": "DENIED", "message": echo}]}).encode()

    registry.routes["/service/token"] = token


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return ensure_pki(tmp_path / "pki", ["localhost"], ["127.0.0.1"])


@pytest.fixture
def registry(pki: Pki) -> Iterator[LabRegistry]:
    server = LabRegistry(pki)
    yield server
    server.close()


@pytest.fixture
def no_mkfs(monkeypatch: pytest.MonkeyPatch) -> None:
    def mkfs(_self: ImageCache, _rootfs: Path, disk: Path, _digest: str) -> None:
        disk.write_bytes(b"an erofs image")
    monkeypatch.setattr(ImageCache, "_mkfs", mkfs)


def test_lab_ca_is_trusted_for_the_lab_registry_only(pki: Pki, registry: LabRegistry,
                                                     tmp_path: Path) -> None:
    image = Image.make()
    protect(registry, image)
    node = Credentials(f"system:node:{NODE}", TOKEN)
    ref = parse_reference(f"{registry.host}/team-a/app:1.0")
    lab = registry_policy(Settings(state_dir=tmp_path), frozenset({registry.host}), pki.ca_cert)
    assert RegistryClient(registry.host, lab, node).head_digest(ref) == sha(image.manifest)
    # the same server when it is not the lab registry: the system's CAs do not know the lab CA
    other = RegistryPolicy(allowed_private=frozenset({registry.host}))
    with pytest.raises(RegistryUnreachable, match="TLS with 127.0.0.1 failed"):
        RegistryClient(registry.host, other, node).head_digest(ref)
    # nor does a lab CA listed for another host:port apply here
    elsewhere = RegistryPolicy(allowed_private=frozenset({registry.host}),
                               registry_cas=(("127.0.0.1:1", pki.ca_cert),))
    with pytest.raises(RegistryUnreachable, match="TLS"):
        RegistryClient(registry.host, elsewhere, node).head_digest(ref)


def test_pods_pull_their_own_project_and_only_that(
        pki: Pki, registry: LabRegistry, tmp_path: Path, no_mkfs: None,
        lab_names: Callable[..., None], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    lab_names(registry.host)
    image = Image.make()
    protect(registry, image)
    tagged = f"{registry.host}/team-a/app:1.0"
    pinned = f"{registry.host}/team-a/app@{sha(image.manifest)}"
    api = FakeApi()
    ctl = controller(tmp_path, api, lab_ca=pki.ca_cert)

    # team-a's pod: pulled as this node, with the lab CA, from the loopback address
    got = pull(ctl, pod("team-a", tagged))
    assert got[tagged].built and ctl.images.lookup(pinned) is not None
    token_requests = [r for r in registry.requests if r[1].startswith("/service/token")]
    assert token_requests[0][2]["Authorization"] == Credentials(
        f"system:node:{NODE}", TOKEN).basic_header()
    assert {e["reason"] for e in api.events()} == {"Pulling", "Pulled"}

    # team-b's pod names the same image, cached on this host: the registry is asked, and
    # refuses; ErrImagePull carries its reason, and the image is not used
    for name in (tagged, pinned):
        api = FakeApi()
        ctl.api = api
        other = pod("team-b", name)
        run = ctl._run(other)
        assert ctl._start(other, run, "dom") == 10.0  # the first back-off
        [status] = [p["status"] for p in api.patches]
        waiting = status["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "ErrImagePull"
        assert REFUSAL in waiting["message"] and "anonymous" in waiting["message"]
        [event] = [e for e in api.events() if e["type"] == "Warning"]
        assert event["reason"] == "Failed" and REFUSAL in event["message"]
        assert run.waiting is not None and run.waiting[0] == "ImagePullBackOff"
        ctl._runs.clear()

    # team-a's pod again: one authorised HEAD, nothing downloaded
    before = len(registry.requests)
    api = FakeApi()
    ctl.api = api
    got = pull(ctl, pod("team-a", pinned))
    assert not got[pinned].built
    asked = [(m, p.split("?")[0]) for m, p, _ in registry.requests[before:]]
    assert ("HEAD", f"/v2/team-a/app/manifests/{sha(image.manifest)}") in asked
    assert not [p for _, p in asked if "/blobs/" in p]
    assert api.events() == []
    assert TOKEN not in caplog.text


def test_the_token_never_reaches_a_message(pki: Pki, registry: LabRegistry, tmp_path: Path,
                                           lab_names: Callable[..., None],
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Even when the token service echoes the Authorization header it was sent."""
    caplog.set_level(logging.DEBUG)
    lab_names(registry.host)
    protect(registry, Image.make())
    api = FakeApi()
    ctl = controller(tmp_path, api, token="another-" + TOKEN, lab_ca=pki.ca_cert)
    p = pod("team-a", f"{registry.host}/team-a/app:1.0")
    with pytest.raises(Unauthorized) as info:
        pull(ctl, p)
    assert REFUSAL in str(info.value)
    ctl._start(p, ctl._run(p), "dom")
    basic = Credentials(f"system:node:{NODE}", "another-" + TOKEN).basic_header()
    everything = json.dumps([api.patches, api.events(), str(info.value), caplog.text])
    assert REFUSAL in everything
    assert TOKEN not in everything and basic.split()[1] not in everything
