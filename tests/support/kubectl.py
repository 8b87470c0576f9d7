"""The real kubectl binaries the API is checked against."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CACHE_DIR = Path(os.environ.get("LAB_CACHE_DIR", "/var/cache/pacific-lab"))
SDK = Path("/usr/lib/google-cloud-sdk/bin")


def kubectl_binaries() -> list[tuple[str, Path]]:
    """(label, path) for every kubectl this suite must pass with.

    Missing binaries are not skipped: `lab test` installs them (test-deps.yml),
    and a missing one fails the test that needs it."""
    found = [("1.20", CACHE_DIR / "kubectl-1.20" / "usr" / "bin" / "kubectl"),
             ("system", Path("/usr/bin/kubectl"))]
    for minor in (27, 29, 31, 33):
        found.append((f"1.{minor}", SDK / f"kubectl.1.{minor}"))
    return found


@dataclass
class Kubectl:
    binary: Path
    kubeconfig: Path
    cache_dir: Path

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(KUBECONFIG=str(self.kubeconfig), KUBECACHEDIR=str(self.cache_dir),
                   HOME=str(self.cache_dir))
        return env

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert self.binary.exists(), f"{self.binary} is missing: run `./lab test` to install it"
        proc = subprocess.run([str(self.binary), *args], input=input, capture_output=True,
                              text=True, env=self.env(), timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} -> rc {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def apply_objects(self, objects: list[dict[str, Any]], path: Path
                      ) -> subprocess.CompletedProcess[str]:
        """``kubectl apply -f`` of ``objects``, written to ``path`` as one YAML stream."""
        path.write_text(yaml.safe_dump_all(objects))
        return self.run("apply", "-f", str(path))

    def start(self, *args: str) -> Background:
        proc = subprocess.Popen([str(self.binary), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env())
        return Background(proc)

    def as_user(self, kubeconfig: Path) -> Kubectl:
        return Kubectl(self.binary, kubeconfig, self.cache_dir)


class Background:
    """A kubectl left running (get -w, delete waiting on a finalizer)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, predicate, timeout: float = 30) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if predicate(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no matching line in {timeout}s; got: {self.lines}")

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float = 30) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
