"""The supervisor appliance image, built for real: mmdebstrap from Debian's archive, the
project from this checkout, its Python dependencies from a wheelhouse built on this host.

Built once into ``$LAB_CACHE_DIR/images`` (default /var/cache/pacific-lab), like the
debian-12 image, and reused by later runs. The image is never booted: its disk is converted
to raw and loop-mounted read-only, and its own binaries run through ``chroot``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypervisor import applianceimage
from hypervisor.applianceimage import (APPLIANCE_PACKAGES, CODE_STAMP, DISABLED_UNITS,
                                       INSTALL_DIR, SourceFile, appliance_recipe,
                                       build_appliance_image, code_stamp, project_files)
from hypervisor.images import BuiltImage, ImageError, ImageProgress, cache_key, sha256_file
from hypervisor.proc import Completed, run

pytestmark = pytest.mark.e2e

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab")) / "images"
BUILD_PHASES = ["staging inputs", "bootstrapping packages", "configuring", "making filesystem",
                "converting", "checksumming", "done"]
# A PEM private key with a real body (the project's own tests hold placeholders).
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n(?:[A-Za-z0-9+/=:, -]*\r?\n)*"
                         rb"[A-Za-z0-9+/=]{40,}")
SECRET_DIRS = ("etc", "var", "root", "home", "srv", "opt", "usr/local")


@dataclass(frozen=True)
class Build:
    image: BuiltImage
    files: tuple[SourceFile, ...]  # the project's files the image was built from
    events: list[ImageProgress]
    seconds: float
    out_dir: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    out_dir = tmp_path_factory.mktemp("library")
    events: list[ImageProgress] = []
    files = project_files(PROJECT_ROOT)
    started = time.monotonic()
    image = build_appliance_image(PROJECT_ROOT, CACHE_DIR, out_dir, progress=events.append)
    seconds = time.monotonic() - started
    print(f"appliance image: {seconds:.1f} s, {image.size_bytes} bytes "
          f"({image.virtual_size_bytes} virtual)")
    return Build(image, files, events, seconds, out_dir)


@pytest.fixture(scope="module")
def root(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's root file system, mounted read-only."""
    work = tmp_path_factory.mktemp("rootfs")
    raw = work / "root.raw"
    mountpoint = work / "mnt"
    mountpoint.mkdir()
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(build.image.disk), str(raw)],
        timeout=600)
    run(["mount", "-o", "loop,ro,noload", str(raw), str(mountpoint)], timeout=60)
    try:
        yield mountpoint
    finally:
        run(["umount", str(mountpoint)], timeout=60)
        raw.unlink()


def chroot(root: Path, *cmd: str) -> Completed:
    """Run ``cmd`` from the image (no /proc, /dev or /sys: the tree is read-only)."""
    return run(["chroot", str(root), "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", *cmd], timeout=120)


def test_the_disk_is_published(build: Build) -> None:
    image = build.image
    assert image.name == "pacific-appliance"
    assert image.disk == build.out_dir / f"pacific-appliance-{image.sha256[:12]}.qcow2"
    info = json.loads(run(["qemu-img", "info", "--output=json", str(image.disk)]).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert info["virtual-size"] == image.virtual_size_bytes == 8 * 1024 ** 3
    assert image.sha256 == sha256_file(image.disk)
    assert image.os == {"name": "debian", "version": "12"}
    assert image.cmdline and image.cmdline.startswith("root=UUID=")
    for path in (image.disk, image.kernel, image.initrd):
        assert path is not None and path.is_file()
        assert path.stat().st_mode & 0o777 == 0o444


def test_progress_phases(build: Build) -> None:
    phases = [p for p in dict.fromkeys(e.phase for e in build.events)
              if p != "building the wheelhouse"]
    assert phases in (["done"], BUILD_PHASES)  # a cached build, or a build from scratch
    fractions = [e.fraction for e in build.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_packages_are_installed_and_run(root: Path) -> None:
    status = chroot(root, "dpkg-query", "-W", "-f", "${Package} ${Status}\\n",
                    *APPLIANCE_PACKAGES, "cloud-init").stdout
    for package in (*APPLIANCE_PACKAGES, "cloud-init"):
        assert f"{package} install ok installed" in status, status
    assert re.match(r"postgres \(PostgreSQL\) 15\.",
                    chroot(root, "/usr/lib/postgresql/15/bin/postgres", "--version").stdout)
    assert "etcd Version: 3." in chroot(root, "etcd", "--version").stdout
    assert "etcdctl version: 3." in chroot(root, "etcdctl", "version").stdout
    keepalived = chroot(root, "keepalived", "--version")
    assert "Keepalived v2." in keepalived.stdout + keepalived.stderr
    # patroni's command line needs /proc (psutil); its package imports without it
    assert (root / "usr/bin/patroni").is_file()
    assert re.match(r"\d+\.\d+", chroot(root, "python3", "-c", "from patroni.version import "
                                        "__version__; print(__version__)").stdout)


def test_the_services_are_disabled_and_have_no_data(root: Path) -> None:
    for unit in DISABLED_UNITS:
        assert (root / "lib/systemd/system" / unit).is_file(), unit  # so "disabled" means something
    enabled = sorted(str(p.relative_to(root)) for p in (root / "etc/systemd/system").rglob("*")
                     if p.is_symlink())
    assert any(p.endswith("/ssh.service") for p in enabled)
    for unit in ("postgresql", "etcd", "patroni", "keepalived"):
        assert not [p for p in enabled if Path(p).name.startswith(unit)], enabled
    # no cluster: Debian's "main" was dropped, Patroni bootstraps its own
    assert list((root / "etc/postgresql").iterdir()) == []
    assert list((root / "var/lib/postgresql").iterdir()) == []
    assert not (root / "var/lib/etcd/member").exists()


def test_the_project_is_installed_from_the_checkout(build: Build, root: Path) -> None:
    install = root / INSTALL_DIR.lstrip("/")
    copied = sorted(str(p.relative_to(install)) for p in install.rglob("*")
                    if (p.is_file() or p.is_symlink())
                    and p.relative_to(install).parts[0] != ".venv")
    stamp = Path(CODE_STAMP).name
    assert copied == sorted([*(f.path for f in build.files), stamp])
    # what the tree was made of, for a rolling upgrade (appliance.controlplane.upgrade)
    assert json.loads((install / stamp).read_text()) == code_stamp(PROJECT_ROOT, build.files)
    for item in build.files:
        path = install / item.path
        if item.kind == "link":
            assert os.readlink(path) == item.digest, item.path
        else:
            assert sha256_file(path) == item.digest, item.path
            assert path.stat().st_mode & 0o777 == item.mode, item.path
    assert not (install / ".git").exists()
    cfg = (install / ".venv/pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg  # the image's own Python
    out = chroot(root, f"{INSTALL_DIR}/.venv/bin/python", "-c",
                 "import appliance, appliance.cli, appliance.settings, hypervisor.images, web, "
                 "libvirt, psycopg, sqlalchemy, alembic, flask, cryptography, ansible_runner, "
                 "cheroot\n"
                 "print(appliance.__file__, appliance.settings.PROJECT_ROOT, libvirt.getVersion())"
                 ).stdout.split()
    assert out[0] == f"{INSTALL_DIR}/appliance/__init__.py"  # editable: the checkout's files
    assert out[1] == INSTALL_DIR
    assert int(out[2]) >= 9_000_000  # libvirt0 from Debian, for the libvirt-python wheel
    assert "Usage: lab" in chroot(root, f"{INSTALL_DIR}/.venv/bin/lab", "--help").stdout
    # the build's own leftovers are gone
    assert not (root / "opt/.pacific-lab-wheelhouse").exists()
    assert not (install / "pacific_lab.egg-info").exists()


def test_no_keys_passwords_or_identity_in_the_image(root: Path) -> None:
    named = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(dirpath, d))]
        named += [os.path.join(dirpath, f) for f in files + dirs
                  if f.endswith(".key") or f.startswith("ssh_host_") or "snakeoil" in f]
    assert named == []
    found = []
    for top in SECRET_DIRS:
        for dirpath, _dirs, files in os.walk(root / top):
            for name in files:
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file() or path.stat().st_size > 16 * 1024 ** 2:
                    continue
                if PRIVATE_KEY.search(path.read_bytes()):
                    found.append(str(path.relative_to(root)))
    assert found == []
    assert (root / "etc/machine-id").stat().st_size == 0
    shadow = (root / "etc/shadow").read_text().splitlines()
    passwords = [line.split(":")[:2] for line in shadow if line.split(":")[1] not in ("*", "!", "!*")]
    assert passwords == []
    assert not (root / "var/lib/cloud").exists()


def test_second_call_is_served_from_the_cache(build: Build,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other-library")
    events: list[ImageProgress] = []
    started = time.monotonic()
    again = build_appliance_image(PROJECT_ROOT, CACHE_DIR, other, progress=events.append)
    elapsed = time.monotonic() - started
    assert [e.phase for e in events] == ["done"]
    assert elapsed < 2.0, f"cached call took {elapsed:.2f} s"
    assert again.sha256 == build.image.sha256
    assert again.disk == other / build.image.disk.name
    print(f"first call {build.seconds:.1f} s, cached call {elapsed * 1000:.0f} ms")


# -- the cache key, on a small project of its own (nothing is built) ----------------------------


def _key(project: Path, wheelhouse: Path) -> str:
    return cache_key("bookworm", applianceimage.SIZE_GIB, appliance_recipe(project, wheelhouse))


def test_the_cache_key_follows_every_input(tmp_path: Path) -> None:
    project, wheelhouse = tmp_path / "project", tmp_path / "wheels"
    (project / "appliance").mkdir(parents=True)
    wheelhouse.mkdir()
    (project / "appliance/__init__.py").write_text("")
    (project / "lab").write_text("#!/bin/sh\n")
    (wheelhouse / "a-1.0-py3-none-any.whl").write_bytes(b"a")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "."], check=True)
    first = _key(project, wheelhouse)
    assert _key(project, wheelhouse) == first

    (project / "notes.txt").write_text("untracked")  # git does not track it: not in the image
    assert _key(project, wheelhouse) == first
    assert [f.path for f in project_files(project)] == ["appliance/__init__.py", "lab"]

    keys = {first}
    (project / "lab").chmod(0o755)
    keys.add(_key(project, wheelhouse))
    (project / "appliance/__init__.py").write_text("VERSION = 2\n")
    keys.add(_key(project, wheelhouse))
    (wheelhouse / "b-1.0-py3-none-any.whl").write_bytes(b"b")
    keys.add(_key(project, wheelhouse))
    (wheelhouse / "b-1.0-py3-none-any.whl").write_bytes(b"b, rebuilt")
    keys.add(_key(project, wheelhouse))
    assert len(keys) == 5


def test_a_file_changed_after_the_key_was_made_stops_the_build(tmp_path: Path) -> None:
    project, wheelhouse, staging = tmp_path / "project", tmp_path / "wheels", tmp_path / "staging"
    for directory in (project, wheelhouse, staging):
        directory.mkdir()
    (project / "a.py").write_text("A = 1\n")
    (wheelhouse / "a-1.0-py3-none-any.whl").write_bytes(b"a")
    recipe = appliance_recipe(project, wheelhouse)  # not a git checkout: every file
    (project / "a.py").write_text("A = 2\n")
    assert recipe.prepare is not None
    with pytest.raises(ImageError, match="a.py changed"):
        recipe.prepare(staging)


def test_a_checkout_without_git_leaves_out_caches_and_environments(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for rel in ("appliance/__init__.py", "appliance/__pycache__/x.pyc", ".venv/bin/python",
                "test-artifacts/log.txt", "pacific_lab.egg-info/PKG-INFO", "tests/state/keep.txt",
                "web/static/app.js"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(rel)
    shutil.copy(PROJECT_ROOT / "pyproject.toml", project / "pyproject.toml")
    assert [f.path for f in project_files(project)] == [
        "appliance/__init__.py", "pyproject.toml", "tests/state/keep.txt", "web/static/app.js"]
