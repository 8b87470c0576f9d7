"""A corpus of hostile OCI layers (issue 17): nothing outside the unpack root ever changes.

Every case is a named builder in ``CORPUS`` and one parametrized test. The
builder gets the sandbox (``<tmp>/sandbox/root`` is the unpack root,
``<tmp>/sandbox/outside`` a sentinel directory next to it, ``<tmp>`` holds
more files, a symlink and a hard link into ``outside``) and returns gzip'd
layers: all but the last are benign and must apply, the last is the attack.
Each case states its outcome: refused (which exception, which words), or
accepted with the hostile part neutralised (a ``check`` says how).

After every case, whatever the outcome:

- every path under ``<tmp>`` but the root (type, mode, owner, link count,
  inode, mtime, size, content hash, link target) is as before; nothing was
  added or removed; absolute host paths a case aims at do not exist;
- the root holds no device node, FIFO or socket, and setuid/setgid bits only
  on the paths the layer itself declared with them.

Setuid, setgid and sticky bits the layer declares are *kept*, not stripped:
the root becomes a VM's root file system (``su``, ``sudo``, ``ping``, ``/tmp``
need them), ``hypervisor.oci.layers`` documents it and
``tests/unit/test_oci_layers.py`` asserts it. What makes them harmless on the
host is where the root lives: the image cache unpacks inside directories only
root can enter (``test_the_cache_unpacks_where_no_other_user_can_reach``).
The cases here check that no bit is ever gained beyond what was declared.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hypervisor.oci import BadLayer, RegistryPolicy, TooLarge
from hypervisor.oci.cache import ImageCache
from hypervisor.oci.layers import Budget, LayerStats, apply_layer

AS_ROOT = os.geteuid() == 0
KiB = 1024
MiB = 1024 * KiB
BUDGET_BYTES = 4 * MiB
BUDGET_ENTRIES = 1000
BOMB = 32 * MiB  # what a bomb expands to: eight times the budget
HOST_PROBE = "/etc/pacific-lab-hostile-layer-probe"

Entry = tuple[tarfile.TarInfo, bytes]


# -- building layers -----------------------------------------------------------------------------


def reg(name: str, data: bytes = b"data", *, mode: int = 0o644,
        pax: dict[str, str] | None = None) -> Entry:
    """A regular file."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_600_000_000
    info.pax_headers = dict(pax or {})
    return info, data


def folder(name: str, *, mode: int = 0o755) -> Entry:
    """A directory."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1_500_000_000
    return info, b""


def sym(name: str, target: str, *, pax: dict[str, str] | None = None) -> Entry:
    """A symbolic link."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
    info.pax_headers = dict(pax or {})
    return info, b""


def hard(name: str, target: str, *, mode: int = 0o644, pax: dict[str, str] | None = None) -> Entry:
    """A hard link."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = tarfile.LNKTYPE, target, mode
    info.pax_headers = dict(pax or {})
    return info, b""


def node(name: str, kind: bytes, *, mode: int = 0o666) -> Entry:
    """A device node or FIFO."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.devmajor, info.devminor = kind, mode, 1, 3
    return info, b""


def tar(*entries: Entry, fmt: int = tarfile.PAX_FORMAT, encoding: str = "utf-8",
        global_pax: dict[str, str] | None = None) -> bytes:
    """An uncompressed tar of ``entries``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt, encoding=encoding,
                      pax_headers=global_pax) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


def layer(*entries: Entry, fmt: int = tarfile.PAX_FORMAT, encoding: str = "utf-8",
          global_pax: dict[str, str] | None = None) -> bytes:
    """A gzip'd tar layer."""
    return gz(tar(*entries, fmt=fmt, encoding=encoding, global_pax=global_pax))


def metadata_header(kind: bytes, size: int) -> bytes:
    """A lone pax or GNU long-name header that announces ``size`` bytes of metadata."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = kind, size
    return header.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * 4096


def deep(prefix: str, components: int) -> str:
    return "/".join([prefix] * components)


# -- the sandbox and the cases -------------------------------------------------------------------


@dataclass(frozen=True)
class Sandbox:
    top: Path  # <tmp>
    root: Path  # <tmp>/sandbox/root: the unpack root
    outside: Path  # <tmp>/sandbox/outside: a sentinel directory next to the root


@dataclass
class Attack:
    layers: list[bytes]  # gzip'd layers in order; all but the last must apply
    refused: type[Exception] | None = None  # the last layer is refused with this...
    match: str = ""  # ...whose message matches this
    check: Callable[[Path, LayerStats], None] | None = None  # or: accepted, and neutralised so
    setid: frozenset[str] = frozenset()  # paths under the root declared setuid/setgid
    budget: Budget = field(default_factory=lambda: Budget(BUDGET_BYTES, BUDGET_ENTRIES))
    probes: tuple[str, ...] = ()  # host paths outside <tmp> that must not appear


Builder = Callable[[Sandbox], Attack]
CORPUS: dict[str, Builder] = {}


def hostile(build: Builder) -> Builder:
    """Register a case under its function's name."""
    CORPUS[build.__name__] = build
    return build


def refused(exc: type[Exception], match: str, *layers: bytes, budget: Budget | None = None,
            probes: tuple[str, ...] = ()) -> Attack:
    """The last of ``layers`` is refused with ``exc``, its message matching ``match``."""
    attack = Attack(list(layers), refused=exc, match=match, probes=probes)
    if budget is not None:
        attack.budget = budget
    return attack


def accepted(check: Callable[[Path, LayerStats], None], *layers: bytes,
             setid: frozenset[str] = frozenset()) -> Attack:
    """All ``layers`` apply; ``check`` asserts how the hostile part was neutralised."""
    return Attack(list(layers), check=check, setid=setid)


def names(root: Path) -> list[str]:
    """Every path under ``root``, relative and sorted (short paths only)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def nothing_left(root: Path, stats: LayerStats) -> None:
    assert names(root) == []


# ---- '..' traversal


@hostile
def dotdot_plain(box: Sandbox) -> Attack:
    """A file named ``../escape``."""
    return refused(BadLayer, "'..' component", layer(reg("../escape", b"pwned")))


@hostile
def dotdot_nested(box: Sandbox) -> Attack:
    """``a/../../escape``: climbs out after going down."""
    return refused(BadLayer, "'..' component", layer(reg("a/../../escape", b"pwned")))


@hostile
def dotdot_after_dot(box: Sandbox) -> Attack:
    """``./../outside/sentinel`` overwrites the sentinel next to the root."""
    return refused(BadLayer, "'..' component", layer(reg("./../outside/sentinel", b"pwned")))


@hostile
def dotdot_deep_into_outside(box: Sandbox) -> Attack:
    """``a/b/../../../outside/sentinel``."""
    return refused(BadLayer, "'..' component",
                   layer(reg("a/b/../../../outside/sentinel", b"pwned")))


@hostile
def dotdot_directory(box: Sandbox) -> Attack:
    """A directory entry ``../newdir``."""
    return refused(BadLayer, "'..' component", layer(folder("../newdir")))


@hostile
def dotdot_symlink_name(box: Sandbox) -> Attack:
    """A symlink placed at ``../outside/link``."""
    return refused(BadLayer, "'..' component", layer(sym("../outside/link", "/")))


@hostile
def dotdot_in_hardlink_target(box: Sandbox) -> Attack:
    """A hard link to ``../outside/sentinel``: would share the sentinel's inode."""
    return refused(BadLayer, "'..' component",
                   layer(reg("x"), hard("stolen", "../outside/sentinel")))


@hostile
def dotdot_nested_in_hardlink_target(box: Sandbox) -> Attack:
    """A hard link to ``a/../../outside/sentinel``."""
    return refused(BadLayer, "'..' component",
                   layer(folder("a"), hard("stolen", "a/../../outside/sentinel")))


@hostile
def dotdot_in_symlink_target_is_kept_unfollowed(box: Sandbox) -> Attack:
    """A symlink to ``../outside/sentinel`` is stored as it is and never followed."""
    def check(root: Path, stats: LayerStats) -> None:
        assert os.readlink(root / "up") == "../outside/sentinel"
    return accepted(check, layer(sym("up", "../outside/sentinel")))


@hostile
def dotdot_in_whiteout_name(box: Sandbox) -> Attack:
    """``../.wh.outside`` would delete the sentinel directory."""
    return refused(BadLayer, "'..' component", layer(reg("../.wh.outside")))


@hostile
def dotdot_nested_in_whiteout_name(box: Sandbox) -> Attack:
    """``a/../../outside/.wh.sentinel``."""
    return refused(BadLayer, "'..' component", layer(reg("a/../../outside/.wh.sentinel")))


@hostile
def whiteout_of_dotdot(box: Sandbox) -> Attack:
    """``.wh...`` names ``..``: would remove the root's parent."""
    return refused(BadLayer, "names no entry", layer(folder("d")), layer(reg("d/.wh...")))


@hostile
def whiteout_of_dot(box: Sandbox) -> Attack:
    """``d/.wh..`` names ``d`` itself through ``.``."""
    return refused(BadLayer, "names no entry", layer(folder("d")), layer(reg("d/.wh..")))


@hostile
def aufs_metadata_with_dotdot(box: Sandbox) -> Attack:
    """An AUFS bookkeeping entry is ignored, but not before its name is checked."""
    return refused(BadLayer, "'..' component", layer(reg(".wh..wh.plnk/../../escape", b"x")))


# ---- absolute paths


@hostile
def absolute_host_path(box: Sandbox) -> Attack:
    """``/etc/...`` on the host."""
    return refused(BadLayer, "absolute path", layer(reg(HOST_PROBE, b"pwned")),
                   probes=(HOST_PROBE,))


@hostile
def absolute_double_slash(box: Sandbox) -> Attack:
    """``//x``: still absolute."""
    return refused(BadLayer, "absolute path", layer(reg("//x", b"pwned")))


@hostile
def absolute_into_outside(box: Sandbox) -> Attack:
    """The sentinel's own absolute path."""
    return refused(BadLayer, "absolute path", layer(reg(f"{box.outside}/sentinel", b"pwned")))


@hostile
def absolute_directory(box: Sandbox) -> Attack:
    """A directory entry with an absolute path."""
    return refused(BadLayer, "absolute path", layer(folder(f"{box.outside}/made")))


@hostile
def absolute_hardlink_target(box: Sandbox) -> Attack:
    """A hard link to ``/etc/passwd``."""
    return refused(BadLayer, "absolute path", layer(reg("x"), hard("passwd", "/etc/passwd")))


@hostile
def absolute_hardlink_into_outside(box: Sandbox) -> Attack:
    """A hard link to the sentinel by its absolute path."""
    return refused(BadLayer, "absolute path", layer(hard("stolen", f"{box.outside}/sentinel")))


@hostile
def absolute_whiteout(box: Sandbox) -> Attack:
    """A whiteout of the sentinel by its absolute path."""
    return refused(BadLayer, "absolute path", layer(reg(f"{box.outside}/.wh.sentinel")))


@hostile
def absolute_symlink_target_is_kept_unfollowed(box: Sandbox) -> Attack:
    """Symlinks to absolute paths are stored as they are (``/bin -> /usr/bin``)."""
    def check(root: Path, stats: LayerStats) -> None:
        assert os.readlink(root / "abs") == str(box.outside)
        assert os.readlink(root / "etc-passwd") == "/etc/passwd"
    return accepted(check, layer(sym("abs", str(box.outside)), sym("etc-passwd", "/etc/passwd")))


# ---- symlinked ancestors


@hostile
def symlink_ancestor_absolute(box: Sandbox) -> Attack:
    """``d -> /abs/outside``, then ``d/sentinel``."""
    return refused(BadLayer, "symbolic link 'd'",
                   layer(sym("d", str(box.outside)), reg("d/sentinel", b"pwned")))


@hostile
def symlink_ancestor_dotdot(box: Sandbox) -> Attack:
    """``d -> ../outside``, then ``d/planted``."""
    return refused(BadLayer, "symbolic link 'd'",
                   layer(sym("d", "../outside"), reg("d/planted", b"pwned")))


@hostile
def symlink_ancestor_climbs_to_tmp(box: Sandbox) -> Attack:
    """``d -> ../..`` (``<tmp>``), then ``d/secret``."""
    return refused(BadLayer, "symbolic link 'd'",
                   layer(sym("d", "../.."), reg("d/secret", b"pwned")))


@hostile
def symlink_ancestor_climbs_three(box: Sandbox) -> Attack:
    """``d -> ../../..`` (above ``<tmp>``), then ``d/planted``."""
    return refused(BadLayer, "symbolic link 'd'",
                   layer(sym("d", "../../.."), reg("d/planted", b"pwned")),
                   probes=(str(box.top.parent / "planted"),))


@hostile
def symlink_ancestor_deep(box: Sandbox) -> Attack:
    """A symlink in the middle: ``a/b -> outside``, then ``a/b/c/d/planted``."""
    return refused(BadLayer, "symbolic link 'a/b'",
                   layer(folder("a"), sym("a/b", str(box.outside)), reg("a/b/c/d/planted")))


@hostile
def symlink_ancestor_for_a_directory(box: Sandbox) -> Attack:
    """``d -> outside``, then a directory ``d/sub``."""
    return refused(BadLayer, "symbolic link 'd'",
                   layer(sym("d", str(box.outside)), folder("d/sub")))


@hostile
def symlink_ancestor_from_a_lower_layer(box: Sandbox) -> Attack:
    """Layer 1 makes ``etc -> outside``; layer 2 writes ``etc/sentinel``."""
    return refused(BadLayer, "symbolic link 'etc'", layer(sym("etc", str(box.outside))),
                   layer(reg("etc/sentinel", b"pwned")))


@hostile
def symlink_replaces_a_directory_in_the_same_layer(box: Sandbox) -> Attack:
    """``d/`` with content, then ``d -> outside`` in the same layer, then ``d/sentinel``."""
    return refused(BadLayer, "symbolic link 'd'",
                   layer(folder("d"), reg("d/x"), sym("d", str(box.outside)),
                         reg("d/sentinel", b"pwned")))


@hostile
def symlink_replaces_a_directory_in_a_following_layer(box: Sandbox) -> Attack:
    """Layer 1: ``d/x``; layer 2: ``d -> outside``; layer 3: ``d/sentinel``."""
    return refused(BadLayer, "symbolic link 'd'", layer(folder("d"), reg("d/x")),
                   layer(sym("d", str(box.outside))), layer(reg("d/sentinel", b"pwned")))


@hostile
def symlink_replaced_by_a_directory_in_a_following_layer(box: Sandbox) -> Attack:
    """Layer 1: ``d -> outside``; layer 2 makes ``d`` a directory and fills it: lands inside."""
    def check(root: Path, stats: LayerStats) -> None:
        assert not (root / "d").is_symlink() and (root / "d").is_dir()
        assert (root / "d/sentinel").read_bytes() == b"inside"
    return accepted(check, layer(sym("d", str(box.outside))),
                    layer(folder("d"), reg("d/sentinel", b"inside")))


@hostile
def symlink_loop_ancestor(box: Sandbox) -> Attack:
    """``loop -> loop``, then ``loop/x``."""
    return refused(BadLayer, "symbolic link 'loop'", layer(sym("loop", "loop"), reg("loop/x")))


@hostile
def symlink_chain_ancestor(box: Sandbox) -> Attack:
    """``a -> b -> outside``, then ``a/planted``."""
    return refused(BadLayer, "symbolic link 'a'",
                   layer(sym("b", str(box.outside)), sym("a", "b"), reg("a/planted")))


@hostile
def symlink_at_the_final_name_is_replaced(box: Sandbox) -> Attack:
    """Layer 1: ``passwd -> outside/sentinel``; layer 2 writes ``passwd``: the link goes."""
    def check(root: Path, stats: LayerStats) -> None:
        assert not (root / "passwd").is_symlink()
        assert (root / "passwd").read_bytes() == b"new"
    return accepted(check, layer(sym("passwd", f"{box.outside}/sentinel")),
                    layer(reg("passwd", b"new")))


@hostile
def hardlink_through_a_symlinked_ancestor(box: Sandbox) -> Attack:
    """``d -> outside``, then a hard link to ``d/sentinel``."""
    return refused(BadLayer, "symbolic link 'd'",
                   layer(sym("d", str(box.outside)), hard("stolen", "d/sentinel")))


@hostile
def whiteout_through_a_symlink(box: Sandbox) -> Attack:
    """Layer 1: ``d -> outside``; layer 2: ``d/.wh.sentinel``."""
    return refused(BadLayer, "symbolic link 'd'", layer(sym("d", str(box.outside))),
                   layer(reg("d/.wh.sentinel")))


@hostile
def opaque_whiteout_through_a_symlink(box: Sandbox) -> Attack:
    """Layer 1: ``d -> outside``; layer 2: ``d/.wh..wh..opq`` would empty the sentinel dir."""
    return refused(BadLayer, "symbolic link 'd'", layer(sym("d", str(box.outside))),
                   layer(reg("d/.wh..wh..opq")))


@hostile
def whiteout_removes_a_symlink_not_its_target(box: Sandbox) -> Attack:
    """Layer 1: ``out -> outside``; layer 2: ``.wh.out``: the link goes, the target stays."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == [] and stats.whiteouts == 1
    return accepted(check, layer(sym("out", str(box.outside))), layer(reg(".wh.out")))


@hostile
def whiteout_of_a_tree_with_escaping_links(box: Sandbox) -> Attack:
    """Removing ``cache/`` removes its links to outside, never what they point at."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == []
    return accepted(check, layer(folder("cache"), sym("cache/out", str(box.outside)),
                                 sym("cache/file", f"{box.outside}/sentinel"),
                                 sym("cache/up", "../../outside")),
                    layer(reg(".wh.cache")))


@hostile
def opaque_root_over_escaping_links(box: Sandbox) -> Attack:
    """``.wh..wh..opq`` at the root removes lower links to outside without following them."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["new"]
    return accepted(check, layer(sym("out", str(box.outside)), folder("d"),
                                 sym("d/up", "../../outside"), reg("etc/passwd")),
                    layer(reg(".wh..wh..opq"), reg("new")))


# ---- hard links


@hostile
def hardlink_to_a_directory(box: Sandbox) -> Attack:
    """Hard links to directories would make loops and ancestors of anything."""
    return refused(BadLayer, "not a file", layer(folder("d"), hard("h", "d")))


@hostile
def hardlinked_ancestor(box: Sandbox) -> Attack:
    """``h`` a hard link of ``d/``, then ``h/x``."""
    return refused(BadLayer, "not a file", layer(folder("d"), hard("h", "d"), reg("h/x")))


@hostile
def hardlink_of_an_escaping_symlink_as_ancestor(box: Sandbox) -> Attack:
    """``h`` a hard link of ``s -> outside`` (so itself a symlink), then ``h/sentinel``."""
    return refused(BadLayer, "symbolic link 'h'",
                   layer(sym("s", str(box.outside)), hard("h", "s"), reg("h/sentinel", b"pwned")))


@hostile
def hardlink_to_a_missing_file(box: Sandbox) -> Attack:
    """A hard link to nothing (the host's file of that name must not be used)."""
    return refused(BadLayer, "does not exist", layer(hard("h", "sentinel")))


@hostile
def hardlink_to_the_root(box: Sandbox) -> Attack:
    """A hard link to ``.``."""
    return refused(BadLayer, "points at the root", layer(hard("h", ".")))


@hostile
def hardlink_to_a_skipped_device(box: Sandbox) -> Attack:
    """A device node is skipped, so a hard link to it has nothing to point at."""
    return refused(BadLayer, "does not exist",
                   layer(node("dev/null", tarfile.CHRTYPE), hard("null2", "dev/null")))


@hostile
def write_through_an_old_hardlink(box: Sandbox) -> Attack:
    """Layer 1: ``alias`` a hard link of ``shadow``; layer 2 writes ``alias``: ``shadow`` stays."""
    def check(root: Path, stats: LayerStats) -> None:
        assert (root / "shadow").read_bytes() == b"secret"
        assert (root / "alias").read_bytes() == b"replaced"
        assert os.lstat(root / "shadow").st_nlink == 1
    return accepted(check, layer(reg("shadow", b"secret"), hard("alias", "shadow")),
                    layer(reg("alias", b"replaced")))


@hostile
def hardlink_header_with_setuid_mode(box: Sandbox) -> Attack:
    """A hard link entry declaring 04755 must not make its 0755 target setuid."""
    def check(root: Path, stats: LayerStats) -> None:
        assert mode_of(root / "tool") == 0o755
        assert os.lstat(root / "alias").st_ino == os.lstat(root / "tool").st_ino
    return accepted(check, layer(reg("tool", b"#!", mode=0o755)),
                    layer(hard("alias", "tool", mode=0o4755)))


# ---- whiteouts in odd places


@hostile
def bare_whiteout(box: Sandbox) -> Attack:
    """``.wh.`` alone names nothing (it must not mean "the directory")."""
    return refused(BadLayer, "names no entry", layer(reg("keep")), layer(reg(".wh.")))


@hostile
def bare_whiteout_in_a_directory(box: Sandbox) -> Attack:
    """``d/.wh.``."""
    return refused(BadLayer, "names no entry", layer(folder("d"), reg("d/x")),
                   layer(reg("d/.wh.")))


@hostile
def whiteout_as_a_directory_entry(box: Sandbox) -> Attack:
    """A whiteout typed as a directory still only removes, and leaves no ``.wh.`` entry."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["keep"]
    return accepted(check, layer(reg("x"), reg("keep")), layer(folder(".wh.x")))


@hostile
def whiteout_as_an_escaping_symlink(box: Sandbox) -> Attack:
    """``.wh.x`` typed as a symlink to outside: a whiteout, no link is made."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == []
    return accepted(check, layer(reg("x")), layer(sym(".wh.x", str(box.outside))))


@hostile
def whiteout_as_an_escaping_hardlink(box: Sandbox) -> Attack:
    """``.wh.x`` typed as a hard link to ``../outside/sentinel``: a whiteout, no link."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == []
    return accepted(check, layer(reg("x")), layer(hard(".wh.x", "../outside/sentinel")))


@hostile
def opaque_whiteout_under_a_file(box: Sandbox) -> Attack:
    """``f/.wh..wh..opq`` where ``f`` is a file."""
    return refused(BadLayer, "not a directory", layer(reg("f")), layer(reg("f/.wh..wh..opq")))


@hostile
def opaque_whiteout_as_a_directory_with_children(box: Sandbox) -> Attack:
    """``.wh..wh..opq/`` with a child: opaque marker at the root, the child is AUFS metadata."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == []
    return accepted(check, layer(reg("lower")),
                    layer(folder(".wh..wh..opq"), reg(".wh..wh..opq/x", b"hidden")))


@hostile
def opaque_whiteout_in_a_missing_directory(box: Sandbox) -> Attack:
    """``nowhere/deep/.wh..wh..opq``: nothing to hide, nothing created."""
    return accepted(nothing_left, layer(reg("nowhere/deep/.wh..wh..opq")))


# ---- device nodes, FIFOs, odd types


@hostile
def char_device(box: Sandbox) -> Attack:
    """``dev/kmem`` as a character device: skipped and noted."""
    def check(root: Path, stats: LayerStats) -> None:
        assert not os.path.lexists(root / "dev/kmem")
        assert stats.skipped == ["skipped the device node dev/kmem"]
    return accepted(check, layer(node("dev/kmem", tarfile.CHRTYPE)))


@hostile
def block_device(box: Sandbox) -> Attack:
    """``dev/sda`` as a block device: skipped."""
    def check(root: Path, stats: LayerStats) -> None:
        assert not os.path.lexists(root / "dev/sda")
        assert stats.skipped == ["skipped the device node dev/sda"]
    return accepted(check, layer(node("dev/sda", tarfile.BLKTYPE)))


@hostile
def fifo(box: Sandbox) -> Attack:
    """A FIFO: skipped."""
    def check(root: Path, stats: LayerStats) -> None:
        assert not os.path.lexists(root / "run/pipe")
        assert stats.skipped == ["skipped the FIFO run/pipe"]
    return accepted(check, layer(node("run/pipe", tarfile.FIFOTYPE)))


@hostile
def setuid_device_over_a_lower_file(box: Sandbox) -> Attack:
    """A world-writable setuid device where a lower layer has a file: skipped, the file stays."""
    def check(root: Path, stats: LayerStats) -> None:
        assert (root / "etc/passwd").read_bytes() == b"root:x:0:0"
        assert stat.S_ISREG(os.lstat(root / "etc/passwd").st_mode)
    return accepted(check, layer(reg("etc/passwd", b"root:x:0:0")),
                    layer(node("etc/passwd", tarfile.CHRTYPE, mode=0o4777)))


@hostile
def unknown_entry_type(box: Sandbox) -> Attack:
    """An entry of an unknown type with data: skipped, its data never written."""
    info = tarfile.TarInfo("mystery")
    info.type, info.size = b"Z", 5

    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["after"]
        assert stats.skipped == ["skipped the entry of type b'Z' mystery"]
    return accepted(check, layer((info, b"pwned"), reg("after")))


# ---- setuid, setgid, sticky


@hostile
def setuid_file(box: Sandbox) -> Attack:
    """A setuid file: kept as declared (a VM's ``su``), nothing else gains the bit."""
    def check(root: Path, stats: LayerStats) -> None:
        assert mode_of(root / "usr/bin/su") == 0o4755
        assert mode_of(root / "usr/bin") == 0o755
    return accepted(check, layer(reg("usr/bin/su", b"\x7fELF", mode=0o4755)),
                    setid=frozenset({"usr/bin/su"}))


@hostile
def setgid_file(box: Sandbox) -> Attack:
    """A setgid file: kept as declared."""
    def check(root: Path, stats: LayerStats) -> None:
        assert mode_of(root / "usr/bin/wall") == 0o2755
    return accepted(check, layer(reg("usr/bin/wall", b"\x7fELF", mode=0o2755)),
                    setid=frozenset({"usr/bin/wall"}))


@hostile
def all_special_bits_world_writable(box: Sandbox) -> Attack:
    """Mode 07777 on a regular file: exactly 07777, and still a regular file."""
    def check(root: Path, stats: LayerStats) -> None:
        st = os.lstat(root / "x")
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o7777
    return accepted(check, layer(reg("x", mode=0o7777)), setid=frozenset({"x"}))


@hostile
def sticky_and_setgid_directories(box: Sandbox) -> Attack:
    """``tmp`` 01777 and a setgid ``shared`` directory: kept; its new child gains nothing."""
    def check(root: Path, stats: LayerStats) -> None:
        assert mode_of(root / "tmp") == 0o1777
        assert mode_of(root / "shared") == 0o2775
        assert mode_of(root / "shared/file") == 0o644
        assert mode_of(root / "shared/sub") == 0o755  # made as a missing parent
    return accepted(check, layer(folder("tmp", mode=0o1777), folder("shared", mode=0o2775),
                                 reg("shared/file"), reg("shared/sub/file")),
                    setid=frozenset({"shared"}))


@hostile
def setuid_symlink(box: Sandbox) -> Attack:
    """A symlink declaring 04777 to the sentinel: a plain link, the sentinel's mode untouched."""
    def check(root: Path, stats: LayerStats) -> None:
        assert os.readlink(root / "s") == f"{box.outside}/sentinel"
    link = sym("s", f"{box.outside}/sentinel")
    link[0].mode = 0o4777
    return accepted(check, layer(link))


@hostile
def setuid_directory_entry_over_an_escaping_symlink(box: Sandbox) -> Attack:
    """Layer 1: ``d -> outside``; layer 2: directory ``d`` 06777: replaces the link, no chmod
    through it."""
    def check(root: Path, stats: LayerStats) -> None:
        assert not (root / "d").is_symlink() and mode_of(root / "d") == 0o6777
    return accepted(check, layer(sym("d", str(box.outside))), layer(folder("d", mode=0o6777)),
                    setid=frozenset({"d"}))


# ---- sizes: bombs and budgets


@hostile
def gzip_bomb_in_a_file(box: Sandbox) -> Attack:
    """A small layer whose one file expands to eight times the budget."""
    return refused(TooLarge, "limit", layer(reg("bomb", b"\0" * BOMB)))


@hostile
def gzip_bomb_after_the_end_of_the_tar(box: Sandbox) -> Attack:
    """A valid tar, then zeros past its end marker: still counted."""
    return refused(TooLarge, "limit", gz(tar(reg("ok")) + b"\0" * BOMB))


@hostile
def gzip_bomb_in_concatenated_members(box: Sandbox) -> Attack:
    """A tar in one gzip member, then many members of zeros."""
    return refused(TooLarge, "limit", gz(tar(reg("ok"))) + gz(b"\0" * (BOMB // 8)) * 8)


@hostile
def gzip_bomb_that_is_no_tar(box: Sandbox) -> Attack:
    """Nothing but zeros (an empty tar, as far as tar can tell)."""
    return refused(TooLarge, "limit", gz(b"\0" * BOMB))


@hostile
def file_larger_than_the_budget(box: Sandbox) -> Attack:
    """One incompressible file larger than the whole image's budget."""
    return refused(TooLarge, "limit", layer(reg("big", os.urandom(256 * KiB))),
                   budget=Budget(128 * KiB, BUDGET_ENTRIES))


@hostile
def budget_shared_by_two_layers(box: Sandbox) -> Attack:
    """Each layer fits; together they do not."""
    return refused(TooLarge, "limit", layer(reg("a", b"a" * 600 * KiB)),
                   layer(reg("b", b"b" * 600 * KiB)), budget=Budget(MiB, BUDGET_ENTRIES))


@hostile
def sparse_bomb_pax_0_1(box: Sandbox) -> Attack:
    """A GNU sparse (pax 0.1) file of 512 data bytes claiming to be 1 TiB."""
    big = reg("sparse", b"x" * 512, pax={"GNU.sparse.map": "0,512",
                                         "GNU.sparse.size": str(2 ** 40)})
    return refused(TooLarge, "limit", layer(big))


@hostile
def sparse_bomb_pax_1_0(box: Sandbox) -> Attack:
    """A GNU sparse (pax 1.0) file claiming 1 TiB."""
    data = b"1\n0\n512\n".ljust(512, b"\0") + b"y" * 512
    big = reg("sparse", data, pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                   "GNU.sparse.realsize": str(2 ** 40),
                                   "GNU.sparse.name": "sparse"})
    return refused(TooLarge, "limit", layer(big))


@hostile
def pax_size_lies(box: Sandbox) -> Attack:
    """A pax ``size`` of 1 TB for one byte of data."""
    return refused(BadLayer, "not a valid tar", layer(reg("liar", b"x",
                                                          pax={"size": str(10 ** 12)})))


@hostile
def huge_pax_header(box: Sandbox) -> Attack:
    """A 512 MiB pax header: refused before tarfile reads it into memory."""
    return refused(BadLayer, "metadata header", gz(metadata_header(tarfile.XHDTYPE, 512 * MiB)))


@hostile
def huge_gnu_longname(box: Sandbox) -> Attack:
    """A 64 MiB GNU long name."""
    return refused(BadLayer, "metadata header",
                   gz(metadata_header(tarfile.GNUTYPE_LONGNAME, 64 * MiB)))


@hostile
def very_many_entries(box: Sandbox) -> Attack:
    """More entries than the image may have."""
    return refused(TooLarge, "files", layer(*(reg(f"f{i}", b"") for i in range(BUDGET_ENTRIES + 1))))


@hostile
def very_many_whiteouts(box: Sandbox) -> Attack:
    """Whiteouts count as entries too."""
    return refused(TooLarge, "files",
                   layer(*(reg(f".wh.f{i}", b"") for i in range(BUDGET_ENTRIES + 1))))


@hostile
def very_many_implicit_directories(box: Sandbox) -> Attack:
    """Eight entries 256 components deep would make 2040 directories: they count as files."""
    return refused(TooLarge, "files",
                   layer(*(reg(deep(f"d{i}", 255) + "/f", b"") for i in range(8))))


@hostile
def too_many_components(box: Sandbox) -> Attack:
    """A name of 300 components."""
    return refused(BadLayer, "components", layer(reg(deep("d", 300))))


# ---- names: long, GNU and pax headers, NUL, newline, non-UTF-8


@hostile
def long_component(box: Sandbox) -> Attack:
    """One component of 300 bytes: the file system refuses it."""
    return refused(BadLayer, "File name too long", layer(reg("a" * 300)))


@hostile
def long_path_beyond_path_max(box: Sandbox) -> Attack:
    """A 40 KB path (200 components of 200 bytes): unpacked by directory descriptors, inside."""
    name = deep("p" * 200, 200)

    def check(root: Path, stats: LayerStats) -> None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in name.split("/")[:-1]:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
            assert stat.S_ISREG(os.stat(name.split("/")[-1], dir_fd=fd).st_mode)
        finally:
            os.close(fd)
    return accepted(check, layer(reg(name, b"deep")))


@hostile
def gnu_longname_traversal(box: Sandbox) -> Attack:
    """A GNU long name hiding ``..`` past the 100-byte ustar field."""
    name = "a/" * 60 + "../" * 70 + "outside/sentinel"
    return refused(BadLayer, "'..' component",
                   layer(reg(name, b"pwned"), fmt=tarfile.GNU_FORMAT))


@hostile
def gnu_longlink_hardlink_traversal(box: Sandbox) -> Attack:
    """A GNU long link target climbing out for a hard link."""
    target = "a/" * 60 + "../" * 61 + "outside/sentinel"
    return refused(BadLayer, "'..' component",
                   layer(folder("a"), hard("stolen", target), fmt=tarfile.GNU_FORMAT))


@hostile
def gnu_longlink_symlink_is_kept_unfollowed(box: Sandbox) -> Attack:
    """A 200-byte ``../../…`` symlink target via GNU long link: stored, never followed."""
    target = "../" * 66 + "etc"

    def check(root: Path, stats: LayerStats) -> None:
        assert os.readlink(root / "s") == target
    return accepted(check, layer(sym("s", target), fmt=tarfile.GNU_FORMAT))


@hostile
def pax_path_traversal(box: Sandbox) -> Attack:
    """An innocent ustar name overridden by pax ``path=../outside/sentinel``."""
    return refused(BadLayer, "'..' component",
                   layer(reg("innocent", b"pwned", pax={"path": "../outside/sentinel"})))


@hostile
def pax_path_absolute(box: Sandbox) -> Attack:
    """pax ``path`` set to the sentinel's absolute path."""
    return refused(BadLayer, "absolute path",
                   layer(reg("innocent", b"pwned", pax={"path": f"{box.outside}/sentinel"})))


@hostile
def pax_linkpath_traversal(box: Sandbox) -> Attack:
    """A hard link whose pax ``linkpath`` climbs out."""
    return refused(BadLayer, "'..' component",
                   layer(reg("innocent"),
                         hard("h", "innocent", pax={"linkpath": "../outside/sentinel"})))


@hostile
def pax_global_header_path(box: Sandbox) -> Attack:
    """A global pax header whose ``path`` applies to every following entry."""
    return refused(BadLayer, "'..' component",
                   layer(reg("ok", b"pwned"), global_pax={"path": "../outside/sentinel"}))


@hostile
def pax_path_with_nul(box: Sandbox) -> Attack:
    """pax ``path`` with a NUL in it (C would see only ``a``)."""
    return refused(BadLayer, "NUL", layer(reg("a", pax={"path": "a\x00/../../escape"})))


@hostile
def ustar_name_with_nul(box: Sandbox) -> Attack:
    """A ustar name ``evil\\0../../x``: the field ends at the NUL, so the file is ``evil``."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["evil"]
    return accepted(check, layer(reg("evil\x00../../x", b"x"), fmt=tarfile.USTAR_FORMAT))


@hostile
def symlink_target_with_nul(box: Sandbox) -> Attack:
    """pax ``linkpath`` with a NUL in it."""
    return refused(BadLayer, "null", layer(sym("s", "x", pax={"linkpath": "ok\x00/etc/passwd"})))


@hostile
def newline_in_names(box: Sandbox) -> Attack:
    """Names with newlines, even ``..\\n``: ordinary (odd) names inside the root."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["..\n", "..\n/x", "line\nbreak"]
    return accepted(check, layer(reg("line\nbreak"), reg("..\n/x")))


@hostile
def newline_hiding_dotdot(box: Sandbox) -> Attack:
    """pax ``path=x\\n../../outside/sentinel``: ``..`` is still a component."""
    return refused(BadLayer, "'..' component",
                   layer(reg("x", pax={"path": "x\n../../outside/sentinel"})))


@hostile
def non_utf8_name(box: Sandbox) -> Attack:
    """A Latin-1 name: kept byte for byte, inside the root."""
    def check(root: Path, stats: LayerStats) -> None:
        assert os.listdir(os.fsencode(root)) == [b"caf\xe9"]
    return accepted(check, layer(reg("caf\xe9"), fmt=tarfile.GNU_FORMAT, encoding="latin-1"))


@hostile
def non_utf8_name_hiding_dotdot(box: Sandbox) -> Attack:
    """A Latin-1 name ``\\xff/../../escape``."""
    return refused(BadLayer, "'..' component",
                   layer(reg("\xff/../../escape"), fmt=tarfile.GNU_FORMAT, encoding="latin-1"))


@hostile
def backslash_traversal(box: Sandbox) -> Attack:
    """``..\\..\\escape`` is one odd file name on Linux, inside the root."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["..\\..\\escape"]
    return accepted(check, layer(reg("..\\..\\escape")))


@hostile
def root_entry_as_a_file(box: Sandbox) -> Attack:
    """An entry ``./`` that is a regular file."""
    return refused(BadLayer, "root", layer(reg("./", b"pwned")))


@hostile
def root_entry_as_an_escaping_symlink(box: Sandbox) -> Attack:
    """``. -> outside``, then ``sentinel``: the root cannot become a link."""
    return refused(BadLayer, "root", layer(sym(".", str(box.outside)), reg("sentinel", b"pwned")))


@hostile
def root_entry_mode_is_not_taken(box: Sandbox) -> Attack:
    """``./`` with mode 07777: the root's own attributes stay ours."""
    def check(root: Path, stats: LayerStats) -> None:
        assert mode_of(root) == 0o755
    return accepted(check, layer(folder("./", mode=0o7777)))


@hostile
def owner_id_out_of_range(box: Sandbox) -> Attack:
    """pax ``uid=4294967295`` (-1 to chown: "leave unchanged")."""
    entry = reg("x", pax={"uid": str(2 ** 32 - 1)})
    if AS_ROOT:
        return refused(BadLayer, "owner ID", layer(entry))
    return accepted(lambda root, stats: None, layer(entry))  # owners are not applied


@hostile
def foreign_extended_attributes(box: Sandbox) -> Attack:
    """overlay, SELinux and user xattrs: dropped, and noted."""
    def check(root: Path, stats: LayerStats) -> None:
        assert os.listxattr(root / "x", follow_symlinks=False) == []
        assert len(stats.skipped) == 3
    return accepted(check, layer(reg("x", pax={
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.security.selinux": "system_u:object_r:shadow_t:s0",
        "SCHILY.xattr.user.evil": "1"})))


# ---- duplicates and replacements


@hostile
def duplicate_entries(box: Sandbox) -> Attack:
    """The same file twice: the second wins, once."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["x"] and (root / "x").read_bytes() == b"two"
    return accepted(check, layer(reg("x", b"one"), reg("x", b"two")))


@hostile
def file_replaced_by_a_directory(box: Sandbox) -> Attack:
    """``x`` a file, then a directory with a child."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["x", "x/y"] and (root / "x").is_dir()
    return accepted(check, layer(reg("x")), layer(folder("x"), reg("x/y")))


@hostile
def directory_replaced_by_a_file(box: Sandbox) -> Attack:
    """``d/`` with escaping links inside, then a file ``d``: the tree goes, links unfollowed."""
    def check(root: Path, stats: LayerStats) -> None:
        assert names(root) == ["d"] and (root / "d").read_bytes() == b"now a file"
    return accepted(check, layer(folder("d"), sym("d/out", str(box.outside)),
                                 sym("d/up", "../../outside/sentinel")),
                    layer(reg("d", b"now a file")))


# -- running a case ------------------------------------------------------------------------------

Snapshot = dict[str, tuple[object, ...]]


def make_sandbox(top: Path) -> Sandbox:
    """``<tmp>/sandbox/{root,outside}`` and more files around them."""
    sandbox = top / "sandbox"
    root, outside = sandbox / "root", sandbox / "outside"
    (outside / "sub").mkdir(parents=True)
    root.mkdir()
    root.chmod(0o755)
    (outside / "sentinel").write_text("untouched")
    (outside / "sentinel").chmod(0o640)
    (outside / "sub/deeper").write_text("deeper")
    (outside / "tool").write_bytes(b"#!")
    (outside / "tool").chmod(0o755)
    (top / "secret").write_text("top secret")
    (top / "alias-of-sentinel").hardlink_to(outside / "sentinel")
    (sandbox / "outside-link").symlink_to("outside")
    (sandbox / "root.bak").write_text("a sibling with the root's name as prefix")
    return Sandbox(top, root, outside)


def snapshot(top: Path, skip: Path) -> Snapshot:
    """Every path under ``top`` except ``skip`` and what lies under it."""
    found: Snapshot = {".": facts_of(top)}
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != skip]
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            found[str(path.relative_to(top))] = facts_of(path)
    return found


def facts_of(path: Path) -> tuple[object, ...]:
    """Type, mode, owner, links, inode, mtime; size and content hash; link target."""
    st = os.lstat(path)
    facts: tuple[object, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                 st.st_gid, st.st_nlink, st.st_ino, st.st_mtime_ns)
    if stat.S_ISREG(st.st_mode):
        facts += (st.st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    elif stat.S_ISLNK(st.st_mode):
        facts += (os.readlink(path),)
    return facts


def unsafe_entries(root: Path, declared: frozenset[str]) -> list[str]:
    """Device nodes, FIFOs and sockets under ``root``, and setuid/setgid bits not declared.

    Walks by directory descriptors, so paths longer than PATH_MAX are seen too."""
    problems: list[str] = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root):
        for name in [*dirnames, *filenames]:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            mode = os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or \
                    stat.S_ISSOCK(mode):
                problems.append(f"{rel!r} is a special file ({stat.filemode(mode)})")
            if mode & (stat.S_ISUID | stat.S_ISGID) and rel not in declared:
                problems.append(f"{rel!r} gained setuid/setgid ({stat.filemode(mode)})")
    return problems


def test_the_corpus_is_large_enough() -> None:
    """Issue 17 asks for at least 60 hostile layers."""
    assert len(CORPUS) >= 60


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_layer(tmp_path: Path, name: str) -> None:
    """Apply the case's layers into the root; nothing outside it changes; the outcome is stated."""
    box = make_sandbox(tmp_path)
    attack = CORPUS[name](box)
    assert (attack.refused is None) != (attack.check is None), "state one outcome"
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    paths = []
    for number, data in enumerate(attack.layers):
        paths.append(blobs / f"layer-{number}.tar.gz")
        paths[-1].write_bytes(data)
    before = snapshot(tmp_path, box.root)

    *lower, last = paths
    for blob in lower:
        apply_layer(blob, box.root, budget=attack.budget)
    if attack.refused is not None:
        with pytest.raises(attack.refused, match=attack.match):
            apply_layer(last, box.root, budget=attack.budget)
    else:
        assert attack.check is not None
        attack.check(box.root, apply_layer(last, box.root, budget=attack.budget))

    assert snapshot(tmp_path, box.root) == before
    for probe in attack.probes:
        assert not os.path.lexists(probe), f"{probe} was created"
    assert unsafe_entries(box.root, attack.setid) == []


def test_the_cache_unpacks_where_no_other_user_can_reach(tmp_path: Path) -> None:
    """Kept setuid bits are harmless on the host: the cache unpacks under a 0700 directory."""
    ImageCache(tmp_path / "cache", RegistryPolicy())
    assert mode_of(tmp_path / "cache/tmp") == 0o700
