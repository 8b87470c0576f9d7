"""A level-triggered controller loop over the object service.

Each controller names one kind. Its loop lists that kind, reconciles every
object, then watches for changes and reconciles the object named by each
event, re-reading it first (level-triggered: the event only says *which*
object to look at). Every object is also reconciled again after
``resync`` seconds, so drift outside the store (a domain destroyed with
virsh) is found even when nothing in the store changed.

Errors follow kopf: :class:`TemporaryError` is retried after its delay,
:class:`PermanentError` waits for the object to change. Both are expected
to have been written to the object's conditions by the reconciler.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance import errors
from appliance.kinds.registry import Obj
from appliance.resources import Ref, ResourceApi

LOG = logging.getLogger(__name__)


class TemporaryError(Exception):
    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(Exception):
    pass


@dataclass(order=True)
class _Item:
    due: float
    key: tuple[str, str] = field(compare=False)


class WorkQueue:
    """Keys due at a time; a key queued twice runs once, at the earlier time.

    With several workers, a key is never handed out while a worker holds it
    (between ``get`` and ``done``): adding it meanwhile queues it for after."""

    def __init__(self) -> None:
        self._heap: list[_Item] = []
        self._due: dict[tuple[str, str], float] = {}
        self._held: set[tuple[str, str]] = set()
        self._again: dict[tuple[str, str], float] = {}
        self._cond = threading.Condition()

    def add(self, key: tuple[str, str], delay: float = 0.0) -> None:
        due = time.monotonic() + delay
        with self._cond:
            if key in self._held:
                self._again[key] = min(due, self._again.get(key, due))
                return
            self._push(key, due)

    def _push(self, key: tuple[str, str], due: float) -> None:
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, _Item(due, key))
        self._cond.notify()

    def done(self, key: tuple[str, str]) -> None:
        """A worker has finished with ``key``; a re-add that came meanwhile is queued."""
        with self._cond:
            self._held.discard(key)
            if key in self._again:
                self._push(key, self._again.pop(key))

    def get(self, stop: threading.Event, timeout: float = 1.0) -> tuple[str, str] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not stop.is_set():
                while self._heap and self._due.get(self._heap[0].key) != self._heap[0].due:
                    heapq.heappop(self._heap)  # superseded entry
                now = time.monotonic()
                if self._heap and self._heap[0].due <= now:
                    item = heapq.heappop(self._heap)
                    del self._due[item.key]
                    self._held.add(item.key)
                    return item.key
                wait = min(deadline - now, (self._heap[0].due - now) if self._heap else timeout)
                if wait <= 0:
                    return None
                self._cond.wait(wait)
        return None


class Controller:
    """Subclasses set ``group``, ``plural``, ``version`` and implement ``reconcile``."""

    group = ""
    plural = ""
    version = "v1"
    resync = 60.0
    name = "controller"
    namespace = ""  # "" watches every namespace
    workers = 1  # objects reconciled at once (one object is never reconciled twice at once)

    def __init__(self, api: ResourceApi) -> None:
        self.api = api
        self.ref = Ref(self.group, self.version, self.plural)
        self.queue = WorkQueue()

    def wants(self, obj: Obj) -> bool:
        """Whether this controller looks after ``obj`` (a host agent: placed here)."""
        return True

    def reconcile(self, obj: Obj) -> float | None:
        """Bring the world in line with ``obj``; return seconds until the next look."""
        raise NotImplementedError

    # -- the loop -------------------------------------------------------------------------

    def related(self) -> list[tuple[Ref, Callable[[Obj], list[tuple[str, str]]]]]:
        """Other kinds whose changes concern objects of this one: each kind with what
        names the objects to look at again (a VM's change → its owner's key)."""
        return []

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self._feed, args=(stop,), name=f"{self.name}-watch",
                         daemon=True).start()
        for ref, keys in self.related():
            threading.Thread(target=self._feed_related, args=(ref, keys, stop),
                             name=f"{self.name}-watch-{ref.plural}", daemon=True).start()
        for i in range(1, self.workers):
            threading.Thread(target=self._work, args=(stop,), name=f"{self.name}-{i}",
                             daemon=True).start()
        self._work(stop)

    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.queue.get(stop)
            if key is not None:
                try:
                    self._process(key)
                finally:
                    self.queue.done(key)

    def _process(self, key: tuple[str, str]) -> None:
        namespace, name = key
        try:
            obj = self.api.get(self.ref, namespace, name)
        except errors.ApiError as err:
            if err.code != 404:
                LOG.warning("[%s/%s] %s: read failed: %s", namespace, name, self.name, err)
                self.queue.add(key, 5.0)
            return
        except OSError as exc:  # a remote API did not answer (its floating IP moving)
            LOG.warning("[%s/%s] %s: read failed: %s", namespace, name, self.name, exc)
            self.queue.add(key, 5.0)
            return
        if not self.wants(obj):
            return
        try:
            again = self.reconcile(obj)
        except TemporaryError as exc:
            LOG.info("[%s/%s] %s: %s (retry in %.0fs)", namespace, name, self.name, exc,
                     exc.delay)
            self.queue.add(key, exc.delay)
        except PermanentError as exc:
            LOG.warning("[%s/%s] %s: %s", namespace, name, self.name, exc)
        except errors.ApiError as err:
            delay = 0.2 if err.code == 409 else 5.0
            LOG.info("[%s/%s] %s: %s (retry in %.1fs)", namespace, name, self.name, err, delay)
            self.queue.add(key, delay)
        except Exception:
            LOG.exception("[%s/%s] %s: reconcile crashed", namespace, name, self.name)
            self.queue.add(key, 10.0)
        else:
            self.queue.add(key, self.resync if again is None else again)

    def _feed(self, stop: threading.Event) -> None:
        """List, then watch; on any failure list again."""
        while not stop.is_set():
            try:
                items, rv = self.api.list(self.ref, self.namespace)
                for obj in items:
                    self.queue.add(_key(obj))
                for ev in self.api.watch(self.ref, rv, self.namespace, timeout=300):
                    if stop.is_set():
                        return
                    if ev is not None and ev[0] in ("ADDED", "MODIFIED", "DELETED"):
                        self.queue.add(_key(ev[1]))
            except errors.ApiError as err:
                LOG.info("%s: watch ended (%s); listing again", self.name, err)
                stop.wait(1.0)
            except OSError as exc:  # a remote API that does not answer: no traceback
                LOG.warning("%s: watch failed (%s); listing again", self.name, exc)
                stop.wait(5.0)
            except Exception:
                LOG.exception("%s: watch failed; listing again", self.name)
                stop.wait(5.0)


    def _feed_related(self, ref: Ref, keys: Callable[[Obj], list[tuple[str, str]]],
                      stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                _, rv = self.api.list(ref, self.namespace)
                for ev in self.api.watch(ref, rv, self.namespace, timeout=300):
                    if stop.is_set():
                        return
                    if ev is not None and ev[0] in ("ADDED", "MODIFIED", "DELETED"):
                        for key in keys(ev[1]):
                            self.queue.add(key)
            except errors.ApiError as err:
                LOG.info("%s: watch of %s ended (%s); listing again", self.name, ref.plural,
                         err)
                stop.wait(1.0 if err.code != 404 else 60.0)
            except OSError as exc:
                LOG.warning("%s: watch of %s failed (%s); listing again", self.name,
                            ref.plural, exc)
                stop.wait(5.0)
            except Exception:
                LOG.exception("%s: watch of %s failed; listing again", self.name, ref.plural)
                stop.wait(5.0)


def owners(kind: str) -> Callable[[Obj], list[tuple[str, str]]]:
    """For :meth:`Controller.related`: the keys of an object's owners of ``kind``."""
    def keys(obj: Obj) -> list[tuple[str, str]]:
        meta = obj.get("metadata") or {}
        return [(meta.get("namespace", ""), o["name"])
                for o in meta.get("ownerReferences") or [] if o.get("kind") == kind]
    return keys


def merge_diff(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (null removes a key)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_diff(old[key], value) if isinstance(value, dict) else value
    return patch


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


def drop_finalizer(api: ResourceApi, ref: Ref, obj: Obj, finalizer: str) -> None:
    """Remove ``finalizer`` from ``obj`` (guarded by its resourceVersion); an object
    that is gone already is fine."""
    meta = obj["metadata"]
    finalizers = [f for f in meta.get("finalizers") or [] if f != finalizer]
    if finalizers == (meta.get("finalizers") or []):
        return
    try:
        api.patch(ref, meta.get("namespace", ""), meta["name"],
                  {"metadata": {"finalizers": finalizers or None,
                                "resourceVersion": meta["resourceVersion"]}})
    except errors.ApiError as err:
        if err.code != 404:
            raise


def add_finalizer(api: ResourceApi, ref: Ref, obj: Obj, finalizer: str) -> Obj:
    """``obj`` with ``finalizer`` added (guarded by its resourceVersion)."""
    meta = obj["metadata"]
    if finalizer in (meta.get("finalizers") or []):
        return obj
    return api.patch(ref, meta.get("namespace", ""), meta["name"],
                     {"metadata": {"finalizers": [*(meta.get("finalizers") or []), finalizer],
                                   "resourceVersion": meta["resourceVersion"]}})
