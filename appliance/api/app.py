"""The supervisor's Kubernetes-compatible HTTP API (a WSGI application).

URL layout, content negotiation, authentication and streaming live here;
everything about objects is delegated to :class:`appliance.objects.ObjectService`.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import ClosingIterator

from appliance import audit, errors
from appliance.api import discovery, openapi, openapi_v2
from appliance.api.bodies import parse_body, read_limited
from appliance.auth.throttle import LoginThrottle
from appliance.api.reviews import access_review, rules_review
from appliance.api.table import to_table
from appliance.auth import users
from appliance.auth.users import UserInfo
from appliance.kinds.registry import Kind, Registry
from appliance.objects import ObjectService, Target, WriteOptions
from appliance.store.repo import Key

LOG = logging.getLogger(__name__)

VERSION_INFO = {"major": "1", "minor": "31", "gitVersion": "v1.31.0+pacific.lab",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2026-11-21T00:00:00Z",
                "goVersion": "go1.22.0", "compiler": "gc", "platform": "linux/amd64"}

NON_RESOURCE_PREFIXES = ("/api", "/apis", "/openapi", "/version", "/healthz", "/livez", "/readyz")
KEEPALIVE_SECONDS = 20.0


@dataclass(frozen=True)
class Route:
    target: Target
    collection: bool


def _json(body: Any, code: int = 200, headers: dict[str, str] | None = None,
          content_type: str = "application/json") -> Response:
    resp = Response(json.dumps(body, separators=(",", ":")), status=code,
                    content_type=content_type)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _error(err: errors.ApiError) -> Response:
    return _json(err.to_status(), err.code, err.headers)


#: Watches open at once, at most: each holds one of the server's worker threads (the
#: service runs more: ``appliance.service.API_THREADS``), so requests always find one.
MAX_WATCHES = 256
#: A Warning header's text at most (kube-apiserver truncates long warnings too).
WARNING_CHARS = 1024


def _warning_headers(resp: Response, warnings: Iterable[str]) -> Response:
    for w in warnings:
        resp.headers.add("Warning", f'299 - "{_header_text(w)}"')
    return resp


def _header_text(text: str) -> str:
    """``text`` fit for an HTTP header: printable ASCII, anything else escaped (a field name
    from a request body may hold any character), no double quotes, bounded."""
    text = text[:WARNING_CHARS].replace('"', "'")
    return "".join(c if " " <= c <= "~" else c.encode("unicode_escape", "backslashreplace")
                   .decode("ascii") for c in text)


#: Reads a subresource of an object: (object, query arguments, follow limit) -> chunks.
LogStream = Callable[[dict[str, Any], Mapping[str, str], float], Iterator[bytes]]


class ApiApp:
    def __init__(self, service: ObjectService, registry: Registry, *, token_ttl: int,
                 max_body: int, server_address: str = "localhost:6443",
                 watch_timeout: float = 1800.0, ready: Callable[[], bool] | None = None,
                 ca_pem: bytes = b"",
                 logs: dict[tuple[str, str, str], Callable[[dict[str, Any]], Any]] | None = None,
                 streams: dict[tuple[str, str, str], LogStream] | None = None,
                 registry_info: Callable[[], dict[str, str]] | None = None,
                 logins: LoginThrottle | None = None,
                 audit_log: audit.AuditLog | None = None,
                 max_watches: int = MAX_WATCHES) -> None:
        self.ca_pem = ca_pem
        # Password guesses per (user, source), shared with the dashboard's login form.
        self.logins = logins or LoginThrottle()
        self.audit_log = audit_log
        self.max_watches = max_watches
        # Where the lab registry is (`lab registry url`), for any signed-in user.
        self.registry_info = registry_info
        # (group, plural, subresource) -> the log file of an object, e.g. a VM's console.
        self.logs = logs or {}
        # (group, plural, subresource) -> a reader given the object, the query and the
        # follow time limit, e.g. a pod's container logs.
        self.streams = streams or {}
        self.service = service
        self.store = service.store
        self.registry = registry
        self.token_ttl = token_ttl
        self.max_body = max_body
        self.server_address = server_address
        self.watch_timeout = watch_timeout
        self.ready = ready or (lambda: True)
        self._open_watches = 0
        self._lock = threading.Lock()

    # -- WSGI ----------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        started = time.monotonic()
        record = environ["pacific.audit"] = audit.Request(
            request.full_path.rstrip("?"), request.method, request.remote_addr or "",
            request.headers.get("User-Agent", ""))
        try:
            response = self.dispatch(request)
        except errors.ApiError as err:
            response = _error(err)
        except HTTPException as exc:
            response = _error(errors.ApiError(exc.code or 500, exc.name.replace(" ", ""),
                                              exc.description or exc.name))
        except Exception as exc:
            if errors.disk_full(exc):  # refused whole: the store's transaction rolled back
                LOG.error("refused %s %s: the state disk is full (%s)", request.method,
                          request.path, exc)
                response = _error(errors.insufficient_storage())
            else:
                LOG.exception("internal error on %s %s", request.method, request.path)
                response = _error(errors.internal(type(exc).__name__))
        if not response.is_streamed:
            LOG.debug("%s %s -> %d (%.1f ms)", request.method, request.full_path,
                      response.status_code, (time.monotonic() - started) * 1000)
            self._audit(request, record, response.status_code)
            return response(environ, start_response)

        def start_and_flush(status: str, headers: list[tuple[str, str]],
                            exc_info: Any = None) -> Any:
            # A stream (watch, log follow) answers with its status and headers at
            # once, as kube-apiserver does, not with its first event: writing an
            # empty body through WSGI's write() sends them.
            write = start_response(status, headers, exc_info)
            write(b"")
            return write
        # A stream's Event is written when it ends (the server closes its iterator).
        return ClosingIterator(response(environ, start_and_flush), [
            lambda: self._audit(request, record, response.status_code)])

    def _audit(self, request: Request, record: audit.Request, code: int) -> None:
        if self.audit_log is not None and request.path not in audit.UNAUDITED_PATHS:
            self.audit_log.write(record.event(code))

    def authenticate(self, request: Request) -> UserInfo:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer "):
            raise errors.unauthorized()
        token = header[7:].strip()
        with self.store.read() as txn:
            user = users.resolve_token(txn.connection, token)
        if user is None:
            raise errors.unauthorized()
        return user

    def dispatch(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            ok = self.ready()
            return Response("ok" if ok else "not ready", status=200 if ok else 503,
                            content_type="text/plain")
        if path == "/version":
            return _json(VERSION_INFO)
        if path == "/login":
            return self.login(request)
        if path == "/ca.crt" and self.ca_pem:
            return Response(self.ca_pem, content_type="application/x-pem-file")
        user = self.authenticate(request)
        record: audit.Request = request.environ["pacific.audit"]
        record.user, record.groups = user.name, tuple(user.groups)
        if path == "/logout" and request.method == "POST":
            with self.store.write() as txn:
                users.revoke_token(txn.session, request.headers["Authorization"][7:].strip())
            return _json({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        if path == "/registry" and self.registry_info is not None:
            return _json({**self.registry_info(), "user": user.name})
        parts = [p for p in path.split("/") if p]
        if not parts:
            return _json({"paths": ["/api", "/apis", "/healthz", "/login", "/openapi/v2",
                                    "/openapi/v3", "/version"]})
        if parts[0] == "openapi":
            return self.openapi(parts[1:])
        if parts[0] == "api":
            if len(parts) == 1:
                return self.discovery_root(request, core=True)
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return self.discovery_root(request, core=False)
            if len(parts) == 2:
                if parts[1] not in self.registry.groups():
                    raise errors.ApiError(404, "NotFound", "the server could not find the "
                                                           "requested resource")
                return _json(discovery.api_group(self.registry, parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested "
                                                   "resource")
        if not self.registry.kinds_in(group, version):
            raise errors.ApiError(404, "NotFound",
                                  "the server could not find the requested resource")
        if not rest:
            return _json(discovery.resource_list(self.registry, group, version))
        route = self.route(group, version, rest)
        t = route.target
        record.verb = audit.api_verb(request.method, route.collection,
                                     request.args.get("watch") in ("true", "1"))
        record.resource, record.api_group, record.api_version = t.plural, t.group, version
        record.namespace, record.name, record.subresource = t.namespace, t.name, t.subresource
        return self.handle(request, user, route)

    # -- routing -----------------------------------------------------------------------------

    def route(self, group: str, version: str, rest: list[str]) -> Route:
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and \
                self.registry.by_plural(group, version, rest[2]) is not None and \
                self.registry.by_plural(group, version, rest[2]).namespaced:  # type: ignore[union-attr]
            namespace, rest = rest[1], rest[2:]
        kind = self.registry.by_plural(group, version, rest[0])
        if kind is None or len(rest) > 3:
            raise errors.ApiError(404, "NotFound",
                                  "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if sub and sub not in (("status",) if kind.has_status else ()) + kind.extra_subresources:
            raise errors.ApiError(404, "NotFound",
                                  "the server could not find the requested resource")
        if not kind.namespaced and namespace:
            raise errors.ApiError(404, "NotFound",
                                  "the server could not find the requested resource")
        return Route(Target(kind, version, namespace, name, sub), collection=not name)

    def handle(self, request: Request, user: UserInfo, route: Route) -> Response:
        t, method, args = route.target, request.method, request.args
        if not t.kind.storable:
            if method != "POST" or not route.collection:
                raise errors.method_not_allowed(f"{method} is not supported on {t.plural}")
            body = self.read_body(request)
            if t.plural == "selfsubjectaccessreviews":
                return _json(access_review(self.service, user, body), 201)
            return _json(rules_review(self.service, user, body), 201)
        if (t.group, t.plural, t.subresource) in self.logs:
            return self.log(request, user, t)
        if (t.group, t.plural, t.subresource) in self.streams:
            return self.stream(request, user, t)
        if route.collection:
            if method == "GET":
                if args.get("watch") in ("true", "1"):
                    return self.watch(request, user, t)
                return self.list(request, user, t)
            if method == "POST":
                if t.kind.namespaced and not t.namespace:
                    raise errors.method_not_allowed("POST needs a namespace in the URL")
                body = self.read_body(request)
                result = self.service.create(user, t, body, self.write_options(request))
                return _warning_headers(_json(result.obj, 201), result.warnings)
            if method == "DELETE":
                return self.delete_collection(request, user, t)
            raise errors.method_not_allowed(f"{method} is not supported on a collection")
        if method == "GET":
            obj = self.service.get(user, t)
            if self.wants_table(request):
                return _json(to_table(t.kind, t.version, [obj], list_rv=obj["metadata"].get(
                    "resourceVersion", ""), include_object=args.get("includeObject", "Metadata"),
                                      table_version=self.table_version(request)))
            return _json(obj)
        if method == "PUT":
            result = self.service.update(user, t, self.read_body(request),
                                         self.write_options(request))
            return _warning_headers(_json(result.obj, 200), result.warnings)
        if method == "PATCH":
            ctype = (request.content_type or "").split(";")[0].strip()
            if ctype not in ("application/merge-patch+json", "application/json-patch+json",
                             "application/apply-patch+yaml",
                             "application/strategic-merge-patch+json"):
                raise errors.unsupported_media_type(ctype)
            if ctype == "application/strategic-merge-patch+json" and not t.kind.builtin:
                raise errors.unsupported_media_type(ctype)
            body = self.read_body(request)
            opts = self.write_options(request, force=args.get("force") in ("true", "1"))
            result = self.service.patch(user, t, ctype, body, opts)
            return _warning_headers(_json(result.obj, 201 if result.created else 200),
                                    result.warnings)
        if method == "DELETE":
            raw = read_limited(request.stream, request.content_length, self.max_body)
            options = self.decode_body(raw, request.content_type or "application/json") \
                if raw.strip() else {}
            if not isinstance(options, dict):
                raise errors.bad_request("DeleteOptions must be an object")
            dry = "All" in request.args.getlist("dryRun") or "All" in (options.get("dryRun") or [])
            obj = self.service.delete(user, t, options, WriteOptions(dry_run=dry))
            return _json(obj, 200)
        raise errors.method_not_allowed(f"{method} is not supported")

    # -- verbs ---------------------------------------------------------------------------------

    def list(self, request: Request, user: UserInfo, t: Target) -> Response:
        args = request.args
        try:
            limit = int(args.get("limit") or 0)
        except ValueError as exc:
            raise errors.bad_request("limit must be an integer") from exc
        result = self.service.list(user, t, args.get("labelSelector", ""),
                                   args.get("fieldSelector", ""), max(limit, 0),
                                   args.get("continue", ""))
        if self.wants_table(request):
            return _json(to_table(t.kind, t.version, result.items,
                                  list_rv=result.resource_version,
                                  continue_token=result.continue_token,
                                  include_object=args.get("includeObject", "Metadata"),
                                  table_version=self.table_version(request)))
        meta: dict[str, Any] = {"resourceVersion": result.resource_version}
        if result.continue_token:
            meta["continue"] = result.continue_token
        return _json({"apiVersion": t.kind.api_version(t.version), "kind": f"{t.kind.kind}List",
                      "metadata": meta, "items": result.items})

    def watch(self, request: Request, user: UserInfo, t: Target) -> Response:
        args = request.args
        timeout = self.watch_timeout * (1 + random.random())
        if args.get("timeoutSeconds"):
            try:
                timeout = min(float(args["timeoutSeconds"]), timeout)
            except ValueError as exc:
                raise errors.bad_request("timeoutSeconds must be a number") from exc
        table = self.wants_table(request)
        table_version = self.table_version(request)
        include = args.get("includeObject", "Metadata")
        bookmarks = args.get("allowWatchBookmarks") in ("true", "1")
        # While a watch is idle we write something now and then, or a client that
        # went away would hold a server thread until the watch times out. Go
        # clients (kubectl, client-go) skip whitespace between events; others
        # (the Python client yields None for a blank line) only get bookmarks,
        # and only when they asked for them.
        agent = request.headers.get("User-Agent", "")
        whitespace_ok = agent.startswith("kubectl") or "Go-http-client" in agent or \
            "kubernetes/" in agent
        # The slot is taken here, under the lock, not when the stream starts: requests
        # that arrive together would all pass a check made before any of them counted.
        slot = self._take_watch_slot()
        try:
            events = self.service.watch(user, t, args.get("resourceVersion", ""),
                                        args.get("labelSelector", ""),
                                        args.get("fieldSelector", ""),
                                        timeout=timeout, heartbeat=KEEPALIVE_SECONDS)
        except BaseException:
            slot.release()
            raise

        def stream() -> Iterator[bytes]:
            first = True
            try:
                for ev in events:
                    if ev is None:  # idle: write something to notice a closed connection
                        if bookmarks:
                            yield self._bookmark(t)
                        elif whitespace_ok:
                            yield b"\n"
                        continue
                    obj = ev.obj
                    if table and ev.type != "ERROR":
                        obj = to_table(t.kind, t.version, [obj], include_object=include,
                                       with_headers=first, table_version=table_version)
                        first = False
                    yield (json.dumps({"type": ev.type, "object": obj},
                                      separators=(",", ":")) + "\n").encode()
            finally:
                finish()

        def finish() -> None:
            slot.release()
            close = getattr(events, "close", None)
            if close:
                close()

        # finish() runs when the server closes the body, also when the stream never
        # started (the client went away before the first byte): closing a generator
        # that never started does not run its ``finally``.
        resp = Response(ClosingIterator(stream(), finish), status=200,
                        content_type="application/json", direct_passthrough=True)
        resp.headers["Cache-Control"] = "no-cache, private"
        return resp

    def log(self, request: Request, user: UserInfo, t: Target) -> Response:
        """A text log subresource (a VM's serial console): tailLines, follow."""
        if request.method != "GET":
            raise errors.method_not_allowed(f"{t.subresource} is read-only")
        obj = self.service.get(user, t)  # authorises get on the subresource
        path = self.logs[(t.group, t.plural, t.subresource)](obj)
        chunks = file_log(path, request.args, self.watch_timeout,
                          f"{t.kind.kind} {t.name!r} has no {t.subresource} log yet")
        return Response(chunks, status=200, content_type="text/plain; charset=utf-8",
                        direct_passthrough=True)

    def stream(self, request: Request, user: UserInfo, t: Target) -> Response:
        """A subresource read by a reader of its own (``kubectl logs`` of a pod)."""
        if request.method != "GET":
            raise errors.method_not_allowed(f"{t.subresource} is read-only")
        obj = self.service.get(user, t)  # authorises get on the subresource
        chunks = self.streams[(t.group, t.plural, t.subresource)](
            obj, request.args, self.watch_timeout)
        return Response(chunks, status=200, content_type="text/plain",
                        direct_passthrough=True)

    def _bookmark(self, t: Target) -> bytes:
        with self.store.read() as txn:
            rv = str(txn.revision())
        obj = {"apiVersion": t.kind.api_version(t.version), "kind": t.kind.kind,
               "metadata": {"resourceVersion": rv}}
        return (json.dumps({"type": "BOOKMARK", "object": obj}) + "\n").encode()

    def delete_collection(self, request: Request, user: UserInfo, t: Target) -> Response:
        # Its own verb, decided first (as kube-apiserver does): list and delete of each
        # item alone would let anyone who may list "delete" an empty collection.
        with self.store.read() as txn:
            self.service.authorize(txn, user, "deletecollection", t)
        result = self.service.list(user, t, request.args.get("labelSelector", ""),
                                   request.args.get("fieldSelector", ""))
        dry = "All" in request.args.getlist("dryRun")
        gone = []
        for obj in result.items:
            named = Target(t.kind, t.version, obj["metadata"].get("namespace", t.namespace),
                           obj["metadata"]["name"])
            try:
                gone.append(self.service.delete(user, named, {}, WriteOptions(dry_run=dry)))
            except errors.ApiError as err:
                if err.code != 404:
                    raise
        return _json({"apiVersion": t.kind.api_version(t.version), "kind": f"{t.kind.kind}List",
                      "metadata": {"resourceVersion": result.resource_version}, "items": gone})

    # -- login ---------------------------------------------------------------------------------

    def login(self, request: Request) -> Response:
        if request.method != "POST":
            raise errors.method_not_allowed("use POST /login with HTTP basic authentication")
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("basic "):
            raise errors.unauthorized("basic authentication required")
        try:
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.unauthorized("malformed basic authentication header") from exc
        request.environ["pacific.audit"].user = name[:64]
        source = request.remote_addr or ""
        wait = self.logins.retry_after(name, source)
        if wait is not None:
            raise errors.too_many_requests(
                f"too many failed logins for {name[:64]!r} from {source}; try again in {wait} s",
                wait)
        with self.store.write() as txn:
            user = users.authenticate(txn.session, name, password)
            if user is None:
                LOG.info("failed login for %r from %s", name[:64], source)
                self.logins.failed(name, source)
                raise errors.unauthorized("invalid user name or password")
            token, expires = users.issue_token(txn.session, user.name, self.token_ttl)
        self.logins.succeeded(name, source)
        namespaces = self.visible_namespaces(user)
        LOG.info("user %s logged in from %s", user.name, request.remote_addr)
        return _json({"kind": "LoginResponse", "apiVersion": "pacific.lab/v1", "user": user.name,
                      "groups": list(user.groups), "token": token,
                      "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "namespaces": namespaces})

    def visible_namespaces(self, user: UserInfo) -> list[str]:
        from appliance.auth.rbac import Attributes

        with self.store.read() as txn:
            names = [ns["metadata"]["name"] for ns in txn.iterate("", "namespaces")]
            return [n for n in names if self.service.can(
                txn, Attributes(user, "get", "", "namespaces", "", n, n))]

    # -- discovery and OpenAPI -----------------------------------------------------------------

    def discovery_root(self, request: Request, core: bool) -> Response:
        version = discovery.aggregated_version(request.headers.get("Accept", ""))
        if version is not None:
            ctype = discovery.AGGREGATED_V2 if version == "v2" else discovery.AGGREGATED_V2BETA1
            resp = _json(discovery.aggregated(self.registry, core, version), content_type=ctype)
            resp.headers["Vary"] = "Accept"
            return resp
        if core:
            return _json(discovery.api_versions(self.server_address))
        return _json(discovery.api_group_list(self.registry))

    def openapi(self, parts: list[str]) -> Response:
        if parts == ["v2"]:
            return Response(openapi_v2.document(self.registry), status=200,
                            content_type=openapi.PROTOBUF_V2)
        if parts == ["v3"]:
            return _json(openapi.index(self.registry))
        if len(parts) >= 3 and parts[0] == "v3":
            if parts[1] == "api" and len(parts) == 3:
                group, version = "", parts[2]
            elif parts[1] == "apis" and len(parts) == 4:
                group, version = parts[2], parts[3]
            else:
                group = version = ""
            if version and self.registry.kinds_in(group, version):
                return _json(openapi.gv_document(self.registry, group, version))
        raise errors.ApiError(404, "NotFound", "the server could not find the requested resource")

    # -- request helpers ----------------------------------------------------------------------

    def read_body(self, request: Request) -> Any:
        raw = read_limited(request.stream, request.content_length, self.max_body)
        ctype = request.content_type or "application/json"
        return self.decode_body(raw, ctype)

    @staticmethod
    def decode_body(raw: bytes, ctype: str) -> Any:
        from appliance.api import protobuf

        if protobuf.is_protobuf(ctype):
            # kubectl >= 1.32 sends built-in kinds as protobuf; we answer in JSON.
            try:
                return protobuf.decode(raw)
            except protobuf.UnsupportedKindError as exc:
                raise errors.ApiError(415, "UnsupportedMediaType", str(exc)) from exc
            except protobuf.ProtobufError as exc:
                raise errors.bad_request(f"cannot decode the protobuf body: {exc}") from exc
        return parse_body(raw, ctype)

    def write_options(self, request: Request, force: bool = False) -> WriteOptions:
        args = request.args
        validation = args.get("fieldValidation") or "Warn"
        if validation not in ("Strict", "Warn", "Ignore"):
            raise errors.bad_request(f"fieldValidation must be Strict, Warn or Ignore, not "
                                     f"{validation!r}")
        dry = args.getlist("dryRun")
        if any(d != "All" for d in dry):
            raise errors.bad_request("dryRun must be All")
        return WriteOptions(dry_run=bool(dry), field_validation=validation,
                            field_manager=args.get("fieldManager", ""), force=force)

    @staticmethod
    def wants_table(request: Request) -> bool:
        accept = request.headers.get("Accept", "")
        first = accept.split(",")[0]
        return "as=Table" in first and "g=meta.k8s.io" in first

    @staticmethod
    def table_version(request: Request) -> str:
        first = request.headers.get("Accept", "").split(",")[0]
        return "v1beta1" if "v=v1beta1" in first else "v1"

    def lookup(self, key: Key) -> Any:
        with self.store.read() as txn:
            return txn.get(key)

    @property
    def open_watches(self) -> int:
        return self._open_watches

    def _take_watch_slot(self) -> _Slot:
        """One of ``max_watches`` slots, or 429 with ``Retry-After`` when all are taken."""
        with self._lock:
            if self._open_watches >= self.max_watches:
                raise errors.too_many_requests(
                    f"too many watches are open on this server ({self.max_watches}); "
                    "try again shortly", 1)
            self._open_watches += 1
        return _Slot(self)

    def _give_back_watch_slot(self) -> None:
        with self._lock:
            self._open_watches -= 1


class _Slot:
    """A watch's place under the cap, given back exactly once."""

    def __init__(self, app: ApiApp) -> None:
        self._app: ApiApp | None = app
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            app, self._app = self._app, None
        if app is not None:
            app._give_back_watch_slot()


def file_log(path: Path | None, args: Mapping[str, str], timeout: float, missing: str
             ) -> Iterator[bytes]:
    """A text log file as a log subresource serves it: the last ``tailLines`` lines (all
    when 0), then new ones while ``follow``. ``missing``: the error of a follow before the
    file exists (without follow, a missing file is an empty log)."""
    try:
        tail = int(args.get("tailLines") or 0)
    except ValueError as exc:
        raise errors.bad_request("tailLines must be an integer") from exc
    follow = args.get("follow") in ("true", "1")
    if path is None or not path.exists():
        if follow:
            raise errors.bad_request(missing)
        return iter(())
    return _tail(path, tail, follow, timeout)


def _tail(path: Any, lines: int, follow: bool, timeout: float) -> Iterator[bytes]:
    """The last ``lines`` lines of a file (all when 0), then new ones while ``follow``."""
    import os

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read()
        if lines:
            data = b"".join(data.splitlines(keepends=True)[-lines:])
        yield data
        # A client that went away is noticed at the next write; an idle follow ends
        # when the watch timeout does.
        deadline = time.monotonic() + timeout
        while follow and time.monotonic() < deadline:
            chunk = fh.read(65536)
            if chunk:
                yield chunk
            else:
                time.sleep(0.5)


def kind_of(registry: Registry, group: str, plural: str) -> Kind | None:
    return registry.by_group_plural(group, plural)
