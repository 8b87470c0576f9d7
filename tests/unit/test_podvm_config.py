"""The pod configuration: validation, the archive the init unpacks, the config disk file."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest

from hypervisor.podvm.config import (
    DEFAULT_PATH,
    ConfigError,
    Container,
    EmptyDirVolume,
    FileVolume,
    HostAlias,
    PodConfig,
    VolumeMount,
    config_archive,
    config_files,
    hosts_file,
    resolv_conf,
    write_config_disk,
)

SECRET = b"hunter2-do-not-log"


def pod(**overrides: object) -> PodConfig:
    values: dict[str, object] = dict(
        hostname="web-0",
        containers=(
            Container("web", 0, ("httpd", "-f", "-p", "8080"),
                      env=(("GREETING", "it's \"quoted\" $HOME `x`\nline2"), ("my.var", "1")),
                      working_dir="/srv",
                      volume_mounts=(VolumeMount("cfg", "/etc/app", read_only=True),
                                     VolumeMount("data", "/data"),
                                     VolumeMount("cfg", "/etc/one.conf", sub_path="one.conf"))),
            Container("sidecar", 1, ("sh", "-c", "echo 'hi'; sleep 1"),
                      env=(("PATH", "/bin"),)),
        ),
        volumes=(FileVolume("cfg", {"one.conf": (b"one\n", 0o644),
                                    "nested/two.conf": (b"two\n", 0o640)}),
                 FileVolume("creds", {"token": (SECRET, 0o600)}),
                 EmptyDirVolume("data"), EmptyDirVolume("fast", "Memory", 64 * 1024 * 1024)),
        address="198.18.200.5/24", gateway="198.18.200.1",
        nameservers=("198.18.200.2",), searches=("ns.svc.cluster.local", "svc.cluster.local"),
        dns_options=("ndots:5",),
        host_aliases=(HostAlias("198.18.200.9", ("foo.local", "bar")),),
        restart_policy="OnFailure", termination_grace_period_seconds=15,
        backoff_base_seconds=0.25, backoff_max_seconds=4,
    )
    values.update(overrides)
    return PodConfig(**values)  # type: ignore[arg-type]


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def contents(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


def test_archive_layout_and_modes() -> None:
    data = config_archive(pod())
    found = members(data)
    for name in ("pod.sh", "etc/hosts", "etc/resolv.conf", "etc/hostname", "volumes.sh",
                 "c/0/spec.sh", "c/0/cmd.sh", "c/0/mounts.sh", "c/1/spec.sh",
                 "v/0/one.conf", "v/0/nested/two.conf", "v/1/token"):
        assert name in found, name
    assert found["v/0/nested"].isdir() and found["v/0/nested"].mode == 0o755
    assert found["v/0/nested/two.conf"].mode == 0o640
    assert found["v/1/token"].mode == 0o600
    assert found["c/0/cmd.sh"].mode == 0o600
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in found.values())
    assert len(data) % 512 == 0  # a disk is made of whole sectors
    assert config_archive(pod()) == data  # deterministic


def test_pod_sh_values() -> None:
    text = contents(config_archive(pod()), "pod.sh").decode()
    assert "POD_HOSTNAME=web-0\n" in text
    assert "POD_ADDRESS=198.18.200.5\n" in text and "POD_PREFIX=24\n" in text
    assert "POD_GATEWAY=198.18.200.1\n" in text
    assert "POD_RESTART=OnFailure\n" in text and "POD_GRACE=15\n" in text
    assert "POD_BACKOFF_MS=250\n" in text and "POD_BACKOFF_MAX_MS=4000\n" in text
    assert "POD_CONTAINERS=2\n" in text
    no_net = contents(config_archive(pod(address=None, gateway=None)), "pod.sh").decode()
    assert "POD_ADDRESS=''\n" in no_net


def test_container_files_are_quoted_data() -> None:
    files = config_files(pod())
    cmd = files["c/0/cmd.sh"][0].decode()
    assert cmd.startswith("set -- ")
    assert "'GREETING=it'\"'\"'s \"quoted\" $HOME `x`\nline2'" in cmd
    assert cmd.rstrip().endswith("-- httpd -f -p 8080")
    spec = files["c/0/spec.sh"][0].decode()
    assert "c_name=web\n" in spec and "c_image=0\n" in spec and "c_workdir=/srv\n" in spec
    assert f"c_path={DEFAULT_PATH}\n" in spec and "c_argv0=httpd\n" in spec
    # The sidecar's own PATH decides where its command is looked up.
    assert "c_path=/bin\n" in files["c/1/spec.sh"][0].decode()
    mounts = files["c/0/mounts.sh"][0].decode().splitlines()
    assert mounts == ["mount_volume 0 /etc/app ro ''", "mount_volume 2 /data rw ''",
                      "mount_volume 0 /etc/one.conf rw one.conf"]
    assert files["volumes.sh"][0].decode().splitlines() == [
        "volume 0 files - ''", "volume 1 files - ''", "volume 2 emptyDir - ''",
        "volume 3 emptyDir Memory 65536k"]


def test_effective_env_adds_containerd_defaults_only_when_missing() -> None:
    config = pod()
    web, sidecar = config.containers
    assert [k for k, _ in web.effective_env("web-0")] == ["GREETING", "my.var", "PATH",
                                                          "HOSTNAME", "HOME"]
    assert dict(web.effective_env("web-0"))["HOSTNAME"] == "web-0"
    assert dict(sidecar.effective_env("web-0"))["PATH"] == "/bin"


def test_hosts_and_resolv_conf() -> None:
    config = pod()
    hosts = hosts_file(config)
    assert "127.0.0.1\tlocalhost\n" in hosts
    assert "198.18.200.5\tweb-0\n" in hosts
    assert "198.18.200.9\tfoo.local\tbar\n" in hosts
    assert resolv_conf(config) == ("search ns.svc.cluster.local svc.cluster.local\n"
                                   "nameserver 198.18.200.2\noptions ndots:5\n")
    assert resolv_conf(pod(nameservers=(), searches=(), dns_options=())) == ""


def test_write_config_disk_is_private(tmp_path: Path) -> None:
    path = write_config_disk(pod(), tmp_path / "config.tar")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == config_archive(pod())
    assert [p.name for p in tmp_path.iterdir()] == ["config.tar"]  # no temporary left
    write_config_disk(pod(hostname="other"), path)  # replaced atomically
    assert b"POD_HOSTNAME=other" in contents(path.read_bytes(), "pod.sh")


def test_secrets_stay_out_of_reprs_and_shell_files() -> None:
    config = pod()
    assert SECRET.decode() not in repr(config)
    assert "token" in repr(config.volumes[1])
    files = config_files(config)
    assert all(SECRET not in data for name, (data, _) in files.items() if not name.startswith("v/"))


@pytest.mark.parametrize("make, message", [
    (lambda: Container("Bad_Name", 0, ("x",)), "DNS label"),
    (lambda: Container("c", 0, ()), "no command"),
    (lambda: Container("c", -1, ("x",)), "image index"),
    (lambda: Container("c", 0, ("x\0y",)), "NUL"),
    (lambda: Container("c", 0, ("a\nb",)), "one line"),
    (lambda: Container("c", 0, ("x",), env=(("A=B", "1"),)), "environment variable name"),
    (lambda: Container("c", 0, ("x",), working_dir="relative"), "absolute"),
    (lambda: Container("c", 0, ("x",), volume_mounts=(VolumeMount("v", "/a"),
                                                      VolumeMount("v", "/a/"))), "unique"),
    (lambda: VolumeMount("v", "/"), "must not be /"),
    (lambda: VolumeMount("v", "/x", sub_path="../etc"), "relative path"),
    (lambda: VolumeMount("v", "/x", sub_path="/etc"), "relative path"),
    (lambda: VolumeMount("v", "/x\n"), "one line"),
    (lambda: EmptyDirVolume("v", "Disk"), "medium"),
    (lambda: EmptyDirVolume("v", "Memory", 10), "sizeLimit"),
    (lambda: FileVolume("v", {"../x": (b"", 0o644)}), "relative path"),
    (lambda: FileVolume("v", {"a": (b"", 0o644), "a/b": (b"", 0o644)}), "both a file"),
    (lambda: FileVolume("v", {"a": (b"", 0o4755)}), "mode"),
    (lambda: HostAlias("nope", ("a",)), "IP address"),
    (lambda: pod(containers=()), "at least one container"),
    (lambda: pod(hostname="bad_host"), "hostname"),
    (lambda: pod(address="198.18.200.5"), "prefix"),
    (lambda: pod(address=None), "needs a pod address"),
    (lambda: pod(gateway="2001:db8::1"), "IP versions"),
    (lambda: pod(nameservers=("dns.example",)), "nameserver"),
    (lambda: pod(searches=("bad domain",)), "search domain"),
    (lambda: pod(restart_policy="Sometimes"), "restartPolicy"),
    (lambda: pod(termination_grace_period_seconds=-1), "terminationGracePeriodSeconds"),
    (lambda: pod(backoff_base_seconds=0), "backoff"),
    (lambda: pod(volumes=()), "no volume"),
    (lambda: pod(containers=(Container("a", 0, ("x",)), Container("a", 0, ("y",)))), "unique"),
])
def test_rejects(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_defaults() -> None:
    config = PodConfig(hostname="p", containers=(Container("c", 2, ("true",), working_dir=""),))
    assert config.containers[0].working_dir == "/"
    assert config.restart_policy == "Always"
    assert (config.backoff_base_seconds, config.backoff_max_seconds) == (10.0, 300.0)
    assert config.image_count == 3
    assert config.ip is None
