"""How ``lab test`` runs the whole suite: its tiers side by side, the output of those
beside printed afterwards, a failure in any tier failing the run; and the
address slices that keep tiers side by side out of each other's ranges."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from appliance import cli
from tests.support.server import address_offset

PASSING = "def test_passes():\n    assert True\n"
FAILING = "def test_fails():\n    assert False, 'this tier fails'\n"
STREAM = ("import os\n\ndef test_stream():\n"
          "    print('stream', os.environ['LAB_TEST_STREAM'], os.nice(0))\n")


def _project(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider -s\n")
    return tmp_path


@pytest.fixture(autouse=True)
def _no_kernel_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's pod kernel build beside the tiers is a real ``make``: a stand-in here."""
    monkeypatch.setattr(cli, "POD_KERNEL_BUILD", (
        sys.executable, "-c", "import os; print('kernel build at nice', os.nice(0))"))


def test_every_tier_runs_and_a_failing_one_fails_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    root = _project(tmp_path, {"test_a.py": PASSING, "test_b.py": FAILING})
    monkeypatch.setattr(cli, "SUITE", (
        cli.Tier("first", ("test_a.py",)), cli.Tier("beside", ("test_b.py",), niceness=5)))

    rc = cli._run_suite(root)

    assert rc == 1
    out = capfd.readouterr().out
    # The tier beside prints after the first one, under its name, from its log.
    assert "===== beside (test-artifacts/tier-1.log) =====" in out
    assert "this tier fails" in out
    assert "this tier fails" in (root / "test-artifacts" / "tier-1.log").read_text()


def test_each_tier_knows_its_place_and_the_one_beside_runs_nicer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    root = _project(tmp_path, {"test_s.py": STREAM})
    monkeypatch.setattr(cli, "SUITE", (
        cli.Tier("first", ("test_s.py",)), cli.Tier("beside", ("test_s.py",), niceness=7)))
    import os

    base = os.nice(0)

    assert cli._run_suite(root) == 0
    out = capfd.readouterr().out
    assert f"stream 0/2 {base}" in out
    assert f"stream 1/2 {base + 7}" in out


CGROUP = ("import os\n\ndef test_cgroup():\n"
          "    from pathlib import Path\n"
          "    print('cgroups', os.environ['LAB_TEST_STREAM'],\n"
          "          Path('/proc/self/cgroup').read_text().replace(chr(10), ' '))\n")


def test_the_tier_beside_runs_in_a_cpu_cgroup_of_low_weight_where_there_is_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    root = _project(tmp_path, {"test_c.py": CGROUP})
    monkeypatch.setattr(cli, "SUITE", (
        cli.Tier("first", ("test_c.py",)), cli.Tier("beside", ("test_c.py",), background=True)))

    assert cli._run_suite(root) == 0
    lines = [line for line in capfd.readouterr().out.splitlines() if "cgroups" in line]
    assert len(lines) == 2
    # "cgroups 0/2 <cgroups>" and "cgroups 1/2 <cgroups>", after pytest's progress
    first, beside = sorted(line.split("cgroups ", 1)[1] for line in lines)
    # The first tier stays where ``lab test`` runs (which may itself be the tier beside,
    # when this test runs there); only the tier beside moves.
    own = Path("/proc/self/cgroup").read_text().replace("\n", " ")
    assert first.split(" ", 1)[1].strip() == own.strip()
    if cli._background_cgroup() is not None:  # a host with a writable CPU controller, as here
        assert f"/{cli.BACKGROUND_CGROUP}" in beside


@pytest.mark.parametrize(("stream", "allowed"), [
    ("0/1", range(16)), ("", range(16)), ("0/2", range(8)), ("1/2", range(8, 16)),
    ("2/3", range(10, 15)), ("nonsense", range(16))])
def test_address_offsets_stay_in_the_tier_s_slice(monkeypatch: pytest.MonkeyPatch,
                                                   stream: str, allowed: range) -> None:
    if stream:
        monkeypatch.setenv("LAB_TEST_STREAM", stream)
    else:
        monkeypatch.delenv("LAB_TEST_STREAM", raising=False)
    assert {address_offset() for _ in range(200)} <= set(allowed)


def test_the_pod_kernel_builds_beside_the_tiers_and_its_failure_only_warns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import os

    root = _project(tmp_path, {"test_a.py": PASSING})
    monkeypatch.setattr(cli, "SUITE", (cli.Tier("first", ("test_a.py",)),))
    base = os.nice(0)
    assert cli._run_suite(root) == 0
    log = (root / "test-artifacts" / "pod-kernel.log").read_text()
    # Niced like the tiers beside (a niceness stops at 19: `lab test` itself may be niced).
    assert log == f"kernel build at nice {min(base + cli.POD_KERNEL_TIER.niceness, 19)}\n"

    monkeypatch.setattr(cli, "POD_KERNEL_BUILD", (sys.executable, "-c", "raise SystemExit(1)"))
    assert cli._run_suite(root) == 0  # pod VMs boot Debian's kernel then: said, not failed
    assert "the pod kernel was not built: see test-artifacts/pod-kernel.log" in \
        capfd.readouterr().err
