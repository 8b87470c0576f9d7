"""``POST /login`` throttles password guesses per user and source address (issue 17).

The lab listens on 127.0.0.1; connections from 127.0.0.1 and from 127.0.0.2 are two
sources, as two hosts would be."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from typing import Any

from tests.support.server import LabServer


def login(lab: LabServer, user: str, password: str, source: str) -> tuple[int, dict[str, str],
                                                                            dict[str, Any]]:
    context = ssl.create_default_context(cafile=lab.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", lab.api_port, context=context, timeout=30,
                                       source_address=(source, 0))
    try:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        conn.request("POST", "/login", headers={"Authorization": f"Basic {basic}"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())
    finally:
        conn.close()


def test_ten_wrong_passwords_lock_that_user_from_that_source_only(lab: LabServer) -> None:
    lab.add_user("guessed", "guessed-password-1")
    lab.add_user("bystander", "bystander-password-1")
    for _ in range(10):
        code, _, body = login(lab, "guessed", "wrong", "127.0.0.1")
        assert code == 401 and body["reason"] == "Unauthorized"

    code, headers, body = login(lab, "guessed", "guessed-password-1", "127.0.0.1")
    assert code == 429
    assert headers["Retry-After"] == "30"
    assert body["kind"] == "Status" and body["reason"] == "TooManyRequests"
    assert body["details"] == {"retryAfterSeconds": 30}
    assert "too many failed logins for 'guessed' from 127.0.0.1" in body["message"]

    code, _, body = login(lab, "guessed", "guessed-password-1", "127.0.0.2")
    assert code == 200 and body["user"] == "guessed"
    code, _, body = login(lab, "bystander", "bystander-password-1", "127.0.0.1")
    assert code == 200 and body["user"] == "bystander"
    assert "failed login for 'guessed' from 127.0.0.1" in lab.log_tail(200)
