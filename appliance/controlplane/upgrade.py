"""Rolling new project code through the control-plane VMs: ``lab up`` after a ``git pull``.

The appliance image installs the checkout in ``/opt/pacific-lab`` (editable, its
dependencies in ``/opt/pacific-lab/.venv``) and stamps it with what it was made of
(``hypervisor.applianceimage.CODE_STAMP``: the digest of the project's files and the
key of its dependencies). When the supervisor runs in control-plane VMs, ``lab up``
compares every VM's stamp with the checkout it runs from and, where they differ, rolls
the new code through the VMs **one at a time**, so that the others keep serving the API
on the floating IP:

1. before each VM, every other control-plane VM must answer ``/readyz`` on its own
   address (a roll never takes down the last supervisor standing); a VM that does not
   answer is asked again for ``OTHERS_TIMEOUT`` (an emulated VM busy with a resync can
   miss one 5-s probe) before the roll refuses;
2. the VM that holds the floating IP goes last, and its keepalived is stopped first, so
   the floating IP moves to a VM already running the new code before its supervisor
   stops (keepalived starts again afterwards; ``nopreempt`` keeps it a backup);
3. on the VM: the supervisor stops, the checkout's files (a tar stream over SSH) replace
   ``/opt/pacific-lab`` except its ``.venv`` (the old tree is kept as
   ``/opt/pacific-lab.prev``), the supervisor starts and must answer ``/readyz`` on the
   VM's address before the next VM is touched.

Only code rolls. When the dependencies changed (``pyproject.toml``), the VMs' virtual
environment no longer fits and the roll refuses before touching anything: the VMs are
rebuilt from the new image by moving out and in again. What cloud-init rendered at first
boot (Patroni's, etcd's and keepalived's configuration, the units) is not re-rendered.
A new store migration runs when the first VM starts the new code while the others still
run the old one: migrations must keep the previous release working (expand, then
contract a release later), as in any rolling upgrade.

SSH goes as the VM Service's user with each VM's key (Secret ``<vm>-ssh-key``) and host
keys pinned per VM uid under the state directory.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.controlplane.config import plan_for
from appliance.controlplane.move import MoveError, Say, readyz, wait_until
from appliance.controlplane.objects import ROLE, ROLE_LABEL
from appliance.controlplane.placement import Placement
from appliance.controllers.scheduler import SSH_KEY_SECRET_SUFFIX, SYSTEM_NAMESPACE
from appliance.settings import Settings
from hypervisor.applianceimage import (CODE_STAMP, INSTALL_DIR, SourceFile, code_stamp,
                                       project_files)

LOG = logging.getLogger(__name__)

UNIT = "pacific-lab.service"
KEEPALIVED = "keepalived.service"
#: The supervisor's start under TCG: Python's imports and the store's first queries.
READY_TIMEOUT = 600.0
#: How long the other VMs may take to answer ``/readyz`` before a VM is rolled.
OTHERS_TIMEOUT = 120.0
#: How long the floating IP may take to move off a VM whose keepalived stopped.
HANDOVER_TIMEOUT = 120.0
COMMAND_TIMEOUT = 300.0
CONNECT_RETRY = 120.0  # seconds to keep trying a connection that fails before its command
SSH_FAILED = 255  # what ssh(1) exits with when the connection fails, and a Remote returns
PREVIOUS = f"{INSTALL_DIR}.prev"
NEXT = f"{INSTALL_DIR}.next"

#: Run as root on the VM with the new tree's tar on stdin: unpack beside the old tree, then
#: swap the two with the virtual environment carried over (its scripts and the editable
#: install name ``/opt/pacific-lab``, which stays the path of the code).
INSTALL = f"""set -eu
rm -rf {NEXT} {PREVIOUS}
mkdir -m 0755 {NEXT}
tar -xz --no-same-owner -C {NEXT}
restore() {{
  if [ ! -x {INSTALL_DIR}/.venv/bin/python ]; then
    if [ -d {INSTALL_DIR} ]; then mv {INSTALL_DIR} {NEXT}; fi
    mv {PREVIOUS} {INSTALL_DIR}
  fi
  systemctl start {UNIT}
}}
systemctl stop {UNIT}
trap restore EXIT
mv {INSTALL_DIR} {PREVIOUS}
mv {NEXT} {INSTALL_DIR}
mv {PREVIOUS}/.venv {INSTALL_DIR}/.venv
"""


class Remote(Protocol):
    """A shell on one control-plane VM: ``run(command, stdin)`` → (status, stdout, stderr)."""

    def __call__(self, command: str, stdin: bytes | None = None) -> tuple[int, str, str]: ...


@dataclass(frozen=True)
class Member:
    name: str
    address: str
    run: Remote


@dataclass(frozen=True)
class Stamp:
    code: str
    dependencies: str

    @classmethod
    def parse(cls, text: str) -> Stamp | None:
        try:
            data = json.loads(text)
            return cls(str(data["code"]), str(data["dependencies"]))
        except (ValueError, KeyError, TypeError):
            return None


def archive(root: Path, files: Sequence[SourceFile], stamp: dict[str, str]) -> bytes:
    """The checkout's files as a gzip'd tar (paths relative, no owners), plus the stamp."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for item in files:
            info = tarfile.TarInfo(item.path)
            info.mtime = int(time.time())
            if item.kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, item.digest
                tar.addfile(info)
                continue
            data = (root / item.path).read_bytes()
            info.size, info.mode = len(data), item.mode
            tar.addfile(info, io.BytesIO(data))
        data = json.dumps(stamp).encode()
        info = tarfile.TarInfo(Path(CODE_STAMP).relative_to(INSTALL_DIR).as_posix())
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def roll(members: Sequence[Member], root: Path, vip_ready: Callable[[], bool],
         member_ready: Callable[[Member], bool], say: Say, *,
         ready_timeout: float = READY_TIMEOUT, handover_timeout: float = HANDOVER_TIMEOUT,
         others_timeout: float = OTHERS_TIMEOUT, vip: str, poll: float = 3.0) -> list[str]:
    """Bring every member to the code of the checkout ``root``, one at a time; returns the
    names of the members rolled (none when all run it already)."""
    files = project_files(root)
    wanted = Stamp(**code_stamp(root, files))
    behind = []
    for member in members:
        stamp = _stamp_of(member)
        if stamp == wanted:
            continue
        if stamp is None:
            raise MoveError(f"{member.name} has no readable {CODE_STAMP}: it was not built "
                            "from the pacific-appliance image; rebuild the control plane "
                            "(`lab up --control-plane-vms 0`, then N)")
        if stamp.dependencies != wanted.dependencies:
            raise MoveError(
                f"{member.name} runs other dependencies than this checkout (pyproject.toml "
                "changed): only code rolls in place; rebuild the control plane from the new "
                "image (`lab up --control-plane-vms 0`, then N)")
        behind.append(member)
    if not behind:
        return []
    holders = {m.name for m in behind if _holds(m, vip)}
    payload = archive(root, files, code_stamp(root, files))
    rolled = []
    for member in sorted(behind, key=lambda m: (m.name in holders, m.name)):
        silent = _silent([m for m in members if m is not member], member_ready,
                         others_timeout, poll)
        if silent:
            raise MoveError(
                f"not rolling {member.name}: {', '.join(silent)} does not answer /readyz, and "
                f"{member.name} may be the last supervisor serving; rolled so far: "
                f"{', '.join(rolled) or 'none'}. Run `lab up` again once it answers")
        started = time.monotonic()
        if member.name in holders:
            _hand_over(member, vip, vip_ready, handover_timeout, poll)
            say(f"{member.name} handed the floating IP {vip} over")
        try:
            _install(member, payload)
            _wait(f"{member.name}'s supervisor on the new code", lambda m=member: member_ready(m),
                  ready_timeout, poll)
        finally:
            if member.name in holders:
                _check(member, f"systemctl start {KEEPALIVED}")
        if _stamp_of(member) != wanted:
            raise MoveError(f"{member.name} does not report the new code after its restart")
        rolled.append(member.name)
        say(f"{member.name} runs the new code ({wanted.code[:12]}; "
            f"{time.monotonic() - started:.0f} s)")
    return rolled


def _silent(others: Sequence[Member], member_ready: Callable[[Member], bool], timeout: float,
            poll: float) -> list[str]:
    """The names of the ``others`` that still do not answer ``/readyz`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    silent = [m for m in others if not member_ready(m)]
    while silent and time.monotonic() < deadline:
        time.sleep(poll)
        silent = [m for m in silent if not member_ready(m)]
    return [m.name for m in silent]


def _stamp_of(member: Member) -> Stamp | None:
    status, out, err = member.run(f"cat {CODE_STAMP}")
    if status == SSH_FAILED:
        raise MoveError(f"cannot reach {member.name}: {err}")
    return Stamp.parse(out) if status == 0 else None


def _holds(member: Member, vip: str) -> bool:
    status, out, _ = member.run("ip -4 -o addr show")
    return status == 0 and any(f" {vip}/" in line for line in out.splitlines())


def _hand_over(member: Member, vip: str, vip_ready: Callable[[], bool], timeout: float,
               poll: float) -> None:
    _check(member, f"systemctl stop {KEEPALIVED}")
    try:
        _wait(f"the floating IP {vip} to leave {member.name}",
              lambda: not _holds(member, vip) and vip_ready(), timeout, poll)
    except MoveError:
        _check(member, f"systemctl start {KEEPALIVED}")
        raise


def _install(member: Member, payload: bytes) -> None:
    status, _, err = member.run(f"sudo sh -c {_quote(INSTALL)}", payload)
    if status != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise MoveError(f"installing the new code on {member.name} failed: {last}")


def _check(member: Member, command: str) -> None:
    status, _, err = member.run(f"sudo {command}")
    if status != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise MoveError(f"{member.name}: `{command}` failed: {last}")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _wait(what: str, check: Callable[[], bool], timeout: float, poll: float) -> None:
    wait_until(what, check, time.monotonic() + timeout, poll)


# -- the lab's control plane ----------------------------------------------------------------


def roll_lab(settings: Settings, say: Say) -> list[str]:
    """``roll`` for this host's control plane (``lab up`` in the ``host`` role): the members
    from the API on the floating IP, SSH with each VM's key."""
    import base64

    from appliance import kubeconfig
    from appliance.agent.vms import SSH_USER
    from appliance.client import ApiClient
    from appliance.errors import ApiError
    from appliance.kinds.vmop import GROUP, STORAGE

    placement = Placement.load(settings.state_dir)
    if placement is None:
        return []
    plan = plan_for(placement.vms, settings.appliance_cidr, settings.state_dir)
    ca = settings.pki_dir / "ca.crt"
    token = kubeconfig.current(settings.admin_kubeconfig_path)["token"]
    client = ApiClient(placement.api_url, token, str(ca))
    known_dir = settings.state_dir / "known_hosts.d"
    known_dir.mkdir(mode=0o700, exist_ok=True)
    members = []
    try:
        vms = client.get(client.path(GROUP, STORAGE, "virtualmachines", SYSTEM_NAMESPACE),
                         labelSelector=f"{ROLE_LABEL}={ROLE}")["items"]
        by_name = {vm["metadata"]["name"]: vm for vm in vms}
        for planned in plan.members:
            vm = by_name.get(planned.name)
            if vm is None:
                raise MoveError(f"the control-plane VM {planned.name} is not declared; "
                                "`lab status` shows the control plane")
            secret = client.get(client.path("", "v1", "secrets", SYSTEM_NAMESPACE,
                                            planned.name + SSH_KEY_SECRET_SUFFIX))
            key = base64.b64decode(secret["data"]["ssh-privatekey"]).decode()
            members.append(Member(planned.name, planned.address, _remote(
                planned.address, SSH_USER, key, known_dir / vm["metadata"]["uid"])))
    except ApiError as err:
        raise MoveError(f"reading the control plane from the API: {err.message}") from err
    finally:
        client.session.close()

    def member_ready(member: Member) -> bool:
        return readyz(f"https://{member.address}:{placement.api_port}", ca)

    return roll(members, settings.project_root, lambda: readyz(placement.api_url, ca),
                member_ready, say, vip=placement.vip)


def _remote(address: str, user: str, key: str, known_hosts: Path,
            connect_for: float = CONNECT_RETRY) -> Remote:
    """``run`` over SSH. A connection that fails before the command starts (an emulated VM
    busy starting a service drops handshakes: "No existing session") is tried again for
    ``connect_for`` seconds; a command that started is never run twice."""
    from hypervisor import ssh

    def run(command: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        deadline = time.monotonic() + connect_for
        while True:
            try:
                return ssh.run_command(address, user, key, command, COMMAND_TIMEOUT,
                                       known_hosts=known_hosts, stdin=stdin)
            except ssh.HostKeyMismatch as exc:
                return SSH_FAILED, "", str(exc)
            except ssh.SshError as exc:
                if "cannot connect" not in str(exc) or time.monotonic() > deadline:
                    return SSH_FAILED, "", str(exc)
                LOG.info("%s; trying again", exc)
                time.sleep(5)

    return run
