"""Form input: checking it before anything is stored, and showing what went wrong.

A :class:`Form` carries what the user typed, messages for fields (shown next
to them) and one message for the page. The dashboard checks the input it
can check itself (names, limits, SSH keys, cloud-config) before it calls the
object service; what the service still refuses (RBAC, quota, the kind's own
validation) comes back as an ``ApiError`` whose causes are matched to fields.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import yaml

from appliance.api.bodies import load_bounded_yaml
from appliance.errors import ApiError
from appliance.kinds.vmop import cloud_config_problem
from appliance.util.names import dns1123_label, dns1123_subdomain
from appliance.util.quantity import QuantityError, format_quantity, parse_quantity

GiB = Decimal(2) ** 30


class Form:
    def __init__(self, data: Mapping[str, str] | None = None) -> None:
        self.data: dict[str, str] = {k: str(v) for k, v in (data or {}).items()}
        self.errors: dict[str, list[str]] = {}
        self.message: str = ""  # for the top of the page
        self.reason: str = ""  # the API's reason for ``message`` (Forbidden, Invalid, ...)
        self.quota: list[str] = []  # the quota refusal in words, one line per limit

    def get(self, key: str, default: str = "") -> str:
        return (self.data.get(key) or default).strip()

    def raw(self, key: str) -> str:
        return self.data.get(key) or ""

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.message

    def api_error(self, err: ApiError, fields: Mapping[str, str] | None = None) -> None:
        """Put the service's refusal next to the fields it names, else at the top."""
        fields = fields or {}
        unmatched = []
        for cause in (err.details or {}).get("causes") or []:
            path = str(cause.get("field") or "")
            target = next((f for p, f in sorted(fields.items(), key=lambda x: -len(x[0]))
                           if path == p or path.startswith(p + ".") or path.startswith(p + "[")),
                          None)
            if target is None:
                unmatched.append(cause)
            else:
                self.add(target, _cause_text(str(cause.get("message") or "")))
        if unmatched or not self.errors:
            self.message = err.message
            self.reason = err.reason
            self.quota = quota_explanation(err.message)


_QUOTA = re.compile(r"exceeded quota: ([^,]+), requested: (.*?), used: (.*?), limited: (.*)$")


def quota_explanation(message: str) -> list[str]:
    """Kubernetes' "exceeded quota" message as sentences: which limit, used, asked for."""
    from web.filters import fmt_quantity

    m = _QUOTA.search(message)
    if not m:
        return []

    def pairs(text: str) -> dict[str, str]:
        return dict(p.split("=", 1) for p in text.split(",") if "=" in p)

    requested, used, limited = pairs(m.group(2)), pairs(m.group(3)), pairs(m.group(4))
    lines = []
    for key, amount in requested.items():
        spec = LIMIT_BY_KEY.get(key)
        label = spec.label if spec else key
        unit = f" {spec.unit}" if spec and spec.kind != "bytes" else ""
        lines.append(f"{label}: this needs {fmt_quantity(key, amount)}{unit}, and "
                     f"{fmt_quantity(key, used.get(key))} of the limit of "
                     f"{fmt_quantity(key, limited.get(key))}{unit} are in use already.")
    return lines


def _cause_text(message: str) -> str:
    """API cause messages lead with Kubernetes' "Invalid value: 'x': "; keep the why."""
    m = re.match(r"Invalid value: (?:'[^']*'|\"[^\"]*\"|\S+): (.*)", message, re.S)
    return m.group(1) if m else message


# -- names -----------------------------------------------------------------------------------

NAME_HINT = ("lower-case letters, digits and '-', starting and ending with a letter or digit")


def name_problem(name: str, what: str = "name", rule: str = "label") -> str | None:
    if not name:
        return f"Enter a {what}."
    problems = dns1123_label(name) if rule == "label" else dns1123_subdomain(name)
    if not problems:
        return None
    limit = 63 if rule == "label" else 253
    if len(name) > limit:
        return f"A {what} may be at most {limit} characters long."
    if rule == "label" and "." in name and not dns1123_subdomain(name):
        return f"A {what} may not contain dots; use {NAME_HINT}."
    extra = " and '.'" if rule != "label" else ""
    return f"Use only {NAME_HINT}{extra} (for example 'dev-team')."


UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def unix_user_problem(name: str) -> str | None:
    if not UNIX_USER.fullmatch(name):
        return ("Use a Linux user name: lower-case letters, digits, '_' and '-', starting with "
                "a letter, at most 32 characters.")
    if name in ("root", "pacific"):
        return f"'{name}' is reserved in the VM; choose another user name."
    return None


# -- limits ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LimitField:
    field: str  # form field name
    key: str  # ResourceQuota spec.hard key
    label: str
    unit: str  # shown next to the input
    kind: str  # cpu | bytes | count
    hint: str = ""


VM_COUNT = "count/virtualmachines.vmoperator.vmware.com"
LIMIT_FIELDS = (
    LimitField("cpu", "requests.cpu", "CPU", "vCPUs", "cpu", "e.g. 8, or 500m for half a CPU"),
    LimitField("memory", "requests.memory", "Memory", "GiB", "bytes",
               "in GiB, or a quantity such as 512Mi"),
    LimitField("storage", "requests.storage", "Storage", "GiB", "bytes",
               "boot disks count here; in GiB, or a quantity such as 2Ti"),
    LimitField("vms", VM_COUNT, "Virtual machines", "VMs", "count"),
    LimitField("pods", "count/pods", "Pods", "pods", "count"),
    LimitField("services", "count/virtualmachineservices.vmoperator.vmware.com",
               "VM services", "services", "count"),
)
LIMIT_BY_KEY = {f.key: f for f in LIMIT_FIELDS}


def parse_limit(spec: LimitField, text: str) -> tuple[str | None, str | None]:
    """(quantity for spec.hard or None for no limit, problem)."""
    text = text.strip().replace(" ", "")
    if not text:
        return None, None
    if spec.kind == "count":
        if not re.fullmatch(r"\d{1,9}", text):
            return None, "Enter a whole number of 0 or more, or leave it empty for no limit."
        return str(int(text)), None
    plain = re.fullmatch(r"\d+(\.\d+)?", text) is not None
    quantity = f"{text}Gi" if spec.kind == "bytes" and plain else text
    if text.startswith("-"):
        return None, "A limit cannot be negative."
    try:
        amount = parse_quantity(quantity)
    except (QuantityError, InvalidOperation, ValueError):
        example = "8 or 500m" if spec.kind == "cpu" else "16 (GiB) or 512Mi"
        return None, f"Enter a number such as {example}, or leave it empty for no limit."
    if amount < 0:
        return None, "A limit cannot be negative."
    if spec.kind == "bytes" and plain:
        # 1.5 GiB is not a whole number of bytes in every case; store what it means.
        exact = amount.to_integral_value()
        quantity = format_quantity(exact, "memory") if exact != amount or "." in text \
            else quantity
    return quantity, None


def limit_display(spec: LimitField, value: str | None) -> str:
    """A stored spec.hard value as the form shows it (GiB for bytes when it is exact)."""
    if value is None:
        return ""
    if spec.kind != "bytes":
        return value
    try:
        amount = parse_quantity(value)
    except QuantityError:
        return value
    gib = amount / GiB
    if gib == gib.to_integral_value():
        return str(int(gib))
    return value


def parse_limits(form: Form) -> dict[str, str]:
    """spec.hard from the limit fields of ``form``; problems are added to the form."""
    hard = {}
    for spec in LIMIT_FIELDS:
        value, problem = parse_limit(spec, form.raw(spec.field))
        if problem:
            form.add(spec.field, problem)
        elif value is not None:
            hard[spec.key] = value
    return hard


# -- VM bootstrap ----------------------------------------------------------------------------

SSH_KEY_TYPES = (
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def ssh_key_problem(text: str) -> str | None:
    """Why ``text`` is not one OpenSSH public key line, or None."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) != 1:
        return "Paste one public key on one line (the contents of a .pub file)."
    parts = lines[0].split()
    if len(parts) < 2:
        return "An SSH public key looks like 'ssh-ed25519 AAAAC3Nz… you@host'."
    key_type, blob = parts[0], parts[1]
    if key_type.startswith("-----BEGIN") or "PRIVATE" in lines[0]:
        return "That is a private key. Paste the public key (the .pub file) instead."
    if key_type not in SSH_KEY_TYPES:
        return (f"Unsupported key type '{key_type[:40]}'; use one of ssh-ed25519, ssh-rsa or "
                "ecdsa-sha2-nistp256/384/521.")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return "The key data is not valid base64; copy the whole line from the .pub file."
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != len(key_type) or \
            raw[4:4 + len(key_type)] != key_type.encode():
        return f"The key data does not match its type '{key_type}'; the key looks damaged."
    if not key_type.startswith("sk-"):
        from cryptography.hazmat.primitives.serialization import load_ssh_public_key

        try:
            load_ssh_public_key(f"{key_type} {blob}".encode())
        except (ValueError, TypeError):
            return "The key data is damaged or truncated; copy the whole line again."
        except Exception:  # noqa: BLE001 - an unsupported curve is still a bad key here
            return "The key could not be read; copy the whole line from the .pub file again."
    return None


def cloud_config_form_problem(text: str) -> str | None:
    """Why the cloud-config a user typed cannot be used (the API's own check, first)."""
    if not text.strip():
        return None
    if text.lstrip().startswith("#!"):
        return ("Scripts are not supported here; write a #cloud-config (use runcmd for "
                "commands).")
    try:
        parsed = load_bounded_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" on line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"Invalid YAML{where}: {exc.problem or exc.context}."
    except yaml.YAMLError as exc:
        return f"Invalid YAML: {exc}"
    problem = cloud_config_problem(with_header(text))
    if problem:
        return problem[:1].upper() + problem[1:] + "."
    if parsed is not None and not isinstance(parsed, dict):
        return "A cloud-config must be a YAML mapping (keys like packages:, runcmd:)."
    users = (parsed or {}).get("users")
    if users is not None and not isinstance(users, list):
        return "'users' must be a list."
    return None


def with_header(text: str) -> str:
    """The '#cloud-config' first line is easy to forget in a form; the YAML is what counts."""
    text = text.lstrip()
    return text if text.startswith("#cloud-config") else "#cloud-config\n" + text


def user_data(cloud_config: str, login: str, ssh_key: str) -> str:
    """The VM's user-data: the cloud-config, plus ``login`` with ``ssh_key`` if given."""
    config = load_bounded_yaml(cloud_config) if cloud_config.strip() else {}
    config = dict(config or {})
    if ssh_key:
        key = ssh_key.strip()
        users = list(config.get("users") or ["default"])
        for entry in users:
            if isinstance(entry, dict) and entry.get("name") == login:
                keys = list(entry.get("ssh_authorized_keys") or [])
                if key not in keys:
                    keys.append(key)
                entry["ssh_authorized_keys"] = keys
                break
        else:
            users.append({"name": login, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                          "lock_passwd": True,
                          "ssh_authorized_keys": [key]})
        config["users"] = users
    return "#cloud-config\n" + yaml.safe_dump(config, default_flow_style=False, sort_keys=False)
