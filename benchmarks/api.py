"""Supervisor API benchmark: ConfigMap creates/s, gets/s and watch latency.

Starts the real host service (``python -m appliance.cli serve``, through
``tests/support/server.py``) on loopback, first on its default SQLite file and
then on a throwaway PostgreSQL server (``tests/support/postgres.py``), and
drives it over HTTPS with 1 and with 16 client threads, each with its own
``requests.Session``. Watch latency is measured from just before a POST to
the moment a watcher on ``/api/v1/namespaces/bench/configmaps?watch=true``
reads the ADDED event for that object.

The ceiling is the same writes done directly through the store
(``Store.write()`` + ``txn.create``) on a fresh database of the same backend,
with 1 and 16 threads, measured while the host service is not running; the
ratio API/ceiling shows what HTTP, TLS, authentication and admission cost.

The HTTP floor is the same POSTs, from the same clients, to a WSGI app that
only reads the body and answers 201 with a ConfigMap, served by cheroot with
the host service's TLS, threads and backlog in a process of its own: what the
transport alone allows, with no store and no API behind it.

    .venv/bin/python benchmarks/api.py --out docs/benchmarks-api.json

Every loop is bounded by an operation count and a deadline; everything
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from appliance.store.db import make_engine, migrate  # noqa: E402
from appliance.store.repo import Key, Store  # noqa: E402
from appliance.util.timefmt import now_rfc3339  # noqa: E402
from tests.support.listeners import processes  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402
from tests.support.server import LabServer  # noqa: E402

NAMESPACE = "bench"
CM_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
PAYLOAD = "x" * 200  # a small but not empty ConfigMap value


# -- results ------------------------------------------------------------------------------


@dataclass
class Rate:
    ops: int
    seconds: float
    errors: int = 0
    server_cpu_seconds: float | None = None  # the host service (and PostgreSQL)
    client_cpu_seconds: float | None = None  # this benchmark process, all its threads

    @property
    def per_second(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": round(self.per_second, 1)}


@dataclass
class Latency:
    events: int  # ADDED events expected (one per POST that got 201)
    received: int  # of those, how many the watcher read
    median_ms: float | None  # just before the POST -> the watcher reads the event
    p95_ms: float | None
    max_ms: float | None
    post_median_ms: float | None  # round trip of the POST itself, for comparison
    post_p95_ms: float | None


@dataclass
class Row:
    backend: str
    clients: int
    creates: Rate
    gets: Rate
    watch: Latency
    ceiling_creates: Rate
    ceiling_gets: Rate
    floor_posts: Rate

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "clients": self.clients,
                "creates": self.creates.to_dict(), "gets": self.gets.to_dict(),
                "watch": asdict(self.watch), "ceiling_creates": self.ceiling_creates.to_dict(),
                "ceiling_gets": self.ceiling_gets.to_dict(),
                "http_floor_posts": self.floor_posts.to_dict(),
                "create_to_floor_ratio": round(self.creates.per_second
                                               / max(self.floor_posts.per_second, 1e-9), 3),
                "create_ratio": round(self.creates.per_second
                                      / max(self.ceiling_creates.per_second, 1e-9), 3),
                "get_ratio": round(self.gets.per_second
                                   / max(self.ceiling_gets.per_second, 1e-9), 3)}


@dataclass
class Limits:
    duration: float  # seconds a throughput phase may run
    max_ops_1: int  # operations a single client does at most
    max_ops_n: int  # operations all concurrent clients do together at most
    events: int  # watch events measured per run


# -- helpers ---------------------------------------------------------------------------------


def configmap_body(name: str, index: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "data": {"index": str(index), "payload": PAYLOAD}}


_T0 = time.monotonic()


def note(text: str) -> None:
    print(f"{time.monotonic() - _T0:6.1f}s {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def _proc_cpu(pid: int) -> float:
    """CPU seconds used by ``pid`` and its reaped children (utime+stime+cutime+cstime)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root_pids: list[int]) -> float:
    """CPU seconds of the given processes and all their descendants."""
    parents = {pid: int(fields[1]) for pid, _, fields in processes()}
    wanted = set(root_pids)
    grew = True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in wanted and pid not in wanted}
        wanted |= more
        grew = bool(more)
    return sum(_proc_cpu(pid) for pid in wanted)


class Api:
    """What the benchmark needs from one running host service."""

    def __init__(self, server: LabServer, cpu_pids: list[int]) -> None:
        self.server = server
        self.token = server.admin_token()
        self.cpu_pids = cpu_pids

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.server.ca_file
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def url(self, path: str) -> str:
        return self.server.url + path

    def cpu(self) -> float:
        return tree_cpu(self.cpu_pids)


def run_threads(n: int, max_ops: int, duration: float,
                setup: Callable[[int], Any], op: Callable[[Any, int, int], None],
                cpu: Callable[[], float] | None = None) -> Rate:
    """``op(ctx, thread, j)`` in ``n`` threads, ``max_ops`` in all or until ``duration``."""
    per_thread = max(1, max_ops // n)
    counts = [0] * n
    failures = [0] * n
    contexts = [setup(i) for i in range(n)]
    barrier = threading.Barrier(n + 1)
    deadline_box: list[float] = []

    def body(i: int) -> None:
        barrier.wait()
        deadline = deadline_box[0]
        for j in range(per_thread):
            if time.monotonic() >= deadline:
                break
            try:
                op(contexts[i], i, j)
                counts[i] += 1
            except Exception as exc:  # noqa: BLE001 - counted and shown once
                if failures[i] == 0:
                    print(f"  thread {i}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failures[i] += 1

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    cpu_before = cpu() if cpu else None
    client_before = time.process_time()
    started = time.monotonic()
    deadline_box.append(started + duration)
    barrier.wait()
    for t in threads:
        t.join(duration + 120)
    elapsed = time.monotonic() - started
    client_used = time.process_time() - client_before
    cpu_used = cpu() - cpu_before if cpu and cpu_before is not None else None
    for ctx in contexts:
        close = getattr(ctx, "close", None)
        if close:
            close()
    return Rate(sum(counts), elapsed, sum(failures),
                round(cpu_used, 2) if cpu_used is not None else None, round(client_used, 2))


# -- API phases -------------------------------------------------------------------------------


def api_creates(api: Api, tag: str, clients: int, limits: Limits) -> tuple[Rate, list[str]]:
    made: list[str] = []
    lock = threading.Lock()

    def op(s: requests.Session, i: int, j: int) -> None:
        name = f"{tag}-{i}-{j}"
        r = s.post(api.url(CM_PATH), json=configmap_body(name, j), timeout=60)
        if r.status_code != 201:
            raise RuntimeError(f"POST {name}: {r.status_code} {r.text[:200]}")
        with lock:
            made.append(name)

    max_ops = limits.max_ops_1 if clients == 1 else limits.max_ops_n
    return run_threads(clients, max_ops, limits.duration, lambda _i: warm(api), op, api.cpu), made


def api_gets(api: Api, names: list[str], clients: int, limits: Limits) -> Rate:
    def op(s: requests.Session, i: int, j: int) -> None:
        name = names[(i * 7919 + j) % len(names)]
        r = s.get(api.url(f"{CM_PATH}/{name}"), timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"GET {name}: {r.status_code} {r.text[:200]}")

    max_ops = limits.max_ops_1 if clients == 1 else limits.max_ops_n
    return run_threads(clients, max_ops, limits.duration, lambda _i: warm(api), op, api.cpu)


def warm(api: Api) -> requests.Session:
    """A session whose TLS connection is already up."""
    s = api.session()
    s.get(api.url("/version"), timeout=30).raise_for_status()
    return s


def watch_lines(resp: requests.Response) -> Iterator[bytes]:
    """Lines of a watch stream as soon as each HTTP chunk arrives (no read-ahead)."""
    buf = b""
    raw = resp.raw
    chunks = raw.read_chunked(decode_content=True) if raw.chunked else \
        iter(lambda: raw.read(1), b"")
    for chunk in chunks:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line


class Watcher:
    """Reads ADDED events from the bench namespace and notes when each name arrived."""

    def __init__(self, api: Api, resource_version: str, timeout: float) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.session = api.session()
        self.resp: requests.Response | None = None
        # The request is made in the thread: the server sends the response headers
        # only with the first event, so the GET itself blocks until something happens.
        self.thread = threading.Thread(target=self._run, args=(
            api.url(CM_PATH), {"watch": "true", "resourceVersion": resource_version,
                               "timeoutSeconds": str(int(timeout))}, timeout),
            name="watcher", daemon=True)
        self.thread.start()

    def _run(self, url: str, params: dict[str, str], timeout: float) -> None:
        try:
            self.resp = self.session.get(url, params=params, stream=True,
                                         timeout=(30, timeout + 30))
            self.resp.raise_for_status()
            for line in watch_lines(self.resp):
                if not line.strip():
                    continue
                now = time.perf_counter()
                ev = json.loads(line)
                if ev.get("type") != "ADDED":
                    continue
                with self.cond:
                    self.seen.setdefault(ev["object"]["metadata"]["name"], now)
                    self.cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - closing the response ends the loop too
            self.error = exc
        finally:
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, names: set[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not names <= self.seen.keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.thread.is_alive():
                    return False
                self.cond.wait(remaining)
        return True

    def close(self) -> None:
        if self.resp is not None:
            # The reader thread is blocked in a read that holds the response's buffer
            # lock; shutting the socket down ends that read, then the response can close.
            conn = getattr(self.resp.raw, "connection", None)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.thread.join(10)
            self.resp.close()
        self.session.close()
        self.thread.join(10)


def api_watch_latency(api: Api, tag: str, clients: int, limits: Limits) -> Latency:
    with api.session() as s:
        r = s.get(api.url(CM_PATH), params={"limit": "1"}, timeout=30)
        r.raise_for_status()
        rv = r.json()["metadata"]["resourceVersion"]
    watcher = Watcher(api, rv, timeout=120)
    try:
        # The first event proves the stream flows; only later ones are measured.
        with api.session() as s:
            s.post(api.url(CM_PATH), json=configmap_body(f"{tag}-ready", 0),
                   timeout=60).raise_for_status()
        if not watcher.wait_for({f"{tag}-ready"}, 30):
            raise RuntimeError(f"the watch stream delivered nothing: {watcher.error}")
        sent: dict[str, float] = {}
        round_trips: list[float] = []
        lock = threading.Lock()
        per_thread = max(1, -(-limits.events // clients))

        def op(s: requests.Session, i: int, j: int) -> None:
            name = f"{tag}-{i}-{j}"
            t0 = time.perf_counter()
            r = s.post(api.url(CM_PATH), json=configmap_body(name, j), timeout=60)
            if r.status_code != 201:
                raise RuntimeError(f"POST {name}: {r.status_code} {r.text[:200]}")
            t1 = time.perf_counter()
            with lock:
                sent[name] = t0
                round_trips.append((t1 - t0) * 1000)

        run_threads(clients, per_thread * clients, 60.0, lambda _i: warm(api), op)
        watcher.wait_for(set(sent), 15.0)
        with watcher.cond:
            seen = dict(watcher.seen)
    finally:
        watcher.close()
    lat = [(seen[n] - t0) * 1000 for n, t0 in sent.items() if n in seen]
    received = len(lat)
    if received < len(sent):
        missing = sorted(set(sent) - set(seen))
        print(f"  watch: {len(sent) - received} of {len(sent)} ADDED events never arrived "
              f"(e.g. {missing[:3]})", file=sys.stderr)
    return Latency(len(sent), received,
                   round(statistics.median(lat), 2) if lat else None,
                   round(percentile(lat, 0.95), 2) if lat else None,
                   round(max(lat), 2) if lat else None,
                   round(statistics.median(round_trips), 2) if round_trips else None,
                   round(percentile(round_trips, 0.95), 2) if round_trips else None)


# -- the ceiling: the same writes straight through the store ----------------------------------


def stored_configmap(name: str, index: int) -> dict[str, Any]:
    """What the API stores for ``configmap_body``: the same body plus server metadata."""
    body = configmap_body(name, index)
    body["metadata"].update(namespace=NAMESPACE, uid=str(uuid.uuid4()),
                            creationTimestamp=now_rfc3339(), generation=1)
    return body


def ceiling(url: str, limits: Limits) -> dict[int, tuple[Rate, Rate]]:
    engine = make_engine(url)
    try:
        migrate(engine)
        store = Store(engine)
        out: dict[int, tuple[Rate, Rate]] = {}
        for threads in (1, 16):
            made: list[Key] = []
            lock = threading.Lock()

            def create(_ctx: None, i: int, j: int, threads: int = threads,
                       made: list[Key] = made, lock: threading.Lock = lock) -> None:
                name = f"ceil{threads}-{i}-{j}"
                key = Key("", "configmaps", NAMESPACE, name)
                with store.write() as txn:
                    txn.create(key, stored_configmap(name, j))
                with lock:
                    made.append(key)

            def get(_ctx: None, i: int, j: int, made: list[Key] = made) -> None:
                key = made[(i * 7919 + j) % len(made)]
                with store.read() as txn:
                    if txn.get(key) is None:
                        raise RuntimeError(f"{key} vanished")

            max_ops = limits.max_ops_1 if threads == 1 else limits.max_ops_n
            writes = run_threads(threads, max_ops, limits.duration, lambda _i: None, create)
            reads = run_threads(threads, max_ops, limits.duration, lambda _i: None, get)
            out[threads] = (writes, reads)
        return out
    finally:
        engine.dispose()


# -- the HTTP floor ---------------------------------------------------------------------------


def serve_floor(directory: Path) -> None:
    """The floor's server (``--floor-server DIR``): cheroot with the host service's TLS,
    threads and backlog, answering every POST with 201 and a ConfigMap; its port is
    written to ``DIR/port``."""
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    from appliance.pki import ensure_pki
    from appliance.service import API_THREADS, LISTEN_BACKLOG

    pki = ensure_pki(directory / "pki", ["localhost"], ["127.0.0.1"])
    answer = json.dumps(stored_configmap("floor", 0)).encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("201 Created", [("Content-Type", "application/json"),
                                       ("Content-Length", str(len(answer)))])
        return [answer]

    server = wsgi.Server(("127.0.0.1", 0), app, numthreads=API_THREADS, timeout=60,
                         request_queue_size=LISTEN_BACKLOG)
    server.ssl_adapter = BuiltinSSLAdapter(str(pki.server_cert), str(pki.server_key))
    server.prepare()
    (directory / "port").write_text(str(server.bind_addr[1]))
    server.serve()


def http_floor(work: Path, limits: Limits) -> dict[int, Rate]:
    """POSTs/s against the floor's server with 1 and 16 clients."""
    import subprocess

    directory = work / "floor"
    directory.mkdir()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                             "--floor-server", str(directory)])
    try:
        port_file = directory / "port"
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the HTTP floor's server did not start")
            time.sleep(0.1)
        url = f"https://127.0.0.1:{port_file.read_text()}{CM_PATH}"

        def session(_i: int) -> requests.Session:
            s = requests.Session()
            s.trust_env = False
            s.verify = str(directory / "pki" / "ca.crt")
            s.post(url, json=configmap_body("warm", 0), timeout=30).raise_for_status()
            return s

        def op(s: requests.Session, i: int, j: int) -> None:
            r = s.post(url, json=configmap_body(f"f{i}-{j}", j), timeout=60)
            if r.status_code != 201:
                raise RuntimeError(f"POST: {r.status_code}")

        out = {}
        for clients in (1, 16):
            max_ops = limits.max_ops_1 if clients == 1 else limits.max_ops_n
            out[clients] = run_threads(clients, max_ops, limits.duration, session, op,
                                       lambda: tree_cpu([proc.pid]))
        return out
    finally:
        proc.kill()
        proc.wait()


# -- one backend ------------------------------------------------------------------------------


def start_service(state_dir: Path, database_url: str = "") -> LabServer:
    state_dir.mkdir(parents=True)
    # Known host facts: the agent then skips probing QEMU, which is not measured here.
    (state_dir / "host-facts.json").write_text(json.dumps(
        {"hostname": "bench", "address": "127.0.0.1", "cpus": os.cpu_count() or 1}))
    server = LabServer(state_dir, database_url=database_url)
    server.start(timeout=120)
    return server


def bench_backend(backend: str, api_url: str, ceiling_url: str, work: Path,
                  limits: Limits, extra_cpu_pids: list[int], floor: dict[int, Rate]
                  ) -> list[Row]:
    note(f"[{backend}] ceiling through the store")
    ceil = ceiling(ceiling_url, limits)
    note(f"[{backend}] starting the host service")
    server = start_service(work / f"{backend}-state", api_url)
    rows = []
    try:
        assert server.proc is not None
        api = Api(server, [server.proc.pid, *extra_cpu_pids])
        with api.session() as s:
            s.post(api.url("/api/v1/namespaces"), json={
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                timeout=30).raise_for_status()
        for clients in (1, 16):
            note(f"[{backend}] {clients} client(s): creates")
            creates, names = api_creates(api, f"c{clients}", clients, limits)
            note(f"[{backend}] {clients} client(s): gets")
            gets = api_gets(api, names, clients, limits)
            note(f"[{backend}] {clients} client(s): watch latency")
            watch = api_watch_latency(api, f"w{clients}", clients, limits)
            rows.append(Row(backend, clients, creates, gets, watch, *ceil[clients],
                            floor[clients]))
    finally:
        if server.proc is not None and server.proc.poll() is not None:
            note(f"[{backend}] the host service exited early ({server.proc.returncode}):\n"
                 + server.log_tail())
        note(f"[{backend}] stopping the host service")
        server.stop()
        note(f"[{backend}] stopped")
    return rows


# -- report -------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown(rows: list[Row]) -> str:
    head = ("| backend | clients | creates/s | ceiling creates/s | API/ceiling | gets/s "
            "| ceiling gets/s | API/ceiling | HTTP floor POSTs/s | creates/floor "
            "| watch latency p50 / p95 ms "
            "| POST round trip p50 / p95 ms | watch events seen "
            "| CPU during creates: service / client |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        c = r.creates
        cpu = "n/a" if c.server_cpu_seconds is None or c.client_cpu_seconds is None else \
            f"{c.server_cpu_seconds / c.seconds:.2f} / {c.client_cpu_seconds / c.seconds:.2f} cores"
        w = r.watch
        lines.append(
            f"| {r.backend} | {r.clients} | {_f(c.per_second)} "
            f"| {_f(r.ceiling_creates.per_second)} "
            f"| {c.per_second / max(r.ceiling_creates.per_second, 1e-9):.2f} "
            f"| {_f(r.gets.per_second)} | {_f(r.ceiling_gets.per_second)} "
            f"| {r.gets.per_second / max(r.ceiling_gets.per_second, 1e-9):.2f} "
            f"| {_f(r.floor_posts.per_second)} "
            f"| {c.per_second / max(r.floor_posts.per_second, 1e-9):.2f} "
            f"| {_f(w.median_ms, 1)} / {_f(w.p95_ms, 1)} "
            f"| {_f(w.post_median_ms, 1)} / {_f(w.post_p95_ms, 1)} "
            f"| {w.received}/{w.events} | {cpu} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "kernel": platform.release(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    parser.add_argument("--backends", default="sqlite,postgres",
                        help="comma-separated: sqlite, postgres (default: both)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds each throughput phase may run (default 5)")
    parser.add_argument("--max-ops", type=int, default=1000,
                        help="operations one client does at most per phase (default 1000)")
    parser.add_argument("--max-ops-concurrent", type=int, default=3000,
                        help="operations 16 clients do together at most per phase "
                             "(default 3000)")
    parser.add_argument("--events", type=int, default=200,
                        help="watch events measured per run (default 200)")
    parser.add_argument("--floor-server", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_server:
        serve_floor(args.floor_server)
        return 0
    limits = Limits(args.duration, args.max_ops, args.max_ops_concurrent, args.events)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - {"sqlite", "postgres"}
    if unknown:
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")

    started = time.monotonic()
    host = machine()
    work = Path(tempfile.mkdtemp(prefix="pacific-bench-"))
    rows: list[Row] = []
    pg_version = None
    try:
        note("the HTTP floor")
        floor = http_floor(work, limits)
        if "sqlite" in backends:
            rows += bench_backend("sqlite", "", f"sqlite:///{work / 'ceiling.db'}", work,
                                  limits, [], floor)
        if "postgres" in backends:
            with PostgresServer(database="bench_api") as pg:
                pg_version = pg.bin_dir.parent.name
                ceiling_url = pg.create_database("bench_ceiling")
                assert pg.pid is not None
                rows += bench_backend("postgres", pg.url, ceiling_url, work, limits, [pg.pid],
                                      floor)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started

    table = markdown(rows)
    print(table)
    print(f"\n(total run time {total:.0f} s; load average at start "
          f"{host['load_average_at_start']})")
    if args.out:
        report = {"command": "python " + " ".join(["benchmarks/api.py", *sys.argv[1:]])
                  if argv is None else "python benchmarks/api.py " + " ".join(argv),
                  "machine": {**host, "postgresql": pg_version},
                  "limits": asdict(limits), "total_seconds": round(total, 1),
                  "rows": [r.to_dict() for r in rows], "table": table}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
