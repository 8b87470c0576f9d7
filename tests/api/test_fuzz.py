"""The API fuzzed from its own OpenAPI v3 documents (``benchmarks/fuzz.py``, with fewer
cases per operation than its 10,000-case run in ``docs/reliability.md``): no answer is a
5xx and none hangs. Cases it once failed on are kept in ``test_bad_input.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fuzz import run
from tests.support.server import LabServer

pytestmark = pytest.mark.api

PER_OPERATION = 3
SEED = 7


def test_no_generated_request_gets_a_5xx_or_hangs(tmp_path: Path) -> None:
    lab = LabServer(tmp_path / "state")  # of its own: the fuzz leaves objects behind
    lab.start()
    try:
        findings = run(lab, PER_OPERATION, SEED)
    finally:
        lab.stop()
    print(f"{findings.cases} cases over {findings.operations} operations: "
          f"{dict(findings.statuses)}")
    assert findings.operations > 250
    assert findings.cases >= findings.operations * PER_OPERATION // 2
    assert not findings.server_errors, findings.server_errors[:5]
    assert not findings.hangs, findings.hangs[:5]
