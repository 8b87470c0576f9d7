"""The object service: every read and write of an API object goes through here.

The HTTPS API, the dashboard and the in-process controllers all call this
one service, so they share one admission chain:

    authorise (RBAC) -> decode and convert to the storage version
    -> prune unknown fields (fieldValidation) -> defaults -> schema validation
    -> name rules -> the kind's own validation -> immutable fields
    -> namespace exists and is not terminating -> quota -> store

Errors are :class:`appliance.errors.ApiError` (Kubernetes ``Status``), and a
refused request leaves nothing behind: each request is one transaction.
"""

from __future__ import annotations

import copy
import logging
import uuid
from datetime import datetime, timedelta, UTC
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance import errors
from appliance.admission import quota
from appliance.auth.rbac import RBAC, Attributes, Authorizer
from appliance.auth.users import MASTERS, UserInfo
from appliance.errors import Cause
from appliance.kinds.registry import ADMISSION_WARNING, AdmissionContext, Kind, Obj, Registry
from appliance.kinds.schema import apply_defaults, prune_unknown, validate
from appliance.kinds.smp import StrategicPatchError, strategic_merge
from appliance.store.repo import Key, ReadTxn, Store, WriteTxn
from appliance.util.labels import (
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from appliance.util.names import dns1123_label, dns1123_subdomain
from appliance.util.patch import PatchError, json_patch, merge_patch
from appliance.util.timefmt import now_rfc3339, rfc3339

LOG = logging.getLogger(__name__)

WATCH_BATCH = 1000  # watch-log events a watch reads at once

SYSTEM = UserInfo("system:apiserver", (MASTERS,))

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"

SERVER_METADATA = ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp",
                   "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields")


@dataclass(frozen=True)
class Target:
    """What a request is about: a kind in a version, and where."""

    kind: Kind
    version: str
    namespace: str = ""  # "" for cluster-scoped kinds, or all namespaces on a list
    name: str = ""
    subresource: str = ""

    @property
    def group(self) -> str:
        return self.kind.group

    @property
    def plural(self) -> str:
        return self.kind.plural

    def key(self, name: str | None = None) -> Key:
        return Key(self.kind.group, self.kind.plural,
                   self.namespace if self.kind.namespaced else "", name or self.name)


@dataclass(frozen=True)
class WriteOptions:
    dry_run: bool = False
    field_validation: str = "Warn"  # Strict | Warn | Ignore
    field_manager: str = ""
    force: bool = False


@dataclass
class Result:
    obj: Obj
    created: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ListResult:
    items: list[Obj]
    resource_version: str
    continue_token: str = ""
    remaining: int | None = None


@dataclass(frozen=True)
class WatchEvent:
    type: str
    obj: Obj


class ObjectService:
    def __init__(self, store: Store, registry: Registry, authorizer: Authorizer | None = None,
                 max_depth: int = 64) -> None:
        self.store = store
        self.registry = registry
        self.authorizer = authorizer or Authorizer()
        self.max_depth = max_depth

    # -- authorisation ---------------------------------------------------------------

    def can(self, txn: ReadTxn, attrs: Attributes) -> bool:
        if MASTERS in attrs.user.groups:
            return True
        return self.authorizer.allowed(txn, attrs)

    def authorize(self, txn: ReadTxn, user: UserInfo, verb: str, t: Target,
                  name: str = "") -> None:
        attrs = Attributes(user, verb, t.group, t.plural, t.subresource,
                           t.namespace if t.kind.namespaced else "", name or t.name)
        if not self.can(txn, attrs):
            who = f'{t.kind.qualified_plural} "{attrs.name}"' if attrs.name else \
                t.kind.qualified_plural
            raise errors.forbidden(f"{who} is forbidden: {attrs.describe()}", t.plural, t.group,
                                   attrs.name)

    # -- reads -----------------------------------------------------------------------------

    def get(self, user: UserInfo, t: Target) -> Obj:
        with self.store.read() as txn:
            self.authorize(txn, user, "get", t)
            stored = txn.get(t.key())
        if stored is None:
            raise errors.not_found(t.plural, t.group, t.name)
        return t.kind.convert_from_storage(stored, t.version)

    def list(self, user: UserInfo, t: Target, label_selector: str = "", field_selector: str = "",
             limit: int = 0, continue_token: str = "") -> ListResult:
        match = self._matcher(t, label_selector, field_selector)
        start = _decode_continue(continue_token) if continue_token else None
        with self.store.read() as txn:
            self.authorize(txn, user, "list", t)
            rv = txn.revision()
            if start is not None and start[0] < txn.compacted():
                raise errors.gone("The provided continue parameter is too old to display a "
                                  "consistent list result. You can start a new list without "
                                  "the continue parameter.")
            items: list[Obj] = []
            token = ""
            ns = t.namespace if t.kind.namespaced and t.namespace else None
            after = (start[1], start[2]) if start else None
            for stored in txn.iterate(t.group, t.plural, ns, after=after):
                if not match(stored):
                    continue
                if limit and len(items) == limit:
                    last = items[-1]["metadata"]
                    token = _encode_continue(rv, last.get("namespace", ""), last["name"])
                    break
                items.append(t.kind.convert_from_storage(stored, t.version))
        return ListResult(items, str(rv), token)

    def _matcher(self, t: Target, label_selector: str, field_selector: str):  # type: ignore[no-untyped-def]
        try:
            labels: LabelSelector | None = parse_label_selector(label_selector) \
                if label_selector else None
            fields = parse_field_selector(field_selector) if field_selector else None
        except SelectorError as exc:
            raise errors.bad_request(f"unable to parse requirement: {exc}") from exc
        allowed = ("metadata.name", "metadata.namespace", *t.kind.field_selectors)
        if fields is not None:
            for req in fields.requirements:
                if req[0] not in allowed:
                    raise errors.bad_request(
                        f'"{req[0]}" is not a known field selector: only '
                        + ", ".join(f'"{a}"' for a in allowed))

        def match(stored: Obj) -> bool:
            meta = stored.get("metadata") or {}
            if labels is not None and not labels.matches(meta.get("labels") or {}):
                return False
            if fields is not None:
                def value(path: str) -> str | None:
                    found = _dig(stored, path)
                    if isinstance(found, dict):  # e.g. Event "source": its component
                        found = found.get("component")
                    return None if found is None else str(found)
                return fields.matches(value)
            return True
        return match

    def watch(self, user: UserInfo, t: Target, resource_version: str = "",
              label_selector: str = "", field_selector: str = "",
              timeout: float = 1800.0,
              heartbeat: float = 15.0) -> Iterator[WatchEvent | None]:
        """Events after ``resource_version``; "" or "0" first replays the current state.

        While nothing happens it yields ``None`` every ``heartbeat`` seconds, so
        the caller can write something and notice a client that went away."""
        import time

        match = self._matcher(t, label_selector, field_selector)
        ns = t.namespace if t.kind.namespaced and t.namespace else None
        with self.store.read() as txn:
            self.authorize(txn, user, "watch", t)
            if resource_version in ("", "0"):
                start = txn.revision()
                initial = [s for s in txn.iterate(t.group, t.plural, ns) if match(s)]
            else:
                try:
                    start = int(resource_version)
                except ValueError as exc:
                    raise errors.bad_request(
                        f"invalid resource version {resource_version!r}") from exc
                initial = []
                compacted = txn.compacted()
                if start < compacted:
                    raise errors.gone(f"too old resource version: {start} ({compacted})")
        return self._watch_stream(t, start, initial, match, ns, timeout, heartbeat,
                                  time.monotonic)

    def _watch_stream(self, t: Target, start: int, initial: list[Obj], match, ns: str | None,  # type: ignore[no-untyped-def]
                      timeout: float, heartbeat: float,
                      clock) -> Iterator[WatchEvent | None]:
        for stored in initial:
            yield WatchEvent("ADDED", t.kind.convert_from_storage(stored, t.version))
        deadline = clock() + timeout
        last = start
        quiet_since = clock()
        changed = True  # whether the store may hold events after ``last``: read them
        while clock() < deadline:
            if clock() - quiet_since >= heartbeat:
                quiet_since = clock()
                yield None
            if changed:
                with self.store.read() as txn:  # one snapshot: nothing is newer than newest
                    newest, compacted = txn.counters()
                    if last < compacted:
                        yield WatchEvent("ERROR", errors.gone(
                            f"too old resource version: {last} ({compacted})").to_status())
                        return
                    events = txn.events_after(last, t.group, t.plural, limit=WATCH_BATCH)
                for ev in events:
                    last = ev.rv
                    if ns is not None and ev.key.namespace != ns:
                        continue
                    if match(ev.body):
                        quiet_since = clock()
                        yield WatchEvent(ev.type, t.kind.convert_from_storage(ev.body, t.version))
                if len(events) == WATCH_BATCH:
                    continue  # there may be more than one read returns
                last = max(last, newest)  # every event of the snapshot was read
            # Until something newer than ``last`` may hold this kind's events (the store
            # knows this process's commits, and polls for other processes'), or the next
            # heartbeat is due. A heartbeat reads nothing from the database.
            due = min(quiet_since + heartbeat, deadline)
            changed = self.store.wait_for_change(last, max(0.0, due - clock()),
                                                 kind=(t.group, t.plural))

    # -- writes ------------------------------------------------------------------------------

    def create(self, user: UserInfo, t: Target, body: Any, opts: WriteOptions = WriteOptions()
               ) -> Result:
        kind = t.kind
        obj = self._decode(t, body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        if not name:
            raise errors.invalid(kind.kind, kind.group, "", [Cause(
                "metadata.name", "Required value: name or generateName is required",
                "FieldValueRequired")])
        if t.subresource:
            raise errors.method_not_allowed(f"create is not supported on {t.subresource}")
        warnings: list[str] = []
        obj = self._admit_shape(t, obj, opts, warnings)
        for field_name in SERVER_METADATA:
            meta = obj["metadata"]
            meta.pop(field_name, None)
        if kind.has_status:
            obj.pop("status", None)
        if kind.prepare_create is not None:
            kind.prepare_create(obj)
        if kind.default_finalizers:
            fins = obj["metadata"].setdefault("finalizers", [])
            for fin in kind.default_finalizers:
                if fin not in fins:
                    fins.append(fin)
        if not kind.storable:
            raise errors.method_not_allowed(f"{kind.plural} are answered, not stored")
        if kind.namespaced:  # validation hooks see where the object will live
            obj["metadata"]["namespace"] = t.namespace
        with self.store.write(dry_run=opts.dry_run) as txn:
            self.authorize(txn, user, "create", t, name)
            self._check_namespace(txn, t)
            warnings += self._validate(txn, user, t, obj, None, "CREATE")
            if txn.get(t.key(name)) is not None:
                raise errors.already_exists(t.plural, t.group, name)
            quota.check(txn, self.registry, kind, t.namespace, name, obj, None)
            meta = obj["metadata"]
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            if kind.namespaced:
                meta["namespace"] = t.namespace
            else:
                meta.pop("namespace", None)
            stored = txn.create(t.key(name), obj)
            self._after_write(txn, t)
        return Result(kind.convert_from_storage(stored, t.version), True, warnings)

    def update(self, user: UserInfo, t: Target, body: Any, opts: WriteOptions = WriteOptions()
               ) -> Result:
        obj = self._decode(t, body)
        name = (obj.get("metadata") or {}).get("name") or ""
        if name != t.name:
            raise errors.bad_request(f"the name of the object ({name}) does not match the "
                                     f"name on the URL ({t.name})")
        warnings: list[str] = []
        obj = self._admit_shape(t, obj, opts, warnings)
        with self.store.write(dry_run=opts.dry_run) as txn:
            self.authorize(txn, user, "update", t)
            current = txn.get(t.key())
            if current is None:
                raise errors.not_found(t.plural, t.group, t.name)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise errors.conflict(t.plural, t.group, t.name)
            stored = self._store_update(txn, user, t, current, obj, warnings)
            if opts.dry_run:
                stored["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return Result(t.kind.convert_from_storage(stored, t.version), False, warnings)

    def patch(self, user: UserInfo, t: Target, content_type: str, patch_body: Any,
              opts: WriteOptions = WriteOptions()) -> Result:
        kind = t.kind
        if content_type == STRATEGIC_PATCH and not kind.builtin:
            raise errors.unsupported_media_type(content_type)
        if content_type not in (MERGE_PATCH, JSON_PATCH, APPLY_PATCH, STRATEGIC_PATCH):
            raise errors.unsupported_media_type(content_type)
        _check_depth(patch_body, self.max_depth)
        warnings: list[str] = []
        with self.store.write(dry_run=opts.dry_run) as txn:
            self.authorize(txn, user, "patch", t)
            current = txn.get(t.key())
            if current is None:
                if content_type != APPLY_PATCH:
                    raise errors.not_found(t.plural, t.group, t.name)
                # Server-side apply creates what is missing.
                self.authorize(txn, user, "create", t)
                applied = self._decode(t, patch_body)
                applied.setdefault("metadata", {}).setdefault("name", t.name)
                if applied["metadata"]["name"] != t.name:
                    raise errors.bad_request("the name in the body does not match the URL")
                applied = self._admit_shape(t, applied, opts, warnings)
                for field_name in SERVER_METADATA:
                    applied["metadata"].pop(field_name, None)
                if kind.has_status:
                    applied.pop("status", None)
                if kind.prepare_create is not None:
                    kind.prepare_create(applied)
                if kind.namespaced:
                    applied["metadata"]["namespace"] = t.namespace
                self._check_namespace(txn, t)
                warnings += self._validate(txn, user, t, applied, None, "CREATE")
                quota.check(txn, self.registry, kind, t.namespace, t.name, applied, None)
                meta = applied["metadata"]
                meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
                if kind.namespaced:
                    meta["namespace"] = t.namespace
                stored = txn.create(t.key(), applied)
                self._after_write(txn, t)
                return Result(kind.convert_from_storage(stored, t.version), True, warnings)
            live = kind.convert_from_storage(current, t.version)
            patched = self._apply_patch(t, live, content_type, patch_body)
            patched = self._admit_shape(t, patched, opts, warnings)
            rv = (patched.get("metadata") or {}).get("resourceVersion")
            if rv and rv != current["metadata"]["resourceVersion"]:
                raise errors.conflict(t.plural, t.group, t.name)
            stored = self._store_update(txn, user, t, current, patched, warnings)
            if opts.dry_run:
                stored["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return Result(kind.convert_from_storage(stored, t.version), False, warnings)

    def _apply_patch(self, t: Target, live: Obj, content_type: str, patch_body: Any) -> Obj:
        try:
            if content_type == JSON_PATCH:
                if not isinstance(patch_body, list):
                    raise errors.bad_request("a JSON patch must be a list of operations")
                return json_patch(live, patch_body)
            if not isinstance(patch_body, dict):
                raise errors.bad_request("the patch must be a JSON object")
            if content_type == STRATEGIC_PATCH:
                schema = t.kind.version(t.version).schema  # type: ignore[union-attr]
                return strategic_merge(live, patch_body, schema)
            return merge_patch(live, patch_body)
        except (PatchError, StrategicPatchError) as exc:
            raise errors.ApiError(422, "Invalid", f"the patch could not be applied: {exc}") from exc

    def _store_update(self, txn: WriteTxn, user: UserInfo, t: Target, current: Obj,
                      new: Obj, warnings: list[str] | None = None) -> Obj:
        """Merge ``new`` (storage version) into ``current`` by subresource rules and store."""
        kind = t.kind
        merged = copy.deepcopy(new)
        cur_meta = current["metadata"]
        if t.subresource == "status":
            merged = copy.deepcopy(current)
            merged["status"] = copy.deepcopy(new.get("status"))
            if merged["status"] is None:
                merged.pop("status")
        else:
            if kind.has_status:
                if "status" in current:
                    merged["status"] = copy.deepcopy(current["status"])
                else:
                    merged.pop("status", None)
            if kind.spec_finalizers and t.subresource != "finalize":
                merged["spec"] = copy.deepcopy(current.get("spec"))
        meta = merged.setdefault("metadata", {})
        for field_name in ("uid", "creationTimestamp", "deletionTimestamp",
                           "deletionGracePeriodSeconds", "generation", "namespace", "name"):
            if field_name in cur_meta:
                meta[field_name] = cur_meta[field_name]
            else:
                meta.pop(field_name, None)
        meta.pop("managedFields", None)
        if cur_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
            if added:
                raise errors.forbidden(
                    f'{kind.qualified_plural} "{t.name}" is forbidden: no new finalizers can be '
                    f'added if the object is being deleted, found new finalizers '
                    f'{sorted(added)}', t.plural, t.group, t.name)
        if _spec_of(merged) != _spec_of(current):
            meta["generation"] = int(cur_meta.get("generation") or 1) + 1
        found = self._validate(txn, user, t, merged, current, "UPDATE")
        if warnings is not None:
            warnings += found
        if t.namespace:
            quota.check(txn, self.registry, kind, t.namespace, t.name, merged, current)
        if _strip_rv(merged) == _strip_rv(current):
            return current  # nothing changed: no new revision, no event
        if meta.get("deletionTimestamp") and not _pending_finalizers(kind, merged):
            gone = txn.delete(t.key())
            self._after_write(txn, t)
            return gone
        stored = txn.update(t.key(), merged)
        self._after_write(txn, t)
        return stored

    def delete(self, user: UserInfo, t: Target, options: Obj | None = None,
               opts: WriteOptions = WriteOptions()) -> Obj:
        options = options or {}
        pre = options.get("preconditions") or {}
        with self.store.write(dry_run=opts.dry_run) as txn:
            self.authorize(txn, user, "delete", t)
            current = txn.get(t.key())
            if current is None:
                raise errors.not_found(t.plural, t.group, t.name)
            meta = current["metadata"]
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise errors.conflict(t.plural, t.group, t.name,
                                      f"Precondition failed: UID in precondition: {pre['uid']}, "
                                      f"UID in object meta: {meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
                raise errors.conflict(t.plural, t.group, t.name)
            grace = _grace_period(t.kind, current, options)
            if _pending_finalizers(t.kind, current):
                if meta.get("deletionTimestamp"):
                    # A second delete may only shorten the grace period (kubectl --now).
                    if grace < int(meta.get("deletionGracePeriodSeconds") or 0):
                        meta["deletionGracePeriodSeconds"] = grace
                        meta["deletionTimestamp"] = rfc3339(
                            datetime.now(UTC) + timedelta(seconds=grace))
                        current = txn.update(t.key(), current)
                    return t.kind.convert_from_storage(current, t.version)
                # As in Kubernetes: the time by which the object will be gone.
                meta["deletionTimestamp"] = rfc3339(
                    datetime.now(UTC) + timedelta(seconds=grace))
                meta["deletionGracePeriodSeconds"] = grace
                if t.kind.spec_finalizers:
                    current.setdefault("status", {})["phase"] = "Terminating"
                stored = txn.update(t.key(), current)
                return t.kind.convert_from_storage(stored, t.version)
            gone = txn.delete(t.key())
            self._after_write(txn, t)
            return t.kind.convert_from_storage(gone, t.version)

    # -- admission steps ---------------------------------------------------------------------

    def _decode(self, t: Target, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON or YAML object")
        _check_depth(body, self.max_depth)
        kind = t.kind
        api_version = body.get("apiVersion") or kind.api_version(t.version)
        if body.get("kind") not in (None, kind.kind) or api_version != kind.api_version(t.version):
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({kind.api_version(t.version)})" if body.get("kind") in (None, kind.kind)
                else f"the kind in the data ({body.get('kind')}) does not match the expected "
                     f"kind ({kind.kind})")
        meta = body.get("metadata")
        if meta is not None and not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = api_version, kind.kind
        meta = obj.setdefault("metadata", {})
        if kind.namespaced and meta.get("namespace") and t.namespace \
                and meta["namespace"] != t.namespace:
            raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
        return obj

    def _admit_shape(self, t: Target, obj: Obj, opts: WriteOptions, warnings: list[str]) -> Obj:
        """Prune unknown fields, default, validate against the request version's schema,
        then convert to the storage version."""
        version = t.kind.version(t.version)
        assert version is not None
        if version.deprecated:
            warnings.append(version.deprecation_warning or
                            f"{t.kind.api_version(t.version)} {t.kind.kind} is deprecated")
        unknown = prune_unknown(obj, version.schema)
        if unknown and opts.field_validation == "Strict":
            raise errors.bad_request("strict decoding error: " + ", ".join(
                f'unknown field "{u}"' for u in unknown))
        if unknown and opts.field_validation != "Ignore":
            warnings += [f'unknown field "{u}"' for u in unknown]
        apply_defaults(obj, version.schema)
        name = (obj.get("metadata") or {}).get("name") or ""
        causes = validate(obj, version.schema)
        if causes:
            raise errors.invalid(t.kind.kind, t.group, name, causes)
        return t.kind.convert_to_storage(obj, t.version)

    def _validate(self, txn: WriteTxn, user: UserInfo, t: Target, obj: Obj, old: Obj | None,
                  operation: str) -> list[str]:
        """Refuse ``obj`` with every problem found; the admission warnings otherwise."""
        kind = t.kind
        name = obj["metadata"].get("name", "")
        causes: list[Cause] = []
        if operation == "CREATE":
            check = {"label": dns1123_label, "subdomain": dns1123_subdomain,
                     "path": _path_segment}[kind.name_rule]
            causes += [Cause("metadata.name", f"Invalid value: {name!r}: {m}")
                       for m in check(name)]
        for key, value in (obj["metadata"].get("labels") or {}).items():
            if not isinstance(value, str):
                causes.append(Cause(f"metadata.labels[{key}]", "Invalid value: must be a string"))
        if old is not None:
            for path in kind.immutable_fields:
                if _dig(obj, path) != _dig(old, path):
                    causes.append(Cause(path, "Invalid value: field is immutable",
                                        "FieldValueForbidden"))
        # A deleting object is only waiting for its finalizers: its references (a
        # VM's class) may be gone already and must not block removing them.
        deleting = bool(obj["metadata"].get("deletionTimestamp"))
        if kind.validate is not None and not causes and not deleting:
            def lookup(group: str, plural: str, namespace: str, name_: str) -> Obj | None:
                return txn.get(Key(group, plural, namespace, name_))
            ctx = AdmissionContext(operation, user.name, lookup)
            causes += kind.validate(obj, old, ctx)
        warnings = [f"{c.field}: {c.message}" for c in causes if c.reason == ADMISSION_WARNING]
        causes = [c for c in causes if c.reason != ADMISSION_WARNING]
        if causes:
            raise errors.invalid(kind.kind, kind.group, name, causes)
        if kind.group == RBAC and MASTERS not in user.groups:
            self._check_escalation(txn, user, t, obj)
        return warnings

    def _check_escalation(self, txn: WriteTxn, user: UserInfo, t: Target, obj: Obj) -> None:
        ns = t.namespace if t.kind.namespaced else ""
        if t.plural in ("roles", "clusterroles"):
            rules = obj.get("rules") or []
            verb_bypass = "escalate"
        else:
            ref = obj.get("roleRef") or {}
            role_key = Key(RBAC, "clusterroles", "", ref.get("name", "")) \
                if ref.get("kind") == "ClusterRole" else Key(RBAC, "roles", ns, ref.get("name", ""))
            role = txn.get(role_key)
            if role is None:
                raise errors.not_found(role_key.resource, RBAC, role_key.name)
            rules = role.get("rules") or []
            verb_bypass = "bind"
        bypass = Attributes(user, verb_bypass, RBAC,
                            "roles" if t.plural in ("roles", "rolebindings") else "clusterroles",
                            "", ns, (obj.get("roleRef") or {}).get("name", ""))
        if self.authorizer.allowed(txn, bypass):
            return
        missing = self.authorizer.covers(txn, user, ns, rules)
        if missing:
            raise errors.forbidden(
                f'{t.kind.qualified_plural} "{obj["metadata"]["name"]}" is forbidden: user '
                f'"{user.name}" is attempting to grant RBAC permissions not currently held: '
                + "; ".join(missing[:10]), t.plural, t.group, obj["metadata"]["name"])

    def _check_namespace(self, txn: WriteTxn, t: Target) -> None:
        if not t.kind.namespaced:
            return
        if not t.namespace:
            raise errors.bad_request("a namespace is required for " + t.kind.qualified_plural)
        ns = txn.get(Key("", "namespaces", "", t.namespace))
        if ns is None:
            raise errors.not_found("namespaces", "", t.namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                f'{t.kind.qualified_plural} "{t.name}" is forbidden: unable to create new content '
                f"in namespace {t.namespace} because it is being terminated",
                t.plural, t.group, t.name)

    def _after_write(self, txn: WriteTxn, t: Target) -> None:
        if t.kind.namespaced and t.namespace:
            quota.refresh(txn, self.registry, t.namespace)


# -- helpers ---------------------------------------------------------------------------------


def _grace_period(kind: Kind, obj: Obj, options: Obj) -> int:
    """Seconds the object's finalizers get: DeleteOptions', else the kind's own (a pod's
    terminationGracePeriodSeconds), else none."""
    asked = options.get("gracePeriodSeconds")
    if asked is not None:
        try:
            return max(0, int(asked))
        except (TypeError, ValueError) as exc:
            raise errors.bad_request("gracePeriodSeconds must be an integer") from exc
    return max(0, kind.grace_period(obj)) if kind.grace_period is not None else 0


def _pending_finalizers(kind: Kind, obj: Obj) -> list[str]:
    fins = list((obj.get("metadata") or {}).get("finalizers") or [])
    if kind.spec_finalizers:
        fins += list((obj.get("spec") or {}).get("finalizers") or [])
    return fins


def _spec_of(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _strip_rv(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    out.get("metadata", {}).pop("resourceVersion", None)
    return out


def _dig(obj: Obj, path: str) -> Any:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _path_segment(name: str) -> list[str]:
    """RBAC names: any string that is a valid path segment (no '/', '%', '.' or '..')."""
    if name in (".", ".."):
        return [f"may not be '{name}'"]
    bad = [c for c in ("/", "%") if c in name]
    if bad:
        return [f"may not contain '{bad[0]}'"]
    if not name:
        return ["name is required"]
    return []


def _check_depth(value: Any, limit: int, depth: int = 0) -> None:
    if depth > limit:
        raise errors.bad_request(f"the object is nested more than {limit} levels deep")
    if isinstance(value, dict):
        for v in value.values():
            _check_depth(v, limit, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_depth(v, limit, depth + 1)


def _encode_continue(rv: int, namespace: str, name: str) -> str:
    import base64
    import json

    raw = json.dumps({"v": 1, "rv": rv, "start": [namespace, name]}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str, str]:
    import base64
    import json

    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        ns, name = data["start"]
        return int(data["rv"]), str(ns), str(name)
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.bad_request("continue key is not valid: " + str(exc)) from exc
