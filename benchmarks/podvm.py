"""vSphere Pods benchmark: pod start latency and the memory of idle pod VMs.

    .venv/bin/python benchmarks/podvm.py [--pods 20] [--idle 10,50] [--density 200] [--out FILE.json]

In one run, on this host's accelerator (KVM or TCG, printed):

1. The floor: a bare ``qemu-system-x86_64 -M pc -bios qboot.rom -kernel … -initrd …``
   boot of the same kernel and pod initramfs, from process start until the pod
   init prints its first line on the serial console (``pod-init: … booted``).
2. Pod start latency through the real host service and API: from the POST of a
   Pod to the watch event that shows its container running (the guest reported
   the container's process started), for ``--pods`` pods one after another,
   with a cold image cache (emptied before each pod: pull, unpack, erofs build
   included) and with a warm one. Median and p95, and both as a ratio of the floor.
3. Memory: the RSS of each pod VM's QEMU with ``--idle`` pods running (a
   ``sleep``), median and mean, and the host's used memory.
4. Density (``--density N``): N idle pods created at once, the time until all run,
   the host's memory with them, and their deletion until no pod VM is left.

A registry on loopback serves a busybox image the benchmark builds and pushes
itself. Pods use the appliance network (no namespace network), so the figures
are the pod VM's, not the network controllers'.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from appliance.agent.vmnames import pod_prefix  # noqa: E402
from hypervisor.domain import QBOOT_ROM  # noqa: E402
from hypervisor.hostfacts import detect_accelerator  # noqa: E402
from hypervisor.oci.cache import ImageCache  # noqa: E402
from hypervisor.oci.policy import RegistryPolicy  # noqa: E402
from hypervisor.podvm.domain import BASE_CMDLINE  # noqa: E402
from hypervisor.podvm.initramfs import PodKernel, pod_kernel  # noqa: E402
from hypervisor.podvm.kernelbuild import kernel_for_pods  # noqa: E402
from tests.support.ociimages import push_busybox  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402
from tests.support.server import LabServer  # noqa: E402

CACHE = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab"))
NS = "bench-pods"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values),
            "p95": percentile(values, 0.95), "min": min(values), "max": max(values)}


# -- 1. the floor ------------------------------------------------------------------------


BOOT_TIMEOUT = 120.0  # one bare boot; under TCG it takes a few seconds


def bare_boot(accel: str, kernel: PodKernel, runs: int = 5) -> list[float]:
    """Seconds from QEMU's start to the pod init's first line, ``runs`` times."""
    times = []
    for run in range(runs):
        argv = ["qemu-system-x86_64", "-M", "pc", "-bios", str(QBOOT_ROM), "-m", "320",
                "-accel", accel, "-kernel", str(kernel.kernel), "-initrd", str(kernel.initrd),
                "-append", " ".join(BASE_CMDLINE), "-display", "none", "-serial", "stdio",
                "-no-reboot", "-nodefaults"]
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        timer = threading.Timer(BOOT_TIMEOUT, proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if b"pod-init:" in line and b"booted" in line:
                    times.append(time.monotonic() - started)
                    break
        finally:
            timer.cancel()
            proc.kill()
            proc.wait()
        if len(times) <= run:
            raise SystemExit(f"bare boot of {kernel.kernel} ({kernel.release}) ran out of "
                             f"{BOOT_TIMEOUT:.0f} s before the pod init's first line")
    return times


# -- 2. pod start latency ----------------------------------------------------------------


class Unschedulable(RuntimeError):
    """The scheduler found no room for the pod."""


class Api:
    def __init__(self, lab: LabServer) -> None:
        self.lab = lab
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = lab.ca_file
        self.session.headers["Authorization"] = f"Bearer {lab.admin_token()}"

    def url(self, path: str) -> str:
        return self.lab.url + path

    def create_pod(self, name: str, image: str, command: list[str],
                   resources: dict[str, Any] | None = None) -> dict[str, Any]:
        container = {"name": "main", "image": image, "command": command,
                     "imagePullPolicy": "IfNotPresent", **({"resources": resources} if resources
                                                            else {})}
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 0}}
        r = self.session.post(self.url(f"/api/v1/namespaces/{NS}/pods"), json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def wait_running(self, name: str, rv: str, timeout: float = 300,
                     unschedulable_ends: bool = False) -> float:
        """Seconds until the watch shows the container running (or already finished).
        ``unschedulable_ends``: the scheduler's ``Unschedulable`` ends the wait (a density
        run: no pod leaves, so nothing will make room)."""
        r = self.session.get(self.url(f"/api/v1/namespaces/{NS}/pods"), params={
            "watch": "true", "resourceVersion": rv, "fieldSelector": f"metadata.name={name}",
            "timeoutSeconds": str(int(timeout))}, stream=True, timeout=timeout + 10)
        for line in r.iter_lines():
            ev = json.loads(line)
            status = ev["object"].get("status") or {}
            refused = [c for c in status.get("conditions") or []
                       if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"]
            if unschedulable_ends and refused:
                r.close()
                raise Unschedulable(f"pod {name}: {refused[0].get('message', '')}")
            for cs in status.get("containerStatuses") or []:
                state = cs.get("state") or {}
                if "running" in state or "terminated" in state:
                    r.close()
                    return time.monotonic()
        raise TimeoutError(f"pod {name} did not start in {timeout}s")

    def delete_pod(self, name: str, wait: bool = True) -> None:
        self.session.delete(self.url(f"/api/v1/namespaces/{NS}/pods/{name}"),
                            json={"gracePeriodSeconds": 0}, timeout=30)
        deadline = time.monotonic() + 120
        while wait and time.monotonic() < deadline:
            r = self.session.get(self.url(f"/api/v1/namespaces/{NS}/pods/{name}"), timeout=30)
            if r.status_code == 404:
                return
            time.sleep(0.2)


def start_latency(api: Api, image: str, count: int, cold: bool, cache: Path) -> list[float]:
    out = []
    for i in range(count):
        if cold:
            ImageCache(cache, RegistryPolicy()).remove_unused([])
        name = f"{'cold' if cold else 'warm'}-{i:02d}"
        t0 = time.monotonic()
        created = api.create_pod(name, image, ["sleep", "3600"])
        t1 = api.wait_running(name, created["metadata"]["resourceVersion"])
        out.append(t1 - t0)
        print(f"  {name}: {t1 - t0:.2f} s", flush=True)
        api.delete_pod(name)
    return out


# -- 3. memory ---------------------------------------------------------------------------


def qemu_rss(prefix: str) -> list[int]:
    """RSS in KiB of every QEMU running a domain whose name starts with ``prefix``."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if not cmdline or not cmdline[0].endswith(b"qemu-system-x86_64"):
            continue
        if not any(a.startswith(b"guest=" + prefix.encode()) for a in cmdline):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                out.append(int(line.split()[1]))
    return out


def host_used_kib() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kib = {k: int(v.split()[0]) for k, v in info.items()}
    return kib["MemTotal"] - kib["MemAvailable"]


def idle_memory(api: Api, image: str, counts: list[int], prefix: str) -> list[dict[str, Any]]:
    """For each count, that many idle pods running: the RSS of their QEMUs and the host's."""
    results: list[dict[str, Any]] = []
    running: list[str] = []
    before = host_used_kib()
    for target in counts:
        names = [f"idle-{i:02d}" for i in range(len(running), target)]
        rvs = {}
        for name in names:
            rvs[name] = api.create_pod(name, image, ["sleep", "3600"])["metadata"][
                "resourceVersion"]
        threads = [threading.Thread(target=api.wait_running, args=(n, rvs[n], 900))
                   for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        running += names
        time.sleep(20)  # let the guests settle after boot
        rss = qemu_rss(prefix)
        results.append({
            "pods": target, "measured": len(rss), "rss_mib_median": statistics.median(rss) / 1024,
            "rss_mib_mean": statistics.mean(rss) / 1024,
            "rss_mib_total": sum(rss) / 1024,
            "host_used_mib_delta": (host_used_kib() - before) / 1024})
        print(f"  {target} idle pods: {results[-1]}", flush=True)
    for name in running:
        api.delete_pod(name, wait=False)
    for name in running:
        api.delete_pod(name)
    return results


#: What each pod of the density run asks for: a 128 MiB VM (64 Mi + the 64 MiB overhead), so
#: that the scheduler's view of this host's memory is not what limits the count.
DENSITY_RESOURCES = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}}


def density(api: Api, image: str, count: int, prefix: str, timeout: float) -> dict[str, Any]:
    """``count`` idle pods created at once: the time until all run, the host's memory with
    them running, and the time until every pod and its VM is gone again."""
    before = host_used_kib()
    names = [f"dense-{i:03d}" for i in range(count)]
    started = time.monotonic()
    rvs = {name: api.create_pod(name, image, ["sleep", "3600"], DENSITY_RESOURCES)[
        "metadata"]["resourceVersion"] for name in names}
    failed: list[str] = []
    unschedulable: list[str] = []

    def wait(name: str) -> None:
        try:
            api.wait_running(name, rvs[name], timeout, unschedulable_ends=True)
        except Unschedulable:
            unschedulable.append(name)
        except (TimeoutError, requests.RequestException):
            failed.append(name)

    threads = [threading.Thread(target=wait, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_running = time.monotonic() - started
    time.sleep(20)  # let the guests settle after boot
    rss = qemu_rss(prefix)
    result = {"pods": count, "running": count - len(failed) - len(unschedulable),
              "not_running": sorted(failed), "unschedulable": sorted(unschedulable),
              "all_running_s": all_running, "qemu_processes": len(rss),
              "rss_mib_median": statistics.median(rss) / 1024 if rss else None,
              "host_used_mib_delta": (host_used_kib() - before) / 1024}
    print(f"  {result}", flush=True)
    gone_from = time.monotonic()
    for name in names:
        api.delete_pod(name, wait=False)
    for name in names:
        api.delete_pod(name)
    deadline = time.monotonic() + timeout
    while qemu_rss(prefix) and time.monotonic() < deadline:
        time.sleep(1)
    result["all_deleted_s"] = time.monotonic() - gone_from
    result["qemu_left"] = len(qemu_rss(prefix))
    if result["qemu_left"]:
        print(f"  deleting the pods ran out of {timeout:.0f} s: {result['qemu_left']} pod VMs "
              "left", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--idle", default="10,50")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--density", type=int, default=0, metavar="N",
                        help="then N idle pods at once: time to all Running, host memory, "
                             "clean deletion (0: skip)")
    parser.add_argument("--density-timeout", type=float, default=1800.0, metavar="SECONDS")
    args = parser.parse_args()
    accel, why = detect_accelerator()
    print(f"accelerator: {accel} {why}".rstrip(), flush=True)
    result: dict[str, Any] = {"accelerator": accel, "cpus": os.cpu_count(),
                              "kernel": platform.release()}
    kernel, choice = kernel_for_pods(CACHE)
    print(f"pod VMs boot {choice.reason}" if choice.built else
          f"pod VMs boot the distro kernel {kernel.release}: {choice.reason}", flush=True)
    result["pod_kernel"] = {"release": kernel.release, "built": choice.built is not None,
                            "reason": choice.reason}
    print(f"bare qemu -kernel boot to the pod init ({kernel.release}):", flush=True)
    result["bare_boot_s"] = summary(bare_boot(accel, kernel))
    print(f"  {result['bare_boot_s']}", flush=True)
    # Debian's kernel with the same initramfs (the init's first line comes before it loads
    # any module, so the pod kernel's initramfs, which has none, serves both).
    distro = pod_kernel(CACHE / "podvm")
    same_initrd = PodKernel(distro.kernel, kernel.initrd, distro.release)
    print(f"bare qemu -kernel boot to the pod init ({distro.release}, Debian's):", flush=True)
    result["distro_bare_boot_s"] = summary(bare_boot(accel, same_initrd))
    result["pod_kernel_ratio_to_distro"] = {
        "median": result["bare_boot_s"]["median"] / result["distro_bare_boot_s"]["median"]}
    print(f"  {result['distro_bare_boot_s']}; ratio {result['pod_kernel_ratio_to_distro']}",
          flush=True)

    base = Path(tempfile.mkdtemp(prefix="pacific-bench-pods-", dir="/var/tmp"))
    base.chmod(0o711)
    registry = LocalRegistry().start()
    env = {"LAB_CACHE_DIR": str(CACHE), "LAB_REGISTRIES_PRIVATE": registry.host,
           "LAB_REGISTRIES_INSECURE": registry.host}
    lab = LabServer(base / "state", extra_env=env)
    try:
        image = push_busybox(registry)
        lab.start()
        api = Api(lab)
        r = api.session.post(api.url("/api/v1/namespaces"), json={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}, timeout=30)
        r.raise_for_status()
        cache = lab.state_dir / "pod-images"
        for cold in (True, False):
            label = "cold" if cold else "warm"
            print(f"pod start latency, {label} image cache ({args.pods} pods):", flush=True)
            times = start_latency(api, image, args.pods, cold, cache)
            result[f"start_{label}_s"] = summary(times)
            result[f"start_{label}_ratio_to_bare"] = {
                k: result[f"start_{label}_s"][k] / result["bare_boot_s"]["median"]
                for k in ("median", "p95")}
        print("memory of idle pod VMs:", flush=True)
        result["idle_memory"] = idle_memory(api, image, [int(n) for n in args.idle.split(",")],
                                            pod_prefix(lab.state_dir))
        if args.density:
            print(f"density: {args.density} idle pods at once:", flush=True)
            result["density"] = density(api, image, args.density, pod_prefix(lab.state_dir),
                                        args.density_timeout)
    finally:
        lab.stop()
        lab.remove_leftovers()
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
