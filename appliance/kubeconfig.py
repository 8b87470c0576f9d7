"""Writing kubeconfig files: one context per namespace, like `kubectl vsphere login`."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from appliance.util.files import write_atomic


def _host(server: str) -> str:
    return urlparse(server).hostname or "supervisor"


def build(server: str, user: str, token: str, namespaces: list[str], ca_pem: bytes | None,
          insecure: bool = False, current: str | None = None) -> dict[str, Any]:
    host = _host(server)
    cluster: dict[str, Any] = {"server": server}
    if ca_pem and not insecure:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    user_name = f"wcp:{host}:{user}"
    contexts = [{"name": host, "context": {"cluster": host, "user": user_name}}]
    for ns in namespaces:
        contexts.append({"name": ns, "context": {"cluster": host, "user": user_name,
                                                  "namespace": ns}})
    return {"apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": host, "cluster": cluster}],
            "users": [{"name": user_name, "user": {"token": token}}],
            "contexts": contexts,
            "current-context": current or (namespaces[0] if namespaces else host)}


def merge(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Entries of ``new`` replace those of the same name in ``existing``."""
    out = dict(existing) if existing else {"apiVersion": "v1", "kind": "Config"}
    for section in ("clusters", "users", "contexts"):
        names = {e["name"] for e in new.get(section, [])}
        kept = [e for e in out.get(section) or [] if e.get("name") not in names]
        out[section] = kept + list(new.get(section, []))
    out["current-context"] = new.get("current-context", out.get("current-context", ""))
    return out


def write(path: Path, config: dict[str, Any]) -> None:
    """Write atomically with mode 0600 (it holds a bearer token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(config, default_flow_style=False,
                                      sort_keys=False).encode(), 0o600)


def load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return data if isinstance(data, dict) else {}


def current(path: Path, context: str | None = None) -> dict[str, Any]:
    """Server, token, CA and namespace of the current (or named) context."""
    config = load(path)
    name = context or config.get("current-context")
    ctx = next((c["context"] for c in config.get("contexts") or [] if c.get("name") == name), None)
    if ctx is None:
        raise ValueError(f"{path}: no context {name!r}")
    cluster = next((c["cluster"] for c in config.get("clusters") or []
                    if c.get("name") == ctx.get("cluster")), {})
    user = next((u["user"] for u in config.get("users") or []
                 if u.get("name") == ctx.get("user")), {})
    ca = cluster.get("certificate-authority-data")
    return {"server": cluster.get("server", ""), "token": user.get("token", ""),
            "ca_pem": base64.b64decode(ca) if ca else None,
            "insecure": bool(cluster.get("insecure-skip-tls-verify")),
            "namespace": ctx.get("namespace", "default")}
