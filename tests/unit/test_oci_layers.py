"""Layer extraction against hostile archives: every rule of ``hypervisor.oci.layers``.

Archives are built in memory; ``outside`` is a directory next to the root
that no layer may touch."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from hypervisor.oci import BadLayer, DigestMismatch, TooLarge
from hypervisor.oci.layers import Budget, LayerStats, apply_layer, unpack_tar

AS_ROOT = os.geteuid() == 0


# -- building archives ---------------------------------------------------------------------------


def reg(name: str, data: bytes = b"data", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
        mtime: float = 1_600_000_000, pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, mtime
    info.pax_headers = dict(pax or {})
    return info, data


def directory(name: str, *, mode: int = 0o755, mtime: float = 1_500_000_000,
              uid: int = 0, gid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = tarfile.DIRTYPE, mode, mtime, uid, gid
    return info, b""


def link(name: str, target: str, *, hard: bool = False, uid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname, info.mode, info.mtime, info.uid = target, 0o777, 1_400_000_000, uid
    return info, b""


def special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = kind, 8, 0
    return info, b""


def archive(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "sentinel").write_text("untouched")
    return path


def apply(root: Path, *entries: tuple[tarfile.TarInfo, bytes]) -> LayerStats:
    return unpack_tar(io.BytesIO(archive(*entries)), root)


def assert_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]
    assert (outside / "sentinel").read_text() == "untouched"


# -- ordinary content ----------------------------------------------------------------------------


def test_files_dirs_links_and_metadata(root: Path) -> None:
    apply(root,
          directory("./"),
          directory("./usr/bin/", mode=0o750, mtime=1_500_000_000, uid=7, gid=8),
          reg("./usr/bin/su", b"#!", mode=0o4755, uid=0, gid=0),
          reg("usr/bin/wall", b"w", mode=0o2755, uid=5, gid=6),
          directory("tmp", mode=0o1777),
          link("bin", "usr/bin", uid=9),
          link("usr/bin/also-su", "usr/bin/su", hard=True))
    su = os.lstat(root / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(root / "usr/bin/wall").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(root / "usr/bin").st_mode) == 0o750
    assert su.st_mtime == 1_600_000_000
    assert os.lstat(root / "usr/bin").st_mtime == 1_500_000_000  # set after its contents
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.lstat(root / "bin").st_mtime == 1_400_000_000
    assert os.lstat(root / "usr/bin/also-su").st_ino == su.st_ino
    if AS_ROOT:
        assert (os.lstat(root / "usr/bin/wall").st_uid, os.lstat(root / "usr/bin/wall").st_gid) == (5, 6)
        assert os.lstat(root / "usr/bin").st_uid == 7
        assert os.lstat(root / "bin").st_uid == 9  # lchown: the link itself


def test_missing_parents_are_created(root: Path) -> None:
    apply(root, reg("a/b/c/file"))
    assert (root / "a/b/c/file").read_bytes() == b"data"
    assert stat.S_IMODE(os.lstat(root / "a/b").st_mode) == 0o755


def test_later_entries_replace_earlier_ones(root: Path) -> None:
    apply(root, reg("x", b"one"), directory("d"), reg("d/inner"))
    apply(root, reg("x", b"two"), reg("d", b"now a file"))
    assert (root / "x").read_bytes() == b"two"
    assert (root / "d").read_bytes() == b"now a file"
    apply(root, directory("x"), directory("d"))
    assert (root / "x").is_dir() and (root / "d").is_dir()


def test_existing_directory_keeps_contents(root: Path) -> None:
    apply(root, directory("d"), reg("d/keep"))
    apply(root, directory("d", mode=0o700))
    assert (root / "d/keep").exists()
    assert stat.S_IMODE(os.lstat(root / "d").st_mode) == 0o700


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../escape", "a/../b", "./..",
                                  "a/b/../../../c"])
def test_names_that_leave_the_root(root: Path, outside: Path, name: str) -> None:
    with pytest.raises(BadLayer):
        apply(root, reg(name))
    assert not (root.parent / "escape").exists()
    assert_untouched(outside)


def test_too_deep(root: Path) -> None:
    with pytest.raises(BadLayer, match="components"):
        apply(root, reg("/".join(["d"] * 300)))


def test_root_entry_must_be_a_directory(root: Path) -> None:
    with pytest.raises(BadLayer, match="root"):
        apply(root, reg("./"))


# -- symbolic links ------------------------------------------------------------------------------


def test_never_writes_through_a_symlink_in_the_same_layer(root: Path, outside: Path) -> None:
    with pytest.raises(BadLayer, match="symbolic link 'evil'"):
        apply(root, link("evil", str(outside)), reg("evil/planted", b"pwned"))
    assert_untouched(outside)


def test_never_writes_through_a_symlink_of_a_lower_layer(root: Path, outside: Path) -> None:
    apply(root, directory("etc"), link("etc/conf.d", str(outside)))
    with pytest.raises(BadLayer):
        apply(root, reg("etc/conf.d/sentinel", b"pwned"))
    with pytest.raises(BadLayer):
        apply(root, directory("etc/conf.d/sub"))
    assert_untouched(outside)


def test_relative_symlink_parents_are_refused_too(root: Path, outside: Path) -> None:
    apply(root, directory("usr/bin"), link("bin", "usr/bin"))
    with pytest.raises(BadLayer, match="symbolic link 'bin'"):
        apply(root, reg("bin/sh"))
    apply(root, link("up", "../outside"))
    with pytest.raises(BadLayer):
        apply(root, reg("up/sentinel", b"pwned"))
    assert_untouched(outside)


def test_a_symlink_at_the_final_name_is_replaced_not_followed(root: Path, outside: Path) -> None:
    apply(root, link("passwd", str(outside / "sentinel")), link("dir", str(outside)))
    apply(root, reg("passwd", b"new"), directory("dir"))
    assert (root / "passwd").read_bytes() == b"new" and not (root / "passwd").is_symlink()
    assert (root / "dir").is_dir() and not (root / "dir").is_symlink()
    assert_untouched(outside)


def test_dangling_and_absolute_symlinks_are_kept(root: Path) -> None:
    apply(root, link("abs", "/etc/shadow"), link("dangling", "../../nowhere"))
    assert os.readlink(root / "abs") == "/etc/shadow"
    assert os.readlink(root / "dangling") == "../../nowhere"


def test_empty_symlink_target(root: Path) -> None:
    with pytest.raises(BadLayer, match="empty target"):
        apply(root, link("x", ""))


# -- hard links ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside/sentinel", "a/../../x"])
def test_hardlinks_out_of_the_root(root: Path, outside: Path, target: str) -> None:
    with pytest.raises(BadLayer):
        apply(root, link("x", target, hard=True))
    assert not (root / "x").exists()
    assert_untouched(outside)


def test_hardlink_to_something_not_yet_extracted(root: Path) -> None:
    with pytest.raises(BadLayer, match="does not exist"):
        apply(root, link("early", "late", hard=True), reg("late"))
    with pytest.raises(BadLayer, match="does not exist"):
        apply(root, link("early", "missing/dir/late", hard=True))


def test_hardlink_through_a_symlink(root: Path, outside: Path) -> None:
    apply(root, link("evil", str(outside)))
    with pytest.raises(BadLayer, match="symbolic link"):
        apply(root, link("stolen", "evil/sentinel", hard=True))
    assert not (root / "stolen").exists()


def test_hardlink_to_a_directory(root: Path) -> None:
    with pytest.raises(BadLayer, match="not a file"):
        apply(root, directory("d"), link("x", "d", hard=True))


def test_hardlink_to_a_lower_layer_file_and_to_a_symlink(root: Path, outside: Path) -> None:
    apply(root, reg("lower", b"L"), link("sym", str(outside / "sentinel")))
    apply(root, link("upper", "lower", hard=True), link("sym2", "sym", hard=True))
    assert os.lstat(root / "upper").st_ino == os.lstat(root / "lower").st_ino
    assert os.readlink(root / "sym2") == str(outside / "sentinel")  # the link itself, not its target


def test_a_new_file_never_writes_through_an_old_hardlink(root: Path) -> None:
    apply(root, reg("original", b"keep me"), link("alias", "original", hard=True))
    apply(root, reg("alias", b"replaced"))
    assert (root / "original").read_bytes() == b"keep me"
    assert (root / "alias").read_bytes() == b"replaced"


# -- special files -------------------------------------------------------------------------------


def test_devices_and_fifos_are_skipped(root: Path) -> None:
    stats = apply(root, special("dev/sda", tarfile.BLKTYPE), special("dev/null", tarfile.CHRTYPE),
                  special("run/fifo", tarfile.FIFOTYPE), reg("ok"))
    assert not (root / "dev/sda").exists() and not (root / "dev/null").exists()
    assert not (root / "run/fifo").exists()
    assert (root / "ok").exists()
    assert stats.skipped == ["skipped the device node dev/sda", "skipped the device node dev/null",
                             "skipped the FIFO run/fifo"]


@pytest.mark.skipif(not AS_ROOT, reason="file capabilities need root")
def test_file_capabilities_kept_other_xattrs_dropped(root: Path) -> None:
    cap = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    stats = apply(root, reg("ping", b"\x7fELF", mode=0o755, pax={
        "SCHILY.xattr.security.capability": cap, "SCHILY.xattr.trusted.overlay.opaque": "y"}))
    try:
        value = os.getxattr(root / "ping", "security.capability")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            pytest.skip("this file system keeps no security.capability")
        raise
    assert value == cap.encode("latin-1")
    assert "trusted.overlay.opaque" not in os.listxattr(root / "ping")
    assert any("trusted.overlay.opaque" in note for note in stats.skipped)


# -- whiteouts -----------------------------------------------------------------------------------


def test_whiteout_removes_lower_files_and_trees(root: Path) -> None:
    apply(root, reg("etc/motd"), directory("var/cache"), reg("var/cache/a/b"), reg("keep"))
    stats = apply(root, reg("etc/.wh.motd"), reg("var/.wh.cache"), reg(".wh.not-there"))
    assert not (root / "etc/motd").exists() and not (root / "var/cache").exists()
    assert (root / "keep").exists() and (root / "etc").is_dir()
    assert not any(p.name.startswith(".wh.") for p in root.rglob("*"))
    assert stats.whiteouts == 3


def test_whiteout_of_a_symlink_removes_the_link_only(root: Path, outside: Path) -> None:
    apply(root, link("to-outside", str(outside)), link("to-file", str(outside / "sentinel")))
    apply(root, reg(".wh.to-outside"), reg(".wh.to-file"))
    assert not os.path.lexists(root / "to-outside") and not os.path.lexists(root / "to-file")
    assert_untouched(outside)


def test_whiteout_through_a_symlink_is_refused(root: Path, outside: Path) -> None:
    apply(root, link("evil", str(outside)))
    with pytest.raises(BadLayer, match="symbolic link"):
        apply(root, reg("evil/.wh.sentinel"))
    with pytest.raises(BadLayer, match="symbolic link"):
        apply(root, reg("evil/.wh..wh..opq"))
    assert_untouched(outside)


@pytest.mark.parametrize("name", [".wh.", "d/.wh.", ".wh..", "../.wh.sentinel", "/.wh.x"])
def test_whiteouts_that_name_nothing_or_leave_the_root(root: Path, outside: Path, name: str) -> None:
    apply(root, directory("d"))
    with pytest.raises(BadLayer):
        apply(root, reg(name))
    assert root.exists() and (root / "d").is_dir()
    assert_untouched(outside)


def test_whiteout_spares_its_own_layer(root: Path) -> None:
    apply(root, reg("a", b"lower"))
    apply(root, reg("a", b"upper"), reg(".wh.a"))
    assert (root / "a").read_bytes() == b"upper"


def test_opaque_directory(root: Path) -> None:
    apply(root, directory("d"), reg("d/lower1"), directory("d/sub"), reg("d/sub/lower2"),
          directory("d/x"), reg("d/x/lower3"), reg("other"))
    apply(root, reg("d/before"), directory("d"), reg("d/.wh..wh..opq"), reg("d/after"),
          reg("d/x/mine"))
    assert sorted(str(p.relative_to(root)) for p in (root / "d").rglob("*")) == [
        "d/after", "d/before", "d/x", "d/x/mine"]
    assert (root / "other").exists()


def test_opaque_directory_removes_lower_symlinks_without_following(root: Path, outside: Path) -> None:
    apply(root, directory("d"), link("d/out", str(outside)))
    apply(root, reg("d/.wh..wh..opq"))
    assert list((root / "d").iterdir()) == []
    assert_untouched(outside)


def test_aufs_metadata_is_ignored(root: Path) -> None:
    stats = apply(root, reg(".wh..wh.plnk/123.456"), reg(".wh..wh.aufs"))
    assert list(root.iterdir()) == []
    assert len(stats.skipped) == 2


# -- sizes, streams and digests ------------------------------------------------------------------


def test_budget_for_bytes_and_entries(root: Path) -> None:
    with pytest.raises(TooLarge):
        unpack_tar(io.BytesIO(archive(reg("big", b"x" * 100_000))), root,
                   Budget(max_bytes=50_000, max_entries=10))
    with pytest.raises(TooLarge, match="files"):
        unpack_tar(io.BytesIO(archive(*(reg(f"f{i}") for i in range(20)))), root,
                   Budget(max_bytes=10**9, max_entries=10))


def test_huge_pax_header_refused_before_it_is_read(root: Path) -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 512 * 1024 * 1024
    stream = io.BytesIO(header.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 4096)
    with pytest.raises(BadLayer, match="metadata header"):
        unpack_tar(stream, root)


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, b"\0" * 100])
def test_garbage_is_a_bad_layer(root: Path, tmp_path: Path, data: bytes) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(data)
    with pytest.raises(BadLayer):
        apply_layer(blob, root)


def test_gzip_layer_and_diff_id(root: Path, tmp_path: Path) -> None:
    raw = archive(reg("hello", b"world"))
    blob = tmp_path / "layer.tar.gz"
    blob.write_bytes(gzip.compress(raw))
    apply_layer(blob, root, diff_id="sha256:" + hashlib.sha256(raw).hexdigest())
    assert (root / "hello").read_bytes() == b"world"
    with pytest.raises(DigestMismatch):
        apply_layer(blob, root, diff_id="sha256:" + "0" * 64)


def test_damaged_gzip(root: Path, tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar.gz"
    blob.write_bytes(gzip.compress(archive(reg("hello", b"w" * 10_000)))[:-30])
    with pytest.raises(BadLayer):
        apply_layer(blob, root)


def test_gzip_bomb_is_capped(root: Path, tmp_path: Path) -> None:
    blob = tmp_path / "bomb.gz"
    blob.write_bytes(gzip.compress(b"\0" * 50_000_000))
    with pytest.raises(TooLarge):
        apply_layer(blob, root, budget=Budget(max_bytes=10_000_000, max_entries=100))


@pytest.mark.skipif(shutil.which("zstd") is None, reason="no zstd program")
def test_zstd_layer(root: Path, tmp_path: Path) -> None:
    import subprocess
    raw = archive(reg("z", b"zstd"))
    blob = tmp_path / "layer.tar.zst"
    blob.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True,
                                    check=True).stdout)
    apply_layer(blob, root, diff_id="sha256:" + hashlib.sha256(raw).hexdigest())
    assert (root / "z").read_bytes() == b"zstd"
    broken = tmp_path / "broken.zst"
    broken.write_bytes(blob.read_bytes()[:-8])
    with pytest.raises(BadLayer):
        apply_layer(broken, tmp_path / "root")


def test_blob_that_is_a_symlink_is_not_opened(root: Path, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(archive(reg("x")))
    (tmp_path / "blob").symlink_to(real)
    with pytest.raises(OSError):
        apply_layer(tmp_path / "blob", root)


def test_owner_ids_out_of_range(root: Path) -> None:
    if not AS_ROOT:
        pytest.skip("ownership is applied as root only")
    with pytest.raises(BadLayer, match="owner"):
        apply(root, reg("x", uid=2 ** 32 - 1))
