"""Where the host finds its supervisor once the lab has moved into control-plane VMs.

``lab up --control-plane-vms N`` (``appliance.controlplane.move``) writes this record
into the host's state directory; its presence is what puts the host service into the
``host`` role: no store, API or controllers of its own, only the agents (and the
host's network stack) working against the API on the floating IP. ``--control-plane-vms
0`` removes it, and the host is the embedded supervisor again.

The record holds the tokens the host's agents use, so the file is 0600, written
atomically and read without following links; ``repr`` hides the tokens.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from appliance.util.files import write_atomic


class PlacementError(ValueError):
    """The record is unreadable or does not hold a placement."""


@dataclass(frozen=True, repr=False)
class Placement:
    vms: int  # 1 or 3
    vip: str
    api_port: int
    node_token: str  # system:node:<host>: the host agent, VM agent and pod agent
    network_token: str  # the host's network stack (OVS, dnsmasq, HAProxy)

    FILE_NAME: ClassVar[str] = "controlplane.json"

    @property
    def api_url(self) -> str:
        return f"https://{self.vip}:{self.api_port}"

    def __repr__(self) -> str:
        return f"Placement(vms={self.vms}, vip={self.vip}, api_port={self.api_port}, tokens=<hidden>)"

    def save(self, state_dir: Path) -> None:
        data = {"vms": self.vms, "vip": self.vip, "api_port": self.api_port,
                "node_token": self.node_token, "network_token": self.network_token}
        write_atomic(state_dir / self.FILE_NAME,
                     (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o600)

    @classmethod
    def load(cls, state_dir: Path) -> Placement | None:
        """The host's placement, or None when the supervisor is embedded."""
        path = state_dir / cls.FILE_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PlacementError(f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise PlacementError(f"{path} is not a regular file")
            raw = handle.read(65536)
        try:
            data = json.loads(raw)
            placement = cls(vms=int(data["vms"]), vip=str(data["vip"]),
                            api_port=int(data["api_port"]), node_token=str(data["node_token"]),
                            network_token=str(data["network_token"]))
        except (ValueError, KeyError, TypeError):
            raise PlacementError(f"{path} does not hold a control-plane placement") from None
        if placement.vms not in (1, 3):
            raise PlacementError(f"{path}: {placement.vms} control-plane VMs (1 or 3)")
        return placement

    @classmethod
    def remove(cls, state_dir: Path) -> None:
        (state_dir / cls.FILE_NAME).unlink(missing_ok=True)
