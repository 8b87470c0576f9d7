"""`lab registry login`/`logout`: the lab registry's credentials and CA where skopeo,
podman and docker look for them.

- The containers auth file (containers-auth.json(5)): ``$REGISTRY_AUTH_FILE``, else
  ``${XDG_CONFIG_HOME:-$HOME/.config}/containers/auth.json``.
- Docker's ``${DOCKER_CONFIG:-$HOME/.docker}/config.json``.

Both get ``{"auths": {"HOST:PORT": {"auth": base64("user:token")}}}`` merged in: the
user the supervisor API names, and the kubeconfig's bearer token (the registry's token
endpoint takes it as a password). Every other entry and key is kept. The lab CA goes to
``<certs-dir>/HOST:PORT/ca.crt`` (containers-certs.d(5), docker's ``certs.d``).

Nothing here reads the environment or prints: the CLI passes the environment in and
reports; every refusal is a :class:`RegistryLoginError` with one readable line.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import urllib3
import yaml
from cryptography import x509

from appliance import errors
from appliance.util.files import write_atomic

AUTH_FILE_MODE = 0o600
AUTH_DIR_MODE = 0o700
CERT_FILE_MODE = 0o644
CERT_DIR_MODE = 0o755
CA_FILE = "ca.crt"
ROOT_CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
LOGIN_FIRST = 'run "lab login" first'

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# A host name, an IPv4 address or a bracketed IPv6 address, and a port. The value names
# a directory under certs.d, so nothing else (no "/", no "..") may pass.
_HOSTPORT = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\]):[0-9]{{1,5}}")
_USER = re.compile(r"[^:\x00-\x1f\x7f]{1,253}")


class RegistryLoginError(Exception):
    """Something the user has to fix; the message is one line."""


@dataclass(frozen=True)
class Context:
    """What the current kubeconfig context says about reaching the supervisor API."""

    server: str
    token: str
    ca_pem: bytes | None
    insecure: bool


@dataclass(frozen=True)
class RegistryInfo:
    """``GET /registry``: where the registry is and who the caller is."""

    host: str
    user: str


# -- where things go ----------------------------------------------------------------------------


def _config_home(environ: Mapping[str, str], home: Path) -> Path:
    return Path(environ.get("XDG_CONFIG_HOME") or home / ".config")


def containers_auth_file(environ: Mapping[str, str], home: Path) -> Path:
    """The auth file skopeo and podman read (containers-auth.json(5))."""
    explicit = environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        return Path(explicit)
    return _config_home(environ, home) / "containers" / "auth.json"


def docker_config_file(environ: Mapping[str, str], home: Path, given: Path | None = None) -> Path:
    """Docker's config.json; ``given`` may name the file or (like ``docker --config``) its
    directory."""
    if given is not None:
        return given / "config.json" if given.is_dir() else given
    return Path(environ.get("DOCKER_CONFIG") or home / ".docker") / "config.json"


def default_certs_dirs(environ: Mapping[str, str], home: Path, is_root: bool) -> list[Path]:
    """Where the CA goes: the system's certs.d directories for root, else the user's."""
    if is_root:
        return list(ROOT_CERTS_DIRS)
    return [_config_home(environ, home) / "containers" / "certs.d"]


def check_hostport(host: str) -> str:
    """``host`` if it is ``HOST:PORT`` with a valid port, else a RegistryLoginError."""
    if not isinstance(host, str) or not _HOSTPORT.fullmatch(host) \
            or not 0 < int(host.rsplit(":", 1)[1]) < 65536:
        raise RegistryLoginError(f"not a registry HOST:PORT: {host!r}")
    return host


# -- the kubeconfig and the API -------------------------------------------------------------------


def read_context(path: Path) -> Context:
    """The current context of the kubeconfig at ``path``: server, token and the CA (from
    ``certificate-authority-data`` or the ``certificate-authority`` file)."""
    try:
        config = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryLoginError(f"cannot read the kubeconfig {path} "
                                 f"({exc.__class__.__name__}); {LOGIN_FIRST}") from exc
    if not isinstance(config, dict):
        raise RegistryLoginError(f"no usable kubeconfig at {path}; {LOGIN_FIRST}")
    name = config.get("current-context")
    ctx = _named(config, "contexts", name).get("context") or {}
    if not name or not ctx:
        raise RegistryLoginError(f"{path}: no current context; {LOGIN_FIRST}")
    cluster = _named(config, "clusters", ctx.get("cluster")).get("cluster") or {}
    user = _named(config, "users", ctx.get("user")).get("user") or {}
    server = str(cluster.get("server") or "")
    if not server.startswith("https://"):
        raise RegistryLoginError(f"{path}: context {name!r} has no https:// server; "
                                 f"{LOGIN_FIRST}")
    return Context(server=server.rstrip("/"), token=str(user.get("token") or ""),
                   ca_pem=_cluster_ca(cluster, path),
                   insecure=bool(cluster.get("insecure-skip-tls-verify")))


def _named(config: dict[str, Any], section: str, name: Any) -> dict[str, Any]:
    entries = config.get(section)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and name is not None and entry.get("name") == name:
            return entry
    return {}


def _cluster_ca(cluster: dict[str, Any], kubeconfig: Path) -> bytes | None:
    data = cluster.get("certificate-authority-data")
    if data:
        try:
            return base64.b64decode(data, validate=True)
        except (ValueError, TypeError) as exc:
            raise RegistryLoginError(f"{kubeconfig}: certificate-authority-data is not "
                                     "base64") from exc
    ca_file = cluster.get("certificate-authority")
    if ca_file:
        # Like kubectl: a relative path is relative to the kubeconfig's directory.
        ca_path = kubeconfig.parent / str(ca_file)
        try:
            return ca_path.read_bytes()
        except OSError as exc:
            raise RegistryLoginError(f"{kubeconfig}: cannot read certificate-authority "
                                     f"{ca_path} ({exc.strerror})") from exc
    return None


def fetch_info(ctx: Context, timeout: float = 30.0) -> RegistryInfo:
    """``GET /registry`` on the supervisor API, as the kubeconfig's user."""
    from appliance.client import ApiClient

    if not ctx.token:
        raise RegistryLoginError(f"the kubeconfig's current context has no token; {LOGIN_FIRST}")
    with tempfile.TemporaryDirectory(prefix="lab-registry-") as tmp:
        ca_file = None
        if ctx.ca_pem and not ctx.insecure:
            ca_file = str(Path(tmp) / CA_FILE)
            Path(ca_file).write_bytes(ctx.ca_pem)
        client = ApiClient(ctx.server, ctx.token, ca_file, timeout=timeout)
        if ctx.insecure:
            client.session.verify = False
        try:
            with warnings.catch_warnings():
                # The kubeconfig asks for no verification (insecure-skip-tls-verify), as
                # `lab login --insecure-skip-tls-verify` wrote it; kubectl does not warn either.
                warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                reply = client.get("/registry")
        except errors.ApiError as err:
            if err.code == 401:
                raise RegistryLoginError(f"{ctx.server} refused the token (expired?); "
                                         f"{LOGIN_FIRST}") from err
            if err.code == 404:
                raise RegistryLoginError(f"{ctx.server} has no lab registry (is it "
                                         "enabled?)") from err
            raise RegistryLoginError(f"GET {ctx.server}/registry: {err.message}") from err
        except requests.exceptions.SSLError as exc:
            raise RegistryLoginError(f"the certificate of {ctx.server} is not trusted by the "
                                     f"kubeconfig's CA; {LOGIN_FIRST}") from exc
        except requests.RequestException as exc:
            raise RegistryLoginError(f"cannot reach {ctx.server}: "
                                     f"{exc.__class__.__name__}") from exc
        finally:
            client.session.close()
    if not isinstance(reply, dict):
        raise RegistryLoginError(f"GET {ctx.server}/registry: not a JSON object")
    user = reply.get("user")
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise RegistryLoginError(f"GET {ctx.server}/registry: no usable user name")
    return RegistryInfo(host=check_hostport(reply.get("host", "")), user=user)


# -- auth files ---------------------------------------------------------------------------------


def _read_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, None if there is no file; refuses symlinks, other
    kinds of file and anything but a JSON object (an empty file counts as ``{}``)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryLoginError(f"cannot read {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(st.st_mode):
        raise RegistryLoginError(f"refusing to write {path}: it is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise RegistryLoginError(f"refusing to write {path}: not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise RegistryLoginError(f"cannot read {path}: {exc.strerror}") from exc
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryLoginError(f"refusing to write {path}: it is not JSON") from exc
    if not isinstance(data, dict):
        raise RegistryLoginError(f"refusing to write {path}: it is not a JSON object")
    auths = data.get("auths")
    if auths is not None and not isinstance(auths, dict):
        raise RegistryLoginError(f'refusing to write {path}: its "auths" is not a JSON object')
    return data


def _make_dirs(path: Path, mode: int) -> None:
    """Create ``path`` and its missing parents with exactly ``mode``; existing ones stay."""
    missing = []
    while not path.exists():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)  # the umask may have taken bits away


def _write_object(path: Path, data: dict[str, Any]) -> None:
    _make_dirs(path.parent, AUTH_DIR_MODE)
    write_atomic(path, (json.dumps(data, indent="\t") + "\n").encode(), AUTH_FILE_MODE)


def set_auth(path: Path, host: str, user: str, password: str) -> str | None:
    """Merge ``host``'s credentials into the auth file at ``path`` (docker's and the
    containers' format are the same). Returns a warning when a credential helper
    configured in the file would be asked instead of this entry."""
    data = _read_object(path) or {}
    auths = data.setdefault("auths", {})
    auths[check_hostport(host)] = {
        "auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write_object(path, data)
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict) and helpers.get(host):
        return f"{path}: credHelpers names {helpers[host]!r} for {host}, which is asked first"
    if data.get("credsStore"):
        return f"{path}: credsStore {data['credsStore']!r} is asked first (docker)"
    return None


def remove_auth(path: Path, host: str) -> bool:
    """Remove ``host``'s entry from the auth file at ``path``; True if there was one."""
    data = _read_object(path)
    auths = (data or {}).get("auths") or {}
    if data is None or check_hostport(host) not in auths:
        return False
    del auths[host]
    _write_object(path, data)
    return True


# -- the CA -------------------------------------------------------------------------------------


def check_ca(ca_pem: bytes) -> bytes:
    """``ca_pem`` if it holds PEM certificates (it is about to be trusted)."""
    try:
        if x509.load_pem_x509_certificates(ca_pem):
            return ca_pem
    except ValueError:
        pass
    raise RegistryLoginError("the kubeconfig's certificate authority is not a PEM certificate")


def _host_dir(certs_dir: Path, host: str) -> Path:
    directory = certs_dir / check_hostport(host)
    if directory.is_symlink():
        raise RegistryLoginError(f"refusing to use {directory}: it is a symbolic link")
    return directory


def write_ca(certs_dir: Path, host: str, ca_pem: bytes) -> Path:
    """Write ``<certs_dir>/<host>/ca.crt``; returns its path."""
    directory = _host_dir(certs_dir, host)
    _make_dirs(directory, CERT_DIR_MODE)
    path = directory / CA_FILE
    write_atomic(path, check_ca(ca_pem), CERT_FILE_MODE)
    return path


def remove_ca(certs_dir: Path, host: str) -> list[Path]:
    """Remove ``<certs_dir>/<host>/ca.crt`` and then the directory if it is empty; returns
    what was removed. Anything else in the directory stays, and so does the directory."""
    directory = _host_dir(certs_dir, host)
    removed: list[Path] = []
    path = directory / CA_FILE
    try:
        path.unlink()
        removed.append(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise RegistryLoginError(f"cannot remove {path}: {exc.strerror}") from exc
    try:
        directory.rmdir()
        removed.append(directory)
    except OSError:
        pass  # absent, or holds something we did not write
    return removed


def login_files(auth_files: Sequence[Path], certs_dirs: Sequence[Path], info: RegistryInfo,
                token: str, ca_pem: bytes | None) -> tuple[list[Path], list[str]]:
    """Write the credentials into every auth file and the CA into every certs dir.

    Everything is checked before anything is written, so a refused file leaves the
    others untouched. Returns the files written and any warnings."""
    for path in auth_files:
        _read_object(path)
    for certs_dir in certs_dirs if ca_pem else []:
        _host_dir(certs_dir, info.host)
    if ca_pem:
        check_ca(ca_pem)
    written: list[Path] = []
    warnings: list[str] = []
    for path in auth_files:
        warning = set_auth(path, info.host, info.user, token)
        written.append(path)
        if warning:
            warnings.append(warning)
    if ca_pem:
        written += [write_ca(d, info.host, ca_pem) for d in certs_dirs]
    return written, warnings


def logout_files(auth_files: Sequence[Path], certs_dirs: Sequence[Path],
                 host: str) -> tuple[list[Path], list[Path]]:
    """Remove ``host`` from every auth file and its CA from every certs dir. Returns the
    auth files changed and the paths removed (both empty when already logged out)."""
    check_hostport(host)
    for path in auth_files:
        _read_object(path)
    for certs_dir in certs_dirs:
        _host_dir(certs_dir, host)
    edited = [path for path in auth_files if remove_auth(path, host)]
    removed = [p for certs_dir in certs_dirs for p in remove_ca(certs_dir, host)]
    return edited, removed
