"""The per-pod configuration the host hands to the pod init, on a raw config disk.

The host fills in a ``PodConfig`` (containers with their argv already
resolved from entrypoint/cmd/command/args, env, working directory, volume
mounts; volumes; network; restart policy) and ``write_config_disk()`` writes
it as a tar archive into a file that becomes a read-only virtio disk
(serial ``config``); the init unpacks it with ``tar -x -f /dev/vdX`` into RAM.
No mkfs, no loop device, and secrets never reach the kernel command line,
the domain XML, the console or a log: the file is written with mode 0600
and ``FileVolume`` never shows its contents in ``repr()``.

Inside the archive, values the init needs as shell variables are written as
shell assignments quoted with ``shlex.quote`` (data, not code: every value
is single-quoted), so no string the user controls is ever parsed by the
init:

    pod.sh               POD_HOSTNAME, POD_ADDRESS, POD_PREFIX, POD_GATEWAY,
                         POD_RESTART, POD_GRACE, POD_BACKOFF_MS, POD_BACKOFF_MAX_MS,
                         POD_CONTAINERS
    etc/hosts, etc/resolv.conf, etc/hostname
    volumes.sh           "volume INDEX emptyDir|files MEDIUM SIZE" per volume
    v/INDEX/...          configMap/secret files (FileVolume), with their modes
    c/INDEX/spec.sh      c_name, c_image, c_workdir, c_path, c_argv0
    c/INDEX/cmd.sh       "set -- NAME=VALUE... -- ARGV..."
    c/INDEX/mounts.sh    "mount_volume VOLUME_INDEX MOUNT_PATH ro|rw SUBPATH" per mount
"""

from __future__ import annotations

import io
import ipaddress
import re
import shlex
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal

from hypervisor.files import write_atomic

RestartPolicy = Literal["Always", "OnFailure", "Never"]
RESTART_POLICIES = ("Always", "OnFailure", "Never")
Medium = Literal["", "Memory"]

# What containerd's CRI plugin puts in an environment that has none of these.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$")
_HOST_ALIAS = re.compile(r"^[A-Za-z0-9]([-.A-Za-z0-9]{0,251}[A-Za-z0-9])?$")
_DNS_NAME = re.compile(r"^[A-Za-z0-9]([-.A-Za-z0-9]{0,251}[A-Za-z0-9])?\.?$")
_DNS_OPTION = re.compile(r"^[A-Za-z0-9_-]+(:[A-Za-z0-9_.-]+)?$")
_SIZE_LIMIT_MIN = 4096


class ConfigError(ValueError):
    """A pod configuration that no pod VM can run (a permanent error)."""


def _no_control(value: str, what: str, *, newline_ok: bool = False) -> None:
    if "\0" in value:
        raise ConfigError(f"{what} must not contain NUL")
    if not newline_ok and ("\n" in value or "\r" in value):
        raise ConfigError(f"{what} must be one line")


def _absolute_path(value: str, what: str) -> str:
    _no_control(value, what)
    if not value.startswith("/"):
        raise ConfigError(f"{what} must be an absolute path, not {value!r}")
    return value


def _relative_path(value: str, what: str) -> str:
    _no_control(value, what)
    parts = PurePosixPath(value).parts
    if not value or value.startswith("/") or not parts or ".." in parts or any(
            p in ("", ".") for p in value.split("/")):
        raise ConfigError(f"{what} must be a relative path without '..', not {value!r}")
    return value


@dataclass(frozen=True)
class VolumeMount:
    """A pod volume mounted into one container (``sub_path``: a path inside the volume)."""

    volume: str
    mount_path: str
    read_only: bool = False
    sub_path: str = ""

    def __post_init__(self) -> None:
        _absolute_path(self.mount_path, "mountPath")
        if PurePosixPath(self.mount_path) == PurePosixPath("/"):
            raise ConfigError("mountPath must not be /")
        if self.sub_path:
            _relative_path(self.sub_path, "subPath")


@dataclass(frozen=True)
class Container:
    """One container: ``image`` is the index of its image disk (serial ``image<N>``).

    ``argv`` is final (entrypoint/cmd/command/args already resolved by the
    host); ``env`` is ordered, as Kubernetes resolves it. ``working_dir``
    empty means "/". The runtime adds PATH, HOSTNAME and HOME when the
    environment lacks them, as containerd does.
    """

    name: str
    image: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str = "/"
    volume_mounts: tuple[VolumeMount, ...] = ()

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.name):
            raise ConfigError(f"container name {self.name!r} is not a DNS label")
        if self.image < 0:
            raise ConfigError(f"container {self.name}: image index must be >= 0")
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", tuple((str(k), str(v)) for k, v in self.env))
        object.__setattr__(self, "volume_mounts", tuple(self.volume_mounts))
        if not self.argv or not self.argv[0]:
            raise ConfigError(f"container {self.name}: no command (argv is empty)")
        for arg in self.argv:
            _no_control(arg, f"container {self.name}: argument", newline_ok=True)
        _no_control(self.argv[0], f"container {self.name}: command")
        for key, value in self.env:
            if not key or "=" in key:
                raise ConfigError(f"container {self.name}: bad environment variable name {key!r}")
            _no_control(key, f"container {self.name}: environment variable name")
            _no_control(value, f"container {self.name}: value of {key}", newline_ok=True)
        if not self.working_dir:
            object.__setattr__(self, "working_dir", "/")
        _absolute_path(self.working_dir, f"container {self.name}: workingDir")
        paths = [PurePosixPath(m.mount_path) for m in self.volume_mounts]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"container {self.name}: mountPaths are not unique")

    def effective_env(self, hostname: str) -> tuple[tuple[str, str], ...]:
        """``env`` with containerd's defaults for PATH, HOSTNAME and HOME appended."""
        names = {key for key, _ in self.env}
        extra = [(key, value) for key, value in (("PATH", DEFAULT_PATH), ("HOSTNAME", hostname),
                                                 ("HOME", "/root")) if key not in names]
        return self.env + tuple(extra)


@dataclass(frozen=True)
class EmptyDirVolume:
    """An emptyDir: on the scratch disk (medium ""), or tmpfs (medium "Memory").

    ``size_limit`` (bytes) caps a Memory emptyDir (tmpfs ``size=``); on the
    scratch disk it is not enforced.
    """

    name: str
    medium: Medium = ""
    size_limit: int | None = None

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.name):
            raise ConfigError(f"volume name {self.name!r} is not a DNS label")
        if self.medium not in ("", "Memory"):
            raise ConfigError(f"emptyDir medium must be '' or 'Memory', not {self.medium!r}")
        if self.size_limit is not None and self.size_limit < _SIZE_LIMIT_MIN:
            raise ConfigError(f"emptyDir sizeLimit must be at least {_SIZE_LIMIT_MIN} bytes")


@dataclass(frozen=True, repr=False)
class FileVolume:
    """configMap/secret data: {relative path: (content, mode)}, kept in the guest's RAM.

    Mounted read-only, as Kubernetes mounts such volumes. ``repr()`` shows the
    paths, never the contents.
    """

    name: str
    files: Mapping[str, tuple[bytes, int]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.name):
            raise ConfigError(f"volume name {self.name!r} is not a DNS label")
        files: dict[str, tuple[bytes, int]] = {}
        for path, (data, mode) in sorted(self.files.items()):
            _relative_path(path, f"volume {self.name}: file path")
            if not isinstance(data, bytes):
                raise ConfigError(f"volume {self.name}: {path}: content must be bytes")
            if not 0 <= mode <= 0o777:
                raise ConfigError(f"volume {self.name}: {path}: mode {mode:o} is not 0-0777")
            files[path] = (data, mode)
        for path in files:
            for parent in PurePosixPath(path).parents:
                if str(parent) in files:
                    raise ConfigError(f"volume {self.name}: {parent} is both a file and a directory")
        object.__setattr__(self, "files", MappingProxyType(files))

    def __repr__(self) -> str:
        return f"FileVolume(name={self.name!r}, files={sorted(self.files)!r})"


Volume = EmptyDirVolume | FileVolume


@dataclass(frozen=True)
class HostAlias:
    """An extra /etc/hosts line (Kubernetes hostAliases)."""

    ip: str
    hostnames: tuple[str, ...]

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "ip", str(ipaddress.ip_address(self.ip)))
        except ValueError as exc:
            raise ConfigError(f"host alias address {self.ip!r} is not an IP address") from exc
        object.__setattr__(self, "hostnames", tuple(self.hostnames))
        if not self.hostnames or not all(_HOST_ALIAS.match(h) for h in self.hostnames):
            raise ConfigError(f"bad host alias names {self.hostnames!r}")


@dataclass(frozen=True)
class PodConfig:
    """Everything the pod init needs.

    ``address`` is the pod IP with its prefix ("198.18.200.5/24"), None for a
    pod without a NIC. ``backoff_base_seconds`` and ``backoff_max_seconds``
    are Kubernetes' CrashLoopBackOff (10 s doubling to 300 s); tests shorten them.
    """

    hostname: str
    containers: tuple[Container, ...]
    volumes: tuple[Volume, ...] = ()
    address: str | None = None
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    host_aliases: tuple[HostAlias, ...] = ()
    restart_policy: RestartPolicy = "Always"
    termination_grace_period_seconds: int = 30
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not _HOSTNAME.match(self.hostname):
            raise ConfigError(f"hostname {self.hostname!r} is not a DNS label")
        for name in ("containers", "volumes", "nameservers", "searches", "dns_options",
                     "host_aliases"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.containers:
            raise ConfigError("a pod needs at least one container")
        names = [c.name for c in self.containers]
        if len(set(names)) != len(names):
            raise ConfigError(f"container names are not unique: {names}")
        volumes = [v.name for v in self.volumes]
        if len(set(volumes)) != len(volumes):
            raise ConfigError(f"volume names are not unique: {volumes}")
        for container in self.containers:
            for mount in container.volume_mounts:
                if mount.volume not in volumes:
                    raise ConfigError(f"container {container.name}: no volume {mount.volume!r}")
        if self.address is not None:
            try:
                interface = ipaddress.ip_interface(self.address)
            except ValueError as exc:
                raise ConfigError(f"pod address {self.address!r} is not ADDRESS/PREFIX") from exc
            if "/" not in self.address:
                raise ConfigError(f"pod address {self.address!r} needs a prefix length")
            object.__setattr__(self, "address", str(interface))
            if self.gateway is not None:
                try:
                    gateway = ipaddress.ip_address(self.gateway)
                except ValueError as exc:
                    raise ConfigError(f"gateway {self.gateway!r} is not an IP address") from exc
                if gateway.version != interface.version:
                    raise ConfigError("gateway and pod address are of different IP versions")
                object.__setattr__(self, "gateway", str(gateway))
        elif self.gateway is not None:
            raise ConfigError("a gateway needs a pod address")
        for server in self.nameservers:
            try:
                ipaddress.ip_address(server)
            except ValueError as exc:
                raise ConfigError(f"nameserver {server!r} is not an IP address") from exc
        for search in self.searches:
            if not _DNS_NAME.match(search):
                raise ConfigError(f"search domain {search!r} is not a DNS name")
        for option in self.dns_options:
            if not _DNS_OPTION.match(option):
                raise ConfigError(f"bad DNS option {option!r}")
        if self.restart_policy not in RESTART_POLICIES:
            raise ConfigError(f"restartPolicy must be one of {RESTART_POLICIES}")
        if not 0 <= self.termination_grace_period_seconds <= 86400 * 7:
            raise ConfigError("terminationGracePeriodSeconds must be 0 to a week")
        if not 0 < self.backoff_base_seconds <= self.backoff_max_seconds <= 86400:
            raise ConfigError("need 0 < backoff_base_seconds <= backoff_max_seconds <= 86400")

    @property
    def ip(self) -> str | None:
        return None if self.address is None else self.address.split("/")[0]

    @property
    def image_count(self) -> int:
        """How many image disks the containers refer to (indices 0..N-1)."""
        return max(c.image for c in self.containers) + 1


# -- generated files -----------------------------------------------------

def hosts_file(config: PodConfig) -> str:
    """/etc/hosts as the kubelet writes it."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if config.ip:
        lines.append(f"{config.ip}\t{config.hostname}")
    if config.host_aliases:
        lines.append("")
        lines.append("# Entries added by HostAliases.")
        lines += [f"{alias.ip}\t{chr(9).join(alias.hostnames)}" for alias in config.host_aliases]
    return "\n".join(lines) + "\n"


def resolv_conf(config: PodConfig) -> str:
    lines = []
    if config.searches:
        lines.append("search " + " ".join(config.searches))
    lines += [f"nameserver {server}" for server in config.nameservers]
    if config.dns_options:
        lines.append("options " + " ".join(config.dns_options))
    return "\n".join(lines) + ("\n" if lines else "")


def _assignments(values: Sequence[tuple[str, object]]) -> str:
    return "".join(f"{key}={shlex.quote(str(value))}\n" for key, value in values)


def _call(*words: object) -> str:
    return " ".join(shlex.quote(str(word)) for word in words) + "\n"


def config_files(config: PodConfig) -> dict[str, tuple[bytes, int]]:
    """The archive's members: {path: (content, mode)} (directories are implied)."""
    address, _, prefix = (config.address or "").partition("/")
    files: dict[str, tuple[bytes, int]] = {
        "pod.sh": (_assignments([
            ("POD_HOSTNAME", config.hostname),
            ("POD_ADDRESS", address),
            ("POD_PREFIX", prefix),
            ("POD_GATEWAY", config.gateway or ""),
            ("POD_RESTART", config.restart_policy),
            ("POD_GRACE", config.termination_grace_period_seconds),
            ("POD_BACKOFF_MS", max(1, round(config.backoff_base_seconds * 1000))),
            ("POD_BACKOFF_MAX_MS", max(1, round(config.backoff_max_seconds * 1000))),
            ("POD_CONTAINERS", len(config.containers)),
        ]).encode(), 0o644),
        "etc/hosts": (hosts_file(config).encode(), 0o644),
        "etc/resolv.conf": (resolv_conf(config).encode(), 0o644),
        "etc/hostname": (f"{config.hostname}\n".encode(), 0o644),
    }
    index = {volume.name: i for i, volume in enumerate(config.volumes)}
    volume_lines = []
    for i, volume in enumerate(config.volumes):
        if isinstance(volume, EmptyDirVolume):
            size = "" if volume.size_limit is None else f"{volume.size_limit // 1024}k"
            volume_lines.append(_call("volume", i, "emptyDir", volume.medium or "-", size))
        else:
            volume_lines.append(_call("volume", i, "files", "-", ""))
            for path, (data, mode) in volume.files.items():
                files[f"v/{i}/{path}"] = (data, mode)
    files["volumes.sh"] = ("".join(volume_lines).encode(), 0o644)
    for i, container in enumerate(config.containers):
        env = container.effective_env(config.hostname)
        path = next((value for key, value in env if key == "PATH"), DEFAULT_PATH)
        files[f"c/{i}/spec.sh"] = (_assignments([
            ("c_name", container.name),
            ("c_image", container.image),
            ("c_workdir", container.working_dir),
            ("c_path", path),
            ("c_argv0", container.argv[0]),
        ]).encode(), 0o644)
        files[f"c/{i}/cmd.sh"] = (("set -- " + " ".join(
            [shlex.quote(f"{key}={value}") for key, value in env] + ["--"]
            + [shlex.quote(arg) for arg in container.argv]) + "\n").encode(), 0o600)
        files[f"c/{i}/mounts.sh"] = ("".join(
            _call("mount_volume", index[m.volume], m.mount_path, "ro" if m.read_only else "rw",
                  m.sub_path)
            for m in container.volume_mounts).encode(), 0o644)
    return files


def config_archive(config: PodConfig) -> bytes:
    """The tar archive (GNU format, deterministic: uid/gid 0, mtime 0, sorted)."""
    files = config_files(config)
    dirs: set[str] = set()
    for path in files:
        dirs.update(str(parent) for parent in PurePosixPath(path).parents if str(parent) != ".")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for directory in sorted(dirs):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_config_disk(config: PodConfig, path: Path) -> Path:
    """Write the config disk (a raw tar archive, mode 0600) atomically; return ``path``."""
    path = Path(path)
    write_atomic(path, config_archive(config), 0o600)
    return path
