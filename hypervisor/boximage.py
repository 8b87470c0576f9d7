"""The Vagrant box ``pacific-lab/debian-12``: a lab host for ``vagrant up lab`` (vagrant-libvirt).

The box is the Debian base image of ``hypervisor.images`` plus, through an
``ImageRecipe`` (the same path as the appliance and node images):

- every package ``playbooks/host.yml`` installs (its ``lab_host_packages``,
  read from the playbook), Debian's ``kubectl`` (``kubernetes-client``, what
  ``playbooks/kubectl.yml`` installs on a host without one), what ``./lab``
  itself installs before it can run (``python3-venv``, ``python3-dev``,
  ``gcc``, ``pkg-config``, ``libvirt-dev``), and what Vagrant and Ansible
  need in a guest (``openssh-server``, ``sudo``, ``rsync``, ``python3`` with
  ``python3-apt``): provisioning downloads no package;
- the project's Python dependencies, its ``test`` extras and its build
  requirements as a wheelhouse (``/opt/pacific-lab/wheelhouse``, built on
  this host by ``ensure_box_wheelhouse``) and already installed in the virtual
  environment ``./lab`` uses, ``/home/vagrant/pacific-lab/.venv`` (Vagrant's
  rsync leaves ``.venv/`` alone). The first ``./lab`` in the guest only adds
  the project itself (``pip install -e``) with ``PIP_NO_INDEX`` and
  ``PIP_FIND_LINKS`` pointing at the wheelhouse;
- the ``vagrant`` user (uid 1000, password-less sudo, no password) with an
  empty ``~/.ssh``; Debian's generic kernel (``linux-image-amd64``, which the
  lab's pod VMs boot too) instead of the cloud kernel; cloud-init switched off
  (systemd-networkd runs DHCP on the first NIC) and a unit that grows the root
  partition and file system to the disk at boot (``machine_virtual_size``).

Vagrant boots a box from its disk, so ``pack_box`` makes the image's ext4
file system (no partition table, no boot loader) into a bootable disk without
mounting anything: GRUB's ``boot.img`` in the MBR, its ``core.img`` (made in
the image by ``grub-mkimage``) in the gap before the first partition, as
``grub-bios-setup`` would embed them; partition 1 at 1 MiB holds the file
system; ``/boot/grub/grub.cfg`` boots ``/vmlinuz`` with the image's own kernel
command line. ``debugfs`` writes that file and ``~vagrant/.ssh/authorized_keys``
(the public half of a key pair made per install, ``ensure_key_pair``; never
Vagrant's well-known insecure key) into the file system. The box is a tar of
``metadata.json`` (``{"provider": "libvirt", "format": "qcow2",
"virtual_size": GiB}``, vagrant-libvirt's v1 format), ``Vagrantfile`` (the
private key's path, ``insert_key = false``) and ``box.img`` (qcow2).

Files
-----
``cache_dir/images/`` holds the image build (``build_debian_image``'s cache:
keyed by the recipe, so by the package list, the hooks and the wheels);
``cache_dir/boxes/debian-12-<key16>/`` one packed box (``box.json``,
``pacific-lab-debian-12.box`` and the ``catalog.json`` that ``vagrant box
add`` reads), keyed by the image's sha256, the public key, the private key's
path and ``BOX_FORMAT_VERSION``. Its version (``12.<UTC time of packing>``)
names it in Vagrant and in the libvirt storage pool, so ``add_box`` adds a
box once and vagrant-libvirt uploads it once. The key pair lives in
``state_dir/vagrant/`` (``id_ed25519`` mode 0600, ``id_ed25519.pub``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import pwd
import re
import shlex
import shutil
import struct
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hypervisor.applianceimage import build_wheelhouse, wheel_digests
from hypervisor.files import write_atomic
from hypervisor.images import (BuiltImage, ImageError, ImageProgress, ImageRecipe, Prepared,
                               Progress, _convert_compressed, _describe, _locked, _qemu_img_info,
                               _report, _write_json, build_debian_image, sha256_file)
from hypervisor.proc import Completed, ProcessError, run
from hypervisor.ssh import generate_keypair

LOG = logging.getLogger(__name__)

BOX_NAME = "pacific-lab/debian-12"
IMAGE_NAME = "pacific-lab-box"
RELEASE = "bookworm"
# Bump when the recipe changes in a way its fingerprint cannot see.
BOX_RECIPE_VERSION = 1
# Bump when packing changes (boot loader, partition layout, files written, archive).
BOX_FORMAT_VERSION = 2  # 2: the kernel beside the box for TCG, the hostname inside
WHEELHOUSE_VERSION = 1

FS_GIB = 12  # the image's file system
DISK_GIB = FS_GIB + 1  # the box's disk: the boot loader's gap, partition 1, slack
SECTOR = 512
PARTITION_START = 2048  # sectors: partition 1 at 1 MiB, the boot loader before it
VAGRANT_USER = "vagrant"
VAGRANT_UID = 1000
PROJECT_DIR = "/home/vagrant/pacific-lab"  # where the Vagrantfile rsyncs the repository
VENV_DIR = f"{PROJECT_DIR}/.venv"
WHEELHOUSE_DIR = "/opt/pacific-lab/wheelhouse"
BOX_FILE = "pacific-lab-debian-12.box"
KEY_FILE = "id_ed25519"
BOOT_FILE = "boot.json"  # in the .box: where this host keeps the box's kernel (TCG)
KERNEL_FILE, INITRD_FILE = "vmlinuz", "initrd.img"  # beside the box, for BOOT_FILE
HOSTNAME = "pacific-lab"
WHEEL_TIMEOUT = 1800.0
PACK_TIMEOUT = 1800.0
ADD_TIMEOUT = 1800.0

# In the guest beyond host.yml's packages: Vagrant (sshd, sudo, rsync for the synced
# folder), Ansible (python3; python3-apt for the apt module), what ./lab installs before
# its virtual environment exists, playbooks/kubectl.yml's kubectl, and the boot loader.
BOX_PACKAGES: tuple[str, ...] = (
    "openssh-server", "sudo", "rsync", "python3", "python3-apt",
    "python3-venv", "python3-dev", "gcc", "pkg-config", "libvirt-dev",
    "kubernetes-client", "grub-pc-bin", "linux-image-amd64",
)

_CLEAN_ENV = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "HOME=/root", "LANG=C.UTF-8", "PIP_CONFIG_FILE=/dev/null", "PIP_NO_CACHE_DIR=1",
              "PIP_DISABLE_PIP_VERSION_CHECK=1"]

GROWROOT_SCRIPT = """\
#!/bin/sh
# Grow the root partition and its file system to the end of the disk (Pacific Lab box).
set -eu
part=$(findmnt -n -o SOURCE /)
disk=/dev/$(lsblk -n -d -o PKNAME "$part")
number=$(cat "/sys/class/block/$(basename "$part")/partition")
rc=0
growpart "$disk" "$number" || rc=$?
[ "$rc" -le 1 ]  # 1: NOCHANGE, the partition already fills the disk
resize2fs "$part"
"""
BOX_FILES: dict[str, str] = {
    # Vagrant configures the machine; without a seed, cloud-init would only cost boot time.
    "etc/cloud/cloud-init.disabled": "Pacific Lab box: Vagrant configures this machine.\n",
    "etc/systemd/network/50-vagrant.network":
        "# Pacific Lab box: DHCP on the NIC that Vagrant's management network reaches.\n"
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nUseDomains=yes\n",
    "etc/ssh/sshd_config.d/50-pacific-lab-box.conf":
        "# Pacific Lab box: keys only.\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n",
    "usr/local/lib/pacific-lab/growroot": GROWROOT_SCRIPT,
    "etc/systemd/system/pacific-lab-growroot.service":
        "[Unit]\nDescription=Grow the root file system to the disk (Pacific Lab box)\n"
        "DefaultDependencies=no\nAfter=local-fs.target\nBefore=sysinit.target shutdown.target\n"
        "Conflicts=shutdown.target\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/bin/sh /usr/local/lib/pacific-lab/growroot\n\n"
        "[Install]\nWantedBy=sysinit.target\n",
}

# GRUB i386-pc boot.img: fields grub-bios-setup sets (grub-core/boot/i386/pc/boot.S).
BOOT_BPB = slice(0x03, 0x5A)  # scratch space; grub-bios-setup copies it from the disk (zeros)
BOOT_KERNEL_SECTOR = 0x5C  # u64: where core.img starts
BOOT_DRIVE_CHECK = 0x66  # a short jmp that grub-bios-setup replaces with two nops on hard disks
BOOT_CODE_END = 0x1B8  # the disk signature and the partition table follow
GRUB_CFG = """\
# Pacific Lab box: written when the box was packed (hypervisor.boximage).
set default=0
set timeout=1
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
menuentry "Debian GNU/Linux 12 (Pacific Lab)" {{
    linux /vmlinuz {cmdline}
    initrd /initrd.img
}}
"""


@dataclass(frozen=True)
class KeyPair:
    private: Path  # mode 0600
    public: Path
    public_line: str  # "ssh-ed25519 AAAA... comment"


@dataclass(frozen=True)
class BuiltBox:
    name: str  # pacific-lab/debian-12
    version: str  # 12.YYYYMMDDHHMMSS: the time it was packed
    path: Path  # the .box file
    catalog: Path  # box metadata (a Vagrant catalog) naming the .box file, for ``vagrant box add``
    sha256: str  # of the .box file
    size_bytes: int
    virtual_size_gib: int
    key: str
    image_sha256: str
    private_key: Path


def host_packages(project_root: Path) -> tuple[str, ...]:
    """The ``lab_host_packages`` of ``playbooks/host.yml``."""
    path = project_root / "playbooks" / "host.yml"
    try:
        plays = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ImageError(f"cannot read {path}: {exc}") from exc
    for play in plays if isinstance(plays, list) else []:
        packages = (play.get("vars") or {}).get("lab_host_packages") if isinstance(play, dict) \
            else None
        if packages:
            if not all(isinstance(p, str) for p in packages):
                raise ImageError(f"{path}: lab_host_packages must be a list of package names")
            return tuple(packages)
    raise ImageError(f"{path} has no play with lab_host_packages")


def box_packages(project_root: Path) -> tuple[str, ...]:
    """Every package the box adds to the base image, host.yml's first, without repeats."""
    return tuple(dict.fromkeys(host_packages(project_root) + BOX_PACKAGES))


# -- the key pair --------------------------------------------------------------------------------


def ensure_key_pair(key_dir: Path, *, owner: tuple[int, int] | None = None) -> KeyPair:
    """The install's key pair for the box's ``vagrant`` user, made on first use.

    ``key_dir`` is made mode 0700; the private key is mode 0600. ``owner``
    (uid, gid) is the user who runs Vagrant (root by default)."""
    key_dir.mkdir(parents=True, exist_ok=True)
    key_dir.chmod(0o700)
    private, public = key_dir / KEY_FILE, key_dir / f"{KEY_FILE}.pub"
    with _locked(key_dir / ".lock"):
        if not (private.is_file() and public.is_file()):
            pem, line = generate_keypair(f"pacific-lab-vagrant@{platform.node() or 'host'}")
            write_atomic(private, pem.encode(), 0o600)
            write_atomic(public, (line + "\n").encode(), 0o644)
            LOG.info("[box] made the key pair %s", private)
        if private.is_symlink() or public.is_symlink():
            raise ImageError(f"refusing a symbolic link for the box's key in {key_dir}")
        private.chmod(0o600)
        if owner is not None:
            for path in (key_dir, private, public):
                os.chown(path, *owner, follow_symlinks=False)
    line = public.read_text().strip()
    if not re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/=]+( [^\n]*)?", line):
        raise ImageError(f"{public} is not one ed25519 public key")
    return KeyPair(private=private, public=public, public_line=line)


# -- the wheelhouse ------------------------------------------------------------------------------


def box_requirements(project_root: Path) -> tuple[list[str], list[str]]:
    """(what the box's venv installs: dependencies and ``test`` extras, what the wheelhouse
    holds besides: build requirements and pip) from ``pyproject.toml``."""
    path = project_root / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"cannot read {path}: {exc}") from exc
    project = data.get("project", {})
    installed = list(project.get("dependencies", []))
    installed += [r for r in project.get("optional-dependencies", {}).get("test", [])
                  if r not in installed]
    build = list(data.get("build-system", {}).get("requires", []))
    if not installed or not build:
        raise ImageError(f"{path} names no dependencies or no build-system requirements")
    extra = [r for r in build + ["pip"] if r not in installed]
    return installed, extra


def ensure_box_wheelhouse(project_root: Path, cache_dir: Path, *, progress: Progress = None,
                          python: str | None = None) -> Path:
    """The cached wheelhouse of ``box_requirements``; built with ``pip wheel`` if missing.

    ``python`` (default: this interpreter) must be the guest's Python (3.11)."""
    installed, extra = box_requirements(project_root)
    return build_wheelhouse([*installed, *extra], cache_dir, "box-wheelhouse",
                            progress=progress, python=python)


# -- the image -----------------------------------------------------------------------------------


def _chroot(*argv: str) -> str:
    return 'chroot "$1" ' + shlex.join(argv)


def box_hooks(installed: Sequence[str]) -> tuple[str, ...]:
    """mmdebstrap customize hooks (after ``sync-in`` of the wheelhouse)."""
    venv_script = (
        f"python3 -m venv {VENV_DIR}\n"
        f"{VENV_DIR}/bin/python -m pip install --quiet --no-index --find-links "
        f"{WHEELHOUSE_DIR} --upgrade pip\n"
        f"{VENV_DIR}/bin/python -m pip install --quiet --no-index --find-links "
        f"{WHEELHOUSE_DIR} {shlex.join(installed)}\n")
    purge_cloud_kernel = (
        "pkgs=$(dpkg-query -W -f '${Package} ${Status}\\n' 'linux-image-*cloud*' | "
        "awk '$NF == \"installed\" {print $1}'); "
        "[ -z \"$pkgs\" ] || DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $pkgs")
    return (
        # One kernel: Debian's generic one (the lab's pod VMs boot it too), not the cloud one.
        _chroot("sh", "-ec", purge_cloud_kernel),
        # The vagrant user: no password, password-less sudo, an empty ~/.ssh (the key goes
        # in when the box is packed).
        _chroot("useradd", "--uid", str(VAGRANT_UID), "--user-group", "--create-home",
                "--shell", "/bin/bash", "--comment", "Vagrant", VAGRANT_USER),
        _chroot("usermod", "--password", "*", VAGRANT_USER),
        f'install -d -m 0700 -o {VAGRANT_UID} -g {VAGRANT_UID} "$1/home/{VAGRANT_USER}/.ssh"',
        f"printf '%s\\n' {shlex.quote(f'{VAGRANT_USER} ALL=(ALL) NOPASSWD: ALL')} "
        f'> "$1/etc/sudoers.d/{VAGRANT_USER}" && chmod 0440 "$1/etc/sudoers.d/{VAGRANT_USER}"',
        # GRUB for BIOS: its modules in /boot/grub and a core image that reads them from
        # partition 1 (pack_box puts both on the disk as grub-bios-setup would).
        'mkdir -p "$1/boot/grub" && cp -a "$1/usr/lib/grub/i386-pc" "$1/boot/grub/"',
        _chroot("grub-mkimage", "--format=i386-pc", "--output=/boot/grub/i386-pc/core.img",
                "--prefix=(hd0,msdos1)/boot/grub", "biosdisk", "part_msdos", "ext2"),
        # The project's Python dependencies where ./lab looks for its venv, offline.
        f'install -d -m 0755 -o {VAGRANT_UID} -g {VAGRANT_UID} "$1{PROJECT_DIR}"',
        _chroot(*_CLEAN_ENV, "sh", "-ec", venv_script),
        'rm -rf "$1/root/.cache"',
        # Grow the root file system at boot (its unit is one of the recipe's files).
        'mkdir -p "$1/etc/systemd/system/sysinit.target.wants" && ln -sf '
        '/etc/systemd/system/pacific-lab-growroot.service '
        '"$1/etc/systemd/system/sysinit.target.wants/pacific-lab-growroot.service"',
    )


def box_recipe(project_root: Path, wheelhouse: Path) -> ImageRecipe:
    """The box image's recipe; its ``inputs`` digest the wheels."""
    installed, _extra = box_requirements(project_root)
    wheels = wheel_digests(wheelhouse)

    def prepare(staging: Path) -> Prepared:
        tree = staging / "root"
        dest = tree / WHEELHOUSE_DIR.lstrip("/")
        dest.mkdir(parents=True)
        for name, digest in wheels.items():
            shutil.copyfile(wheelhouse / name, dest / name)
            if sha256_file(dest / name) != digest:
                raise ImageError(f"{name} changed while the box was being built")
            (dest / name).chmod(0o644)
        for current, dirs, _files in os.walk(tree):
            os.chmod(current, 0o755)
            for name in dirs:
                (Path(current) / name).chmod(0o755)
        return Prepared(hooks=(f"sync-in {shlex.quote(str(tree))} /",))

    return ImageRecipe(name=IMAGE_NAME, packages=box_packages(project_root), files=BOX_FILES,
                       hooks=box_hooks(installed), prepare=prepare,
                       inputs={"recipe": BOX_RECIPE_VERSION, "wheels": wheels,
                               "wheelhouse_dir": WHEELHOUSE_DIR, "venv": VENV_DIR})


# -- packing -------------------------------------------------------------------------------------


def box_metadata(virtual_size_gib: int = DISK_GIB) -> dict[str, Any]:
    """vagrant-libvirt's box metadata (format v1: one qcow2 disk named box.img)."""
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": virtual_size_gib}


def _ruby_string(value: str) -> str:
    """A single-quoted Ruby literal (no interpolation in single quotes)."""
    if "\n" in value or "\0" in value:
        raise ImageError(f"cannot put {value!r} in a Vagrantfile")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def box_vagrantfile(private_key: Path) -> str:
    """The Vagrantfile inside the box: its key pair, and Vagrant must not replace the key."""
    return (
        "# Pacific Lab box (pacific-lab/debian-12), made by `lab box build`.\n"
        "Vagrant.configure(\"2\") do |config|\n"
        f"  config.ssh.private_key_path = {_ruby_string(str(private_key))}\n"
        "  config.ssh.insert_key = false\n"
        "  config.vm.synced_folder \".\", \"/vagrant\", disabled: true\n"
        "  config.vm.provider :libvirt do |libvirt|\n"
        "    libvirt.disk_bus = \"virtio\"\n"
        "    libvirt.nic_model_type = \"virtio\"\n"
        "  end\n"
        "end\n")


def boot_record(entry: Path, cmdline: str) -> dict[str, str]:
    """What the Vagrantfile needs to boot the box's kernel directly: its files, kept beside
    the box in ``entry`` (readable by libvirt's QEMU, unlike a home directory), and the
    command line GRUB would give it. Under TCG the Vagrantfile boots it so, adding
    ``mitigations=off`` (an emulated CPU never speculates, and page-table isolation costs a
    TLB flush per system call there); under KVM the box boots through GRUB as packed."""
    return {"kernel": str(entry / KERNEL_FILE), "initrd": str(entry / INITRD_FILE),
            "cmdline": cmdline}


def grub_cfg(cmdline: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9=,._/: -]+", cmdline):
        raise ImageError(f"refusing the kernel command line {cmdline!r}")
    return GRUB_CFG.format(cmdline=cmdline)


def box_key(image_sha256: str, public_line: str, private_key: Path) -> str:
    recipe = {"image": image_sha256, "public_key": public_line, "private_key": str(private_key),
              "disk_gib": DISK_GIB, "partition_start": PARTITION_START, "grub": GRUB_CFG,
              "vagrantfile": box_vagrantfile(Path("/KEY")), "format": BOX_FORMAT_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def _chs(lba: int) -> bytes:
    """A partition entry's CHS address (255 heads, 63 sectors; LBA beyond it: 1023/254/63)."""
    cylinder, rest = divmod(lba, 255 * 63)
    head, sector = rest // 63, rest % 63 + 1
    if cylinder > 1023:
        cylinder, head, sector = 1023, 254, 63
    return bytes([head, sector | ((cylinder >> 2) & 0xC0), cylinder & 0xFF])


def master_boot_record(boot_img: bytes, *, start: int, sectors: int, signature: int) -> bytes:
    """GRUB's ``boot.img`` as ``grub-bios-setup`` writes it to a hard disk whose ``core.img``
    is embedded from sector 1, with one bootable Linux partition."""
    if len(boot_img) != SECTOR or boot_img[510:512] != b"\x55\xaa":
        raise ImageError("boot.img is not a 512-byte boot sector")
    if boot_img[BOOT_DRIVE_CHECK] != 0xEB:
        raise ImageError("boot.img has no jump at its drive check: an unknown GRUB layout")
    if start <= 0 or sectors <= 0 or start + sectors >= 2 ** 32:
        raise ImageError(f"partition of {sectors} sectors at {start} does not fit an MBR")
    mbr = bytearray(boot_img)
    mbr[BOOT_BPB] = bytes(BOOT_BPB.stop - BOOT_BPB.start)
    struct.pack_into("<Q", mbr, BOOT_KERNEL_SECTOR, 1)
    mbr[BOOT_DRIVE_CHECK:BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    mbr[BOOT_CODE_END:510] = bytes(510 - BOOT_CODE_END)
    struct.pack_into("<I", mbr, 0x1B8, signature)
    entry = (b"\x80" + _chs(start) + b"\x83" + _chs(start + sectors - 1)
             + struct.pack("<II", start, sectors))
    mbr[0x1BE:0x1BE + 16] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def check_core_img(core_img: bytes, *, start: int = PARTITION_START) -> None:
    """``core.img`` must fit before partition 1 and load itself from sector 2 on (the
    blocklist ``grub-mkimage`` leaves in its first sector, diskboot.img)."""
    if len(core_img) < 2 * SECTOR or len(core_img) > (start - 1) * SECTOR:
        raise ImageError(f"core.img is {len(core_img)} bytes: it must fit in sectors 1 to "
                         f"{start - 1}")
    first, count, _segment = struct.unpack_from("<QHH", core_img, SECTOR - 12)
    needed = -(-(len(core_img) - SECTOR) // SECTOR)
    if first != 2 or count < needed:
        raise ImageError(f"core.img's blocklist reads {count} sectors from {first}, not "
                         f"{needed} from 2")


def _q(path: str | Path) -> str:
    """``path`` quoted for a debugfs request."""
    text = str(path)
    if '"' in text or "\n" in text or "\\" in text:
        raise ImageError(f"cannot pass {text!r} to debugfs")
    return f'"{text}"'


def _debugfs(fs: Path, *requests: str, write: bool = False) -> Completed:
    cmd = ["debugfs", *(["-w"] if write else []), "-f", "-", str(fs)]
    return run(cmd, input="\n".join(requests) + "\n", timeout=300)


def _stat(fs: Path, path: str) -> dict[str, str]:
    """A few fields of debugfs' ``stat`` of ``path`` ({} if it does not exist)."""
    out = _debugfs(fs, f"stat {_q(path)}")
    fields: dict[str, str] = {}
    for key, pattern in (("type", r"Type: (\w+)"), ("mode", r"Mode:\s+(\d+)"),
                         ("uid", r"User:\s+(\d+)"), ("gid", r"Group:\s+(\d+)"),
                         ("size", r"Size: (\d+)"), ("link", r'Fast link dest: "([^"]*)"')):
        match = re.search(pattern, out.stdout)
        if match:
            fields[key] = match.group(1)
    return fields


def _read(fs: Path, path: str, work: Path) -> bytes:
    dest = work / f"dump-{hashlib.sha256(path.encode()).hexdigest()[:12]}"
    dest.unlink(missing_ok=True)
    _debugfs(fs, f"dump {_q(path)} {_q(dest)}")
    if not dest.is_file():
        raise ImageError(f"the image has no {path}")
    data = dest.read_bytes()
    dest.unlink()
    return data


def write_into_fs(fs: Path, path: str, data: bytes, work: Path, *, mode: int, uid: int = 0,
                  gid: int = 0) -> None:
    """Put a new regular file at ``path`` (its directory exists) in the ext4 image ``fs``."""
    directory, name = _split(path)
    src = work / f"write-{hashlib.sha256(path.encode()).hexdigest()[:12]}"
    src.write_bytes(data)
    _debugfs(fs, f"cd {_q(directory)}", f"rm {_q(name)}", f"write {_q(src)} {_q(name)}",
             f"sif {_q(name)} mode 0{0o100000 | mode:o}", f"sif {_q(name)} uid {uid}",
             f"sif {_q(name)} gid {gid}", write=True)
    src.unlink()
    got = _stat(fs, path)
    if (got.get("type") != "regular" or got.get("mode") != f"{mode:04o}"
            or got.get("uid") != str(uid) or got.get("gid") != str(gid)
            or _read(fs, path, work) != data):
        raise ImageError(f"writing {path} into the box's file system failed: {got}")


def _split(path: str) -> tuple[str, str]:
    directory, _, name = path.rpartition("/")
    if not path.startswith("/") or not name:
        raise ImageError(f"not an absolute file path: {path!r}")
    return directory or "/", name


def _check_boot_files(fs: Path) -> dict[str, str]:
    """``/vmlinuz`` and ``/initrd.img`` -> the regular files they link to in ``fs``."""
    found = {}
    for link in ("/vmlinuz", "/initrd.img"):
        got = _stat(fs, link)
        target = got.get("link", "")
        if got.get("type") != "symlink" or not target:
            raise ImageError(f"the image has no {link} link to its kernel: {got}")
        found[link] = "/" + target.lstrip("/")
        if _stat(fs, found[link]).get("type") != "regular":
            raise ImageError(f"the image's {link} points at {target}, which is missing")
    return found


def assemble_disk(fs: Path, disk: Path, *, boot_img: bytes, core_img: bytes,
                  disk_bytes: int, signature: int) -> None:
    """A raw disk of ``disk_bytes``: MBR, ``core.img`` from sector 1, ``fs`` as partition 1."""
    fs_bytes = fs.stat().st_size
    if fs_bytes % SECTOR or PARTITION_START * SECTOR + fs_bytes > disk_bytes:
        raise ImageError(f"a file system of {fs_bytes} bytes does not fit a disk of "
                         f"{disk_bytes} bytes")
    check_core_img(core_img)
    mbr = master_boot_record(boot_img, start=PARTITION_START, sectors=fs_bytes // SECTOR,
                             signature=signature)
    with disk.open("wb") as out:
        out.truncate(disk_bytes)
        out.write(mbr)
        out.write(core_img)
    # qemu-img copies only what is allocated, so the disk stays sparse.
    run(["qemu-img", "convert", "-n", "-f", "raw", str(fs), "--target-image-opts",
         f"driver=raw,offset={PARTITION_START * SECTOR},size={fs_bytes},"
         f"file.driver=file,file.filename={disk}"], timeout=PACK_TIMEOUT)


def write_box_archive(dest: Path, *, metadata: dict[str, Any], vagrantfile: str,
                      box_img: Path, boot: dict[str, str] | None = None) -> None:
    """The .box file: a tar of metadata.json, Vagrantfile, box.img (Vagrant unpacks it) and
    ``boot.json`` (see :func:`boot_record`)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    mtime = int(time.time())
    small = [("metadata.json", json.dumps(metadata, indent=2) + "\n"),
             ("Vagrantfile", vagrantfile)]
    if boot is not None:
        small.append((BOOT_FILE, json.dumps(boot, indent=2, sort_keys=True) + "\n"))
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in small:
            info = tarfile.TarInfo(name)
            raw = data.encode()
            info.size, info.mode, info.mtime = len(raw), 0o644, mtime
            tar.addfile(info, io.BytesIO(raw))
        info = tar.gettarinfo(str(box_img), arcname="box.img")
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "root", "root"
        with box_img.open("rb") as fh:
            tar.addfile(info, fh)
    os.replace(tmp, dest)


def box_catalog(name: str, version: str, box_file: Path, sha256: str) -> dict[str, Any]:
    """Box metadata in Vagrant's catalog format, so that ``vagrant box add`` records a version."""
    return {"name": name, "description": "Pacific Lab host: Debian 12, made by `lab box build`",
            "versions": [{"version": version, "providers": [{
                "name": "libvirt", "url": box_file.resolve().as_uri(),
                "checksum_type": "sha256", "checksum": sha256}]}]}


def pack_box(image: BuiltImage, keys: KeyPair, boxes_dir: Path, *, progress: Progress = None,
             force: bool = False, now: Callable[[], float] = time.time) -> BuiltBox:
    """Make (or take from ``boxes_dir``) the box of ``image`` whose vagrant user trusts ``keys``."""
    if image.cmdline is None:
        raise ImageError(f"{image.name} is not an image built here (no kernel command line)")
    key = box_key(image.sha256, keys.public_line, keys.private)
    boxes_dir.mkdir(parents=True, exist_ok=True)
    entry = boxes_dir / f"debian-12-{key[:16]}"
    with _locked(boxes_dir / f".{entry.name}.lock"):
        if not force and (box := load_box(entry)) is not None:
            LOG.info("[box] using the packed box %s", entry)
            return box
        work = Path(tempfile.mkdtemp(prefix=f".pack-{entry.name}-", dir=boxes_dir))
        try:
            box = _pack(image, keys, key, entry, work, progress, now)
        except (ProcessError, OSError) as exc:
            raise ImageError(f"packing the box failed: {_describe(exc)}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for other in boxes_dir.glob("debian-12-*"):
        if other != entry and other.is_dir() and not other.is_symlink():
            LOG.info("[box] removing the superseded box %s", other)
            shutil.rmtree(other, ignore_errors=True)
            (boxes_dir / f".{other.name}.lock").unlink(missing_ok=True)
    return box


def _pack(image: BuiltImage, keys: KeyPair, key: str, entry: Path, work: Path,
          progress: Progress, now: Callable[[], float]) -> BuiltBox:
    assert image.cmdline is not None
    _report(progress, "packing: unpacking the image", 0.80)
    fs = work / "root.raw"
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image.disk), str(fs)],
        timeout=PACK_TIMEOUT)
    _report(progress, "packing: boot loader and key", 0.83)
    boot_files = _check_boot_files(fs)
    boot_img = _read(fs, "/boot/grub/i386-pc/boot.img", work)
    core_img = _read(fs, "/boot/grub/i386-pc/core.img", work)
    write_into_fs(fs, "/boot/grub/grub.cfg", grub_cfg(image.cmdline).encode(), work, mode=0o644)
    write_into_fs(fs, f"/home/{VAGRANT_USER}/.ssh/authorized_keys",
                  (keys.public_line + "\n").encode(), work, mode=0o600, uid=VAGRANT_UID,
                  gid=VAGRANT_UID)
    # The box is named already, so `vagrant up` need not set a hostname (48 s under TCG).
    write_into_fs(fs, "/etc/hostname", f"{HOSTNAME}\n".encode(), work, mode=0o644)
    write_into_fs(fs, "/etc/hosts", _read(fs, "/etc/hosts", work).rstrip(b"\n") +
                  f"\n127.0.1.1\t{HOSTNAME}\n".encode(), work, mode=0o644)
    run(["e2fsck", "-f", "-n", str(fs)], timeout=PACK_TIMEOUT)
    out = work / "out"
    out.mkdir()
    for link, name in (("/vmlinuz", KERNEL_FILE), ("/initrd.img", INITRD_FILE)):
        (out / name).write_bytes(_read(fs, boot_files[link], work))
        (out / name).chmod(0o644)
    disk = work / "disk.raw"
    assemble_disk(fs, disk, boot_img=boot_img, core_img=core_img, disk_bytes=DISK_GIB * 1024 ** 3,
                  signature=int(key[:8], 16))
    fs.unlink()
    _report(progress, "packing: compressing the disk", 0.86)
    box_img = work / "box.img"
    _convert_compressed(disk, box_img)
    disk.unlink()
    info = _qemu_img_info(box_img, "qcow2")
    virtual_gib = int(info["virtual-size"]) // 1024 ** 3
    _report(progress, "packing: writing the box", 0.95)
    box_file = out / BOX_FILE
    write_box_archive(box_file, metadata=box_metadata(virtual_gib),
                      vagrantfile=box_vagrantfile(keys.private), box_img=box_img,
                      boot=boot_record(entry, image.cmdline))
    box_img.unlink()
    version = f"12.{time.strftime('%Y%m%d%H%M%S', time.gmtime(now()))}"
    digest = sha256_file(box_file)
    meta = {"name": BOX_NAME, "version": version, "key": key, "sha256": digest,
            "size_bytes": box_file.stat().st_size, "virtual_size_gib": virtual_gib,
            "image_sha256": image.sha256, "image_name": image.name,
            "private_key": str(keys.private), "public_key": keys.public_line,
            "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now()))}
    _write_json(out / "box.json", meta)
    out.chmod(0o755)
    if entry.exists():
        entry.rename(work / "replaced")
    out.rename(entry)
    _write_json(entry / "catalog.json", box_catalog(BOX_NAME, version, entry / BOX_FILE, digest))
    LOG.info("[box] packed %s %s (%d bytes)", BOX_NAME, version, meta["size_bytes"])
    box = load_box(entry)
    assert box is not None
    return box


def load_box(entry: Path) -> BuiltBox | None:
    try:
        meta = json.loads((entry / "box.json").read_text())
        path = entry / BOX_FILE
        if path.stat().st_size != meta["size_bytes"] or not (entry / "catalog.json").is_file():
            return None
        return BuiltBox(name=meta["name"], version=meta["version"], path=path,
                        catalog=entry / "catalog.json", sha256=meta["sha256"],
                        size_bytes=meta["size_bytes"], virtual_size_gib=meta["virtual_size_gib"],
                        key=meta["key"], image_sha256=meta["image_sha256"],
                        private_key=Path(meta["private_key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_boxes(boxes_dir: Path) -> list[BuiltBox]:
    found = (load_box(entry) for entry in sorted(boxes_dir.glob("debian-12-*")))
    return [box for box in found if box is not None]


# -- Vagrant -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VagrantUser:
    """Whose Vagrant gets the box: a name, ids, and the VAGRANT_HOME to add it to."""

    name: str
    uid: int
    gid: int
    home: Path  # the user's home directory
    vagrant_home: Path


def vagrant_user(name: str | None = None, environ: dict[str, str] | None = None) -> VagrantUser:
    """``name`` (default: the user who ran sudo, else this one) and their VAGRANT_HOME:
    ``$VAGRANT_HOME`` when it is this process's user, else ``~/.vagrant.d``."""
    env = os.environ if environ is None else environ
    if name is None and os.geteuid() == 0 and env.get("SUDO_USER") not in (None, "", "root"):
        name = env["SUDO_USER"]
    try:
        entry = pwd.getpwnam(name) if name else pwd.getpwuid(os.geteuid())
    except KeyError as exc:
        raise ImageError(f"no user {name!r}") from exc
    home = Path(entry.pw_dir)
    same = entry.pw_uid == os.geteuid()
    vagrant_home = Path(env["VAGRANT_HOME"]) if same and env.get("VAGRANT_HOME") \
        else home / ".vagrant.d"
    return VagrantUser(entry.pw_name, entry.pw_uid, entry.pw_gid, home, vagrant_home)


def box_dirs(vagrant_home: Path, name: str = BOX_NAME) -> dict[str, Path]:
    """Versions of box ``name`` that Vagrant has for libvirt: version -> its directory."""
    base = vagrant_home / "boxes" / name.replace("/", "-VAGRANTSLASH-")
    found: dict[str, Path] = {}
    # Vagrant 2.3: <version>/libvirt/; Vagrant 2.4 adds an architecture: <version>/<arch>/libvirt/
    for pattern in ("*/libvirt/metadata.json", "*/*/libvirt/metadata.json"):
        for metadata in base.glob(pattern):
            found[metadata.relative_to(base).parts[0]] = metadata.parent
    return found


def add_box(box: BuiltBox, user: VagrantUser, *, runner: Callable[..., Completed] = run,
            force: bool = False) -> bool:
    """``vagrant box add`` the box for ``user`` unless that version is there; True if added."""
    if not force and box.version in box_dirs(user.vagrant_home, box.name):
        LOG.info("[box] %s %s is already in %s", box.name, box.version, user.vagrant_home)
        return False
    if runner is run and shutil.which("vagrant") is None:
        raise ImageError("there is no vagrant here: apt-get install vagrant vagrant-libvirt "
                         "(Debian's packages), or use --no-add")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_")}
    env.update({"HOME": str(user.home), "VAGRANT_HOME": str(user.vagrant_home),
                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1"})
    cmd = ["vagrant", "box", "add", "--force", "--provider", "libvirt", str(box.catalog)]
    if user.uid != os.geteuid():
        cmd = ["runuser", "-u", user.name, "--", "env", *(f"{k}={env[k]}" for k in (
            "HOME", "VAGRANT_HOME", "VAGRANT_CHECKPOINT_DISABLE",
            "VAGRANT_BOX_UPDATE_CHECK_DISABLE")), *cmd]
    try:
        runner(cmd, env=env, timeout=ADD_TIMEOUT)
    except ProcessError as exc:
        raise ImageError(f"vagrant box add failed: {_describe(exc)}") from exc
    if box.version not in box_dirs(user.vagrant_home, box.name):
        raise ImageError(f"vagrant box add ran, but {user.vagrant_home} has no {box.name} "
                         f"{box.version} for libvirt")
    LOG.info("[box] added %s %s to %s", box.name, box.version, user.vagrant_home)
    return True


# -- all of it -----------------------------------------------------------------------------------


# The host's tools for building and packing, with the Debian package of each.
BUILD_TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs",
               "e2fsck": "e2fsprogs", "qemu-img": "qemu-utils"}


def check_tools(which: Callable[[str], str | None] = shutil.which) -> None:
    missing = sorted({pkg for tool, pkg in BUILD_TOOLS.items() if which(tool) is None})
    if missing:
        raise ImageError(f"building the box needs {', '.join(missing)}: apt-get install "
                         f"{' '.join(missing)} (or run `sudo ./lab up` once, which installs them)")


def build_box(project_root: Path, cache_dir: Path, key_dir: Path, *, progress: Progress = None,
              force: bool = False, key_owner: tuple[int, int] | None = None) -> BuiltBox:
    """The box for this checkout and this install's key pair: the image (cached in
    ``cache_dir/images``), then the packed box (cached in ``cache_dir/boxes``)."""
    check_tools()
    keys = ensure_key_pair(key_dir, owner=key_owner)
    wheelhouse = ensure_box_wheelhouse(project_root, cache_dir / "images", progress=progress)
    recipe = box_recipe(project_root, wheelhouse)

    def image_progress(event: ImageProgress) -> None:
        _report(progress, f"image: {event.phase}", 0.8 * event.fraction, event.done_bytes,
                event.total_bytes)

    boxes_dir = cache_dir / "boxes"
    published = boxes_dir / "image"
    image = build_debian_image(RELEASE, out_dir=published, cache_dir=cache_dir / "images",
                               size_gib=FS_GIB, force=force, progress=image_progress,
                               recipe=recipe)
    _prune_published(published, keep=(image.disk, image.kernel, image.initrd))
    box = pack_box(image, keys, boxes_dir, progress=progress, force=force)
    _report(progress, "done", 1.0)
    return box


def _prune_published(directory: Path, keep: Iterable[Path | None]) -> None:
    """Published copies of older box images (hard links that would keep them on disk)."""
    kept = {p.resolve() for p in keep if p is not None}
    for path in directory.glob(f"{IMAGE_NAME}-*"):
        if path.resolve() not in kept:
            with contextlib.suppress(OSError):
                path.unlink()
