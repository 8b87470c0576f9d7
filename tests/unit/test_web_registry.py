"""The lab registry in the dashboard, against a real in-process supervisor on a throwaway
SQLite state directory: a namespace's registry project (address, push and run commands,
its repositories with tags, sizes and last push), as a viewer sees it through RBAC; what
someone without a role in the namespace sees; the empty state; the overview's registry
address; and nothing of it when the lab runs no registry."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from appliance.auth import bootstrap
from appliance.auth.users import MASTERS, UserInfo
from appliance.kinds import repositories
from appliance.objects import MERGE_PATCH, SYSTEM, Target, WriteOptions
from appliance.service import Supervisor
from tests.unit.test_web import PASSWORDS, Browser, _supervisor, kind, make_namespace, text
from web import create_app

REGISTRY = "lab.test:5000"  # the test settings' public_host and the default registry_port
WRITER = UserInfo(repositories.WRITER, (MASTERS,))
DIGEST_1 = "sha256:" + "1f" * 32
DIGEST_2 = "sha256:" + "2e" * 32
DIGEST_3 = "sha256:" + "3d" * 32


@pytest.fixture
def sup(tmp_path: Path) -> Supervisor:
    sup, _ = _supervisor(tmp_path / "state")
    make_namespace(sup, "dev")
    make_namespace(sup, "ops")
    bootstrap.grant(sup.service, SYSTEM, "dev", "bob", "view")
    bootstrap.grant(sup.service, SYSTEM, "ops", "carol", "edit")
    return sup


@pytest.fixture
def app(sup: Supervisor) -> Iterator[Flask]:
    yield create_app({"TESTING": True}, supervisor=sup)


def login(app: Flask, who: str) -> Browser:
    b = Browser(app)
    b.login(who, PASSWORDS[who])
    return b


def make_repository(sup: Supervisor, ns: str, path: str, status: dict[str, Any]) -> None:
    """A Repository as the registry front writes it (the front does not run in unit tests)."""
    name = path.replace("/", "-")
    k = kind(sup, repositories.GROUP, "repositories")
    sup.service.create(WRITER, Target(k, "v1", ns), {
        "apiVersion": f"{repositories.GROUP}/v1", "kind": "Repository",
        "metadata": {"name": name, "namespace": ns}, "spec": {"name": f"{ns}/{path}"}})
    sup.service.patch(WRITER, Target(k, "v1", ns, name, "status"), MERGE_PATCH,
                      {"status": status}, WriteOptions())


def section(page: str) -> str:
    m = re.search(r'<section class="card" id="registry".*?</section>', page, re.S)
    assert m, "no registry section"
    return m.group(0)


def plain_text(html: str) -> str:
    import html as html_lib

    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


def row(html: str, name: str) -> str:
    m = re.search(rf'<tr data-name="{re.escape(name)}">(.*?)</tr>', html, re.S)
    assert m, f"no row for {name}"
    return plain_text(m.group(1))


def test_viewer_sees_the_project_with_its_repositories(sup: Supervisor, app: Flask) -> None:
    make_repository(sup, "dev", "hello", {
        "tags": [{"name": "1", "digest": DIGEST_1}, {"name": "latest", "digest": DIGEST_1}],
        "manifests": 1, "sizeBytes": 3 * 2**20 + 2**19, "lastPushed": "2026-01-02T03:04:05Z"})
    make_repository(sup, "dev", "tools/builder", {
        "tags": [{"name": "v2", "digest": DIGEST_2}], "manifests": 2, "sizeBytes": 512})
    bob = login(app, "bob")
    page = text(bob.get("/ns/dev"))
    reg = section(page)
    words = plain_text(reg)
    assert "Registry project" in words and "Project dev in the lab registry at " \
        f"{REGISTRY}" in words
    for command in ("lab registry login", f"podman push {REGISTRY}/dev/IMAGE:TAG",
                    f"skopeo copy oci:DIR:TAG docker://{REGISTRY}/dev/IMAGE:TAG",
                    f"kubectl run hello -n dev --image={REGISTRY}/dev/hello:1"):
        assert command in words, command
    assert 'data-live="/ns/dev/live/registry"' in reg

    hello = row(reg, "dev/hello")
    assert "1 @sha256:1f1f1f1f1f1f" in hello and "latest @sha256:1f1f1f1f1f1f" in hello
    assert "3.5MiB" in hello and "ago" in hello
    assert f'title="{DIGEST_1}"' in reg  # the whole digest, on hover
    assert DIGEST_1 not in plain_text(reg)
    builder = row(reg, "dev/tools/builder")
    assert "v2 @sha256:2e2e2e2e2e2e" in builder and "512B" in builder
    assert "2 manifests in all" in builder and "–" in builder  # never pushed: no time
    assert "/ns/dev/o/registry.pacific.lab/repositories/tools-builder" in reg
    assert "No repositories yet" not in reg

    # The live part is the table alone, and follows what the registry writes.
    make_repository(sup, "dev", "newer", {"tags": [{"name": "1", "digest": DIGEST_3}],
                                          "manifests": 1, "sizeBytes": 2048})
    part = bob.get("/ns/dev/live/registry", headers={"X-Live": "1"})
    fragment = text(part)
    assert part.status_code == 200 and "<html" not in fragment
    assert "2.0KiB" in row(fragment, "dev/newer") and row(fragment, "dev/hello")


def test_no_role_no_repositories(sup: Supervisor, app: Flask) -> None:
    make_repository(sup, "dev", "secret-sauce", {
        "tags": [{"name": "1", "digest": DIGEST_1}], "manifests": 1, "sizeBytes": 100})
    make_repository(sup, "ops", "ops-tool", {
        "tags": [{"name": "2", "digest": DIGEST_2}], "manifests": 1, "sizeBytes": 100})
    carol = login(app, "carol")  # edit in ops, nothing in dev
    assert carol.get("/ns/dev").status_code == 404
    assert carol.get("/ns/dev/live/registry", headers={"X-Live": "1"}).status_code == 404
    own = text(carol.get("/ns/ops"))
    reg = section(own)
    assert row(reg, "ops/ops-tool")
    assert "secret-sauce" not in own and "dev/" not in plain_text(reg)
    assert "secret-sauce" not in text(carol.get("/"))


def test_empty_project(sup: Supervisor, app: Flask) -> None:
    reg = section(text(login(app, "bob").get("/ns/dev")))
    words = plain_text(reg)
    assert "No repositories yet" in words
    assert f"podman push {REGISTRY}/dev/IMAGE:TAG" in words
    assert 'id="repository-table"' not in reg


def test_overview_shows_the_registry_address(app: Flask) -> None:
    home = text(login(app, "bob").get("/"))
    m = re.search(r'<p class="small" id="registry-address">(.*?)</p>', home, re.S)
    assert m and f"Lab registry: {REGISTRY}" in plain_text(m.group(1))


def test_repository_data_is_escaped(sup: Supervisor, app: Flask) -> None:
    # Tag names cannot hold markup in a real registry; the page escapes them anyway.
    make_repository(sup, "dev", "hello", {
        "tags": [{"name": "<b>1</b>", "digest": '"><script>x</script>'}], "manifests": 1,
        "sizeBytes": 1})
    reg = section(text(login(app, "bob").get("/ns/dev")))
    assert "<script>" not in reg and "<b>1</b>" not in reg
    assert "&lt;b&gt;1&lt;/b&gt;" in reg


def test_registry_disabled_hides_it(sup: Supervisor) -> None:
    make_repository(sup, "dev", "hello", {
        "tags": [{"name": "1", "digest": DIGEST_1}], "manifests": 1, "sizeBytes": 100})
    off = Supervisor(dataclasses.replace(sup.settings, registry_enabled=False), sup.store,
                     sup.service)
    app = create_app({"TESTING": True}, supervisor=off)
    bob = login(app, "bob")
    page = text(bob.get("/ns/dev"))
    assert 'id="registry"' not in page and "Registry project" not in page
    assert "dev/hello" not in page and REGISTRY not in page
    assert 'id="registry-address"' not in text(bob.get("/"))
    assert bob.get("/ns/dev/live/registry", headers={"X-Live": "1"}).status_code == 404
