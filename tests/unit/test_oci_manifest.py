"""Manifests, indexes and configs from hostile JSON; choosing linux/amd64."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hypervisor.oci import BadImage, NoMatchingPlatform, Platform, TooLarge, UnsupportedImage
from hypervisor.oci.manifest import (DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
                                     ImageManifest, Index, check_config_platform, parse_config,
                                     parse_manifest, select_platform)

LIMIT = 4 * 1024 * 1024


def digest(n: int) -> str:
    return "sha256:" + f"{n:x}".rjust(64, "0")


def entry(n: int, arch: str, os_: str = "linux", variant: str | None = None,
          media_type: str = OCI_MANIFEST) -> dict[str, Any]:
    platform = {"architecture": arch, "os": os_}
    if variant is not None:
        platform["variant"] = variant
    return {"mediaType": media_type, "digest": digest(n), "size": 100, "platform": platform}


def index(*entries: dict[str, Any], media_type: str | None = OCI_INDEX) -> bytes:
    doc: dict[str, Any] = {"schemaVersion": 2, "manifests": list(entries)}
    if media_type:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


def manifest(layers: int = 1, media_type: str | None = OCI_MANIFEST) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(1),
                   "size": 10},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest(100 + i), "size": 5} for i in range(layers)],
    }
    if media_type:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


def test_oci_manifest() -> None:
    parsed = parse_manifest(manifest(2), None, LIMIT)
    assert isinstance(parsed, ImageManifest)
    assert parsed.config.digest == digest(1)
    assert [layer.digest for layer in parsed.layers] == [digest(100), digest(101)]


def test_media_type_from_header_then_shape() -> None:
    assert isinstance(parse_manifest(manifest(media_type=None), DOCKER_MANIFEST, LIMIT), ImageManifest)
    assert isinstance(parse_manifest(manifest(media_type=None), None, LIMIT), ImageManifest)
    parsed = parse_manifest(index(entry(2, "amd64"), media_type=None), None, LIMIT)
    assert isinstance(parsed, Index)
    listed = parse_manifest(index(entry(2, "amd64"), media_type=None), f"{DOCKER_LIST}; x=y", LIMIT)
    assert isinstance(listed, Index) and listed.media_type == DOCKER_LIST


def test_schema1_refused() -> None:
    body = json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode()
    with pytest.raises(UnsupportedImage, match="schema 1"):
        parse_manifest(body, "application/vnd.docker.distribution.manifest.v1+prettyjws", LIMIT)


@pytest.mark.parametrize(("body", "words"), [
    (b"{", "not valid JSON"),
    (b"[1]", "not a JSON object"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    (json.dumps({"schemaVersion": 3, "mediaType": OCI_MANIFEST}).encode(), "schemaVersion"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(), "config"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}).encode(),
     "'manifests' list"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:xyz", "size": 1}]}
                ).encode(), "invalid"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(1), "size": -1}]}
                ).encode(), "size"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                 "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest(1), "size": True}]}
                ).encode(), "size"),
])
def test_malformed(body: bytes, words: str) -> None:
    with pytest.raises(BadImage, match=words):
        parse_manifest(body, None, LIMIT)


def test_unknown_media_type() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/x-helm"}).encode()
    with pytest.raises(UnsupportedImage):
        parse_manifest(body, None, LIMIT)


def test_size_cap() -> None:
    with pytest.raises(TooLarge):
        parse_manifest(manifest(), None, 100)


# -- platforms -----------------------------------------------------------------------------------


def pick(*entries: dict[str, Any]) -> str:
    parsed = parse_manifest(index(*entries), None, LIMIT)
    assert isinstance(parsed, Index)
    return select_platform(parsed, Platform(), "example.com/x:1").digest


def test_picks_linux_amd64() -> None:
    assert pick(entry(1, "arm64", variant="v8"), entry(2, "amd64"), entry(3, "s390x")) == digest(2)


def test_prefers_baseline_amd64_variant() -> None:
    assert pick(entry(1, "amd64", variant="v3"), entry(2, "amd64", variant="v2")) == digest(2)
    assert pick(entry(1, "amd64", variant="v2"), entry(2, "amd64")) == digest(2)


def test_skips_windows_and_attestations() -> None:
    attestation = entry(1, "unknown", os_="unknown")
    assert pick(attestation, entry(2, "amd64", os_="windows"), entry(3, "amd64")) == digest(3)


def test_docker_list_entries() -> None:
    assert pick(entry(4, "amd64", media_type=DOCKER_MANIFEST)) == digest(4)


def test_no_matching_platform_lists_offers() -> None:
    parsed = parse_manifest(index(entry(1, "arm64", variant="v8"), entry(2, "arm", variant="v7"),
                                  entry(3, "unknown", os_="unknown")), None, LIMIT)
    assert isinstance(parsed, Index)
    with pytest.raises(NoMatchingPlatform) as info:
        select_platform(parsed, Platform(), "example.com/x:1")
    assert str(info.value) == ("no matching platform: example.com/x:1 offers linux/arm/v7, "
                               "linux/arm64/v8, not linux/amd64")
    assert info.value.reason == "ErrImagePull"


def test_entries_without_platform_do_not_match() -> None:
    parsed = parse_manifest(index({"mediaType": OCI_MANIFEST, "digest": digest(1), "size": 1}),
                            None, LIMIT)
    assert isinstance(parsed, Index)
    with pytest.raises(NoMatchingPlatform, match="offers no platforms"):
        select_platform(parsed, Platform(), "x")


# -- configs -------------------------------------------------------------------------------------


def config(**fields: Any) -> bytes:
    doc: dict[str, Any] = {"architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [digest(7)]},
                           "config": {"Env": ["PATH=/bin", "A=b=c"], "Entrypoint": ["/ep"],
                                      "Cmd": ["-x"], "WorkingDir": "/srv", "User": "1000:1000",
                                      "Labels": {"k": "v"}, "ExposedPorts": {"80/tcp": {}},
                                      "StopSignal": "SIGINT"}}
    doc.update(fields)
    return json.dumps(doc).encode()


def test_config_fields() -> None:
    parsed = parse_config(config(), LIMIT)
    assert parsed.platform == Platform("linux", "amd64")
    assert parsed.diff_ids == (digest(7),)
    c = parsed.config
    assert (c.env, c.entrypoint, c.cmd, c.working_dir, c.user) == (
        ["PATH=/bin", "A=b=c"], ["/ep"], ["-x"], "/srv", "1000:1000")
    assert (c.labels, c.exposed_ports, c.stop_signal) == ({"k": "v"}, ["80/tcp"], "SIGINT")
    assert type(c).from_json(c.to_json()) == c


def test_minimal_config() -> None:
    parsed = parse_config(json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode(), LIMIT)
    assert parsed.platform is None
    assert parsed.config.env == [] and parsed.config.cmd is None and parsed.config.user == ""


@pytest.mark.parametrize(("fields", "words"), [
    ({"rootfs": None}, "diff_ids"),
    ({"rootfs": {"diff_ids": ["nope"]}}, "diff ID"),
    ({"config": {"Env": "PATH=/bin"}}, "Env"),
    ({"config": {"Cmd": ["a", 1]}}, "Cmd"),
    ({"config": {"User": 0}}, "User"),
    ({"config": []}, "not a JSON object"),
])
def test_bad_configs(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(BadImage, match=words):
        parse_config(config(**fields), LIMIT)


def test_single_platform_image_for_another_architecture() -> None:
    parsed = parse_config(config(architecture="arm64", variant="v8"), LIMIT)
    with pytest.raises(NoMatchingPlatform, match="built for linux/arm64/v8, not linux/amd64"):
        check_config_platform(parsed, Platform(), "example.com/x:1")
    check_config_platform(parse_config(config(), LIMIT), Platform(), "x")
    with pytest.raises(NoMatchingPlatform):
        check_config_platform(parse_config(config(os="windows"), LIMIT), Platform(), "x")
