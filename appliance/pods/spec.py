"""What a pod's containers run with, resolved the way a kubelet resolves it.

- argv from ``command``/``args`` and the image's Entrypoint/Cmd (Kubernetes' rules);
- the environment: the image's, then ``envFrom``, then ``env`` (with
  ``valueFrom`` ConfigMap/Secret keys and field references), ``$(VAR)``
  references expanded in env values, command and args;
- the working directory from the container or the image;
- configMap and secret volumes as files, emptyDirs.

Missing ConfigMaps, Secrets or keys raise :class:`ConfigError` with the reason a
kubelet reports (``CreateContainerConfigError``) unless marked optional.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.kinds.registry import Obj
from hypervisor.podvm.config import DEFAULT_PATH

#: Reads a ConfigMap or Secret: (plural, name) -> object or None.
Reader = Callable[[str, str], "Obj | None"]
_VALID_ENV = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


class ConfigError(Exception):
    """The pod's configuration cannot be assembled; ``reason`` as a kubelet reports it."""

    def __init__(self, message: str, reason: str = "CreateContainerConfigError") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    working_dir: str = ""


@dataclass(frozen=True)
class Mount:
    volume: str
    path: str
    read_only: bool = False
    sub_path: str = ""


@dataclass(frozen=True)
class Container:
    name: str
    image_index: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    working_dir: str
    mounts: tuple[Mount, ...]


@dataclass(frozen=True)
class Volume:
    name: str
    kind: str  # emptyDir | files
    medium: str = ""
    size_limit_bytes: int | None = None
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``,
    anything else is left as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(sub, text)


def argv_for(container: Obj, image: ImageConfig) -> tuple[str, ...]:
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if command:
        return tuple(command + args)
    if args:
        return tuple(list(image.entrypoint) + args)
    return tuple(list(image.entrypoint) + list(image.cmd))


def _decoded(obj: Obj, plural: str) -> dict[str, bytes]:
    """Every key of a ConfigMap or Secret, as bytes."""
    out: dict[str, bytes] = {}
    if plural == "configmaps":
        for k, v in (obj.get("data") or {}).items():
            out[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = _b64(v, k)
    else:
        for k, v in (obj.get("data") or {}).items():
            out[k] = _b64(v, k)
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = str(v).encode()
    return out


def _b64(value: Any, key: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"key {key!r} is not valid base64") from exc


KIND_NAMES = {"configmaps": "ConfigMap", "secrets": "Secret"}


def _source(read: Reader, plural: str, name: str, optional: bool, namespace: str
            ) -> dict[str, bytes] | None:
    obj = read(plural, name)
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{plural[:-1]} "{name}" not found')
    return _decoded(obj, plural)


def _field(pod: Obj, path: str) -> str:
    meta = pod.get("metadata") or {}
    m = re.match(r"^metadata\.(labels|annotations)\['([^']+)'\]$", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.podIPs": (pod.get("status") or {}).get("podIP"),
    }
    return str(values.get(path) or "")


def environment(pod: Obj, container: Obj, image: ImageConfig, read: Reader
                ) -> tuple[tuple[str, str], ...]:
    """The container's environment in order: image, envFrom, env."""
    namespace = pod["metadata"].get("namespace", "")
    env: dict[str, str] = {}
    for item in image.env:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)  # what containerd gives an image without one
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef") or src.get("secretRef") or {}
        plural = "configmaps" if src.get("configMapRef") is not None else "secrets"
        data = _source(read, plural, str(ref.get("name") or ""), bool(ref.get("optional")),
                       namespace)
        for key, value in sorted((data or {}).items()):
            name = f"{src.get('prefix') or ''}{key}"
            if _VALID_ENV.match(name):
                env[name] = value.decode(errors="replace")
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if source is None:
            env[name] = expand(str(var.get("value") or ""), env)
            continue
        for key_ref, plural in (("configMapKeyRef", "configmaps"),
                                ("secretKeyRef", "secrets")):
            ref = source.get(key_ref)
            if ref is None:
                continue
            optional = bool(ref.get("optional"))
            data = _source(read, plural, str(ref.get("name") or ""), optional, namespace)
            if data is None:
                break
            if ref["key"] not in data:
                if optional:
                    break
                raise ConfigError(f"couldn't find key {ref['key']} in {KIND_NAMES[plural]} "
                                  f"{namespace}/{ref.get('name')}")
            env[name] = data[ref["key"]].decode(errors="replace")
        if source.get("fieldRef") is not None:
            env[name] = _field(pod, source["fieldRef"]["fieldPath"])
    return tuple(env.items())


def volumes(pod: Obj, read: Reader) -> tuple[Volume, ...]:
    namespace = pod["metadata"].get("namespace", "")
    out = []
    for v in (pod.get("spec") or {}).get("volumes") or []:
        if v.get("emptyDir") is not None:
            limit = v["emptyDir"].get("sizeLimit")
            from appliance.util.quantity import parse_quantity

            out.append(Volume(v["name"], "emptyDir", v["emptyDir"].get("medium") or "",
                              int(parse_quantity(limit)) if limit is not None else None))
            continue
        plural, body = ("configmaps", v["configMap"]) if v.get("configMap") is not None \
            else ("secrets", v.get("secret") or {})
        ref = body.get("name") if plural == "configmaps" else body.get("secretName")
        data = _source(read, plural, str(ref or ""), bool(body.get("optional")), namespace)
        mode = int(body.get("defaultMode", 0o644))
        files: dict[str, tuple[bytes, int]] = {}
        items = body.get("items")
        if items:
            for item in items:
                if data is None:
                    break
                if item["key"] not in data:
                    if body.get("optional"):
                        continue
                    raise ConfigError(f"configmap references non-existent config key: "
                                      f"{item['key']}" if plural == "configmaps" else
                                      f"references non-existent secret key: {item['key']}")
                files[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
        else:
            files = {k: (val, mode) for k, val in (data or {}).items()
                     if _VALID_ENV.match(k) or re.match(r"^[-._a-zA-Z0-9]+$", k)}
        out.append(Volume(v["name"], "files", files=files))
    return tuple(out)


def containers(pod: Obj, images: Sequence[ImageConfig], image_index: Mapping[str, int],
               read: Reader) -> tuple[Container, ...]:
    """Every container of ``pod`` resolved; ``images``/``image_index`` by container name."""
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        idx = image_index[c["name"]]
        image = images[idx]
        env = environment(pod, c, image, read)
        env_map = dict(env)
        argv = tuple(expand(a, env_map) for a in argv_for(c, image))
        if not argv:
            raise ConfigError(f'container "{c["name"]}": no command specified',
                              "CreateContainerError")
        mounts = tuple(Mount(m["name"], m["mountPath"], bool(m.get("readOnly")),
                             m.get("subPath") or "") for m in c.get("volumeMounts") or [])
        out.append(Container(c["name"], idx, argv, env,
                             c.get("workingDir") or image.working_dir or "/", mounts))
    return tuple(out)
