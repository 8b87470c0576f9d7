"""The pod kernel's recipe: its source, its configuration fragment, its cache key, the choice.

The build itself (a real ``make`` of Debian's source) is proved end to end in
``tests/e2e/test_pod_kernel.py``; these tests cover what decides it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hypervisor.podvm import kernelbuild
from hypervisor.podvm.kernelbuild import (
    CONFIG_FRAGMENT,
    PACKAGES,
    KernelBuildError,
    build_key,
    config_fragment,
    find_source,
    pod_kernel_choice,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_newest_source_tarball_is_used(tmp_path: Path) -> None:
    for name in ("linux-source-5.10.tar.xz", "linux-source-6.1.tar.xz", "linux-source-6.12.tar.bz2",
                 "linux-source-x.tar.xz"):
        (tmp_path / name).write_bytes(b"")
    source = find_source(tmp_path)
    assert (source.tarball.name, source.series) == ("linux-source-6.1.tar.xz", "6.1")


def test_no_source_says_which_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(KernelBuildError, match="install Debian's linux-source package"):
        find_source(tmp_path)


def test_the_fragment_is_what_a_pod_vm_needs() -> None:
    settings = config_fragment()
    for option in ("CONFIG_PVH", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_BLK", "CONFIG_VIRTIO_NET",
                   "CONFIG_EROFS_FS", "CONFIG_OVERLAY_FS", "CONFIG_EXT4_FS", "CONFIG_VIRTIO_VSOCKETS",
                   "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_DEVTMPFS", "CONFIG_VIRTIO_BALLOON"):
        assert settings[option] == "y", option
    assert settings["CONFIG_SERIAL_8250_NR_UARTS"] == "4"  # console, events, output, control
    assert "CONFIG_MODULES" not in settings  # everything built in


def test_a_bad_fragment_line_is_one_readable_error(tmp_path: Path) -> None:
    fragment = tmp_path / "kernel.config"
    fragment.write_text("# fine\nCONFIG_PVH=y\nPVH=y\n")
    with pytest.raises(KernelBuildError, match=r"kernel.config:3: not a CONFIG_X=value line"):
        config_fragment(fragment)


def test_the_key_changes_with_every_input(tmp_path: Path) -> None:
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    tarball.write_bytes(b"source one")
    source = find_source(tmp_path)
    key = build_key(source, "CONFIG_PVH=y\n", "gcc 12")
    assert key == build_key(source, "CONFIG_PVH=y\n", "gcc 12")
    assert key != build_key(source, "CONFIG_PVH=y\nCONFIG_SMP=y\n", "gcc 12")
    assert key != build_key(source, "CONFIG_PVH=y\n", "gcc 13")
    tarball.unlink()
    tarball.write_bytes(b"source two")  # another inode: hashed again
    assert key != build_key(find_source(tmp_path), "CONFIG_PVH=y\n", "gcc 12")


def test_a_dropped_setting_is_named() -> None:
    config = "CONFIG_PVH=y\n# CONFIG_EROFS_FS is not set\nCONFIG_NR_CPUS=8\n"
    wanted = {"CONFIG_PVH": "y", "CONFIG_EROFS_FS": "y", "CONFIG_NR_CPUS": "64"}
    assert kernelbuild._missing_settings(config, wanted) == ["CONFIG_EROFS_FS=y", "CONFIG_NR_CPUS=64"]


def test_the_choice_falls_back_with_its_reason(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernelbuild, "toolchain", lambda: "gcc 12")
    cache, sources = tmp_path / "cache", tmp_path / "src"
    sources.mkdir()
    choice = pod_kernel_choice(cache, source_dir=sources)
    assert choice.built is None
    assert choice.reason.startswith("the pod kernel cannot be built here: no linux-source")

    (sources / "linux-source-6.1.tar.xz").write_bytes(b"source")
    choice = pod_kernel_choice(cache, source_dir=sources)
    assert (choice.built, choice.reason) == (None, "the pod kernel is not built yet (`lab up` "
                                                   "builds it)")
    cache.mkdir()
    (cache / "last-failure").write_text("make vmlinux failed (rc=2): error: out of space\n")
    assert pod_kernel_choice(cache, source_dir=sources).reason == (
        "the pod kernel's build failed: make vmlinux failed (rc=2): error: out of space")

    key = build_key(find_source(sources), CONFIG_FRAGMENT.read_text(), "gcc 12")
    entry = cache / f"6.1.192-pod-{key}"
    entry.mkdir()
    for name, data in (("vmlinux", b"\x7fELF"), ("config", b"CONFIG_PVH=y\n"),
                       ("release", b"6.1.192-pod\n")):
        (entry / name).write_bytes(data)
    choice = pod_kernel_choice(cache, source_dir=sources)
    assert choice.built is not None and choice.built.release == "6.1.192-pod"
    assert choice.reason == f"the pod kernel 6.1.192-pod (key {key})"


def test_a_build_without_source_records_why(tmp_path: Path) -> None:
    with pytest.raises(KernelBuildError, match="no linux-source"):
        kernelbuild.build_pod_kernel(tmp_path / "cache", source_dir=tmp_path)
    assert "no linux-source" in (tmp_path / "cache" / "last-failure").read_text()


def test_the_host_playbook_installs_what_the_build_needs() -> None:
    plays = yaml.safe_load((ROOT / "playbooks" / "host.yml").read_text())
    packages = next(p["vars"]["lab_host_packages"] for p in plays if "vars" in p)
    assert set(PACKAGES) <= set(packages)
