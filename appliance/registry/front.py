"""The registry's front door: TLS, the token endpoint, and the checks Distribution lacks.

It plays the part of Harbor's core in front of Distribution:

- ``GET|POST /service/token``: Distribution's token protocol. The caller is
  authenticated (``access.Access``), each scope is granted what RBAC allows, and
  the answer is a token signed with the lab's key (``tokens.Signer``). A
  malformed scope is a 400, wrong credentials a 401; refusals are logged without
  credentials.
- ``/v2/...``: passed to Distribution over its unix socket, after refusing a
  repository name that is not Distribution's grammar (so no ``..``, no absolute
  path), a manifest over 4 MiB (read no further than that), and a blob upload
  that would take the namespace over its storage quota. A manifest's new
  repository size is recorded (``projects.Projects.reserve``) before the manifest
  is stored; that write is what the quota admission can refuse.

Distribution itself checks every ``/v2`` request's token; the front reads a
token only to decide whether a quota refusal may be shown (to a caller who may
push there, and to no one else).
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from appliance import errors
from appliance.registry import SERVICE, TOKEN_PATH
from appliance.auth.throttle import LoginThrottle
from appliance.registry.access import Access, Unauthenticated, password_user
from appliance.registry.names import InvalidName, Scope, check_reference, check_repository, \
    parse_scope, project_of
from appliance.registry.projects import Projects
from appliance.registry.storage import MAX_MANIFEST, references
from appliance.registry.tokens import Claims, Signer, describe

LOG = logging.getLogger(__name__)
CHUNK = 1 << 20
RESTART_WAIT_S = 20.0
MAX_FORM = 16 * 1024
MAX_CHUNK_LINE = 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade"}
FORWARDED = {"x-forwarded-proto", "x-forwarded-for", "x-forwarded-host", "forwarded"}
_ROUTE = re.compile(r"^/v2/(?P<name>.+?)/(?P<what>manifests|blobs|tags|referrers)(?P<rest>/.*)?$")
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$|^\[[0-9a-fA-F:.]{2,45}\](:\d{1,5})?$")


class RegistryError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class RegistryFront:
    def __init__(self, access: Access, signer: Signer, projects: Projects, upstream: Path,
                 token_ttl: int, known_hosts: set[str],
                 logins: LoginThrottle | None = None) -> None:
        self.access = access
        # Password guesses at the token endpoint count with those at the API's /login and
        # the dashboard's form (one throttle per supervisor: ``Supervisor.logins``).
        self.logins = logins or LoginThrottle()
        self.signer = signer
        self.projects = projects
        self.upstream = upstream
        self.token_ttl = token_ttl
        self.known_hosts = {h.lower() for h in known_hosts}
        self.servers: list[ThreadingHTTPServer] = []
        self.threads: list[threading.Thread] = []
        self._sync_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="registry-sync")
        self._sync_lock = threading.Lock()
        self._sync_pending: set[str] = set()
        self._sync_again: set[str] = set()

    def sync_soon(self, repository: str) -> None:
        """Bring ``repository``'s object up to date after the answer has gone out (the
        client need not wait for the store's writes); each repository once at a time."""
        with self._sync_lock:
            if repository in self._sync_pending:
                self._sync_again.add(repository)
                return
            self._sync_pending.add(repository)
        self._sync_pool.submit(self._sync, repository)

    def prepare_soon(self, repository: str) -> None:
        self._sync_pool.submit(self._prepare, repository)

    def _prepare(self, repository: str) -> None:
        try:
            self.projects.prepare(repository)
        except Exception as exc:  # noqa: BLE001 - reserve() makes it if this could not
            LOG.debug("registry: could not prepare %s: %s", repository, exc)

    def _sync(self, repository: str) -> None:
        while True:
            try:
                self.projects.sync(repository)
            except Exception as exc:  # noqa: BLE001 - the controller's resync catches up
                LOG.warning("registry: could not record %s: %s", repository, exc)
            with self._sync_lock:
                if repository in self._sync_again:
                    self._sync_again.discard(repository)
                    continue
                self._sync_pending.discard(repository)
                return

    def connect(self, timeout: float = 300.0) -> http.client.HTTPConnection:
        return _UnixConnection(self.upstream, timeout)

    # -- serving ---------------------------------------------------------------------------

    def serve(self, addresses: list[str], port: int, cert: Path, key: Path) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert), str(key))
        front = self

        class Handler(_Handler):
            owner = front

        for address in addresses:
            try:
                server = _TlsServer((address, port), Handler, context)
            except OSError as exc:
                self.shutdown()
                raise RuntimeError(f"cannot listen on {address}:{port} for the registry: "
                                   f"{exc}") from exc
            thread = threading.Thread(target=server.serve_forever, name=f"registry-{address}",
                                      kwargs={"poll_interval": 0.5}, daemon=True)
            thread.start()
            self.servers.append(server)
            self.threads.append(thread)

    def shutdown(self) -> None:
        self._sync_pool.shutdown(wait=False, cancel_futures=True)
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.servers.clear()

    # -- tokens ----------------------------------------------------------------------------

    def token(self, authorization: str, params: list[tuple[str, str]], client: str
              ) -> dict[str, Any]:
        values: dict[str, list[str]] = {}
        for k, v in params:
            values.setdefault(k, []).append(v)
        service = (values.get("service") or [SERVICE])[0]
        if service != SERVICE:
            raise RegistryError(400, "UNSUPPORTED", f'unknown service "{service[:64]}"')
        scopes: list[Scope] = []
        try:
            for text in values.get("scope", []):
                scopes += [parse_scope(s) for s in text.split(" ") if s]
        except InvalidName as exc:
            LOG.info("registry token refused for %s: %s", client, exc)
            raise RegistryError(400, "UNSUPPORTED", str(exc)) from exc
        if len(scopes) > 32:
            raise RegistryError(400, "UNSUPPORTED", "too many scopes")
        name = password_user(authorization)
        wait = self.logins.retry_after(name, client) if name else None
        if wait is not None:
            LOG.info("registry token refused for %s: %r is locked out for %d s", client,
                     name[:64], wait)
            raise RegistryError(429, "TOOMANYREQUESTS", f"too many failed logins for "
                                f"{name[:64]!r} from {client}; try again in {wait} s",
                                {"Retry-After": str(wait)})
        try:
            user = self.access.authenticate(authorization)
        except Unauthenticated as exc:
            LOG.info("registry token refused for %s: %s", client, exc)
            if name:
                self.logins.failed(name, client)
            raise RegistryError(401, "UNAUTHORIZED", "authentication failed: invalid user "
                                "name, password or token",
                                {"WWW-Authenticate": f'Basic realm="{SERVICE}"'}) from exc
        if name:
            self.logins.succeeded(name, client)
        if user is None:
            LOG.info("registry token refused for %s: anonymous (%s)", client,
                     describe(scopes))
            raise RegistryError(401, "UNAUTHORIZED", "authentication required: the lab "
                                "registry has no anonymous access (lab registry login)",
                                {"WWW-Authenticate": f'Basic realm="{SERVICE}"'})
        decision = self.access.decide(user, scopes)
        for why in decision.refused:
            LOG.info("registry token for %s (%s): refused %s", user.name, client, why)
        token, ttl = self.signer.issue(user.name, decision.granted, self.token_ttl)
        issued = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        LOG.debug("registry token for %s: %s", user.name, describe(decision.granted))
        return {"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued}

    def claims(self, authorization: str) -> Claims | None:
        scheme, _, value = authorization.partition(" ")
        return self.signer.verify(value.strip()) if scheme.lower() == "bearer" else None

    def realm_for(self, host: str) -> str | None:
        host = host.lower()
        if host in self.known_hosts and _HOST.match(host):
            return f"https://{host}{TOKEN_PATH}"
        return None


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # a burst of clients waits in the queue, not in SYN retries

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # Headers and body go out in separate writes: without this the body of every small
        # answer (a token) waits ~40 ms for the client's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The TLS handshake happens in the request's own thread (see _Handler.setup), so a
        # slow or silent client never holds up the accept loop.
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), addr


class _Handler(BaseHTTPRequestHandler):
    owner: RegistryFront
    protocol_version = "HTTP/1.1"
    server_version = "pacific-lab-registry"
    sys_version = ""
    timeout = 120

    def setup(self) -> None:
        self.request.settimeout(30)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.close_connection = True
            raise
        super().setup()
        self.request.settimeout(self.timeout)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ssl.SSLError) as exc:
            LOG.debug("registry connection from %s ended: %s", self.client_address[0], exc)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        LOG.debug("registry %s: %s", self.client_address[0], format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    do_HEAD = do_PUT = do_PATCH = do_POST = do_DELETE = do_GET  # noqa: N815

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            path, _, query = self.path.partition("?")
            if path == TOKEN_PATH:
                self._token(query)
            elif path == "/v2" or path.startswith("/v2/"):
                self._v2(path)
            else:
                raise RegistryError(404, "NOT_FOUND", "not found")
        except RegistryError as err:
            self._send_error(err)
        except errors.ApiError as err:
            self._send_error(RegistryError(err.code if err.code in (403, 409) else 500,
                                           "DENIED", err.message))
        except (OSError, http.client.HTTPException) as exc:
            LOG.warning("registry: %s %s failed: %s", self.command, self.path.split("?")[0],
                        exc)
            self.close_connection = True
            if not getattr(self, "_sent", False):
                self._send_error(RegistryError(503, "UNAVAILABLE",
                                               "the registry is restarting; try again"))

    def _token(self, query: str) -> None:
        if self.command not in ("GET", "POST"):
            raise RegistryError(405, "UNSUPPORTED", "use GET or POST")
        params = parse_qsl(query, keep_blank_values=True)
        authorization = self.headers.get("Authorization", "")
        if self.command == "POST":
            form = parse_qsl(self._read_small(MAX_FORM).decode("utf-8", "replace"))
            fields = dict(form)
            params += [(k, v) for k, v in form if k in ("scope", "service")]
            if fields.get("grant_type") == "password" and fields.get("username"):
                import base64

                raw = f"{fields['username']}:{fields.get('password', '')}".encode()
                authorization = "Basic " + base64.b64encode(raw).decode()
            elif fields.get("grant_type") != "password":
                raise RegistryError(400, "UNSUPPORTED", "only grant_type=password is supported")
        started = time.perf_counter()
        body = self.owner.token(authorization, params, self.client_address[0])
        self._send_json(200, body)
        LOG.debug("registry token issued in %.1f ms", (time.perf_counter() - started) * 1000)

    def _v2(self, path: str) -> None:
        if "%" in path or "//" in path or "/./" in path or "/../" in path or \
                path.endswith(("/.", "/..")):
            raise RegistryError(400, "NAME_INVALID", "invalid repository name or reference")
        if path in ("/v2", "/v2/", "/v2/_catalog"):
            self._forward()
            return
        match = _ROUTE.match(path)
        if not match:
            raise RegistryError(404, "NOT_FOUND", "not found")
        try:
            name = check_repository(match["name"])
            rest = (match["rest"] or "").lstrip("/")
            if match["what"] in ("manifests", "referrers") or \
                    (match["what"] == "blobs" and not rest.startswith("uploads")):
                check_reference(rest)
        except InvalidName as exc:
            raise RegistryError(400, "NAME_INVALID", str(exc)) from exc
        what, command = match["what"], self.command
        if what == "manifests" and command == "PUT":
            self._put_manifest(name)
        elif what == "blobs" and rest.startswith("uploads") and command in ("PATCH", "PUT",
                                                                              "POST"):
            self._upload(name)
        elif what == "manifests" and command == "DELETE":
            status = self._forward()
            if status == 202:
                self.owner.projects.sync(name, drop_empty=True)
        else:
            self._forward()

    # -- checks --------------------------------------------------------------------------

    def _may_push(self, name: str) -> bool:
        claims = self.owner.claims(self.headers.get("Authorization", ""))
        return claims is not None and claims.allows(name, "push")

    def _upload(self, name: str) -> None:
        length = self._length()
        if not self._may_push(name):
            self._forward()
            return
        if self.command == "POST":
            # A push begins: make its Repository now, off the request's path, so that the
            # manifest at its end costs one write to the store, not two.
            self.owner.prepare_soon(name)
        if length == 0 and not self._chunked():
            self._forward()
            return
        room = self.owner.projects.room(project_of(name))
        if length is not None:
            refusal = room.refusal(project_of(name), name, length)
            if refusal:
                LOG.info("registry: refused a %d-byte upload to %s: over quota", length, name)
                self.close_connection = True
                raise RegistryError(403, "DENIED", refusal)
            self._forward()
            return
        cap = None if room.limit is None else max(int(room.limit - room.used), 0)
        self._forward(cap=cap, over=lambda n: room.refusal(project_of(name), name, n))

    def _put_manifest(self, name: str) -> None:
        length = self._length()
        if length is not None and length > MAX_MANIFEST:
            self.close_connection = True
            raise RegistryError(413, "MANIFEST_INVALID",
                                f"manifest too large: {length} bytes, the limit is "
                                f"{MAX_MANIFEST} bytes")
        body = self._read_small(MAX_MANIFEST) if length is not None else \
            self._read_chunked_small(MAX_MANIFEST)
        if self._may_push(name):
            projects = self.owner.projects
            before = projects.storage.describe(name).size
            size = self._size_after(name, body)
            try:
                projects.reserve(name, size)
            except errors.ApiError as err:
                if err.code != 403:
                    raise
                # The quota admission's refusal, in the registry's own words and units.
                refusal = projects.room(project_of(name)).refusal(
                    project_of(name), name, max(size - before, 0))
                LOG.info("registry: refused a manifest for %s: over quota", name)
                raise RegistryError(403, "DENIED", refusal or err.message) from err
        status = self._forward(body=body)
        if status in (200, 201) or self._may_push(name):
            self.owner.sync_soon(name)

    def _size_after(self, name: str, body: bytes) -> int:
        """The repository's size once this manifest is stored: distinct blobs counted once."""
        import hashlib

        storage = self.owner.projects.storage
        sizes = dict(storage.describe(name).blobs)
        sizes["sha256:" + hashlib.sha256(body).hexdigest()] = len(body)
        for digest, declared in references(body):
            if digest not in sizes:
                actual = storage.blob_size(digest)
                sizes[digest] = actual if actual is not None else max(declared, 0)
        return sum(sizes.values())

    # -- plumbing ------------------------------------------------------------------------

    def _length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None if self._chunked() else 0
        if not value.isdigit() or len(value) > 15:
            self.close_connection = True
            raise RegistryError(400, "UNSUPPORTED", "bad Content-Length")
        return int(value)

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _read_small(self, limit: int) -> bytes:
        length = self._length() or 0
        if length > limit:
            self.close_connection = True
            raise RegistryError(413, "SIZE_INVALID", f"body too large: {length} bytes")
        return self.rfile.read(length)

    def _read_chunked_small(self, limit: int) -> bytes:
        out = bytearray()
        for chunk in self._chunks():
            out += chunk
            if len(out) > limit:
                self.close_connection = True
                raise RegistryError(413, "MANIFEST_INVALID",
                                    f"manifest too large: over {limit} bytes")
        return bytes(out)

    def _chunks(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                self.close_connection = True
                raise RegistryError(400, "UNSUPPORTED", "bad chunked encoding") from exc
            if size == 0:
                while self.rfile.readline(MAX_CHUNK_LINE).strip():
                    pass  # trailers
                return
            yield from self._fixed(size)
            self.rfile.readline(MAX_CHUNK_LINE)

    def _body(self, length: int | None, cap: int | None, over: Any) -> Iterator[bytes]:
        seen = 0
        source = self._chunks() if length is None else self._fixed(length)
        for data in source:
            seen += len(data)
            if cap is not None and seen > cap:
                self.close_connection = True
                raise RegistryError(403, "DENIED", over(seen) or "storage quota exceeded")
            yield data

    def _fixed(self, length: int) -> Iterator[bytes]:
        remaining = length
        while remaining:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                raise OSError("client went away")
            remaining -= len(data)
            yield data

    def _upstream_conn(self) -> http.client.HTTPConnection:
        """A new connection to Distribution for each request (a unix socket costs nothing,
        and none is left pointing at a registry that has since restarted). While it
        restarts (garbage collection switches it to read-only and back) its socket is
        briefly gone: wait for it rather than fail."""
        deadline = time.monotonic() + RESTART_WAIT_S
        while True:
            conn = self.owner.connect()
            try:
                conn.connect()
            except (FileNotFoundError, ConnectionRefusedError):
                conn.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
                continue
            return conn

    def _forward(self, body: bytes | None = None, cap: int | None = None,
                 over: Any = None) -> int:
        """Send the request on to Distribution and its answer back; the status."""
        # A list, not a dict: clients send some headers (Accept) more than once.
        headers = [(k, v) for k, v in self.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in FORWARDED]
        headers += [("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-For", self.client_address[0])]
        conn = self._upstream_conn()
        length = self._length() if body is None else len(body)
        if body is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                conn.putheader(k, v)
            if body is None and length is None:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            if body is not None:
                conn.send(body)
            elif length is None:
                for data in self._body(None, cap, over):
                    conn.send(b"%x\r\n%s\r\n" % (len(data), data))
                conn.send(b"0\r\n\r\n")
            elif length:
                for data in self._body(length, cap, over):
                    conn.send(data)
            resp = conn.getresponse()
            self._relay(resp)
        finally:
            conn.close()
        return resp.status

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        self._sent = True
        self.send_response_only(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        for k, v in resp.getheaders():
            if k.lower() in HOP_BY_HOP:
                continue
            if k.lower() == "www-authenticate":
                v = self._rewrite_realm(v)
            self.send_header(k, v)
        chunked = length is None and not no_body
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if no_body:
            resp.read()
            return
        while True:
            data = resp.read(CHUNK)
            if not data:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _rewrite_realm(self, value: str) -> str:
        realm = self.owner.realm_for(self.headers.get("Host", ""))
        if realm is None:
            return value
        return re.sub(r'realm="[^"]*"', f'realm="{realm}"', value, count=1)

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self._sent = True
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: RegistryError) -> None:
        if getattr(self, "_sent", False):
            self.close_connection = True
            return
        self._send_json(err.status, {"errors": [{"code": err.code, "message": err.message,
                                                  "detail": None}]}, err.headers)
