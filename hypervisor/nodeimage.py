"""Kubernetes node images: Debian 12 with containerd and kubeadm, kubelet and kubectl.

A node image is the Debian base image of ``hypervisor.images`` plus, through
an ``ImageRecipe``:

- Debian's ``containerd``, ``runc`` and ``containernetworking-plugins`` (the
  CNI plugins, in ``/usr/lib/cni``, linked into ``/opt/cni/bin`` where
  network add-ons expect them) and what kubelet runs (``iptables``,
  ``conntrack``, ``ebtables``, ``ethtool``, ``socat``);
- what kubeadm's preflight checks need: the ``overlay`` and ``br_netfilter``
  modules loaded at boot, ``net.ipv4.ip_forward=1`` and the bridge
  netfilter sysctls, containerd's runc with ``SystemdCgroup = true``, and no
  swap (the image has none: ``/etc/fstab`` lists only the root file system);
- kubeadm, kubelet and kubectl of exactly one Kubernetes version, from one of:

  * a directory of release files (``scan_offline_dir``; air-gapped hosts):
    ``.deb`` files as the Kubernetes package repository publishes them
    (``kubeadm_1.31.4-1.1_amd64.deb``; ``cri-tools_*`` and
    ``kubernetes-cni_*`` too when the kubeadm/kubelet packages depend on
    them), or release tarballs (``kubernetes-node-linux-amd64.tar.gz``,
    ``kubernetes-server-linux-amd64.tar.gz``), or bare binaries as
    dl.k8s.io publishes them (``kubeadm``, ``kubelet``, ``kubectl``;
    optionally ``crictl``). Every file is checksummed before anything reads
    it as a package or an archive: by a ``SHA256SUMS`` file in the directory
    (``<hex>  <path relative to it>``) or a ``<file>.sha256`` next to it (just
    the hex digest, dl.k8s.io's format). A file without a checksum, with a
    wrong one, or of another version is refused, naming the file, and
    files are checksummed again while they are copied into the build.
    Versions come from a .deb's control fields, and for tarballs and
    binaries from their names: ``kubeadm-v1.31.4``, or a directory named
    ``v1.31.4`` on the way to them (dl.k8s.io's ``v1.31.4/bin/linux/amd64/``);
  * the Kubernetes package repository
    (``https://pkgs.k8s.io/core:/stable:/v1.MINOR/deb/``) when this host
    reaches it (``repository_reachable``: at most five seconds); its signing
    key comes from the same repository, apt checks every package against
    it, and the exact package versions and their SHA256 (from the
    repository's index) go into the cache key.

Release tarballs are read as hostile: every member's name must stay inside
the archive (no absolute names, no ``..``: ``hypervisor.oci.layers``'
``split_name``), links must point inside it, and device nodes and FIFOs
refuse the whole archive. Only the wanted binaries are ever written, as new
regular files; nothing else of the archive is extracted.

No API objects here: callers name the image and publish it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import posixpath
import re
import shlex
import stat
import tarfile
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hypervisor.images import (AptRepository, BuiltImage, ImageError, ImageRecipe, Prepared,
                               Progress, build_debian_image, sha256_file)
from hypervisor.oci.errors import ImagePullError
from hypervisor.oci.layers import _SafeTarInfo, split_name
from hypervisor.proc import ProcessError, run

LOG = logging.getLogger(__name__)

# Bump when the node recipe changes in a way its fingerprint cannot see.
NODE_RECIPE_VERSION = 1
RELEASE = "bookworm"
SIZE_GIB = 8

KUBE_BINARIES = ("kubeadm", "kubelet", "kubectl")
OPTIONAL_DEBS = ("cri-tools", "kubernetes-cni")
NODE_PACKAGES: tuple[str, ...] = (
    "containerd", "runc", "containernetworking-plugins",
    "iptables", "conntrack", "ebtables", "ethtool", "socat", "kmod",
)
REPOSITORY = "https://pkgs.k8s.io/core:/stable:/v1.{minor}/deb/"
REPOSITORY_NAME = "kubernetes"
PROBE_TIMEOUT = 5.0
FETCH_TIMEOUT = 60.0
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_BINARY_BYTES = 1024 ** 3
MAX_SCAN_DEPTH = 6
CHUNK = 1024 * 1024

_VERSION = re.compile(r"^v?(1)\.(\d{1,3})\.(\d{1,4})$")
_DIR_VERSION = re.compile(r"^v(\d+\.\d+\.\d+)$")
_DEB = re.compile(r"^(kubeadm|kubelet|kubectl|kubernetes-cni|cri-tools)_([^_/]+)_(amd64|all)\.deb$")
_TARBALL = re.compile(r"^kubernetes-(server|node)(?:-(v?\d+\.\d+\.\d+))?-linux-amd64\.tar\.gz$")
_CRICTL_TARBALL = re.compile(r"^crictl-(v?\d+\.\d+\.\d+)-linux-amd64\.tar\.gz$")
_BINARY = re.compile(r"^(kubeadm|kubelet|kubectl|crictl)(?:-(v?\d+\.\d+\.\d+))?$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

NODE_FILES: dict[str, str] = {
    "etc/modules-load.d/kubernetes.conf": "overlay\nbr_netfilter\n",
    "etc/sysctl.d/90-kubernetes.conf":
        "net.ipv4.ip_forward = 1\n"
        "net.bridge.bridge-nf-call-iptables = 1\n"
        "net.bridge.bridge-nf-call-ip6tables = 1\n",
    # kubelet uses the systemd cgroup driver (kubeadm's default since v1.22).
    "etc/containerd/config.toml":
        "version = 2\n\n"
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n"
        "  runtime_type = \"io.containerd.runc.v2\"\n\n"
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n"
        "  SystemdCgroup = true\n\n"
        "[plugins.\"io.containerd.grpc.v1.cri\".cni]\n"
        "  bin_dir = \"/opt/cni/bin\"\n"
        "  conf_dir = \"/etc/cni/net.d\"\n",
    "etc/crictl.yaml": "runtime-endpoint: unix:///run/containerd/containerd.sock\n"
                       "image-endpoint: unix:///run/containerd/containerd.sock\n",
}
# Debian installs the CNI plugins in /usr/lib/cni; network add-ons and containerd's
# configuration above look in /opt/cni/bin.
CNI_LINKS_HOOK = ('mkdir -p "$1/opt/cni/bin" && for p in "$1"/usr/lib/cni/*; do '
                  'n=$(basename "$p"); [ -e "$1/opt/cni/bin/$n" ] || '
                  'ln -s "/usr/lib/cni/$n" "$1/opt/cni/bin/$n"; done')
HOLD_HOOK = 'chroot "$1" apt-mark hold kubeadm kubelet kubectl'

# What the kubernetes/release packages install for kubelet, for binaries that come
# without packages.
KUBELET_UNIT = """[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
KUBEADM_DROPIN = """[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf \
--kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS \
$KUBELET_EXTRA_ARGS
"""


class NodeImageError(ImageError):
    """Kubernetes binaries were refused or a node image could not be built (one line)."""


class BinariesMissing(NodeImageError):
    """No Kubernetes binaries of the version are at hand on this host."""


@dataclass(frozen=True)
class KubeVersion:
    minor: int
    patch: int
    major: int = 1

    @property
    def tag(self) -> str:
        return f"v{self.plain}"

    @property
    def plain(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def __str__(self) -> str:
        return self.tag


def parse_version(text: str) -> KubeVersion:
    """``v1.31.4`` or ``1.31.4``; anything else is refused with one readable line."""
    match = _VERSION.match(text.strip())
    if not match:
        raise NodeImageError(f"invalid Kubernetes version {text!r}: expected v1.MINOR.PATCH, "
                             "for example v1.31.4")
    return KubeVersion(minor=int(match.group(2)), patch=int(match.group(3)))


def import_hint(version: KubeVersion) -> str:
    return (f"lab tkr build {version.tag} --from DIR (kubeadm, kubelet and kubectl .deb files "
            "or release binaries, each with its .sha256)")


def missing_message(version: KubeVersion) -> str:
    return (f"no Kubernetes {version.tag} binaries: the Kubernetes package repository is not "
            "reachable from this host and no --from directory was given; import them with: "
            f"{import_hint(version)}")


# -- where binaries come from -----------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    """One release file, checksummed."""

    path: Path
    sha256: str
    kind: str  # "deb", "tarball" or "binary"
    package: str = ""  # deb: its Package field
    version: str = ""  # deb: its Version field; otherwise the version its name says
    depends: tuple[str, ...] = ()  # deb: package names it depends on
    members: Mapping[str, str] = field(default_factory=dict)  # tarball: binary -> member name

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class KubernetesSource:
    """Where one version's kubeadm, kubelet and kubectl come from."""

    version: KubeVersion
    kind: str  # "debs", "binaries" or "repository"
    debs: tuple[Artifact, ...] = ()
    binaries: Mapping[str, tuple[Artifact, str]] = field(default_factory=dict)  # name -> (file, member)
    repository: AptRepository | None = None
    packages: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # repo: name -> fields

    def describe(self) -> str:
        if self.kind == "debs":
            return ", ".join(a.name for a in self.debs)
        if self.kind == "binaries":
            return ", ".join(sorted({f"{a.name}" for a, _ in self.binaries.values()}))
        return REPOSITORY.format(minor=self.version.minor)

    def inputs(self) -> dict[str, Any]:
        """Everything the image's Kubernetes part depends on, for the cache key."""
        out: dict[str, Any] = {"kubernetes": self.version.tag, "kind": self.kind,
                               "recipe": NODE_RECIPE_VERSION}
        if self.kind == "debs":
            out["debs"] = {a.package: {"version": a.version, "sha256": a.sha256}
                           for a in self.debs}
        elif self.kind == "binaries":
            out["binaries"] = {name: {"sha256": a.sha256, "member": member}
                               for name, (a, member) in sorted(self.binaries.items())}
        else:
            out["packages"] = {name: {"version": f.get("Version", ""),
                                      "sha256": f.get("SHA256", "")}
                               for name, f in sorted(self.packages.items())}
        return out


def _expected_digests(directory: Path) -> dict[str, str]:
    """``SHA256SUMS`` in ``directory``: path relative to it -> digest."""
    path = directory / "SHA256SUMS"
    if not path.is_file():
        return {}
    sums: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        name = name.strip().removeprefix("*").removeprefix("./")
        if not _HEX64.match(digest) or not name:
            raise NodeImageError(f"{path}: line {number} is not '<sha256>  <file>'")
        sums[name] = digest.lower()
    return sums


def _expected_digest(directory: Path, path: Path, sums: Mapping[str, str]) -> str:
    rel = path.relative_to(directory).as_posix()
    found = {d for d in (sums.get(rel), sums.get(path.name) if "/" not in rel else None) if d}
    side = path.with_name(path.name + ".sha256")
    if side.is_file() and not side.is_symlink():
        words = side.read_text(errors="replace").split()
        if not words or not _HEX64.match(words[0]):
            raise NodeImageError(f"{side.name}: not a SHA-256 digest")
        found.add(words[0].lower())
    if not found:
        raise NodeImageError(f"{rel} has no checksum: add {path.name}.sha256 next to it or a "
                             "line for it in SHA256SUMS")
    if len(found) > 1:
        raise NodeImageError(f"{rel}: SHA256SUMS and {path.name}.sha256 disagree")
    return found.pop()


def _version_from_path(path: Path, named: str | None) -> str | None:
    if named:
        return named.removeprefix("v")
    for part in reversed(path.parent.parts):
        match = _DIR_VERSION.match(part)
        if match:
            return match.group(1)
    return None


def _walk(directory: Path) -> Iterator[Path]:
    """Regular files under ``directory`` (not following links), sorted, a few levels deep."""
    stack: list[tuple[Path, int]] = [(directory, 0)]
    while stack:
        current, depth = stack.pop()
        subdirs = []
        for entry in sorted(os.scandir(current), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                yield Path(entry.path)
        if depth < MAX_SCAN_DEPTH:
            stack.extend((d, depth + 1) for d in reversed(subdirs))


def _deb_fields(path: Path) -> dict[str, str]:
    try:
        out = run(["dpkg-deb", "--field", str(path), "Package", "Version", "Depends",
                   "Pre-Depends"], timeout=60).stdout
    except ProcessError as exc:
        raise NodeImageError(f"{path.name} is not a readable .deb file") from exc
    fields: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        if line[:1].isspace() and current:
            fields[current] += " " + line.strip()
            continue
        key, sep, value = line.partition(":")
        if sep:
            current = key.strip()
            fields[current] = value.strip()
    return fields


def _depends(text: str) -> tuple[str, ...]:
    names = []
    for clause in text.split(","):
        # "a (>= 1) | b": the first alternative names what is needed
        name = clause.split("|")[0].strip().split(" ")[0].split(":")[0]
        if name:
            names.append(name)
    return tuple(names)


def _upstream(deb_version: str) -> str:
    """``1:1.31.4-1.1`` -> ``1.31.4``."""
    version = deb_version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def scan_offline_dir(directory: Path, version: KubeVersion) -> KubernetesSource:
    """The Kubernetes ``version`` release files in ``directory``, each checksummed and checked.

    Raises ``NodeImageError`` (one line naming the file) for a file without a
    checksum, with a wrong one, of another version, a hostile tarball, or a
    directory without a complete set of kubeadm, kubelet and kubectl."""
    if not directory.is_dir():
        raise NodeImageError(f"--from {directory}: not a directory")
    directory = directory.resolve()
    sums = _expected_digests(directory)
    debs: dict[str, Artifact] = {}
    tarballs: list[Artifact] = []
    bare: dict[str, Artifact] = {}
    for path in _walk(directory):
        name = path.name
        deb, tar, crictl_tar, binary = (_DEB.match(name), _TARBALL.match(name),
                                        _CRICTL_TARBALL.match(name), _BINARY.match(name))
        if not (deb or tar or crictl_tar or binary):
            continue
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            raise NodeImageError(f"{rel} is a symbolic link: put the file itself in the directory")
        expected = _expected_digest(directory, path, sums)
        actual = sha256_file(path)
        if actual != expected:
            raise NodeImageError(f"{rel}: checksum mismatch (expected sha256 {expected[:16]}…, "
                                 f"the file has {actual[:16]}…)")
        if deb:
            fields = _deb_fields(path)
            package, deb_version = fields.get("Package", ""), fields.get("Version", "")
            if package != deb.group(1):
                raise NodeImageError(f"{rel} contains the package {package!r}, not {deb.group(1)}")
            if _upstream(deb.group(2)) != _upstream(deb_version):
                raise NodeImageError(f"{rel} contains version {deb_version}, not what its name "
                                     "says")
            if package in KUBE_BINARIES and _upstream(deb_version) != version.plain:
                raise NodeImageError(f"{rel} is Kubernetes {_upstream(deb_version)}, not "
                                     f"{version.plain}")
            if package in debs:
                raise NodeImageError(f"{rel}: more than one {package} .deb file")
            depends = _depends(fields.get("Pre-Depends", "")) + _depends(fields.get("Depends", ""))
            debs[package] = Artifact(path, actual, "deb", package, deb_version, depends)
            continue
        if crictl_tar:
            members = _read_tarball(path, {"crictl": ("crictl",)})
            tarballs.append(Artifact(path, actual, "tarball", members=members))
            continue
        named = tar.group(2) if tar else binary.group(2) if binary else None
        component = binary.group(1) if binary else ""
        found = _version_from_path(path, named)
        if component != "crictl":
            if found is None:
                raise NodeImageError(f"cannot tell which Kubernetes version {rel} is: name it "
                                     f"{(component or 'kubernetes-node') + '-' + version.tag} or "
                                     f"keep it under a directory named {version.tag}")
            if found != version.plain:
                raise NodeImageError(f"{rel} is Kubernetes {found}, not {version.plain}")
        if tar:
            prefix = f"kubernetes/{tar.group(1)}/bin/"
            members = _read_tarball(path, {b: (prefix + b,) for b in KUBE_BINARIES})
            tarballs.append(Artifact(path, actual, "tarball", version=found or "",
                                     members=members))
        else:
            if component in bare:
                raise NodeImageError(f"{rel}: more than one {component} binary")
            bare[component] = Artifact(path, actual, "binary", version=found or "")
    return _choose(directory, version, debs, tarballs, bare)


def _choose(directory: Path, version: KubeVersion, debs: dict[str, Artifact],
            tarballs: list[Artifact], bare: dict[str, Artifact]) -> KubernetesSource:
    if all(b in debs for b in KUBE_BINARIES):
        for name in KUBE_BINARIES:
            for needed in debs[name].depends:
                if needed in OPTIONAL_DEBS and needed not in debs:
                    raise NodeImageError(f"{debs[name].name} depends on {needed}, and {directory} "
                                         f"has no {needed}_*.deb")
        chosen = tuple(debs[n] for n in (*KUBE_BINARIES, *OPTIONAL_DEBS) if n in debs)
        return KubernetesSource(version, "debs", debs=chosen)
    binaries: dict[str, tuple[Artifact, str]] = {n: (a, "") for n, a in bare.items()}
    # node tarballs carry the three binaries and are smaller: prefer them to server ones
    for tarball in sorted(tarballs, key=lambda a: "server" in a.name):
        for name, member in tarball.members.items():
            binaries.setdefault(name, (tarball, member))
    if all(b in binaries for b in KUBE_BINARIES):
        return KubernetesSource(version, "binaries", binaries=binaries)
    have = sorted(set(debs) | set(binaries))
    lacking = [b for b in KUBE_BINARIES if b not in (debs if debs and not binaries else binaries)]
    raise NodeImageError(f"{directory} has no complete set of Kubernetes {version.tag} binaries: "
                         f"missing {', '.join(lacking)}"
                         + (f" (found {', '.join(have)})" if have else ""))


# -- release tarballs ---------------------------------------------------------------------------


def _tar_problem(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` makes its archive unacceptable, or None."""
    try:
        parts = split_name(member.name)
    except ImagePullError as exc:
        return str(exc).removeprefix("refusing the entry ")
    if member.isdev() or member.isfifo():
        return f"{member.name!r}: a device node or FIFO"
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/"):
            return f"{member.name!r}: a link to the absolute path {target!r}"
        base = "/".join(parts[:-1]) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            return f"{member.name!r}: a link out of the archive ({target!r})"
    elif not (member.isreg() or member.isdir()):
        return f"{member.name!r}: an entry of unknown type"
    return None


class _HashingReader:
    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size if size is not None and size >= 0 else CHUNK)
        self.hash.update(data)
        return data


def _read_tarball(path: Path, wanted: Mapping[str, tuple[str, ...]],
                  dest: Path | None = None, sha256: str | None = None) -> dict[str, str]:
    """Check every member of the gzip tarball ``path``; return binary -> member for ``wanted``
    regular files. With ``dest``, write those binaries there (new files, mode 0755); with
    ``sha256``, the compressed stream must hash to it."""
    names = {member: binary for binary, members in wanted.items() for member in members}
    found: dict[str, str] = {}
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=reader, mode="r|gz",  # type: ignore[call-overload]
                              tarinfo=_SafeTarInfo) as tar:
                for member in tar:
                    problem = _tar_problem(member)
                    if problem:
                        raise NodeImageError(f"refusing {path.name}: {problem}")
                    key = "/".join(split_name(member.name))
                    binary = names.get(key)
                    if binary is None or not member.isreg():
                        continue
                    if member.size > MAX_BINARY_BYTES:
                        raise NodeImageError(f"refusing {path.name}: {key} is too large")
                    found[binary] = key
                    if dest is not None:
                        source = tar.extractfile(member)
                        assert source is not None
                        _write_new(dest / binary, source, 0o755)
            while reader.read(CHUNK):
                pass
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise NodeImageError(f"refusing {path.name}: not a readable .tar.gz "
                                 f"({str(exc)[:120] or type(exc).__name__})") from None
    if sha256 is not None and reader.hash.hexdigest() != sha256:
        raise NodeImageError(f"{path.name} changed after it was checksummed")
    return found


def _write_new(dest: Path, source: IO[bytes], mode: int) -> str:
    """Copy ``source`` into the new file ``dest``; return its sha256."""
    digest = hashlib.sha256()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
        os.fchmod(out.fileno(), mode)
    return digest.hexdigest()


def _copy_verified(artifact: Artifact, dest: Path, mode: int) -> None:
    fd = os.open(artifact.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise NodeImageError(f"{artifact.name} is not a regular file")
        digest = _write_new(dest, src, mode)
    if digest != artifact.sha256:
        dest.unlink()
        raise NodeImageError(f"{artifact.name} changed after it was checksummed")


# -- the Kubernetes package repository ----------------------------------------------------------


def repository_url(version: KubeVersion) -> str:
    return REPOSITORY.format(minor=version.minor)


def repository_reachable(version: KubeVersion, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the repository answers within ``timeout`` seconds (name lookup included)."""
    answer: list[bool] = []

    def probe() -> None:
        request = urllib.request.Request(repository_url(version) + "Release", method="HEAD",
                                         headers={"User-Agent": "pacific-lab"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                answer.append(resp.status < 400)
        except (urllib.error.URLError, OSError, ValueError):
            answer.append(False)

    worker = threading.Thread(target=probe, name="k8s-repo-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(answer and answer[0])


def _fetch(url: str, limit: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "pacific-lab"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as resp:
            data: bytes = resp.read(limit + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise NodeImageError(f"fetching {url} failed: {getattr(exc, 'reason', exc)}") from exc
    if len(data) > limit:
        raise NodeImageError(f"{url} is larger than {limit} bytes")
    return data


def dearmor(armored: bytes) -> bytes:
    """An ASCII-armored OpenPGP key block as the binary keyring apt's ``signed-by`` reads."""
    lines = armored.decode("ascii", errors="replace").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP"))
        end = next(i for i, line in enumerate(lines) if line.startswith("-----END PGP"))
        body = lines[start + 1:end]
        blank = next(i for i, line in enumerate(body) if not line.strip())
    except StopIteration:
        raise NodeImageError("the repository's signing key is not an armored OpenPGP key") \
            from None
    data = "".join(line.strip() for line in body[blank + 1:] if not line.startswith("="))
    try:
        return base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise NodeImageError("the repository's signing key does not decode") from exc


def parse_packages(text: str) -> list[dict[str, str]]:
    """A Debian ``Packages`` index as a list of field maps."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if "Package" in fields:
            out.append(fields)
    return out


def pick_packages(entries: list[dict[str, str]], version: KubeVersion) -> dict[str, dict[str, str]]:
    """kubeadm, kubelet and kubectl of ``version`` (amd64, the latest package revision)."""
    chosen: dict[str, dict[str, str]] = {}
    for fields in entries:
        name = fields["Package"]
        if name not in KUBE_BINARIES or fields.get("Architecture") not in ("amd64", "all"):
            continue
        if _upstream(fields.get("Version", "")) != version.plain:
            continue
        if name not in chosen or _revision(fields["Version"]) > _revision(chosen[name]["Version"]):
            chosen[name] = fields
    lacking = [n for n in KUBE_BINARIES if n not in chosen]
    if lacking:
        raise NodeImageError(f"the Kubernetes package repository has no {', '.join(lacking)} "
                             f"{version.plain}")
    return chosen


def _revision(deb_version: str) -> tuple[int, ...]:
    rev = deb_version.rsplit("-", 1)[-1] if "-" in deb_version else "0"
    return tuple(int(x) for x in re.findall(r"\d+", rev))


def repository_source(version: KubeVersion) -> KubernetesSource:
    """The repository's signing key and the exact packages of ``version``."""
    base = repository_url(version)
    keyring = dearmor(_fetch(base + "Release.key", 1024 * 1024))
    try:
        index = _fetch(base + "Packages", MAX_INDEX_BYTES)
    except NodeImageError:
        import gzip

        index = gzip.decompress(_fetch(base + "Packages.gz", MAX_INDEX_BYTES))
    chosen = pick_packages(parse_packages(index.decode(errors="replace")), version)
    repo = AptRepository(REPOSITORY_NAME, f"{base} /", keyring)
    return KubernetesSource(version, "repository", repository=repo, packages=chosen)


def find_source(version: KubeVersion, from_dir: Path | None) -> KubernetesSource:
    """``from_dir`` when given, else the repository when reachable, else ``BinariesMissing``."""
    if from_dir is not None:
        return scan_offline_dir(from_dir, version)
    if repository_reachable(version):
        return repository_source(version)
    raise BinariesMissing(missing_message(version))


# -- the recipe ---------------------------------------------------------------------------------


def node_recipe(name: str, source: KubernetesSource) -> ImageRecipe:
    packages = NODE_PACKAGES
    hooks: tuple[str, ...] = (CNI_LINKS_HOOK,)
    repositories: tuple[AptRepository, ...] = ()
    if source.kind == "repository":
        assert source.repository is not None
        repositories = (source.repository,)
        packages += tuple(f"{n}={f['Version']}" for n, f in sorted(source.packages.items()))
    if source.kind in ("repository", "debs"):
        hooks += (HOLD_HOOK,)

    def prepare(staging: Path) -> Prepared:
        return _stage(source, staging)

    return ImageRecipe(name=name, packages=packages, repositories=repositories,
                       files=NODE_FILES, hooks=hooks,
                       prepare=prepare if source.kind != "repository" else None,
                       inputs=source.inputs())


def _stage(source: KubernetesSource, staging: Path) -> Prepared:
    """Copy (and checksum again) what the build installs into ``staging``."""
    if source.kind == "debs":
        debs = staging / "debs"
        debs.mkdir(mode=0o755)
        staging.chmod(0o755)
        paths = []
        for artifact in source.debs:
            dest = debs / artifact.name
            _copy_verified(artifact, dest, 0o644)
            paths.append(str(dest))
        return Prepared(includes=tuple(paths))
    tree = staging / "root"
    bin_dir = tree / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    tarballs: dict[Path, dict[str, tuple[str, ...]]] = {}
    for binary, (artifact, member) in sorted(source.binaries.items()):
        if artifact.kind == "binary":
            _copy_verified(artifact, bin_dir / binary, 0o755)
        else:  # each tarball is read once, for all the binaries it gives
            tarballs.setdefault(artifact.path, {})[binary] = (member,)
    by_path = {a.path: a for a, _ in source.binaries.values()}
    for path, wanted in tarballs.items():
        _read_tarball(path, wanted, dest=bin_dir, sha256=by_path[path].sha256)
    unit_dir = tree / "etc" / "systemd" / "system"
    (unit_dir / "kubelet.service.d").mkdir(parents=True)
    (unit_dir / "kubelet.service").write_text(KUBELET_UNIT)
    (unit_dir / "kubelet.service.d" / "10-kubeadm.conf").write_text(KUBEADM_DROPIN)
    for path in (unit_dir / "kubelet.service", unit_dir / "kubelet.service.d/10-kubeadm.conf"):
        path.chmod(0o644)
    for directory in (tree, tree / "usr", bin_dir, tree / "etc", tree / "etc/systemd", unit_dir,
                      unit_dir / "kubelet.service.d"):
        directory.chmod(0o755)
    return Prepared(hooks=(f"sync-in {shlex.quote(str(tree))} /",
                           'chroot "$1" systemctl enable kubelet.service'))


def build_node_image(name: str, source: KubernetesSource, *, out_dir: Path, cache_dir: Path,
                     force: bool = False, progress: Progress = None) -> BuiltImage:
    """Build (or take from the cache) the node image ``name`` with ``source``'s binaries."""
    LOG.info("[%s] building a Kubernetes %s node image from %s", name, source.version,
             source.describe())
    return build_debian_image(RELEASE, out_dir=out_dir, cache_dir=cache_dir, size_gib=SIZE_GIB,
                              force=force, progress=progress, recipe=node_recipe(name, source))
