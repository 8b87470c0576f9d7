"""hypervisor.boximage: the recipe, the key pair, the metadata, the boot sector, packing.

Packing runs for real on a tiny ext4 image made here (mkfs.ext4, debugfs, qemu-img, as
the image tests do); nothing here runs mmdebstrap or Vagrant (the runner is a fake)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from hypervisor import boximage
from hypervisor.boximage import (BOX_NAME, BuiltBox, VagrantUser, add_box,
                                 box_catalog, box_dirs, box_metadata, box_packages,
                                 box_recipe, box_requirements, box_vagrantfile, check_core_img,
                                 ensure_key_pair, grub_cfg, host_packages, master_boot_record,
                                 pack_box, vagrant_user)
from hypervisor.images import BuiltImage, ImageError
from hypervisor.proc import Completed, ProcessError

ROOT = Path(__file__).resolve().parents[2]
CMDLINE = "root=UUID=0a573d5c-3ee2-4ce8-906b-85e418057b41 ro console=tty0 console=ttyS0,115200n8"


def fake_boot_img() -> bytes:
    img = bytearray(512)
    img[0:2] = b"\xeb\x63"  # jmp after the BPB, as boot.S
    img[0x5C] = 1
    img[0x64] = 0xFF
    img[0x66:0x68] = b"\xeb\x05"  # the drive check's jump
    img[0x70:0x80] = b"boot code here.."
    img[510:512] = b"\x55\xaa"
    return bytes(img)


def fake_core_img(sectors: int = 60) -> bytes:
    core = bytearray(sectors * 512)
    struct.pack_into("<QHH", core, 500, 2, sectors - 1, 0x820)  # diskboot.img's blocklist
    core[512:520] = b"kernel.."
    return bytes(core)


# -- recipe ------------------------------------------------------------------------------------


def test_metadata_is_vagrant_libvirts_v1_format() -> None:
    assert box_metadata() == {"provider": "libvirt", "format": "qcow2",
                              "virtual_size": boximage.DISK_GIB}
    assert box_metadata(40) == {"provider": "libvirt", "format": "qcow2", "virtual_size": 40}
    assert boximage.DISK_GIB > boximage.FS_GIB  # room for the boot loader before partition 1


def test_packages_are_host_yml_s_and_what_vagrant_and_lab_need() -> None:
    host = host_packages(ROOT)
    assert "qemu-system-x86" in host and "openvswitch-switch" in host
    packages = box_packages(ROOT)
    assert packages[:len(host)] == host
    assert len(set(packages)) == len(packages)
    for name in ("openssh-server", "sudo", "rsync", "python3", "python3-apt",  # Vagrant, Ansible
                 "python3-venv", "python3-dev", "gcc", "pkg-config", "libvirt-dev",  # ./lab
                 "kubernetes-client", "grub-pc-bin", "linux-image-amd64"):
        assert name in packages


def test_host_packages_must_be_in_the_playbook(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "host.yml").write_text("- hosts: localhost\n  vars: {x: 1}\n")
    with pytest.raises(ImageError, match="no play with lab_host_packages"):
        host_packages(tmp_path)


def test_requirements_include_test_extras_and_build_backend() -> None:
    installed, extra = box_requirements(ROOT)
    assert any(r.startswith("ansible-core") for r in installed)
    assert any(r.startswith("pytest") for r in installed)  # ./lab installs .[test]
    assert any(r.startswith("setuptools") for r in extra)  # pip install -e builds in isolation
    assert "pip" in extra


def test_recipe_and_its_fingerprint(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"one")
    recipe = box_recipe(ROOT, wheels)

    assert recipe.name == boximage.IMAGE_NAME
    assert recipe.packages == box_packages(ROOT)
    assert "etc/cloud/cloud-init.disabled" in recipe.files
    assert "DHCP=yes" in recipe.files["etc/systemd/network/50-vagrant.network"]
    hooks = "\n".join(recipe.hooks)
    assert "useradd --uid 1000" in hooks and "NOPASSWD: ALL" in hooks
    assert "grub-mkimage --format=i386-pc" in hooks
    assert "--no-index --find-links /opt/pacific-lab/wheelhouse" in hooks
    assert "authorized_keys" not in hooks  # the key goes in when the box is packed
    before = recipe.fingerprint()
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"two")
    assert box_recipe(ROOT, wheels).fingerprint() != before


# -- the key pair ------------------------------------------------------------------------------


def test_missing_build_tools_are_named_with_their_packages() -> None:
    boximage.check_tools(lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(ImageError, match=r"needs e2fsprogs, mmdebstrap: apt-get install "
                                         r"e2fsprogs mmdebstrap"):
        boximage.check_tools(lambda tool: None if tool in ("mmdebstrap", "debugfs") else tool)


def test_key_pair_is_made_once_with_private_modes(tmp_path: Path) -> None:
    keys = ensure_key_pair(tmp_path / "vagrant")

    assert (tmp_path / "vagrant").stat().st_mode & 0o777 == 0o700
    assert keys.private.stat().st_mode & 0o777 == 0o600
    assert keys.public_line.startswith("ssh-ed25519 ")
    assert "OPENSSH PRIVATE KEY" in keys.private.read_text()
    assert ensure_key_pair(tmp_path / "vagrant") == keys


def test_key_pair_refuses_links(tmp_path: Path) -> None:
    keys = ensure_key_pair(tmp_path / "vagrant")
    target = tmp_path / "elsewhere"
    keys.private.rename(target)
    keys.private.symlink_to(target)
    with pytest.raises(ImageError, match="symbolic link"):
        ensure_key_pair(tmp_path / "vagrant")


# -- boot loader, files ------------------------------------------------------------------------


def test_master_boot_record_as_grub_bios_setup_writes_it() -> None:
    mbr = master_boot_record(fake_boot_img(), start=2048, sectors=12 * 2 ** 21,
                             signature=0x1234ABCD)

    assert len(mbr) == 512 and mbr[510:] == b"\x55\xaa"
    assert mbr[0x70:0x80] == b"boot code here.."  # boot.img's code is kept
    assert mbr[0x03:0x5A] == bytes(0x57)  # BPB scratch space zeroed
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == 1  # core.img from sector 1
    assert mbr[0x66:0x68] == b"\x90\x90"  # hard disk: no drive-number check jump
    assert struct.unpack_from("<I", mbr, 0x1B8)[0] == 0x1234ABCD
    entry = mbr[0x1BE:0x1CE]
    assert entry[0] == 0x80 and entry[4] == 0x83  # bootable, Linux
    assert entry[1:4] == bytes([32, 33, 0])  # CHS of LBA 2048 (255 heads, 63 sectors)
    assert entry[5:8] == bytes([254, 0xFF, 0xFF])  # beyond CHS: 1023/254/63
    assert struct.unpack_from("<II", entry, 8) == (2048, 12 * 2 ** 21)
    assert mbr[0x1CE:0x1FE] == bytes(48)  # one partition only


def test_master_boot_record_refuses_an_unknown_boot_img() -> None:
    bad = bytearray(fake_boot_img())
    bad[0x66] = 0x90
    with pytest.raises(ImageError, match="unknown GRUB layout"):
        master_boot_record(bytes(bad), start=2048, sectors=100, signature=1)
    with pytest.raises(ImageError, match="512-byte boot sector"):
        master_boot_record(fake_boot_img()[:500], start=2048, sectors=100, signature=1)
    with pytest.raises(ImageError, match="does not fit an MBR"):
        master_boot_record(fake_boot_img(), start=2048, sectors=2 ** 32, signature=1)


def test_core_img_must_fit_and_load_itself_from_sector_2() -> None:
    check_core_img(fake_core_img())
    with pytest.raises(ImageError, match="must fit"):
        check_core_img(fake_core_img(2048))
    wrong = bytearray(fake_core_img())
    struct.pack_into("<Q", wrong, 500, 5)
    with pytest.raises(ImageError, match="blocklist"):
        check_core_img(bytes(wrong))


def test_grub_cfg_boots_the_images_kernel_line() -> None:
    cfg = grub_cfg(CMDLINE)
    assert f"linux /vmlinuz {CMDLINE}\n" in cfg
    assert "initrd /initrd.img\n" in cfg
    assert "serial --unit=0 --speed=115200" in cfg
    with pytest.raises(ImageError):
        grub_cfg("root=/dev/vda1; reboot")


def test_box_vagrantfile_names_the_key_and_keeps_it() -> None:
    text = box_vagrantfile(Path("/var/lib/pacific-lab/vagrant/id_ed25519"))
    assert "config.ssh.private_key_path = '/var/lib/pacific-lab/vagrant/id_ed25519'" in text
    assert "config.ssh.insert_key = false" in text
    assert "config.ssh.private_key_path = 'a\\'b #{x}'" in box_vagrantfile(Path("a'b #{x}"))


def test_catalog_gives_vagrant_a_version_and_checksum(tmp_path: Path) -> None:
    catalog = box_catalog(BOX_NAME, "12.20250101000000", tmp_path / "x.box", "ab" * 32)
    assert catalog["name"] == BOX_NAME
    (version,) = catalog["versions"]
    assert version["version"] == "12.20250101000000"
    assert version["providers"] == [{"name": "libvirt", "url": (tmp_path / "x.box").as_uri(),
                                     "checksum_type": "sha256", "checksum": "ab" * 32}]


# -- packing -----------------------------------------------------------------------------------


def _run(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True,
                          timeout=120).stdout


@pytest.fixture
def image(tmp_path: Path) -> BuiltImage:
    """An image as build_debian_image leaves it: ext4 on the whole disk, kernel links,
    GRUB's files, the vagrant user's empty ~/.ssh."""
    root = tmp_path / "rootfs"
    (root / "boot" / "grub" / "i386-pc").mkdir(parents=True)
    (root / "boot" / "vmlinuz-6.1.0-1-amd64").write_bytes(b"kernel")
    (root / "boot" / "initrd.img-6.1.0-1-amd64").write_bytes(b"initrd")
    (root / "vmlinuz").symlink_to("boot/vmlinuz-6.1.0-1-amd64")
    (root / "initrd.img").symlink_to("boot/initrd.img-6.1.0-1-amd64")
    (root / "boot" / "grub" / "i386-pc" / "boot.img").write_bytes(fake_boot_img())
    (root / "boot" / "grub" / "i386-pc" / "core.img").write_bytes(fake_core_img())
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("debian\n")
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n")
    ssh = root / "home" / "vagrant" / ".ssh"
    ssh.mkdir(parents=True, mode=0o700)
    os.chown(ssh, 1000, 1000)
    raw = tmp_path / "root.raw"
    _run("mkfs.ext4", "-q", "-F", "-L", "pacific-root", "-d", str(root), str(raw), "16M")
    disk = tmp_path / "disk.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk))
    return BuiltImage(name="pacific-lab-box", disk=disk, kernel=None, initrd=None,
                      cmdline=CMDLINE, sha256="f5" * 32, size_bytes=disk.stat().st_size,
                      virtual_size_bytes=16 * 2 ** 20)


def test_pack_makes_a_bootable_box_and_caches_it(tmp_path: Path, image: BuiltImage,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boximage, "DISK_GIB", 1)
    keys = ensure_key_pair(tmp_path / "keys")
    boxes = tmp_path / "boxes"
    box = pack_box(image, keys, boxes, now=lambda: 1767225600.0)  # 2026-01-01

    assert box.name == BOX_NAME and box.version == "12.20260101000000"
    assert box.virtual_size_gib == 1 and box.private_key == keys.private
    with tarfile.open(box.path) as tar:
        assert sorted(tar.getnames()) == ["Vagrantfile", "boot.json", "box.img",
                                          "metadata.json"]
        assert json.load(tar.extractfile("metadata.json")) == box_metadata(1)  # type: ignore[arg-type]
        # The kernel and initrd beside the box, for direct kernel boot under TCG.
        boot = json.load(tar.extractfile("boot.json"))  # type: ignore[arg-type]
        assert boot == {"kernel": str(box.path.parent / "vmlinuz"),
                        "initrd": str(box.path.parent / "initrd.img"), "cmdline": CMDLINE}
        assert Path(boot["kernel"]).read_bytes() == b"kernel"
        assert Path(boot["initrd"]).read_bytes() == b"initrd"
        (tmp_path / "box.img").write_bytes(tar.extractfile("box.img").read())  # type: ignore[union-attr]
    raw = tmp_path / "box.raw"
    _run("qemu-img", "convert", "-O", "raw", str(tmp_path / "box.img"), str(raw))
    data = raw.read_bytes()
    assert len(data) == 2 ** 30
    assert data[510:512] == b"\x55\xaa" and data[0x1BE] == 0x80
    assert data[512:512 + len(fake_core_img())] == fake_core_img()
    fs = tmp_path / "fs.raw"
    fs.write_bytes(data[2048 * 512:2048 * 512 + 16 * 2 ** 20])
    assert struct.unpack_from("<II", data, 0x1BE + 8) == (2048, 16 * 2 ** 20 // 512)

    keys_stat = _run("debugfs", "-R", "stat /home/vagrant/.ssh/authorized_keys", str(fs))
    assert "Mode:  0600" in keys_stat and "User:  1000" in keys_stat
    assert _run("debugfs", "-R", "cat /home/vagrant/.ssh/authorized_keys", str(fs)) == \
        keys.public_line + "\n"
    assert _run("debugfs", "-R", "cat /boot/grub/grub.cfg", str(fs)) == grub_cfg(CMDLINE)
    assert _run("debugfs", "-R", "cat /etc/hostname", str(fs)) == "pacific-lab\n"
    assert _run("debugfs", "-R", "cat /etc/hosts", str(fs)) == \
        "127.0.0.1\tlocalhost\n127.0.1.1\tpacific-lab\n"
    _run("e2fsck", "-f", "-n", str(fs))

    assert json.loads(box.catalog.read_text())["versions"][0]["version"] == box.version
    # Cached: the same inputs give the same box, without packing again.
    assert pack_box(image, keys, boxes, now=lambda: 1800000000.0) == box
    # Another key pair is another box; the superseded one goes.
    other = ensure_key_pair(tmp_path / "other-keys")
    second = pack_box(image, other, boxes, now=lambda: 1800000000.0)
    assert second.key != box.key and not box.path.exists()
    assert boximage.list_boxes(boxes) == [second]


def test_pack_refuses_an_image_without_kernel_links(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(boximage, "DISK_GIB", 1)
    raw = tmp_path / "root.raw"
    (tmp_path / "empty").mkdir()
    _run("mkfs.ext4", "-q", "-F", "-d", str(tmp_path / "empty"), str(raw), "8M")
    disk = tmp_path / "disk.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk))
    image = BuiltImage(name="x", disk=disk, kernel=None, initrd=None, cmdline=CMDLINE,
                       sha256="00" * 32, size_bytes=disk.stat().st_size,
                       virtual_size_bytes=8 * 2 ** 20)
    with pytest.raises(ImageError, match="no /vmlinuz link"):
        pack_box(image, ensure_key_pair(tmp_path / "keys"), tmp_path / "boxes")
    assert not list((tmp_path / "boxes").glob("debian-12-*"))
    assert not list((tmp_path / "boxes").glob(".pack-*"))  # no work directory left


# -- adding it to Vagrant ----------------------------------------------------------------------


def _box(tmp_path: Path) -> BuiltBox:
    return BuiltBox(name=BOX_NAME, version="12.20260101000000", path=tmp_path / "b.box",
                    catalog=tmp_path / "catalog.json", sha256="00" * 32, size_bytes=1,
                    virtual_size_gib=13, key="k" * 64, image_sha256="i" * 64,
                    private_key=tmp_path / "id_ed25519")


def _user(tmp_path: Path, uid: int | None = None) -> VagrantUser:
    uid = os.geteuid() if uid is None else uid
    return VagrantUser(name="someone", uid=uid, gid=uid, home=tmp_path,
                       vagrant_home=tmp_path / "vagrant-home")


def test_add_box_adds_a_version_once(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    user = _user(tmp_path)

    def vagrant(cmd: list[str], **kwargs: object) -> Completed:
        calls.append(cmd)
        env = kwargs["env"]
        assert isinstance(env, dict) and env["VAGRANT_HOME"] == str(user.vagrant_home)
        meta = user.vagrant_home / "boxes" / "pacific-lab-VAGRANTSLASH-debian-12" / \
            "12.20260101000000" / "libvirt" / "metadata.json"
        meta.parent.mkdir(parents=True)
        meta.write_text("{}")
        return Completed(tuple(cmd), 0, "", "")

    box = _box(tmp_path)
    assert add_box(box, user, runner=vagrant) is True
    assert calls == [["vagrant", "box", "add", "--force", "--provider", "libvirt",
                      str(box.catalog)]]
    assert add_box(box, user, runner=vagrant) is False  # that version is there: no second add
    assert len(calls) == 1
    assert list(box_dirs(user.vagrant_home)) == ["12.20260101000000"]


def test_add_box_runs_vagrant_as_the_other_user(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def vagrant(cmd: list[str], **kwargs: object) -> Completed:
        calls.append(cmd)
        return Completed(tuple(cmd), 0, "", "")

    user = _user(tmp_path, uid=os.geteuid() + 4242)
    with pytest.raises(ImageError, match="has no pacific-lab/debian-12"):
        add_box(_box(tmp_path), user, runner=vagrant)
    assert calls[0][:4] == ["runuser", "-u", "someone", "--"]
    assert f"VAGRANT_HOME={user.vagrant_home}" in calls[0]


def test_add_box_reports_a_failed_vagrant(tmp_path: Path) -> None:
    def vagrant(cmd: list[str], **kwargs: object) -> Completed:
        raise ProcessError(cmd, 1, "", "The box failed to unpackage properly.")

    with pytest.raises(ImageError, match="vagrant box add failed"):
        add_box(_box(tmp_path), _user(tmp_path), runner=vagrant)


def test_vagrant_user_and_home(tmp_path: Path) -> None:
    me = vagrant_user(None, environ={"VAGRANT_HOME": str(tmp_path)})
    assert me.uid == os.geteuid() and me.vagrant_home == tmp_path
    me = vagrant_user(None, environ={})
    assert me.vagrant_home == me.home / ".vagrant.d"
    if os.geteuid() == 0:  # sudo's user gets the box, in their own home
        nobody = vagrant_user(None, environ={"SUDO_USER": "nobody", "VAGRANT_HOME": "/x"})
        assert nobody.name == "nobody" and nobody.vagrant_home == nobody.home / ".vagrant.d"
    with pytest.raises(ImageError, match="no user"):
        vagrant_user("pacific-lab-no-such-user", environ={})
