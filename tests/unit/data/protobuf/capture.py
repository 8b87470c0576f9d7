"""Capture the request bodies real kubectl binaries send (the tool behind the fixtures here).

    .venv/bin/python tests/unit/data/protobuf/capture.py regenerate
    .venv/bin/python tests/unit/data/protobuf/capture.py run OUTDIR KUBECTL NAME -- ARGS... [;; ...]

A tiny HTTPS server on loopback (self-signed certificate made with
``cryptography``) answers legacy discovery for the built-in kinds, returns a few
canned objects for the GETs kubectl makes first (node ``n1``, pod ``x/p``) and
records every POST/PUT/PATCH/DELETE. ``regenerate`` runs every case of ``CASES``
with kubectl 1.33 (which sends built-in kinds as Kubernetes protobuf) and with
kubectl 1.31 (the last minor that still sends JSON for them), and writes

* ``<name>.pb``   -- the body kubectl 1.33 sent,
* ``<name>.json`` -- the body kubectl 1.31 sent for the same command, i.e. what
  decoding the ``.pb`` must give,
* ``index.json``  -- per case: the kubectl arguments, method, URL and content
  types of both versions, and the commands that send JSON even in 1.33.
"""

from __future__ import annotations

import datetime
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
SDK = Path("/usr/lib/google-cloud-sdk/bin")
PROTOBUF_KUBECTL = SDK / "kubectl.1.33"
JSON_KUBECTL = SDK / "kubectl.1.31"

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

RESOURCES: dict[str, list[tuple[str, str, str, bool]]] = {
    # group/version -> (plural, singular, kind, namespaced)
    "v1": [("namespaces", "namespace", "Namespace", False),
           ("configmaps", "configmap", "ConfigMap", True),
           ("secrets", "secret", "Secret", True),
           ("resourcequotas", "resourcequota", "ResourceQuota", True),
           ("events", "event", "Event", True),
           ("nodes", "node", "Node", False),
           ("pods", "pod", "Pod", True),
           ("services", "service", "Service", True),
           ("serviceaccounts", "serviceaccount", "ServiceAccount", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "role", "Role", True),
        ("clusterroles", "clusterrole", "ClusterRole", False),
        ("rolebindings", "rolebinding", "RoleBinding", True),
        ("clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False)],
    "authorization.k8s.io/v1": [
        ("selfsubjectaccessreviews", "selfsubjectaccessreview", "SelfSubjectAccessReview", False),
        ("selfsubjectrulesreviews", "selfsubjectrulesreview", "SelfSubjectRulesReview", False)],
    "networking.k8s.io/v1": [("networkpolicies", "networkpolicy", "NetworkPolicy", True)],
    "apps/v1": [("deployments", "deployment", "Deployment", True)],
    "authentication.k8s.io/v1": [("selfsubjectreviews", "selfsubjectreview", "SelfSubjectReview", False)],
    "batch/v1": [("jobs", "job", "Job", True), ("cronjobs", "cronjob", "CronJob", True)],
    "policy/v1": [("poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", True)],
    "scheduling.k8s.io/v1": [("priorityclasses", "priorityclass", "PriorityClass", False)],
}


#: The pod ``kubectl debug p --copy-to=...`` copies: exercises most of PodSpec.
RICH_POD: dict[str, Any] = {
    "kind": "Pod", "apiVersion": "v1",
    "metadata": {"name": "p", "namespace": "x", "resourceVersion": "1",
                 "uid": "0d6ee1a2-3c1b-4f5e-9a51-8e3f2b7c9d10",
                 "labels": {"app": "p", "tier": "web"},
                 "annotations": {"note": "hello", "empty": ""}},
    "spec": {
        "initContainers": [{"name": "init", "image": "busybox", "command": ["true"],
                            "restartPolicy": "Always"}],
        "containers": [{
            "name": "c", "image": "busybox", "command": ["sleep"], "args": ["3600"],
            "workingDir": "/work", "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                      {"containerPort": 53, "protocol": "UDP", "hostPort": 5353}],
            "env": [{"name": "A", "value": "1"}, {"name": "EMPTY"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1",
                                                               "fieldPath": "metadata.name"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu",
                                                                       "divisor": "1m"}}},
                    {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm1", "key": "k",
                                                                    "optional": False}}},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "pw"}}}],
            "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "cm1"}},
                        {"secretRef": {"name": "s1", "optional": True}}],
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                             {"name": "sec", "mountPath": "/etc/sec", "subPath": "pw"}],
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"},
                          "requests": {"cpu": "100m", "memory": "32Mi"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP",
                                          "httpHeaders": [{"name": "X-A", "value": "b"}]},
                              "initialDelaySeconds": 3, "periodSeconds": 10, "failureThreshold": 3},
            "readinessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 2},
            "startupProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "successThreshold": 1},
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "sleep 1"]}},
                          "postStart": {"httpGet": {"port": 8080, "path": "/started"}}},
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": True,
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "stdin": True, "tty": True}],
        "volumes": [{"name": "cfg", "configMap": {"name": "cm1", "defaultMode": 420,
                                                  "items": [{"key": "k", "path": "k.txt",
                                                             "mode": 256}]}},
                    {"name": "sec", "secret": {"secretName": "s1", "optional": False}},
                    {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "pvc1",
                                                                "readOnly": True}},
                    {"name": "host", "hostPath": {"path": "/var/log", "type": "Directory"}},
                    {"name": "info", "downwardAPI": {"items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                    {"name": "proj", "projected": {"defaultMode": 292, "sources": [
                        {"serviceAccountToken": {"audience": "api", "expirationSeconds": 3600,
                                                 "path": "token"}},
                        {"configMap": {"name": "cm1"}}]}}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 0,
        "activeDeadlineSeconds": 600, "dnsPolicy": "ClusterFirst",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "serviceAccountName": "sa", "automountServiceAccountToken": False,
        "securityContext": {"fsGroup": 2000, "runAsGroup": 3000, "supplementalGroups": [4000, 5000],
                            "sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]},
        "imagePullSecrets": [{"name": "reg"}],
        "hostname": "h", "subdomain": "sub", "schedulerName": "default-scheduler",
        "priorityClassName": "low", "priority": -5, "enableServiceLinks": False,
        "preemptionPolicy": "Never",
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 10, "preference": {"matchExpressions": [
                        {"key": "disk", "operator": "Exists"}]}}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                   "labelSelector": {"matchLabels": {"app": "p"}}}}]}},
        "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute",
                         "tolerationSeconds": 30},
                        {"operator": "Exists"}],
        "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["a.local", "b.local"]}],
        "dnsConfig": {"nameservers": ["10.0.0.10"], "searches": ["svc.local"],
                      "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]},
        "readinessGates": [{"conditionType": "example.com/ready"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                       "whenUnsatisfiable": "DoNotSchedule",
                                       "labelSelector": {"matchLabels": {"app": "p"}},
                                       "minDomains": 2}],
        "os": {"name": "linux"},
        "schedulingGates": [{"name": "example.com/gate"}]},
}


def _resource_list(gv: str, eviction: bool) -> dict[str, Any]:
    resources = [{"name": p, "singularName": s, "namespaced": ns, "kind": k,
                  "verbs": ["create"] if "review" in p else VERBS}
                 for p, s, k, ns in RESOURCES[gv]]
    if gv == "v1":
        resources.append({"name": "serviceaccounts/token", "singularName": "", "namespaced": True,
                          "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest",
                          "verbs": ["create"]})
        if eviction:
            resources.append({"name": "pods/eviction", "singularName": "", "namespaced": True,
                              "group": "policy", "version": "v1", "kind": "Eviction",
                              "verbs": ["create"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources}


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capture")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Request:
    method: str
    path: str
    content_type: str | None
    body: bytes


def _handler(server: CaptureServer) -> type[BaseHTTPRequestHandler]:
    kinds = {p: (gv, k) for gv in RESOURCES for p, _, k, _ in RESOURCES[gv]}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/api":
                return self._send(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": []})
            if path == "/apis":
                groups = []
                for gv in RESOURCES:
                    if "/" in gv:
                        group, version = gv.split("/")
                        entry = {"groupVersion": gv, "version": version}
                        groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
                return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
            if path == "/api/v1":
                return self._send(200, _resource_list("v1", server.eviction))
            if path.startswith("/apis/") and path[len("/apis/"):] in RESOURCES:
                return self._send(200, _resource_list(path[len("/apis/"):], False))
            if path == "/api/v1/nodes/n1":
                return self._send(200, {"kind": "Node", "apiVersion": "v1",
                                        "metadata": {"name": "n1", "resourceVersion": "1"},
                                        "spec": {"unschedulable": True}})
            if path == "/api/v1/namespaces/x/pods/p":
                return self._send(200, RICH_POD)
            if path == "/api/v1/pods":  # kubectl drain n1 lists the node's pods
                pod = {"kind": "Pod", "apiVersion": "v1",
                       "metadata": {"name": "p", "namespace": "x", "resourceVersion": "1"},
                       "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}
                return self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": "1"}, "items": [pod]})
            return self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404, "message": "not found"})

        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with server.lock:
                server.requests.append(Request(self.command, self.path,
                                               self.headers.get("Content-Type"), body))
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            plural = parts[-1] if self.command == "POST" else parts[-2]
            gv, kind = kinds.get(plural, ("v1", "Status"))
            obj: dict[str, Any] = {"kind": kind, "apiVersion": gv,
                                   "metadata": {"name": "captured", "uid": "u1", "resourceVersion": "1"}}
            if kind == "Pod":
                obj["spec"] = {"containers": [{"name": "debugger", "image": "busybox"}]}
            elif kind == "SelfSubjectAccessReview":
                obj["status"] = {"allowed": True}
            elif kind == "SelfSubjectRulesReview":
                obj["status"] = {"resourceRules": [], "nonResourceRules": [], "incomplete": False}
            elif parts[-1] == "token":
                obj = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                       "metadata": {"name": parts[-2]},
                       "spec": {"audiences": ["a"]},
                       "status": {"token": "t0k3n", "expirationTimestamp": "2030-01-01T00:00:00Z"}}
            self._send(201 if self.command == "POST" else 200, obj)

        do_POST = do_PUT = do_DELETE = do_PATCH = _record

    return Handler


class CaptureServer:
    """The recording HTTPS server plus a kubeconfig pointing at it."""

    def __init__(self, workdir: Path, eviction: bool = False) -> None:
        self.workdir = workdir
        self.eviction = eviction
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        cert, key = _self_signed(workdir)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {
                "server": f"https://127.0.0.1:{self.httpd.server_address[1]}",
                "insecure-skip-tls-verify": True}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))

    def __enter__(self) -> CaptureServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def run(self, kubectl: Path | str, args: list[str]) -> tuple[subprocess.CompletedProcess[str],
                                                                 list[Request]]:
        """Run one kubectl command; return it and the requests it made."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(KUBECONFIG=str(self.kubeconfig), HOME=str(self.workdir),
                   KUBECACHEDIR=str(self.workdir / "cache"))
        with self.lock:
            before = len(self.requests)
        proc = subprocess.run([str(kubectl), *args], capture_output=True, text=True, env=env,
                              timeout=60, cwd=self.workdir)
        with self.lock:
            return proc, self.requests[before:]


@dataclass
class Case:
    name: str
    args: list[str]
    #: Field numbers from the object down to an embedded PodTemplateSpec, for kinds decode()
    #: does not support but whose pod template the tests still check.
    template: list[int] = field(default_factory=list)


#: Every file a case refers to is created in the working directory first.
FILES = {"bin.dat": bytes(range(256)) * 2, "env.txt": b"K1=v1\nK2=v2\n",
         "role.yaml": b"""apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: rr, namespace: x}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get]
"""}

CASES = [
    Case("namespace", ["create", "namespace", "ns1"]),
    Case("namespace-saveconfig", ["create", "namespace", "ns2", "--save-config"]),
    Case("configmap", ["create", "configmap", "cm1", "-n", "x", "--from-literal=a=1",
                       "--from-literal=b=two"]),
    Case("configmap-binary", ["create", "configmap", "cmb", "-n", "x", "--from-file=blob=bin.dat",
                              "--from-literal=plain=text"]),
    Case("configmap-envfile", ["create", "configmap", "cme", "-n", "x", "--from-env-file=env.txt"]),
    Case("secret", ["create", "secret", "generic", "s1", "-n", "x", "--from-literal=user=admin",
                    "--from-literal=pw=s3cr=t"]),
    Case("secret-binary", ["create", "secret", "generic", "sb", "-n", "x", "--from-file=blob=bin.dat",
                           "--type=example.com/custom"]),
    Case("secret-docker-registry", ["create", "secret", "docker-registry", "reg", "-n", "x",
                                    "--docker-server=r.example", "--docker-username=u",
                                    "--docker-password=p"]),
    Case("quota", ["create", "quota", "q", "-n", "x", "--hard=cpu=1,count/pods=2"]),
    Case("quota-scopes", ["create", "quota", "qs", "-n", "x", "--hard=pods=5",
                          "--scopes=BestEffort,NotTerminating"]),
    Case("serviceaccount", ["create", "serviceaccount", "sa", "-n", "x"]),
    Case("role", ["create", "role", "r1", "-n", "x", "--verb=get,list", "--resource=pods,configmaps",
                  "--resource-name=a"]),
    Case("rolebinding", ["create", "rolebinding", "rb1", "-n", "x", "--role=r1", "--user=alice",
                         "--group=devs", "--serviceaccount=x:sa"]),
    Case("rolebinding-clusterrole", ["create", "rolebinding", "rbv", "-n", "x", "--clusterrole=view",
                                     "--group=g1"]),
    Case("clusterrole", ["create", "clusterrole", "cr1", "--verb=get", "--resource=nodes",
                         "--non-resource-url=/healthz"]),
    Case("clusterrole-aggregate", ["create", "clusterrole", "agg",
                                   "--aggregation-rule=rbac.example.com/aggregate-to-monitoring=true"]),
    Case("clusterrolebinding", ["create", "clusterrolebinding", "crb1", "--clusterrole=cr1",
                                "--user=bob"]),
    Case("reconcile", ["auth", "reconcile", "-f", "role.yaml"]),
    Case("ssar", ["auth", "can-i", "create", "pods", "-n", "x"]),
    Case("ssar-subresource", ["auth", "can-i", "get", "pods/log", "-n", "x", "--subresource=log"]),
    Case("ssar-group", ["auth", "can-i", "list", "deployments.apps", "-n", "x"]),
    Case("ssar-all", ["auth", "can-i", "*", "*", "--all-namespaces"]),
    Case("ssar-nonresource", ["auth", "can-i", "get", "/healthz"]),
    Case("ssrr", ["auth", "can-i", "--list", "-n", "x"]),
    Case("whoami", ["auth", "whoami"]),
    Case("token", ["create", "token", "sa", "-n", "x"]),
    Case("token-bound", ["create", "token", "sa", "-n", "x", "--audience=a1", "--audience=a2",
                         "--duration=10m", "--bound-object-kind=Pod", "--bound-object-name=p",
                         "--bound-object-uid=123"]),
    Case("service", ["create", "service", "clusterip", "s", "-n", "x", "--tcp=80:8080"]),
    Case("service-headless", ["create", "service", "clusterip", "hl", "-n", "x", "--clusterip=None"]),
    Case("service-nodeport", ["create", "service", "nodeport", "np", "-n", "x", "--tcp=80:8080",
                              "--node-port=30080"]),
    Case("service-lb", ["create", "service", "loadbalancer", "lb", "-n", "x", "--tcp=443:https"]),
    Case("service-externalname", ["create", "service", "externalname", "en", "-n", "x",
                                  "--external-name=example.com"]),
    Case("pod-debug-node", ["debug", "node/n1", "--image=busybox", "--profile=general", "--",
                            "sh", "-c", "true"]),
    Case("pod-debug-sysadmin", ["debug", "node/n1", "--image=busybox", "--profile=sysadmin"]),
    Case("pod-copy", ["debug", "p", "-n", "x", "--copy-to=p4", "--set-image=*=busybox:1.36",
                      "--keep-annotations", "--keep-labels", "--keep-liveness", "--keep-readiness",
                      "--keep-startup", "--profile=general"]),
    Case("drain", ["drain", "n1", "--force", "--timeout=3s", "--grace-period=7"]),
    Case("drain-nograce", ["drain", "n1", "--force", "--timeout=3s"]),
    # Kinds decode() does not support; their pod templates are still checked.
    Case("deployment", ["create", "deployment", "dd", "-n", "x", "--image=nginx:1.27", "--port=80",
                        "--replicas=3", "--", "sh", "-c", "echo hi"], template=[2, 3]),
    Case("job", ["create", "job", "j", "-n", "x", "--image=busybox", "--", "sh", "-c", "echo hi"],
         template=[2, 6]),
    Case("cronjob", ["create", "cronjob", "cj", "-n", "x", "--image=busybox",
                     "--schedule=*/1 * * * *", "--", "date"], template=[2, 5, 2, 6]),
    Case("priorityclass", ["create", "priorityclass", "pc1", "--value=10"]),
    # Commands that send JSON even in kubectl 1.33: recorded in index.json only.
    Case("run", ["run", "p", "-n", "x", "--image=busybox", "--env=A=1", "--port=80", "--labels=app=p",
                 "--", "sh", "-c", "echo hi"]),
    Case("delete", ["delete", "pod", "p", "-n", "x", "--grace-period=5", "--wait=false"]),
    Case("label", ["label", "node", "n1", "a=b"]),
    Case("uncordon", ["uncordon", "n1"]),
]


def _version(kubectl: Path) -> str:
    out = subprocess.run([str(kubectl), "version", "--client", "-o", "json"], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["clientVersion"]["gitVersion"]


def _capture_all(kubectl: Path) -> dict[str, list[Request]]:
    with tempfile.TemporaryDirectory() as tmpdir:
        work = Path(tmpdir)
        for name, data in FILES.items():
            (work / name).write_bytes(data)
        with CaptureServer(work) as server:
            return {case.name: server.run(kubectl, case.args)[1] for case in CASES}


def _meta(req: Request) -> dict[str, Any]:
    return {"method": req.method, "path": req.path, "content_type": req.content_type}


def regenerate(outdir: Path = HERE) -> None:
    """Rewrite the fixtures: *.pb from kubectl 1.33, *.json from kubectl 1.31, index.json."""
    proto, plain = _capture_all(PROTOBUF_KUBECTL), _capture_all(JSON_KUBECTL)
    index: dict[str, Any] = {"protobuf_kubectl": _version(PROTOBUF_KUBECTL),
                             "json_kubectl": _version(JSON_KUBECTL), "cases": {}, "json_only": {}}
    for old in [*outdir.glob("*.pb"), *outdir.glob("*.json")]:
        old.unlink()
    for case in CASES:
        reqs, json_reqs = proto[case.name], plain[case.name]
        assert len(reqs) == len(json_reqs), case.name
        for i, (req, json_req) in enumerate(zip(reqs, json_reqs, strict=True)):
            name = case.name if len(reqs) == 1 else f"{case.name}-{i + 1}"
            if not req.body.startswith(b"k8s\x00"):
                index["json_only"][name] = {"args": case.args, **_meta(req)}
                continue
            expected = json.loads(json_req.body)
            if expected.get("metadata", {}).get("name", "").startswith("node-debugger-"):
                # kubectl makes up a random suffix: take the one the protobuf body carries
                expected["metadata"]["name"] = _pod_name(req.body)
            (outdir / f"{name}.pb").write_bytes(req.body)
            (outdir / f"{name}.json").write_text(json.dumps(expected, indent=2) + "\n")
            entry: dict[str, Any] = {"args": case.args, **_meta(req),
                                     "json_content_type": json_req.content_type}
            if case.template:
                entry["template"] = case.template
            index["cases"][name] = entry
    (outdir / "index.json").write_text(json.dumps(index, indent=1) + "\n")


def _pod_name(body: bytes) -> str:
    """metadata.name of a pod in a protobuf body, without the decoder under test."""
    from appliance.api.protobuf import iter_fields  # the wire reader only

    def first(data: Any, number: int) -> Any:
        return next((v for n, _, v in iter_fields(data) if n == number), b"")

    return bytes(first(first(first(body[4:], 2), 1), 1)).decode()


def main(argv: list[str]) -> int:
    if argv[:1] == ["regenerate"]:
        regenerate()
        return 0
    if argv[:1] != ["run"] or len(argv) < 3:
        print(__doc__)
        return 2
    outdir, kubectl, rest = Path(argv[1]), argv[2], argv[3:]
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        work = Path(tmpdir)
        for name, data in FILES.items():
            (work / name).write_bytes(data)
        with CaptureServer(work, eviction=bool(os.environ.get("CAPTURE_EVICTION"))) as server:
            while rest:
                end = rest.index(";;") if ";;" in rest else len(rest)
                name, sep, args = rest[0], rest[1], rest[2:end]
                assert sep == "--", "usage: NAME -- ARGS... [;; NAME -- ARGS...]"
                rest = rest[end + 1:]
                proc, reqs = server.run(kubectl, args)
                print(f"{name}: rc={proc.returncode} {proc.stdout.strip()} {proc.stderr.strip()}")
                for i, req in enumerate(reqs):
                    suffix = "" if i == 0 else f".{i}"
                    (outdir / f"{name}{suffix}.body").write_bytes(req.body)
                    (outdir / f"{name}{suffix}.meta.json").write_text(json.dumps(_meta(req)) + "\n")
                    print(f"   {req.method} {req.path} {req.content_type}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
