"""The pod init script: its syntax, and its pieces run by the real busybox shell.

The init is shell, so these tests run busybox's ``sh`` (the same binary the
initramfs carries) on the snippets that need no VM: the files the host
writes (are they read back as the same strings?), the command lookup and
the launcher (environment, argv[0]), and the CrashLoopBackOff delays.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hypervisor.podvm.config import Container, EmptyDirVolume, PodConfig, VolumeMount, config_files
from hypervisor.podvm.initramfs import INIT_TEMPLATE, find_busybox, has_busybox

pytestmark = pytest.mark.skipif(not has_busybox(), reason="busybox-static is not installed")

INIT = INIT_TEMPLATE.read_text()
NASTY = ("it's", 'say "hi"', "$HOME", "`id`", "a\nb", "*", " lead", "trail ", "", "-n", "é")


def busybox() -> str:
    return str(find_busybox())


def sh(script: str, *args: str,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``sh -c script args...``: the first of ``args`` is ``$0``."""
    return subprocess.run([busybox(), "sh", "-c", script, *args], capture_output=True,
                          env=env if env is not None else {"PATH": "/usr/bin:/bin"}, timeout=30)


def snippet(name: str) -> str:
    """The text of ``NAME='...'`` in the init (single-quoted shell programs)."""
    found = re.search(rf"^{name}='\n(.*?)'\n", INIT, re.S | re.M)
    assert found, name
    return found.group(1)


def function(name: str) -> str:
    found = re.search(rf"^{name}\(\) {{\n.*?^}}\n", INIT, re.S | re.M)
    assert found, name
    return found.group(0)


def test_init_syntax() -> None:
    done = subprocess.run([busybox(), "sh", "-n", str(INIT_TEMPLATE)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert INIT.startswith("#!/bin/busybox sh\n")
    for name in ("PREP", "LOOKUP", "LAUNCH"):
        done = subprocess.run([busybox(), "sh", "-n", "-c", snippet(name)], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, (name, done.stderr)


def test_config_files_read_back_as_the_same_strings(tmp_path: Path) -> None:
    config = PodConfig(hostname="p", containers=(Container(
        "c", 0, ("prog", *NASTY), env=tuple((f"V{i}", value) for i, value in enumerate(NASTY)),
        working_dir="/it's here", volume_mounts=(VolumeMount("v", "/mnt/it's $x", sub_path="a b"),),
    ),), volumes=(EmptyDirVolume("v"),))
    files = config_files(config)
    for name in ("c/0/cmd.sh", "c/0/spec.sh", "c/0/mounts.sh", "pod.sh"):
        (tmp_path / name.replace("/", "_")).write_bytes(files[name][0])
    done = sh('. "$1"; for a; do printf "%s\\0" "$a"; done', "sh", str(tmp_path / "c_0_cmd.sh"))
    args = done.stdout.decode().split("\0")[:-1]
    env = [f"V{i}={value}" for i, value in enumerate(NASTY)]
    env += ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=p",
            "HOME=/root"]
    assert args == [*env, "--", "prog", *NASTY]
    done = sh('. "$1"; printf "%s\\0" "$c_name" "$c_image" "$c_workdir" "$c_argv0"',
              "sh", str(tmp_path / "c_0_spec.sh"))
    assert done.stdout.decode().split("\0")[:-1] == ["c", "0", "/it's here", "prog"]
    done = sh('mount_volume() { printf "%s\\0" "$@"; }; . "$1"', "sh",
              str(tmp_path / "c_0_mounts.sh"))
    assert done.stdout.decode().split("\0")[:-1] == ["0", "/mnt/it's $x", "rw", "a b"]


@pytest.fixture
def rootdir(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    (tmp_path / "work").mkdir()
    tool = tmp_path / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    (tmp_path / "bin" / "data").write_text("not executable")
    (tmp_path / "work" / "local").write_text("#!/bin/sh\n")
    (tmp_path / "work" / "local").chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("path_var, argv0, rc, output", [
    ("{root}/bin", "tool", 0, "{root}/bin/tool"),
    ("/nowhere:{root}/bin", "tool", 0, "{root}/bin/tool"),
    ("{root}/bin", "nope", 1, 'exec: "nope": executable file not found in $PATH'),
    ("{root}/bin", "data", 1, 'exec: "data": executable file not found in $PATH'),
    ("{root}/bin", "{root}/bin/data", 1, 'exec: "{root}/bin/data": permission denied'),
    ("{root}/bin", "./missing", 1, 'exec: "./missing": stat ./missing: no such file or directory'),
    ("{root}/bin", "./local", 0, "./local"),
    (":{root}/bin", "local", 0, "./local"),  # an empty PATH entry is the working directory
])
def test_lookup_like_runc(rootdir: Path, path_var: str, argv0: str, rc: int, output: str) -> None:
    done = sh(snippet("LOOKUP"), str(rootdir / "work"), path_var.format(root=rootdir),
              argv0.format(root=rootdir))
    assert (done.returncode, done.stdout.decode().strip()) == (rc, output.format(root=rootdir))


def test_lookup_bad_workdir(rootdir: Path) -> None:
    done = sh(snippet("LOOKUP"), "/no/such/dir", "/bin", "sh")
    assert done.returncode == 1
    assert done.stdout.decode().strip() == \
        'chdir to cwd ("/no/such/dir") set in config.json failed: no such file or directory'


def launch(tmp_path: Path, exe: str, *words: str) -> subprocess.CompletedProcess[bytes]:
    script = snippet("LAUNCH").replace("/.pod/busybox", busybox())
    return subprocess.run(["env", "-i", busybox(), "sh", "-c", script, str(tmp_path), exe, *words],
                          capture_output=True, timeout=30)


def test_launch_plain_names_keep_argv0_and_exact_env(tmp_path: Path) -> None:
    done = launch(tmp_path, "/usr/bin/env", "A=1", "B=two words", "C=x\ny", "--", "my-env", "-0")
    assert done.returncode == 0, done.stderr
    # Exactly the container's variables (the order is the shell's, as kubelet's is a map's).
    assert sorted(done.stdout.split(b"\0")[:-1]) == [b"A=1", b"B=two words", b"C=x\ny"]
    done = launch(tmp_path, "/bin/cat", "A=1", "--", "argv-zero", "/proc/self/cmdline")
    assert done.stdout.split(b"\0")[:2] == [b"argv-zero", b"/proc/self/cmdline"]
    done = launch(tmp_path, "/bin/pwd", "--", "pwd")
    assert done.stdout.decode().strip() == str(tmp_path)


def test_launch_names_a_shell_cannot_hold(tmp_path: Path) -> None:
    done = launch(tmp_path, "/usr/bin/env", "my.var=1", "x-y=2", "Z=3", "--", "env", "-0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(b"\0")[:-1] == [b"my.var=1", b"x-y=2", b"Z=3"]


def test_launch_bad_workdir(tmp_path: Path) -> None:
    done = launch(tmp_path / "missing", "/bin/true", "--", "true")
    assert done.returncode == 128


def test_crashloop_backoff_delays() -> None:
    script = function("backoff_ms") + 'for n in 0 1 2 3 4 5 6 7 8; do backoff_ms $n; done'
    done = sh(script, "sh", env={"POD_BACKOFF_MS": "10000", "POD_BACKOFF_MAX_MS": "300000",
                           "PATH": os.environ.get("PATH", "/bin")})
    assert done.stdout.decode().split() == ["0", "10000", "20000", "40000", "80000", "160000",
                                            "300000", "300000", "300000"]
