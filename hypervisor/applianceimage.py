"""The supervisor appliance image: Debian 12 with Pacific Lab, PostgreSQL 15, Patroni, etcd
and keepalived, for the supervisor's control-plane VMs.

The image is the Debian base image of ``hypervisor.images`` plus, through an
``ImageRecipe`` (the same path as the Kubernetes node images):

- Debian's ``postgresql-15``, ``patroni``, ``etcd-server``, ``etcd-client``
  and ``keepalived``, ``python3-venv``, and ``libvirt0`` (the client library
  that the ``libvirt-python`` wheel links to; no ``libvirt-clients``);
- the project in ``/opt/pacific-lab``: the files git tracks in the checkout
  (a checkout without git: every file but ``.git``, ``.venv``, caches and
  test artifacts), installed editable (``pip install -e``, as ``./lab`` does
  on a host) into the virtual environment ``/opt/pacific-lab/.venv``. The
  Python dependencies come from a wheelhouse built on this host
  (``ensure_wheelhouse``: ``pip wheel`` of the project's dependencies and
  its build backend, with this host's pip configuration and index) and are
  installed in the image with ``--no-index``: nothing inside the image
  build reaches PyPI. ``CODE_STAMP`` records what the tree was made of (the
  files' digest and the dependencies' key), so that a rolling upgrade
  (``appliance.controlplane.upgrade``) knows which VMs run older code.

Nothing in the image runs on its own and nothing in it is secret: Debian's
``main`` PostgreSQL cluster is dropped, the ``postgresql``, ``etcd``,
``patroni`` and ``keepalived`` units are disabled, and ssl-cert's snakeoil
key and certificate are removed (the base image already leaves out the SSH
host keys and the machine id). Each VM's cloud-init writes its identity,
certificates and secrets, configures the services and starts them.

Files
-----
``cache_dir/wheelhouse-<key16>/`` holds the wheelhouse, keyed by the
project's dependencies, its build requirements, the image's Python version
and ``WHEELHOUSE_VERSION``; a wheelhouse is built once and then reused
(dependency ranges are resolved when it is built). The image is cached as
``cache_dir/<name>-<key16>/`` like every image of ``build_debian_image``:
its key covers the base image, the package list, the hooks, a digest of the
project's files (paths, modes and contents), the wheels (names and sha256)
and ``APPLIANCE_IMAGE_VERSION``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import stat
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypervisor.images import (BuiltImage, ImageError, ImageRecipe, Prepared, Progress,
                               _describe, _locked, _report, build_debian_image, sha256_file)
from hypervisor.proc import ProcessError, run

LOG = logging.getLogger(__name__)

# Bump when the recipe changes in a way its fingerprint cannot see.
APPLIANCE_IMAGE_VERSION = 2
# Bump when the way the wheelhouse is built changes.
WHEELHOUSE_VERSION = 1

NAME = "pacific-appliance"
RELEASE = "bookworm"
IMAGE_PYTHON = (3, 11)  # bookworm's python3; the wheels must match it
SIZE_GIB = 8
INSTALL_DIR = "/opt/pacific-lab"
VENV_DIR = f"{INSTALL_DIR}/.venv"
#: What the installed tree was made of (``code_stamp``): a rolling upgrade compares it.
CODE_STAMP = f"{INSTALL_DIR}/.pacific-lab-code.json"
WHEELHOUSE_DIR = "/opt/.pacific-lab-wheelhouse"  # only while building
WHEEL_TIMEOUT = 1800.0
CHUNK = 1024 * 1024

APPLIANCE_PACKAGES: tuple[str, ...] = (
    "postgresql-15", "patroni", "etcd-server", "etcd-client", "keepalived",
    "python3-venv", "libvirt0",
)
# Units that the packages enable and that cloud-init configures and starts.
DISABLED_UNITS: tuple[str, ...] = (
    "postgresql.service", "etcd.service", "patroni.service", "keepalived.service",
)
# Left out of a checkout without git (as .gitignore leaves them out of one with it):
# directories of these names anywhere, and of these names at the top.
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"})
SKIPPED_TOP_DIRS = frozenset({".venv", ".cache", "state", "build", "test-artifacts"})

_CLEAN_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME=/root", "LANG=C.UTF-8", "PIP_CONFIG_FILE=/dev/null", "PIP_NO_CACHE_DIR=1",
              "PIP_DISABLE_PIP_VERSION_CHECK=1"]
INSTALL_SCRIPT = (
    f"python3 -m venv {VENV_DIR}\n"
    f"{VENV_DIR}/bin/python -m pip install --quiet --no-index "
    f"--find-links {WHEELHOUSE_DIR} --editable {INSTALL_DIR}\n"
)
APPLIANCE_HOOKS: tuple[str, ...] = (
    # The project and its dependencies, offline (the wheelhouse was synced in by prepare).
    'chroot "$1" ' + shlex.join([*_CLEAN_ENV, "sh", "-ec", INSTALL_SCRIPT]),
    # The wheelhouse, and the egg-info that setuptools' editable install leaves in the
    # checkout (the metadata pip uses is the dist-info in the venv).
    f'rm -rf "$1{WHEELHOUSE_DIR}" "$1{INSTALL_DIR}/pacific_lab.egg-info" "$1/root/.cache"',
    # Debian's postinst makes a "main" cluster (with a snakeoil TLS key); Patroni makes its own.
    'chroot "$1" sh -ec \'pg_lsclusters -h | while read -r version cluster _; do '
    'pg_dropcluster "$version" "$cluster"; done\'',
    'chroot "$1" systemctl disable ' + " ".join(DISABLED_UNITS),
    # ssl-cert's key is made at install time: the same for every VM of the image.
    'rm -f "$1/etc/ssl/private/ssl-cert-snakeoil.key" "$1/etc/ssl/certs/ssl-cert-snakeoil.pem" '
    '&& find "$1/etc/ssl/certs" -maxdepth 1 -lname "*ssl-cert-snakeoil*" -delete',
)


@dataclass(frozen=True)
class SourceFile:
    """One file of the project as it goes into the image."""

    path: str  # relative to the project root, "/"-separated
    kind: str  # "file" or "link"
    mode: int  # 0o644 or 0o755 for files, 0 for links
    digest: str  # sha256 of a file's content; a link's target


# -- the project's files ------------------------------------------------------------------------


def project_files(project_root: Path) -> tuple[SourceFile, ...]:
    """The files of the checkout that go into the image, sorted by path.

    In a git checkout: the files git tracks (as they are in the working
    tree; tracked files deleted there are left out). Otherwise every file
    below ``project_root`` except those in ``SKIPPED_DIRS``,
    ``SKIPPED_TOP_DIRS`` and ``*.egg-info`` directories, and ``*.pyc``."""
    root = project_root.resolve()
    names = _git_files(root)
    if names is None:
        LOG.info("[%s] %s is not a git checkout: taking every file but caches", NAME, root)
        names = _walk_files(root)
    out = []
    for rel in sorted(set(names)):
        parts = rel.split("/")
        if not rel or rel.startswith("/") or ".." in parts or parts[0] == ".git":
            raise ImageError(f"refusing the project file name {rel!r}")
        path = root / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # deleted in the working tree
        if stat.S_ISLNK(st.st_mode):
            out.append(SourceFile(rel, "link", 0, os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            out.append(SourceFile(rel, "file", mode, sha256_file(path)))
        # anything else (a submodule's directory) is left out
    if not out:
        raise ImageError(f"{root} has no project files")
    return tuple(out)


def _git_files(root: Path) -> list[str] | None:
    try:
        listing = run(["git", "-c", f"safe.directory={root}", "-C", str(root), "ls-files", "-z",
                       "--cached"], timeout=60).stdout
    except ProcessError:
        return None
    return [name for name in listing.split("\0") if name]


def _walk_files(root: Path) -> list[str]:
    found = []
    for current, dirs, files in os.walk(root):
        base = Path(current).relative_to(root)
        skipped = SKIPPED_DIRS | (SKIPPED_TOP_DIRS if base == Path(".") else frozenset())
        dirs[:] = sorted(d for d in dirs if d not in skipped and not d.endswith(".egg-info"))
        for name in sorted(files):
            if not name.endswith(".pyc"):
                found.append((base / name).as_posix())
        # links to directories are listed by os.walk as directories; keep them as links
        for name in list(dirs):
            if (Path(current) / name).is_symlink():
                dirs.remove(name)
                found.append((base / name).as_posix())
    return found


def files_digest(files: Sequence[SourceFile]) -> str:
    data = [[f.path, f.kind, f.mode, f.digest] for f in files]
    return hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()


def code_stamp(project_root: Path, files: Sequence[SourceFile]) -> dict[str, str]:
    """What an installed tree is made of: the digest of the project's files and the key of
    its dependencies (``appliance.controlplane.upgrade`` rolls code, never dependencies)."""
    return {"code": files_digest(files), "dependencies": wheelhouse_key(project_root)}


# -- the wheelhouse -----------------------------------------------------------------------------


def requirements(project_root: Path) -> list[str]:
    """The project's dependencies and its build requirements, from ``pyproject.toml``."""
    path = project_root / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"cannot read {path}: {exc}") from exc
    deps = list(data.get("project", {}).get("dependencies", []))
    build = list(data.get("build-system", {}).get("requires", []))
    if not deps or not build:
        raise ImageError(f"{path} names no dependencies or no build-system requirements")
    return deps + [r for r in build if r not in deps]


def wheelhouse_key(project_root: Path) -> str:
    return _wheelhouse_key(requirements(project_root))


def _wheelhouse_key(specs: Sequence[str]) -> str:
    recipe = {"requirements": list(specs), "python": list(IMAGE_PYTHON),
              "machine": platform.machine(), "version": WHEELHOUSE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def ensure_wheelhouse(project_root: Path, cache_dir: Path, *, progress: Progress = None,
                      python: str | None = None) -> Path:
    """The cached wheelhouse of the project's dependencies; built with ``pip wheel`` if missing.

    ``python`` (default: this interpreter) must be the image's Python version:
    the wheels of C extensions are built for it."""
    return build_wheelhouse(requirements(project_root), cache_dir, "wheelhouse",
                            progress=progress, python=python)


def build_wheelhouse(specs: Sequence[str], cache_dir: Path, prefix: str, *,
                     progress: Progress = None, python: str | None = None) -> Path:
    """``cache_dir/<prefix>-<key>``: the wheels of ``specs`` (``pip wheel``), built once and
    kept by a key of the specs, the Python and the machine; older ones of ``prefix`` go."""
    python = python or sys.executable
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{prefix}-{_wheelhouse_key(specs)[:16]}"
    with _locked(cache_dir / f".{path.name}.lock"):
        if (path / "wheels.json").is_file():
            return path
        _check_python(python)
        _report(progress, "building the wheelhouse", 0.0)
        LOG.info("[%s] building the wheelhouse %s with %s", NAME, path, python)
        work = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=cache_dir))
        try:
            out = work / "wheels"
            run([python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out), *specs],
                timeout=WHEEL_TIMEOUT)
            wheels = wheel_digests(out)
            (out / "wheels.json").write_text(json.dumps(wheels, indent=2, sort_keys=True) + "\n")
            out.chmod(0o755)
            out.rename(path)
            LOG.info("[%s] wheelhouse %s: %d wheels", NAME, path, len(wheels))
        except (ProcessError, OSError) as exc:
            raise ImageError(f"building the wheelhouse {path.name} failed: "
                             f"{_describe(exc)}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _prune_wheelhouses(cache_dir, path, prefix)
    return path


def _check_python(python: str) -> None:
    try:
        version = run([python, "-c", "import sys; print(*sys.version_info[:2])"], timeout=60)
    except ProcessError as exc:
        raise ImageError(f"cannot run {python}: {_describe(exc)}") from exc
    found = tuple(int(x) for x in version.stdout.split())
    if found != IMAGE_PYTHON:
        want = ".".join(map(str, IMAGE_PYTHON))
        raise ImageError(f"the wheelhouse must be built with Python {want} (the image's), "
                         f"and {python} is Python {'.'.join(map(str, found))}")


def _prune_wheelhouses(cache_dir: Path, keep: Path, prefix: str) -> None:
    for other in cache_dir.glob(f"{prefix}-*"):
        if other != keep and other.is_dir() and not other.is_symlink():
            with _locked(cache_dir / f".{other.name}.lock"):
                LOG.info("[%s] removing the superseded wheelhouse %s", NAME, other)
                shutil.rmtree(other, ignore_errors=True)
            (cache_dir / f".{other.name}.lock").unlink(missing_ok=True)


def wheel_digests(wheelhouse: Path) -> dict[str, str]:
    """Every ``*.whl`` file in ``wheelhouse``: name -> sha256."""
    wheels = {}
    for path in sorted(wheelhouse.glob("*.whl")):
        if path.is_symlink() or not path.is_file():
            raise ImageError(f"{path} is not a regular file")
        wheels[path.name] = sha256_file(path)
    if not wheels:
        raise ImageError(f"{wheelhouse} has no wheels")
    return wheels


# -- the recipe ---------------------------------------------------------------------------------


def appliance_recipe(project_root: Path, wheelhouse: Path, *, name: str = NAME) -> ImageRecipe:
    """The appliance image's recipe; its ``inputs`` digest the project's files and the wheels."""
    root = project_root.resolve()
    files = project_files(root)
    wheels = wheel_digests(wheelhouse)

    def prepare(staging: Path) -> Prepared:
        return _stage(root, files, wheelhouse, wheels, staging)

    inputs: dict[str, Any] = {"recipe": APPLIANCE_IMAGE_VERSION, "project": files_digest(files),
                              "project_files": len(files), "wheels": wheels,
                              "install_dir": INSTALL_DIR}
    return ImageRecipe(name=name, packages=APPLIANCE_PACKAGES, hooks=APPLIANCE_HOOKS,
                       prepare=prepare, inputs=inputs)


def _stage(root: Path, files: Sequence[SourceFile], wheelhouse: Path, wheels: dict[str, str],
           staging: Path) -> Prepared:
    """Copy the project and the wheels into a tree that ``sync-in`` puts at ``/``; each
    file is checked against the digest the cache key was made from."""
    tree = staging / "root"
    project = tree / INSTALL_DIR.lstrip("/")
    wheel_dir = tree / WHEELHOUSE_DIR.lstrip("/")
    for directory in (project, wheel_dir):
        directory.mkdir(parents=True)
    for item in files:
        dest = project / item.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if item.kind == "link":
            if os.readlink(root / item.path) != item.digest:
                raise ImageError(f"{item.path} changed while the image was being built")
            os.symlink(item.digest, dest)
        else:
            _copy_checked(root / item.path, dest, item.digest, item.mode, item.path)
    stamp = tree / CODE_STAMP.lstrip("/")
    stamp.write_text(json.dumps(code_stamp(root, files)))
    stamp.chmod(0o644)
    for wheel, digest in wheels.items():
        _copy_checked(wheelhouse / wheel, wheel_dir / wheel, digest, 0o644, wheel)
    # sync-in copies the modes of directories too, "/" and "/opt" included
    for current, dirs, _files in os.walk(tree):
        os.chmod(current, 0o755)
        for name in dirs:
            path = Path(current) / name
            if not path.is_symlink():
                path.chmod(0o755)
    return Prepared(hooks=(f"sync-in {shlex.quote(str(tree))} /",))


def _copy_checked(src: Path, dest: Path, digest: str, mode: int, label: str) -> None:
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    hasher = hashlib.sha256()
    with os.fdopen(fd, "rb") as source, dest.open("xb") as out:
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
            out.write(chunk)
    dest.chmod(mode)
    if hasher.hexdigest() != digest:
        raise ImageError(f"{label} changed while the image was being built")


def build_appliance_image(project_root: Path, cache_dir: Path, out_dir: Path,
                          progress: Progress = None, *, force: bool = False,
                          name: str = NAME) -> BuiltImage:
    """Build (or take from ``cache_dir``) the appliance image of the checkout ``project_root``;
    publish it into ``out_dir``."""
    wheelhouse = ensure_wheelhouse(project_root, cache_dir, progress=progress)
    recipe = appliance_recipe(project_root, wheelhouse, name=name)
    LOG.info("[%s] image of %s (%s files, %d wheels)", name, project_root,
             recipe.inputs["project_files"], len(recipe.inputs["wheels"]))
    return build_debian_image(RELEASE, out_dir=out_dir, cache_dir=cache_dir, size_gib=SIZE_GIB,
                              force=force, progress=progress, recipe=recipe)
