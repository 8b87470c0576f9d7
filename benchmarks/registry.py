"""Lab registry benchmark: push and pull of a 100 MiB image with auth against the same
Distribution without auth, in one run, and the token endpoint's latency.

    .venv/bin/python benchmarks/registry.py [--runs 3] [--tokens 200] [--size-mib 100]
        [--out FILE.json]

Three targets, all ``docker-registry`` (CNCF Distribution) on loopback, storage on
the same disk:

- ``lab``: the lab registry of a real host service (``tests/support/server.py``):
  the TLS front in the host service (``appliance/registry/front.py``) in front of
  Distribution on a unix socket, token auth. skopeo logs in as the administrator
  with an API token (what ``lab registry login`` writes) and trusts the lab CA;
- ``baseline_tls``: Distribution with no auth serving TLS itself (``http.tls``, a
  certificate from a throwaway CA), the like-for-like baseline of the ratios;
- ``baseline_http``: Distribution with no auth on plain HTTP
  (``tests/support/registry.py:LocalRegistry``), for reference.

Each run makes a fresh image (one gzip layer, level 0, of 100 MiB of random
bytes, so nothing is compressed on the way and no blob is already there), pushes
it to every target with ``skopeo copy --preserve-digests`` (which refuses to
recompress) and pulls it back into a fresh OCI layout, each timed by wall clock.
The order of the targets rotates from run to run; medians are reported.
throughput(lab) / throughput(baseline_tls) is ``push_ratio`` / ``pull_ratio``
(goal: at least 0.9).

Token issue latency: ``--tokens`` GETs of ``/service/token`` for
``repository:bench/x:pull,push`` over one keep-alive session, with Basic auth of
an API token and then of the password (scrypt, slow by design): p50 and p99.

Two diagnostics close the run: one blob GET with curl through the lab's front,
straight to its Distribution's unix socket (same token) and from both baselines
(the byte path); and the requests of a small push into a new repository, timed
one by one, lab against baseline_tls (the fixed costs). Each transfer also records
the CPU seconds of skopeo, the TLS front, the lab's Distribution and the rest of
the machine (other work on a shared host shows there).
Everything listens on 127.0.0.1, lives in a temporary directory and is stopped
and removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import yaml  # noqa: E402

from appliance.pki import ensure_pki  # noqa: E402
from appliance.registry import SERVICE, TOKEN_PATH  # noqa: E402
from hypervisor.proc import run  # noqa: E402
from tests.support.listeners import processes  # noqa: E402
from tests.support.registry import LocalRegistry, free_port  # noqa: E402
from tests.support.server import LabServer  # noqa: E402

NAMESPACE = "bench"
GOAL = 0.9
MIB = 1 << 20
TAG = "bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SKOPEO = ["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests"]
START_TIMEOUT_S = 20.0

_T0 = time.monotonic()


def note(text: str) -> None:
    print(f"{time.monotonic() - _T0:6.1f}s {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


# -- the image -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    layout: Path
    layer_digest: str
    layer_bytes: int


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def make_image(layout: Path, size: int) -> Image:
    """An OCI layout holding one image tagged ``TAG``: one gzip (level 0, stored) layer of a
    tar with ``size`` random bytes in one file."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("random.bin")
        info.size, info.mode, info.mtime = size, 0o644, 0
        tf.addfile(info, io.BytesIO(os.urandom(size)))
    raw = tar.getvalue()
    del tar
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer = gzip.compress(raw, compresslevel=0, mtime=0)
    del raw
    layer_digest = _blob(layout, layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _blob(layout, config),
                   "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest,
                    "size": len(layer)}]}).encode()
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": _blob(layout, manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": TAG}}]}))
    return Image(layout, layer_digest, len(layer))


# -- CPU accounting --------------------------------------------------------------------------


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, all threads, not children) of ``pid``; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_named(parent: int, name: str) -> int | None:
    return next((pid for pid, comm, fields in processes()
                 if comm == name[:15] and int(fields[1]) == parent), None)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (or stolen by the hypervisor) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- targets ---------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    host: str  # HOST:PORT
    tls_args: list[str]  # skopeo's TLS options, without the --src-/--dest- prefix
    creds: str | None  # USER:SECRET or None
    front_pid: int | None  # the process that terminates TLS in front of Distribution
    registry_pid: int | None  # Distribution (may be the same as front_pid)

    def args(self, side: str) -> list[str]:
        out = [f"--{side}-{a}" for a in self.tls_args]
        if self.creds:
            out.append(f"--{side}-creds={self.creds}")
        return out


class TlsRegistry:
    """``docker-registry serve`` with no auth, serving TLS itself, on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.pki = ensure_pki(workdir / "pki", ["localhost"], ["127.0.0.1"])
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a free port can be taken before the registry binds it
            self.port = free_port()
            config = {"version": 0.1,
                      "log": {"level": "warn", "accesslog": {"disabled": True}},
                      "storage": {"filesystem": {"rootdirectory": str(self.dir / "storage")},
                                  "delete": {"enabled": True}},
                      "http": {"addr": self.host, "secret": secrets.token_hex(16),
                               "tls": {"certificate": str(self.pki.server_cert),
                                       "key": str(self.pki.server_key)}}}
            path = self.dir / "config.yml"
            path.write_text(yaml.safe_dump(config, sort_keys=True))
            with (self.dir / "registry.log").open("ab") as log:
                self.proc = subprocess.Popen(["docker-registry", "serve", str(path)],
                                             stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_ready():
                return
            self.stop()
        raise RuntimeError("docker-registry (TLS) did not start: "
                           + (self.dir / "registry.log").read_text(errors="replace")[-2000:])

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            with requests.Session() as s:
                s.trust_env = False
                with contextlib.suppress(requests.RequestException):
                    if s.get(f"https://{self.host}/v2/", verify=str(self.pki.ca_cert),
                             timeout=2).status_code == 200:
                        return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def lab_service(work: Path) -> Iterator[LabServer]:
    state = work / "lab-state"
    state.mkdir(parents=True)
    # Known host facts: the agent then skips probing QEMU, which is not measured here.
    (state / "host-facts.json").write_text(json.dumps(
        {"hostname": "bench", "address": "127.0.0.1", "cpus": os.cpu_count() or 1}))
    server = LabServer(state)
    try:
        server.start(timeout=120)
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is not None:
            note(f"[lab] the host service exited early ({server.proc.returncode}):\n"
                 + server.log_tail())
        server.stop()


def lab_session(server: LabServer, auth: tuple[str, str]) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = server.ca_file
    s.auth = auth
    return s


# -- push and pull ---------------------------------------------------------------------------


@dataclass
class Transfer:
    target: str
    run: int
    direction: str  # push | pull
    seconds: float
    mib_s: float
    skopeo_cpu_s: float
    front_cpu_s: float  # the TLS terminator (the host service for the lab)
    registry_cpu_s: float  # Distribution (0 when it is the front itself)
    other_cpu_s: float  # the rest of the machine meanwhile: other work on a shared host


def timed_copy(target: Target, direction: str, run_no: int, image: Image, work: Path,
               repository: str) -> Transfer:
    ref = f"docker://{target.host}/{repository}:1"
    if direction == "push":
        cmd = [*SKOPEO, *target.args("dest"), f"oci:{image.layout}:{TAG}", ref]
        dest = None
    else:
        dest = work / f"pull-{target.name}-{run_no}"
        cmd = [*SKOPEO, *target.args("src"), ref, f"oci:{dest}:{TAG}"]
    separate = target.registry_pid != target.front_pid
    front0, reg0 = proc_cpu(target.front_pid), proc_cpu(target.registry_pid)
    client0, busy0 = children_cpu(), machine_busy()
    t0 = time.perf_counter()
    run(cmd, timeout=900)
    seconds = time.perf_counter() - t0
    client, busy = children_cpu() - client0, machine_busy() - busy0
    front = proc_cpu(target.front_pid) - front0
    registry = proc_cpu(target.registry_pid) - reg0 if separate else 0.0
    if dest is not None:
        index = json.loads((dest / "index.json").read_text())
        manifest_digest = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads((dest / "blobs" / "sha256" / manifest_digest).read_text())
        got = manifest["layers"][0]["digest"]
        if got != image.layer_digest:
            raise RuntimeError(f"{target.name}: pulled layer {got}, pushed {image.layer_digest}")
        shutil.rmtree(dest)
    return Transfer(target.name, run_no, direction, round(seconds, 3),
                    round(image.layer_bytes / MIB / seconds, 1), round(client, 2),
                    round(front, 2), round(registry, 2),
                    round(max(busy - client - front - registry, 0.0), 2))


def summarise(transfers: list[Transfer], layer_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for direction in ("push", "pull"):
        seconds = [t.seconds for t in transfers if t.direction == direction]
        if not seconds:
            continue
        median = statistics.median(seconds)
        mine = [t for t in transfers if t.direction == direction]
        out[f"{direction}_s_median"] = round(median, 3)
        out[f"{direction}_s_all"] = seconds
        out[f"{direction}_mib_s"] = round(layer_bytes / MIB / median, 1)
        for field in ("skopeo_cpu_s", "front_cpu_s", "registry_cpu_s", "other_cpu_s"):
            out[f"{direction}_{field}_median"] = round(
                statistics.median(getattr(t, field) for t in mine), 2)
    return out


def per_run_ratios(transfers: list[Transfer], runs: int) -> dict[str, list[float]]:
    """lab / baseline_tls throughput within each run (the two ran seconds apart)."""
    seconds = {(t.target, t.run, t.direction): t.seconds for t in transfers}
    return {f"{d}_ratio_per_run": [round(seconds["baseline_tls", i, d] / seconds["lab", i, d], 3)
                                   for i in range(runs)] for d in ("push", "pull")}


# -- tokens ----------------------------------------------------------------------------------


def token_latency(server: LabServer, auth: tuple[str, str], count: int) -> list[float]:
    url = f"https://{server.registry}{TOKEN_PATH}"
    params = {"service": SERVICE, "scope": f"repository:{NAMESPACE}/x:pull,push"}
    timings: list[float] = []
    with lab_session(server, auth) as s:
        for i in range(count + 1):
            t0 = time.perf_counter()
            r = s.get(url, params=params, timeout=30)
            elapsed = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"token request: {r.status_code} {r.text[:200]}")
            granted = _granted(r.json()["token"])
            if granted != ["pull", "push"]:
                raise RuntimeError(f"token grants {granted}, expected pull and push")
            if i:  # the first one opens the TLS connection: not measured
                timings.append(elapsed)
    return timings


def _granted(token: str) -> list[str]:
    body = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return sorted(a for entry in claims["access"] for a in entry["actions"])


def latency_figures(prefix: str, values: list[float]) -> dict[str, float]:
    return {f"{prefix}_p50_ms": round(percentile(values, 0.50), 2),
            f"{prefix}_p99_ms": round(percentile(values, 0.99), 2),
            f"{prefix}_max_ms": round(max(values), 2)}


# -- diagnostic: one blob GET with curl --------------------------------------------------------


def curl_get(args: list[str], url: str, tries: int = 3) -> float:
    """Median MiB/s of ``tries`` GETs of ``url`` with curl (body to /dev/null)."""
    rates = []
    for _ in range(tries):
        out = run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w",
                   "%{size_download} %{time_total}", *args, url], timeout=300).stdout.split()
        rates.append(int(out[0]) / MIB / float(out[1]))
    return round(statistics.median(rates), 1)


def blob_get_diagnostic(server: LabServer, api_token: str, user: str, repository: str,
                        image: Image, tls: TlsRegistry, http: LocalRegistry) -> dict[str, float]:
    path = f"/v2/{repository}/blobs/{image.layer_digest}"
    with lab_session(server, (user, api_token)) as s:
        r = s.get(f"https://{server.registry}{TOKEN_PATH}", timeout=30,
                  params={"service": SERVICE, "scope": f"repository:{repository}:pull"})
        r.raise_for_status()
        bearer = ["-H", f"Authorization: Bearer {r.json()['token']}"]
    sock = server.state_dir / "run" / "registry" / "registry.sock"
    return {
        "lab_front_mib_s": curl_get(["--cacert", server.ca_file, *bearer],
                                    f"https://{server.registry}{path}"),
        "lab_distribution_socket_mib_s": curl_get(["--unix-socket", str(sock), *bearer],
                                                  f"http://localhost{path}"),
        "baseline_tls_mib_s": curl_get(["--cacert", str(tls.pki.ca_cert)],
                                       f"https://{tls.host}{path}"),
        "baseline_http_mib_s": curl_get([], f"http://{http.host}{path}"),
    }


# -- diagnostic: the requests of a small push, one by one ---------------------------------------


def small_push(base: str, verify: str, auth: tuple[str, str] | None, repository: str
               ) -> dict[str, float]:
    """Push a 1 KiB layer, its config and the manifest with the requests skopeo makes, over
    one keep-alive session; milliseconds per kind of request (summed over both blobs)."""
    steps: dict[str, float] = {}

    def step(name: str, method: str, url: str, expect: int, **kwargs: Any) -> requests.Response:
        t0 = time.perf_counter()
        r = s.request(method, url if url.startswith("http") else base + url, timeout=30,
                      **kwargs)
        steps[name] = steps.get(name, 0.0) + (time.perf_counter() - t0) * 1000
        if r.status_code != expect:
            raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:200]}")
        return r

    with requests.Session() as s:
        s.trust_env = False
        s.verify = verify
        step("GET /v2/ (new connection)", "GET", "/v2/", 401 if auth else 200)
        if auth:
            r = step("token", "GET", TOKEN_PATH, 200, auth=auth, params={
                "service": SERVICE, "scope": f"repository:{repository}:pull,push"})
            s.headers["Authorization"] = f"Bearer {r.json()['token']}"
        layer = os.urandom(1024)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        descriptors = []
        for blob in (layer, config):
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            descriptors.append({"digest": digest, "size": len(blob)})
            step("HEAD blob", "HEAD", f"/v2/{repository}/blobs/{digest}", 404)
            r = step("POST upload", "POST", f"/v2/{repository}/blobs/uploads/", 202)
            r = step("PATCH upload", "PATCH", r.headers["Location"], 202, data=blob,
                     headers={"Content-Type": "application/octet-stream"})
            step("PUT upload ?digest", "PUT", r.headers["Location"], 201,
                 params={"digest": digest})
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, **descriptors[1]},
                               "layers": [{"mediaType": OCI_LAYER_GZIP, **descriptors[0]}]})
        step("PUT manifest (new repository)", "PUT", f"/v2/{repository}/manifests/1", 201,
             data=manifest, headers={"Content-Type": OCI_MANIFEST})
    return steps


def small_push_diagnostic(server: LabServer, auth: tuple[str, str], tls: TlsRegistry,
                          pushes: int = 7) -> dict[str, dict[str, float]]:
    out = {}
    for name, base, verify, creds in (
            ("lab", f"https://{server.registry}", server.ca_file, auth),
            ("baseline_tls", f"https://{tls.host}", str(tls.pki.ca_cert), None)):
        runs = [small_push(base, verify, creds, f"{NAMESPACE}/small-{i}") for i in range(pushes)]
        medians = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
        out[name] = {**medians, "total": round(sum(medians.values()), 1)}
    return out


# -- main ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "skopeo": run(["skopeo", "--version"]).stdout.strip(),
            "docker_registry": run(["docker-registry", "--version"]).stdout.strip(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="push/pull rounds (default 3)")
    parser.add_argument("--tokens", type=int, default=200,
                        help="token requests per credential kind (default 200)")
    parser.add_argument("--size-mib", type=int, default=100,
                        help="random bytes in the image's layer, MiB (default 100)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.tokens < 1 or args.size_mib < 1:
        parser.error("--runs, --tokens and --size-mib must be positive")

    host = machine()
    work = Path(tempfile.mkdtemp(prefix="pacific-bench-registry-", dir="/var/tmp"))
    result: dict[str, Any] = {}
    try:
        with contextlib.ExitStack() as stack:
            note("[lab] starting the host service")
            server = stack.enter_context(lab_service(work))
            assert server.proc is not None
            user, password = server.admin_credentials
            api_token = str(server.login(user, password)["token"])
            with requests.Session() as s:
                s.trust_env = False
                s.post(f"{server.url}/api/v1/namespaces", verify=server.ca_file, timeout=30,
                       headers={"Authorization": f"Bearer {server.admin_token()}"},
                       json={"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": NAMESPACE}}).raise_for_status()
            lab_certs = work / "lab-certs"
            lab_certs.mkdir()
            shutil.copy(server.ca_file, lab_certs / "ca.crt")

            note("[baseline] starting Distribution with TLS and with plain HTTP")
            tls = TlsRegistry(work / "baseline-tls")
            stack.callback(tls.stop)
            tls.start()
            tls_certs = work / "tls-certs"
            tls_certs.mkdir()
            shutil.copy(tls.pki.ca_cert, tls_certs / "ca.crt")
            (work / "baseline-http").mkdir()
            http = stack.enter_context(LocalRegistry(auth="none", workdir=work / "baseline-http"))
            assert tls.proc is not None and http._proc is not None  # its pid, for CPU

            registry_pid = child_named(server.proc.pid, "docker-registry")
            if registry_pid is None:
                raise RuntimeError("the host service runs no docker-registry: "
                                   + server.log_tail())
            targets = [
                Target("lab", server.registry, [f"cert-dir={lab_certs}"],
                       f"{user}:{api_token}", server.proc.pid, registry_pid),
                Target("baseline_tls", tls.host, [f"cert-dir={tls_certs}"], None,
                       tls.proc.pid, tls.proc.pid),
                Target("baseline_http", http.host, ["tls-verify=false"], None,
                       http._proc.pid, http._proc.pid),
            ]

            transfers: list[Transfer] = []
            image: Image | None = None
            for i in range(args.runs):
                if image is not None:
                    shutil.rmtree(image.layout)
                note(f"run {i + 1}/{args.runs}: making a {args.size_mib} MiB image")
                image = make_image(work / f"image-{i}", args.size_mib * MIB)
                order = targets[i % len(targets):] + targets[:i % len(targets)]
                repository = f"{NAMESPACE}/big-{i}"
                for target in order:
                    for direction in ("push", "pull"):
                        t = timed_copy(target, direction, i, image, work, repository)
                        note(f"run {i + 1}: {target.name:13} {direction}: {t.seconds:6.2f} s "
                             f"{t.mib_s:7.1f} MiB/s  (skopeo {t.skopeo_cpu_s} s CPU, front "
                             f"{t.front_cpu_s} s, Distribution {t.registry_cpu_s} s, "
                             f"rest of the machine {t.other_cpu_s} s)")
                        transfers.append(t)
            assert image is not None

            note(f"tokens: {args.tokens} with an API token, {args.tokens} with the password")
            with_token = token_latency(server, (user, api_token), args.tokens)
            with_password = token_latency(server, (user, password), args.tokens)

            note("diagnostic: one blob GET with curl from each registry")
            diagnostic = blob_get_diagnostic(server, api_token, user,
                                             f"{NAMESPACE}/big-{args.runs - 1}", image, tls,
                                             http)
            note("diagnostic: the requests of a small push, lab and baseline_tls")
            steps = small_push_diagnostic(server, (user, api_token), tls)

            per_target = {t.name: summarise([x for x in transfers if x.target == t.name],
                                            image.layer_bytes) for t in targets}
            lab, base, plain = (per_target[n] for n in ("lab", "baseline_tls", "baseline_http"))
            result = {
                "command": shlex.join(["python", "benchmarks/registry.py",
                                       *(sys.argv[1:] if argv is None else argv)]),
                "machine": {**host, "load_average_at_end":
                            [round(x, 2) for x in os.getloadavg()]},
                "runs": args.runs,
                "image": {"layer_bytes": image.layer_bytes, "random_bytes": args.size_mib * MIB,
                          "layer": "one tar of random bytes, gzip level 0 (stored)",
                          "skopeo": " ".join(SKOPEO)},
                "lab_credentials": "admin user + API token (what lab registry login writes)",
                "ratio_baseline": "baseline_tls (Distribution, no auth, TLS by Distribution)",
                "goal": GOAL,
                "push_ratio": round(lab["push_mib_s"] / base["push_mib_s"], 3),
                "pull_ratio": round(lab["pull_mib_s"] / base["pull_mib_s"], 3),
                "push_ratio_vs_http": round(lab["push_mib_s"] / plain["push_mib_s"], 3),
                "pull_ratio_vs_http": round(lab["pull_mib_s"] / plain["pull_mib_s"], 3),
                **per_run_ratios(transfers, args.runs),
                "targets": per_target,
                "token_requests": args.tokens,
                **latency_figures("token", with_token),
                **latency_figures("token_password", with_password),
                "diagnostic_blob_get_curl": diagnostic,
                "diagnostic_small_push_ms": steps,
                "transfers": [asdict(t) for t in transfers],
                "total_seconds": round(time.monotonic() - _T0, 1),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
