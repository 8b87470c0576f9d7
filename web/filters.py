"""How objects look on a page: ages, states, usage bars, YAML without secrets."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import yaml
from flask import Flask

from appliance.kinds.registry import Obj
from appliance.util.quantity import QuantityError, parse_quantity
from appliance.util.timefmt import human_duration, parse_rfc3339
from web.forms import LIMIT_BY_KEY, LIMIT_FIELDS

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
HIDDEN = "(hidden)"


# -- time ------------------------------------------------------------------------------------


def age(timestamp: str | None) -> str:
    """kubectl's AGE: "5m", "3h1m", "12d"."""
    if not timestamp:
        return "–"
    try:
        then = parse_rfc3339(str(timestamp))
    except ValueError:
        return "?"
    return human_duration(datetime.now(UTC) - then)


def when(timestamp: str | None) -> str:
    """The exact time, for a tooltip next to an age."""
    if not timestamp:
        return ""
    try:
        return parse_rfc3339(str(timestamp)).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(timestamp)


# -- states ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    label: str
    tone: str  # ok | warn | bad | info | muted
    detail: str = ""


def condition(obj: Obj, type_: str) -> Obj | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == type_), None)


def vm_state(vm: Obj) -> State:
    """One honest word for where a VM is, from its status (never from its spec)."""
    meta, status = vm["metadata"], vm.get("status") or {}
    if meta.get("deletionTimestamp"):
        return State("Deleting", "warn", "the host agent is removing its domain and disks")
    ready = condition(vm, "Ready")
    placed = condition(vm, "VirtualMachineConditionPlacementReady")
    if ready and ready.get("status") == "True":
        return State("Ready", "ok", ready.get("message") or "")
    if placed and placed.get("status") == "False":
        return State("Not placed", "bad", placed.get("message") or placed.get("reason") or "")
    if not status.get("host"):
        return State("Pending", "info", "waiting for the scheduler to place it on a host")
    if ready is None:
        return State("Creating", "info", f"being built on {status.get('host')}")
    reason = ready.get("reason") or ""
    if reason == "Booting":
        return State("Booting", "info", ready.get("message") or "")
    if reason == "PoweredOff":
        power = status.get("powerState") or "PoweredOff"
        return State("Suspended" if power == "Suspended" else "Powered off", "muted",
                     ready.get("message") or "")
    if reason == "Retrying":
        return State("Creating", "info", ready.get("message") or "")
    return State(_words(reason) or "Not ready", "bad", ready.get("message") or "")


def object_state(obj: Obj) -> State | None:
    """A generic status word for any kind: phase, or the Ready condition."""
    status = obj.get("status") or {}
    if obj["metadata"].get("deletionTimestamp"):
        return State("Terminating", "warn")
    if obj.get("kind") == "Pod" and isinstance(status, dict):
        from appliance.kinds.pods import pod_status_text

        word = pod_status_text(obj)  # kubectl's STATUS: CrashLoopBackOff, Completed, ...
        tone = {"Running": "ok", "Completed": "ok", "Succeeded": "ok", "Pending": "info",
                "ContainerCreating": "info"}.get(word, "bad")
        return State(word, tone)
    if isinstance(status, dict) and status.get("phase"):
        phase = str(status["phase"])
        tone = {"Active": "ok", "Running": "ok", "Succeeded": "ok", "Bound": "ok",
                "Pending": "info", "Failed": "bad", "Terminating": "warn"}.get(phase, "info")
        return State(phase, tone)
    ready = condition(obj, "Ready")
    if ready is not None:
        if ready.get("status") == "True":
            return State("Ready", "ok", ready.get("message") or "")
        return State(_words(ready.get("reason") or "") or "Not ready", "bad",
                     ready.get("message") or "")
    return None


def _words(reason: str) -> str:
    """'InsufficientCapacity' -> 'Insufficient capacity'."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", reason)
    return spaced[:1].upper() + spaced[1:].lower()


def short_condition(type_: str) -> str:
    """'VirtualMachineConditionPlacementReady' -> 'Placement ready'."""
    return _words(type_.replace("VirtualMachineCondition", ""))


# -- quantities and usage --------------------------------------------------------------------


def fmt_bytes(amount: Decimal) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    if amount == 0:
        return "0"
    value, i = Decimal(amount), 0
    while abs(value) >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    text = f"{value:.1f}".rstrip("0").rstrip(".") if value != value.to_integral_value() \
        else str(int(value))
    return f"{text} {units[i]}"


def fmt_number(amount: Decimal) -> str:
    if amount == amount.to_integral_value():
        return str(int(amount))
    return f"{amount:.2f}".rstrip("0").rstrip(".")


def fmt_quantity(key: str, value: str | None) -> str:
    if value is None:
        return "–"
    try:
        amount = parse_quantity(value)
    except QuantityError:
        return str(value)
    if key.endswith(("memory", "storage")) or key == "ephemeral-storage":
        return fmt_bytes(amount)
    return fmt_number(amount)


@dataclass(frozen=True)
class Usage:
    key: str
    label: str
    used: float
    hard: float
    used_text: str
    hard_text: str
    unit: str
    percent: int

    @property
    def full(self) -> bool:
        return self.used >= self.hard



def usage_rows(quota: Obj | None) -> list[Usage]:
    """Usage against every limit of a ResourceQuota, in the form's order first."""
    if quota is None:
        return []
    status = quota.get("status") or {}
    hard = dict(status.get("hard") or (quota.get("spec") or {}).get("hard") or {})
    used = status.get("used") or {}
    known = [f.key for f in LIMIT_FIELDS if f.key in hard]
    order = known + sorted(k for k in hard if k not in known)
    rows = []
    for key in order:
        spec = LIMIT_BY_KEY.get(key)
        try:
            h = parse_quantity(hard[key])
            u = parse_quantity(used.get(key, "0"))
        except QuantityError:
            continue
        label = spec.label if spec else key
        unit = "" if spec is None or spec.kind == "bytes" else spec.unit
        pct = 100 if h == 0 and u > 0 else (0 if h == 0 else int(min(u / h, Decimal(1)) * 100))
        rows.append(Usage(key, label, float(u), float(h), fmt_quantity(key, used.get(key, "0")),
                          fmt_quantity(key, hard[key]), unit, pct))
    return rows


# -- YAML without secrets --------------------------------------------------------------------


def redacted(obj: Obj, bootstrap_keys: frozenset[str] = frozenset()) -> Obj:
    """The object as a page may show it: no Secret data, no cloud-init contents.

    ``bootstrap_keys`` are keys of a ConfigMap that a VM uses as its cloud-init data."""
    out = copy.deepcopy(obj)
    meta = out.get("metadata") or {}
    kind = out.get("kind")
    if kind == "Secret":
        for key in ("data", "stringData"):
            if isinstance(out.get(key), dict):
                out[key] = {k: f"{HIDDEN} {len(str(v))} characters" for k, v in out[key].items()}
    if kind == "ConfigMap" and bootstrap_keys:
        for key in ("data", "binaryData"):
            for k in list(out.get(key) or {}):
                if k in bootstrap_keys:
                    out[key][k] = f"{HIDDEN}: cloud-init data of a VM"
    if kind == "VirtualMachine":
        cloud = ((out.get("spec") or {}).get("bootstrap") or {}).get("cloudInit") or {}
        if "cloudConfig" in cloud:
            cloud["cloudConfig"] = HIDDEN
    annotations = meta.get("annotations") or {}
    if LAST_APPLIED in annotations and (kind in ("Secret", "VirtualMachine") or bootstrap_keys):
        annotations[LAST_APPLIED] = HIDDEN
    return out


def to_yaml(obj: Obj, bootstrap_keys: frozenset[str] = frozenset()) -> str:
    return yaml.safe_dump(redacted(obj, bootstrap_keys), default_flow_style=False,
                          sort_keys=False, allow_unicode=True, width=100)


# -- console text ----------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>78DEHMc]|\x1b\][^\x07]*"
                   r"(?:\x07|\x1b\\)")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BLANK_RUN = re.compile(r"\n[ \t]*(?:\n[ \t]*){2,}\n")


def console_text(text: str) -> str:
    """A serial console log as plain text: no terminal escapes, no carriage returns."""
    text = _ANSI.sub("", text)
    # A carriage return inside a line redraws it: keep what was drawn last.
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    text = _CONTROL.sub("", "\n".join(lines))
    return _BLANK_RUN.sub("\n\n", text)  # screens cleared by getty and friends


# -- registration ----------------------------------------------------------------------------


def group_label(group: str) -> str:
    return group or "core"


def init_app(app: Flask) -> None:
    app.jinja_env.filters.update(
        age=age, when=when, to_yaml=to_yaml, qty=lambda v, kind="": fmt_quantity(kind, v),
        words=_words,
        short_condition=short_condition, group_label=group_label)
    app.jinja_env.globals.update(vm_state=vm_state, object_state=object_state,
                                 condition=condition)
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
