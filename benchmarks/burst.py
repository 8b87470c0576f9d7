"""A burst of clients against the supervisor API, with watches open (issue 17).

    .venv/bin/python benchmarks/burst.py [--clients 1000] [--watches 100] [--out FILE.json]

Starts the real host service on loopback (``tests/support/server.py``, SQLite), opens
``--watches`` watches on ConfigMaps in namespace ``bench``, then releases ``--clients``
threads at once, each with a new TCP connection and TLS session, for one authenticated
GET. For each client: the TCP connect time (a connect of a second or more waited on a
SYN retransmission: the kernel's listen queue was full), the time to the answer, and
errors. The baseline is one client alone, measured in the same run; the ratios are the
burst's p50 and p99 over it. Afterwards one ConfigMap is created and every watch must
report it: watches that ended or missed it count as watch errors.

Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.api import (  # noqa: E402
    NAMESPACE,
    Api,
    configmap_body,
    machine,
    note,
    percentile,
    start_service,
    watch_lines,
)

SYN_RETRY = 1.0  # Linux's first SYN retransmission comes after one second


def one_client(api: Api, context: ssl.SSLContext, gate: threading.Event,
               results: list[dict[str, Any]]) -> None:
    gate.wait()
    started = time.monotonic()
    row: dict[str, Any] = {"connect": None, "total": None, "error": None}
    try:
        sock = socket.create_connection(("127.0.0.1", api.server.api_port), timeout=60)
        row["connect"] = time.monotonic() - started
        conn = http.client.HTTPSConnection("127.0.0.1", api.server.api_port,
                                           context=context, timeout=60)
        conn.sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps/seed",
                     headers={"Authorization": f"Bearer {api.token}"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status != 200:
            row["error"] = f"HTTP {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        row["error"] = type(exc).__name__
    row["total"] = time.monotonic() - started
    results.append(row)


def burst(api: Api, clients: int) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=api.server.ca_file)
    gate = threading.Event()
    results: list[dict[str, Any]] = []
    threads = [threading.Thread(target=one_client, args=(api, context, gate, results),
                                daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every thread waits at the gate
    gate.set()
    for t in threads:
        t.join(180)
    totals = sorted(r["total"] for r in results if not r["error"])
    connects = [r["connect"] for r in results if r["connect"] is not None]
    return {"clients": clients, "answered": len(totals),
            "errors": sum(1 for r in results if r["error"]) + clients - len(results),
            "error_kinds": sorted({r["error"] for r in results if r["error"]}),
            "syn_retries": sum(1 for c in connects if c >= SYN_RETRY),
            "connect_max_s": round(max(connects, default=0.0), 3),
            "p50_s": round(statistics.median(totals), 3) if totals else None,
            "p99_s": round(percentile(totals, 0.99), 3) if totals else None,
            "max_s": round(totals[-1], 3) if totals else None}


class Watches:
    """``count`` open watches; each notes the names it was told were ADDED."""

    def __init__(self, api: Api, count: int) -> None:
        self.api, self.seen = api, [set() for _ in range(count)]
        self.ended = [False] * count
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(count)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        try:
            with self.api.session() as s:
                resp = s.get(self.api.url(f"/api/v1/namespaces/{NAMESPACE}/configmaps"),
                             params={"watch": "true", "timeoutSeconds": "600"},
                             stream=True, timeout=(30, 600))
                for line in watch_lines(resp):
                    event = json.loads(line)
                    if event.get("type") == "ADDED":
                        self.seen[i].add(event["object"]["metadata"]["name"])
        except Exception:  # noqa: BLE001 - a broken watch is what is counted
            pass
        self.ended[i] = True

    def saw(self, name: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(name in s for s in self.seen):
                break
            time.sleep(0.1)
        return sum(1 for s in self.seen if name in s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--watches", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"command": " ".join(["benchmarks/burst.py", *sys.argv[1:]]),
                              "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as work:
        server = start_service(Path(work) / "state")
        try:
            api = Api(server, [server.proc.pid] if server.proc else [])
            with api.session() as s:
                s.post(api.url("/api/v1/namespaces"), json={
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": NAMESPACE}}, timeout=30).raise_for_status()
                s.post(api.url(f"/api/v1/namespaces/{NAMESPACE}/configmaps"),
                       json=configmap_body("seed", 0), timeout=30).raise_for_status()
            note(f"{args.watches} watches")
            watches = Watches(api, args.watches)
            time.sleep(2)
            note("baseline: one client")
            result["baseline"] = burst(api, 1)
            note(f"burst: {args.clients} clients at once")
            result["burst"] = burst(api, args.clients)
            with api.session() as s:
                s.post(api.url(f"/api/v1/namespaces/{NAMESPACE}/configmaps"),
                       json=configmap_body("after-burst", 1), timeout=30).raise_for_status()
            told = watches.saw("after-burst", 60)
            result["watches"] = {"open": args.watches, "told_of_the_next_write": told,
                                 "errors": args.watches - told + sum(watches.ended)}
            base = result["baseline"]["p50_s"] or 1e-9
            result["ratios_over_one_client"] = {
                "p50": round((result["burst"]["p50_s"] or 0) / base, 1),
                "p99": round((result["burst"]["p99_s"] or 0) / base, 1)}
        finally:
            server.stop()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
