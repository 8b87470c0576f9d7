"""A small client for the supervisor API, used by host agents and the CLI.

It speaks the same HTTPS + bearer-token protocol as kubectl; errors come back
as :class:`appliance.errors.ApiError` built from the server's Status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from appliance import errors


@dataclass
class ApiClient:
    server: str
    token: str = ""
    ca_file: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.session = requests.Session()
        # Ignore REQUESTS_CA_BUNDLE and proxy variables: they would silently
        # replace the supervisor's CA that was asked for here.
        self.session.trust_env = False
        self.session.verify = self.ca_file if self.ca_file else True
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"

    @staticmethod
    def path(group: str, version: str, plural: str, namespace: str = "", name: str = "",
             sub: str = "") -> str:
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", **params: Any) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        resp = self.session.request(method, self.server + path, data=data, headers=headers,
                                    params=params or None, timeout=self.timeout)
        return self._decode(resp)

    @staticmethod
    def _decode(resp: requests.Response) -> Any:
        try:
            payload = resp.json()
        except ValueError:
            payload = None
        if resp.status_code >= 400:
            if isinstance(payload, dict) and payload.get("kind") == "Status":
                raise errors.ApiError(resp.status_code, payload.get("reason", ""),
                                      payload.get("message", ""), payload.get("details") or {})
            raise errors.ApiError(resp.status_code, resp.reason or "Error", resp.text[:200])
        return payload

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)

    def create(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def replace(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def merge_patch(self, path: str, patch: Any) -> Any:
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path, {})

    def watch(self, path: str, resource_version: str = "", timeout: int = 300,
              idle_timeout: float | None = None, **params: Any) -> Iterator[dict[str, Any]]:
        """The events of a watch. ``idle_timeout``: give up when nothing at all arrives for
        this long (with bookmarks asked for, the supervisor writes one every
        ``KEEPALIVE_SECONDS`` of quiet), so that a connection to a server that died
        without a word (a control-plane VM destroyed) is noticed in about a minute, not
        at the end of the watch."""
        params = {"watch": "true", "resourceVersion": resource_version,
                  "timeoutSeconds": str(timeout), **params}
        read_timeout = timeout + 30 if idle_timeout is None else min(idle_timeout, timeout + 30)
        with self.session.get(self.server + path, params=params, stream=True,
                              timeout=(self.timeout, read_timeout)) as resp:
            if resp.status_code >= 400:
                self._decode(resp)
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def login(self, user: str, password: str) -> dict[str, Any]:
        resp = self.session.post(self.server + "/login", auth=(user, password),
                                 timeout=self.timeout)
        return self._decode(resp)
