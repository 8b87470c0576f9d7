"""cloud-init NoCloud seed images, built with pycdlib.

The image is an ISO 9660 file system labelled ``cidata`` holding
``user-data``, ``meta-data`` and (optionally) ``network-config``, with
Joliet and Rock Ridge names so that Linux sees the names cloud-init looks
for. Attach it to the guest as a read-only virtio disk (Debian's cloud kernel
has no SATA driver).

The documents are data: dicts dumped with ``yaml.safe_dump``. A seed can
carry secrets (passwords, keys, tokens), so it is written atomically with mode
0600 and its content is never logged.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pycdlib
import yaml

LOG = logging.getLogger(__name__)

VOLUME_LABEL = "cidata"
# ISO 9660 level-1 names next to the real (Joliet / Rock Ridge) names.
_FILES = (
    ("user-data", "/USERDATA.;1"),
    ("meta-data", "/METADATA.;1"),
    ("network-config", "/NETWORKC.;1"),
)
# Text user-data is taken as given only in a form cloud-init recognises:
# cloud-config, a script, or a MIME multi-part archive of those; any of them may be
# a jinja template (a first line "## template: jinja", as CABPK writes).
_USER_DATA_HEADERS = ("#cloud-config", "#!", "Content-Type: multipart/", "MIME-Version:")
_JINJA_HEADER = "## template: jinja\n"


class SeedError(ValueError):
    """Seed content that cloud-init would not accept as given."""


def user_data_bytes(user_data: Mapping[str, Any] | str) -> bytes:
    """``#cloud-config`` + YAML for a dict; a str must already be cloud-config, a script
    or a MIME multi-part archive, and is kept as given."""
    if isinstance(user_data, str):
        if not user_data.removeprefix(_JINJA_HEADER).startswith(_USER_DATA_HEADERS):
            raise SeedError("user-data text must start with '#cloud-config' or '#!' "
                            "(or be a MIME multi-part archive)")
        return user_data.encode()
    if not isinstance(user_data, Mapping):
        raise SeedError(f"user-data must be a dict or a str, not {type(user_data).__name__}")
    return ("#cloud-config\n" + _dump(user_data)).encode()


def _dump(document: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(document), default_flow_style=False, sort_keys=True)


def seed_files(user_data: Mapping[str, Any] | str, meta_data: Mapping[str, Any],
               network_config: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    """The seed's files by name, as they go into the image."""
    if "instance-id" not in meta_data:
        raise SeedError("meta-data needs an instance-id (it decides what cloud-init calls first boot)")
    files = {"user-data": user_data_bytes(user_data), "meta-data": _dump(meta_data).encode()}
    if network_config is not None:
        files["network-config"] = _dump(network_config).encode()
    return files


def build_seed_iso(path: Path, user_data: Mapping[str, Any] | str, meta_data: Mapping[str, Any],
                   network_config: Mapping[str, Any] | None = None) -> Path:
    """Write a NoCloud seed ISO to ``path`` (atomically, mode 0600); return ``path``."""
    files = seed_files(user_data, meta_data, network_config)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_LABEL,
            sys_ident="LINUX")
    for name, iso_path in _FILES:
        if name in files:
            data = files[name]
            iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=name, joliet_path=f"/{name}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            iso.write_fp(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        iso.close()
    LOG.debug("wrote seed image %s (%s)", path, ", ".join(sorted(files)))
    return path


def read_seed_iso(path: Path) -> dict[str, bytes]:
    """The files of a seed image by their Rock Ridge names (for tests and diagnostics)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        found: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dot() or child.is_dotdot() or not child.is_file():
                continue
            name = child.rock_ridge.name().decode()
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            found[name] = out.getvalue()
        return found
    finally:
        iso.close()


def volume_label(path: Path) -> str:
    """The ISO 9660 volume identifier of an image."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label: bytes = iso.pvd.volume_identifier
        return label.decode().rstrip()
    finally:
        iso.close()
