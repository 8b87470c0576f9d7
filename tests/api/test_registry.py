"""The lab registry, end to end: real Distribution behind the host service's front, skopeo as
the client, users with vSphere roles in ``team-a`` (see conftest: olivia owner, eddie edit,
vera view, nobody none).

Every push, pull and refusal here goes through the running host service: the token endpoint,
RBAC, the quota, Distribution's own token check. Nothing is faked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.api.conftest import PASSWORD, Api, People
from tests.support.ociimages import LAYOUT_TAG, busybox_layout
from tests.support.server import LabServer

SERVICE = "pacific-lab-registry"


# -- helpers ------------------------------------------------------------------------------------


def skopeo(*args: str, env: dict[str, str] | None = None, timeout: float = 300
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def session(lab: LabServer) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = lab.ca_file
    return s


def token_for(lab: LabServer, scope: str, auth: tuple[str, str] | None
              ) -> requests.Response:
    with session(lab) as s:
        return s.get(f"https://{lab.registry}/service/token",
                     params={"service": SERVICE, "scope": scope}, auth=auth, timeout=30)


def granted(lab: LabServer, scope: str, auth: tuple[str, str]) -> list[str]:
    """The actions a token for ``scope`` grants (read from the token's claims)."""
    r = token_for(lab, scope, auth)
    assert r.status_code == 200, r.text
    claims = json.loads(base64.urlsafe_b64decode(r.json()["token"].split(".")[1] + "=="))
    return [a for entry in claims["access"] for a in entry["actions"]]


def bearer(lab: LabServer, scope: str, auth: tuple[str, str]) -> dict[str, str]:
    r = token_for(lab, scope, auth)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def namespace_with_storage_limit(admin_api: Api, name: str, limit: str) -> None:
    r = admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    assert r.status_code == 201, r.text
    r = admin_api.call("POST", f"/api/v1/namespaces/{name}/resourcequotas", json={
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "limits"},
        "spec": {"hard": {"requests.storage": limit}}})
    assert r.status_code == 201, r.text


def raw_get(lab: LabServer, path: str, headers: dict[str, str]) -> tuple[int, str]:
    import http.client

    host, port = lab.registry.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), timeout=30,
                                       context=ssl.create_default_context(cafile=lab.ca_file))
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def certs(lab: LabServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory skopeo reads the lab CA from."""
    d = tmp_path_factory.mktemp("registry-certs")
    (d / "ca.crt").write_bytes(Path(lab.ca_file).read_bytes())
    return d


@pytest.fixture(scope="module")
def layout() -> Path:
    return busybox_layout()


@pytest.fixture(scope="module")
def pushed(lab: LabServer, people: People, certs: Path, layout: Path) -> str:
    """team-a/busybox:1, pushed by eddie (edit) with his password."""
    ref = f"{lab.registry}/team-a/busybox:1"
    r = skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", f"eddie:{PASSWORD}",
               f"oci:{layout}:{LAYOUT_TAG}", f"docker://{ref}")
    assert r.returncode == 0, r.stderr
    # The Repository object follows the push by moments (written after the answer).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = session(lab).get(
            f"{lab.url}/apis/registry.pacific.lab/v1/namespaces/team-a/repositories/busybox",
            headers={"Authorization": f"Bearer {people.tokens['vera']}"}, timeout=30)
        if got.status_code == 200 and (got.json().get("status") or {}).get("tags"):
            break
        time.sleep(0.2)
    return ref


def state_files(root: Path, skip: tuple[str, ...]) -> dict[str, int]:
    """Every regular file under ``root`` (not under ``skip``) with its size."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.startswith(skip):
            continue
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                found[str(p.relative_to(root))] = p.stat().st_size
    return found


# -- who may do what ----------------------------------------------------------------------------


def test_registry_url_is_the_lab_registry(lab: LabServer, people: People) -> None:
    r = lab.lab("registry", "url", "--kubeconfig", str(people.kubeconfigs["vera"]))
    assert r.stdout.strip() == lab.registry


def test_edit_pushes_and_the_repository_appears(lab: LabServer, people: People,
                                                pushed: str) -> None:
    r = subprocess.run(["kubectl", "--kubeconfig", str(people.kubeconfigs["vera"]), "get",
                        "repositories", "-n", "team-a"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "team-a/busybox" in r.stdout and "MiB" in r.stdout, r.stdout
    obj = json.loads(subprocess.run(
        ["kubectl", "--kubeconfig", str(people.kubeconfigs["vera"]), "get", "repository",
         "busybox", "-n", "team-a", "-o", "json"], capture_output=True, text=True,
        timeout=60, check=True).stdout)
    assert [t["name"] for t in obj["status"]["tags"]] == ["1"]
    assert obj["status"]["sizeBytes"] > 500_000


def test_view_pulls_with_lab_registry_login_but_cannot_push(
        lab: LabServer, people: People, pushed: str, layout: Path, tmp_path: Path) -> None:
    authfile, docker, certdir = tmp_path / "auth.json", tmp_path / "docker" / "config.json", \
        tmp_path / "certs"
    lab.lab("registry", "login", "--kubeconfig", str(people.kubeconfigs["vera"]),
            "--authfile", str(authfile), "--docker-config", str(docker),
            "--certs-dir", str(certdir))
    assert json.loads(authfile.read_text())["auths"][lab.registry]["auth"]
    assert (certdir / lab.registry / "ca.crt").exists()
    where = ["--authfile", str(authfile), "--cert-dir", str(certdir / lab.registry)]
    r = skopeo("copy", "--src-authfile", str(authfile), "--src-cert-dir",
               str(certdir / lab.registry), f"docker://{pushed}", f"oci:{tmp_path / 'out'}:x")
    assert r.returncode == 0, r.stderr
    r = skopeo("inspect", *where, f"docker://{pushed}")
    assert r.returncode == 0, r.stderr
    r = skopeo("copy", "--dest-authfile", str(authfile), "--dest-cert-dir",
               str(certdir / lab.registry), f"oci:{layout}:{LAYOUT_TAG}",
               f"docker://{lab.registry}/team-a/vera-was-here:1")
    assert r.returncode != 0
    assert "denied" in r.stderr.lower() or "unauthorized" in r.stderr.lower(), r.stderr
    # skopeo finds the credentials in docker's config.json too (no containers auth file)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_bytes(docker.read_bytes())
    env = {"PATH": os.environ["PATH"], "HOME": str(home),
           "XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "REGISTRY_AUTH_FILE": ""}
    r = skopeo("inspect", "--cert-dir", str(certdir / lab.registry), f"docker://{pushed}",
               env=env)
    assert r.returncode == 0, r.stderr
    lab.lab("registry", "logout", "--kubeconfig", str(people.kubeconfigs["vera"]),
            "--authfile", str(authfile), "--docker-config", str(docker),
            "--certs-dir", str(certdir))
    assert lab.registry not in json.loads(authfile.read_text()).get("auths", {})


def test_other_namespace_anonymous_and_wrong_password_cannot_pull(
        lab: LabServer, people: People, pushed: str, certs: Path) -> None:
    cert = ["--cert-dir", str(certs)]
    r = skopeo("inspect", *cert, "--creds", f"nobody:{PASSWORD}", f"docker://{pushed}")
    assert r.returncode != 0
    assert "unauthorized" in r.stderr.lower() or "denied" in r.stderr.lower(), r.stderr
    r = skopeo("inspect", *cert, f"docker://{pushed}")
    assert r.returncode != 0 and "no anonymous access" in r.stderr, r.stderr
    r = skopeo("inspect", *cert, "--creds", "eddie:not-his-password", f"docker://{pushed}")
    assert r.returncode != 0 and "authentication failed" in r.stderr, r.stderr
    assert token_for(lab, "repository:team-a/busybox:pull", ("eddie", "wrong")).status_code \
        == 401
    # a lab API token works in place of the password, but only its own user's
    assert granted(lab, "repository:team-a/busybox:pull", ("vera", people.tokens["vera"])) \
        == ["pull"]
    assert token_for(lab, "repository:team-a/busybox:pull",
                     ("eddie", people.tokens["vera"])).status_code == 401


def test_password_guesses_at_the_token_endpoint_are_throttled_with_the_api_s(
        lab: LabServer, people: People) -> None:
    """Ten wrong passwords for one user from one address lock that pair out of the token
    endpoint (429, Retry-After), and out of the API's /login too: one throttle per
    supervisor (issue 17). Others, and tokens, go on as before."""
    lab.add_user("guessed-at", "guessed-at-password-1")
    scope = "repository:team-a/busybox:pull"
    for _ in range(10):
        assert token_for(lab, scope, ("guessed-at", "wrong")).status_code == 401
    locked = token_for(lab, scope, ("guessed-at", "guessed-at-password-1"))
    assert locked.status_code == 429, locked.text
    assert int(locked.headers["Retry-After"]) > 0
    assert locked.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    api = session(lab).post(f"{lab.url}/login", auth=("guessed-at", "guessed-at-password-1"),
                            timeout=30)
    assert api.status_code == 429, api.text
    # another user from the same address, and a token, are not held up
    assert granted(lab, scope, ("vera", PASSWORD)) == ["pull"]
    assert granted(lab, scope, ("vera", people.tokens["vera"])) == ["pull"]
    assert "registry token refused for 127.0.0.1: 'guessed-at' is locked out" in \
        lab.log_tail(400)


def test_scopes_follow_the_namespace_roles(lab: LabServer, people: People) -> None:
    scope = "repository:team-a/anything:pull,push,delete"
    assert granted(lab, scope, ("vera", PASSWORD)) == ["pull"]
    assert granted(lab, scope, ("eddie", PASSWORD)) == ["pull", "push"]
    assert granted(lab, scope, ("olivia", PASSWORD)) == ["pull", "push", "delete"]
    assert granted(lab, scope, ("nobody", PASSWORD)) == []
    user, password = lab.admin_credentials
    assert granted(lab, scope, (user, password)) == ["pull", "push", "delete"]
    # escalation: eddie's token for team-b (not his) grants nothing there
    assert granted(lab, "repository:team-b/x:pull,push", ("eddie", PASSWORD)) == []
    assert granted(lab, "registry:catalog:*", ("eddie", PASSWORD)) == []


def test_only_an_owner_deletes(lab: LabServer, people: People, certs: Path, layout: Path
                               ) -> None:
    ref = f"docker://{lab.registry}/team-a/short-lived:1"
    r = skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", f"eddie:{PASSWORD}",
               f"oci:{layout}:{LAYOUT_TAG}", ref)
    assert r.returncode == 0, r.stderr
    r = skopeo("delete", "--cert-dir", str(certs), "--creds", f"eddie:{PASSWORD}", ref)
    assert r.returncode != 0, r.stderr
    r = skopeo("delete", "--cert-dir", str(certs), "--creds", f"olivia:{PASSWORD}", ref)
    assert r.returncode == 0, r.stderr
    kc = str(people.kubeconfigs["olivia"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = subprocess.run(["kubectl", "--kubeconfig", kc, "get", "repositories", "-n",
                            "team-a", "-o", "name"], capture_output=True, text=True, timeout=60)
        if "short-lived" not in r.stdout:
            break
        time.sleep(0.5)
    assert "short-lived" not in r.stdout


# -- limits -------------------------------------------------------------------------------------


def test_push_over_the_storage_limit_is_refused(lab: LabServer, admin_api: Api, people: People,
                                                certs: Path, layout: Path) -> None:
    namespace_with_storage_limit(admin_api, "reg-tiny", "300Ki")
    user, password = lab.admin_credentials
    r = skopeo("copy", "--dest-cert-dir", str(certs), "--dest-creds", f"{user}:{password}",
               f"oci:{layout}:{LAYOUT_TAG}", f"docker://{lab.registry}/reg-tiny/busybox:1")
    assert r.returncode != 0
    assert "storage quota of namespace reg-tiny exceeded" in r.stderr, r.stderr
    assert "limit 300Ki" in r.stderr and "used 0B" in r.stderr and "requested" in r.stderr, \
        r.stderr
    r = admin_api.call("GET", "/apis/registry.pacific.lab/v1/namespaces/reg-tiny/repositories")
    assert [i for i in r.json()["items"] if (i.get("status") or {}).get("manifests")] == []
    admin_api.call("DELETE", "/api/v1/namespaces/reg-tiny")
    # its deletion collects garbage (the registry is read-only meanwhile): let it end here
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and \
            admin_api.call("GET", "/api/v1/namespaces/reg-tiny").status_code != 404:
        time.sleep(0.5)


# -- hostile input ------------------------------------------------------------------------------


def test_hostile_tokens_scopes_and_names_are_refused(lab: LabServer, people: People,
                                                     pushed: str) -> None:
    s = session(lab)
    base = f"https://{lab.registry}"
    # malformed scopes and traversal in scope names: 400, not an empty grant
    for scope in ("repository:team-a/../team-b/x:pull", "repository:/etc/passwd:pull",
                  "repository:team-a/busybox", "repository:team-a/BUSYBOX:pull",
                  "bogus:x:pull", "repository:team-a/x:pull,admin"):
        r = token_for(lab, scope, ("eddie", PASSWORD))
        assert r.status_code == 400, (scope, r.text)
    # traversal in request paths never reaches the registry
    headers = bearer(lab, "repository:team-a/busybox:pull", ("eddie", PASSWORD))
    for path in ("/v2/team-a/../team-b/x/manifests/1", "/v2/team-a/%2e%2e/x/manifests/1",
                 "/v2//etc/passwd/manifests/1", "/v2/team-a/busybox/manifests/..%2f..%2fx",
                 "/v2/team-a/busybox/blobs/../../../../etc/passwd"):
        status, text = raw_get(lab, path, headers)  # as sent: no client tidies the path
        assert status == 400 and "NAME_INVALID" in text, (path, status, text)
    # a forged token (a key of our own making) and an expired one
    from appliance.registry.names import Scope
    from appliance.registry.tokens import Signer

    forger = Signer.ensure(Path(os.environ.get("TMPDIR", "/tmp")) / f"forger-{os.getpid()}")
    forged, _ = forger.issue("eddie", [Scope("repository", "team-a/busybox", ("pull",))], 300)
    r = s.get(f"{base}/v2/team-a/busybox/manifests/1", timeout=30,
              headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401, r.text
    real = Signer.ensure(lab.state_dir / "registry")  # the lab's own key: only to expire one
    expired, _ = real.issue("eddie", [Scope("repository", "team-a/busybox", ("pull",))], -120)
    r = s.get(f"{base}/v2/team-a/busybox/manifests/1", timeout=30,
              headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401, r.text
    # a token for team-a does not open team-b
    headers = bearer(lab, "repository:team-a/busybox:pull,push", ("eddie", PASSWORD))
    r = s.post(f"{base}/v2/team-b/x/blobs/uploads/", headers=headers, timeout=30)
    assert r.status_code == 401, r.text
    # the refusals were logged, and no secret with them
    log = (lab.state_dir / "test-service.log").read_text(errors="replace")
    assert "registry token" in log and "refused" in log
    for secret in (PASSWORD, people.tokens["vera"], people.tokens["eddie"], forged, expired):
        assert secret not in log


def test_huge_manifest_and_bad_digest_are_refused_and_nothing_lands_outside(
        lab: LabServer, pushed: str) -> None:
    before = state_files(lab.state_dir, ("registry", "logs", "run"))
    headers = bearer(lab, "repository:team-a/hostile:pull,push", ("eddie", PASSWORD))
    # a 100 MiB manifest: refused on its Content-Length, the body is never read
    host, port = lab.registry.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=lab.ca_file)
    with socket.create_connection((host, int(port)), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall((f"PUT /v2/team-a/hostile/manifests/1 HTTP/1.1\r\nHost: {lab.registry}\r\n"
                     f"Authorization: {headers['Authorization']}\r\nContent-Type: "
                     f"application/vnd.oci.image.manifest.v1+json\r\n"
                     f"Content-Length: {100 << 20}\r\n\r\n").encode() + b"{" * 100)
        chunks = []
        while data := tls.recv(4096):  # the front answers and closes
            chunks.append(data)
        reply = b"".join(chunks).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply
    assert "manifest too large" in reply
    # a blob whose bytes do not match its digest
    s = session(lab)
    base = f"https://{lab.registry}"
    r = s.post(f"{base}/v2/team-a/hostile/blobs/uploads/", headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    location = r.headers["Location"]
    url = location if location.startswith("https://") else base + location
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    r = s.put(url, params={"digest": wrong}, data=b"these bytes", timeout=30,
              headers={**headers, "Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and "DIGEST_INVALID" in r.text, r.text
    # nothing outside the registry's own directories changed, nothing hostile was stored
    after = state_files(lab.state_dir, ("registry", "logs", "run"))
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not {k for k in changed if not k.startswith(("supervisor.db", "test-service"))}
    data = lab.state_dir / "registry" / "data" / "docker" / "registry" / "v2"
    assert not (data / "repositories" / "team-a" / "hostile" / "_manifests").exists()
    for dirpath, _dirs, files in os.walk(lab.state_dir / "registry" / "data"):
        for f in files:
            assert not Path(dirpath, f).is_symlink()


# -- deleting a namespace -----------------------------------------------------------------------


@pytest.fixture
def doomed(admin_api: Api) -> Iterator[str]:
    r = admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "reg-doomed"}})
    assert r.status_code == 201, r.text
    yield "reg-doomed"
    admin_api.call("DELETE", "/api/v1/namespaces/reg-doomed")


def test_deleting_the_namespace_removes_its_repositories_and_unreferenced_blobs(
        lab: LabServer, admin_api: Api, pushed: str, certs: Path, layout: Path,
        doomed: str, tmp_path: Path) -> None:
    user, password = lab.admin_credentials
    creds = ["--dest-cert-dir", str(certs), "--dest-creds", f"{user}:{password}"]
    # busybox (the same blobs as team-a/busybox) and an image of its own
    assert skopeo("copy", *creds, f"oci:{layout}:{LAYOUT_TAG}",
                  f"docker://{lab.registry}/reg-doomed/busybox:1").returncode == 0
    own = tmp_path / "own"
    r = skopeo("copy", f"oci:{layout}:{LAYOUT_TAG}", f"oci:{own}:x")
    assert r.returncode == 0, r.stderr
    _add_layer(own, b"only in doomed " * 1000)
    r = skopeo("copy", *creds, f"oci:{own}:x", f"docker://{lab.registry}/reg-doomed/tools/own:2")
    assert r.returncode == 0, r.stderr
    data = lab.state_dir / "registry" / "data" / "docker" / "registry" / "v2"
    def linked(repo: str) -> set[str]:
        return {p.name for p in (data / "repositories" / repo / "_layers" / "sha256").iterdir()}

    only_doomed = linked("reg-doomed/tools/own") - linked("team-a/busybox")
    assert only_doomed, "the image of its own shares every blob"
    blob_paths = [data / "blobs" / "sha256" / b[:2] / b / "data" for b in only_doomed]
    assert all(p.exists() for p in blob_paths)
    assert (data / "repositories" / "reg-doomed" / "tools" / "own").is_dir()

    r = admin_api.call("DELETE", "/api/v1/namespaces/reg-doomed")
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and \
            admin_api.call("GET", "/api/v1/namespaces/reg-doomed").status_code != 404:
        time.sleep(0.5)
    assert admin_api.call("GET", "/api/v1/namespaces/reg-doomed").status_code == 404
    assert not (data / "repositories" / "reg-doomed").exists()
    assert not [p for p in blob_paths if p.exists()], "unreferenced blobs are still stored"
    # team-a's image, which shared blobs with doomed/busybox, is whole
    r = skopeo("inspect", "--cert-dir", str(certs), "--creds", f"vera:{PASSWORD}",
               f"docker://{pushed}")
    assert r.returncode == 0, r.stderr
    r = skopeo("copy", "--src-cert-dir", str(certs), "--src-creds", f"vera:{PASSWORD}",
               f"docker://{pushed}", f"oci:{tmp_path / 'check'}:x")
    assert r.returncode == 0, r.stderr


def _add_layer(layout: Path, payload: bytes) -> None:
    """Give the image in ``layout`` one more (uncompressed tar) layer."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("only-here.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    layer = buf.getvalue()

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (layout / "blobs" / "sha256" / digest).write_bytes(data)
        return digest

    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    config = json.loads((layout / "blobs" / "sha256" /
                         manifest["config"]["digest"][7:]).read_text())
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(layer).hexdigest())
    config_bytes = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": "sha256:" + put(config_bytes),
                          "size": len(config_bytes)}
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": "sha256:" + put(layer), "size": len(layer)})
    manifest_bytes = json.dumps(manifest).encode()
    desc.update({"digest": "sha256:" + put(manifest_bytes), "size": len(manifest_bytes)})
    (layout / "index.json").write_text(json.dumps(index))


# -- the daemon ---------------------------------------------------------------------------------


def test_a_registry_that_dies_is_started_again(lab: LabServer, pushed: str, certs: Path
                                               ) -> None:
    pidfile = lab.state_dir / "run" / "registry.pid"
    pid = int(pidfile.read_text().split()[0])
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(
        b"docker-registry")
    os.kill(pid, 9)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            new = int(pidfile.read_text().split()[0])
        except (OSError, ValueError):
            new = pid
        if new != pid and Path(f"/proc/{new}").exists():
            break
        time.sleep(0.2)
    assert new != pid, "no new registry process"
    r = skopeo("inspect", "--cert-dir", str(certs), "--creds", f"vera:{PASSWORD}",
               f"docker://{pushed}")
    assert r.returncode == 0, r.stderr


def test_a_chunked_upload_goes_through_and_one_over_the_quota_is_cut_off(
        lab: LabServer, admin_api: Api, people: People) -> None:
    """Bodies without a Content-Length (chunked), as some clients send them."""
    import http.client

    def chunked_put(repo: str, payload: bytes) -> tuple[int, str]:
        headers = bearer(lab, f"repository:{repo}:pull,push", lab.admin_credentials)
        s = session(lab)
        base = f"https://{lab.registry}"
        r = s.post(f"{base}/v2/{repo}/blobs/uploads/", headers=headers, timeout=30)
        assert r.status_code == 202, r.text
        location = r.headers["Location"]
        path = location.split(lab.registry, 1)[-1]
        digest = "sha256:" + hashlib.sha256(payload).hexdigest()
        host, port = lab.registry.rsplit(":", 1)
        conn = http.client.HTTPSConnection(
            host, int(port), timeout=30, context=ssl.create_default_context(cafile=lab.ca_file))
        try:
            sep = "&" if "?" in path else "?"
            conn.request("PUT", f"{path}{sep}digest={digest}",
                         body=iter([payload[i:i + 65536] for i in range(0, len(payload), 65536)]),
                         headers={**headers, "Content-Type": "application/octet-stream"},
                         encode_chunked=True)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    status, text = chunked_put("team-a/chunked", os.urandom(300_000))
    assert status == 201, text
    namespace_with_storage_limit(admin_api, "reg-chunked", "100Ki")
    try:
        status, text = chunked_put("reg-chunked/big", os.urandom(300_000))
        assert status == 403 and "storage quota of namespace reg-chunked exceeded" in text, \
            (status, text)
    finally:
        admin_api.call("DELETE", "/api/v1/namespaces/reg-chunked")
