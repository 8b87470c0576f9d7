"""`vagrant up lab` benchmark: a lab host in a VM with the box cached, phase by phase,
against `./lab up` on this host, in one run.

    .venv/bin/python benchmarks/vagrant.py [--out FILE.json] [--skip-vagrant] [--skip-host]

1. `lab box build` with the box already built and cached: what is left is `vagrant box
   add` into a Vagrant home of the benchmark's own (box import, part 1).
2. `vagrant up lab` (2 vCPUs, 3 GiB, as tests/e2e/test_vagrant.py): the box's upload into
   the libvirt pool (box import, part 2), boot to SSH, hostname, port forwarders and
   rsync, provisioning (the venv step, Ansible running playbooks/host.yml), `lab up`.
3. `vagrant up lab --provision` again (changes nothing; vagrant-libvirt 0.11 runs the
   provisioners twice there, vagrant-libvirt#1710), `vagrant provision lab` (once), then
   `vagrant destroy -f`.
4. `./lab up` on this host, twice: with a state directory of its own (a first start,
   as in the VM), the namespace networks off so that nothing on the shared host changes;
   then `./lab down`.

Runs as root, on a host prepared by `./lab up` or `./lab test`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.test_vagrant import (CACHE_DIR, VM_CPUS, VM_MEMORY_MIB, VagrantLab,  # noqa: E402
                                    host_accelerator, up_phases)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vagrant_phases() -> dict[str, Any]:
    lab = VagrantLab.create(CACHE_DIR / "vagrant-bench")
    result: dict[str, Any] = {}
    try:
        box = lab.build_box()
        result["box_add"] = round(box.seconds, 1)
        first = lab.vagrant("up", "lab", name="bench_first_up")
        if first.rc != 0:
            raise SystemExit(f"vagrant up lab failed:\n{first.tail(60)}")
        result["first_up"] = up_phases(first)
        result["first_up"]["recap"] = first.recaps()
        second = lab.vagrant("up", "lab", "--provision", name="bench_second_up")
        if second.rc != 0:
            raise SystemExit(f"vagrant up lab --provision failed:\n{second.tail(60)}")
        result["second_up"] = up_phases(second)
        result["second_up"]["recaps"] = second.recaps()
        again = lab.vagrant("provision", "lab", name="bench_provision")
        result["provision_again"] = up_phases(again)
        result["provision_again"]["recaps"] = again.recaps()
        destroy = lab.vagrant("destroy", "-f", "lab", timeout=600, name="bench_destroy")
        result["destroy"] = round(destroy.seconds, 1)
        result["leftovers"] = lab.leftovers()
    finally:
        lab.cleanup()
    return result


def host_lab_up() -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix="pacific-bench-", dir="/var/tmp"))
    state.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env.update({"LAB_STATE_DIR": str(state), "LAB_API_PORT": str(_free_port()),
                "LAB_DASHBOARD_PORT": str(_free_port()), "LAB_REGISTRY_PORT": str(_free_port()),
                "LAB_NETWORK_ENABLED": "false"})
    result: dict[str, Any] = {}
    try:
        for name in ("first", "second"):
            started = time.monotonic()
            proc = subprocess.run([str(ROOT / "lab"), "up"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=1800, check=False)
            result[name] = round(time.monotonic() - started, 1)
            if proc.returncode != 0:
                raise SystemExit(f"./lab up failed:\n{proc.stdout}{proc.stderr}")
    finally:
        subprocess.run([str(ROOT / "lab"), "down"], cwd=ROOT, env=env, capture_output=True,
                       timeout=300, check=False)
        shutil.rmtree(state, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--skip-vagrant", action="store_true")
    parser.add_argument("--skip-host", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (libvirt, mmdebstrap, ./lab)")
    figures: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "accelerator": host_accelerator()},
        "vm": {"cpus": VM_CPUS, "memory_mib": VM_MEMORY_MIB}}
    if not args.skip_vagrant:
        figures["vagrant"] = vagrant_phases()
    if not args.skip_host:
        figures["host_lab_up"] = host_lab_up()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
