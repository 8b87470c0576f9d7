"""Bad input gets the right Status code and reason, and nothing is stored."""

from __future__ import annotations

import json
import time

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.api

NS = "bad-input"
CMS = f"/api/v1/namespaces/{NS}/configmaps"


@pytest.fixture(scope="module", autouse=True)
def namespace(admin_api: Api) -> None:
    r = admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    assert r.status_code in (201, 409), r.text


def _names(api: Api) -> list[str]:
    r = api.call("GET", CMS)
    assert r.status_code == 200
    return sorted(i["metadata"]["name"] for i in r.json()["items"])


def _status(r, code: int, reason: str) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == code, r.text
    body = r.json()
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == code and body["reason"] == reason, body
    return dict(body)


def test_malformed_json(admin_api: Api) -> None:
    before = _names(admin_api)
    r = admin_api.call("POST", CMS, data=b'{"apiVersion": "v1", "kind": "ConfigMap", "metadata":',
                       headers={"Content-Type": "application/json"})
    _status(r, 400, "BadRequest")
    assert _names(admin_api) == before


def test_malformed_yaml(admin_api: Api) -> None:
    before = _names(admin_api)
    r = admin_api.call("POST", CMS, data=b"apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed",
                       headers={"Content-Type": "application/yaml"})
    _status(r, 400, "BadRequest")
    assert _names(admin_api) == before


def test_yaml_alias_bomb_and_deep_nesting(admin_api: Api) -> None:
    before = _names(admin_api)
    bomb = ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\nlol:\n"
            "  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" +
            "".join(f"  {b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n"
                    for a, b in zip("abcdefgh", "bcdefghi", strict=True)))
    started = time.monotonic()
    r = admin_api.call("POST", CMS, data=bomb.encode(),
                       headers={"Content-Type": "application/yaml"})
    assert time.monotonic() - started < 1.0
    assert "aliases expand it to more than 100000 nodes" in _status(
        r, 400, "BadRequest")["message"]
    deep: dict = {"leaf": "x"}
    for _ in range(200):
        deep = {"d": deep}
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "deep"}, "extra": deep}
    _status(admin_api.call("POST", CMS, json=body), 400, "BadRequest")
    assert _names(admin_api) == before


def test_yaml_with_anchors_and_aliases_is_accepted(admin_api: Api) -> None:
    manifest = ("apiVersion: v1\nkind: ConfigMap\n"
                "metadata: {name: anchored, labels: &labels {app: web, tier: front}}\n"
                "data: {copy: &v shared, again: *v}\n")
    r = admin_api.call("POST", CMS, data=manifest.encode(),
                       headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["metadata"]["labels"] == {"app": "web", "tier": "front"}
    assert created["data"] == {"copy": "shared", "again": "shared"}
    admin_api.call("DELETE", f"{CMS}/anchored")


def test_an_unknown_field_named_in_any_script_is_warned_about_not_a_500(
        admin_api: Api) -> None:
    """Found by benchmarks/fuzz.py: a field name outside Latin-1 in a Warning header made
    the server fail writing the answer (500, empty body)."""
    r = admin_api.call("POST", CMS, json={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "warned"},
        "fi\u00e9ld\U0008b918\"x": 1})
    assert r.status_code == 201, r.text
    warning = r.headers["Warning"]
    assert warning.startswith('299 - "unknown field')
    assert "\\U0008b918" in warning and warning.isascii()
    admin_api.call("DELETE", f"{CMS}/warned")


def test_unknown_kind(admin_api: Api) -> None:
    r = admin_api.call("POST", f"/apis/nope.example.com/v1/namespaces/{NS}/widgets",
                       json={"apiVersion": "nope.example.com/v1", "kind": "Widget",
                             "metadata": {"name": "w"}})
    _status(r, 404, "NotFound")
    # A body whose kind does not match the URL.
    r = admin_api.call("POST", CMS, json={"apiVersion": "v1", "kind": "Secret",
                                          "metadata": {"name": "mismatch"}})
    _status(r, 400, "BadRequest")
    assert "mismatch" not in _names(admin_api)


@pytest.mark.parametrize("name", ["UPPER", "under_score", "-leading", "x" * 254, "a..b"])
def test_invalid_name(admin_api: Api, name: str) -> None:
    r = admin_api.call("POST", CMS, json={"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": {"name": name}})
    body = _status(r, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    assert "RFC 1123" in body["message"] or "no more than" in body["message"]
    assert name not in _names(admin_api)


def test_invalid_namespace_name(admin_api: Api) -> None:
    r = admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dotted.name"}})
    _status(r, 422, "Invalid")
    assert admin_api.call("GET", "/api/v1/namespaces/dotted.name").status_code == 404


def test_missing_namespace(admin_api: Api) -> None:
    r = admin_api.call("POST", "/api/v1/namespaces/does-not-exist/configmaps",
                       json={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
    body = _status(r, 404, "NotFound")
    assert body["message"] == 'namespaces "does-not-exist" not found'
    assert admin_api.call("GET", "/api/v1/namespaces/does-not-exist").status_code == 404


def test_stale_resource_version(admin_api: Api) -> None:
    r = admin_api.call("POST", CMS, json={"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": {"name": "versioned"}, "data": {"v": "1"}})
    assert r.status_code == 201
    first = r.json()
    fresh = dict(first, data={"v": "2"})
    assert admin_api.call("PUT", f"{CMS}/versioned", json=fresh).status_code == 200
    stale = dict(first, data={"v": "3"})
    body = _status(admin_api.call("PUT", f"{CMS}/versioned", json=stale), 409, "Conflict")
    assert "the object has been modified" in body["message"]
    assert admin_api.call("GET", f"{CMS}/versioned").json()["data"] == {"v": "2"}


def test_oversized_body(admin_api: Api) -> None:
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"},
           "data": {"blob": "x" * (4 * 1024 * 1024)}}
    r = admin_api.call("POST", CMS, data=json.dumps(big).encode(),
                       headers={"Content-Type": "application/json"})
    _status(r, 413, "RequestEntityTooLarge")
    assert "huge" not in _names(admin_api)


def test_strategic_merge_patch_needs_builtin_kind(admin_api: Api) -> None:
    # Built-in kinds accept strategic merge patches; an unknown patch type is a 415.
    admin_api.call("POST", CMS, json={"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "smp"}, "data": {"a": "1"}})
    r = admin_api.call("PATCH", f"{CMS}/smp", data=b'{"data":{"b":"2"}}',
                       headers={"Content-Type": "application/strategic-merge-patch+json"})
    assert r.status_code == 200 and r.json()["data"] == {"a": "1", "b": "2"}
    r = admin_api.call("PATCH", f"{CMS}/smp", data=b"<xml/>",
                       headers={"Content-Type": "application/xml"})
    _status(r, 415, "UnsupportedMediaType")


def test_schema_violation_and_unknown_fields(admin_api: Api) -> None:
    r = admin_api.call("POST", CMS, json={"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": {"name": "typed"}, "data": {"n": 5}})
    body = _status(r, 422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "data.n"
    r = admin_api.call("POST", CMS + "?fieldValidation=Strict", json={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "strict"},
        "data": {}, "spec": {"nope": 1}})
    body = _status(r, 400, "BadRequest")
    assert body["message"] == 'strict decoding error: unknown field "spec"'
    names = _names(admin_api)
    assert "typed" not in names and "strict" not in names


def test_quota_exceeded_message(admin_api: Api) -> None:
    ns = "quota-msg"
    admin_api.call("POST", "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    r = admin_api.call("POST", f"/api/v1/namespaces/{ns}/resourcequotas", json={
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "small"},
        "spec": {"hard": {"count/configmaps": "1"}}})
    assert r.status_code == 201, r.text
    path = f"/api/v1/namespaces/{ns}/configmaps"
    assert admin_api.call("POST", path, json={"apiVersion": "v1", "kind": "ConfigMap",
                                              "metadata": {"name": "one"}}).status_code == 201
    body = _status(admin_api.call("POST", path, json={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "two"}}), 403, "Forbidden")
    assert body["message"] == ('configmaps "two" is forbidden: exceeded quota: small, requested: '
                               'count/configmaps=1, used: count/configmaps=1, limited: '
                               'count/configmaps=1')
    quota = admin_api.call("GET", f"/api/v1/namespaces/{ns}/resourcequotas/small").json()
    assert quota["status"]["used"] == {"count/configmaps": "1"}
    r = admin_api.call("POST", f"/api/v1/namespaces/{ns}/resourcequotas", json={
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "negative"},
        "spec": {"hard": {"requests.cpu": "-1"}}})
    _status(r, 422, "Invalid")
