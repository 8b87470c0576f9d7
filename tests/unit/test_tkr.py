"""Kubernetes releases: the kinds, the names, VERSION, and the offline directory scanner.

The .deb files, tarballs and "binaries" made here are small stand-ins written
into temporary directories: they are just data for the scanner (shell
scripts named kubeadm, packages built with dpkg-deb), not Kubernetes. The
scanner reads them exactly as it reads real release files: checksums first,
then the .deb control fields or the archive's members.
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.kinds import default_registry
from appliance.kinds.tanzu import OSIMAGE, TANZUKUBERNETESRELEASE, release_names
from appliance.vmservice import tkr
from hypervisor import nodeimage
from hypervisor.images import cache_key
from hypervisor.nodeimage import (BinariesMissing, KubeVersion, NodeImageError, dearmor,
                                  find_source, missing_message, node_recipe, parse_packages,
                                  parse_version, pick_packages, scan_offline_dir)

V = KubeVersion(31, 4)


# -- the kinds ------------------------------------------------------------------------------------


def test_tkr_kind_is_cluster_scoped_with_vspheres_columns() -> None:
    kind = default_registry().by_group_plural("run.tanzu.vmware.com", "tanzukubernetesreleases")
    assert kind is TANZUKUBERNETESRELEASE
    assert not kind.namespaced
    assert kind.short_names == ("tkr",)
    assert [v.name for v in kind.versions] == ["v1alpha3"]
    assert kind.storage_version.name == "v1alpha3"
    columns = kind.storage_version.printer_columns
    assert [(c.name, c.type, c.json_path) for c in columns] == [
        ("Version", "string", ".spec.version"),
        ("Ready", "string", ".status.conditions[?(@.type=='Ready')].status"),
        ("Compatible", "string", ".status.conditions[?(@.type=='Compatible')].status"),
        ("Created", "date", ".metadata.creationTimestamp")]
    spec = kind.storage_version.schema["properties"]["spec"]
    assert set(spec["properties"]) == {"version", "kubernetes", "osImages", "bootstrapPackages"}
    assert {"version", "imageRepository", "etcd", "pause", "coredns", "kube-vip"} == set(
        spec["properties"]["kubernetes"]["properties"])


def test_osimage_kind() -> None:
    kind = default_registry().by_group_plural("run.tanzu.vmware.com", "osimages")
    assert kind is OSIMAGE
    assert not kind.namespaced and kind.short_names == ("osimg",)
    assert [c.name for c in kind.storage_version.printer_columns] == [
        "K8S Version", "OS Name", "OS Version", "Arch", "Type", "Compatible", "Created"]


def test_table_cells_for_a_release() -> None:
    from appliance.api.table import jsonpath

    obj = {"spec": {"version": "v1.31.4+pacific.1"}, "status": {"conditions": [
        {"type": "Ready", "status": "False"}, {"type": "Compatible", "status": "True"}]}}
    cols = TANZUKUBERNETESRELEASE.storage_version.printer_columns
    assert [jsonpath(obj, c.json_path) for c in cols[:3]] == [
        ["v1.31.4+pacific.1"], ["False"], ["True"]]


# -- names and VERSION ----------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["v1.31.4", "1.31.4"])
def test_release_names(given: str) -> None:
    names = release_names(given)
    assert names.release == "v1.31.4---pacific.1"
    assert names.version == "v1.31.4+pacific.1"
    assert names.kubernetes == "v1.31.4"
    assert names.node_image == "ob-v1-31-4-pacific-1"
    assert names.os_image == "v1.31.4---pacific.1-debian-12-amd64"
    assert names.display_name == "ob-v1.31.4-pacific.1-debian-12-amd64"


def test_release_labels_allow_selecting_by_version_prefix() -> None:
    labels = tkr.release_labels(release_names("v1.31.4"))
    assert {"v1", "v1.31", "v1.31.4", "v1.31.4---pacific.1"} <= set(labels)
    assert labels["os-name"] == "debian" and labels["os-arch"] == "amd64"


@pytest.mark.parametrize("text, tag", [("v1.31.4", "v1.31.4"), ("1.28.0", "v1.28.0"),
                                       (" v1.33.12 ", "v1.33.12")])
def test_parse_version(text: str, tag: str) -> None:
    assert parse_version(text).tag == tag


@pytest.mark.parametrize("text", ["nonsense", "v2.0.1", "v1.31", "v1.31.4.1", "v1.31.x", "",
                                  "v1.31.4-rc.1", "1.31.4; rm -rf /", "v1.31.4\nx"])
def test_bad_versions_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(tkr.ReleaseError) as err:
        tkr.parse(text)
    assert "\n" not in str(err.value)
    assert str(err.value) == (f"invalid Kubernetes version {text!r}: expected v1.MINOR.PATCH, "
                              "for example v1.31.4")


# -- stand-in release files -------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def with_checksum(path: Path) -> Path:
    """A ``.sha256`` next to ``path``, in dl.k8s.io's format (the digest alone)."""
    Path(f"{path}.sha256").write_text(sha256(path.read_bytes()) + "\n")
    return path


def make_deb(directory: Path, package: str, version: str, depends: str = "",
             file_version: str | None = None) -> Path:
    """A tiny .deb (one shell script in /usr/bin), built by dpkg-deb."""
    tree = directory.parent / f".tree-{package}-{version}-{directory.name}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr" / "bin").mkdir(parents=True)
    script = tree / "usr" / "bin" / package
    script.write_text(f"#!/bin/sh\necho {package} {version}\n")
    script.chmod(0o755)
    control = (f"Package: {package}\nVersion: {version}\nArchitecture: amd64\n"
               "Maintainer: Test <test@example.com>\nDescription: a stand-in for tests\n")
    if depends:
        control += f"Depends: {depends}\n"
    (tree / "DEBIAN" / "control").write_text(control)
    out = directory / f"{package}_{file_version or version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(out)], check=True,
                   capture_output=True)
    return out


def make_debs(directory: Path, version: str = "1.31.4-1.1", kubeadm_depends: str = "") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [make_deb(directory, "kubectl", version),
            make_deb(directory, "kubelet", version, "iptables, conntrack"),
            make_deb(directory, "kubeadm", version,
                     kubeadm_depends or "kubelet (>= 1.19.0), kubectl (>= 1.19.0)")]


def make_tarball(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return path


def node_tarball(path: Path, where: str = "node", tag: bytes = b"v1.31.4") -> Path:
    return make_tarball(path, {f"kubernetes/{where}/bin/{b}": b"#!/bin/sh\necho " + b.encode()
                               + b" " + tag + b"\n"
                               for b in ("kubeadm", "kubelet", "kubectl", "kube-proxy")})


def bare_binaries(directory: Path, content: bytes = b"") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("kubeadm", "kubelet", "kubectl"):
        path = directory / name
        path.write_bytes(b"#!/bin/sh\necho " + name.encode() + b" " + content + b"\n")
        path.chmod(0o755)
        out.append(with_checksum(path))
    return out


# -- the scanner: what it accepts ---------------------------------------------------------------


def test_debs_with_sha256_files(tmp_path: Path) -> None:
    for deb in make_debs(tmp_path / "dir"):
        with_checksum(deb)
    source = scan_offline_dir(tmp_path / "dir", V)
    assert source.kind == "debs"
    assert [a.package for a in source.debs] == ["kubeadm", "kubelet", "kubectl"]
    assert {a.version for a in source.debs} == {"1.31.4-1.1"}
    assert all(a.sha256 == sha256(a.path.read_bytes()) for a in source.debs)


def test_debs_with_a_sha256sums_file(tmp_path: Path) -> None:
    debs = make_debs(tmp_path / "dir")
    (tmp_path / "dir" / "SHA256SUMS").write_text("".join(
        f"{sha256(d.read_bytes())}  {d.name}\n" for d in debs))
    assert scan_offline_dir(tmp_path / "dir", V).kind == "debs"


def test_debs_that_need_cri_tools_bring_it(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    for deb in make_debs(d, kubeadm_depends="kubelet, kubectl, cri-tools (>= 1.30.0)"):
        with_checksum(deb)
    with pytest.raises(NodeImageError, match=r"kubeadm_1\.31\.4-1\.1_amd64\.deb depends on "
                                             r"cri-tools, and .* has no cri-tools_\*\.deb"):
        scan_offline_dir(d, V)
    with_checksum(make_deb(d, "cri-tools", "1.31.1-1.1"))
    source = scan_offline_dir(d, V)
    assert [a.package for a in source.debs] == ["kubeadm", "kubelet", "kubectl", "cri-tools"]


def test_node_tarball_with_version_directory_and_sha256sums(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    tarball = node_tarball(d / "v1.31.4" / "kubernetes-node-linux-amd64.tar.gz")
    (d / "SHA256SUMS").write_text(
        f"{sha256(tarball.read_bytes())} *v1.31.4/kubernetes-node-linux-amd64.tar.gz\n")
    source = scan_offline_dir(d, V)
    assert source.kind == "binaries"
    assert {n: m for n, (_, m) in source.binaries.items()} == {
        "kubeadm": "kubernetes/node/bin/kubeadm", "kubelet": "kubernetes/node/bin/kubelet",
        "kubectl": "kubernetes/node/bin/kubectl"}


def test_server_tarball_with_the_version_in_its_name(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    with_checksum(node_tarball(d / "kubernetes-server-v1.31.4-linux-amd64.tar.gz", "server"))
    source = scan_offline_dir(d, V)
    assert source.binaries["kubelet"][1] == "kubernetes/server/bin/kubelet"


def test_bare_binaries_in_dl_k8s_io_layout(tmp_path: Path) -> None:
    bare_binaries(tmp_path / "mirror" / "v1.31.4" / "bin" / "linux" / "amd64")
    source = scan_offline_dir(tmp_path / "mirror", V)
    assert source.kind == "binaries"
    assert sorted(source.binaries) == ["kubeadm", "kubectl", "kubelet"]
    # --from may also name the innermost directory: its path still says the version.
    assert scan_offline_dir(tmp_path / "mirror/v1.31.4/bin/linux/amd64", V).kind == "binaries"


def test_bare_binaries_named_with_their_version(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    for name in ("kubeadm", "kubelet", "kubectl"):
        path = d / f"{name}-v1.31.4"
        path.write_bytes(b"x" + name.encode())
        with_checksum(path)
    assert sorted(scan_offline_dir(d, V).binaries) == ["kubeadm", "kubectl", "kubelet"]


def test_unrelated_files_are_ignored(tmp_path: Path) -> None:
    bare_binaries(tmp_path / "v1.31.4")
    (tmp_path / "v1.31.4" / "README").write_text("not a release file, no checksum needed")
    assert scan_offline_dir(tmp_path / "v1.31.4", V).kind == "binaries"


# -- the scanner: what it refuses ---------------------------------------------------------------


def test_a_file_without_a_checksum_is_refused(tmp_path: Path) -> None:
    debs = make_debs(tmp_path / "dir")
    for deb in debs[:2]:
        with_checksum(deb)
    with pytest.raises(NodeImageError) as err:
        scan_offline_dir(tmp_path / "dir", V)
    assert str(err.value).startswith("kubeadm_1.31.4-1.1_amd64.deb has no checksum")
    assert "\n" not in str(err.value)


def test_a_wrong_checksum_is_refused(tmp_path: Path) -> None:
    bins = bare_binaries(tmp_path / "v1.31.4")
    bins[1].write_bytes(b"#!/bin/sh\necho tampered\n")
    with pytest.raises(NodeImageError, match=r"^kubelet: checksum mismatch \(expected sha256 "):
        scan_offline_dir(tmp_path / "v1.31.4", V)


def test_a_wrong_line_in_sha256sums_is_refused(tmp_path: Path) -> None:
    debs = make_debs(tmp_path / "dir")
    sums = {d.name: sha256(d.read_bytes()) for d in debs}
    sums[debs[0].name] = "0" * 64
    (tmp_path / "dir" / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    with pytest.raises(NodeImageError, match=r"^kubectl_1\.31\.4-1\.1_amd64\.deb: checksum "
                                             "mismatch"):
        scan_offline_dir(tmp_path / "dir", V)


def test_a_deb_of_another_version_is_refused(tmp_path: Path) -> None:
    for deb in make_debs(tmp_path / "dir", version="1.30.2-1.1"):
        with_checksum(deb)
    with pytest.raises(NodeImageError, match=r"kubeadm_1\.30\.2-1\.1_amd64\.deb is Kubernetes "
                                             r"1\.30\.2, not 1\.31\.4"):
        scan_offline_dir(tmp_path / "dir", V)


def test_a_deb_whose_name_lies_about_its_version_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    with_checksum(make_deb(d, "kubeadm", "1.30.2-1.1", file_version="1.31.4-1.1"))
    with pytest.raises(NodeImageError, match="contains version 1.30.2-1.1, not what its name "):
        scan_offline_dir(d, V)


def test_binaries_of_another_version_are_refused(tmp_path: Path) -> None:
    bare_binaries(tmp_path / "v1.30.2")
    with pytest.raises(NodeImageError, match=r"kubeadm is Kubernetes 1\.30\.2, not 1\.31\.4"):
        scan_offline_dir(tmp_path / "v1.30.2", V)


def test_binaries_without_a_version_are_refused(tmp_path: Path) -> None:
    bare_binaries(tmp_path / "plain")
    with pytest.raises(NodeImageError, match=r"cannot tell which Kubernetes version kubeadm is"):
        scan_offline_dir(tmp_path / "plain", V)


def test_an_incomplete_set_is_refused(tmp_path: Path) -> None:
    bins = bare_binaries(tmp_path / "v1.31.4")
    bins[0].unlink()
    with pytest.raises(NodeImageError, match=r"no complete set of Kubernetes v1\.31\.4 binaries: "
                                             r"missing kubeadm \(found kubectl, kubelet\)"):
        scan_offline_dir(tmp_path / "v1.31.4", V)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NodeImageError, match="missing kubeadm, kubelet, kubectl"):
        scan_offline_dir(tmp_path, V)
    with pytest.raises(NodeImageError, match="not a directory"):
        scan_offline_dir(tmp_path / "nope", V)


def test_a_symlinked_release_file_is_refused(tmp_path: Path) -> None:
    bins = bare_binaries(tmp_path / "elsewhere")
    d = tmp_path / "v1.31.4"
    d.mkdir()
    for b in bins:
        (d / b.name).symlink_to(b)
        (d / f"{b.name}.sha256").write_text(Path(f"{b}.sha256").read_text())
    with pytest.raises(NodeImageError, match="is a symbolic link"):
        scan_offline_dir(d, V)


def _hostile(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for b in ("kubeadm", "kubelet", "kubectl"):
            info = tarfile.TarInfo(f"kubernetes/node/bin/{b}")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
        tar.addfile(member, io.BytesIO(data) if data else None)
    return with_checksum(path)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", size: int = 0
            ) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = size
    return info


@pytest.mark.parametrize("member, why", [
    (_member("../evil", size=4), "'..' component"),
    (_member("kubernetes/../../evil", size=4), "'..' component"),
    (_member("/etc/cron.d/evil", size=4), "an absolute path"),
    (_member("kubernetes/node/bin/sh", tarfile.SYMTYPE, "../../../../bin/sh"),
     "a link out of the archive"),
    (_member("kubernetes/passwd", tarfile.SYMTYPE, "/etc/passwd"), "a link to the absolute path"),
    (_member("kubernetes/hard", tarfile.LNKTYPE, "../etc/shadow"), "a link out of the archive"),
    (_member("kubernetes/sda", tarfile.BLKTYPE), "a device node"),
    (_member("kubernetes/null", tarfile.CHRTYPE), "a device node"),
    (_member("kubernetes/fifo", tarfile.FIFOTYPE), "FIFO"),
])
def test_hostile_tarballs_are_refused(tmp_path: Path, member: tarfile.TarInfo, why: str) -> None:
    _hostile(tmp_path / "v1.31.4" / "kubernetes-node-linux-amd64.tar.gz", member,
             b"evil" if member.size else b"")
    with pytest.raises(NodeImageError) as err:
        scan_offline_dir(tmp_path / "v1.31.4", V)
    assert str(err.value).startswith("refusing kubernetes-node-linux-amd64.tar.gz: ")
    assert why in str(err.value)


def test_links_inside_the_archive_are_fine(tmp_path: Path) -> None:
    _hostile(tmp_path / "v1.31.4" / "kubernetes-node-linux-amd64.tar.gz",
             _member("kubernetes/node/bin/kubeadm-link", tarfile.SYMTYPE, "kubeadm"))
    assert scan_offline_dir(tmp_path / "v1.31.4", V).kind == "binaries"


def test_a_damaged_tarball_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v1.31.4" / "kubernetes-node-linux-amd64.tar.gz"
    path.parent.mkdir()
    path.write_bytes(b"\x1f\x8b not really gzip")
    with_checksum(path)
    with pytest.raises(NodeImageError, match="not a readable .tar.gz"):
        scan_offline_dir(tmp_path / "v1.31.4", V)


# -- staging: only the wanted binaries, checksummed again ---------------------------------------


def test_staging_extracts_only_the_binaries(tmp_path: Path) -> None:
    d = tmp_path / "v1.31.4"
    with_checksum(node_tarball(d / "kubernetes-node-linux-amd64.tar.gz"))
    source = scan_offline_dir(d, V)
    staging = tmp_path / "staging"
    staging.mkdir()
    prepared = nodeimage._stage(source, staging)
    bins = sorted(p.name for p in (staging / "root/usr/bin").iterdir())
    assert bins == ["kubeadm", "kubectl", "kubelet"]  # not kube-proxy
    assert (staging / "root/usr/bin/kubelet").read_bytes() == b"#!/bin/sh\necho kubelet v1.31.4\n"
    assert (staging / "root/usr/bin/kubelet").stat().st_mode & 0o777 == 0o755
    assert (staging / "root/etc/systemd/system/kubelet.service.d/10-kubeadm.conf").is_file()
    assert prepared.hooks[0].startswith("sync-in ")
    assert prepared.hooks[1] == 'chroot "$1" systemctl enable kubelet.service'


def test_a_file_changed_after_the_scan_is_refused_while_staging(tmp_path: Path) -> None:
    bins = bare_binaries(tmp_path / "v1.31.4")
    source = scan_offline_dir(tmp_path / "v1.31.4", V)
    bins[2].write_bytes(b"swapped after the checksum was checked")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(NodeImageError, match="kubectl changed after it was checksummed"):
        nodeimage._stage(source, staging)


def test_staging_debs_gives_mmdebstrap_their_paths(tmp_path: Path) -> None:
    for deb in make_debs(tmp_path / "dir"):
        with_checksum(deb)
    source = scan_offline_dir(tmp_path / "dir", V)
    staging = tmp_path / "staging"
    staging.mkdir()
    prepared = nodeimage._stage(source, staging)
    assert [Path(p).name for p in prepared.includes] == [a.name for a in source.debs]
    assert all(Path(p).read_bytes() == a.path.read_bytes()
               for p, a in zip(prepared.includes, source.debs, strict=True))


# -- the recipe and its cache key ---------------------------------------------------------------


def test_cache_key_follows_the_binaries_checksums(tmp_path: Path) -> None:
    bare_binaries(tmp_path / "a" / "v1.31.4", b"one")
    bare_binaries(tmp_path / "b" / "v1.31.4", b"one")
    bare_binaries(tmp_path / "c" / "v1.31.4", b"two")
    keys = [cache_key("bookworm", 8, node_recipe("ob-x", scan_offline_dir(tmp_path / x, V)))
            for x in "abc"]
    assert keys[0] == keys[1]  # same files elsewhere: the same build
    assert keys[0] != keys[2]  # another kubelet: another build
    assert keys[0] != cache_key("bookworm", 8)  # and never the plain Debian image


def test_the_recipe_adds_containerd_and_kubeadms_settings(tmp_path: Path) -> None:
    bare_binaries(tmp_path / "v1.31.4")
    recipe = node_recipe("ob-x", scan_offline_dir(tmp_path / "v1.31.4", V))
    assert {"containerd", "runc", "containernetworking-plugins", "conntrack"} <= set(
        recipe.packages)
    assert "SystemdCgroup = true" in recipe.files["etc/containerd/config.toml"]
    assert "br_netfilter" in recipe.files["etc/modules-load.d/kubernetes.conf"]
    assert "net.ipv4.ip_forward = 1" in recipe.files["etc/sysctl.d/90-kubernetes.conf"]
    assert recipe.prepare is not None and recipe.repositories == ()


# -- the package repository ---------------------------------------------------------------------


PACKAGES = """Package: kubeadm
Version: 1.31.3-1.1
Architecture: amd64
SHA256: aaaa

Package: kubeadm
Version: 1.31.4-1.1
Architecture: amd64
SHA256: bbbb
Depends: cri-tools (>= 1.30.0), kubeadm

Package: kubeadm
Version: 1.31.4-1.1
Architecture: arm64
SHA256: cccc

Package: kubelet
Version: 1.31.4-1.1
Architecture: amd64
SHA256: dddd

Package: kubectl
Version: 1.31.4-1.1
Architecture: amd64
SHA256: eeee
"""


def test_the_repositorys_index_gives_exact_versions_and_checksums() -> None:
    chosen = pick_packages(parse_packages(PACKAGES), V)
    assert {n: (f["Version"], f["SHA256"]) for n, f in chosen.items()} == {
        "kubeadm": ("1.31.4-1.1", "bbbb"), "kubelet": ("1.31.4-1.1", "dddd"),
        "kubectl": ("1.31.4-1.1", "eeee")}
    with pytest.raises(NodeImageError, match="has no kubeadm, kubelet, kubectl 1.31.9"):
        pick_packages(parse_packages(PACKAGES), KubeVersion(31, 9))


def test_repository_recipe_pins_versions_and_keeps_the_repository() -> None:
    chosen = pick_packages(parse_packages(PACKAGES), V)
    repo = nodeimage.AptRepository("kubernetes", "https://pkgs.k8s.io/core:/stable:/v1.31/deb/ /",
                                   b"key")
    source = nodeimage.KubernetesSource(V, "repository", repository=repo, packages=chosen)
    recipe = node_recipe("ob-x", source)
    assert "kubeadm=1.31.4-1.1" in recipe.packages
    assert recipe.repositories == (repo,) and recipe.prepare is None
    assert nodeimage.HOLD_HOOK in recipe.hooks
    other = dict(chosen, kubelet=dict(chosen["kubelet"], SHA256="ffff"))
    assert cache_key("bookworm", 8, recipe) != cache_key("bookworm", 8, node_recipe(
        "ob-x", nodeimage.KubernetesSource(V, "repository", repository=repo, packages=other)))


def test_dearmor() -> None:
    key = bytes(range(200))
    body = base64.b64encode(key).decode()
    armored = ("-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\n"
               + "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
               + "\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n").encode()
    assert dearmor(armored) == key
    with pytest.raises(NodeImageError):
        dearmor(b"<html>not a key</html>")


def test_no_binaries_and_no_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodeimage, "repository_reachable", lambda version: False)
    with pytest.raises(BinariesMissing) as err:
        find_source(V, None)
    assert str(err.value) == missing_message(V)
    assert str(err.value) == (
        "no Kubernetes v1.31.4 binaries: the Kubernetes package repository is not reachable "
        "from this host and no --from directory was given; import them with: lab tkr build "
        "v1.31.4 --from DIR (kubeadm, kubelet and kubectl .deb files or release binaries, each "
        "with its .sha256)")


def test_conditions_keep_their_transition_time() -> None:
    first = tkr._conditions([], False, "BinariesMissing", "none")
    first[0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    again = tkr._conditions(first, False, "BinariesMissing", "none")
    assert again[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert again[0]["severity"] == "Warning"
    ready = tkr._conditions(again, True, "", "")
    assert ready[0]["status"] == "True" and ready[0]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert "severity" not in ready[0] and "message" not in ready[0]


# -- publishing a built release (the build itself faked: no real binaries here) ------------------


def test_a_built_release_is_published_ready_with_its_node_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.service import Supervisor
    from appliance.settings import Settings
    from appliance.vmservice.catalog import Catalog
    from hypervisor.images import BuiltImage

    sup = Supervisor.open(Settings(state_dir=tmp_path / "state"))
    service = sup.service
    bare_binaries(tmp_path / "v1.31.4")
    names = release_names("v1.31.4")
    # First without binaries: the release exists, not ready.
    monkeypatch.setattr(nodeimage, "repository_reachable", lambda version: False)
    missing = tkr.build_release(sup.settings, service, V)
    assert not missing.ready and missing.message == missing_message(V)

    def fake_build(name: str, source: object, *, out_dir: Path, **kw: object) -> BuiltImage:
        disk = out_dir / f"{name}-000000000000.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8G"], check=True)
        return BuiltImage(name=name, disk=disk, kernel=None, initrd=None, cmdline=None,
                          sha256="ab" * 32, size_bytes=disk.stat().st_size,
                          virtual_size_bytes=8 * 2**30, os={"name": "debian", "version": "12"})

    monkeypatch.setattr(tkr, "build_node_image", fake_build)
    result = tkr.build_release(sup.settings, service, V, tmp_path / "v1.31.4")
    assert result.ready and result.image is not None
    release = next(r for r in tkr.list_releases(service)
                   if r["metadata"]["name"] == names.release)
    ready = tkr.condition(release, "Ready")
    assert ready["status"] == "True" and "message" not in ready
    image = Catalog(service).service.get(
        tkr.SYSTEM, tkr.Target(Catalog(service).cluster_images, "v1alpha5", "",
                               names.node_image))
    assert image["status"]["name"] == names.display_name
    assert image["status"]["disks"][0]["capacity"] == str(8 * 2**30)
    # Without binaries later, a ready release is left as it is.
    again = tkr.build_release(sup.settings, service, V)
    assert again.ready and not again.rebuilt
