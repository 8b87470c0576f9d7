"""Request bodies: JSON and YAML parsing limits, and the size cap."""

from __future__ import annotations

import io
import json
import time

import pytest

from appliance.api.bodies import parse_body, parse_json, parse_yaml, read_limited
from appliance.errors import ApiError

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def bad_request(exc: pytest.ExceptionInfo[ApiError]) -> str:
    assert exc.value.code == 400
    assert exc.value.reason == "BadRequest"
    assert exc.value.to_status()["code"] == 400
    return exc.value.message


# -- YAML --------------------------------------------------------------------------------------


def test_yaml_parses_ordinary_manifests() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: '1'\n"
    assert parse_yaml(text) == {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "c"}, "data": {"a": "1"}}


def test_yaml_parses_json() -> None:
    doc = {"a": [1, 2, {"b": None}], "c": "d", "e": True}
    assert parse_yaml(json.dumps(doc)) == doc


def test_billion_laughs_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ApiError) as exc:
        parse_yaml(BILLION_LAUGHS)
    assert "aliases expand it to more than 100000 nodes" in bad_request(exc)
    assert time.monotonic() - started < 1.0


def test_anchors_aliases_and_merge_keys_are_accepted() -> None:
    text = ("defaults: &defaults {cpu: 2, labels: [a, b]}\n"
            "vms:\n"
            "- <<: *defaults\n  name: one\n"
            "- <<: *defaults\n  name: two\n  cpu: 4\n"
            "same: *defaults\n")
    assert parse_yaml(text) == {
        "defaults": {"cpu": 2, "labels": ["a", "b"]},
        "vms": [{"cpu": 2, "labels": ["a", "b"], "name": "one"},
                {"cpu": 4, "labels": ["a", "b"], "name": "two"}],
        "same": {"cpu": 2, "labels": ["a", "b"]}}


def test_aliases_may_expand_a_document_up_to_the_bound() -> None:
    # 1 + 3 keys + 991 (a) + 9,911 (b) + 8 × 9,911 (c): 90,195 nodes.
    text = ("a: &a [" + ",".join(["x"] * 990) + "]\n"
            "b: &b [" + ",".join(["*a"] * 10) + "]\n"
            "c: [" + ",".join(["*b"] * 8) + "]\n")
    assert len(parse_yaml(text)["c"]) == 8


def test_a_large_document_without_aliases_is_bounded_by_its_size_alone() -> None:
    text = "items: [" + ",".join(str(i) for i in range(150_000)) + "]\n"
    assert len(parse_yaml(text)["items"]) == 150_000


@pytest.mark.parametrize("text", ["a: &a [1, *a]\n", "a: &a {b: *a}\n"])
def test_a_recursive_alias_is_refused(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_yaml(text)
    assert "alias refers to a node that contains it" in bad_request(exc)


def test_aliases_that_nest_a_document_too_deeply_are_refused() -> None:
    text = "x: &d0 [1]\n" + "".join(f"y{i}: &d{i + 1} [[[[[[[[[[*d{i}]]]]]]]]]]\n"
                                    for i in range(300))
    with pytest.raises(ApiError) as exc:
        parse_yaml(text)
    assert "aliases nest it more than 64 levels" in bad_request(exc)


@pytest.mark.parametrize("text", ["a: *x\n", "- *x\n", "<<: *x\n"])
def test_an_undefined_alias_is_a_bad_request(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_yaml(text)
    assert "found undefined alias" in bad_request(exc)


def test_yaml_nested_64_levels_is_accepted() -> None:
    assert parse_yaml("[" * 64 + "]" * 64) is not None
    text = "{a: " * 63 + "{}" + "}" * 63
    value = parse_yaml(text)
    for _ in range(63):
        value = value["a"]
    assert value == {}


@pytest.mark.parametrize("text", ["[" * 65 + "]" * 65, "{a: " * 64 + "{}" + "}" * 64,
                                  "[" * 5000 + "]" * 5000])
def test_yaml_nested_over_64_levels_is_refused(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_yaml(text)
    assert "nested more than 64 levels" in bad_request(exc)


def test_yaml_depth_is_counted_per_branch_not_in_total() -> None:
    branch = "[" * 40 + "]" * 40
    assert parse_yaml("[" + ",".join([branch] * 10) + "]") is not None


@pytest.mark.parametrize("text", [
    "a: [1, 2\n",
    "a: b: c\n",
    "key: 'unterminated\n",
    "a: 1\n---\nb: 2\n",
    "!!python/object/apply:os.system ['true']\n",
    "\tkey: value\n",
])
def test_malformed_or_unsafe_yaml_is_a_bad_request(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_yaml(text)
    assert bad_request(exc).startswith("error converting YAML to JSON: ")


# -- JSON --------------------------------------------------------------------------------------


def test_json_parses() -> None:
    assert parse_json(b'{"a": [1, "x", null]}') == {"a": [1, "x", None]}


@pytest.mark.parametrize("raw", [b"{", b'{"a": }', b"nope", b'{"a": 1} x', b"\xff\xfe{"])
def test_malformed_json_is_a_bad_request(raw: bytes) -> None:
    with pytest.raises(ApiError) as exc:
        parse_json(raw)
    assert bad_request(exc).startswith("couldn't get version/kind; json parse error: ")


def test_deeply_nested_json_is_a_bad_request() -> None:
    with pytest.raises(ApiError) as exc:
        parse_json(b"[" * 200_000 + b"]" * 200_000)
    assert bad_request(exc) == "the object is nested too deeply"


# -- parse_body ----------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    "application/json", "application/merge-patch+json", "application/json-patch+json",
    "application/strategic-merge-patch+json", "", "text/plain",
])
def test_json_content_types(content_type: str) -> None:
    assert parse_body(b'{"a": 1}', content_type) == {"a": 1}
    with pytest.raises(ApiError) as exc:
        parse_body(b"a: 1", content_type)
    assert "json parse error" in bad_request(exc)


@pytest.mark.parametrize("content_type", [
    "application/yaml", "application/apply-patch+yaml", "application/x-yaml", "text/yaml",
    "Application/YAML; charset=utf-8", "application/apply-patch+yaml ;charset=UTF-8",
])
def test_yaml_content_types(content_type: str) -> None:
    assert parse_body(b"a: 1\nb: [x]\n", content_type) == {"a": 1, "b": ["x"]}
    assert parse_body(b'{"a": 1}', content_type) == {"a": 1}


def test_yaml_body_is_checked_for_alias_expansion() -> None:
    with pytest.raises(ApiError) as exc:
        parse_body(BILLION_LAUGHS.encode(), "application/apply-patch+yaml")
    assert "aliases expand it" in bad_request(exc)


@pytest.mark.parametrize("raw", [b"", b"   \n\t ", b"\n"])
def test_empty_body_is_a_bad_request(raw: bytes) -> None:
    for content_type in ("application/json", "application/yaml"):
        with pytest.raises(ApiError) as exc:
            parse_body(raw, content_type)
        assert bad_request(exc) == "the request body is empty"


def test_yaml_body_that_is_not_utf8_is_a_bad_request() -> None:
    with pytest.raises(ApiError) as exc:
        parse_body(b"a: \xff\xfe\n", "application/yaml")
    assert bad_request(exc) == "the request body is not valid UTF-8"


# -- read_limited --------------------------------------------------------------------------------


class Stream(io.BytesIO):
    """A BytesIO that records how much was asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def too_large(exc: pytest.ExceptionInfo[ApiError], limit: int) -> None:
    assert exc.value.code == 413
    assert exc.value.reason == "RequestEntityTooLarge"
    assert str(limit) in exc.value.message


def test_read_with_content_length_under_the_limit() -> None:
    stream = Stream(b"0123456789")
    assert read_limited(stream, 4, 100) == b"0123"
    assert stream.asked == [4]


def test_read_with_content_length_at_the_limit() -> None:
    assert read_limited(Stream(b"x" * 10), 10, 10) == b"x" * 10


def test_content_length_over_the_limit_is_refused() -> None:
    stream = Stream(b"x" * 11)
    with pytest.raises(ApiError) as exc:
        read_limited(stream, 11, 10)
    too_large(exc, 10)
    assert sum(stream.asked) <= 11  # never reads past the announced body


def test_content_length_far_over_the_limit_is_refused_without_reading() -> None:
    stream = Stream(b"x" * 100)
    with pytest.raises(ApiError) as exc:
        read_limited(stream, 10_000_000, 10)
    too_large(exc, 10)
    assert stream.asked == []


def test_read_without_content_length_under_and_at_the_limit() -> None:
    assert read_limited(Stream(b"abc"), None, 10) == b"abc"
    assert read_limited(Stream(b"x" * 10), None, 10) == b"x" * 10


def test_read_without_content_length_over_the_limit_is_refused() -> None:
    stream = Stream(b"x" * 1000)
    with pytest.raises(ApiError) as exc:
        read_limited(stream, None, 10)
    too_large(exc, 10)
    assert stream.asked == [11]  # never more than one byte past the limit


def test_read_returns_bytes_from_a_bytearray_stream() -> None:
    class ByteArrayStream:
        def read(self, size: int) -> bytearray:
            return bytearray(b"ab"[:size])

    out = read_limited(ByteArrayStream(), None, 10)
    assert out == b"ab"
    assert type(out) is bytes
