"""A client for the Distribution (Docker Registry HTTP API v2) protocol, for pulling only.

``RegistryClient.resolve()`` turns a reference into the manifest and config
of the linux/amd64 image (choosing from an index or manifest list), and
``fetch_blob()`` streams a layer to disk while hashing it. Every byte from
the registry is treated as hostile:

- manifests, configs and token answers are read with size caps before they
  are parsed; blobs must be exactly the size their descriptor says and hash
  to its digest, or they are deleted;
- manifests fetched by digest must hash to that digest; manifests fetched by
  tag are named by their own hash (a ``Docker-Content-Digest`` that disagrees
  is an error);
- every URL (registry, each redirect, the token realm) is checked against
  the ``RegistryPolicy`` before any connection is made;
- credentials go only to the registry's own origin (HTTP Basic) or to the
  token realm; an ``Authorization`` header never follows a redirect to
  another origin (registries redirect blob downloads to storage hosts);
- passwords, tokens and signed URL queries never reach a message or a log
  line; what the registry says in an error body is cut to a short printable
  fragment with every secret we know of removed.

Authentication follows the registry's ``WWW-Authenticate`` challenge:
``Basic`` (send the credentials) or ``Bearer`` (get a token from the realm
per the Docker token spec, with the credentials if any, anonymously
otherwise, and use ``token`` or ``access_token``).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from hypervisor.oci.auth import Challenge, Credentials, parse_www_authenticate
from hypervisor.oci.errors import (BadImage, DigestMismatch, ImageNotFound, ImagePullError,
                                   InvalidImageName,
                                   RegistryError, RegistryUnreachable, TooLarge, Unauthorized,
                                   UnsupportedImage)
from hypervisor.oci.manifest import (ACCEPT, CONFIG_TYPES, LAYER_TYPES, Descriptor, ImageManifest,
                                     Index, ParsedConfig, Platform, check_config_platform,
                                     load_json, parse_config, parse_manifest, select_platform)
from hypervisor.oci.policy import AddressGuard, RegistryPolicy, Target, check_url, redact_url
from hypervisor.oci.reference import ImageReference, check_digest
from hypervisor.oci.transport import Opened, open_request, tls_context

LOG = logging.getLogger(__name__)

MiB = 1024 ** 2
GiB = 1024 ** 3
CHUNK = MiB
MAX_REDIRECTS = 5
MAX_INDEX_DEPTH = 2
MAX_TOKEN_RESPONSE = MiB
MAX_ERROR_BODY = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]{1,16384}")


@dataclass(frozen=True)
class Limits:
    """Caps on what a registry may make us read, store and unpack."""

    max_manifest_bytes: int = 4 * MiB
    max_config_bytes: int = 4 * MiB
    max_layer_bytes: int = 4 * GiB  # per compressed layer
    max_layers: int = 256
    max_unpacked_bytes: int = 32 * GiB  # all layers of one image, uncompressed
    max_entries: int = 2_000_000  # tar entries of one image
    timeout_s: float = 30.0  # to connect, and for each read
    blob_deadline_s: float = 3600.0  # a whole blob download


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    content_type: str | None
    digest: str


@dataclass(frozen=True)
class ResolvedImage:
    """What a reference points at, for one platform, with its config already verified."""

    reference: ImageReference
    digest: str  # what the reference resolved to: an index or a manifest ("repo digest")
    manifest_digest: str  # the platform's image manifest
    manifest: ImageManifest
    manifest_bytes: bytes
    config_bytes: bytes
    config: ParsedConfig


ProgressBytes = Callable[[int], None] | None


class RegistryClient:
    """Pulls from one registry (``host[:port]``) with optional credentials.

    Keeps the authorization it earned (a Basic header or a bearer token) for
    its later requests, so one client serves one image pull."""

    def __init__(self, registry: str, policy: RegistryPolicy, credentials: Credentials | None = None,
                 *, limits: Limits | None = None, guard: AddressGuard | None = None) -> None:
        self.registry = registry
        self.policy = policy
        self.limits = limits or Limits()
        self._credentials = credentials
        self._guard = guard or AddressGuard()
        self._base = policy.registry_url(registry)
        self._origin = _origin(self._base)
        self._tls: dict[Path | None, ssl.SSLContext] = {}  # by CA bundle (see ca_for)
        self._authorization: str | None = None
        self._secrets: list[str] = [credentials.password] if credentials and credentials.password \
            else []

    # -- public --------------------------------------------------------------------------------

    def resolve(self, ref: ImageReference, platform: Platform | None = None) -> ResolvedImage:
        """Fetch and check the manifest (choosing ``platform`` from an index) and the config."""
        want = platform or Platform()
        image = str(ref)
        top = self.get_manifest(ref, ref.manifest_ref)
        parsed = parse_manifest(top.body, top.content_type, self.limits.max_manifest_bytes)
        manifest_digest, body = top.digest, top.body
        depth = 0
        while isinstance(parsed, Index):
            depth += 1
            if depth > MAX_INDEX_DEPTH:
                raise BadImage(f"{image}: indexes nested more than {MAX_INDEX_DEPTH} deep")
            chosen = select_platform(parsed, want, image)
            sub = self.get_manifest(ref, chosen.digest)
            parsed = parse_manifest(sub.body, sub.content_type or chosen.media_type,
                                    self.limits.max_manifest_bytes)
            manifest_digest, body = chosen.digest, sub.body
        self._check_manifest(parsed, image)
        config_bytes = self.read_blob(ref, parsed.config, self.limits.max_config_bytes)
        config = parse_config(config_bytes, self.limits.max_config_bytes)
        check_config_platform(config, want, image)
        if len(config.diff_ids) != len(parsed.layers):
            raise BadImage(f"{image}: the config lists {len(config.diff_ids)} layers, the manifest "
                           f"{len(parsed.layers)}")
        return ResolvedImage(ref, top.digest, manifest_digest, parsed, body, config_bytes, config)

    def head_digest(self, ref: ImageReference) -> str | None:
        """The digest a tag points at now, from a HEAD request; None if the registry won't say.

        Cheaper than a GET (and not counted by Docker Hub's pull limits), so a
        cached image is found again with one small request."""
        url = self._url(ref, "manifests", ref.manifest_ref)
        with self._request("HEAD", url, {"Accept": ACCEPT}, ref) as opened:
            if opened.status != 200:
                return None
            header = (opened.header("Docker-Content-Digest") or "").strip()
        try:
            return check_digest(header)
        except InvalidImageName:
            return None

    def get_manifest(self, ref: ImageReference, manifest_ref: str) -> FetchedManifest:
        """GET a manifest by tag or digest and establish its digest."""
        url = self._url(ref, "manifests", manifest_ref)
        with self._request("GET", url, {"Accept": ACCEPT}, ref) as opened:
            if opened.status != 200:
                self._raise_for_status(opened, ref, "manifest", manifest_ref)
            body = self._read_small(opened, self.limits.max_manifest_bytes, f"manifest of {ref}")
            content_type = opened.header("Content-Type")
            announced = (opened.header("Docker-Content-Digest") or "").strip()
        if _is_digest(manifest_ref):
            _verify_bytes(body, manifest_ref, f"the manifest {manifest_ref} of {ref.name}")
            return FetchedManifest(body, content_type, manifest_ref)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if _is_digest(announced) and not _matches(body, announced):
            raise DigestMismatch(f"the manifest of {ref} does not match the digest the registry "
                                 f"announced ({announced})")
        return FetchedManifest(body, content_type, digest)

    def read_blob(self, ref: ImageReference, descriptor: Descriptor, limit: int) -> bytes:
        """A small blob (a config) in memory, verified."""
        parts: list[bytes] = []
        self._stream_blob(ref, descriptor, limit, parts.append, None)
        return b"".join(parts)

    def fetch_blob(self, ref: ImageReference, descriptor: Descriptor, dest: Path,
                   progress: ProgressBytes = None) -> None:
        """Stream a blob into the new file ``dest`` (never a symlink), verified; delete it on error."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                self._stream_blob(ref, descriptor, self.limits.max_layer_bytes, out.write, progress)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                dest.unlink()
            raise

    # -- checks --------------------------------------------------------------------------------

    def _check_manifest(self, manifest: ImageManifest, image: str) -> None:
        if manifest.config.media_type not in CONFIG_TYPES:
            raise UnsupportedImage(f"{image} is not a container image (its config is "
                                   f"{manifest.config.media_type[:100]!r})")
        if len(manifest.layers) > self.limits.max_layers:
            raise TooLarge(f"{image} has {len(manifest.layers)} layers, more than the limit of "
                           f"{self.limits.max_layers}")
        for layer in manifest.layers:
            if layer.media_type not in LAYER_TYPES:
                raise UnsupportedImage(f"{image} has a layer of unsupported type "
                                       f"{layer.media_type[:100]!r}")
            if layer.size > self.limits.max_layer_bytes:
                raise TooLarge(f"{image} has a layer of {layer.size} bytes, more than the limit "
                               f"of {self.limits.max_layer_bytes}")

    # -- blobs ---------------------------------------------------------------------------------

    def _stream_blob(self, ref: ImageReference, descriptor: Descriptor, limit: int,
                     sink: Callable[[bytes], object], progress: ProgressBytes) -> None:
        if descriptor.size > limit:
            raise TooLarge(f"the blob {descriptor.digest} of {ref} is {descriptor.size} bytes, more "
                           f"than the limit of {limit}")
        url = self._url(ref, "blobs", descriptor.digest)
        with self._request("GET", url, {}, ref) as opened:
            if opened.status != 200:
                self._raise_for_status(opened, ref, "blob", descriptor.digest)
            length = _content_length(opened.header("Content-Length"))
            if length is not None and length != descriptor.size:
                raise DigestMismatch(f"the registry sends {length} bytes for the blob "
                                     f"{descriptor.digest} of {ref}, the manifest says "
                                     f"{descriptor.size}")
            digest = self._copy_hashed(opened, descriptor, ref, sink, progress)
        if digest != descriptor.digest:
            raise DigestMismatch(f"the blob {descriptor.digest} of {ref} hashes to {digest}: "
                                 "corrupted or tampered with")

    def _copy_hashed(self, opened: Opened, descriptor: Descriptor, ref: ImageReference,
                     sink: Callable[[bytes], object], progress: ProgressBytes) -> str:
        algorithm = descriptor.digest.split(":", 1)[0]
        hasher = hashlib.new(algorithm)
        done = 0
        deadline = time.monotonic() + self.limits.blob_deadline_s
        while True:
            try:
                chunk = opened.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise RegistryUnreachable(f"downloading the blob {descriptor.digest} of {ref} "
                                          f"failed after {done} bytes: {type(exc).__name__}") from None
            if not chunk:
                break
            done += len(chunk)
            if done > descriptor.size:
                raise DigestMismatch(f"the blob {descriptor.digest} of {ref} is larger than the "
                                     f"{descriptor.size} bytes the manifest says")
            hasher.update(chunk)
            sink(chunk)
            if progress is not None:
                progress(done)
            if time.monotonic() > deadline:
                raise RegistryUnreachable(f"downloading the blob {descriptor.digest} of {ref} took "
                                          f"more than {self.limits.blob_deadline_s:.0f} s")
        if done != descriptor.size:
            raise RegistryUnreachable(f"the download of the blob {descriptor.digest} of {ref} "
                                      f"ended after {done} of {descriptor.size} bytes")
        return f"{algorithm}:{hasher.hexdigest()}"

    # -- requests, redirects and authentication -----------------------------------------------

    def _url(self, ref: ImageReference, kind: str, name: str) -> str:
        return f"{self._base}/v2/{ref.path}/{kind}/{name}"

    def _request(self, method: str, url: str, headers: dict[str, str],
                 ref: ImageReference) -> Opened:
        """One request with redirects; on a 401, authenticate per the challenge and retry once.

        A 401 despite Basic credentials is final; despite a bearer token it
        earns one new token (they expire after minutes, long pulls outlive them)."""
        opened = self._follow(method, url, headers, self._origin, self._authorization)
        if opened.status != 401 or (self._authorization is not None
                                    and not self._authorization.startswith("Bearer ")):
            return opened
        challenge = opened.header("WWW-Authenticate") or ""
        opened.close()
        self._authorization = self._authenticate(parse_www_authenticate(challenge), ref)
        return self._follow(method, url, headers, self._origin, self._authorization)

    def _follow(self, method: str, url: str, headers: dict[str, str],
                auth_origin: tuple[str, str, int], authorization: str | None) -> Opened:
        """Send ``method url``, following redirects; each hop is checked against the policy."""
        for _hop in range(MAX_REDIRECTS + 1):
            target = check_url(url, self.policy, self._guard)
            sent = dict(headers)
            if authorization is not None and target.origin == auth_origin:
                sent["Authorization"] = authorization
            opened = open_request(target, method, sent, timeout=self.limits.timeout_s,
                                  context=self._tls_for(target))
            if opened.status not in _REDIRECTS:
                return opened
            location = opened.header("Location")
            opened.close()
            if not location:
                raise RegistryError(f"{target.display}: a redirect without a Location")
            url = urljoin(url, location.strip())
            LOG.debug("redirected to %s", redact_url(url))
        raise RegistryError(f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects")

    def _tls_for(self, target: Target) -> ssl.SSLContext:
        """The TLS context for ``target``: the CAs the policy names for its host and port."""
        bundle = self.policy.ca_for(target.host, target.port)
        context = self._tls.get(bundle)
        if context is None:
            context = self._tls[bundle] = tls_context(bundle)
        return context

    def _authenticate(self, challenges: list[Challenge], ref: ImageReference) -> str:
        """The ``Authorization`` value that answers the registry's challenge."""
        for challenge in challenges:
            if challenge.scheme == "bearer" and challenge.params.get("realm"):
                return "Bearer " + self._fetch_token(challenge.params, ref)
        for challenge in challenges:
            if challenge.scheme == "basic":
                if self._credentials is None:
                    raise Unauthorized(f"unauthorized: {self.registry} requires credentials to pull "
                                       f"{ref}, and none were given")
                header = self._credentials.basic_header()
                self._secrets.append(header.split(" ", 1)[1])
                return header
        raise Unauthorized(f"unauthorized: {self.registry} asks for an authentication scheme this "
                           f"client does not speak ({', '.join(c.scheme for c in challenges)[:80]})")

    def _fetch_token(self, params: dict[str, str], ref: ImageReference) -> str:
        """A bearer token from the realm (Docker token spec), with Basic credentials if any."""
        query = [("scope", params.get("scope") or f"repository:{ref.path}:pull")]
        if params.get("service"):
            query.insert(0, ("service", params["service"]))
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        basic = self._credentials.basic_header() if self._credentials else None
        if basic is not None:
            self._secrets.append(basic.split(" ", 1)[1])
        with self._follow("GET", url, {}, _origin(url), basic) as opened:
            if opened.status in (401, 403):
                detail = self._error_body(opened)[1]  # the token service's reason, sanitised
                raise Unauthorized(self._unauthorized_message(ref, f"the token service at "
                                                              f"{redact_url(realm)}")
                                   + (f" ({detail})" if detail else ""))
            if opened.status != 200:
                raise RegistryError(f"the token service at {redact_url(realm)} answered HTTP "
                                    f"{opened.status}", temporary=opened.status >= 500)
            body = self._read_small(opened, MAX_TOKEN_RESPONSE, "token response")
        data = load_json(body, "token response", MAX_TOKEN_RESPONSE)
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not _TOKEN_CHARS.fullmatch(token):
            raise RegistryError(f"the token service at {redact_url(realm)} sent no usable token")
        self._secrets.append(token)
        return token

    def _unauthorized_message(self, ref: ImageReference, who: str) -> str:
        if self._credentials is None:
            return (f"unauthorized: {who} requires credentials to pull {ref}, and none were given "
                    "(or the repository does not exist)")
        return f"unauthorized: {who} refused the credentials given for {ref}"

    # -- responses -----------------------------------------------------------------------------

    def _read_small(self, opened: Opened, limit: int, what: str) -> bytes:
        length = _content_length(opened.header("Content-Length"))
        if length is not None and length > limit:
            raise TooLarge(f"the {what} is {length} bytes, more than the limit of {limit}")
        try:
            body = opened.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise RegistryUnreachable(f"reading the {what} failed: {type(exc).__name__}") from None
        if len(body) > limit:
            raise TooLarge(f"the {what} is more than the limit of {limit} bytes")
        return body

    def _raise_for_status(self, opened: Opened, ref: ImageReference, kind: str, name: str) -> None:
        status = opened.status
        code, detail = self._error_body(opened)
        image = str(ref)
        if status == 404 or code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"):
            if code == "NAME_UNKNOWN" or (kind == "manifest" and self._repository_unknown(ref)):
                raise ImageNotFound(f"repository unknown: {ref.name} not found")
            if kind == "blob":
                raise ImageNotFound(f"blob unknown: {name} of {image} not found")
            raise ImageNotFound(f"manifest unknown: {image} not found")
        if status == 401:
            raise Unauthorized(self._unauthorized_message(ref, self.registry)
                               + (f" ({detail})" if detail else ""))
        if status == 403:
            raise Unauthorized(f"denied: {self.registry} does not allow pulling {image}"
                               + (f" ({detail})" if detail else ""))
        if status == 429:
            raise RegistryError(f"{self.registry}: too many requests, try again later", temporary=True)
        suffix = f": {code} {detail}".rstrip() if code or detail else ""
        raise RegistryError(f"{self.registry} answered HTTP {status} for the {kind} of {image}"
                            f"{suffix}", temporary=status >= 500)

    def _repository_unknown(self, ref: ImageReference) -> bool:
        """Whether the registry says the whole repository is unknown (not just the tag).

        CNCF Distribution answers MANIFEST_UNKNOWN for a manifest of a missing
        repository; its tag list tells the two apart. Any failure here means
        "don't know", and the caller reports the manifest as unknown."""
        url = f"{self._base}/v2/{ref.path}/tags/list?n=1"
        try:
            with self._request("GET", url, {}, ref) as opened:
                return opened.status == 404 and self._error_body(opened)[0] == "NAME_UNKNOWN"
        except ImagePullError:
            return False

    def _error_body(self, opened: Opened) -> tuple[str, str]:
        """The first error's code and message from a registry error body, sanitised."""
        try:
            raw = opened.read(MAX_ERROR_BODY)
            errors = json.loads(raw).get("errors") or []
            first = errors[0] if isinstance(errors, list) and errors else {}
            code = str(first.get("code", "")) if isinstance(first, dict) else ""
            message = str(first.get("message", "")) if isinstance(first, dict) else ""
        except (OSError, http.client.HTTPException, ValueError, AttributeError, RecursionError):
            return "", ""
        return self._sanitise(code)[:40], self._sanitise(message)

    def _sanitise(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return "".join(ch for ch in text if " " <= ch <= "~")[:200]


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url`` without resolving anything; a malformed URL has none."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return scheme, (parts.hostname or "").lower(), port
    except ValueError:
        return "", "", 0


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _is_digest(text: str) -> bool:
    try:
        check_digest(text)
    except InvalidImageName:
        return False
    return True


def _matches(body: bytes, digest: str) -> bool:
    algorithm, _, expected = digest.partition(":")
    return hashlib.new(algorithm, body).hexdigest() == expected


def _verify_bytes(body: bytes, digest: str, what: str) -> None:
    if not _matches(body, digest):
        raise DigestMismatch(f"{what} does not hash to its digest: corrupted or tampered with")
