"""The content library on this host: image files, their manifest, publishing.

Each library item lives in ``<state_dir>/images/<name>/``: the qcow2 disk,
and for images that boot their own kernel directly, that kernel and initrd.
``image.json`` records which file is which, the checksum and the boot
command line. Specs never carry host paths: a VM names an image, and the
host agent finds the files here by that name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.settings import Settings
from appliance.util.files import write_atomic
from appliance.util.names import dns1123_label

#: Images ``lab image build`` makes: Debian's release by name, and the supervisor
#: appliance image (``hypervisor.applianceimage``) the control-plane VMs boot.
APPLIANCE_IMAGE = "pacific-appliance"
BUILDABLE = {"debian-12": "bookworm", APPLIANCE_IMAGE: "bookworm"}


class LibraryError(ValueError):
    pass


@dataclass(frozen=True)
class ImageFiles:
    name: str
    disk: Path
    disk_format: str
    kernel: Path | None
    initrd: Path | None
    cmdline: str | None
    sha256: str
    capacity_bytes: int
    size_bytes: int
    os_name: str
    os_version: str


def item_dir(settings: Settings, name: str) -> Path:
    problems = dns1123_label(name)
    if problems:
        raise LibraryError(f"invalid image name {name!r}: {problems[0]}")
    return settings.state_dir / "images" / name


def _write_manifest(directory: Path, files: ImageFiles) -> None:
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(files).items()}
    for key in ("disk", "kernel", "initrd"):  # stored relative to the item's directory
        if data[key]:
            data[key] = Path(data[key]).name
    write_atomic(directory / "image.json",
                 json.dumps(data, indent=2, sort_keys=True).encode(), 0o644)


def image_files(settings: Settings, name: str) -> ImageFiles:
    """The files of library item ``name``, refusing anything outside its directory."""
    directory = item_dir(settings, name)
    try:
        fd = os.open(directory / "image.json", os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise LibraryError(f"image {name!r} is not in this host's library") from exc
    with os.fdopen(fd) as fh:
        data: dict[str, Any] = json.load(fh)

    def inside(rel: str | None) -> Path | None:
        if not rel:
            return None
        if "/" in rel or rel in (".", ".."):
            raise LibraryError(f"image {name!r}: manifest names a file outside its directory")
        path = directory / rel
        if path.is_symlink() or not path.is_file():
            raise LibraryError(f"image {name!r}: {rel} is missing or not a regular file")
        return path

    disk = inside(data["disk"])
    assert disk is not None
    return ImageFiles(name=name, disk=disk, disk_format=data.get("disk_format", "qcow2"),
                      kernel=inside(data.get("kernel")), initrd=inside(data.get("initrd")),
                      cmdline=data.get("cmdline"), sha256=data["sha256"],
                      capacity_bytes=int(data["capacity_bytes"]),
                      size_bytes=int(data["size_bytes"]), os_name=data.get("os_name", ""),
                      os_version=data.get("os_version", ""))


def _from_built(name: str, directory: Path, built: Any) -> ImageFiles:
    from hypervisor.proc import run

    info = json.loads(run(["qemu-img", "info", "--output=json", str(built.disk)]).stdout)
    os_info = getattr(built, "os", None) or {}
    return ImageFiles(name=name, disk=built.disk, disk_format="qcow2",
                      kernel=getattr(built, "kernel", None), initrd=getattr(built, "initrd", None),
                      cmdline=getattr(built, "cmdline", None), sha256=built.sha256,
                      capacity_bytes=int(info["virtual-size"]),
                      size_bytes=int(built.size_bytes),
                      os_name=str(os_info.get("name", "")),
                      os_version=str(os_info.get("version", "")))


def build(settings: Settings, name: str, force: bool = False,
          progress: Callable[[Any], None] | None = None) -> ImageFiles:
    from hypervisor.images import build_debian_image

    if name not in BUILDABLE:
        raise LibraryError(f"cannot build {name!r}: buildable images are "
                           f"{', '.join(sorted(BUILDABLE))}")
    directory = item_dir(settings, name)
    directory.mkdir(parents=True, exist_ok=True)
    if name == APPLIANCE_IMAGE:
        from hypervisor.applianceimage import build_appliance_image

        built = build_appliance_image(settings.project_root, settings.cache_dir / "images", directory,
                                      progress, force=force)
    else:
        built = build_debian_image(BUILDABLE[name], out_dir=directory,
                                   cache_dir=settings.cache_dir / "images", force=force,
                                   progress=progress)
    files = _from_built(name, directory, built)
    _write_manifest(directory, files)
    return files


def import_image(settings: Settings, source: str, name: str, allow_private: bool = False,
                 progress: Callable[[Any], None] | None = None) -> ImageFiles:
    from hypervisor.images import import_image as do_import

    directory = item_dir(settings, name)
    directory.mkdir(parents=True, exist_ok=True)
    built = do_import(source, name, directory, allow_private=allow_private, progress=progress)
    files = _from_built(name, directory, built)
    _write_manifest(directory, files)
    return files
