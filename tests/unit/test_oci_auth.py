"""Pull secrets (``.dockerconfigjson``) and ``WWW-Authenticate`` challenges."""

from __future__ import annotations

import base64
import json

import pytest

from hypervisor.oci import BadCredentials, Credentials, credentials_for, parse_www_authenticate


def config(auths: dict[str, dict[str, str]]) -> bytes:
    return json.dumps({"auths": auths}).encode()


def auth(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("key", [
    "127.0.0.1:5000", "http://127.0.0.1:5000", "https://127.0.0.1:5000/v1/",
    "https://127.0.0.1:5000/v2/", "127.0.0.1:5000/",
])
def test_key_spellings_match(key: str) -> None:
    found = credentials_for(config({key: auth("alice", "pw")}), "127.0.0.1:5000")
    assert found == Credentials("alice", "pw")


def test_ports_must_match_exactly() -> None:
    secret = config({"registry.example.com": auth("a", "1"),
                     "registry.example.com:5000": auth("b", "2")})
    assert credentials_for(secret, "registry.example.com") == Credentials("a", "1")
    assert credentials_for(secret, "registry.example.com:5000") == Credentials("b", "2")
    assert credentials_for(secret, "registry.example.com:443") is None
    assert credentials_for(secret, "other.example.com") is None


@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "docker.io", "index.docker.io",
                                 "registry-1.docker.io"])
def test_docker_hub_aliases(key: str) -> None:
    secret = config({key: auth("hubuser", "hubpw")})
    assert credentials_for(secret, "docker.io") == Credentials("hubuser", "hubpw")
    assert credentials_for(secret, "registry-1.docker.io") == Credentials("hubuser", "hubpw")


def test_wildcard_matches_one_label() -> None:
    secret = config({"*.example.com": auth("w", "x")})
    assert credentials_for(secret, "registry.example.com") == Credentials("w", "x")
    assert credentials_for(secret, "a.b.example.com") is None
    assert credentials_for(secret, "example.com") is None


def test_longest_path_prefix_wins() -> None:
    secret = config({"reg.example.com": auth("any", "1"), "reg.example.com/team": auth("team", "2"),
                     "reg.example.com/team/app": auth("app", "3")})
    assert credentials_for(secret, "reg.example.com", "team/app") == Credentials("app", "3")
    assert credentials_for(secret, "reg.example.com", "team/other") == Credentials("team", "2")
    assert credentials_for(secret, "reg.example.com", "teamwork/x") == Credentials("any", "1")
    assert credentials_for(secret, "reg.example.com") == Credentials("any", "1")


def test_username_and_password_fields() -> None:
    secret = config({"reg.example.com": {"username": "bob", "password": "pa:ss"}})
    assert credentials_for(secret, "reg.example.com") == Credentials("bob", "pa:ss")


def test_password_may_contain_colons() -> None:
    secret = config({"reg.example.com": auth("bob", "a:b:c")})
    assert credentials_for(secret, "reg.example.com") == Credentials("bob", "a:b:c")


def test_legacy_dockercfg_shape() -> None:
    secret = json.dumps({"reg.example.com": auth("old", "style")}).encode()
    assert credentials_for(secret, "reg.example.com") == Credentials("old", "style")


def test_host_is_case_insensitive() -> None:
    assert credentials_for(config({"Reg.Example.COM": auth("a", "b")}), "reg.example.com")


@pytest.mark.parametrize(("document", "words"), [
    (b"not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"auths": []}', "'auths' is not a JSON object"),
    (config({"reg.example.com": {"auth": "!!!notbase64"}}), "not base64"),
    (config({"reg.example.com": {"auth": base64.b64encode(b"nocolon").decode()}}), "without a ':'"),
    (config({"reg.example.com": {"email": "x@example.com"}}), "neither 'auth'"),
    (b"{" + b" " * (1024 * 1024) + b"}", "larger than 1 MiB"),
])
def test_unreadable_secrets(document: bytes, words: str) -> None:
    with pytest.raises(BadCredentials, match=words) as info:
        credentials_for(document, "reg.example.com")
    assert info.value.reason == "ErrImagePull"


def test_broken_entries_for_other_registries_do_not_matter() -> None:
    secret = config({"other.example.com": {"auth": "!!!"}, "reg.example.com": auth("a", "b")})
    assert credentials_for(secret, "reg.example.com") == Credentials("a", "b")


def test_password_never_in_repr_or_errors() -> None:
    creds = Credentials("alice", "hunter2-secret")
    assert "hunter2" not in repr(creds)
    secret = config({"reg.example.com": {"auth": base64.b64encode(b"hunter2-secret").decode()}})
    with pytest.raises(BadCredentials) as info:
        credentials_for(secret, "reg.example.com")
    assert "hunter2" not in str(info.value)


def test_basic_header() -> None:
    assert Credentials("a", "b").basic_header() == "Basic " + base64.b64encode(b"a:b").decode()


# -- WWW-Authenticate ----------------------------------------------------------------------------


def test_bearer_challenge() -> None:
    [challenge] = parse_www_authenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"')
    assert challenge.scheme == "bearer"
    assert challenge.params == {"realm": "https://auth.docker.io/token",
                                "service": "registry.docker.io",
                                "scope": "repository:library/nginx:pull"}


def test_basic_challenge_and_case() -> None:
    [challenge] = parse_www_authenticate('BASIC Realm="Registry Realm"')
    assert challenge.scheme == "basic" and challenge.params == {"realm": "Registry Realm"}


def test_several_challenges_and_spacing() -> None:
    challenges = parse_www_authenticate('Basic realm="a" , Bearer realm="b", service=svc')
    assert [(c.scheme, c.params) for c in challenges] == [
        ("basic", {"realm": "a"}), ("bearer", {"realm": "b", "service": "svc"})]


def test_quoted_strings_with_escapes_and_commas() -> None:
    [challenge] = parse_www_authenticate(r'Bearer realm="https://x/t?a=1,b=2",scope="say \"hi\""')
    assert challenge.params == {"realm": "https://x/t?a=1,b=2", "scope": 'say "hi"'}


@pytest.mark.parametrize("header", ["", "   ", "Bearer abc==", "=", '"quoted"', "Bearer realm="])
def test_malformed_headers_yield_no_invented_params(header: str) -> None:
    for challenge in parse_www_authenticate(header):
        assert "realm" not in challenge.params or challenge.params["realm"]


def test_huge_header_is_cut() -> None:
    header = "Bearer " + ",".join(f"k{i}=v" for i in range(100_000))
    [challenge] = parse_www_authenticate(header)
    assert len(challenge.params) < 2000
