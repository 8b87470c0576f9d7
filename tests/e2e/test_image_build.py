"""The debian-12 image, built for real from Debian's archive with mmdebstrap.

Built once into ``$LAB_CACHE_DIR/images`` (default /var/cache/pacific-lab),
the same cache the content library uses, and reused by later runs. The file
system is inspected with debugfs on a raw copy, nothing is mounted."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hypervisor.images import ROOT_LABEL, BuiltImage, ImageProgress, build_debian_image
from hypervisor.proc import run

pytestmark = pytest.mark.e2e

CACHE_DIR = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab")) / "images"
BUILD_PHASES = ["bootstrapping packages", "configuring", "making filesystem", "converting",
                "checksumming", "done"]


@dataclass(frozen=True)
class Build:
    image: BuiltImage
    events: list[ImageProgress]
    seconds: float
    out_dir: Path


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    out_dir = tmp_path_factory.mktemp("library")
    events: list[ImageProgress] = []
    started = time.monotonic()
    image = build_debian_image("bookworm", out_dir=out_dir, cache_dir=CACHE_DIR,
                               progress=events.append)
    return Build(image, events, time.monotonic() - started, out_dir)


@pytest.fixture(scope="module")
def raw(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "root.raw"
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(build.image.disk), str(path)])
    return path


def debugfs(raw: Path, request: str) -> str:
    return run(["debugfs", "-R", request, str(raw)]).stdout


def file_type(raw: Path, path: str) -> str | None:
    match = re.search(r"Type: (\w+)", debugfs(raw, f"stat {path}"))
    return match.group(1) if match else None


def test_the_disk_is_a_valid_self_contained_qcow2(build: Build) -> None:
    image = build.image
    assert image.name == "debian-12"
    assert image.disk.parent == build.out_dir
    assert image.disk.name == f"debian-12-{image.sha256[:12]}.qcow2"
    info = json.loads(run(["qemu-img", "info", "--output=json", str(image.disk)]).stdout)
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info
    assert info["virtual-size"] == image.virtual_size_bytes == 4 * 1024 ** 3
    run(["qemu-img", "check", "-q", "-f", "qcow2", str(image.disk)])
    assert image.size_bytes == image.disk.stat().st_size
    assert image.sha256 == hashlib.sha256(image.disk.read_bytes()).hexdigest()
    assert image.os == {"name": "debian", "version": "12"}
    for path in (image.disk, image.kernel, image.initrd):
        assert path is not None and path.is_file()
        assert path.stat().st_mode & 0o777 == 0o444  # readable by QEMU's own user


def test_progress_phases(build: Build) -> None:
    phases = list(dict.fromkeys(e.phase for e in build.events))
    assert phases in (["done"], BUILD_PHASES)  # a cached build, or a build from scratch
    fractions = [e.fraction for e in build.events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_boot_files_match_the_root_filesystem(build: Build, raw: Path) -> None:
    image = build.image
    assert image.kernel is not None and image.initrd is not None and image.cmdline
    assert image.kernel.read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage
    assert image.initrd.stat().st_size > 1024 * 1024
    stats = debugfs(raw, "stats")
    fs_uuid = re.search(r"Filesystem UUID:\s+(\S+)", stats)
    label = re.search(r"Filesystem volume name:\s+(\S+)", stats)
    assert fs_uuid and label and label.group(1) == ROOT_LABEL
    assert image.cmdline.split()[:2] == [f"root=UUID={fs_uuid.group(1)}", "ro"]
    assert "console=ttyS0,115200n8" in image.cmdline.split()
    fstab = debugfs(raw, "cat /etc/fstab")
    assert fstab.startswith(f"UUID={fs_uuid.group(1)}\t/\text4\t")
    kernel_version = debugfs(raw, "ls -p /usr/lib/modules").split("/")
    assert any(v.endswith("-cloud-amd64") for v in kernel_version)


def test_image_contents(raw: Path) -> None:
    for path in ("/usr/bin/cloud-init", "/usr/sbin/sshd", "/usr/sbin/qemu-ga",
                 "/usr/bin/sudo", "/usr/lib/systemd/systemd", "/usr/lib/systemd/systemd-networkd",
                 "/usr/lib/systemd/systemd-resolved", "/usr/sbin/resize2fs"):
        assert file_type(raw, path) == "regular", path
    assert file_type(raw, "/usr/bin/python3") in ("regular", "symlink")
    assert file_type(raw, "/sbin/init") == "symlink"  # systemd-sysv
    cfg = yaml.safe_load(debugfs(raw, "cat /etc/cloud/cloud.cfg.d/90_pacific.cfg"))
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    wants = debugfs(raw, "ls /etc/systemd/system/multi-user.target.wants")
    assert "systemd-networkd.service" in wants and "ssh.service" in wants
    dropin = debugfs(raw, "cat /etc/systemd/system/ssh.service.d/10-pacific-host-keys.conf")
    assert "ssh-keygen -A" in dropin


def test_every_clone_gets_its_own_identity(raw: Path) -> None:
    assert re.search(r"Size: 0\b", debugfs(raw, "stat /etc/machine-id"))
    ssh = debugfs(raw, "ls /etc/ssh")
    assert "sshd_config" in ssh and "ssh_host_" not in ssh
    shadow = debugfs(raw, "cat /etc/shadow")
    root = next(line for line in shadow.splitlines() if line.startswith("root:"))
    assert root.split(":")[1] in ("*", "!", "!*")  # no password
    assert file_type(raw, "/var/lib/cloud") is None


def test_second_call_is_served_from_the_cache(build: Build,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other-library")
    events: list[ImageProgress] = []
    started = time.monotonic()
    again = build_debian_image("bookworm", out_dir=other, cache_dir=CACHE_DIR,
                               progress=events.append)
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"cached call took {elapsed:.2f} s"
    assert [e.phase for e in events] == ["done"]
    assert again.sha256 == build.image.sha256
    assert again.cmdline == build.image.cmdline
    assert again.disk == other / build.image.disk.name
    print(f"first call {build.seconds:.1f} s, cached call {elapsed * 1000:.0f} ms")
