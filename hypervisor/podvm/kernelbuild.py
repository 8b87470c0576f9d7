"""The pod kernel: a minimal Linux for pod VMs, built from Debian's ``linux-source``.

Debian's distro kernel boots every pod VM today (``initramfs.pod_kernel``):
it is built for every machine there is, so a pod VM spends most of its boot
initialising and loading what it does not need. This module builds a kernel
with exactly what a pod VM uses, all built in (no modules): the options in
``templates/podvm/kernel.config`` on top of ``make allnoconfig`` for x86-64,
with a PVH entry point so that QEMU loads the uncompressed ``vmlinux``
directly.

``build_pod_kernel(cache_dir)`` builds it once and caches it under
``cache_dir/<release>-<key>/``, the key hashing every input: the source
tarball, the configuration fragment, the compiler and the format of this
recipe. Same inputs, same key, same bytes (the build's clock, user and host
are fixed). ``cached_pod_kernel(cache_dir)`` finds it without building;
``pod_kernel_choice(cache_dir)`` is what the appliance boots pod VMs with:
the built kernel when there is one, otherwise Debian's, with the reason.

The source is the tarball of Debian's ``linux-source-X.Y`` package
(``/usr/src/linux-source-X.Y.tar.xz``); the build needs gcc, make, flex,
bison, bc and libelf's headers (``PACKAGES``). A failed or interrupted
build leaves no entry in the cache: the tree is built in a work directory
that is removed, and the result is renamed into place only when complete.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hypervisor.files import write_atomic
from hypervisor.images import Progress, _locked, _report
from hypervisor.podvm.initramfs import PodKernel, _has_pvh_note, pod_kernel
from hypervisor.proc import ProcessError, run

SOURCE_DIR = Path("/usr/src")
CONFIG_FRAGMENT = Path(__file__).resolve().parent.parent.parent / "templates" / "podvm" / "kernel.config"
# What builds of given keys gave elsewhere ("KEY SHA256 RELEASE" lines): a build here
# with a recorded key must give the same bytes (tests/e2e/test_pod_kernel.py).
DIGESTS = CONFIG_FRAGMENT.with_name("kernel.sha256")
# Bump when the recipe below changes in a way the inputs do not show.
FORMAT_VERSION = "pod-kernel-1"
# The Debian packages a build needs (the source and the toolchain).
PACKAGES: tuple[str, ...] = ("linux-source", "gcc", "make", "flex", "bison", "bc", "libelf-dev",
                             "xz-utils")
# Fixed build identity: the same inputs give the same bytes.
BUILD_ENV = {"KBUILD_BUILD_TIMESTAMP": "2026-01-01 00:00:00 UTC", "KBUILD_BUILD_USER": "pacific-lab",
             "KBUILD_BUILD_HOST": "pacific-lab", "KBUILD_BUILD_VERSION": "1", "LC_ALL": "C",
             "SOURCE_DATE_EPOCH": "1767225600"}
# How many objects the build compiles (measured for the fragment in the tree: only for the
# progress bar, which never claims more than 95% before the build ends).
EXPECTED_OBJECTS = 1200
BUILD_TIMEOUT = 3 * 3600.0

_TARBALL = re.compile(r"^linux-source-(\d+\.\d+)\.tar\.xz$")
_CONFIG_LINE = re.compile(r"^(CONFIG_[A-Z0-9_]+)=(.+)$")


class KernelBuildError(RuntimeError):
    """The pod kernel cannot be built here; the message is one readable line."""


@dataclass(frozen=True)
class KernelSource:
    tarball: Path
    series: str  # "6.1"


@dataclass(frozen=True)
class BuiltKernel:
    """A built pod kernel: its ``vmlinux`` (PVH ELF), its ``.config`` and its release."""

    vmlinux: Path
    config: Path
    release: str  # as ``uname -r`` prints it in the guest
    key: str


@dataclass(frozen=True)
class KernelChoice:
    """What pod VMs boot: ``built`` (this module's kernel) or None (Debian's), and why."""

    built: BuiltKernel | None
    reason: str


def find_source(source_dir: Path = SOURCE_DIR) -> KernelSource:
    """The newest ``linux-source-X.Y.tar.xz`` in ``source_dir``."""
    found = []
    for path in source_dir.glob("linux-source-*.tar.xz"):
        match = _TARBALL.match(path.name)
        if match and path.is_file():
            found.append((tuple(int(p) for p in match.group(1).split(".")), path, match.group(1)))
    if not found:
        raise KernelBuildError(f"no linux-source-X.Y.tar.xz in {source_dir}: install Debian's "
                               "linux-source package")
    _, path, series = max(found)
    return KernelSource(path, series)


def recorded_digests(path: Path = DIGESTS) -> dict[str, str]:
    """``{key: sha256 of vmlinux}`` from ``templates/podvm/kernel.sha256``."""
    recorded = {}
    for line in path.read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2:
            recorded[fields[0]] = fields[1]
    return recorded


def config_fragment(path: Path = CONFIG_FRAGMENT) -> dict[str, str]:
    """The fragment's settings, ``{"CONFIG_X": "y", ...}`` (comments and blank lines skipped)."""
    settings: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _CONFIG_LINE.match(line)
        if not match:
            raise KernelBuildError(f"{path.name}:{number}: not a CONFIG_X=value line: {line!r}")
        settings[match.group(1)] = match.group(2)
    return settings


@functools.lru_cache(maxsize=1)
def toolchain() -> str:
    """The compiler's identity (part of the key: another gcc may give other bytes)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise KernelBuildError("gcc is not installed (the pod kernel needs gcc, make, flex, bison, "
                               "bc and libelf-dev)")
    done = run([gcc, "--version"], check=False, timeout=60)
    return done.stdout.splitlines()[0] if done.stdout else "gcc"


def build_key(source: KernelSource, fragment_text: str, compiler: str) -> str:
    """The cache key: every input of the build, the source by its bytes."""
    st = source.tarball.stat()
    digest = hashlib.sha256()
    for part in (FORMAT_VERSION, source.series,
                 _file_digest(source.tarball, st.st_size, st.st_mtime_ns, st.st_ino),
                 fragment_text, compiler, repr(sorted(BUILD_ENV.items()))):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:24]


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path, size: int, mtime_ns: int, inode: int) -> str:
    """sha256 of a file, hashed once per process while its size, mtime and inode hold
    (the 130 MB source tarball takes ~0.4 s)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_pod_kernel(cache_dir: Path, *, source_dir: Path = SOURCE_DIR,
                      fragment: Path = CONFIG_FRAGMENT) -> BuiltKernel | None:
    """The built kernel for today's inputs, if the cache has it (never builds)."""
    key = build_key(find_source(source_dir), fragment.read_text(), toolchain())
    return _cached(Path(cache_dir), key)


def pod_kernel_choice(cache_dir: Path, *, source_dir: Path = SOURCE_DIR,
                      fragment: Path = CONFIG_FRAGMENT) -> KernelChoice:
    """The pod kernel when it is built for today's inputs, else None and the reason."""
    try:
        built = cached_pod_kernel(cache_dir, source_dir=source_dir, fragment=fragment)
    except (KernelBuildError, OSError) as exc:
        return KernelChoice(None, f"the pod kernel cannot be built here: {_one_line(exc)}")
    if built is None:
        failed = Path(cache_dir) / "last-failure"
        why = _read_text(failed) if failed.is_file() else ""
        return KernelChoice(None, f"the pod kernel's build failed: {why}" if why else
                            "the pod kernel is not built yet (`lab up` builds it)")
    return KernelChoice(built, f"the pod kernel {built.release} (key {built.key})")


def kernel_for_pods(cache_dir: Path, *, source_dir: Path = SOURCE_DIR) -> tuple[PodKernel, KernelChoice]:
    """What pod VMs boot, chosen now: the pod kernel built in ``cache_dir/pod-kernel`` when
    it is there for today's inputs, else the host's distro kernel; with the pod initramfs
    (``cache_dir/podvm``) and the choice's reason."""
    choice = pod_kernel_choice(Path(cache_dir) / "pod-kernel", source_dir=source_dir)
    return pod_kernel(Path(cache_dir) / "podvm", built=choice.built), choice


def build_pod_kernel(cache_dir: Path, *, source_dir: Path = SOURCE_DIR,
                     fragment: Path = CONFIG_FRAGMENT, jobs: int | None = None,
                     progress: Progress = None, timeout: float = BUILD_TIMEOUT) -> BuiltKernel:
    """Build the pod kernel into ``cache_dir`` unless it is there; return it.

    Concurrent callers wait for one build (a lock per key). Raises
    ``KernelBuildError`` with one line (and writes it to
    ``cache_dir/last-failure``) when the build is impossible or fails.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    os.chmod(cache_dir, 0o755)  # QEMU's user reads the kernel
    try:
        source = find_source(source_dir)
        text = fragment.read_text()
        wanted = config_fragment(fragment)
        key = build_key(source, text, toolchain())
        with _locked(cache_dir / f".{key}.lock"):
            built = _cached(cache_dir, key)
            if built is None:
                built = _build(cache_dir, key, source, fragment, wanted, jobs or os.cpu_count() or 1,
                               progress, timeout)
    except KernelBuildError as exc:
        write_atomic(cache_dir / "last-failure", (str(exc) + "\n").encode(), mode=0o644)
        raise
    (cache_dir / "last-failure").unlink(missing_ok=True)
    return built


# -- the build -------------------------------------------------------------------------------

def _cached(cache_dir: Path, key: str) -> BuiltKernel | None:
    for entry in sorted(cache_dir.glob(f"*-{key}")):
        vmlinux, config, release = entry / "vmlinux", entry / "config", entry / "release"
        if vmlinux.is_file() and config.is_file() and release.is_file():
            return BuiltKernel(vmlinux, config, _read_text(release), key)
    return None


def _build(cache_dir: Path, key: str, source: KernelSource, fragment: Path,
           wanted: dict[str, str], jobs: int, progress: Progress, timeout: float) -> BuiltKernel:
    work = cache_dir / f"build-{key}"  # a fixed path: the same inputs give the same bytes
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    deadline = time.monotonic() + timeout
    try:
        _report(progress, f"unpacking {source.tarball.name}", 0.0)
        _make_output(["tar", "-xf", str(source.tarball), "-C", str(work), "--strip-components=1",
                      "--no-same-owner"], work, deadline, what="unpacking the source")
        tree = work
        _report(progress, "configuring (allnoconfig + templates/podvm/kernel.config)", 0.03)
        _make_output(["make", f"KCONFIG_ALLCONFIG={fragment}", "allnoconfig"], tree, deadline,
                     what="configuring")
        dropped = _missing_settings((tree / ".config").read_text(), wanted)
        if dropped:
            raise KernelBuildError("the kernel configuration dropped " + ", ".join(dropped[:5]) +
                                   (" …" if len(dropped) > 5 else "") +
                                   " (a dependency missing from templates/podvm/kernel.config)")
        release = _make_output(["make", "-s", "kernelrelease"], tree, deadline).strip()
        _compile(tree, jobs, progress, deadline)
        vmlinux = (tree / "vmlinux").read_bytes()
        if not _has_pvh_note(vmlinux):
            raise KernelBuildError("the built vmlinux has no PVH entry point (CONFIG_PVH)")
        entry = cache_dir / f"{release}-{key}"
        staging = cache_dir / f".{release}-{key}.new"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o755)
        write_atomic(staging / "vmlinux", vmlinux, mode=0o644)
        write_atomic(staging / "config", (tree / ".config").read_bytes(), mode=0o644)
        write_atomic(staging / "release", f"{release}\n".encode(), mode=0o644)
        shutil.rmtree(entry, ignore_errors=True)
        staging.rename(entry)
        _report(progress, "built", 1.0)
        return BuiltKernel(entry / "vmlinux", entry / "config", release, key)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _compile(tree: Path, jobs: int, progress: Progress, deadline: float) -> None:
    """``make vmlinux``, reporting the objects compiled so far."""
    cmd = ["make", f"-j{jobs}", "vmlinux"]
    proc = subprocess.Popen(cmd, cwd=tree, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace")
    assert proc.stdout is not None
    compiled, tail = 0, []
    try:
        for line in proc.stdout:
            if time.monotonic() > deadline:
                raise KernelBuildError("compiling ran out of time")
            if line.startswith("  CC "):
                compiled += 1
                _report(progress, f"compiling ({compiled} objects)",
                        0.05 + 0.9 * min(compiled / EXPECTED_OBJECTS, 1.0))
            tail = (tail + [line.rstrip()])[-20:]
        rc = proc.wait(max(deadline - time.monotonic(), 1.0))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if rc != 0:
        errors = [line for line in tail if "error" in line.lower()] or tail[-1:]
        raise KernelBuildError(f"make vmlinux failed (rc={rc}): {_one_line(errors[0] if errors else '')}")


def _make_output(cmd: Sequence[str], cwd: Path, deadline: float, *, what: str = "") -> str:
    """Run one step of the build (``hypervisor.proc.run``) within the build's deadline."""
    what = what or " ".join(cmd)
    try:
        done = run(cmd, check=False, cwd=str(cwd), env=_env(),
                   timeout=max(deadline - time.monotonic(), 1.0))
    except ProcessError as exc:
        raise KernelBuildError(f"{what}: {exc.reason}") from None
    if done.rc != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise KernelBuildError(f"{what} failed (rc={done.rc}): "
                               f"{_one_line(lines[-1] if lines else '')}")
    return done.stdout


def _missing_settings(config_text: str, wanted: dict[str, str]) -> list[str]:
    """The fragment's settings that the resulting ``.config`` does not have, as lines."""
    have = {}
    for line in config_text.splitlines():
        match = _CONFIG_LINE.match(line)
        if match:
            have[match.group(1)] = match.group(2)
    return [f"{name}={value}" for name, value in wanted.items() if have.get(name) != value]


def _env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    return {**keep, **BUILD_ENV}


def _read_text(path: Path) -> str:
    return path.read_text(errors="replace").strip()


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


__all__ = ["BuiltKernel", "KernelBuildError", "KernelChoice", "KernelSource", "build_pod_kernel",
           "cached_pod_kernel", "config_fragment", "find_source", "kernel_for_pods",
           "pod_kernel_choice", "recorded_digests"]
