"""A clone of this checkout one commit ahead: what a ``git pull`` brings."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.server import ROOT


def newer_checkout(path: Path, line: str = "# a newer release\n") -> Path:
    """Clone ``ROOT`` into ``path`` and commit ``line`` appended to ``appliance/__init__.py``."""
    git = ["git", "-c", f"safe.directory={ROOT}", "-c", "user.name=pacific-lab",
           "-c", "user.email=tests@pacific.lab"]
    subprocess.run([*git, "clone", "--quiet", str(ROOT), str(path)], check=True, timeout=120)
    with (path / "appliance" / "__init__.py").open("a") as fh:
        fh.write(line)
    subprocess.run([*git, "-C", str(path), "commit", "--quiet", "-am", "a newer release"],
                   check=True, timeout=60)
    return path
