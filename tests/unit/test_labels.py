"""Label and field selectors, following apimachinery's selector tests."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from appliance.util.labels import (
    EVERYTHING,
    NOTHING,
    FieldRequirement,
    LabelSelector,
    Operator,
    Requirement,
    SelectorError,
    escape_field_value,
    new_requirement,
    parse_field_selector,
    parse_label_selector,
    selector_from_label_selector_object,
    selector_from_set,
)

NAME_PART_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)


# -- examples from the Kubernetes "Labels and Selectors" documentation ------------

def test_docs_equality_based() -> None:
    prod_gpu = {"environment": "production", "accelerator": "nvidia-tesla-p100"}
    sel = parse_label_selector("environment = production")
    assert sel.matches(prod_gpu)
    assert not sel.matches({"environment": "qa"})
    sel = parse_label_selector("tier != frontend")
    assert sel.matches({"tier": "backend"})
    assert sel.matches({})  # no "tier" label at all also matches
    assert not sel.matches({"tier": "frontend"})
    sel = parse_label_selector("environment=production,tier!=frontend")
    assert sel.matches({"environment": "production", "tier": "backend"})
    assert sel.matches({"environment": "production"})
    assert not sel.matches({"environment": "production", "tier": "frontend"})
    assert parse_label_selector("accelerator==nvidia-tesla-p100").matches(prod_gpu)


def test_docs_set_based() -> None:
    sel = parse_label_selector("environment in (production, qa)")
    assert sel.matches({"environment": "production"})
    assert sel.matches({"environment": "qa"})
    assert not sel.matches({"environment": "dev"})
    assert not sel.matches({})
    sel = parse_label_selector("tier notin (frontend, backend)")
    assert sel.matches({"tier": "cache"})
    assert sel.matches({})
    assert not sel.matches({"tier": "backend"})
    sel = parse_label_selector("partition")
    assert sel.matches({"partition": ""})
    assert not sel.matches({"other": "x"})
    sel = parse_label_selector("!partition")
    assert sel.matches({"other": "x"})
    assert not sel.matches({"partition": "a"})
    sel = parse_label_selector("partition in (customerA, customerB),environment!=qa")
    assert sel.matches({"partition": "customerA", "environment": "prod"})
    assert not sel.matches({"partition": "customerA", "environment": "qa"})
    # "environment=production" is the same as "environment in (production)"
    assert parse_label_selector("environment in (production)").matches(
        {"environment": "production"})
    sel = parse_label_selector("environment,environment notin (frontend)")
    assert sel.matches({"environment": "backend"})
    assert not sel.matches({"environment": "frontend"})
    assert not sel.matches({})


def test_qualified_keys() -> None:
    sel = parse_label_selector("app.kubernetes.io/name=web,!node-role.kubernetes.io/control-plane")
    assert sel.matches({"app.kubernetes.io/name": "web"})
    assert not sel.matches({"app.kubernetes.io/name": "web",
                            "node-role.kubernetes.io/control-plane": ""})


# -- TestSelectorParse / TestLexer / TestParserLookahead-style cases ---------------

@pytest.mark.parametrize("text", [
    "", "x=a,y=b,z=c", "x!=a,y=b", "x=,z= ", "x= ,z= ", "!x", "x>1", "x>1,z<5", "x in (a)",
    "x in (,a)", "x notin (a,,b)", "x in ()", "x in (a,b)", "x in(a)", "x  in   (  a , b  )",
    "\tx\t=\ta\t", "x=a\n", "in in (in)", "notin notin (notin)", "x==a", "a-b.c/D_e.f",
    "example.com/x in (A_b.c-1)",
])
def test_valid_selectors(text: str) -> None:
    parse_label_selector(text)


@pytest.mark.parametrize(("text", "message"), [
    ("x=a||y=b", "unable to parse requirement: values[0][x]: Invalid value: \"a||y\": "
     + VALUE_MSG),
    ("x==a==b", "found '==', expected: ',' or 'end of string'"),
    ("!x=a", "found '=', expected: ',' or 'end of string'"),
    ("x<a", ("unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' "
             "operators, the value must be an integer")),
    ("x=a,", "found '', expected: identifier after ','"),
    ("x=(", "unable to parse requirement: found '(', expected: identifier"),
    ("x in a", "unable to parse requirement: found 'a' expected: '('"),
    ("x in (a", "unable to parse requirement: found '', expected: ',' or ')'"),
    ("x in (a b)", "unable to parse requirement: found 'b', expected: ',' or ')'"),
    ("x in (=)", "unable to parse requirement: found '=', expected: ',', ')' or identifier"),
    ("x in (a,=)", "unable to parse requirement: found '=', expected: ',', or identifier"),
    ("x y", "unable to parse requirement: found 'y', expected: in, notin, =, ==, !=, gt, lt"),
    ("=a", "found '=', expected: !, identifier, or 'end of string'"),
    (",", "found ',', expected: !, identifier, or 'end of string'"),
    ("!", "unable to parse requirement: found '', expected: identifier"),
    ("-x=a", "unable to parse requirement: <nil>: Invalid value: \"-x\": " + NAME_PART_MSG),
    ("a/b/c", ("unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a valid label "
               "key must consist of alphanumeric characters, '-', '_' or '.', and must start and "
               "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', "
               "regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an "
               "optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')")),
    ("x>1,z<5,a>-1", "unable to parse requirement: values[0][a]: Invalid value: \"-1\": "
     + VALUE_MSG),
    ("x in (-a,-b)", "unable to parse requirement: [values[0][x]: Invalid value: \"-a\": "
     + VALUE_MSG + ", values[1][x]: Invalid value: \"-b\": " + VALUE_MSG + "]"),
])
def test_invalid_selectors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(text)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("text", "canonical"), [
    ("", ""),
    ("x=a,y=b,z=c", "x=a,y=b,z=c"),
    ("z=c,x=a,y=b", "x=a,y=b,z=c"),  # sorted by key
    ("x in (b,a,b)", "x in (a,b)"),  # sorted, de-duplicated
    ("x in (,a)", "x in (,a)"),
    ("x notin (a,,b)", "x notin (,a,b)"),
    ("x in ()", "x in ()"),
    ("x=", "x="),
    ("x==a", "x==a"),
    ("x != a", "x!=a"),
    ("!x, y", "!x,y"),
    ("x>1,x<5", "x>1,x<5"),
])
def test_string_form(text: str, canonical: str) -> None:
    sel = parse_label_selector(text)
    assert str(sel) == canonical
    assert parse_label_selector(str(sel)) == sel


@pytest.mark.parametrize(("text", "labels", "want"), [
    ("", {"x": "y"}, True),
    ("x=y", {"x": "y"}, True),
    ("x=y,z=w", {"x": "y", "z": "w"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
    ("notin=in", {"notin": "in"}, True),
    ("x", {"x": "z"}, True),
    ("!x", {"y": "z"}, True),
    ("x>1", {"x": "2"}, True),
    ("x<1", {"x": "0"}, True),
    ("x=z", {}, False),
    ("x=y", {"x": "z"}, False),
    ("x=y,z=w", {"x": "w", "z": "w"}, False),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
    ("x", {"y": "z"}, False),
    ("!x", {"x": "z"}, False),
    ("x>1", {"x": "0"}, False),
    ("x>1", {"x": "1"}, False),
    ("x>1", {"x": "a"}, False),
    ("x<1", {"x": "2"}, False),
    ("x>1", {}, False),
    ("x in (,a)", {"x": ""}, True),
    ("x in ()", {"x": ""}, True),
    ("x=", {"x": ""}, True),
    ("x=", {}, False),
])
def test_matches(text: str, labels: dict[str, str], want: bool) -> None:
    assert parse_label_selector(text).matches(labels) is want


def test_lexer_quirks() -> None:
    # "in"/"notin" are keywords only in operator position
    sel = parse_label_selector("in in (in)")
    assert sel.requirements == (Requirement("in", Operator.IN, ("in",)),)
    # operators need no surrounding blanks; tabs and newlines are blanks
    assert parse_label_selector("x in(a)") == parse_label_selector("x in (a)")
    assert parse_label_selector("\tx\n=\ra") == parse_label_selector("x=a")
    # a NUL character ends the input, as in the Go lexer
    assert parse_label_selector("x=a\x00") == parse_label_selector("x=a")


def test_requires_exact_match() -> None:
    assert parse_label_selector("x=a,y in (b)").requires_exact_match("x") == "a"
    assert parse_label_selector("x=a,y in (b)").requires_exact_match("y") == "b"
    assert parse_label_selector("x in (a,b)").requires_exact_match("x") is None
    assert parse_label_selector("x!=a").requires_exact_match("x") is None
    assert parse_label_selector("x").requires_exact_match("y") is None


def test_everything_and_nothing() -> None:
    assert EVERYTHING.is_empty and EVERYTHING.matches({"a": "b"})
    assert not NOTHING.is_empty and not NOTHING.matches({})
    assert parse_label_selector("  ") == EVERYTHING


def test_new_requirement_errors() -> None:
    with pytest.raises(SelectorError, match=r"^values: Invalid value: \[\]string\{\}: for 'in', "
                                            r"'notin' operators, values set can't be empty$"):
        new_requirement("x", "in", [])
    with pytest.raises(SelectorError, match=r"exact-match compatibility requires one single value"):
        new_requirement("x", "=", ["a", "b"])
    with pytest.raises(SelectorError, match=r'^values: Invalid value: \[\]string\{"a"\}: values '
                                            r"set must be empty for exists and does not exist$"):
        new_requirement("x", "exists", ["a"])
    with pytest.raises(SelectorError, match=r'^operator: Unsupported value: "~": supported'):
        new_requirement("x", "~", ["a"])
    with pytest.raises(SelectorError, match=r'^key: Invalid value: "-x": name part'):
        new_requirement("-x", "=", ["a"])
    assert str(new_requirement("x", "in", ["b", "a"])) == "x in (a,b)"


def test_selector_from_set() -> None:
    sel = selector_from_set({"b": "2", "a": "1"})
    assert str(sel) == "a=1,b=2"
    assert sel.matches({"a": "1", "b": "2", "c": "3"})
    assert not sel.matches({"a": "1"})
    assert selector_from_set({}) == EVERYTHING


# -- the object form --------------------------------------------------------------

def test_object_form() -> None:
    sel = selector_from_label_selector_object({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["frontend", "cache"]},
            {"key": "env", "operator": "NotIn", "values": ["qa"]},
            {"key": "team", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist", "values": []},
        ],
    })
    assert str(sel) == "app=web,env notin (qa),!legacy,team,tier in (cache,frontend)"
    good = {"app": "web", "tier": "cache", "team": "a"}
    assert sel.matches(good)
    assert not sel.matches({**good, "env": "qa"})
    assert not sel.matches({**good, "legacy": "yes"})
    assert not sel.matches({**good, "tier": "db"})
    assert not sel.matches({"app": "web", "tier": "cache"})


def test_object_form_nothing_and_everything() -> None:
    assert selector_from_label_selector_object(None) == NOTHING
    assert selector_from_label_selector_object({}) == EVERYTHING
    assert selector_from_label_selector_object(
        {"matchLabels": {}, "matchExpressions": []}) == EVERYTHING
    assert selector_from_label_selector_object({"matchLabels": None}) == EVERYTHING


@pytest.mark.parametrize(("obj", "message"), [
    ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]},
     '"Equals" is not a valid label selector operator'),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]},
     "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]},
     ('values: Invalid value: []string{"b"}: values set must be empty for exists and does '
      "not exist")),
    ({"matchLabels": {"-a": "b"}}, 'key: Invalid value: "-a": ' + NAME_PART_MSG),
    ({"matchLabels": {"a": "-b"}}, 'values[0][a]: Invalid value: "-b": ' + VALUE_MSG),
    ({"matchLabels": ["a"]}, "matchLabels must be a map of strings to strings"),
    ({"matchLabels": {"a": 1}}, "matchLabels must be a map of strings to strings"),
    ({"matchExpressions": {"a": 1}}, "matchExpressions must be a list"),
    ({"matchExpressions": ["a"]}, "matchExpressions entries must be objects"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": "b"}]},
     "matchExpressions values must be a list of strings"),
])
def test_object_form_errors(obj: dict[str, object], message: str) -> None:
    with pytest.raises(SelectorError) as info:
        selector_from_label_selector_object(obj)
    assert str(info.value) == message


# -- field selectors ------------------------------------------------------------------

def fields(values: dict[str, str]) -> Callable[[str], str | None]:
    return values.get


def test_field_selector_basics() -> None:
    sel = parse_field_selector("status.phase!=Running,metadata.name==web-1,spec.nodeName=n1")
    assert sel.requirements == (
        FieldRequirement("metadata.name", "=", "web-1"),
        FieldRequirement("spec.nodeName", "=", "n1"),
        FieldRequirement("status.phase", "!=", "Running"),
    )
    field, op, value = sel.requirements[0]  # plain tuples for the allow-list check
    assert (field, op, value) == ("metadata.name", "=", "web-1")
    obj = {"metadata.name": "web-1", "spec.nodeName": "n1", "status.phase": "Pending"}
    assert sel.matches(fields(obj))
    assert not sel.matches(fields({**obj, "status.phase": "Running"}))
    assert not sel.matches(fields({**obj, "metadata.name": "web-2"}))
    assert sel.requires_exact_match("spec.nodeName") == "n1"
    assert sel.requires_exact_match("status.phase") is None
    assert str(sel) == "metadata.name=web-1,spec.nodeName=n1,status.phase!=Running"


def test_field_selector_missing_fields_are_empty() -> None:
    assert parse_field_selector("spec.nodeName=").matches(fields({}))
    assert parse_field_selector("spec.nodeName!=n1").matches(fields({}))
    assert not parse_field_selector("spec.nodeName=n1").matches(fields({}))


@pytest.mark.parametrize("text", ["", ",", ",,", "="])
def test_field_selector_everything(text: str) -> None:
    sel = parse_field_selector(text)
    assert sel.is_empty
    assert sel.matches(fields({"a": "b"}))


def test_field_selector_escaping() -> None:
    sel = parse_field_selector(r"a=x\,y\=z\\,b!=c")
    assert sel.requirements == (FieldRequirement("a", "=", "x,y=z\\"),
                                FieldRequirement("b", "!=", "c"))
    assert str(sel) == r"a=x\,y\=z\\,b!=c"
    assert escape_field_value("a,b=c\\") == r"a\,b\=c\\"
    # no whitespace trimming, like Kubernetes
    assert parse_field_selector("a = b").requirements == (FieldRequirement("a ", "=", " b"),)


@pytest.mark.parametrize(("text", "message"), [
    ("a", "invalid selector: 'a'; can't understand 'a'"),
    ("x=1,a", "invalid selector: 'x=1,a'; can't understand 'a'"),
    ("a=b=c", "invalid field selector: unescaped character in value: 61"),
    (r"a=b\c", "invalid field selector: invalid escape sequence: \\c"),
    ("a=b\\", "invalid field selector: invalid escape sequence: \\"),
])
def test_field_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_field_selector(text)
    assert str(info.value) == message


def random_texts(alphabet: str, seed: int, count: int = 3000, size: int = 12) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, size)))
            for _ in range(count)]


def test_field_selector_never_crashes() -> None:
    for text in random_texts("ab.=!,\\ ", seed=3):
        try:
            sel = parse_field_selector(text)
        except SelectorError:
            continue
        assert parse_field_selector(str(sel)) == sel, text


def test_label_selector_never_crashes() -> None:
    for text in random_texts("abxy1,=!() ", seed=4, size=16):
        try:
            sel = parse_label_selector(text)
        except SelectorError:
            continue
        assert parse_label_selector(str(sel)) == sel, text


def test_set_selector_semantics() -> None:
    keys = ["a", "b", "app.kubernetes.io/name", "tier"]
    values = ["", "x", "y", "1", "10"]
    rng = random.Random(5)
    label_sets = [dict(rng.sample(list(itertools.product(keys, values)), rng.randint(0, 4)))
                  for _ in range(300)]
    for wanted, labels in zip(label_sets, reversed(label_sets), strict=True):
        sel: LabelSelector = selector_from_set(wanted)
        assert sel.matches(labels) == all(labels.get(k) == v for k, v in wanted.items())
        assert parse_label_selector(str(sel)).matches(labels) == sel.matches(labels)
