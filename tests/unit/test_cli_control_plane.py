"""What ``lab up --control-plane-vms N`` does for each size it finds (appliance.cli), with
the moves themselves replaced by recorders: the moves are the control-plane e2e's."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import click
import pytest

from appliance import cli
from appliance.controlplane import move
from appliance.settings import load_settings


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    done: list[str] = []
    monkeypatch.setattr(move, "move_out", lambda s, **kw: done.append("out"))
    monkeypatch.setattr(move, "move_in", lambda s, n, **kw: done.append(f"in {n}"))
    monkeypatch.setattr(move, "remove_declared", lambda s, say: done.append("remove declared"))
    monkeypatch.setattr(cli, "_roll_control_plane", lambda s: done.append("roll"))
    monkeypatch.setattr(cli.subprocess, "run", lambda argv, **kw: (
        done.append("image " + argv[-1]), subprocess.CompletedProcess(argv, 0, "built\n"))[1])
    return done


def place(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, have: int, wanted: int) -> None:
    monkeypatch.setattr(move, "current_size", lambda s: have)
    cli._place_control_plane(load_settings(environ={}, state_dir=tmp_path), wanted)


@pytest.mark.parametrize(("have", "wanted", "expected"), [
    (0, 3, ["image pacific-appliance", "in 3"]),
    (0, 1, ["image pacific-appliance", "in 1"]),
    (3, 0, ["out"]),
    # another size is another control plane: through the host service, image first
    (1, 3, ["image pacific-appliance", "out", "in 3"]),
    (3, 1, ["image pacific-appliance", "out", "in 1"]),
    # the same size: new code rolls; an embedded lab drops what a stopped move declared
    (3, 3, ["roll"]),
    (0, 0, ["remove declared", "roll"]),
])
def test_each_size_found_and_wanted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    calls: list[str], have: int, wanted: int,
                                    expected: list[str]) -> None:
    place(monkeypatch, tmp_path, have, wanted)
    assert calls == expected


def test_a_failed_image_build_moves_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            calls: list[str]) -> None:
    def failing(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(argv, 1, "step 3\nmmdebstrap: no space left\n")

    monkeypatch.setattr(cli.subprocess, "run", failing)
    with pytest.raises(click.ClickException, match="building the pacific-appliance image "
                                                   "failed: mmdebstrap: no space left"):
        place(monkeypatch, tmp_path, 1, 3)
    assert calls == []


def test_a_failed_move_is_one_readable_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            calls: list[str]) -> None:
    def stuck(s: Any, n: int, **kw: Any) -> None:
        raise move.MoveError("timed out waiting for pacific-cp-2 to be Ready")

    monkeypatch.setattr(move, "move_in", stuck)
    with pytest.raises(click.ClickException, match="timed out waiting for pacific-cp-2"):
        place(monkeypatch, tmp_path, 0, 3)
