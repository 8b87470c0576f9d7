"""A command whose API does not answer ends with one readable line (appliance.cli.LabGroup)."""

from __future__ import annotations

import pytest
import requests
from click.testing import CliRunner

from appliance import cli


@pytest.mark.parametrize(("error", "line"), [
    (requests.ReadTimeout("read timed out"),
     "Error: the API at 198.18.0.5:6443 did not answer in time; is the supervisor up? "
     "(`lab status`)"),
    (requests.ConnectionError("no route to host"),
     "Error: cannot connect to the API at 198.18.0.5:6443; is the supervisor up? "
     "(`lab status`)"),
    (requests.TooManyRedirects("loop"),
     "Error: talking to the API at 198.18.0.5:6443 failed: TooManyRedirects"),
])
def test_an_unanswered_request_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                           error: requests.RequestException, line: str) -> None:
    error.request = requests.Request("GET", "https://198.18.0.5:6443/api/v1/secrets").prepare()

    def fails(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(cli, "_api_from_kubeconfig", fails)
    result = CliRunner().invoke(cli.main, ["ssh", "vm", "kube-system/pacific-cp-1"])
    assert result.exit_code == 1
    assert result.output.strip() == line
