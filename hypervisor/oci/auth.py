"""Registry credentials from image pull secrets, and ``WWW-Authenticate`` challenges.

``credentials_for()`` reads the ``.dockerconfigjson`` of a Kubernetes
``kubernetes.io/dockerconfigjson`` secret (or the older ``.dockercfg`` shape
without ``auths``) and picks the entry for a registry the way kubelet does:
keys may be ``host``, ``host:port``, ``https://host/v1/``-style URLs or carry a
repository path prefix (``host/team``); ports must match exactly; a leading
``*.`` matches one DNS label; Docker Hub's many spellings all match
``docker.io``; the longest matching path wins. ``identitytoken`` entries
(OAuth refresh tokens) are not supported and are ignored.

``Credentials`` never shows its password in ``repr``; nothing in this module
puts a secret into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from hypervisor.oci.errors import BadCredentials
from hypervisor.oci.reference import DEFAULT_DOMAIN, DOCKER_HUB_ENDPOINT, LEGACY_DEFAULT_DOMAIN

MAX_SECRET_BYTES = 1024 * 1024
DOCKER_HUB_ALIASES = frozenset({DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN, DOCKER_HUB_ENDPOINT})


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or a registry token used as the password)."""

    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        """The ``Authorization`` header value for HTTP Basic."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: scheme and its parameters."""

    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str]


def credentials_for(dockerconfigjson: bytes | str, registry_host: str,
                    repository: str | None = None) -> Credentials | None:
    """The credentials that ``dockerconfigjson`` holds for ``registry_host`` (and ``repository``).

    ``registry_host`` is the registry part of the image reference
    (``docker.io``, ``127.0.0.1:5000``); ``repository`` its path, used only
    to match keys with a path prefix. Returns None when no entry matches.
    Raises ``BadCredentials`` when the document is not a docker config or the
    matching entry cannot be decoded."""
    auths = _auths(dockerconfigjson)
    want_host, want_port = _split_host_port(registry_host.lower())
    best: tuple[int, dict[str, Any]] | None = None
    for key, entry in auths.items():
        if not isinstance(key, str) or not isinstance(entry, dict):
            continue
        score = _match(key, want_host, want_port, repository or "")
        if score is not None and (best is None or score > best[0]):
            best = (score, entry)
    return None if best is None else _decode_entry(best[1], registry_host)


def _auths(document: bytes | str) -> dict[str, Any]:
    raw = document.encode() if isinstance(document, str) else document
    if len(raw) > MAX_SECRET_BYTES:
        raise BadCredentials("the image pull secret is larger than 1 MiB")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadCredentials("the image pull secret is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadCredentials("the image pull secret is not a JSON object")
    auths = data.get("auths", data)  # .dockercfg has the entries at the top level
    if not isinstance(auths, dict):
        raise BadCredentials("the image pull secret's 'auths' is not a JSON object")
    return auths


def _match(key: str, host: str, port: str, repository: str) -> int | None:
    """How well the secret's ``key`` matches; None if it does not. Longer paths score higher."""
    key = key.strip().lower()
    key = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key)
    key_hostport, _, key_path = key.partition("/")
    key_host, key_port = _split_host_port(key_hostport)
    if key_port != port or not _host_matches(key_host, host):
        return None
    key_path = key_path.strip("/")
    if key_path in ("", "v1", "v2"):
        return 0
    if repository == key_path or repository.startswith(key_path + "/"):
        return len(key_path)
    return None


def _host_matches(pattern: str, host: str) -> bool:
    if pattern in DOCKER_HUB_ALIASES and host in DOCKER_HUB_ALIASES:
        return True
    want = pattern.split(".")
    have = host.split(".")
    if len(want) != len(have):
        return False
    return all(w == h or (w == "*" and h) for w, h in zip(want, have, strict=True))


def _split_host_port(hostport: str) -> tuple[str, str]:
    if hostport.startswith("["):  # [v6]:port
        host, _, rest = hostport.partition("]")
        return host + "]", rest.removeprefix(":")
    host, _, port = hostport.partition(":")
    return host, port


def _decode_entry(entry: dict[str, Any], registry: str) -> Credentials:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise BadCredentials(f"the image pull secret's entry for {registry} has an 'auth' "
                                 "that is not base64 of 'user:password'") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise BadCredentials(f"the image pull secret's entry for {registry} has an 'auth' "
                                 "without a ':' between user and password")
        return Credentials(username, password)
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(secret, str) and (user or secret):
        return Credentials(user, secret)
    raise BadCredentials(f"the image pull secret's entry for {registry} has neither 'auth' nor "
                         "'username' and 'password'")


# -- WWW-Authenticate ---------------------------------------------------------------------------

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*({_QUOTED}|{_TOKEN})\s*(,|$)")
_SCHEME = re.compile(rf"\s*,?\s*({_TOKEN})(?=[\s,]|$)\s*")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value (RFC 7235 auth-param syntax).

    ``token68`` challenges and malformed text end the parse; what was read
    before is returned, so a hostile header can only make us see fewer
    challenges, never invented ones."""
    challenges: list[Challenge] = []
    pos = 0
    text = header[:8192]
    while pos < len(text):
        scheme = _SCHEME.match(text, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while pos < len(text):
            param = _PARAM.match(text, pos)
            if param is None:
                break
            params[param.group(1).lower()] = _unquote(param.group(2))
            pos = param.end()
            if param.group(3) != ",":
                break
        challenges.append(Challenge(scheme.group(1).lower(), params))
        if params == {} and pos < len(text) and not _SCHEME.match(text, pos):
            break
    return challenges


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value
