"""Manifests, indexes and image configs: parse hostile JSON into small typed values.

Everything here is pure (no I/O) so that every rule can be tested with
hand-written documents. Shapes follow the OCI image spec and Docker's
schema 2; Docker schema 1 (signed, deprecated since 2017) is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypervisor.oci.errors import (BadImage, InvalidImageName, NoMatchingPlatform, TooLarge,
                                   UnsupportedImage)
from hypervisor.oci.reference import check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# Sent as Accept; the order is our preference.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

LAYER_TYPES = frozenset({
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
})

# amd64 micro-architecture levels, best first: a pod VM under TCG has a
# baseline CPU, so prefer the image built for the widest audience.
_AMD64_VARIANTS = ("", "v1", "v2", "v3", "v4")


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config that decide how its container starts."""

    env: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    exposed_ports: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "entrypoint": self.entrypoint, "cmd": self.cmd,
                "working_dir": self.working_dir, "user": self.user, "labels": self.labels,
                "stop_signal": self.stop_signal, "exposed_ports": self.exposed_ports}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageConfig:
        return cls(env=list(data["env"]), entrypoint=data["entrypoint"], cmd=data["cmd"],
                   working_dir=data["working_dir"], user=data["user"],
                   labels=dict(data.get("labels", {})), stop_signal=data.get("stop_signal", ""),
                   exposed_ports=list(data.get("exposed_ports", [])))


@dataclass(frozen=True)
class ParsedConfig:
    """An image config document: the platform it was built for and its layers' diff IDs."""

    platform: Platform | None
    diff_ids: tuple[str, ...]
    config: ImageConfig


def load_json(body: bytes, what: str, limit: int) -> dict[str, Any]:
    """Decode a JSON object of at most ``limit`` bytes; raise ``BadImage``/``TooLarge``."""
    if len(body) > limit:
        raise TooLarge(f"the {what} is {len(body)} bytes, more than the limit of {limit}")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadImage(f"the {what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadImage(f"the {what} is not a JSON object")
    return data


def parse_manifest(body: bytes, content_type: str | None, limit: int) -> Index | ImageManifest:
    """An index or an image manifest, told apart by ``mediaType``, then the header, then shape."""
    data = load_json(body, "manifest", limit)
    media_type = _manifest_media_type(data, content_type)
    if media_type in DOCKER_SCHEMA1 or data.get("schemaVersion") == 1:
        raise UnsupportedImage("the image has a Docker schema 1 manifest (deprecated since "
                               "2017); push it again with a current tool")
    if data.get("schemaVersion") != 2:
        raise BadImage(f"the manifest has schemaVersion {str(data.get('schemaVersion'))[:20]}, "
                       "not 2")
    if media_type in INDEX_TYPES:
        manifests = _list(data, "manifests", "manifest list")
        return Index(media_type, tuple(_descriptor(m, "index entry") for m in manifests))
    if media_type in MANIFEST_TYPES:
        layers = _list(data, "layers", "manifest")
        return ImageManifest(media_type, _descriptor(data.get("config"), "config"),
                             tuple(_descriptor(item, "layer") for item in layers))
    raise UnsupportedImage(f"unsupported manifest media type {media_type[:100]!r}")


def _manifest_media_type(data: dict[str, Any], content_type: str | None) -> str:
    declared = data.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    header = (content_type or "").split(";", 1)[0].strip().lower()
    if header in INDEX_TYPES | MANIFEST_TYPES or header in DOCKER_SCHEMA1:
        return header
    # OCI allows manifests without mediaType: tell them apart by their fields.
    if "manifests" in data and "layers" not in data:
        return OCI_INDEX
    if "config" in data and "layers" in data:
        return OCI_MANIFEST
    return header or "unknown"


def _list(data: dict[str, Any], key: str, what: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise BadImage(f"the {what} has no '{key}' list")
    return value


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise BadImage(f"the manifest's {what} is not a JSON object")
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise BadImage(f"the manifest's {what} lacks mediaType or digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadImage(f"the manifest's {what} has no valid size")
    try:
        check_digest(digest)
    except InvalidImageName as exc:
        raise BadImage(f"the manifest's {what} has an {exc.message}") from None
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    return Descriptor(media_type, digest, size, _platform(raw.get("platform")),
                      {str(k)[:256]: str(v)[:1024] for k, v in list(annotations.items())[:64]})


def _platform(raw: Any) -> Platform | None:
    if not isinstance(raw, dict):
        return None
    fields = [raw.get(key, "") for key in ("os", "architecture", "variant")]
    if not all(isinstance(value, str) for value in fields):
        return None
    return Platform(*(value[:64] for value in fields))


def select_platform(index: Index, want: Platform, image: str) -> Descriptor:
    """The index entry for ``want``; raise ``NoMatchingPlatform`` naming what is offered."""
    candidates = [d for d in index.manifests
                  if d.platform is not None and d.platform.os == want.os
                  and d.platform.architecture == want.architecture
                  and d.media_type in MANIFEST_TYPES | INDEX_TYPES]
    if want.variant:
        candidates = [d for d in candidates if d.platform and d.platform.variant == want.variant]
    elif want.architecture == "amd64":
        candidates = [d for d in candidates if d.platform and d.platform.variant in _AMD64_VARIANTS]
        candidates.sort(key=lambda d: _AMD64_VARIANTS.index(d.platform.variant if d.platform else ""))
    if candidates:
        return candidates[0]
    offered = sorted({str(d.platform) for d in index.manifests
                      if d.platform is not None and d.platform.os not in ("", "unknown")})
    listing = ", ".join(offered) if offered else "no platforms"
    raise NoMatchingPlatform(f"no matching platform: {image} offers {listing}, not {want}")


def parse_config(body: bytes, limit: int) -> ParsedConfig:
    """The platform, diff IDs and container settings of an image config blob."""
    data = load_json(body, "image config", limit)
    platform = None
    if isinstance(data.get("architecture"), str) and data.get("architecture"):
        platform = Platform(str(data.get("os") or "linux")[:64], data["architecture"][:64],
                            str(data.get("variant") or "")[:64])
    rootfs = data.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise BadImage("the image config has no rootfs.diff_ids")
    diff_ids = tuple(_diff_id(item) for item in rootfs["diff_ids"])
    section = data.get("config")
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise BadImage("the image config's 'config' is not a JSON object")
    return ParsedConfig(platform, diff_ids, _container_config(section))


def _diff_id(item: Any) -> str:
    try:
        return check_digest(item if isinstance(item, str) else "")
    except InvalidImageName:
        raise BadImage("the image config has an invalid diff ID") from None


def _container_config(section: dict[str, Any]) -> ImageConfig:
    ports = section.get("ExposedPorts") or {}
    labels = section.get("Labels") or {}
    return ImageConfig(
        env=_strings(section.get("Env"), "Env") or [],
        entrypoint=_strings(section.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(section.get("Cmd"), "Cmd"),
        working_dir=_string(section.get("WorkingDir"), "WorkingDir"),
        user=_string(section.get("User"), "User"),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        stop_signal=_string(section.get("StopSignal"), "StopSignal"),
        exposed_ports=sorted(str(p) for p in ports) if isinstance(ports, dict) else [],
    )


def _strings(value: Any, key: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadImage(f"the image config's {key} is not a list of strings")
    return list(value)


def _string(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadImage(f"the image config's {key} is not a string")
    return value


def check_config_platform(parsed: ParsedConfig, want: Platform, image: str) -> None:
    """Refuse a single-platform image built for another OS or architecture."""
    have = parsed.platform
    if have is None:
        return  # very old images omit it; Docker assumes the host's platform too
    if have.os != want.os or have.architecture != want.architecture:
        raise NoMatchingPlatform(f"no matching platform: {image} is built for {have}, "
                                 f"not {want}")
    if want.variant and have.variant and have.variant != want.variant:
        raise NoMatchingPlatform(f"no matching platform: {image} is built for {have}, "
                                 f"not {want}")
