"""JSON merge patch against RFC 7386 Appendix A, and the JSON patch wrapper."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from appliance.util.patch import PatchError, json_patch, merge_patch

# RFC 7386 Appendix A, every row, as JSON text: (original, patch, result)
RFC7386_APPENDIX_A = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', "{}"),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a": {"b": "c"}}', '{"a": {"b": "d", "c": null}}', '{"a": {"b": "d"}}'),
    ('{"a": [{"b":"c"}]}', '{"a": [1]}', '{"a": [1]}'),
    ('["a","b"]', '["c","d"]', '["c","d"]'),
    ('{"a":"b"}', '["c"]', '["c"]'),
    ('{"a":"foo"}', "null", "null"),
    ('{"a":"foo"}', '"bar"', '"bar"'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ("[1,2]", '{"a":"b","c":null}', '{"a":"b"}'),
    ("{}", '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7386_APPENDIX_A)
def test_rfc7386_appendix_a(original: str, patch: str, result: str) -> None:
    target = json.loads(original)
    patch_doc = json.loads(patch)
    target_before = copy.deepcopy(target)
    patch_before = copy.deepcopy(patch_doc)
    assert merge_patch(target, patch_doc) == json.loads(result)
    assert target == target_before  # inputs are not mutated
    assert patch_doc == patch_before


def test_rfc7386_section3_example() -> None:
    target = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }


def test_merge_patch_result_shares_nothing_with_inputs() -> None:
    target = {"keep": {"deep": [1, 2]}, "x": 1}
    patch = {"new": {"inner": [3]}}
    out = merge_patch(target, patch)
    out["keep"]["deep"].append(99)
    out["new"]["inner"].append(99)
    assert target == {"keep": {"deep": [1, 2]}, "x": 1}
    assert patch == {"new": {"inner": [3]}}


DOC: dict[str, Any] = {"metadata": {"name": "web", "labels": {"app": "web"}},
                       "spec": {"replicas": 1, "ports": [80, 443], "paused": True}}


def test_json_patch_operations() -> None:
    before = copy.deepcopy(DOC)
    out = json_patch(DOC, [
        {"op": "add", "path": "/metadata/labels/tier", "value": "frontend"},
        {"op": "remove", "path": "/metadata/labels/app"},
        {"op": "replace", "path": "/spec/replicas", "value": 3},
        {"op": "add", "path": "/spec/ports/-", "value": 8080},
        {"op": "move", "from": "/spec/paused", "path": "/spec/suspended"},
        {"op": "copy", "from": "/metadata/name", "path": "/metadata/generateName"},
        {"op": "test", "path": "/spec/replicas", "value": 3},
    ])
    assert out == {"metadata": {"name": "web", "generateName": "web",
                                "labels": {"tier": "frontend"}},
                   "spec": {"replicas": 3, "ports": [80, 443, 8080], "suspended": True}}
    assert before == DOC


def test_json_patch_accepts_json_text() -> None:
    ops = json.dumps([{"op": "replace", "path": "/spec/replicas", "value": 2}])
    assert json_patch(DOC, ops)["spec"]["replicas"] == 2
    assert json_patch(DOC, ops.encode())["spec"]["replicas"] == 2
    assert json_patch(DOC, [{"op": "replace", "path": "", "value": 5}]) == 5


@pytest.mark.parametrize(("ops", "message"), [
    ([{"op": "test", "path": "/spec/replicas", "value": 2}],
     r"^json patch operation 0 \(test /spec/replicas\): test failed"),
    ([{"op": "test", "path": "/spec/paused", "value": 1}],  # true is not 1 (RFC 6902 4.6)
     r"^json patch operation 0 \(test /spec/paused\): test failed"),
    ([{"op": "remove", "path": "/metadata/annotations"}],
     r"^json patch operation 0 \(remove /metadata/annotations\): "),
    ([{"op": "replace", "path": "/spec/nope/deeper", "value": 1}],
     r"^json patch operation 0 \(replace /spec/nope/deeper\): "),
    ([{"op": "add", "path": "/spec/ports/9", "value": 1}],
     r"^json patch operation 0 \(add /spec/ports/9\): "),
    ([{"op": "add", "path": "spec", "value": 1}], r"^json patch operation 0 \(add spec\): "),
    ([{"op": "test", "path": "/missing", "value": 1}],
     r"^json patch operation 0 \(test /missing\): "),
    ([{"op": "frobnicate", "path": "/spec"}], r"^json patch operation 0 \(frobnicate /spec\): "),
    ([{"path": "/spec"}], r"^json patch operation 0 \(\? /spec\): "),
    ([{"op": "add", "value": 1}], r"^json patch operation 0 \(add \?\): "),
    ([{"op": "move", "path": "/a"}], r"^json patch operation 0 \(move /a\): "),
    ([{"op": "add", "path": "/a", "value": 1}, {"op": "remove", "path": "/b"}],
     r"^json patch operation 1 \(remove /b\): "),
    ({"op": "add"}, r"^a json patch must be a list of operation objects$"),
    (["add"], r"^a json patch must be a list of operation objects$"),
    ("[{", r"^json patch is not valid JSON"),
])
def test_json_patch_errors(ops: Any, message: str) -> None:
    before = copy.deepcopy(DOC)
    with pytest.raises(PatchError, match=message):
        json_patch(DOC, ops)
    assert before == DOC  # atomic: the failed patch left the input alone


def test_json_patch_test_equality_is_json_equality() -> None:
    doc = {"n": 1, "f": 1.0, "s": "1", "l": [1, {"a": None}], "o": {"b": False}}
    for path, value in [("/n", 1.0), ("/f", 1), ("/s", "1"), ("/l", [1.0, {"a": None}]),
                        ("/o", {"b": False})]:
        assert json_patch(doc, [{"op": "test", "path": path, "value": value}]) == doc
    for path, value in [("/n", "1"), ("/s", 1), ("/o", {"b": 0}), ("/l", [1]),
                        ("/o", {"b": False, "c": 1}), ("/l", [True, {"a": None}])]:
        with pytest.raises(PatchError, match="test failed"):
            json_patch(doc, [{"op": "test", "path": path, "value": value}])


def test_patch_error_is_value_error() -> None:
    assert issubclass(PatchError, ValueError)
