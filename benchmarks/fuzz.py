"""Fuzz the supervisor API from its own OpenAPI v3 documents with schemathesis (issue 17).

    .venv/bin/python benchmarks/fuzz.py [--per-operation 40] [--seed N] [--out FILE.json]

Starts the real host service on loopback (``tests/support/server.py``), reads
``/openapi/v3`` and the document of every group version it lists, and for every
operation of every document has schemathesis (Hypothesis underneath) generate
``--per-operation`` requests from the schema: path parameters, query parameters and
bodies, valid and not. Half the cases are steered deeper: the namespace ``fuzz`` (which
exists), the name ``fuzz-obj`` (a ConfigMap and a Secret of that name exist there), and
a body whose ``apiVersion``, ``kind`` and ``metadata.name`` match the operation, so that
they reach admission and the objects' own checks and not only the first lookup. Writes go with
``dryRun=All``: the whole admission path runs, nothing is stored, so no generated VM
or pod is ever built. Every request is sent as the administrator.

Counted: cases, answers by status class, **server errors** (any 5xx) and **hangs** (no
answer in ``TIMEOUT`` seconds); each of those is printed with its request, to be kept as
a regression test (``tests/api/test_bad_input.py``). ``run()`` is also what
``tests/api/test_fuzz.py`` calls with fewer cases per operation.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.support.server import LabServer  # noqa: E402

NAMESPACE = "fuzz"
TIMEOUT = 30.0  # no answer in this long is a hang (the API tier may run starved of CPU)
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Findings:
    cases: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    operations: int = 0


def documents(server: LabServer, session: requests.Session) -> dict[str, dict[str, Any]]:
    """Every OpenAPI v3 document the API lists, by its path."""
    index = session.get(server.url + "/openapi/v3", timeout=30).json()
    return {name: session.get(server.url + entry["serverRelativeURL"], timeout=60).json()
            for name, entry in sorted(index["paths"].items())}


def _describe(case: Any) -> dict[str, Any]:
    return {"method": case.method, "path": case.formatted_path,
            "query": case.query, "body": case.body if case.body is not None else None}


def fuzz_document(server: LabServer, session: requests.Session, doc: dict[str, Any],
                  per_operation: int, seed: int, findings: Findings) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(doc)
    pick = random.Random(seed)
    for result in schema.get_all_operations():
        operation = result.ok()
        findings.operations += 1
        gvk = (doc["paths"].get(operation.path, {}).get(operation.method.lower(), {})
               .get("x-kubernetes-group-version-kind"))
        fuzz_operation(server, session, operation, gvk, per_operation, seed, pick, findings)


def fuzz_operation(server: LabServer, session: requests.Session, operation: Any,
                   gvk: dict[str, str] | None, per_operation: int, seed: int,
                   pick: random.Random, findings: Findings) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=per_operation, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def one(case: Any) -> None:
        if pick.random() < 0.5:
            steer(case, gvk)
        params = dict(case.query or {})
        if case.method.upper() in WRITES:
            params["dryRun"] = "All"
        case.query = params
        findings.cases += 1
        try:
            response = case.call(base_url=server.url, session=session, timeout=TIMEOUT,
                                 verify=server.ca_file)
        except requests.Timeout:
            findings.hangs.append(_describe(case))
            return
        except requests.RequestException as exc:
            findings.statuses[type(exc).__name__] += 1
            return
        code = response.status_code
        findings.statuses[str(code)] += 1
        if code >= 500:
            findings.server_errors.append({**_describe(case), "status": code,
                                           "answer": response.text[:300]})

    one()


def steer(case: Any, gvk: dict[str, str] | None) -> None:
    """Point ``case`` at things that exist, with a body of the operation's own kind."""
    path = case.path_parameters or {}
    if "namespace" in path:
        path["namespace"] = NAMESPACE
    if "name" in path:
        path["name"] = "fuzz-obj"
    if isinstance(case.body, dict) and gvk:
        group = f"{gvk['group']}/" if gvk.get("group") else ""
        case.body["apiVersion"] = f"{group}{gvk['version']}"
        case.body["kind"] = gvk["kind"]
        meta = case.body.get("metadata")
        meta = dict(meta) if isinstance(meta, dict) else {}
        meta["name"] = path.get("name", "fuzz-new")
        case.body["metadata"] = meta


def run(server: LabServer, per_operation: int, seed: int) -> Findings:
    session = requests.Session()
    session.trust_env = False
    session.verify = server.ca_file
    session.headers["Authorization"] = f"Bearer {server.admin_token()}"
    session.post(server.url + "/api/v1/namespaces", json={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, timeout=30)
    for plural, kind in (("configmaps", "ConfigMap"), ("secrets", "Secret")):
        session.post(f"{server.url}/api/v1/namespaces/{NAMESPACE}/{plural}", json={
            "apiVersion": "v1", "kind": kind, "metadata": {"name": "fuzz-obj"}}, timeout=30)
    findings = Findings()
    for doc in documents(server, session).values():
        fuzz_document(server, session, doc, per_operation, seed, findings)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-operation", type=int, default=40)
    parser.add_argument("--seed", type=int, default=20261207)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as work:
        server = LabServer(Path(work) / "state")
        server.start(timeout=120)
        started = time.monotonic()
        try:
            findings = run(server, args.per_operation, args.seed)
        finally:
            server.stop()
    result = {"command": " ".join(["benchmarks/fuzz.py", *sys.argv[1:]]),
              "seconds": round(time.monotonic() - started, 1),
              "operations": findings.operations, "cases": findings.cases,
              "statuses": dict(sorted(findings.statuses.items())),
              "server_errors": len(findings.server_errors), "hangs": len(findings.hangs),
              "examples": (findings.server_errors + findings.hangs)[:20]}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if not findings.server_errors and not findings.hangs else 1


if __name__ == "__main__":
    sys.exit(main())
