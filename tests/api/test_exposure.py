"""Every lab of the suite is checked for exposure as it stops (``tests/support/exposure.py``,
issue 17). This shows that the check is not vacuous: a Secret's value copied into a
ConfigMap that a viewer reads, an API bound beyond loopback, and a token in a log are each
found, and named without the value."""

from __future__ import annotations

import base64
import re
import secrets
from pathlib import Path

import pytest
import requests

from tests.support.server import LabServer

pytestmark = pytest.mark.api


def _create(lab: LabServer, path: str, body: dict) -> None:  # type: ignore[type-arg]
    with requests.Session() as s:
        s.trust_env = False
        r = s.post(lab.url + path, json=body, verify=lab.ca_file, timeout=30,
                   headers={"Authorization": f"Bearer {lab.admin_token()}"})
    assert r.status_code == 201, r.text


def test_a_leak_to_viewers_a_wide_listener_and_a_token_in_a_log_are_found(
        tmp_path: Path) -> None:
    lab = LabServer(tmp_path / "state", extra_env={"LAB_API_BIND": "0.0.0.0"})
    lab.start()
    value = f"db-password-{secrets.token_hex(8)}"
    try:
        _create(lab, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": "team"}})
        _create(lab, "/api/v1/namespaces/team/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"password": base64.b64encode(value.encode()).decode()}})
        _create(lab, "/api/v1/namespaces/team/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "careless"},
            "data": {"dsn": f"postgres://app:{value}@db/app"}})
        with pytest.raises(AssertionError) as found:
            lab.stop()
        report = str(found.value)
        assert "a viewer's list of configmaps in team holds a secret value" in report
        # the wildcard bind becomes the host's address: the API is there, beyond loopback
        assert re.search(rf"python\[\d+\] tcp \S+:{lab.api_port}$", report, re.M), report
        assert value not in report
        assert lab.proc is not None and lab.proc.poll() is not None  # stopped all the same

        # A log that holds the admin token (the check gathered it before the stop).
        (lab.state_dir / "logs" / "careless.log").write_text(f"token {lab.admin_token()}\n")
        from tests.support import exposure
        leaks = exposure.log_leaks(lab.state_dir, lab.exposure_values)
        assert leaks and all(x.startswith("logs/careless.log holds secret #") for x in leaks)
    finally:
        lab.stop(check_exposure=False)
