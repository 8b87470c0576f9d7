"""The control-plane VMs' configuration, checked by the real tools of the appliance image.

The image is built (or taken from the cache) and loop-mounted read-only as in
``test_appliance_image``. Each control-plane VM is stood in for by namespaces of this
host, not booted: a mount namespace whose root is an overlay (the read-only image
below, a tmpfs above) and a network namespace whose ``eth0`` (with the member's MAC and
address) is plugged into a bridge that only these namespaces share. The image's own
programs run there through ``chroot``:

- cloud-init checks the user-data against its schema and its ``write_files`` and
  ``users_groups`` modules apply it (the files, modes and owners come from cloud-init,
  not from this test); its networkd renderer renders the network-config;
- keepalived ``--config-test``, and keepalived running: one member holds the VIP,
  and it moves when that member's ``/readyz`` stops answering;
- etcd started from ``/etc/default/etcd`` forms the cluster;
- ``patroni --validate-config`` (it needs the etcd members to answer), then Patroni
  bootstraps PostgreSQL: the post_bootstrap script makes the supervisor's role and
  database, standbys stream (one synchronous with 3 members), and the supervisor's
  ``LAB_DATABASE_URL`` reaches the primary through SQLAlchemy and psycopg from the
  image's virtual environment, where the project's migrations run.

What is not checked here: systemd (no systemd runs in the namespaces: the services are
started the way their units would start them, with ``EnvironmentFile`` read by ``sh``),
the interface renaming done at boot, and ``lab serve`` itself: keepalived's check is
answered by a small HTTPS server standing in for the supervisor's ``/readyz``.

Everything the test starts lives in its namespaces; the mounts go with them. The
namespaces' processes are all started here and are ended by their ids."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from appliance.controlplane.config import (ETCD_CLIENT_PORT, ETCD_ENV, KEEPALIVED_CONF, LAB_ENV,
                                           PATRONI_CONFIG, PkiFiles, Plan, meta_data,
                                           network_config, plan_for, render_member, user_data)
from appliance.pki import ensure_pki
from hypervisor.applianceimage import VENV_DIR
from hypervisor.proc import Completed, ProcessError, run
from tests.e2e.test_appliance_image import build, root  # noqa: F401 - fixtures: the image, mounted

pytestmark = pytest.mark.e2e

CIDR = "198.18.0.0/24"
PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
CLUSTER_TIMEOUT = 180.0
T = TypeVar("T")

# Stands in for the supervisor's /readyz (lab serve cannot run here: see the docstring).
READYZ_STAND_IN = textwrap.dedent("""\
    import http.server, ssl
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/readyz" else 404)
            self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 6443), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("/var/lib/pacific-lab/pki/server.crt",
                            "/var/lib/pacific-lab/pki/server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
    """)

# Run in a member with the supervisor's environment file read: the URL through the
# project's own engine, and its migrations.
DATABASE_CHECK = textwrap.dedent("""\
    import json, os
    from appliance.store.db import make_engine, migrate
    engine = make_engine(os.environ["LAB_DATABASE_URL"])
    migrate(engine)
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT current_user, current_database(), pg_is_in_recovery(), "
            "host(inet_server_addr()), current_setting('synchronous_commit'), "
            "current_setting('synchronous_standby_names'), "
            "(SELECT count(*) FROM alembic_version)").one()
    print(json.dumps(list(row)))
    """)


# The supervisor's URL, for a write and a read of one row.
WRITE = textwrap.dedent("""\
    import os, sys
    from appliance.store.db import make_engine
    with make_engine(os.environ["LAB_DATABASE_URL"]).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS durability (v text)")
        conn.exec_driver_sql("INSERT INTO durability VALUES (%s)", (sys.argv[1],))
    """)
READ = textwrap.dedent("""\
    import json, os
    from appliance.store.db import make_engine
    with make_engine(os.environ["LAB_DATABASE_URL"]).connect() as conn:
        rows = [r[0] for r in conn.exec_driver_sql("SELECT v FROM durability")]
        server = conn.exec_driver_sql("SELECT host(inet_server_addr())").scalar()
    print(json.dumps({"rows": rows, "server": server}))
    """)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float,
             interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _ns(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


class Ids:
    """The image's users and groups (names differ from this host's)."""

    def __init__(self, image: Path) -> None:
        self.users = {f[0]: (int(f[2]), int(f[3]), f[5]) for f in self._read(image / "etc/passwd")}
        self.groups = {f[0]: int(f[2]) for f in self._read(image / "etc/group")}

    @staticmethod
    def _read(path: Path) -> list[list[str]]:
        return [line.split(":") for line in path.read_text().splitlines() if line]


class Machine:
    """One control-plane VM, stood in for by a mount, network and UTS namespace."""

    def __init__(self, name: str, image: Path, work: Path, ids: Ids) -> None:
        self.name, self.image, self.work, self.ids = name, image, work, ids
        self.root = work / "root"  # the overlay, as the namespace sees it
        self.holder: subprocess.Popen[bytes] | None = None
        self.mnt_ns = ""
        self.spawned: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def start(self) -> None:
        self.work.mkdir(parents=True)
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--net", "--uts", "--propagation", "private", "--",
             "sleep", "infinity"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        host_ns = _ns("self", "mnt")

        def entered() -> str | None:
            try:
                comm = Path(f"/proc/{self.pid}/comm").read_text().strip()
                ns = _ns(self.pid, "mnt")
            except OSError:
                return None
            return ns if comm == "sleep" and ns != host_ns else None
        self.mnt_ns = wait_for(f"{self.name}'s namespaces", entered, 10.0, 0.05)
        w, r = self.work, self.root
        self.host("sh", "-ec", f"""
            mount -t tmpfs -o mode=0700,size=1g {self.name} {w}
            mkdir {w}/upper {w}/work {r}
            mount -t overlay overlay -o lowerdir={self.image},upperdir={w}/upper,workdir={w}/work {r}
            mount -t proc proc {r}/proc
            mount -t sysfs sysfs {r}/sys
            mount --rbind /dev {r}/dev
            mount -t tmpfs -o mode=1777 shm {r}/dev/shm
            mount -t tmpfs -o mode=0755 run {r}/run
            mount -t tmpfs -o mode=1777 tmp {r}/tmp
            ip link set lo up
            hostname {self.name}
            """)

    def _enter(self) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--mount", "--net", "--uts", "--"]

    def host(self, *cmd: str, check: bool = True) -> Completed:
        """A command of this host, in the namespaces."""
        return run([*self._enter(), *cmd], check=check, timeout=60)

    def _chroot(self, cmd: tuple[str, ...], user: str) -> list[str]:
        uid, gid, home = self.ids.users[user]
        return [*self._enter(), "chroot", f"--userspec={uid}:{gid}", f"--groups={gid}",
                str(self.root), "env", "-i", PATH, f"HOME={home}", "LANG=C.UTF-8",
                "PYTHONDONTWRITEBYTECODE=1", *cmd]

    def chroot(self, *cmd: str, user: str = "root", check: bool = True,
               timeout: float = 120) -> Completed:
        """A command of the image, in the namespaces."""
        return run(self._chroot(cmd, user), check=check, timeout=timeout)

    def spawn(self, label: str, *cmd: str, user: str = "root") -> subprocess.Popen[bytes]:
        log = (self.work.parent / f"{self.name}-{label}.log").open("ab")
        proc = subprocess.Popen(self._chroot(cmd, user), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.spawned[label] = proc
        return proc

    def stop(self, label: str) -> None:
        proc = self.spawned.pop(label)
        proc.terminate()
        proc.wait(timeout=30)

    def crash(self) -> None:
        """The VM loses power: every process in it is killed at once (not the holder)."""
        for pid in self.processes():
            if pid != self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        wait_for(f"{self.name}'s processes to die", lambda: self.processes() == [self.pid], 30.0)
        for proc in self.spawned.values():
            proc.wait(timeout=10)
        self.spawned.clear()

    def supervisor_python(self, script: str, *args: str, timeout: float = 180) -> Completed:
        """``script`` with the image's virtual environment and the supervisor's settings."""
        return self.chroot("sh", "-c", f'set -a; . {LAB_ENV}; exec "$0" -c "$@"',
                           f"{VENV_DIR}/bin/python", script, *args, timeout=timeout)

    def log(self, label: str) -> str:
        path = self.work.parent / f"{self.name}-{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def path(self, inside: str) -> Path:
        """A path of the VM's root, reached through the namespace holder's view."""
        return Path(f"/proc/{self.pid}/root") / str(self.root).lstrip("/") / inside.lstrip("/")

    def processes(self) -> list[int]:
        """Every process in this machine's mount namespace: the holder and what was started."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if _ns(entry, "mnt") == self.mnt_ns:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def close(self) -> None:
        if self.holder is None:
            return
        if self.mnt_ns:
            for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
                for pid in self.processes():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
                deadline = time.monotonic() + grace
                while self.processes() and time.monotonic() < deadline:
                    for proc in (*self.spawned.values(), self.holder):
                        proc.poll()
                    time.sleep(0.1)
        for proc in (*self.spawned.values(), self.holder):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        left = self.processes() if self.mnt_ns else []
        self.holder = None
        assert not left, f"{self.name}: processes left in its namespace: {left}"


class Cluster:
    """The control plane of ``plan`` on machines in namespaces, on one private bridge."""

    def __init__(self, image: Path, plan: Plan, pki: PkiFiles, ssh_key: str, work: Path) -> None:
        self.image, self.plan, self.pki, self.ssh_key, self.work = image, plan, pki, ssh_key, work
        ids = Ids(image)
        self.machines = [Machine(m.name, image, work / m.name, ids) for m in plan.members]
        self.switch: subprocess.Popen[bytes] | None = None
        self.etcd_started = self.patroni_started = False
        self.validated: list[Completed] = []

    def start(self) -> None:
        self.switch = subprocess.Popen(["unshare", "--net", "--", "sleep", "infinity"],
                                       stdin=subprocess.DEVNULL)
        host_ns = _ns("self", "net")
        switch = self.switch
        wait_for("the switch's namespace",
                 lambda: _ns(switch.pid, "net") != host_ns
                 and Path(f"/proc/{switch.pid}/comm").read_text().strip() == "sleep", 10.0, 0.05)
        enter = ["nsenter", f"--target={switch.pid}", "--net", "--"]
        run([*enter, "sh", "-ec", "ip link add br0 type bridge && ip link set br0 up"])
        for index, (member, machine) in enumerate(zip(self.plan.members, self.machines,
                                                      strict=True)):
            machine.start()
            iface = self.plan.interface
            run([*enter, "sh", "-ec", f"ip link add cp{index} type veth peer name {iface} "
                 f"netns {machine.pid} && ip link set cp{index} master br0 up"])
            machine.host("sh", "-ec", f"ip link set {iface} address {member.mac} && "
                         f"ip addr add {member.address}/{self.plan.prefix_length} dev {iface} && "
                         f"ip link set {iface} up")
            self._cloud_init(index, machine)

    def _cloud_init(self, index: int, machine: Machine) -> None:
        """Apply the user-data the way cloud-init does at first boot (its own modules)."""
        for name, text in (("user-data", user_data(self.plan, index, self.pki, self.ssh_key)),
                           ("network-config", yaml.safe_dump(network_config(self.plan, index))),
                           ("meta-data", yaml.safe_dump(meta_data(self.plan, index)))):
            target = machine.path(f"/root/seed/{name}")
            target.parent.mkdir(mode=0o700, exist_ok=True)
            target.write_text(text)
            target.chmod(0o600)
        for module in ("write_files", "users_groups"):
            machine.chroot("cloud-init", "--file", "/root/seed/user-data", "single", "--name",
                           module, "--frequency", "always")
        # Debian's postgresql-common makes its socket directory at boot (systemd-tmpfiles).
        machine.chroot("systemd-tmpfiles", "--create",
                       "/usr/lib/tmpfiles.d/postgresql-common.conf")

    def ensure_etcd(self) -> None:
        """Every member's etcd started as etcd.service would: its EnvironmentFile read as
        root, the program run as the user etcd."""
        if self.etcd_started:
            return
        for machine in self.machines:
            machine.spawn("etcd", "sh", "-c", f"set -a; . {ETCD_ENV}; exec setpriv --reuid=etcd "
                          "--regid=etcd --init-groups /usr/bin/etcd")
        self.etcd_started = True
        first = self.machines[0]

        def healthy() -> bool:
            out = first.chroot("etcdctl", f"--endpoints={self.endpoints()}", "endpoint",
                               "health", check=False, timeout=30)
            return out.rc == 0
        try:
            wait_for("every etcd member to be healthy", healthy, 60.0, 1.0)
        except AssertionError:
            raise AssertionError("\n".join(m.log("etcd")[-3000:] for m in self.machines)) from None

    def endpoints(self) -> str:
        return ",".join(f"http://{m.address}:{ETCD_CLIENT_PORT}" for m in self.plan.members)

    def validate_patroni(self) -> list[Completed]:
        """``patroni --validate-config`` on every member, once, before Patroni runs (the
        validator wants the etcd members to answer and Patroni's own ports free)."""
        self.ensure_etcd()
        if not self.validated:
            assert not self.patroni_started
            self.validated = [m.chroot("patroni", "--validate-config", PATRONI_CONFIG,
                                       user="postgres", check=False) for m in self.machines]
        return self.validated

    def ensure_patroni(self) -> list[dict[str, Any]]:
        """Patroni on every member (all at once, as VMs booting together), until the cluster
        has a running leader and every other member streams; ``patronictl list``."""
        self.validate_patroni()
        if not self.patroni_started:
            for machine in self.machines:
                machine.spawn("patroni", "/usr/bin/patroni", PATRONI_CONFIG, user="postgres")
            self.patroni_started = True
        want = {"Leader": 1, "Sync Standby": 1, "Replica": 1} if self.plan.size == 3 \
            else {"Leader": 1}

        def settled() -> list[dict[str, Any]] | None:
            members = self.patronictl_list()
            roles: dict[str, int] = {}
            for m in members:
                if m.get("State") in ("running", "streaming"):
                    roles[m["Role"]] = roles.get(m["Role"], 0) + 1
            return members if roles == want else None
        try:
            return wait_for(f"Patroni members {want}", settled, CLUSTER_TIMEOUT, 2.0)
        except AssertionError:
            raise AssertionError(json.dumps(self.patronictl_list()) + "\n" + "\n".join(
                m.log("patroni")[-4000:] for m in self.machines)) from None

    def patronictl_list(self, via: Machine | None = None) -> list[dict[str, Any]]:
        try:
            out = (via or self.machines[0]).chroot("patronictl", "-c", PATRONI_CONFIG, "list", "-f",
                                          "json", user="postgres", check=False, timeout=20)
            return json.loads(out.stdout) if out.rc == 0 else []
        except (ProcessError, ValueError):  # timed out (etcd not up yet), or no JSON
            return []

    def vip_holders(self) -> list[str]:
        iface = self.plan.interface
        return [m.name for m in self.machines
                if f" {self.plan.vip}/" in m.host("ip", "-4", "-o", "addr", "show", "dev",
                                                  iface).stdout]

    def close(self) -> None:
        problems = []
        for machine in self.machines:
            try:
                machine.close()
            except AssertionError as exc:
                problems.append(str(exc))
        if self.switch is not None:
            self.switch.terminate()
            self.switch.wait(timeout=10)
        assert not problems, problems


def _ssh_public_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH,
                            serialization.PublicFormat.OpenSSH).decode() + " lab@test"


@pytest.fixture(scope="module", params=[1, 3], ids=["1-vm", "3-vms"])
def cluster(request: pytest.FixtureRequest, root: Path,  # noqa: F811 - the fixture
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp(f"controlplane-{request.param}")
    plan = plan_for(request.param, CIDR, work / "state")
    pki = ensure_pki(work / "pki", ["pacific-lab"], [plan.vip, *(m.address for m in plan.members)])
    made = Cluster(root, plan, PkiFiles.read(pki), _ssh_public_key(), work / "machines")
    try:
        made.start()
        yield made
    finally:
        made.close()


# -- cloud-init ---------------------------------------------------------------------------------


def test_cloud_init_takes_the_user_data(cluster: Cluster) -> None:
    for index, machine in enumerate(cluster.machines):
        out = machine.chroot("cloud-init", "schema", "--config-file", "/root/seed/user-data")
        assert "Valid cloud-config" in out.stdout, out
        for path, (content, mode, owner) in render_member(cluster.plan, index, cluster.pki).items():
            target = machine.path(path)
            st = target.lstat()
            user, group = owner.split(":")
            assert target.read_text() == content, path
            assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (
                mode, machine.ids.users[user][0], machine.ids.groups[group]), path
        passwd = machine.path("/etc/passwd").read_text()
        assert re.search(r"^pacific:x:\d+:\d+:", passwd, re.M)
        keys = machine.path("/home/pacific/.ssh/authorized_keys").read_text()
        assert cluster.ssh_key in keys


def test_cloud_init_renders_the_network_config(cluster: Cluster) -> None:
    script = textwrap.dedent("""\
        import sys, yaml
        from pathlib import Path
        from cloudinit.net import networkd
        from cloudinit.net.network_state import parse_net_config_data
        config = yaml.safe_load(open("/root/seed/network-config"))
        networkd.Renderer({}).render_network_state(parse_net_config_data(config), target="/tmp/net")
        for path in sorted(Path("/tmp/net").rglob("*.network")):
            print(path.name)
            print(path.read_text())
        """)
    for member, machine in zip(cluster.plan.members, cluster.machines, strict=True):
        text = machine.chroot("python3", "-c", script).stdout
        assert f"Name={cluster.plan.interface}" in text, text
        assert f"Address={member.address}/{cluster.plan.prefix_length}" in text, text
        assert f"Gateway={cluster.plan.gateway}" in text, text
        assert f"DNS={cluster.plan.gateway}" in text, text


# -- keepalived ---------------------------------------------------------------------------------


def _config_test(machine: Machine, path: str) -> Completed:
    return machine.chroot("keepalived", "--config-test", "-f", path, check=False)


def test_keepalived_accepts_its_configuration(cluster: Cluster) -> None:
    # keepalived 2.2.7 (Debian 12) ends its config test by SIGTERM to itself once it has
    # checked the vrrp_script (acassen/keepalived#2587, fixed in 2.2.8): the rendered file
    # must give no diagnostics and end that way or with 0, and the same file without the
    # script must pass with 0 (what comes after the script check).
    for machine in cluster.machines:
        full = _config_test(machine, KEEPALIVED_CONF)
        assert full.rc in (0, 143, -15), full
        assert full.stdout.strip() == "" and full.stderr.strip() in ("", "Terminated"), full
        text = machine.path(KEEPALIVED_CONF).read_text()
        bare = re.sub(r"vrrp_script \w+ \{.*?\n\}\n", "", text, flags=re.S)
        bare = re.sub(r"\n\s*track_script \{[^}]*\}", "", bare)
        assert "supervisor_ready" not in bare
        machine.path("/tmp/keepalived-bare.conf").write_text(bare)
        out = _config_test(machine, "/tmp/keepalived-bare.conf")
        assert (out.rc, out.stdout, out.stderr) == (0, "", ""), out
    # and the check does see mistakes: a password keepalived would cut, a missing interface
    machine = cluster.machines[0]
    wrong = machine.path(KEEPALIVED_CONF).read_text().replace(
        "auth_pass ", "auth_pass toolong").replace(f"interface {cluster.plan.interface}",
                                                   "interface nosuch0")
    machine.path("/tmp/keepalived-wrong.conf").write_text(wrong)
    out = _config_test(machine, "/tmp/keepalived-wrong.conf")
    assert out.rc not in (0, 143, -15), out
    assert "Truncating auth_pass" in out.stderr and "nosuch0" in out.stderr, out


def test_keepalived_keeps_the_vip_on_one_ready_member(cluster: Cluster) -> None:
    for machine in cluster.machines:
        machine.spawn("readyz", "python3", "-c", READYZ_STAND_IN)
        wait_for(f"{machine.name}'s /readyz", lambda m=machine: m.chroot(
            "/etc/keepalived/supervisor-ready", user="nobody", check=False).rc == 0, 30.0)
        machine.spawn("keepalived", "keepalived", "--dont-fork", "--log-console",
                      "-f", KEEPALIVED_CONF)

    def one_holder() -> str | None:
        holders = cluster.vip_holders()
        assert len(holders) <= 1, f"the VIP is on {holders}"
        return holders[0] if holders else None
    try:
        first = wait_for("a member to hold the VIP", one_holder, 60.0)
        by_name = {m.name: m for m in cluster.machines}
        by_name[first].stop("readyz")  # its supervisor is no longer ready
        if cluster.plan.size == 1:
            wait_for("the VIP to be given up", lambda: not cluster.vip_holders(), 60.0)
        else:
            second = wait_for("the VIP to move", lambda: (h := one_holder()) != first and h,
                              60.0)
            assert second != first
    finally:
        for machine in cluster.machines:
            for label in ("keepalived", "readyz"):
                if label in machine.spawned:
                    machine.stop(label)
    assert cluster.vip_holders() == []


# -- etcd and Patroni ---------------------------------------------------------------------------


def test_etcd_forms_the_cluster(cluster: Cluster) -> None:
    cluster.ensure_etcd()
    out = cluster.machines[-1].chroot("etcdctl", f"--endpoints={cluster.endpoints()}", "member",
                                      "list", "-w", "json").stdout
    members = {m["name"]: m for m in json.loads(out)["members"]}
    assert sorted(members) == sorted(m.name for m in cluster.plan.members)
    for member in cluster.plan.members:
        assert members[member.name]["peerURLs"] == [f"http://{member.address}:2380"]
        assert members[member.name]["clientURLs"] == [f"http://{member.address}:2379"]
    # every member answers on loopback too (etcdctl's default endpoint on the VM)
    for machine in cluster.machines:
        assert "is healthy" in machine.chroot("etcdctl", "endpoint", "health").stderr


def test_patroni_validates_its_configuration(cluster: Cluster) -> None:
    for out in cluster.validate_patroni():
        assert (out.rc, out.stdout, out.stderr) == (0, "", ""), out
    # and the validator does see mistakes
    machine = cluster.machines[0]
    wrong = machine.path(PATRONI_CONFIG).read_text().replace(
        "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/99/bin")
    machine.path("/tmp/patroni-wrong.yml").write_text(wrong)
    out = machine.chroot("patroni", "--validate-config", "/tmp/patroni-wrong.yml",
                         check=False)
    assert out.rc == 1 and "postgresql.bin_dir" in out.stderr, out


def test_patroni_makes_the_database_the_supervisor_uses(cluster: Cluster) -> None:
    members = cluster.ensure_patroni()
    leader = next(m for m in members if m["Role"] == "Leader")
    address = {m.name: m.address for m in cluster.plan.members}
    assert leader["Host"] == address[leader["Member"]]
    # from a VM that is not the primary's (if there is one): libpq picks the primary
    elsewhere = next((m for m in cluster.machines if m.name != leader["Member"]),
                     cluster.machines[0])
    out = elsewhere.supervisor_python(DATABASE_CHECK).stdout
    user, database, in_recovery, server, sync_commit, standby_names, versions = json.loads(
        out.strip().splitlines()[-1])
    assert (user, database, in_recovery) == ("pacific", "pacific", False)
    assert server == address[leader["Member"]]
    assert sync_commit == "on" and versions == 1
    if cluster.plan.size == 3:
        sync = next(m for m in members if m["Role"] == "Sync Standby")
        assert sync["Member"] in standby_names  # commits wait for this standby
    else:
        assert standby_names == ""
    for machine in cluster.machines:
        assert "no pg_hba.conf entry" not in machine.log("patroni"), machine.name


def test_an_acknowledged_write_survives_losing_the_primary(cluster: Cluster) -> None:
    members = cluster.ensure_patroni()
    if cluster.plan.size == 1:
        # One VM has no standby to fail over to: what must hold is that none is claimed
        # (no synchronous standby that commits would wait for in vain).
        assert [m["Role"] for m in members] == ["Leader"], members
        return
    by_name = {m.name: m for m in cluster.machines}
    leader = next(m["Member"] for m in members if m["Role"] == "Leader")
    standby = next(m["Member"] for m in members if m["Role"] == "Sync Standby")
    survivor = next(m for m in cluster.machines if m.name != leader)
    token = f"acknowledged-{time.time_ns()}"
    survivor.supervisor_python(WRITE, token)  # returned: the commit was acknowledged
    by_name[leader].crash()  # Patroni, PostgreSQL and etcd of that VM, without warning

    def promoted() -> str | None:
        now = cluster.patronictl_list(via=survivor)
        return next((m["Member"] for m in now if m["Role"] == "Leader"
                     and m["State"] == "running" and m["Member"] != leader), None)
    assert wait_for("a new primary", promoted, CLUSTER_TIMEOUT, 2.0) == standby
    read = json.loads(survivor.supervisor_python(READ).stdout.strip().splitlines()[-1])
    assert read == {"rows": [token], "server": cluster.plan.members[
        [m.name for m in cluster.plan.members].index(standby)].address}
