"""Idle CPU of the host service: this checkout against a baseline revision, in one run.

    .venv/bin/python benchmarks/idle_cpu.py [--baseline-rev REV] [--seconds 60]
        [--warmup 20] [--out FILE.json]

An idle host service (no namespaces, VMs or pods; every controller, watch and agent
running, the lab registry on) still does some work: Lease renewals, Node heartbeats,
watch heartbeats, the store's revision polls. Inside an emulated VM (a control-plane
VM or the Vagrant lab under TCG) every one of those costs ten times more, so the
figure matters beyond the host.

For each of the baseline revision (a ``git worktree`` of ``--baseline-rev``, default
``HEAD~1``) and this checkout, in turn: start ``lab serve`` with a fresh state
directory on loopback (``tests/support/server.py``), wait ``--warmup`` seconds, then
read the service's CPU time (user + system, from ``/proc``) over ``--seconds``. The
result is CPU seconds per minute for each, and ``ratio`` = this / baseline.
Everything is stopped and removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.server import LabServer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(checkout: Path, seconds: float, warmup: float) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="idle-cpu-", dir="/var/tmp"))
    base.chmod(0o711)
    server = LabServer(base / "state")
    server.extra_env["PYTHONPATH"] = str(checkout)
    server_env = server.env  # the checkout's own code: on the path and as the cwd
    try:
        server.state_dir.mkdir(parents=True)
        log = open(server.log_path, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve"], cwd=checkout,
                                env=server_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        server.proc = proc
        time.sleep(warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"lab serve of {checkout} exited: {server.log_tail(40)}")
        before = cpu_seconds(proc.pid)
        time.sleep(seconds)
        used = cpu_seconds(proc.pid) - before
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
        return {"cpu_seconds_per_minute": round(used * 60 / seconds, 3), "threads": threads}
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-rev", default="HEAD~1")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline_rev], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    worktree = Path(tempfile.mkdtemp(prefix="idle-cpu-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(worktree), rev], cwd=ROOT,
                   capture_output=True, check=True)
    try:
        baseline = measure(worktree, args.seconds, args.warmup)
        current = measure(ROOT, args.seconds, args.warmup)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                       capture_output=True, check=False)
        shutil.rmtree(worktree, ignore_errors=True)
    result = {"baseline_rev": rev, "seconds": args.seconds, "baseline": baseline,
              "current": current,
              "ratio": round(current["cpu_seconds_per_minute"]
                             / max(baseline["cpu_seconds_per_minute"], 1e-9), 3)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
