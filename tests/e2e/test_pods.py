"""vSphere Pods for real: every Pod in its own direct-kernel-boot micro-VM on libvirt
(TCG here), images pulled from a real registry on loopback, applied and read with the
real kubectl, on a namespace network (Open vSwitch).

What a user sees: pods that succeed and fail with their exit codes, restarts that
count, logs (also --previous and -f), events in describe, two pods sharing one cached
image, HTTP from one pod to another at its pod IP, 20 pods at once, deletion that
leaves nothing behind, and bad input reported with Kubernetes' reasons.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.agent.vmnames import pod_prefix
from appliance.network.config import NetworkConfig
from appliance.network.controllers import remove_host_network
from appliance.settings import load_settings
from tests.e2e.conftest import kubeconfig_for
from hypervisor.podvm.kernelbuild import build_pod_kernel, cached_pod_kernel
from tests.support.kubectl import Kubectl
from tests.support.ociimages import push_arm64_only, push_busybox, push_python3
from tests.support.registry import LocalRegistry, free_port
from tests.support.server import LabServer, address_offset
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

KUBECTL = Path("/usr/bin/kubectl")
POD_TIMEOUT = 240  # a pod VM starts in seconds; 20 at once under TCG on 2 cores take longer
POD_KERNEL_CACHE = Path("/var/cache/pacific-lab/pod-kernel")


@dataclass
class PodLab:
    server: LabServer
    kc: Kubectl
    ns: str
    busybox: str
    python3: str
    arm64: str
    private: LocalRegistry
    closed: str  # host:port of an allowed registry that does not answer

    def pod(self, name: str) -> dict[str, Any]:
        return json.loads(self.kc.run("get", "pod", name, "-o", "json").stdout)

    def phase(self, name: str) -> str:
        return (self.pod(name).get("status") or {}).get("phase", "")

    def wait_phase(self, name: str, *phases: str, timeout: float = POD_TIMEOUT
                   ) -> dict[str, Any]:
        wait_for(f"pod {name} to be {'/'.join(phases)}", lambda: self.phase(name) in phases,
                 timeout, 1, describe=lambda: self.describe(name))
        return self.pod(name)

    def describe(self, name: str) -> str:
        proc = self.kc.run("describe", "pod", name, check=False)
        return (proc.stdout + proc.stderr)[-3000:] + "\n" + self.server.log_tail(30)

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kc.run("apply", "-f", "-", input=yaml.safe_dump_all(objects))

    def domains(self) -> list[str]:
        out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                             capture_output=True, text=True, check=True).stdout.split()
        return [d for d in out if d.startswith(pod_prefix(self.server.state_dir))]


def pod(name: str, image: str, command: list[str], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "main", "image": image,
                                            "command": command}]}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body}


@pytest.fixture(scope="module")
def podlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodLab]:
    tag = "p" + "".join(random.choice(string.ascii_lowercase) for _ in range(2))
    octet = address_offset()
    base = Path(tempfile.mkdtemp(prefix=f"pacific-pods-{tag}-", dir="/var/tmp"))
    base.chmod(0o711)
    registry = LocalRegistry().start()
    private = LocalRegistry(auth="htpasswd").start()
    closed = f"127.0.0.1:{free_port()}"
    hosts = ",".join([registry.host, private.host, closed])
    env = {"LAB_CACHE_DIR": "/var/cache/pacific-lab", "LAB_NETWORK_ENABLED": "true",
           "LAB_NETWORK_TAG": tag, "LAB_NETWORK_BRIDGE": f"{tag}-int",
           "LAB_NETWORK_POOL_CIDR": f"198.18.{64 + octet}.0/24",
           "LAB_NETWORK_SUBNET_PREFIX": "26",
           "LAB_NETWORK_INGRESS_CIDR": f"198.18.{96 + octet}.0/26",
           "LAB_NETWORK_CLUSTER_IP_CIDR": f"198.18.{96 + octet}.64/26",
           "LAB_REGISTRIES_PRIVATE": hosts, "LAB_REGISTRIES_INSECURE": hosts}
    server = LabServer(base / "state", extra_env=env)
    settings = load_settings(environ={k: v for k, v in env.items() if k != "LAB_CACHE_DIR"},
                             state_dir=base / "state")
    config = NetworkConfig.from_settings(settings)
    ns = f"pods-{tag}"
    try:
        busybox = push_busybox(registry)
        python3 = push_python3(registry)
        arm64 = push_arm64_only(registry)
        push_busybox(private, "team/busybox", "1.36")
        # Every pod here boots the pod kernel: built beside the suite by `lab test` (this
        # waits for that build), or here when this module runs alone.
        build_pod_kernel(POD_KERNEL_CACHE)
        server.start()
        tmp = tmp_path_factory.mktemp("pods")
        kc = Kubectl(KUBECTL, kubeconfig_for(server, tmp, ns), tmp / "cache")
        kc.run("create", "namespace", ns)
        yield PodLab(server, kc, ns, busybox, python3, arm64, private, closed)
    finally:
        server.stop()
        print(server.log_tail(60))
        artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shutil.copy(server.log_path, artifacts / "pods-service.log")
        try:
            server.remove_leftovers()
            remove_host_network(settings, config)
        finally:
            registry.stop()
            private.stop()
            shutil.rmtree(base, ignore_errors=True)


def test_a_pod_prints_exits_0_and_kubectl_reads_its_logs(podlab: PodLab) -> None:
    podlab.apply(pod("hello", podlab.busybox, ["sh", "-c",
                                               "echo hello from $(hostname); echo to-stderr >&2;"
                                               " cat /etc/layer2; ls /etc; uname -r"],
                     restartPolicy="Never"))
    got = podlab.wait_phase("hello", "Succeeded", "Failed")
    cs = got["status"]["containerStatuses"][0]
    assert got["status"]["phase"] == "Succeeded", podlab.describe("hello")
    assert cs["state"]["terminated"]["exitCode"] == 0
    assert cs["state"]["terminated"]["reason"] == "Completed"
    logs = podlab.kc.run("logs", "hello").stdout
    assert "hello from hello" in logs and "to-stderr" in logs
    assert "deleted-by-layer2" not in logs  # the second layer's whiteout held
    kernel = cached_pod_kernel(POD_KERNEL_CACHE)
    assert kernel is not None and kernel.release in logs.split()  # the pod kernel, not Debian's
    assert f"pod VMs boot the pod kernel {kernel.release}" in podlab.server.log_path.read_text()
    wide = podlab.kc.run("get", "pods", "-o", "wide").stdout
    line = next(raw for raw in wide.splitlines() if raw.startswith("hello "))
    assert "Completed" in line and got["status"]["podIP"] in line
    assert got["spec"]["nodeName"] in line
    described = podlab.kc.run("describe", "pod", "hello").stdout
    for reason in ("Scheduled", "Pulling", "Created", "Started"):
        assert reason in described, described
    # A finished pod's VM is gone, and so are its disks.
    assert not podlab.domains() or all("hello" not in d for d in podlab.domains())


def test_a_failing_pod_ends_failed_with_its_exit_code(podlab: PodLab) -> None:
    podlab.apply(pod("fails", podlab.busybox, ["sh", "-c", "echo about to fail; exit 3"],
                     restartPolicy="Never"))
    got = podlab.wait_phase("fails", "Failed", "Succeeded")
    assert got["status"]["phase"] == "Failed"
    term = got["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    assert "about to fail" in podlab.kc.run("logs", "fails").stdout


def test_restart_policy_always_restarts_and_counts(podlab: PodLab) -> None:
    podlab.apply(pod("crashy", podlab.busybox,
                     ["sh", "-c", "echo run at $(date +%s); sleep 1; exit 1"]))

    def restarts() -> int:
        statuses = (podlab.pod("crashy").get("status") or {}).get("containerStatuses") or []
        return int(statuses[0].get("restartCount") or 0) if statuses else 0

    wait_for("crashy to restart twice", lambda: restarts() >= 2, POD_TIMEOUT, 2,
             describe=lambda: podlab.describe("crashy"))
    got = podlab.pod("crashy")
    assert got["status"]["phase"] == "Running"
    assert got["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 1
    assert "run at" in podlab.kc.run("logs", "crashy", "--previous").stdout
    assert "BackOff" in podlab.kc.run("describe", "pod", "crashy").stdout
    podlab.kc.run("delete", "pod", "crashy", "--wait=true", timeout=120)


def test_two_pods_share_one_cached_image_file(podlab: PodLab) -> None:
    for name in ("share-a", "share-b"):
        podlab.apply(pod(name, podlab.busybox, ["sleep", "300"]))
    for name in ("share-a", "share-b"):
        podlab.wait_phase(name, "Running")
    disks = []
    for dom in podlab.domains():
        if dom.endswith(("_share-a", "_share-b")):
            xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", dom],
                                 capture_output=True, text=True, check=True).stdout
            disks.append([line.strip() for line in xml.splitlines()
                          if ".erofs" in line])
    assert len(disks) == 2 and disks[0] == disks[1] and disks[0], disks
    images = list((podlab.server.state_dir / "pod-images" / "images").glob("*.erofs"))
    busybox_images = [p for p in images if any(p.name in line for line in disks[0])]
    assert len(busybox_images) == 1
    podlab.kc.run("delete", "pod", "share-a", "share-b", "--wait=true", timeout=120)


def test_http_from_one_pod_to_another_at_its_pod_ip(podlab: PodLab) -> None:
    podlab.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "site"},
         "data": {"index.html": "served from a configMap volume\n"}},
        pod("web", podlab.python3, ["python3", "-m", "http.server", "8080"],
            containers=[{"name": "main", "image": podlab.python3, "workingDir": "/srv/site",
                         "command": ["python3", "-m", "http.server", "8080"],
                         "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                         "volumeMounts": [{"name": "site", "mountPath": "/srv/site"}]}],
            volumes=[{"name": "site", "configMap": {"name": "site"}}]))
    web = podlab.wait_phase("web", "Running")
    ip = web["status"]["podIP"]
    podlab.apply(pod("client", podlab.busybox, ["sh", "-c",
                                                f"for i in $(seq 1 30); do wget -qO- http://{ip}:"
                                                "8080/ && exit 0; sleep 1; done; exit 1"],
                     restartPolicy="Never"))
    got = podlab.wait_phase("client", "Succeeded", "Failed")
    logs = podlab.kc.run("logs", "client").stdout
    assert got["status"]["phase"] == "Succeeded", podlab.describe("client")
    assert "served from a configMap volume" in logs
    assert '"GET / HTTP/1.1" 200' in podlab.kc.run("logs", "web").stdout
    podlab.kc.run("delete", "pod", "web", "client", "--wait=true", timeout=120)


def test_graceful_delete_sends_sigterm_then_kills(podlab: PodLab) -> None:
    podlab.apply(pod("polite", podlab.busybox, ["sh", "-c",
                                                "trap 'echo got TERM; exit 0' TERM; "
                                                "while true; do sleep 1; done"]),
                 pod("stubborn", podlab.busybox, ["sh", "-c",
                                                  "trap '' TERM; while true; do sleep 1; done"],
                     terminationGracePeriodSeconds=5))
    for name in ("polite", "stubborn"):
        podlab.wait_phase(name, "Running")
    started = time.monotonic()
    podlab.kc.run("delete", "pod", "polite", "--wait=true", timeout=120)
    polite = time.monotonic() - started
    started = time.monotonic()
    podlab.kc.run("delete", "pod", "stubborn", "--wait=true", timeout=120)
    stubborn = time.monotonic() - started
    # The polite one left when asked; the stubborn one was killed after its 5 s.
    assert polite < 25, polite
    assert 5 <= stubborn < 40, stubborn
    assert podlab.domains() == [] or not any(d.endswith(("_polite", "_stubborn"))
                                              for d in podlab.domains())


def test_kubectl_run_and_logs_follow(podlab: PodLab) -> None:
    podlab.kc.run("run", "ticker", f"--image={podlab.busybox}", "--restart=Never", "--",
                  "sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done")
    podlab.wait_phase("ticker", "Running", "Succeeded")
    followed = podlab.kc.run("logs", "-f", "ticker", timeout=120).stdout
    assert followed.split() == ["tick", "1", "tick", "2", "tick", "3"]
    assert podlab.wait_phase("ticker", "Succeeded")


@pytest.mark.parametrize("name, image, secret, reasons, message", [
    ("no-tag", "{busybox}-nope", None, ("ErrImagePull", "ImagePullBackOff"), "not found"),
    ("no-repo", "{registry}/demo/nothing:1.0", None, ("ErrImagePull", "ImagePullBackOff"),
     "not found"),
    ("unreachable", "{closed}/demo/busybox:1.36", None, ("ErrImagePull", "ImagePullBackOff"),
     ""),
    ("bad-creds", "{private}/team/busybox:1.36", "wrong", ("ErrImagePull",
                                                          "ImagePullBackOff"), ""),
    ("wrong-arch", "{arm64}", None, ("ErrImagePull", "ImagePullBackOff"), "arm64"),
    ("bad-name", "BusyBox:1.36", None, ("InvalidImageName",), "lowercase"),
])
def test_bad_images_get_kubernetes_reasons_and_no_vm(podlab: PodLab, name: str, image: str,
                                                     secret: str | None,
                                                     reasons: tuple[str, ...],
                                                     message: str) -> None:
    ref = image.format(busybox=podlab.busybox, registry=podlab.busybox.split("/")[0],
                       closed=podlab.closed, private=podlab.private.host, arm64=podlab.arm64)
    extra: dict[str, Any] = {"restartPolicy": "Never"}
    if secret:
        config = podlab.private.dockerconfigjson("tester", "not-the-password")
        podlab.kc.run("create", "secret", "generic", f"{name}-pull",
                      "--type=kubernetes.io/dockerconfigjson",
                      f"--from-literal=.dockerconfigjson={config.decode()}")
        extra["imagePullSecrets"] = [{"name": f"{name}-pull"}]
    podlab.apply(pod(name, ref, ["true"], **extra))

    def waiting() -> dict[str, Any]:
        statuses = (podlab.pod(name).get("status") or {}).get("containerStatuses") or []
        return ((statuses[0].get("state") or {}).get("waiting") or {}) if statuses else {}

    wait_for(f"{name} to report {reasons}", lambda: waiting().get("reason") in reasons, 120, 1,
             describe=lambda: podlab.describe(name))
    assert message.lower() in waiting().get("message", "").lower(), waiting()
    assert podlab.phase(name) == "Pending"
    assert not any(d.endswith(f"_{name}") for d in podlab.domains())
    podlab.kc.run("delete", "pod", name, "--wait=true", timeout=60)


def test_pods_pull_from_their_own_registry_project_with_no_secret(
        podlab: PodLab, tmp_path: Path) -> None:
    """The lab registry (issue 12): the namespace's project needs no pull secret; another
    namespace's project does, and without one the pod gets the registry's refusal."""
    server = podlab.server
    user, password = server.admin_credentials
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(Path(server.ca_file).read_bytes())
    image = f"{server.registry}/{podlab.ns}/busybox:1"
    subprocess.run(["skopeo", "copy", "--insecure-policy", "--quiet", "--src-tls-verify=false",
                    "--dest-cert-dir", str(certs), "--dest-creds", f"{user}:{password}",
                    f"docker://{podlab.busybox}", f"docker://{image}"],
                   check=True, timeout=300, capture_output=True)
    podlab.apply(pod("own-project", image, ["sh", "-c", "echo pulled from the lab registry"],
                     restartPolicy="Never"))
    got = podlab.wait_phase("own-project", "Succeeded", "Failed")
    assert got["status"]["phase"] == "Succeeded", podlab.describe("own-project")
    assert "pulled from the lab registry" in podlab.kc.run("logs", "own-project").stdout

    other = f"{podlab.ns}-other"
    podlab.kc.run("create", "namespace", other)
    try:
        podlab.kc.run("apply", "-n", other, "-f", "-", input=yaml.safe_dump(
            pod("no-secret", image, ["true"], restartPolicy="Never")))

        def waiting() -> dict[str, Any]:
            got = json.loads(podlab.kc.run("get", "pod", "no-secret", "-n", other, "-o",
                                           "json").stdout)
            statuses = (got.get("status") or {}).get("containerStatuses") or []
            return ((statuses[0].get("state") or {}).get("waiting") or {}) if statuses else {}

        wait_for("no-secret to fail its pull",
                 lambda: waiting().get("reason") in ("ErrImagePull", "ImagePullBackOff"), 120,
                 1, describe=lambda: podlab.kc.run("describe", "pod", "no-secret", "-n",
                                                   other, check=False).stdout)
        message = waiting().get("message", "")
        assert "no anonymous access" in message or "authentication required" in message, \
            message
        # with a pull secret of someone who may pull there, like any private registry
        config = json.dumps({"auths": {server.registry: {"auth": base64.b64encode(
            f"{user}:{password}".encode()).decode()}}})
        podlab.kc.run("create", "secret", "generic", "lab-pull", "-n", other,
                      "--type=kubernetes.io/dockerconfigjson",
                      f"--from-literal=.dockerconfigjson={config}")
        podlab.kc.run("apply", "-n", other, "-f", "-", input=yaml.safe_dump(
            pod("with-secret", image, ["sh", "-c", "echo pulled with a secret"],
                restartPolicy="Never", imagePullSecrets=[{"name": "lab-pull"}])))
        wait_for("with-secret to succeed", lambda: json.loads(podlab.kc.run(
            "get", "pod", "with-secret", "-n", other, "-o", "json").stdout).get(
            "status", {}).get("phase") in ("Succeeded", "Failed"), POD_TIMEOUT, 1)
        assert "pulled with a secret" in podlab.kc.run("logs", "with-secret", "-n",
                                                       other).stdout
    finally:
        podlab.kc.run("delete", "namespace", other, "--wait=true", timeout=180, check=False)


def test_a_command_that_does_not_exist(podlab: PodLab) -> None:
    podlab.apply(pod("nocmd", podlab.busybox, ["/no/such/program"], restartPolicy="Never"))
    got = podlab.wait_phase("nocmd", "Failed", "Succeeded")
    term = got["status"]["containerStatuses"][0]["state"]["terminated"]
    assert got["status"]["phase"] == "Failed"
    assert term["reason"] == "StartError" and term["exitCode"] == 128
    assert "/no/such/program" in term.get("message", "")


def _ovs_ports(bridge: str) -> set[str]:
    proc = subprocess.run(["ovs-vsctl", "list-ports", bridge], capture_output=True, text=True)
    return set(proc.stdout.split())


def test_twenty_pods_at_once_then_nothing_left(podlab: PodLab) -> None:
    names = [f"many-{i:02d}" for i in range(20)]
    bridge = podlab.server.extra_env["LAB_NETWORK_BRIDGE"]
    ports_before = _ovs_ports(bridge)
    links_before = set(subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                                      text=True, check=True).stdout.split("\n"))
    podlab.apply(*(pod(n, podlab.busybox, ["sh", "-c", "echo up; sleep 20"]) for n in names))

    def settled() -> bool:
        pods = json.loads(podlab.kc.run("get", "pods", "-l", "", "-o", "json").stdout)["items"]
        phases = {p["metadata"]["name"]: (p.get("status") or {}).get("phase") for p in pods}
        return all(phases.get(n) in ("Running", "Succeeded") for n in names)

    wait_for("20 pods Running or Succeeded", settled, 600, 3,
             describe=lambda: podlab.kc.run("get", "pods", "-o", "wide").stdout)
    podlab.kc.run("delete", "pod", *names, "--wait=true", "--grace-period=1", timeout=300)
    assert podlab.domains() == []
    pods_dir = podlab.server.state_dir / "pods"
    left = [p.name for p in pods_dir.iterdir()] if pods_dir.exists() else []
    remaining = json.loads(podlab.kc.run("get", "pods", "-o", "json").stdout)["items"]
    live_uids = {p["metadata"]["uid"] for p in remaining}
    assert [u for u in left if u not in live_uids] == []
    assert _ovs_ports(bridge) <= ports_before
    links_after = {line.split(":")[1].strip() for line in subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout.splitlines() if line.count(":") >= 2}
    links_known = {line.split(":")[1].strip() for line in links_before if line.count(":") >= 2}
    assert links_after <= links_known, links_after - links_known  # no tap left
