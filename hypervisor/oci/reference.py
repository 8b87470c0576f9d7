"""Parse container image references the way docker and containerd do.

The grammar and the normalisation rules are those of
``github.com/distribution/reference`` (``ParseNormalizedNamed`` followed by
containerd's ``ParseDockerRef``), so a pod spec means the same image here as
on any Kubernetes node:

- no registry part → ``docker.io``; a one-component path on Docker Hub gets
  ``library/``; ``index.docker.io`` is ``docker.io``;
- the first component is a registry when it contains ``.`` or ``:``, is
  ``localhost``, or has upper-case letters (``Foo/bar`` is a registry host
  ``Foo``); otherwise it is part of the path;
- the path must be lower case, at most 255 characters with the registry;
- no tag and no digest → tag ``latest``; with a digest the digest decides
  which content is pulled (a tag next to it is kept for display only);
- a bare 64-hex-digit string is refused: it looks like an image ID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hypervisor.oci.errors import InvalidImageName

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# Lengths of the hex part per digest algorithm (opencontainers/go-digest).
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_REFERENCE = re.compile(rf"^({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?$", re.ASCII)
_ANCHORED_IDENTIFIER = re.compile(r"^[a-f0-9]{64}$", re.ASCII)
_DIGEST_ANCHORED = re.compile(rf"^{_DIGEST}$", re.ASCII)
_DOMAIN_ANCHORED = re.compile(rf"^{_DOMAIN}$", re.ASCII)


@dataclass(frozen=True)
class ImageReference:
    """A normalised reference: ``domain/path[:tag][@digest]``."""

    domain: str  # "docker.io", "127.0.0.1:5000", "[::1]:5000"
    path: str  # "library/busybox", "demo/busybox"
    tag: str | None  # None only when a digest is given without a tag
    digest: str | None  # "sha256:<hex>"

    @property
    def name(self) -> str:
        """The repository with its registry: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def registry(self) -> str:
        """The ``host[:port]`` to talk to; Docker Hub's API lives at registry-1.docker.io."""
        return DOCKER_HUB_ENDPOINT if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def manifest_ref(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> ImageReference:
        """The same repository pinned to ``digest`` (no tag)."""
        return ImageReference(self.domain, self.path, None, digest)


def parse_reference(text: str) -> ImageReference:
    """Parse and normalise ``text``; raise ``InvalidImageName`` with docker's wording."""
    if not isinstance(text, str) or not text:
        raise InvalidImageName("invalid reference format: repository name must have at least "
                               "one component")
    if text != text.strip():
        raise InvalidImageName(f"invalid reference format: {text!r} has leading or trailing "
                               "whitespace")
    if _ANCHORED_IDENTIFIER.match(text):
        raise InvalidImageName(f"invalid repository name ({text}), cannot specify 64-byte "
                               "hexadecimal strings")
    domain, remainder = _split_docker_domain(text)
    remote_name = remainder.split(":", 1)[0].split("@", 1)[0]
    if remote_name.lower() != remote_name:
        raise InvalidImageName(f"invalid reference format: repository name ({remote_name}) "
                               "must be lowercase")
    return _parse(f"{domain}/{remainder}", text)


def _split_docker_domain(name: str) -> tuple[str, str]:
    """Split off the registry part as distribution's ``splitDockerDomain`` does."""
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost"
                   and first.lower() == first):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder.split("@", 1)[0].split(":", 1)[0]:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def _parse(normalised: str, original: str) -> ImageReference:
    match = _REFERENCE.match(normalised)
    if match is None:
        if _REFERENCE.match(normalised.lower()):
            raise InvalidImageName(f"invalid reference format: repository name must be lowercase "
                                   f"({original!r})")
        raise InvalidImageName(f"invalid reference format: {original!r}")
    name, tag, digest = match.group(1), match.group(2), match.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidImageName(f"invalid reference format: repository name must not be more "
                               f"than {NAME_TOTAL_LENGTH_MAX} characters ({original[:80]}...)")
    if digest is not None:
        check_digest(digest)
    elif tag is None:
        tag = DEFAULT_TAG
    domain, _, path = name.partition("/")
    if not _DOMAIN_ANCHORED.match(domain):  # "ex_ample.com/foo" matches as a path only
        raise InvalidImageName(f"invalid reference format: {domain[:80]!r} is not a registry host")
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest)


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed digest of a known algorithm, else raise.

    Raises ``InvalidImageName``: a digest only comes from a reference or from
    a manifest, and the caller decides what a bad one in a manifest means."""
    if not _DIGEST_ANCHORED.match(digest):
        raise InvalidImageName(f"invalid digest format: {digest[:80]!r}")
    algorithm, _, hexpart = digest.partition(":")
    expected = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise InvalidImageName(f"unsupported digest algorithm: {algorithm[:20]!r}")
    if len(hexpart) != expected or hexpart != hexpart.lower():
        raise InvalidImageName(f"invalid checksum digest format: {digest[:80]!r}")
    return digest


def check_registry_host(host: str) -> str:
    """Return a lower-cased ``host[:port]`` if it could be the registry part of a reference."""
    if not _DOMAIN_ANCHORED.match(host):
        raise InvalidImageName(f"invalid registry host {host[:80]!r}")
    return host.lower()
