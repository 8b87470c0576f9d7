"""Control-plane VMs: failover time, and the HA store against the embedded one (issue 13).

    .venv/bin/python benchmarks/control_plane.py [--kills 5] [--vms 3] [--out FILE.json]

One run, on this host, with a lab of its own (a temporary state directory, run by
``lab up`` as a daemon, as ``tests/e2e/test_controlplane_vms.py`` does):

1. **embedded baseline**: ConfigMap creates/s (1 client) and watch latency (create
   → ADDED event) against the host service on its SQLite store, with the phases of
   ``benchmarks/api.py``;
2. ``lab up --control-plane-vms N`` moves the lab into N VMs; the same two phases run
   against the API on the floating IP (PostgreSQL with synchronous replication
   under Patroni, the supervisor in an emulated VM when the host has no KVM);
3. **failover**, ``--kills`` times: with the control plane healthy (every VM Ready,
   one primary, somebody holding the floating IP), ``virsh destroy`` the VM that
   holds the floating IP and time until the API on the floating IP answers
   ``/readyz`` and then takes a write (a ConfigMap create): p50 and max. Before the
   next kill it waits for the lost VM to be back (the host's VM agent starts it);
4. **roll**: ``lab up`` run from a clone of this checkout one commit ahead (what a
   ``git pull`` brings) rolls that code through the VMs, one at a time and the floating
   IP's holder last, while a thread asks the floating IP's ``/readyz`` every second:
   the roll's time, the probes answered and the longest silence. Every VM's supervisor
   must then report the new code (the Node annotation ``pacific.lab/code``);
5. ``--control-plane-vms 0`` and ``lab down``; the state directory is removed.

Ratios are HA / embedded, measured in the same run. Everything stays on this host:
loopback and the appliance network's bridge.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import yaml  # noqa: E402

from appliance.agent.vmnames import domain_name, vm_prefix  # noqa: E402
from appliance.controlplane.node import control_plane_summary  # noqa: E402
from hypervisor.applianceimage import code_stamp, project_files  # noqa: E402
from benchmarks.api import (  # noqa: E402
    NAMESPACE,
    Api,
    Limits,
    api_creates,
    api_watch_latency,
    configmap_body,
    note,
)
from tests.support.checkout import newer_checkout  # noqa: E402
from tests.support.server import LabServer  # noqa: E402

LIMITS = Limits(duration=30.0, max_ops_1=200, max_ops_n=200, events=30)


class LabApi(Api):
    """``benchmarks.api.Api`` against wherever the lab's admin kubeconfig points."""

    def __init__(self, server: LabServer) -> None:
        super().__init__(server, [])
        config = yaml.safe_load(server.admin_kubeconfig.read_text())
        self.server_url = str(config["clusters"][0]["cluster"]["server"])
        self.token = str(config["users"][0]["user"]["token"])

    def url(self, path: str) -> str:
        return self.server_url + path


def lab(server: LabServer, *args: str, timeout: float = 1800, checkout: Path = ROOT) -> str:
    """``lab ARGS`` as run from ``checkout`` (its code, its files)."""
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", *args],
                          env={**server.env, "PYTHONPATH": str(checkout)},
                          capture_output=True, text=True, cwd=checkout, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"lab {' '.join(args)}: {proc.stderr}{proc.stdout}")
    return proc.stdout


def store_phases(api: LabApi, tag: str) -> dict[str, Any]:
    creates, _ = api_creates(api, f"{tag}-c", 1, LIMITS)
    watch = api_watch_latency(api, f"{tag}-w", 1, LIMITS)
    return {"creates_per_second": round(creates.per_second, 1), "creates": creates.to_dict(),
            "watch": asdict(watch)}


def health(api: LabApi, vms: int) -> str | None:
    """The floating IP's holder once every control-plane VM is Ready with one primary."""
    with api.session() as s:
        try:
            nodes = s.get(api.url("/api/v1/nodes"), timeout=10).json().get("items") or []
        except (requests.RequestException, ValueError):
            return None
    rows, holder = control_plane_summary(nodes)
    ready = [r for r in rows if r["ready"] == "True" and r["etcd"] == "member" and
             r["database"] in ("primary", "replica")]
    primaries = sum(r["database"] == "primary" for r in ready)
    return holder if len(ready) == vms and primaries == 1 and holder else None


def wait(what: str, check: Any, timeout: float, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise RuntimeError(f"timed out waiting for {what}")


def failover(server: LabServer, api: LabApi, vms: int, index: int) -> float:
    holder = wait("a healthy control plane", lambda: health(api, vms), 1200, 5)
    dom = domain_name({"metadata": {"namespace": "kube-system", "name": holder}},
                      vm_prefix(server.state_dir))
    note(f"kill {index}: virsh destroy {holder}")
    subprocess.run(["virsh", "-c", "qemu:///system", "destroy", dom], check=True,
                   capture_output=True, timeout=60)
    lost = time.monotonic()

    attempts = iter(range(1_000_000))

    def writes() -> bool:
        # A new name each try: a create whose answer was lost in the failover may still
        # have been committed, and its name would then be taken (409) for good.
        name = f"failover-{index}-{next(attempts)}"
        try:
            with api.session() as s:
                if s.get(api.url("/readyz"), timeout=3).status_code != 200:
                    return False
                r = s.post(api.url(f"/api/v1/namespaces/{NAMESPACE}/configmaps"),
                           json=configmap_body(name, index), timeout=10)
                return r.status_code == 201
        except requests.RequestException:
            return False

    wait("the floating IP to answer and take a write", writes, 600, 0.5)
    seconds = time.monotonic() - lost
    note(f"kill {index}: the API took a write after {seconds:.1f} s")
    return seconds


class Availability:
    """A URL (the floating IP's ``/readyz``) asked every second in a thread."""

    def __init__(self, url: str, ca: Path) -> None:
        self.url, self.context = url, ssl.create_default_context(cafile=str(ca))
        self.probes = self.answered = 0
        self.silences: list[float] = []
        self._silent_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, context=self.context, timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            now, ok = time.monotonic(), self._ok()
            self.probes += 1
            if ok:
                self.answered += 1
                if self._silent_since is not None:
                    self.silences.append(now - self._silent_since)
                    self._silent_since = None
            elif self._silent_since is None:
                self._silent_since = now

    def __enter__(self) -> Availability:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._silent_since is not None:
            self.silences.append(time.monotonic() - self._silent_since)


def roll(server: LabServer, api: LabApi, vms: int, work: Path) -> dict[str, Any]:
    """``lab up`` from a newer checkout, with the floating IP watched throughout."""
    holder = wait("a healthy control plane", lambda: health(api, vms), 1200, 5)
    newer = newer_checkout(work / "newer")
    code = code_stamp(newer, project_files(newer))["code"][:12]
    note(f"rolling {code} through the control-plane VMs ({holder} holds the floating IP)")
    with Availability(api.url("/readyz"), Path(server.ca_file)) as probe:
        started = time.monotonic()
        out = lab(server, "up", "--skip-host-prep", checkout=newer)
        seconds = time.monotonic() - started
    rolled = [line.split()[0] for line in out.splitlines() if " runs the new code (" in line]

    def reports_new_code() -> bool:
        with api.session() as s:
            try:
                nodes = s.get(api.url("/api/v1/nodes"), timeout=10).json().get("items") or []
            except (requests.RequestException, ValueError):
                return False
        found = [n["metadata"].get("annotations", {}).get("pacific.lab/code") for n in nodes
                 if "node-role.kubernetes.io/control-plane" in n["metadata"].get("labels", {})]
        return len(found) == vms and all(c == code for c in found)

    wait("every supervisor to report the new code", reports_new_code, 300, 5)
    return {"seconds": round(seconds, 1), "order": rolled, "holder_before": holder,
            "readyz_probes": probe.probes, "readyz_answered": probe.answered,
            "longest_silence_seconds": round(max(probe.silences, default=0.0), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--vms", type=int, choices=(1, 3), default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="bench-cp-", dir="/var/tmp"))
    base.chmod(0o711)
    server = LabServer(base / "state", extra_env={"LAB_CACHE_DIR": "/var/cache/pacific-lab"})
    result: dict[str, Any] = {"command": " ".join(["benchmarks/control_plane.py", *sys.argv[1:]]),
                              "machine": {"cpus": os.cpu_count(),
                                          "python": platform.python_version()},
                              "vms": args.vms}
    try:
        lab(server, "up", "--skip-host-prep")
        api = LabApi(server)
        with api.session() as s:
            s.post(api.url("/api/v1/namespaces"), json={
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                timeout=30).raise_for_status()
        note("embedded: creates and watch latency")
        result["embedded"] = store_phases(api, "embedded")
        note(f"moving into {args.vms} control-plane VM(s)")
        started = time.monotonic()
        lab(server, "up", "--skip-host-prep", "--control-plane-vms", str(args.vms))
        result["move_in_seconds"] = round(time.monotonic() - started, 1)
        api = LabApi(server)
        wait("a healthy control plane", lambda: health(api, args.vms), 1200, 5)
        note("HA: creates and watch latency")
        result["ha"] = store_phases(api, "ha")
        times = [failover(server, api, args.vms, i) for i in range(1, args.kills + 1)]
        result["failover_seconds"] = {"all": [round(t, 1) for t in times],
                                      "p50": round(statistics.median(times), 1),
                                      "max": round(max(times), 1)}
        emb, ha = result["embedded"], result["ha"]
        result["ratios_ha_over_embedded"] = {
            "creates_per_second": round(ha["creates_per_second"] /
                                        max(emb["creates_per_second"], 1e-9), 3),
            "watch_median_ms": round((ha["watch"]["median_ms"] or 0) /
                                     max(emb["watch"]["median_ms"] or 1e-9, 1e-9), 2)}
        if args.vms > 1:
            result["roll"] = roll(server, api, args.vms, base)
        note("moving back")
        wait("a healthy control plane", lambda: health(api, args.vms), 1200, 5)
        lab(server, "up", "--skip-host-prep", "--control-plane-vms", "0")
    finally:
        subprocess.run([sys.executable, "-m", "appliance.cli", "down"], env=server.env,
                       capture_output=True, cwd=ROOT, timeout=120)
        left = server.remove_leftovers()
        if left:
            note(f"removed domains left behind: {left}")
        shutil.rmtree(base, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
