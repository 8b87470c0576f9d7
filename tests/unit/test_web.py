"""The Flask dashboard against a real in-process supervisor on a throwaway SQLite
state directory: sessions and CSRF, what each role sees and may do, forms that
refuse bad input with nothing stored, and the administrator's namespace flow."""

from __future__ import annotations

import json
import logging
import base64
import html as html_lib
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from appliance.agent.vmnames import vm_prefix
from appliance.auth import bootstrap, users
from appliance.errors import ApiError
from appliance.kinds import default_registry
from appliance.kinds.registry import Kind, Registry
from appliance.objects import MERGE_PATCH, SYSTEM, ObjectService, Target, WriteOptions
from appliance.service import Supervisor
from appliance.settings import Settings
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store
from appliance.vmservice.catalog import Catalog
from web import create_app
from web.lab import LogTail

BASE = "https://lab.test"
VMOP = "vmoperator.vmware.com"
ED25519 = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGn9l3v0k4Qf4cL8m0W8mZr5K7pO1q2b3c4d5e6f7g8h "
           "alice@laptop")
PASSWORDS = {"alice": "alice-password", "bob": "bob-password", "carol": "carol-password"}


def _publish(sup: Supervisor) -> None:
    Catalog(sup.service).publish_image(
        "debian-12", display_name="debian-12", capacity_bytes=10 * 2**30,
        size_bytes=400 * 2**20, sha256="ab" * 32, os_name="debian", os_version="12",
        content_version="abababab")


def _supervisor(state: Path, registry: Any = None) -> tuple[Supervisor, str]:
    settings = Settings(state_dir=state, public_host="lab.test")
    if registry is None:
        sup = Supervisor.open(settings)
    else:
        state.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.effective_database_url)
        migrate(engine)
        store = Store(engine)
        sup = Supervisor(settings, store, ObjectService(store, registry))
    password = sup.bootstrap()
    assert password is not None
    with sup.store.write() as txn:
        for name, pw in PASSWORDS.items():
            users.create_user(txn.session, name, pw)
    _publish(sup)
    return sup, password


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Supervisor, Flask, str]]:
    sup, password = _supervisor(tmp_path / "state")
    app = create_app({"TESTING": True}, supervisor=sup)
    yield sup, app, password


class Browser:
    """A test client that logs in and posts forms like a browser (with the CSRF token)."""

    def __init__(self, app: Flask) -> None:
        self.client: FlaskClient = app.test_client()

    def get(self, path: str, **kw: Any) -> Any:
        return self.client.get(path, base_url=BASE, **kw)

    def token(self) -> str:
        """The token every form of the current session carries."""
        page = self.get("/login")
        if page.status_code == 200:
            m = re.search(r'name="csrf_token" value="([^"]+)"', text(page))
            assert m
            return m.group(1)
        with self.client.session_transaction(base_url=BASE) as session:
            return str(session["csrf_token"])

    def post(self, path: str, data: dict[str, str] | None = None, csrf: bool = True,
             **kw: Any) -> Any:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf_token", self.token())
        return self.client.post(path, data=form, base_url=BASE, **kw)

    def login(self, name: str, password: str) -> Any:
        self.get("/login")
        resp = self.post("/login", {"username": name, "password": password})
        assert resp.status_code == 302, resp.get_data(as_text=True)
        self.get("/")
        return resp


def text(resp: Any) -> str:
    return str(resp.get_data(as_text=True))


def plain(resp: Any) -> str:
    return html_lib.unescape(text(resp))


def field_error(html: str, field: str) -> str:
    m = re.search(rf'<p class="field-error" id="{re.escape(field)}-error">(.*?)</p>', html, re.S)
    assert m, f"no message next to {field!r}"
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", m.group(1))).strip()


def kind(sup: Supervisor, group: str, plural: str) -> Kind:
    k = sup.service.registry.by_group_plural(group, plural)
    assert k is not None
    return k


def names(sup: Supervisor, group: str, plural: str, ns: str = "") -> list[str]:
    k = kind(sup, group, plural)
    version = k.storage_version.name
    return [o["metadata"]["name"] for o in sup.service.list(SYSTEM, Target(k, version, ns)).items]


def make_namespace(sup: Supervisor, ns: str, hard: dict[str, str] | None = None) -> None:
    sup.service.create(SYSTEM, Target(kind(sup, "", "namespaces"), "v1"),
                       {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    if hard:
        sup.service.create(SYSTEM, Target(kind(sup, "", "resourcequotas"), "v1", ns), {
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "pacific-limits", "namespace": ns}, "spec": {"hard": hard}})
    catalog = Catalog(sup.service)
    catalog.assign_class(SYSTEM, "best-effort-xsmall", ns)
    catalog.assign_image(SYSTEM, "debian-12", ns)


def make_vm(sup: Supervisor, ns: str, name: str) -> dict[str, Any]:
    return sup.service.create(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5", ns), {
        "apiVersion": f"{VMOP}/v1alpha5", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"className": "best-effort-xsmall", "imageName": "debian-12",
                 "powerState": "PoweredOn"}}).obj


def vm_form(name: str, **extra: str) -> dict[str, str]:
    return {"name": name, "class_name": "best-effort-xsmall", "image": "debian-12",
            "power": "PoweredOn", "login": "alice", "ssh_key": ED25519,
            "cloud_config": "#cloud-config\npackages: [nginx]\n", **extra}


# -- sessions ---------------------------------------------------------------------------------


def test_secret_key_is_made_once_per_install_and_private(lab: Any, tmp_path: Path) -> None:
    sup, app, _ = lab
    path = tmp_path / "state" / "dashboard-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) >= 32
    assert app.secret_key == path.read_bytes()
    again = create_app(supervisor=sup)
    assert again.secret_key == app.secret_key


def test_dashboard_needs_its_supervisor() -> None:
    with pytest.raises(ValueError):
        create_app()


def test_login_and_logout(lab: Any) -> None:
    _, app, password = lab
    b = Browser(app)
    resp = b.get("/")
    assert resp.status_code == 302 and "/login" in resp.headers["Location"]
    b.get("/login")
    bad = b.post("/login", {"username": "admin", "password": "wrong-password"})
    assert bad.status_code == 401
    assert "user name or password is not right" in text(bad)
    assert b.get("/").status_code == 302  # still logged out
    resp = b.post("/login", {"username": "admin", "password": password})
    assert resp.status_code == 302
    cookie = resp.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    home = b.get("/")
    assert home.status_code == 200 and "Log out" in text(home)
    assert "default-src 'self'" in home.headers["Content-Security-Policy"]
    assert home.headers["Cache-Control"] == "no-store"
    out = b.post("/logout")
    assert out.status_code == 302
    assert b.get("/").status_code == 302


def test_password_guessing_is_throttled_per_user_and_source(
        lab: Any, caplog: pytest.LogCaptureFixture) -> None:
    _, app, password = lab
    guesser = Browser(app)
    guesser.get("/login")
    with caplog.at_level(logging.INFO):
        for _ in range(10):
            wrong = guesser.post("/login", {"username": "admin", "password": "guess"},
                                 environ_base={"REMOTE_ADDR": "192.0.2.66"})
            assert wrong.status_code == 401
    assert "failed login for 'admin' from 192.0.2.66" in caplog.text
    # Locked: even the right password is not checked from there.
    locked = guesser.post("/login", {"username": "admin", "password": password},
                          environ_base={"REMOTE_ADDR": "192.0.2.66"})
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == "30"
    assert "Too many failed logins" in text(locked) and "30 seconds" in text(locked)
    assert guesser.get("/", environ_base={"REMOTE_ADDR": "192.0.2.66"}).status_code == 302
    # The administrator elsewhere, and another user from the guesser's address, log in.
    admin = Browser(app)
    admin.get("/login")
    assert admin.post("/login", {"username": "admin", "password": password},
                      environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 302
    alice = Browser(app)
    alice.get("/login")
    assert alice.post("/login", {"username": "alice", "password": PASSWORDS["alice"]},
                      environ_base={"REMOTE_ADDR": "192.0.2.66"}).status_code == 302


def test_login_goes_back_only_to_this_site(lab: Any) -> None:
    _, app, password = lab
    b = Browser(app)
    b.get("/login")
    resp = b.post("/login", {"username": "admin", "password": password,
                             "next": "https://evil.example/"})
    assert resp.headers["Location"] == "/"
    b.post("/logout")
    b.get("/login")
    resp = b.post("/login", {"username": "admin", "password": password, "next": "/hosts"})
    assert resp.headers["Location"] == "/hosts"


def test_changed_password_ends_sessions(lab: Any) -> None:
    sup, app, _ = lab
    b = Browser(app)
    b.login("alice", PASSWORDS["alice"])
    assert b.get("/").status_code == 200
    with sup.store.write() as txn:
        users.set_password(txn.session, "alice", "a-new-password")
    assert b.get("/").status_code == 302


def test_posts_without_a_valid_csrf_token_are_refused(lab: Any) -> None:
    sup, app, password = lab
    b = Browser(app)
    b.get("/login")
    assert b.post("/login", {"username": "admin", "password": password},
                  csrf=False).status_code == 400
    b.login("admin", password)
    data = {"name": "sneaky", "cpu": "2"}
    resp = b.post("/namespaces/new", data, csrf=False)
    assert resp.status_code == 400 and "expired" in text(resp)
    assert b.post("/namespaces/new", {**data, "csrf_token": "forged"},
                  csrf=False).status_code == 400
    cross = b.post("/namespaces/new", data, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 400
    assert "sneaky" not in names(sup, "", "namespaces")
    assert b.post("/namespaces/new", data).status_code == 302  # the same form, from the page
    assert "sneaky" in names(sup, "", "namespaces")


def test_every_page_and_form_is_audited_without_passwords(lab: Any) -> None:
    sup, app, password = lab
    b = Browser(app)
    b.get("/login")
    b.post("/login", {"username": "admin", "password": "not-the-password"},
           environ_base={"REMOTE_ADDR": "192.0.2.44"})
    b.login("admin", password)
    assert b.post("/namespaces/new", {"name": "audited", "cpu": "2"}).status_code == 302
    assert b.get("/ns/audited").status_code == 200
    log = sup.settings.log_dir / "audit.log"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(e["annotations"] == {"pacific.lab/client": "dashboard"} for e in events)
    failed = next(e for e in events if e["sourceIPs"] == ["192.0.2.44"])
    assert failed["user"]["username"] == "admin" and failed["responseStatus"]["code"] == 401
    created = next(e for e in events if e["verb"] == "create")
    assert created["objectRef"] == {"resource": "namespaces", "name": "audited"}
    assert created["user"]["username"] == "admin" and created["responseStatus"]["code"] == 302
    shown = [e for e in events if e["requestURI"] == "/ns/audited"]
    assert shown and shown[-1]["verb"] == "get"
    assert shown[-1]["objectRef"] == {"resource": "namespaces", "name": "audited"}
    assert password not in log.read_text() and "not-the-password" not in log.read_text()


# -- administrators ----------------------------------------------------------------------------


def test_admin_creates_namespace_with_limits_grants_edit_and_assigns(lab: Any) -> None:
    sup, app, password = lab
    admin = Browser(app)
    admin.login("admin", password)
    form = admin.get("/namespaces/new")
    assert form.status_code == 200 and 'for="cpu"' in text(form)
    resp = admin.post("/namespaces/new", {"name": "dev-team", "cpu": "8", "memory": "16",
                                          "storage": "200", "pods": "20", "vms": "4"})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/ns/dev-team/settings")
    quota = sup.service.get(SYSTEM, Target(kind(sup, "", "resourcequotas"), "v1", "dev-team",
                                           "pacific-limits"))
    assert quota["spec"]["hard"] == {
        "requests.cpu": "8", "requests.memory": "16Gi", "requests.storage": "200Gi",
        "count/virtualmachines.vmoperator.vmware.com": "4", "count/pods": "20"}
    page = text(admin.get("/ns/dev-team/settings"))
    assert "Save limits" in page and "Grant" in page and "best-effort-xsmall" in page

    assert admin.post("/ns/dev-team/grants", {"user": "alice", "role": "edit"}).status_code == 302
    binding = sup.service.get(SYSTEM, Target(kind(sup, "rbac.authorization.k8s.io",
                                                  "rolebindings"), "v1", "dev-team",
                                             "pacific-edit-alice"))
    assert binding["roleRef"]["name"] == bootstrap.EDIT
    assert admin.post("/ns/dev-team/classes", {"name": "best-effort-xsmall",
                                               "action": "assign"}).status_code == 302
    assert admin.post("/ns/dev-team/images", {"name": "debian-12",
                                              "action": "assign"}).status_code == 302
    assert names(sup, VMOP, "virtualmachineclasses", "dev-team") == ["best-effort-xsmall"]
    assert names(sup, VMOP, "virtualmachineimages", "dev-team") == ["debian-12"]

    # Limits change; one the form does not manage (set with kubectl) is kept.
    sup.service.patch(SYSTEM, Target(kind(sup, "", "resourcequotas"), "v1", "dev-team",
                                     "pacific-limits"), MERGE_PATCH,
                      {"spec": {"hard": {"count/configmaps": "9"}}}, WriteOptions())
    resp = admin.post("/ns/dev-team/limits", {"cpu": "4", "memory": "512Mi", "storage": "",
                                              "pods": "", "vms": "4", "services": ""})
    assert resp.status_code == 302
    hard = sup.service.get(SYSTEM, Target(kind(sup, "", "resourcequotas"), "v1", "dev-team",
                                          "pacific-limits"))["spec"]["hard"]
    assert hard == {"requests.cpu": "4", "requests.memory": "512Mi", "count/configmaps": "9",
                    "count/virtualmachines.vmoperator.vmware.com": "4"}

    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    home = text(alice.get("/"))
    assert "dev-team" in home
    overview = text(alice.get("/ns/dev-team"))
    assert "New VM" in overview and "Your role: <strong>edit</strong>" in overview
    assert "lab login --server https://lab.test:6443 -u alice" in overview

    # Revoking takes the namespace away again.
    assert admin.post("/ns/dev-team/grants/pacific-edit-alice/revoke").status_code == 302
    assert "dev-team" not in text(alice.get("/"))
    assert alice.get("/ns/dev-team").status_code == 404


def test_granting_another_role_replaces_the_old_one(lab: Any) -> None:
    sup, app, password = lab
    make_namespace(sup, "dev")
    admin = Browser(app)
    admin.login("admin", password)
    admin.post("/ns/dev/grants", {"user": "bob", "role": "view"})
    admin.post("/ns/dev/grants", {"user": "bob", "role": "owner"})
    assert [n for n in names(sup, "rbac.authorization.k8s.io", "rolebindings", "dev")
            if "bob" in n] == ["pacific-owner-bob"]
    unknown = admin.post("/ns/dev/grants", {"user": "nobody", "role": "edit"})
    assert unknown.status_code == 400
    assert "no user 'nobody'" in field_error(text(unknown), "user")


def test_admin_deletes_namespace_after_typing_its_name(lab: Any) -> None:
    sup, app, password = lab
    make_namespace(sup, "old")
    admin = Browser(app)
    admin.login("admin", password)
    assert "Type the namespace name" in text(admin.get("/ns/old/delete"))
    wrong = admin.post("/ns/old/delete", {"confirm": "nope"})
    assert wrong.status_code == 400 and "Type old to confirm" in field_error(text(wrong),
                                                                              "confirm")
    ns = sup.service.get(SYSTEM, Target(kind(sup, "", "namespaces"), "v1", "", "old"))
    assert not ns["metadata"].get("deletionTimestamp")
    assert admin.post("/ns/old/delete", {"confirm": "old"}).status_code == 302
    ns = sup.service.get(SYSTEM, Target(kind(sup, "", "namespaces"), "v1", "", "old"))
    assert ns["metadata"].get("deletionTimestamp")  # the namespace controller empties it


def test_admin_manages_users(lab: Any) -> None:
    sup, app, password = lab
    admin = Browser(app)
    admin.login("admin", password)
    page = text(admin.get("/users"))
    assert "alice" in page and "Add a user" in page
    short = admin.post("/users", {"name": "dave", "password": "short", "password2": "short"})
    assert short.status_code == 400 and "at least 8" in field_error(text(short), "password")
    bad = admin.post("/users", {"name": "Dave!", "password": "long-enough",
                                "password2": "long-enough"})
    assert bad.status_code == 400 and field_error(text(bad), "name")
    assert admin.post("/users", {"name": "dave", "password": "long-enough",
                                 "password2": "long-enough", "admin": "1"}).status_code == 302
    with sup.store.read() as txn:
        assert users.authenticate(txn.session, "dave", "long-enough").is_admin  # type: ignore[union-attr]
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "carol", "edit")
    assert admin.post("/users/carol/delete").status_code == 302
    with sup.store.read() as txn:
        assert not users.user_exists(txn.session, "carol")
    assert "pacific-edit-carol" not in names(sup, "rbac.authorization.k8s.io", "rolebindings",
                                            "dev")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    assert alice.get("/users").status_code == 403
    assert alice.post("/users", {"name": "eve", "password": "long-enough",
                                 "password2": "long-enough"}).status_code == 403
    assert alice.get("/hosts").status_code == 403
    assert "Users</a>" not in text(alice.get("/"))


# -- forms refuse bad input, with nothing stored -----------------------------------------------


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"name": "Dev_Team"}, "name", "Use only lower-case letters"),
    ({"name": "a.b"}, "name", "may not contain dots"),
    ({"name": ""}, "name", "Enter a namespace name"),
    ({"name": "x" * 64}, "name", "at most 63"),
    ({"name": "ok", "cpu": "-1"}, "cpu", "cannot be negative"),
    ({"name": "ok", "memory": "lots"}, "memory", "Enter a number"),
    ({"name": "ok", "storage": "-5Gi"}, "storage", "cannot be negative"),
    ({"name": "ok", "pods": "2.5"}, "pods", "whole number"),
    ({"name": "ok", "vms": "-3"}, "vms", "whole number"),
])
def test_namespace_form_refuses_bad_input(lab: Any, data: dict[str, str], field: str,
                                          message: str) -> None:
    sup, app, password = lab
    admin = Browser(app)
    admin.login("admin", password)
    before = names(sup, "", "namespaces")
    resp = admin.post("/namespaces/new", data)
    assert resp.status_code == 400
    html = text(resp)
    assert message in field_error(html, field)
    assert f'aria-describedby="{field}-hint {field}-error"' in html or \
        f'aria-describedby="{field}-error"' in html
    assert names(sup, "", "namespaces") == before
    assert names(sup, "", "resourcequotas", "ok") == []


def test_limits_form_refuses_bad_input_and_keeps_the_old_limits(lab: Any) -> None:
    sup, app, password = lab
    make_namespace(sup, "dev", {"requests.cpu": "4"})
    admin = Browser(app)
    admin.login("admin", password)
    resp = admin.post("/ns/dev/limits", {"cpu": "-2", "memory": "many"})
    assert resp.status_code == 400
    assert "negative" in field_error(text(resp), "cpu")
    assert "Enter a number" in field_error(text(resp), "memory")
    quota = sup.service.get(SYSTEM, Target(kind(sup, "", "resourcequotas"), "v1", "dev",
                                           "pacific-limits"))
    assert quota["spec"]["hard"] == {"requests.cpu": "4"}


@pytest.mark.parametrize(("extra", "field", "message"), [
    ({"name": "Web_1"}, "name", "Use only lower-case letters"),
    ({"ssh_key": "ssh-ed25519 not-base64!!"}, "ssh_key", "not valid base64"),
    ({"ssh_key": "hello world"}, "ssh_key", "Unsupported key type"),
    ({"ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"},
     "ssh_key", "one line"),
    ({"ssh_key": "ssh-rsa " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519xxxx").decode()},
     "ssh_key", "does not match its type"),
    ({"ssh_key": "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00").decode()},
     "ssh_key", "damaged"),
    ({"cloud_config": "#cloud-config\npackages: [nginx\n"}, "cloud_config", "Invalid"),
    ({"cloud_config": "#cloud-config\n- just\n- a list\n"}, "cloud_config", "mapping"),
    ({"cloud_config": "#!/bin/sh\necho hi\n"}, "cloud_config", "Scripts are not supported"),
    ({"cloud_config": "#cloud-config\nusers: alice\n"}, "cloud_config", "must be a list"),
    ({"cloud_config": "#cloud-config\nx: " + "[" * 5000 + "]" * 5000 + "\n"}, "cloud_config",
     "nested more than 64 levels"),
    ({"cloud_config": "#cloud-config\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcde", "bcdef",
                                                                     strict=True))},
     "cloud_config", "aliases expand it to more than 100000 nodes"),
    ({"login": "Root User"}, "login", "Linux user name"),
    ({"class_name": ""}, "class_name", "Choose a VM class"),
])
def test_vm_form_refuses_bad_input(lab: Any, extra: dict[str, str], field: str,
                                   message: str) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    resp = alice.post("/ns/dev/vms/new", {**vm_form("web-1"), **extra})
    assert resp.status_code == 400
    assert message in field_error(text(resp), field)
    assert names(sup, VMOP, "virtualmachines", "dev") == []
    assert names(sup, "", "secrets", "dev") == []


def test_vm_form_shows_the_services_refusal_next_to_the_field(lab: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    resp = alice.post("/ns/dev/vms/new", vm_form("web-1", class_name="guaranteed-large"))
    assert resp.status_code == 422
    assert "not assigned to namespace" in field_error(text(resp), "class_name")
    assert names(sup, VMOP, "virtualmachines", "dev") == []
    assert names(sup, "", "secrets", "dev") == []


# -- developers --------------------------------------------------------------------------------


def test_editor_creates_a_vm_from_the_form_and_quota_refuses_the_next(lab: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev", {"requests.cpu": "2"})
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    form = text(alice.get("/ns/dev/vms/new"))
    assert "best-effort-xsmall (2 vCPU, 2 GiB)" in form and "debian-12" in form
    resp = alice.post("/ns/dev/vms/new", vm_form(
        "web-1", cloud_config="packages: [nginx]\nwrite_files:\n- path: /srv/secret.txt\n"
                              "  content: do-not-show-me\n"))
    assert resp.status_code == 302, text(resp)
    assert resp.headers["Location"].endswith("/ns/dev/vms/web-1")
    vm = sup.service.get(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5", "dev",
                                        "web-1"))
    raw = vm["spec"]["bootstrap"]["cloudInit"]["rawCloudConfig"]
    assert raw == {"name": "web-1-cloud-init", "key": "user-data"}
    secret = sup.service.get(SYSTEM, Target(kind(sup, "", "secrets"), "v1", "dev",
                                            "web-1-cloud-init"))
    assert secret["metadata"]["ownerReferences"][0]["uid"] == vm["metadata"]["uid"]
    user_data = base64.b64decode(secret["data"]["user-data"]).decode()
    assert user_data.startswith("#cloud-config\n")
    config = yaml.safe_load(user_data)
    assert config["packages"] == ["nginx"]
    alice_user = next(u for u in config["users"] if isinstance(u, dict))
    assert alice_user["name"] == "alice" and alice_user["ssh_authorized_keys"] == [ED25519]

    page = text(alice.get("/ns/dev/vms/web-1"))
    assert "Power off" in page and "Delete" in page and "Console log" in page
    assert "do-not-show-me" not in page
    secret_page = text(alice.get("/ns/dev/o/core/secrets/web-1-cloud-init"))
    assert "do-not-show-me" not in secret_page and "(hidden)" in secret_page
    assert secret["data"]["user-data"] not in secret_page

    over = alice.post("/ns/dev/vms/new", vm_form("web-2"))
    assert over.status_code == 403
    html = plain(over)
    assert "Over the namespace's limits" in html
    assert "CPU: this needs 2 vCPUs, and 2 of the limit of 2 vCPUs are in use already." in html
    assert "exceeded quota: pacific-limits, requested: requests.cpu=2, used: requests.cpu=2, " \
           "limited: requests.cpu=2" in html
    assert names(sup, VMOP, "virtualmachines", "dev") == ["web-1"]
    assert names(sup, "", "secrets", "dev") == ["web-1-cloud-init"]

    # Power and delete go through the service as alice.
    assert alice.post("/ns/dev/vms/web-1/power", {"state": "PoweredOff"}).status_code == 302
    vm = sup.service.get(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5", "dev",
                                        "web-1"))
    assert vm["spec"]["powerState"] == "PoweredOff"
    assert alice.post("/ns/dev/vms/web-1/delete",
                      {"uid": vm["metadata"]["uid"]}).status_code == 302
    vm = sup.service.get(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5", "dev",
                                        "web-1"))
    assert vm["metadata"]["deletionTimestamp"]  # the host agent's finalizer holds it
    assert names(sup, "", "secrets", "dev") == []


def test_a_failed_vm_create_removes_the_secret_it_made(lab: Any, monkeypatch: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    service = sup.service
    real = service.create

    def refuse_vms(user: Any, t: Target, body: Any, opts: WriteOptions | None = None) -> Any:
        opts = opts or WriteOptions()
        if t.plural == "virtualmachines" and not opts.dry_run:
            raise ApiError(409, "AlreadyExists", 'virtualmachines "web-1" already exists')
        return real(user, t, body, opts)

    monkeypatch.setattr(service, "create", refuse_vms)
    resp = alice.post("/ns/dev/vms/new", vm_form("web-1"))
    assert resp.status_code == 409 and "already exists" in text(resp)
    monkeypatch.undo()
    assert names(sup, "", "secrets", "dev") == []


def test_a_full_state_disk_is_said_plainly_and_anything_else_is_a_500_page(
        lab: Any, monkeypatch: Any, caplog: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    failure: list[Exception] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise failure[0]

    monkeypatch.setattr(sup.service, "create", refuse)
    failure[:] = [sqlite3.OperationalError("database or disk is full")]
    resp = alice.post("/ns/dev/vms/new", vm_form("web-1"))
    assert resp.status_code == 507 and "state disk is full" in text(resp)
    failure[:] = [KeyError("a bug")]
    with caplog.at_level(logging.ERROR):
        resp = alice.post("/ns/dev/vms/new", vm_form("web-1"))
    assert resp.status_code == 500 and "KeyError" not in text(resp)
    assert "internal error on POST /ns/dev/vms/new" in caplog.text


def test_view_only_user_sees_no_controls_and_crafted_posts_are_refused(lab: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev", {"requests.cpu": "8"})
    bootstrap.grant(sup.service, SYSTEM, "dev", "bob", "view")
    vm = make_vm(sup, "dev", "web-1")
    bob = Browser(app)
    bob.login("bob", PASSWORDS["bob"])
    overview = text(bob.get("/ns/dev"))
    assert "web-1" in overview
    for control in ("New VM", "Delete namespace", "/vms/new"):
        assert control not in overview
    page = text(bob.get("/ns/dev/vms/web-1"))
    for control in ("Power off", "Suspend", "Delete", "/power", "/delete"):
        assert control not in page
    settings = text(bob.get("/ns/dev/settings"))
    for control in ("Save limits", "Revoke", "Grant a role", ">Assign<", ">Remove<"):
        assert control not in settings
    objects = text(bob.get("/ns/dev/objects"))
    assert "Secret<" not in objects and "VirtualMachine<" in objects
    assert bob.get("/ns/dev/vms/new").status_code == 200  # the form shows; creating does not

    crafted = bob.post("/ns/dev/vms/new", vm_form("sneaky"))
    assert crafted.status_code == 403
    assert "Not allowed" in text(crafted) and "cannot create resource" in text(crafted)
    assert bob.post("/ns/dev/vms/web-1/power", {"state": "PoweredOff"}).status_code == 403
    assert bob.post("/ns/dev/vms/web-1/delete", {"uid": vm["metadata"]["uid"]}
                    ).status_code == 403
    assert bob.post("/ns/dev/limits", {"cpu": "100"}).status_code == 403
    assert bob.post("/ns/dev/grants", {"user": "bob", "role": "owner"}).status_code == 403
    assert bob.post("/ns/dev/classes", {"name": "best-effort-large",
                                        "action": "assign"}).status_code == 403
    assert bob.post("/ns/dev/delete", {"confirm": "dev"}).status_code == 403
    assert bob.post("/namespaces/new", {"name": "mine"}).status_code == 403
    assert bob.get("/ns/dev/o/core/secrets").status_code == 403

    assert names(sup, VMOP, "virtualmachines", "dev") == ["web-1"]
    assert names(sup, "", "secrets", "dev") == []
    current = sup.service.get(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5",
                                             "dev", "web-1"))
    assert current["spec"]["powerState"] == "PoweredOn"
    assert not current["metadata"].get("deletionTimestamp")
    quota = sup.service.get(SYSTEM, Target(kind(sup, "", "resourcequotas"), "v1", "dev",
                                           "pacific-limits"))
    assert quota["spec"]["hard"] == {"requests.cpu": "8"}
    assert names(sup, VMOP, "virtualmachineclasses", "dev") == ["best-effort-xsmall"]
    assert "mine" not in names(sup, "", "namespaces")
    assert [n for n in names(sup, "rbac.authorization.k8s.io", "rolebindings", "dev")] == [
        "pacific-view-bob"]


def test_users_see_only_their_namespaces(lab: Any) -> None:
    sup, app, password = lab
    make_namespace(sup, "team-a")
    make_namespace(sup, "team-b")
    bootstrap.grant(sup.service, SYSTEM, "team-a", "alice", "edit")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    home = text(alice.get("/"))
    assert "team-a" in home and "team-b" not in home and "vmware-system-vmop" not in home
    assert alice.get("/ns/team-b").status_code == 404
    assert alice.get("/ns/team-b/vms/new").status_code == 404
    assert alice.post("/ns/team-b/vms/new", vm_form("x")).status_code == 404
    carol = Browser(app)
    carol.login("carol", PASSWORDS["carol"])
    assert "You have no role in any namespace yet" in text(carol.get("/"))
    admin = Browser(app)
    admin.login("admin", password)
    home = text(admin.get("/"))
    assert "team-a" in home and "team-b" in home and "System namespaces" in home


def test_live_parts_follow_status_without_a_reload(lab: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    make_vm(sup, "dev", "web-1")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    page = text(alice.get("/ns/dev/vms/web-1"))
    assert 'data-live="/ns/dev/vms/web-1/live"' in page and "Pending" in page
    sup.service.patch(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5", "dev",
                                     "web-1", "status"), MERGE_PATCH, {"status": {
        "host": "lab-host", "powerState": "PoweredOn",
        "network": {"primaryIP4": "198.18.0.10"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "GuestReady",
                        "message": "SSH answers on 198.18.0.10",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}, WriteOptions())
    part = alice.get("/ns/dev/vms/web-1/live", headers={"X-Live": "1"})
    fragment = text(part)
    assert part.status_code == 200 and "<html" not in fragment
    assert 'id="vm-state"' in fragment and "Ready" in fragment and "198.18.0.10" in fragment
    table = text(alice.get("/ns/dev/live/workloads", headers={"X-Live": "1"}))
    assert "198.18.0.10" in table and "Ready" in table
    logged_out = Browser(app).get("/ns/dev/live/workloads", headers={"X-Live": "1"})
    assert logged_out.status_code == 401


def test_console_log_needs_a_role_and_is_plain_text(lab: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    bootstrap.grant(sup.service, SYSTEM, "dev", "bob", "view")
    make_vm(sup, "dev", "web-1")
    consoles = sup.settings.state_dir / "consoles"
    consoles.mkdir()
    (consoles / f"{vm_prefix(sup.settings.state_dir)}dev_web-1.log").write_bytes(
        b"\x1b[0;32m[  OK  ]\x1b[0m Started Journal.\r\nDebian GNU/Linux 12 web-1 ttyS0\r\n")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    assert "Console log" in text(alice.get("/ns/dev/vms/web-1"))
    page = text(alice.get("/ns/dev/vms/web-1/console"))
    assert "[  OK  ] Started Journal." in page and "\x1b" not in page
    assert "Debian GNU/Linux 12 web-1 ttyS0" in page
    part = alice.get("/ns/dev/vms/web-1/console", headers={"X-Live": "1"})
    assert "<html" not in text(part) and "Started Journal" in text(part)
    download = alice.get("/ns/dev/logs/vmoperator.vmware.com/virtualmachines/web-1/console.txt")
    assert download.status_code == 200 and b"Started Journal" in download.data
    # The console is the role check's business: viewers may not read it (as with the API).
    bob = Browser(app)
    bob.login("bob", PASSWORDS["bob"])
    assert "Console log" not in text(bob.get("/ns/dev/vms/web-1"))
    refused = bob.get("/ns/dev/vms/web-1/console")
    assert refused.status_code == 403 and "Started Journal" not in text(refused)
    carol = Browser(app)
    carol.login("carol", PASSWORDS["carol"])
    assert carol.get("/ns/dev/vms/web-1/console").status_code == 404


def test_in_a_control_plane_vm_the_console_is_read_from_the_host(lab: Any) -> None:
    """With ``readers`` (appliance.nodeapi.RemoteLogs in a control-plane VM) the console
    page reads the host's answer, after the same role check; nothing is read locally."""
    sup, _, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    bootstrap.grant(sup.service, SYSTEM, "dev", "bob", "view")
    make_vm(sup, "dev", "web-1")
    asked: list[tuple[str, dict[str, str]]] = []

    def from_host(vm: dict[str, Any], args: dict[str, str], timeout: float) -> list[bytes]:
        asked.append((vm["metadata"]["name"], dict(args)))
        return [b"line one\n" * 3, b"login: \n"]

    app = create_app({"TESTING": True}, supervisor=sup,
                     readers={("vmoperator.vmware.com", "virtualmachines", "console"): from_host})
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    page = text(alice.get("/ns/dev/vms/web-1/console"))
    assert "line one" in page and "login:" in page
    assert asked and asked[0][0] == "web-1" and int(asked[0][1]["tailLines"]) > 0
    bob = Browser(app)
    bob.login("bob", PASSWORDS["bob"])
    before = len(asked)
    assert bob.get("/ns/dev/vms/web-1/console").status_code == 403
    assert len(asked) == before  # refused before the host is asked


def test_a_log_read_from_the_host_is_cut_to_whole_lines() -> None:
    from web.lab import tail_of

    assert tail_of(b"", 10) == LogTail("", 0, False, False)
    assert tail_of(b"ab\ncd\n", 10) == LogTail("ab\ncd\n", 6, False, True)
    assert tail_of(b"first line\nsecond\nthird\n", 10) == LogTail("third\n", 24, True, True)


def test_kubeconfig_download_holds_a_token_for_the_user(lab: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    (sup.settings.state_dir / "pki").mkdir(exist_ok=True)
    (sup.settings.state_dir / "pki" / "ca.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    assert alice.get("/ns/dev").status_code == 200
    resp = alice.post("/ns/dev/kubeconfig")
    assert resp.status_code == 200
    assert resp.headers["Content-Disposition"] == 'attachment; filename="dev.kubeconfig"'
    config = yaml.safe_load(resp.data)
    assert config["current-context"] == "dev"
    assert config["clusters"][0]["cluster"]["server"] == "https://lab.test:6443"
    assert config["clusters"][0]["cluster"]["certificate-authority-data"]
    token = config["users"][0]["user"]["token"]
    with sup.store.read() as txn:
        who = users.resolve_token(txn.session, token)
    assert who is not None and who.name == "alice"
    assert alice.get("/ns/dev/kubeconfig").status_code == 405  # never a GET


def test_every_kind_is_listed_and_pods_appear_once_registered(tmp_path: Path) -> None:
    registry = default_registry()
    pod = registry.by_group_plural("", "pods")
    assert pod is not None
    sup, password = _supervisor(tmp_path / "state", registry)
    make_namespace(sup, "dev")
    sup.service.create(SYSTEM, Target(pod, "v1", "dev"), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hello", "namespace": "dev"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}})
    sup.service.patch(SYSTEM, Target(pod, "v1", "dev", "hello", "status"), MERGE_PATCH,
                      {"status": {"phase": "Running", "podIP": "198.19.0.7"}}, WriteOptions())
    app = create_app(supervisor=sup)
    admin = Browser(app)
    admin.login("admin", password)
    overview = text(admin.get("/ns/dev"))
    assert "Pods" in overview and "hello" in overview and "198.19.0.7" in overview
    objects = text(admin.get("/ns/dev/objects"))
    for k in ("Pod", "VirtualMachineClass", "VirtualMachineImage", "RoleBinding"):
        assert f">{k}</a>" in objects
    listing = text(admin.get("/ns/dev/o/core/pods"))
    assert "hello" in listing
    page = text(admin.get("/ns/dev/o/core/pods/hello"))
    assert "phase: Running" in page and "is waiting to start: ContainerCreating" in page
    # The pod's logs, as the host agent writes them, on its page.
    uid = sup.service.get(SYSTEM, Target(pod, "v1", "dev", "hello"))["metadata"]["uid"]
    from appliance.pods.logs import PodLogs

    PodLogs(sup.settings.state_dir / "pods").append(uid, "c", 0, "stdout",
                                                    b"listening on :8080\n")
    assert "listening on :8080" in text(admin.get("/ns/dev/o/core/pods/hello"))
    # kubectl's STATUS word, not just the phase, for a pod that cannot pull its image.
    sup.service.patch(SYSTEM, Target(pod, "v1", "dev", "hello", "status"), MERGE_PATCH,
                      {"status": {"phase": "Pending", "containerStatuses": [
                          {"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}},
                      WriteOptions())
    assert "ImagePullBackOff" in text(admin.get("/ns/dev"))
    cluster = text(admin.get("/cluster"))
    assert ">Namespace</a>" in cluster and ">ClusterVirtualMachineImage</a>" in cluster
    # A build without the kind has no pods section at all.
    without = Registry()
    without.extend(k for k in default_registry().kinds if k.plural != "pods")
    sup2, password2 = _supervisor(tmp_path / "state2", without)
    make_namespace(sup2, "dev")
    admin2 = Browser(create_app(supervisor=sup2))
    admin2.login("admin", password2)
    assert "pods-title" not in text(admin2.get("/ns/dev"))


def test_cloud_init_data_in_a_config_map_is_not_shown(lab: Any) -> None:
    sup, app, _ = lab
    make_namespace(sup, "dev")
    bootstrap.grant(sup.service, SYSTEM, "dev", "alice", "edit")
    sup.service.create(SYSTEM, Target(kind(sup, "", "configmaps"), "v1", "dev"), {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "boot", "namespace": "dev"},
        "data": {"user-data": "#cloud-config\npassword: hunter2\n", "note": "visible"}})
    sup.service.create(SYSTEM, Target(kind(sup, VMOP, "virtualmachines"), "v1alpha5", "dev"), {
        "apiVersion": f"{VMOP}/v1alpha5", "kind": "VirtualMachine",
        "metadata": {"name": "web-1", "namespace": "dev"},
        "spec": {"className": "best-effort-xsmall", "imageName": "debian-12",
                 "bootstrap": {"cloudInit": {"rawCloudConfig": {"name": "boot",
                                                                "key": "user-data"}}}}})
    alice = Browser(app)
    alice.login("alice", PASSWORDS["alice"])
    page = text(alice.get("/ns/dev/o/core/configmaps/boot"))
    assert "hunter2" not in page and "visible" in page and "cloud-init data of a VM" in page
