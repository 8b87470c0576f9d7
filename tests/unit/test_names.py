"""Name/label syntax checks: validity tables and Kubernetes' exact messages."""

from __future__ import annotations

import pytest

from appliance.util.names import (
    dns1035_label,
    dns1123_label,
    dns1123_subdomain,
    label_value,
    qualified_name,
    regex_error,
)

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
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


def test_regex_error_shape() -> None:
    assert regex_error("m", "f") == "m (regex used for validation is 'f')"
    assert regex_error("m", "f", "a", "b") == (
        "m (e.g. 'a',  or 'b', regex used for validation is 'f')")


@pytest.mark.parametrize("name", [
    "a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", "1--a--b--2",
    "a.a", "ab.a", "abc.a", "a1.a", "a-1.a", "a--1--2--b.a", "a.1", "ab.1", "0.a", "01.a",
    "a.b.c.d.e", "aa.bb.cc.dd.ee", "1.2.3.4.5", "11.22.33.44.55", "a" * 253,
])
def test_dns1123_subdomain_good(name: str) -> None:
    assert dns1123_subdomain(name) == []


@pytest.mark.parametrize("name", [
    "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a",
    "a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a..b", "1.", ".1", "1..2", " ", "a ", " a",
    "a b", "1 ", " 1", "1 2", "A.a", "aB.a", "ab.A", "A1.a", "a1.A", "A.1", "aB.1", "A1.1",
    "1A.1", "0.A", "01.A", "012.A", "1A.a", "1a.A", "A.B.C.D.E", "AA.BB.CC.DD.EE", "a.B.c.d.e",
    "aa.bB.cc.dd.ee", "a@b", "a,b", "a\nb", "abc\n", "ä",
])
def test_dns1123_subdomain_bad(name: str) -> None:
    assert dns1123_subdomain(name) == [SUBDOMAIN_MSG]


def test_dns1123_subdomain_too_long() -> None:
    assert dns1123_subdomain("a" * 254) == ["must be no more than 253 characters"]
    assert dns1123_subdomain("A" * 254) == ["must be no more than 253 characters", SUBDOMAIN_MSG]


@pytest.mark.parametrize("name", [
    "a", "ab", "abc", "a1", "a-1", "a--1--2--b", "0", "01", "012", "1a", "1-a", "1--a--b--2",
    "a" * 63, "kube-system",
])
def test_dns1123_label_good(name: str) -> None:
    assert dns1123_label(name) == []


@pytest.mark.parametrize("name", [
    "", "A", "ABC", "aBc", "A1", "A-1", "1-A", "-", "a-", "-a", "1-", "-1", "_", "a_", "_a",
    "a_b", "1_", "_1", "1_2", ".", "a.", ".a", "a..b", " ", "a ", " a", "a b", "ä",
])
def test_dns1123_label_bad(name: str) -> None:
    assert dns1123_label(name) == [LABEL_MSG]


def test_dns1123_label_dots_and_length() -> None:
    assert dns1123_label("a.b") == ["must not contain dots"]
    assert dns1123_label("a" * 64) == ["must be no more than 63 characters"]
    # counted in bytes, like Go's len()
    assert dns1123_label("ä" * 32) == ["must be no more than 63 characters", LABEL_MSG]


def test_dns1035_label() -> None:
    for good in ("a", "ab", "a-1", "a--1--2--b", "a" * 63, "my-service"):
        assert dns1035_label(good) == []
    for bad in ("", "0", "1a", "A", "a-", "-a", "a.b", "a_b"):
        assert dns1035_label(bad) == [DNS1035_MSG]
    assert dns1035_label("a" * 64) == ["must be no more than 63 characters"]


@pytest.mark.parametrize("key", [
    "simple", "now-with-dashes", "1-starts-with-num", "1234", "simple/simple",
    "now-with-dashes/simple", "now-with-dashes/now-with-dashes", "now.with.dots/simple",
    "now-with.dashes-and.dots/simple", "1-num.2-num/3-num", "1234/5678", "1.2.3.4/5678",
    "Uppercase_Is_OK_123", "example.com/Uppercase_Is_OK_123", "requests.storage-foo",
    "app.kubernetes.io/name", "a" * 63, "a" * 253 + "/" + "b" * 63,
])
def test_qualified_name_good(key: str) -> None:
    assert qualified_name(key) == []


@pytest.mark.parametrize("key", [
    "nospecialchars%^=@", "cantendwithadash-", "-cantstartwithadash-", "only/one/slash",
    "Example.com/abc", "example_com/abc", "example.com/", "/simple", "a" * 64,
    "a" * 254 + "/abc",
])
def test_qualified_name_bad(key: str) -> None:
    assert qualified_name(key) != []


def test_qualified_name_messages() -> None:
    assert qualified_name("-a") == [NAME_PART_MSG]
    assert qualified_name("") == ["name part must be non-empty", NAME_PART_MSG]
    assert qualified_name("/a") == ["prefix part must be non-empty"]
    assert qualified_name("a/") == ["name part must be non-empty", NAME_PART_MSG]
    assert qualified_name("Example.com/a") == ["prefix part " + SUBDOMAIN_MSG]
    assert qualified_name("a" * 64) == ["name part must be no more than 63 characters"]
    assert qualified_name("a/b/c") == [(
        "a valid label key must consist of alphanumeric characters, '-', '_' or '.', and must "
        "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or "
        "'123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') "
        "with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
    )]


@pytest.mark.parametrize("value", [
    "simple", "now-with-dashes", "1-starts-with-num", "end-with-num-1", "1234", "a" * 63, "",
    "My_Value", "1.2.3",
])
def test_label_value_good(value: str) -> None:
    assert label_value(value) == []


@pytest.mark.parametrize("value", [
    "nospecialchars%^=@", "Tama-nui-te-rā.is.Māori.sun", "\\backslashes\\are\\bad",
    "-starts-with-dash", "ends-with-dash-", ".starts.with.dot", "ends.with.dot.", " ", "a\n",
])
def test_label_value_bad(value: str) -> None:
    assert label_value(value) == [VALUE_MSG]


def test_label_value_too_long() -> None:
    assert label_value("a" * 64) == ["must be no more than 63 characters"]
