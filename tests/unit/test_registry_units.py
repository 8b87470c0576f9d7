"""Unit tests of the lab registry's pieces that need no registry: repository names and
token scopes, the token signer, Distribution's storage layout read and pruned from
outside, a namespace's storage room, and who the token endpoint takes a caller for
(against an in-memory object service on a throwaway SQLite database)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import stat
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from appliance.auth import users
from appliance.kinds import default_registry
from appliance.objects import SYSTEM, ObjectService, Target
from appliance.registry.access import Access, Unauthenticated, parse_basic
from appliance.registry.names import (
    InvalidName,
    Scope,
    check_reference,
    check_repository,
    object_name,
    parse_scope,
)
from appliance.registry.projects import Room
from appliance.registry.storage import Storage
from appliance.registry.tokens import MAX_TOKEN, Claims, Signer
from appliance.store.db import make_engine, migrate
from appliance.store.repo import Store
from appliance.util.names import dns1123_subdomain

# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "dev/hello", "ns/a/b", "ns/a.b_c__d-e", "p/a--b", "0/1", "dev-team/app/sub/leaf",
    "p/" + "a" * 253,
])
def test_valid_repository_names_are_kept(name: str) -> None:
    assert check_repository(name) == name


@pytest.mark.parametrize("name", [
    "", "hello", "dev/..", "dev/.", "dev/../x", "../dev/x", "./dev", "dev//x", "dev/x/",
    "/dev/x", "Dev/x", "dev/Hello", "dev/%2e%2e", "dev/%2e", "dev/x..y", "dev/_x", "dev/x_",
    "dev/x___y", "dev/-x", "dev/x-", "dev/x.", "dev/a b", "dev/a\nb", "dev/a:b", "dev/\u00e9",
    "p/" + "a" * 254,
])
def test_invalid_repository_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidName):
        check_repository(name)


def test_repository_name_refusal_names_the_rule() -> None:
    with pytest.raises(InvalidName, match="PROJECT/NAME"):
        check_repository("hello")
    with pytest.raises(InvalidName, match="1 to 255"):
        check_repository("p/" + "a" * 300)


@pytest.mark.parametrize("ref", [
    "latest", "v1.2.3", "1", "_x", "a" * 128, "V1-rc.2_b", "sha256:" + "0a" * 32,
])
def test_tags_and_digests_are_references(ref: str) -> None:
    assert check_reference(ref) == ref


@pytest.mark.parametrize("ref", [
    "", ".x", "-x", "a" * 129, "a b", "a/b", "a:b", "../x", "sha256:" + "0A" * 32,
    "sha256:" + "0a" * 31, "sha256:" + "0a" * 33, "sha512:" + "0a" * 64, "md5:abc", "x\n",
    "%2e",
])
def test_garbage_references_are_refused(ref: str) -> None:
    with pytest.raises(InvalidName):
        check_reference(ref)


@pytest.mark.parametrize("ref", ["caf\u00e9", "\u00e9", "\uff54\uff41\uff47", "v\u0661"])
def test_non_ascii_tags_are_refused(ref: str) -> None:
    with pytest.raises(InvalidName):
        check_reference(ref)


@pytest.mark.parametrize(("text", "want"), [
    ("repository:dev/app:pull", Scope("repository", "dev/app", ("pull",))),
    ("repository:dev/app:pull,push", Scope("repository", "dev/app", ("pull", "push"))),
    ("repository:dev/app:push,pull,push", Scope("repository", "dev/app", ("push", "pull"))),
    ("repository:dev/a/b:delete", Scope("repository", "dev/a/b", ("delete",))),
    ("repository:dev/app:*", Scope("repository", "dev/app", ("*",))),
    ("repository:dev/app:pull,*", Scope("repository", "dev/app", ("*",))),
    ("repository(plugin):dev/app:pull", Scope("repository", "dev/app", ("pull",))),
    ("registry:catalog:*", Scope("registry", "catalog", ("*",))),
])
def test_scopes_parse(text: str, want: Scope) -> None:
    scope = parse_scope(text)
    assert scope == want
    assert scope.project == ("dev" if want.type == "repository" else "")


def test_scope_prints_as_the_token_spec_spells_it() -> None:
    assert str(parse_scope("repository:dev/app:pull,push")) == "repository:dev/app:pull,push"


@pytest.mark.parametrize("text", [
    "", "repository", "repository:dev/app", "repository:dev/app:", ":dev/app:pull",
    "repository::pull", "repository:dev/app:,", "image:dev/app:pull", "Repository:dev/app:pull",
    "repository(x):dev/app:pull", "registry:catalog:pull", "registry:other:*",
    "repository:dev/app:pull,fetch", "repository:dev/app:PULL", "repository:dev/app:admin",
    "repository:dev/../x:pull", "repository:dev/./x:pull", "repository:../dev:pull",
    "repository:/dev/app:pull", "repository:dev//app:pull", "repository:app:pull",
    "repository:dev/%2e%2e:pull", "repository:dev/app\n:pull", "repository:dev/app:pull\x00",
    "repository:dev/app:pull\t", "repository:dev/ap p:pull", "repository:dev/\u00e9:pull",
    "repository:dev/app\x7f:pull", "repository:dev/" + "a" * 600 + ":pull",
    "repository:dev/" + "a" * 300 + ":pull",
])
def test_bad_scopes_are_refused(text: str) -> None:
    with pytest.raises(InvalidName):
        parse_scope(text)


def test_object_name_keeps_a_simple_name() -> None:
    assert object_name("dev/hello") == "hello"
    assert object_name("dev/my-app2") == "my-app2"


@pytest.mark.parametrize("repo", [
    "dev/a/b", "dev/a_b", "dev/a__b", "dev/a.b", "dev/a/b/c.d_e", "dev/" + "x" * 250,
    "dev/" + "a_" * 120 + "b",
])
def test_object_name_of_other_names_is_a_hashed_dns_subdomain(repo: str) -> None:
    name = object_name(repo)
    assert re.fullmatch(r".+-[0-9a-f]{8}", name), name
    assert name.endswith(hashlib.sha256(repo.encode()).hexdigest()[:8])
    assert dns1123_subdomain(name) == []
    assert len(name) <= 253


def test_distinct_repositories_get_distinct_object_names() -> None:
    repos = ["dev/a/b", "dev/a.b", "dev/a_b", "dev/a__b", "dev/a-b", "dev/a/b/c", "dev/a.b.c",
             "dev/a/b.c", "dev/a.b/c", "ops/a/b", "ops/a_b", "dev/ab"]
    names = {(r.split("/", 1)[0], object_name(r)) for r in repos}
    assert len(names) == len(repos)


def test_object_names_cannot_be_made_to_collide() -> None:
    hashed = object_name("dev/a_b")
    crafted = f"dev/{hashed}"
    check_repository(crafted)  # an ordinary, valid name
    assert object_name(crafted) != hashed


# -- tokens --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return Signer.ensure(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def other_signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return Signer.ensure(tmp_path_factory.mktemp("other-tokens"))


def test_signer_makes_its_key_once_and_keeps_it_private(tmp_path: Path) -> None:
    directory = tmp_path / "registry"
    first = Signer.ensure(directory)
    key, cert = directory / "token.key", directory / "token.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
    assert first.cert_pem == cert.read_bytes()
    key_bytes = key.read_bytes()

    second = Signer.ensure(directory)
    assert key.read_bytes() == key_bytes
    assert second.cert_pem == first.cert_pem
    token, _ = first.issue("alice", [], 60)
    assert second.verify(token) is not None


def test_signer_refuses_a_symlinked_key(tmp_path: Path) -> None:
    directory = tmp_path / "registry"
    Signer.ensure(directory)
    elsewhere = tmp_path / "elsewhere.key"
    key = directory / "token.key"
    key.rename(elsewhere)
    key.symlink_to(elsewhere)
    with pytest.raises(OSError):
        Signer.ensure(directory)


def test_tokens_round_trip_with_their_access(signer: Signer) -> None:
    access = [Scope("repository", "dev/app", ("pull", "push")),
              Scope("repository", "dev/other", ()),
              Scope("repository", "ops/all", ("*",))]
    token, ttl = signer.issue("alice", access, 300)
    assert ttl == 300
    claims = signer.verify(token)
    assert isinstance(claims, Claims)
    assert claims.subject == "alice"
    assert claims.access == tuple(access)
    assert claims.allows("dev/app", "pull") and claims.allows("dev/app", "push")
    assert not claims.allows("dev/app", "delete")
    assert not claims.allows("dev/other", "pull")
    assert claims.allows("ops/all", "delete")
    assert not claims.allows("dev/app2", "pull")
    assert not claims.allows("dev", "pull")


def test_the_catalog_scope_grants_no_repository(signer: Signer) -> None:
    token, _ = signer.issue("admin", [Scope("registry", "catalog", ("*",))], 60)
    claims = signer.verify(token)
    assert claims is not None
    assert not claims.allows("catalog", "pull")


def _parts(token: str) -> list[str]:
    return token.split(".")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_verify_refuses_a_token_of_another_key(signer: Signer, other_signer: Signer) -> None:
    token, _ = other_signer.issue("alice", [Scope("repository", "dev/app", ("pull",))], 60)
    assert other_signer.verify(token) is not None
    assert signer.verify(token) is None


def test_verify_refuses_an_expired_token(signer: Signer) -> None:
    token, _ = signer.issue("alice", [Scope("repository", "dev/app", ("pull",))], -3600)
    assert signer.verify(token) is None


def test_verify_refuses_a_tampered_payload(signer: Signer) -> None:
    token, _ = signer.issue("bob", [Scope("repository", "dev/app", ("pull",))], 60)
    head, body, sig = _parts(token)
    claims = json.loads(_unb64(body))
    claims["access"][0]["actions"] = ["pull", "push", "delete"]
    forged = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    assert signer.verify(forged) is None
    claims["sub"] = "admin"
    assert signer.verify(f"{head}.{_b64(json.dumps(claims).encode())}.{sig}") is None


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", None])
def test_verify_refuses_another_alg(signer: Signer, alg: str | None) -> None:
    token, _ = signer.issue("bob", [Scope("repository", "dev/app", ("pull",))], 60)
    head, body, sig = _parts(token)
    header = json.loads(_unb64(head))
    header["alg"] = alg
    new_head = _b64(json.dumps(header).encode())
    assert signer.verify(f"{new_head}.{body}.{sig}") is None
    assert signer.verify(f"{new_head}.{body}.") is None


@pytest.mark.parametrize("token", [
    "", "x", "a.b", "a.b.c", "a.b.c.d", "...", "\u00e9.\u00e9.\u00e9", "bnVsbA.bnVsbA.bnVsbA",
    _b64(b"[]") + "." + _b64(b"{}") + ".", _b64(b'{"alg":"RS256"}') + "." + _b64(b"\xff") + ".x",
])
def test_verify_refuses_garbage(signer: Signer, token: str) -> None:
    assert signer.verify(token) is None


def test_verify_refuses_an_over_long_token(signer: Signer) -> None:
    many = [Scope("repository", f"dev/app{i}", ("pull", "push", "delete")) for i in range(300)]
    token, _ = signer.issue("alice", many, 60)
    assert len(token) > MAX_TOKEN
    assert signer.verify(token) is None
    assert signer.verify("a" * MAX_TOKEN + ".b.c") is None


# -- storage -------------------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeDistribution:
    """Distribution's filesystem layout, written by hand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.v2 = root / "docker" / "registry" / "v2"
        (self.v2 / "repositories").mkdir(parents=True)

    def blob(self, data: bytes) -> str:
        digest = _digest(data)
        hexd = digest.removeprefix("sha256:")
        path = self.v2 / "blobs" / "sha256" / hexd[:2] / hexd / "data"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return digest

    def repo(self, name: str) -> Path:
        path = self.v2 / "repositories" / name
        (path / "_manifests").mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def link(directory: Path, digest: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "link").write_text(digest)

    def manifest(self, name: str, config: bytes, layers: list[bytes],
                 tags: tuple[str, ...] = (), store_layers: bool = True) -> tuple[str, int]:
        """Push an OCI image manifest; its digest and length."""
        repo = self.repo(name)
        descriptors = []
        for blob in [config, *layers]:
            digest = self.blob(blob) if store_layers or blob is config else _digest(blob)
            descriptors.append({"digest": digest, "size": len(blob)})
            self.link(repo / "_layers" / "sha256" / digest.removeprefix("sha256:"), digest)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **descriptors[0]},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **d}
                       for d in descriptors[1:]],
        }, indent=2).encode()
        digest = self.blob(body)
        hexd = digest.removeprefix("sha256:")
        self.link(repo / "_manifests" / "revisions" / "sha256" / hexd, digest)
        for tag in tags:
            self.link(repo / "_manifests" / "tags" / tag / "current", digest)
            self.link(repo / "_manifests" / "tags" / tag / "index" / "sha256" / hexd, digest)
        return digest, len(body)


CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}'
LAYER_1 = b"layer one " * 100
LAYER_2 = b"layer two " * 333


@pytest.fixture
def dist(tmp_path: Path) -> FakeDistribution:
    return FakeDistribution(tmp_path / "storage")


def test_repositories_are_found_nested_and_per_project(dist: FakeDistribution) -> None:
    dist.manifest("dev/app", CONFIG, [LAYER_1])
    dist.manifest("dev/a/b", CONFIG, [LAYER_1])
    dist.manifest("dev/a/b/c", CONFIG, [LAYER_1])
    dist.manifest("ops/tool", CONFIG, [LAYER_2])
    dist.repo("lonely")  # a project-level directory is no repository
    (dist.v2 / "repositories" / "dev" / "empty-dir").mkdir()
    (dist.v2 / "repositories" / "dev" / "_uploads").mkdir()
    storage = Storage(dist.root)
    assert storage.repositories() == ["dev/a/b", "dev/a/b/c", "dev/app", "ops/tool"]
    assert storage.repositories("dev") == ["dev/a/b", "dev/a/b/c", "dev/app"]
    assert storage.repositories("ops") == ["ops/tool"]
    assert storage.repositories("none") == []
    assert Storage(dist.root / "missing").repositories() == []


def test_repositories_do_not_follow_links(dist: FakeDistribution, tmp_path: Path) -> None:
    outside = FakeDistribution(tmp_path / "outside")
    outside.manifest("x/secret", CONFIG, [LAYER_1])
    (dist.v2 / "repositories" / "dev").mkdir()
    (dist.v2 / "repositories" / "dev" / "linked").symlink_to(
        outside.v2 / "repositories" / "x" / "secret")
    (dist.v2 / "repositories" / "ops").symlink_to(outside.v2 / "repositories" / "x")
    storage = Storage(dist.root)
    assert storage.repositories() == []
    assert storage.repositories("ops") == []


def test_describe_counts_tags_manifests_and_distinct_blobs(dist: FakeDistribution) -> None:
    m1, len1 = dist.manifest("dev/app", CONFIG, [LAYER_1, LAYER_2], tags=("latest", "v1"))
    config_2 = CONFIG.replace(b"amd64", b"arm64")
    m2, len2 = dist.manifest("dev/app", config_2, [LAYER_1], tags=("v2",))
    # A manifest deleted through the API: its revision directory stays, without a link.
    gone_body = json.dumps({"schemaVersion": 2, "layers": [
        {"digest": dist.blob(b"x" * 5000), "size": 5000}]}).encode()
    gone = dist.blob(gone_body)
    (dist.repo("dev/app") / "_manifests" / "revisions" / "sha256" /
     gone.removeprefix("sha256:")).mkdir(parents=True)
    # A tag whose link was removed, and one whose link is garbage.
    (dist.repo("dev/app") / "_manifests" / "tags" / "old" / "current").mkdir(parents=True)
    dist.link(dist.repo("dev/app") / "_manifests" / "tags" / "bad" / "current", "nonsense")

    info = Storage(dist.root).describe("dev/app")
    assert info.name == "dev/app"
    assert info.tags == [("latest", m1), ("v1", m1), ("v2", m2)]
    assert info.manifests == 2
    assert sorted(info.revisions) == sorted([m1, m2])
    want = {m1: len1, m2: len2, _digest(CONFIG): len(CONFIG), _digest(config_2): len(config_2),
            _digest(LAYER_1): len(LAYER_1), _digest(LAYER_2): len(LAYER_2)}
    assert info.blobs == want
    assert info.size == sum(want.values())
    assert info.last_modified > 0


def test_describe_counts_a_missing_blob_at_its_declared_size(dist: FakeDistribution) -> None:
    m, length = dist.manifest("dev/app", CONFIG, [LAYER_1], store_layers=False)
    info = Storage(dist.root).describe("dev/app")
    assert info.size == length + len(CONFIG) + len(LAYER_1)
    assert Storage(dist.root).blob_size(_digest(LAYER_1)) is None
    assert info.revisions == [m]


def test_describe_of_a_missing_or_invalid_repository(dist: FakeDistribution) -> None:
    info = Storage(dist.root).describe("dev/none")
    assert (info.tags, info.manifests, info.size, info.revisions) == ([], 0, 0, [])
    with pytest.raises(InvalidName):
        Storage(dist.root).describe("dev/../ops/app")


def test_blob_size(dist: FakeDistribution, tmp_path: Path) -> None:
    digest = dist.blob(LAYER_2)
    storage = Storage(dist.root)
    assert storage.blob_size(digest) == len(LAYER_2)
    assert storage.blob_size(_digest(b"absent")) is None
    assert storage.blob_size("sha256:../../etc") is None
    assert storage.blob_size("sha512:" + "0" * 128) is None
    assert storage.blob_size(digest.upper()) is None
    # A data file that is a link is not a blob.
    target = tmp_path / "big"
    target.write_bytes(b"z" * 999)
    linked = _digest(b"linked")
    hexd = linked.removeprefix("sha256:")
    (dist.v2 / "blobs" / "sha256" / hexd[:2] / hexd).mkdir(parents=True)
    (dist.v2 / "blobs" / "sha256" / hexd[:2] / hexd / "data").symlink_to(target)
    assert storage.blob_size(linked) is None


def test_remove_deletes_the_repository_and_its_empty_parents(dist: FakeDistribution) -> None:
    dist.manifest("dev/a/b/c", CONFIG, [LAYER_1], tags=("v1",))
    dist.manifest("ops/x/y", CONFIG, [LAYER_1])
    dist.manifest("ops/z", CONFIG, [LAYER_1])
    storage = Storage(dist.root)
    assert storage.remove("dev/a/b/c") is True
    assert not (dist.v2 / "repositories" / "dev").exists()
    assert storage.remove("ops/x/y") is True
    assert not (dist.v2 / "repositories" / "ops" / "x").exists()
    assert storage.repositories() == ["ops/z"]
    assert (dist.v2 / "blobs" / "sha256").is_dir()  # blobs are garbage collection's
    assert storage.blob_size(_digest(LAYER_1)) == len(LAYER_1)
    assert storage.remove("ops/z") is True
    assert list((dist.v2 / "repositories").iterdir()) == []
    assert storage.remove("ops/z") is False
    assert storage.remove("none/x") is False


def test_remove_keeps_a_sibling(dist: FakeDistribution) -> None:
    dist.manifest("dev/a/b", CONFIG, [LAYER_1])
    dist.manifest("dev/a/c", CONFIG, [LAYER_1])
    storage = Storage(dist.root)
    assert storage.remove("dev/a/b")
    assert storage.repositories() == ["dev/a/c"]


def test_remove_keeps_a_nested_repository(dist: FakeDistribution) -> None:
    dist.manifest("dev/a", CONFIG, [LAYER_1])
    dist.manifest("dev/a/b", CONFIG, [LAYER_2], tags=("v1",))
    storage = Storage(dist.root)
    assert storage.remove("dev/a")
    assert storage.repositories() == ["dev/a/b"]
    assert storage.describe("dev/a/b").manifests == 1


@pytest.mark.parametrize("name", ["dev", "dev/..", "../x", "dev/x/../../..", "/etc/x", ""])
def test_remove_refuses_invalid_names(dist: FakeDistribution, name: str) -> None:
    dist.manifest("dev/app", CONFIG, [LAYER_1])
    with pytest.raises(InvalidName):
        Storage(dist.root).remove(name)
    assert Storage(dist.root).repositories() == ["dev/app"]


def _victim(tmp_path: Path) -> Path:
    victim_dir = tmp_path / "victim"
    (victim_dir / "app" / "_manifests").mkdir(parents=True)
    (victim_dir / "app" / "precious").write_text("keep me")
    return victim_dir


def test_remove_does_not_follow_a_linked_project(dist: FakeDistribution, tmp_path: Path) -> None:
    victim_dir = _victim(tmp_path)
    (dist.v2 / "repositories" / "proj").symlink_to(victim_dir)
    storage = Storage(dist.root)
    assert storage.remove("proj/app") is False
    assert (victim_dir / "app" / "precious").read_text() == "keep me"
    assert (dist.v2 / "repositories" / "proj").is_symlink()


def test_remove_does_not_follow_a_linked_repository(dist: FakeDistribution,
                                                    tmp_path: Path) -> None:
    victim_dir = _victim(tmp_path)
    (dist.v2 / "repositories" / "proj").mkdir()
    (dist.v2 / "repositories" / "proj" / "app").symlink_to(victim_dir / "app")
    assert Storage(dist.root).remove("proj/app") is False  # not a repository it may enter
    assert (victim_dir / "app" / "precious").read_text() == "keep me"


def test_remove_does_not_follow_a_linked_root(tmp_path: Path) -> None:
    victim_dir = _victim(tmp_path)
    (tmp_path / "storage" / "docker" / "registry" / "v2").mkdir(parents=True)
    (tmp_path / "storage" / "docker" / "registry" / "v2" / "repositories").symlink_to(
        victim_dir.parent)
    assert Storage(tmp_path / "storage").remove("victim/app") is False
    assert (victim_dir / "app" / "precious").read_text() == "keep me"


# -- the storage quota's room --------------------------------------------------------------


def test_room_without_a_limit_has_room() -> None:
    assert Room(None, "", Decimal(10**12)).refusal("dev", "dev/app", 10**12) is None


def test_room_within_the_limit() -> None:
    room = Room(Decimal(1024**3), "1Gi", Decimal(512 * 1024**2))
    assert room.refusal("dev", "dev/app", 512 * 1024**2) is None  # exactly full fits
    assert room.refusal("dev", "dev/app", 0) is None


def test_room_over_the_limit_says_why() -> None:
    room = Room(Decimal(1024**3), "1Gi", Decimal(900 * 1024**2))
    message = room.refusal("dev-team", "dev-team/big/app", 200 * 1024**2)
    assert message is not None
    assert "dev-team" in message.split("exceeded")[0]
    assert "dev-team/big/app" in message
    assert "1Gi" in message
    assert "used 900.0MiB" in message
    assert "requested 200.0MiB" in message
    assert "would use 1.1GiB" in message
    assert room.refusal("dev-team", "dev-team/big/app", 124 * 1024**2 + 1) is not None


# -- who the token endpoint takes a caller for ---------------------------------------------

NODE = "system:node:host-1"


def _basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectService]:
    """One database for the module (users' scrypt hashes are slow); tests only add tokens
    and users of their own."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('access') / 'db.sqlite'}")
    migrate(engine)
    registry = default_registry()
    svc = ObjectService(Store(engine), registry)
    ns_kind = registry.by_group_plural("", "namespaces")
    assert ns_kind is not None
    svc.create(SYSTEM, Target(ns_kind, "v1"), {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": "dev"}})
    with svc.store.write() as txn:
        users.create_user(txn.session, "alice", "alice-password")
        users.create_user(txn.session, "bob", "bob-password")
        users.create_user(txn.session, "admin", "admin-password", [users.MASTERS])
        users.create_user(txn.session, NODE, "node-password-1", [users.NODES])
        users.create_user(txn.session, "system:node:host-2", "node-password-2", [users.NODES])
    yield svc
    engine.dispose()


def _token(service: ObjectService, name: str) -> str:
    with service.store.write() as txn:
        token, _ = users.issue_token(txn.session, name, 3600)
    return token


def test_parse_basic() -> None:
    assert parse_basic(_basic("alice", "pw")) == ("alice", "pw")
    assert parse_basic(_basic("alice", "p:w:x")) == ("alice", "p:w:x")
    assert parse_basic(_basic("alice", "")) == ("alice", "")
    assert parse_basic("basic " + base64.b64encode(b"a:b").decode()) == ("a", "b")
    assert parse_basic("Bearer abc") is None
    assert parse_basic("Digest x") is None


@pytest.mark.parametrize("header", [
    "Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b":secret").decode(), "Basic " + base64.b64encode(b"\xff:x").decode(),
])
def test_parse_basic_refuses_malformed_credentials(header: str) -> None:
    with pytest.raises(Unauthenticated):
        parse_basic(header)


def test_authenticate_with_a_password(service: ObjectService) -> None:
    user = Access(service).authenticate(_basic("alice", "alice-password"))
    assert user is not None and user.name == "alice"
    assert users.AUTHENTICATED in user.groups


@pytest.mark.parametrize(("name", "secret"), [
    ("alice", "bob-password"), ("alice", "wrong"), ("alice", ""), ("nobody", "alice-password"),
    ("alice", "plab-not-a-token"), ("alice", "x:plab-not-a-token"),
])
def test_authenticate_refuses_wrong_credentials(service: ObjectService, name: str,
                                                secret: str) -> None:
    with pytest.raises(Unauthenticated):
        Access(service).authenticate(_basic(name, secret))


def test_authenticate_with_a_token_as_password(service: ObjectService) -> None:
    token = _token(service, "alice")
    user = Access(service).authenticate(_basic("alice", token))
    assert user is not None and user.name == "alice"


def test_authenticate_refuses_another_users_token(service: ObjectService) -> None:
    token = _token(service, "bob")
    access = Access(service)
    with pytest.raises(Unauthenticated):
        access.authenticate(_basic("alice", token))
    with pytest.raises(Unauthenticated):
        access.authenticate(_basic("admin", token))


def test_authenticate_a_host_agent_by_its_colon_name_and_token(service: ObjectService) -> None:
    token = _token(service, NODE)
    access = Access(service)
    user = access.authenticate(_basic(NODE, token))
    assert user is not None and user.name == NODE
    assert users.NODES in user.groups
    # The same token under another node's name, or a prefix of the name, is refused.
    for name in ("system:node:host-2", "system:node", "system", "system:node:host-1:x"):
        with pytest.raises(Unauthenticated):
            access.authenticate(_basic(name, token))


def test_authenticate_without_credentials_is_anonymous(service: ObjectService) -> None:
    assert Access(service).authenticate("") is None


def test_authenticate_with_a_bearer_token(service: ObjectService) -> None:
    token = _token(service, "bob")
    access = Access(service)
    user = access.authenticate(f"Bearer {token}")
    assert user is not None and user.name == "bob"
    user = access.authenticate(f"bearer  {token} ")
    assert user is not None and user.name == "bob"
    with pytest.raises(Unauthenticated):
        access.authenticate("Bearer plab-unknown")
    with pytest.raises(Unauthenticated):
        access.authenticate("Bearer")


def test_authenticate_refuses_other_schemes(service: ObjectService) -> None:
    with pytest.raises(Unauthenticated):
        Access(service).authenticate("Digest username=alice")


def test_a_password_with_colon_plab_still_works(service: ObjectService) -> None:
    with service.store.write() as txn:
        users.create_user(txn.session, "carol", "pass:plab-word")
    user = Access(service).authenticate(_basic("carol", "pass:plab-word"))
    assert user is not None and user.name == "carol"


def test_anonymous_is_granted_nothing(service: ObjectService) -> None:
    scopes = [parse_scope("repository:dev/app:pull,push"), parse_scope("registry:catalog:*")]
    decision = Access(service).decide(None, scopes)
    assert decision.granted == (Scope("repository", "dev/app", ()),
                                Scope("registry", "catalog", ()))
    assert len(decision.refused) == 2
    assert all("anonymous" in r for r in decision.refused)
    assert decision.refused[0].startswith("repository:dev/app:pull,push: ")


def test_decide_for_an_administrator(service: ObjectService) -> None:
    admin = Access(service).authenticate(_basic("admin", "admin-password"))
    scopes = [parse_scope("repository:dev/app:*"), parse_scope("repository:gone/app:pull"),
              parse_scope("registry:catalog:*")]
    decision = Access(service).decide(admin, scopes)
    assert decision.granted == (Scope("repository", "dev/app", ("pull", "push", "delete")),
                                Scope("repository", "gone/app", ()),
                                Scope("registry", "catalog", ("*",)))
    assert len(decision.refused) == 1 and 'no project "gone"' in decision.refused[0]


def test_a_host_agent_without_a_pod_there_gets_nothing(service: ObjectService) -> None:
    node = Access(service).authenticate(_basic(NODE, _token(service, NODE)))
    decision = Access(service).decide(node, [parse_scope("repository:dev/app:pull")])
    assert decision.granted == (Scope("repository", "dev/app", ()),)
    assert "has no pod of dev" in decision.refused[0]


def test_no_credentials_in_refusals(service: ObjectService) -> None:
    token = _token(service, "bob")
    with pytest.raises(Unauthenticated) as info:
        Access(service).authenticate(_basic("alice", token))
    assert token not in str(info.value)
    with pytest.raises(Unauthenticated) as info:
        Access(service).authenticate(_basic("alice", "secret-password"))
    assert "secret-password" not in str(info.value)

