"""SIGKILL the host service again and again under writers and watchers (issue 17).

    .venv/bin/python benchmarks/chaos.py [--cycles 200] [--backend sqlite|postgres|both]
                                         [--out FILE.json]

A lab of its own is started the way users start it (``lab up --skip-host-prep``: the
service under its keeper, which starts it again when it dies), on SQLite or on a
throwaway PostgreSQL server. Four writers create ConfigMaps in namespace ``chaos`` (a new
name for every try) and note the ones acknowledged with 201 and their resourceVersion;
four watchers list and watch the namespace, resuming from the last resourceVersion they
saw when a watch breaks, and relisting when told 410 Gone. Each cycle waits for some new
acknowledged writes, SIGKILLs the service (not the keeper) and times how long until
``/readyz`` answers again, with nobody touching the lab.

Afterwards, checked against a model (the namespace's final list; objects are only ever
created, so each has one ADDED event at its creation resourceVersion):

- **lost**: acknowledged writes missing from the final list, or listed with another
  resourceVersion: must be 0;
- **integrity**: SQLite's ``PRAGMA integrity_check`` after every kill (PostgreSQL
  checks its own WAL on recovery);
- **watchers**: for every stretch of one watcher's stream, from the resourceVersion it
  started at to the last it was told of, the names it saw are exactly the objects created
  in that range, each once and in order; a stretch ends with an error or 410 and the next
  starts from where the watcher resumed (a relist covers the gap after a 410).

Everything listens on loopback; the lab's state is removed afterwards. ``run()`` is also
what ``tests/api/test_chaos.py`` calls with 20 cycles.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.support.server import LabServer  # noqa: E402

NAMESPACE = "chaos"
WRITERS = 4
WATCHERS = 4
WRITES_PER_CYCLE = 20  # new acknowledged writes before each kill
BACK_TIMEOUT = 120.0


def note(text: str) -> None:
    print(f"[chaos] {text}", file=sys.stderr, flush=True)


class Lab:
    """The lab under test: ``lab up`` as a daemon in a state directory of its own."""

    def __init__(self, state_dir: Path, database_url: str = "") -> None:
        self.server = LabServer(state_dir, database_url=database_url)
        self.token = ""

    def cli(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "appliance.cli", *args],
                              env=self.server.env, capture_output=True, text=True, cwd=ROOT,
                              timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"lab {' '.join(args)}: {proc.stderr}{proc.stdout}")
        return proc.stdout

    def up(self) -> None:
        self.cli("up", "--skip-host-prep")
        self.token = self.server.admin_token()

    def down(self) -> None:
        subprocess.run([sys.executable, "-m", "appliance.cli", "down"], env=self.server.env,
                       capture_output=True, cwd=ROOT, timeout=120)

    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False
        s.verify = self.server.ca_file
        s.headers["Authorization"] = f"Bearer {self.token}"
        return s

    def url(self, path: str) -> str:
        return self.server.url + path

    def service_pid(self) -> int:
        state = json.loads((self.server.state_dir / "run" /
                            "host-service.keeper.json").read_text())
        return int(state["service_pid"])

    def ready(self) -> bool:
        try:
            return requests.get(self.url("/readyz"), verify=self.server.ca_file,
                                timeout=2).status_code == 200
        except requests.RequestException:
            return False


@dataclass
class Writes:
    acked: dict[str, int] = field(default_factory=dict)  # name -> resourceVersion
    tries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def writer(lab: Lab, n: int, writes: Writes, stop: threading.Event) -> None:
    session, i = lab.session(), 0
    path = lab.url(f"/api/v1/namespaces/{NAMESPACE}/configmaps")
    try:
        while not stop.is_set():
            name = f"w{n}-{i}"
            i += 1
            try:
                r = session.post(path, json={"apiVersion": "v1", "kind": "ConfigMap",
                                             "metadata": {"name": name},
                                             "data": {"i": str(i)}}, timeout=10)
            except requests.RequestException:
                session.close()  # its connection died with the service
                session = lab.session()
                stop.wait(0.1)
                continue
            with writes.lock:
                writes.tries += 1
                if r.status_code == 201:
                    writes.acked[name] = int(r.json()["metadata"]["resourceVersion"])
    finally:
        session.close()


@dataclass
class Stretch:
    """One unbroken stretch of a watcher's stream."""

    start: int
    end: int
    names: list[tuple[int, str]] = field(default_factory=list)  # (rv, name) in order


@dataclass
class Watcher:
    stretches: list[Stretch] = field(default_factory=list)
    gone: int = 0  # 410s
    breaks: int = 0


def watcher(lab: Lab, w: Watcher, stop: threading.Event) -> None:
    path = lab.url(f"/api/v1/namespaces/{NAMESPACE}/configmaps")
    rv = 0
    while not stop.is_set():
        started = len(w.stretches)
        try:
            with lab.session() as session:
                rv = _watch_once(session, path, rv, w, stop)
        except (requests.RequestException, ValueError):
            w.breaks += 1
            if len(w.stretches) > started:  # a watch broke: go on from what it saw
                rv = w.stretches[-1].end
            stop.wait(0.2)


def _watch_once(session: requests.Session, path: str, rv: int, w: Watcher,
                stop: threading.Event) -> int:
    """One list (when ``rv`` is 0) and one watch; the resourceVersion to go on from (0: list
    again)."""
    if not rv:  # (re)list: the list covers everything up to its resourceVersion
        listed = session.get(path, timeout=10)
        if listed.status_code != 200:
            stop.wait(0.2)
            return 0
        rv = int(listed.json()["metadata"]["resourceVersion"])
    stretch = Stretch(rv, rv)
    w.stretches.append(stretch)
    with session.get(path, params={"watch": "true", "resourceVersion": str(rv),
                                   "allowWatchBookmarks": "true", "timeoutSeconds": "30"},
                     stream=True, timeout=(5, 40)) as resp:
        if resp.status_code != 200:
            raise requests.ConnectionError(f"HTTP {resp.status_code}")
        for line in resp.iter_lines():
            if stop.is_set():
                break
            if not line:
                continue
            event = json.loads(line)
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                if obj.get("code") == 410:
                    w.gone += 1
                    return 0
                break
            event_rv = int(obj["metadata"]["resourceVersion"])
            if event.get("type") == "ADDED":
                stretch.names.append((event_rv, obj["metadata"]["name"]))
            stretch.end = max(stretch.end, event_rv)
    return stretch.end


def check_watchers(watchers: list[Watcher], final: dict[str, int]) -> list[str]:
    """What the watchers got wrong against the final list (empty when nothing)."""
    by_rv = sorted((rv, name) for name, rv in final.items())
    problems = []
    for i, w in enumerate(watchers):
        for s in w.stretches:
            wanted = [(rv, name) for rv, name in by_rv if s.start < rv <= s.end]
            if s.names != wanted:
                missing = set(wanted) - set(s.names)
                extra = [x for x in s.names if x not in set(wanted)]
                problems.append(f"watcher {i}, resourceVersions {s.start}..{s.end}: "
                                f"{len(missing)} missing, {len(extra)} unexpected or "
                                f"repeated, in order: {s.names == sorted(s.names)}")
    return problems


def integrity(state_dir: Path) -> str:
    db = sqlite3.connect(f"file:{state_dir / 'supervisor.db'}?mode=ro", uri=True, timeout=30)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


def run(cycles: int, state_dir: Path, database_url: str = "") -> dict[str, Any]:
    """``cycles`` kills of the service of a new lab in ``state_dir``; the checked figures."""
    lab = Lab(state_dir, database_url)
    lab.up()
    stop = threading.Event()
    writes, watchers = Writes(), [Watcher() for _ in range(WATCHERS)]
    back: list[float] = []
    checks: list[str] = []
    threads: list[threading.Thread] = []
    try:
        with lab.session() as session:
            session.post(lab.url("/api/v1/namespaces"), json={
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
                timeout=30).raise_for_status()
        threads = [threading.Thread(target=writer, args=(lab, n, writes, stop), daemon=True)
                   for n in range(WRITERS)]
        threads += [threading.Thread(target=watcher, args=(lab, w, stop), daemon=True)
                    for w in watchers]
        for t in threads:
            t.start()
        for cycle in range(1, cycles + 1):
            goal = len(writes.acked) + WRITES_PER_CYCLE
            deadline = time.monotonic() + 60
            while len(writes.acked) < goal and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(lab.service_pid(), signal.SIGKILL)
            killed = time.monotonic()
            time.sleep(0.05)
            while not lab.ready():
                if time.monotonic() - killed > BACK_TIMEOUT:
                    raise RuntimeError(f"cycle {cycle}: the API did not answer again in "
                                       f"{BACK_TIMEOUT:.0f} s")
                time.sleep(0.05)
            back.append(time.monotonic() - killed)
            if not database_url:
                checks.append(integrity(state_dir))
            if cycle % 10 == 0 or cycle == cycles:
                note(f"cycle {cycle}: back in {back[-1]:.2f} s; {len(writes.acked)} "
                     "writes acknowledged so far")
        time.sleep(2)  # the last writes reach the watchers
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        with lab.session() as session:
            listed = session.get(lab.url(f"/api/v1/namespaces/{NAMESPACE}/configmaps"),
                                 timeout=60).json()["items"]
    finally:
        lab.down()
    final = {i["metadata"]["name"]: int(i["metadata"]["resourceVersion"]) for i in listed}
    lost = [name for name, rv in writes.acked.items() if final.get(name) != rv]
    watch_problems = check_watchers(watchers, final)
    return {
        "backend": "postgres" if database_url else "sqlite", "cycles": cycles,
        "writes_tried": writes.tries, "writes_acknowledged": len(writes.acked),
        "objects_at_the_end": len(final), "acknowledged_lost": len(lost),
        "lost_examples": sorted(lost)[:5],
        "integrity_checks_ok": sum(c == "ok" for c in checks),
        "integrity_checks": len(checks),
        "back_seconds": {"p50": round(statistics.median(back), 2),
                         "max": round(max(back), 2)},
        "watch_stretches": sum(len(w.stretches) for w in watchers),
        "watch_events_checked": sum(len(s.names) for w in watchers for s in w.stretches),
        "watch_410s": sum(w.gone for w in watchers),
        "watch_problems": watch_problems[:10],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = []
    for backend in (("sqlite", "postgres") if args.backend == "both" else (args.backend,)):
        with tempfile.TemporaryDirectory(prefix="bench-chaos-") as work:
            note(f"{backend}: {args.cycles} kills")
            if backend == "postgres":
                from tests.support.postgres import PostgresServer

                with PostgresServer() as pg:
                    results.append(run(args.cycles, Path(work) / "state", pg.url))
            else:
                results.append(run(args.cycles, Path(work) / "state"))
    text = json.dumps({"command": " ".join(["benchmarks/chaos.py", *sys.argv[1:]]),
                       "results": results}, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all(r["acknowledged_lost"] == 0 and not r["watch_problems"] and
                    r["integrity_checks_ok"] == r["integrity_checks"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
