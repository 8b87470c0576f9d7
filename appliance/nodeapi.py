"""The host's log endpoint, for a supervisor that runs in control-plane VMs (issue 13).

A kubelet serves ``/containerLogs`` to kube-apiserver, which passes the answer on to
``kubectl logs``. The lab does the same once its supervisor lives in control-plane VMs:
the files behind the log subresources (a VM's serial console, a pod VM's container logs)
stay on the host that runs the workloads, and the supervisor's API asks the host for
them here.

- **Where:** only the host's address on the appliance network (the isolated network that
  only the control-plane VMs share with the host), port ``node_api_port`` (10250, the
  kubelet's). The host's Node publishes both (an ``InternalIP`` in the appliance network,
  ``status.daemonEndpoints.kubeletEndpoint.Port``).
- **Who:** TLS both ways. The server certificate is the host's, from the lab's CA; a
  client must present a certificate from the same CA, for client authentication, that
  names the address it connects from: a control-plane VM's (``CONTROL_PLANE_CLIENT``).
- **What:** ``POST /logs/<group>/<plural>/<subresource>`` (``core`` for the empty group)
  with ``{"object": ..., "args": {...}}``: the object the supervisor already authorised
  the user to read, and the request's parameters (``tailLines``, ``follow``,
  ``container``, ...). The host runs the same reader the embedded supervisor runs and
  streams the bytes back as they come; an error is a Kubernetes ``Status`` with its code,
  which the supervisor raises again as its own.

``RemoteLogs`` is the supervisor's side: a reader for ``ApiApp``'s streams and the
dashboard that finds the object's Node and asks it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from appliance import errors
from appliance.kinds.registry import Obj

LOG = logging.getLogger(__name__)

VMOP = "vmoperator.vmware.com"
CONSOLE = (VMOP, "virtualmachines", "console")
POD_LOG = ("", "pods", "log")
#: The largest request body: an object and a few parameters.
MAX_BODY = 1024 * 1024

Reader = Callable[[Obj, Mapping[str, str], float], Iterable[bytes]]

_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def check_object(key: tuple[str, str, str], obj: Any) -> Obj:
    """The names that become paths on the host are what the API admits, nothing else."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise errors.bad_request("the body's object is not a Kubernetes object")
    meta = obj["metadata"]
    for field in ("namespace", "name"):
        if not isinstance(meta.get(field), str) or not _NAME.match(meta[field]):
            raise errors.bad_request(f"the object's {field} is not a valid name")
    if key == POD_LOG:
        if not isinstance(meta.get("uid"), str) or not _UID.match(meta["uid"]):
            raise errors.bad_request("the pod's uid is not a UID")
        containers = (obj.get("spec") or {}).get("containers") or []
        if not isinstance(containers, list) or not all(
                isinstance(c, dict) and isinstance(c.get("name"), str)
                and _NAME.match(c["name"]) for c in containers):
            raise errors.bad_request("the pod's container names are not valid names")
    return obj


class NodeLogApp:
    """The WSGI application of the host's log endpoint."""

    def __init__(self, readers: Mapping[tuple[str, str, str], Reader],
                 allowed: Callable[[str, str], bool], timeout: float) -> None:
        self.readers = dict(readers)
        self.allowed = allowed  # (client certificate PEM, peer address) -> may it ask?
        self.timeout = timeout

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        try:
            if not self.allowed(environ.get("SSL_CLIENT_CERT", ""),
                                environ.get("REMOTE_ADDR", "")):
                raise errors.forbidden("only the lab's control-plane VMs may read logs here")
            key, obj, args, timeout = self._request(environ)
            chunks = self.readers[key](obj, args, timeout)
        except errors.ApiError as err:
            body = json.dumps(err.to_status()).encode()
            start_response(f"{err.code} {err.reason}", [
                ("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return chunks

    def _request(self, environ: dict[str, Any]
                 ) -> tuple[tuple[str, str, str], Obj, dict[str, str], float]:
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        if len(parts) != 4 or parts[0] != "logs":
            raise errors.not_found("path", "", environ.get("PATH_INFO", ""))
        group = "" if parts[1] == "core" else parts[1]
        key = (group, parts[2], parts[3])
        if key not in self.readers:
            raise errors.not_found(f"{parts[2]}/{parts[3]}", group, "")
        if environ.get("REQUEST_METHOD") != "POST":
            raise errors.method_not_allowed("POST an object and its parameters")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError as exc:
            raise errors.bad_request("bad Content-Length") from exc
        if length > MAX_BODY:
            raise errors.too_large(MAX_BODY)
        try:
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
        except ValueError as exc:
            raise errors.bad_request("the body is not JSON") from exc
        if not isinstance(body, dict):
            raise errors.bad_request("the body is not a JSON object")
        args = body.get("args") or {}
        if not isinstance(args, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
            raise errors.bad_request("args must map names to strings")
        timeout = body.get("timeout", self.timeout)
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise errors.bad_request("timeout must be a number of seconds")
        return key, check_object(key, body.get("object")), args, min(float(timeout),
                                                                    self.timeout)


def control_plane_client(ca_file: Path) -> Callable[[str, str], bool]:
    """Whether a verified client certificate (TLS checked the chain already) was issued
    by the lab's CA for client authentication and names the address it comes from."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())

    def allowed(cert_pem: str, peer: str) -> bool:
        if not cert_pem or not peer:
            return False
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            names = cert.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
            address = ipaddress.ip_address(peer)
        except (ValueError, x509.ExtensionNotFound):
            return False
        mapped = getattr(address, "ipv4_mapped", None) or address
        return (cert.issuer == ca.subject and ExtendedKeyUsageOID.CLIENT_AUTH in usage
                and mapped in names)

    return allowed


def serve(app: NodeLogApp, address: str, port: int, pki: Any) -> Any:
    """Start the endpoint on ``address``: TLS with a client certificate required."""
    import threading

    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    server = wsgi.Server((address, port), app, numthreads=16,
                         server_name="pacific-lab-node", timeout=60, shutdown_timeout=2,
                         request_queue_size=128)
    adapter = BuiltinSSLAdapter(str(pki.server_cert), str(pki.server_key))
    adapter.context.verify_mode = ssl.CERT_REQUIRED
    adapter.context.load_verify_locations(cafile=str(pki.ca_cert))
    server.ssl_adapter = adapter
    server.prepare()
    threading.Thread(target=server.serve, name="node-api", daemon=True).start()
    LOG.info("node API (logs for the control-plane VMs) on https://%s:%d", address, port)
    return server


class RemoteLogs:
    """The supervisor's side, in a control-plane VM: readers that ask the Node of the
    object (``status.host`` of a VM, ``spec.nodeName`` of a pod) for the bytes."""

    def __init__(self, nodes: Callable[[str], Obj | None], network: str, ca_file: Path,
                 cert: Path, key: Path) -> None:
        self.nodes = nodes  # Node name -> the Node object, or None
        self.network = ipaddress.ip_network(network)
        self.ca_file, self.cert, self.key = ca_file, cert, key

    def readers(self) -> dict[tuple[str, str, str], Reader]:
        return {key: self.reader(key) for key in (CONSOLE, POD_LOG)}

    def reader(self, key: tuple[str, str, str]) -> Reader:
        def read(obj: Obj, args: Mapping[str, str], timeout: float) -> Iterator[bytes]:
            return self.read(key, obj, args, timeout)
        return read

    def endpoint(self, key: tuple[str, str, str], obj: Obj) -> str:
        if key == POD_LOG:
            node_name = (obj.get("spec") or {}).get("nodeName")
        else:
            node_name = (obj.get("status") or {}).get("host")
        what = f"{key[1]} {obj['metadata']['name']!r}"
        if not node_name:
            raise errors.bad_request(f"{what} is on no host yet: it has no {key[2]} yet")
        node = self.nodes(str(node_name))
        if node is None:
            raise errors.service_unavailable(f"the host {node_name} of {what} is not a Node")
        status = node.get("status") or {}
        port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
        address = next((a["address"] for a in status.get("addresses") or []
                        if a.get("type") == "InternalIP" and _within(a["address"], self.network)),
                       None)
        if not port or not address:
            raise errors.service_unavailable(
                f"the host {node_name} publishes no log endpoint on the appliance network")
        return f"https://{address}:{int(port)}"

    def read(self, key: tuple[str, str, str], obj: Obj, args: Mapping[str, str],
             timeout: float) -> Iterator[bytes]:
        import requests

        url = f"{self.endpoint(key, obj)}/logs/{key[0] or 'core'}/{key[1]}/{key[2]}"
        session = requests.Session()
        session.trust_env = False
        try:
            resp = session.post(url, json={"object": obj, "args": dict(args),
                                           "timeout": timeout},
                                verify=str(self.ca_file), cert=(str(self.cert), str(self.key)),
                                stream=True, timeout=(10, timeout + 30))
        except requests.RequestException as exc:
            session.close()
            raise errors.service_unavailable(
                f"the host's log endpoint did not answer: {type(exc).__name__}: "
                f"{_reason(exc)}") from exc
        if resp.status_code != 200:
            try:
                status = resp.json()
                err = errors.ApiError(int(status["code"]), str(status["reason"]),
                                      str(status["message"]))
            except (ValueError, KeyError, TypeError):
                err = errors.service_unavailable(
                    f"the host's log endpoint answered HTTP {resp.status_code}")
            resp.close()
            session.close()
            raise err
        return _passed_on(resp, session)


def _passed_on(resp: Any, session: Any) -> Iterator[bytes]:
    try:
        yield from resp.iter_content(chunk_size=None)
    finally:
        resp.close()
        session.close()


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, short (no URL, no body)."""
    while exc.__context__ is not None and exc.__context__ is not exc:
        exc = exc.__context__
    return str(exc)[:200]


def _within(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False
