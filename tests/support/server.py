"""A real host service on loopback, for API and end-to-end tests.

It is started as its own process (``python -m appliance.cli serve``) with a
state directory under the test's temporary directory, exactly as ``lab up``
starts it, so tests exercise the real HTTPS server, database and controllers.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]


def address_offset(count: int = 16) -> int:
    """A random offset in ``0 .. count-1`` for a test's address ranges (198.18.X.0/24 and
    the like). When ``lab test`` runs tiers side by side it tells each its place
    (``LAB_TEST_STREAM=i/n``), and each takes its own slice of the offsets."""
    import random

    index, _, streams = os.environ.get("LAB_TEST_STREAM", "0/1").partition("/")
    try:
        i, n = int(index), max(1, int(streams))
    except ValueError:
        i, n = 0, 1
    width = max(1, count // n)
    return (i % n) * width + random.randrange(width)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LabServer:
    def __init__(self, state_dir: Path, database_url: str = "", extra_env: dict[str, str] | None
                 = None) -> None:
        self.state_dir = state_dir
        self.api_port = free_port()
        self.dashboard_port = free_port()
        self.registry_port = free_port()
        self.database_url = database_url
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "test-service.log"
        #: Tokens and passwords the tests used, and (after a check) every secret value
        #: of the lab: the exposure check looks for them (tests/support/exposure.py).
        self.used_secrets: set[str] = set()
        self.exposure_values: set[str] = set()

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
        env.update({"LAB_STATE_DIR": str(self.state_dir), "LAB_API_PORT": str(self.api_port),
                    "LAB_DASHBOARD_PORT": str(self.dashboard_port), "LAB_API_BIND": "127.0.0.1",
                    "LAB_REGISTRY_PORT": str(self.registry_port),
                    "LAB_PUBLIC_HOST": "127.0.0.1", "PYTHONPATH": str(ROOT),
                    # namespace networks change the host (br-int, dnsmasq, nftables):
                    # a test that wants them sets LAB_NETWORK_* in extra_env
                    "LAB_NETWORK_ENABLED": "false",
                    # Many test labs share the host's daemons; the one test that kills
                    # them asks its lab to keep them (LAB_KEEP_HOST_DAEMONS in extra_env).
                    "LAB_KEEP_HOST_DAEMONS": "false"})
        if self.database_url:
            env["LAB_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    @property
    def registry(self) -> str:
        """The lab registry's ``HOST:PORT``."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> str:
        return str(self.state_dir / "pki" / "ca.crt")

    @property
    def admin_kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    def start(self, timeout: float = 60) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                    raise RuntimeError(f"host service exited: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"host service not ready in {timeout}s: {self.log_tail()}")

    def ready(self) -> bool:
        if not Path(self.ca_file).exists():
            return False
        session = requests.Session()
        session.trust_env = False
        try:
            return session.get(self.url + "/readyz", verify=self.ca_file,
                               timeout=2).status_code == 200
        except requests.RequestException:
            return False
        finally:
            session.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self, check_exposure: bool = True) -> None:
        """Stop the service; first (unless told not to) check that it exposed nothing:
        ``tests/support/exposure.py``."""
        from tests.support import exposure

        running = self.proc is not None and self.proc.poll() is None
        try:
            if check_exposure and running:
                exposure.check(self)
        finally:
            self.kill(signal.SIGTERM)
        if check_exposure and running:
            exposure.finish(self)

    def remove_leftovers(self) -> list[str]:
        """Domains (VMs and pod VMs) and the storage pool of this lab that a failed test
        left behind; the agent removes them itself when their objects are deleted."""
        import hashlib

        from appliance.agent.vmnames import pod_prefix, vm_prefix
        from hypervisor.disks import DiskStore
        from hypervisor.libvirt_driver import LibvirtDriver

        driver = LibvirtDriver()
        removed = []
        try:
            for prefix in (vm_prefix(self.state_dir), pod_prefix(self.state_dir)):
                for name in driver.list_domains(prefix):
                    driver.ensure_absent(name)
                    removed.append(name)
            pool = f"pacific-vms-{hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:8]}"
            DiskStore(driver, self.state_dir).remove_pool(pool, delete_volumes=True)
        finally:
            driver.close()
        return removed

    def lab(self, *args: str, input: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "appliance.cli", *args], env=self.env,
                              input=input, capture_output=True, text=True, cwd=ROOT, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"lab {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc

    def add_user(self, name: str, password: str, admin: bool = False) -> None:
        self.used_secrets.add(password)
        self.lab("user", "add", name, "--password-stdin", *(["--admin"] if admin else []),
                 input=password + "\n")

    def login(self, name: str, password: str) -> dict[str, Any]:
        with requests.Session() as session:
            session.trust_env = False
            r = session.post(self.url + "/login", auth=(name, password),
                             verify=self.ca_file, timeout=30)
        self.used_secrets.add(password)
        r.raise_for_status()
        self.used_secrets.add(r.json()["token"])
        return dict(r.json())

    @property
    def admin_credentials(self) -> tuple[str, str]:
        """(user, password) of the administrator made on first start."""
        lines = (self.state_dir / "admin-credentials").read_text().splitlines()
        values = dict(line.split(": ", 1) for line in lines if ": " in line)
        return values["user"], values["password"]

    @property
    def dashboard_url(self) -> str:
        return f"https://127.0.0.1:{self.dashboard_port}"

    def admin_token(self) -> str:
        config = yaml.safe_load(self.admin_kubeconfig.read_text())
        return str(config["users"][0]["user"]["token"])

    def kubeconfig(self, path: Path, token: str, namespace: str = "") -> Path:
        ctx: dict[str, Any] = {"cluster": "lab", "user": "u"}
        if namespace:
            ctx["namespace"] = namespace
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
                  "clusters": [{"name": "lab", "cluster": {
                      "server": self.url, "certificate-authority-data":
                          base64.b64encode(Path(self.ca_file).read_bytes()).decode()}}],
                  "users": [{"name": "u", "user": {"token": token}}],
                  "contexts": [{"name": "c", "context": ctx}]}
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


@dataclass
class NetworkLab:
    """A host service with namespace networks on (OVS, dnsmasq, HAProxy) on a bridge and
    address ranges of its own, so that it never meets another test's network."""

    server: LabServer
    config: Any  # appliance.network.config.NetworkConfig
    tag: str


@contextmanager
def network_lab(prefix: str, extra_env: dict[str, str] | None = None,
                with_image: bool = True) -> Iterator[NetworkLab]:
    """Start a :class:`LabServer` with namespace networks (and the debian-12 image in its
    library, from the cache); on the way out stop it and remove its domains, its pool
    and everything its networks put on the host."""
    import random
    import shutil
    import string
    import tempfile

    from appliance.network.config import NetworkConfig
    from appliance.network.controllers import remove_host_network
    from appliance.settings import load_settings

    tag = prefix[0] + "".join(random.choice(string.ascii_lowercase) for _ in range(2))
    octet = address_offset()
    base = Path(tempfile.mkdtemp(prefix=f"pacific-{prefix}-{tag}-", dir="/var/tmp"))
    base.chmod(0o711)  # QEMU (libvirt-qemu) must reach the disks below
    env = {"LAB_NETWORK_ENABLED": "true", "LAB_NETWORK_TAG": tag,
           "LAB_NETWORK_BRIDGE": f"{tag}-int",
           "LAB_NETWORK_POOL_CIDR": f"198.18.{16 + octet}.0/24",
           "LAB_NETWORK_INGRESS_CIDR": f"198.18.{48 + octet}.0/26",
           "LAB_NETWORK_CLUSTER_IP_CIDR": f"198.18.{48 + octet}.64/26"}
    server = LabServer(base / "state", extra_env={
        **env, "LAB_CACHE_DIR": os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab"),
        **(extra_env or {})})
    settings = load_settings(environ=env, state_dir=base / "state")
    config = NetworkConfig.from_settings(settings)
    server.start()
    try:
        if with_image:
            proc = server.lab("image", "build", "debian-12", check=False)
            assert proc.returncode == 0, proc.stderr
        yield NetworkLab(server, config, tag)
    finally:
        server.stop()
        print(server.log_tail(80))
        try:
            server.remove_leftovers()
            remove_host_network(settings, config)
        finally:
            shutil.rmtree(base, ignore_errors=True)
