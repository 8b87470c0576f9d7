"""The host agent's pod reconciler: every Pod bound to this host runs in its own micro-VM.

One pass over a pod, in order (status is written at the end of every pass):

1. deleting: TERM to the pod VM's init, a kill when the grace period is over, then
   the pod's files, its network interface and the finalizer;
2. finished (Succeeded/Failed) and the VM gone: nothing more to do;
3. the images: pulled from their registries into the shared erofs cache
   (``ErrImagePull`` then ``ImagePullBackOff`` with Kubernetes' back-off);
   credentials from the pod's imagePullSecrets, else, for its own namespace's
   project on the lab registry, this node's identity (``system:node:<host>``
   with its API token; the registry lets a node pull a namespace's images only
   while a pod of that namespace is bound to it). A lab registry image is
   authorised at the registry with the pod's credentials at every start, even
   when it is cached: the cache is shared by every namespace, the projects are not;
4. the configuration (argv, environment, volumes), written to the pod's config
   disk (``CreateContainerConfigError`` when a ConfigMap or Secret is missing);
5. the scratch disk and the transient domain, booted directly from the shared
   pod kernel and initramfs;
6. observe: what the guest reported on its event channel gives the container
   statuses, restart counts and the phase; its output channel gives the logs.

A monitor thread tails the channels of every running pod VM (files QEMU writes),
so a pass is only needed when something changed. All per-pod files live in
``<state>/pods/<uid>/`` and are recreated from nothing but the Pod, so a crash
of the agent at any point converges on the next pass.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from appliance import errors, events
from appliance.agent.vmnames import domain_name, orphans, pod_prefix
from appliance.controllers.base import Controller, drop_finalizer, merge_diff
from appliance.controllers.scheduler import set_condition
from appliance.kinds.pods import POD_FINALIZER, terminal, vm_size
from appliance.kinds.registry import Obj
from appliance.pods import spec as podspec
from appliance.pods.logs import PodLogs
from appliance.registry import is_lab_registry, local_names
from appliance.registry.names import project_of
from appliance.resources import Ref, ResourceApi, get_or_none
from appliance.settings import Settings
from appliance.util.timefmt import now_rfc3339, parse_rfc3339
from hypervisor.domain import NicSpec
from hypervisor.inotify import Inotify
from hypervisor.libvirt_driver import HypervisorError, LibvirtDriver
from hypervisor.oci.auth import Credentials, credentials_for
from hypervisor.oci.cache import CachedImage, ImageCache
from hypervisor.oci.errors import ImagePullError
from hypervisor.oci.policy import RegistryPolicy
from hypervisor.oci.reference import ImageReference, parse_reference
from hypervisor.podvm import channel
from hypervisor.podvm.config import (
    ConfigError,
    Container,
    EmptyDirVolume,
    FileVolume,
    HostAlias,
    PodConfig,
    VolumeMount,
    write_config_disk,
)
from hypervisor.podvm.domain import PodVmSpec
from hypervisor.podvm.initramfs import PodKernel
from hypervisor.podvm.kernelbuild import kernel_for_pods
from hypervisor.podvm.runtime import PodVmRuntime
from hypervisor.podvm.scratch import create_scratch_disk

LOG = logging.getLogger(__name__)

SECRETS = Ref("", "v1", "secrets")
CONFIGMAPS = Ref("", "v1", "configmaps")
#: Kubernetes' image pull back-off: 10 s doubling to 300 s.
PULL_BACKOFF = (10.0, 300.0)
SCRATCH_DEFAULT = 2 * 2**30
#: The pod VMs' channels (event and output logs) are read when QEMU writes them (inotify);
#: this is how often every channel is read anyway (a safety net), and, where inotify is
#: missing, MONITOR_INTERVAL is how often they are all read instead.
MONITOR_RESCAN = 2.0
MONITOR_INTERVAL = 0.25


@dataclass
class ContainerRun:
    """One container as the guest reported it."""

    name: str
    restarts: int = 0
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    last: Obj | None = None  # lastState.terminated
    ever_started: bool = False
    waiting: tuple[str, str] | None = None  # (reason, message) while backing off
    finished: bool = False  # the guest will not run it again


@dataclass
class PodRun:
    """What this host knows about one pod's VM, rebuilt from its files after a restart."""

    uid: str
    key: tuple[str, str]
    dir: Path
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    events_at: int = 0  # bytes of the event channel applied
    output_at: int = 0  # bytes of the output channel sent to the logs
    done: bool = False
    term_sent: float | None = None
    pull_failures: int = 0
    next_pull: float = 0.0
    waiting: tuple[str, str] | None = None  # (reason, message) before any container runs
    guest_error: str = ""  # the pod VM could not set the pod up
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def started_marker(self) -> Path:
        return self.dir / "started"

    @property
    def vm_started(self) -> bool:
        return self.started_marker.exists()


class PodController(Controller):
    group, version, plural, name = "", "v1", "pods", "pod-agent"
    resync = 10.0  # how soon a pod VM that died behind our back is noticed
    workers = 4

    def __init__(self, api: ResourceApi, node_name: str, node_ip: str, settings: Settings,
                 accelerator: str, driver: LibvirtDriver, network_name: str, *,
                 ovs_datapath: str = "system", namespace_network: bool = False,
                 images: ImageCache | None = None, kernel: PodKernel | None = None,
                 node_token: str = "", lab_ca: Path | None = None) -> None:
        super().__init__(api)
        self.node_name = node_name
        self.node_ip = node_ip
        self.settings = settings
        self.accelerator = accelerator
        self.driver = driver
        self.runtime = PodVmRuntime(driver)
        self.network_name = network_name
        self.ovs_datapath = ovs_datapath
        self.namespace_network = namespace_network
        self.prefix = pod_prefix(settings.state_dir)
        self.logs = PodLogs(settings.pods_dir)
        # The lab registry's names on this host, learnt once (the policy's exceptions).
        self._lab_names = frozenset(local_names(settings)) if settings.registry_enabled \
            else frozenset()
        # Pods pull their own namespace's lab registry project as this node.
        self._node_credentials = (Credentials(f"system:node:{node_name}", node_token)
                                  if node_token else None)
        self.images = images or ImageCache(settings.pod_images_dir,
                                           registry_policy(settings, self._lab_names, lab_ca))
        self._kernel = kernel
        self._kernel_lock = threading.Lock()
        self._watcher: Inotify | None = None  # the monitor's, while it runs
        self._kernel_built = False  # pod VMs boot the pod kernel (kernelbuild), not Debian's
        self._runs: dict[str, PodRun] = {}
        self._runs_lock = threading.Lock()
        settings.pods_dir.mkdir(parents=True, exist_ok=True, mode=0o711)

    def wants(self, pod: Obj) -> bool:
        return (pod.get("spec") or {}).get("nodeName") == self.node_name

    def run(self, stop: threading.Event) -> None:
        threading.Thread(target=self._monitor, args=(stop,), name="pod-monitor",
                         daemon=True).start()
        super().run(stop)

    # -- the pass ------------------------------------------------------------------------

    def reconcile(self, pod: Obj) -> float | None:
        meta = pod["metadata"]
        run = self._run(pod)
        if meta.get("deletionTimestamp"):
            return self._delete(pod, run)
        dom = domain_name(pod, self.prefix)
        again: float | None = None
        if terminal(pod):
            if not self.runtime.running(dom):
                self._release(run)
            return None
        if not (pod.get("status") or {}).get("podIP"):
            return 1.0  # the scheduler gives it an address first
        running = self.runtime.running(dom)
        if not run.vm_started:
            again = self._start(pod, run, dom)
        elif not running and not run.done:
            self._poll(run)
            if not run.done:
                self._vm_lost(pod, run)
        self._poll(run)
        self._write_status(pod, run)
        if run.done and not self.runtime.running(dom):
            self._release(run)
        return again

    def _start(self, pod: Obj, run: PodRun, dom: str) -> float | None:
        """Images, configuration, disks and the domain; a waiting reason on the way."""
        if time.monotonic() < run.next_pull:
            return run.next_pull - time.monotonic()
        try:
            images = self._pull(pod, run)
        except ImagePullError as exc:
            run.pull_failures += 1
            delay = min(PULL_BACKOFF[0] * 2 ** (run.pull_failures - 1), PULL_BACKOFF[1])
            run.next_pull = time.monotonic() + delay
            run.waiting = (exc.reason, str(exc))
            events.record(self.api, pod, "Warning", "Failed", f"Failed to pull image: {exc}",
                          "kubelet")
            self._write_status(pod, run)
            run.waiting = ("ImagePullBackOff" if exc.reason == "ErrImagePull" else exc.reason,
                           f"Back-off pulling image: {exc}")
            return delay
        try:
            config, image_disks = self._config(pod, images)
        except (podspec.ConfigError, ConfigError) as exc:
            reason = getattr(exc, "reason", "CreateContainerConfigError")
            run.waiting = (reason, str(exc))
            events.record(self.api, pod, "Warning", "Failed", f"Error: {exc}", "kubelet")
            self._write_status(pod, run)
            return 10.0
        run.waiting = None
        spec = self._vm_spec(pod, run, dom, config, image_disks)
        self.runtime.start(spec)
        # The guest has read what it needs at boot; the pod's secrets do not stay on disk.
        spec.config.unlink(missing_ok=True)
        run.started_marker.touch(mode=0o600)
        if self._watcher is not None:
            self._watcher.wake()  # watch its channels from now on
        run.events_at = run.output_at = 0
        for c in (pod.get("spec") or {}).get("containers") or []:
            events.record(self.api, pod, "Normal", "Created", f"Created container {c['name']}",
                          "kubelet")
        LOG.info("[%s/%s] pod VM %s started", pod["metadata"]["namespace"],
                 pod["metadata"]["name"], dom)
        return None

    def _pull(self, pod: Obj, run: PodRun) -> dict[str, CachedImage]:
        out: dict[str, CachedImage] = {}
        for c in (pod.get("spec") or {}).get("containers") or []:
            image = c["image"]
            if image in out:
                continue
            ref = parse_reference(image)  # InvalidImageName for a bad one
            lab = self._on_lab_registry(ref.registry)
            creds = self._credentials(pod, ref, lab)
            cached = self.images.lookup(image)
            if cached is None or c.get("imagePullPolicy") == "Always" or lab:
                started = time.monotonic()
                if cached is None:
                    events.record(self.api, pod, "Normal", "Pulling",
                                  f'Pulling image "{image}"', "kubelet")
                cached = self.images.ensure(image, creds,
                                            pull=c.get("imagePullPolicy") or "IfNotPresent",
                                            authorize=lab)
                if cached.built:
                    events.record(self.api, pod, "Normal", "Pulled",
                                  f'Successfully pulled image "{image}" in '
                                  f"{time.monotonic() - started:.3f}s", "kubelet")
            out[image] = cached
        return out

    def _credentials(self, pod: Obj, image: ImageReference, lab: bool) -> Credentials | None:
        """A matching imagePullSecret's; else this node's for the pod's own project on the
        lab registry (``lab``); else none (anonymous: the lab registry refuses, as a private
        registry does)."""
        namespace = pod["metadata"]["namespace"]
        for ref in (pod.get("spec") or {}).get("imagePullSecrets") or []:
            secret = get_or_none(self.api, SECRETS, namespace, ref.get("name", ""))
            data = ((secret or {}).get("data") or {}).get(".dockerconfigjson")
            if not data:
                continue
            creds = credentials_for(base64.b64decode(data), image.registry)
            if creds is not None:
                return creds
        if lab and self._node_credentials is not None and project_of(image.path) == namespace:
            return self._node_credentials
        return None

    def _on_lab_registry(self, registry: str) -> bool:
        """Whether ``registry`` (``host[:port]``) is the lab registry, now or at start-up
        (the names the policy allows): either way its images are authorised per pod."""
        return registry.lower() in self._lab_names or is_lab_registry(self.settings, registry)

    def _config(self, pod: Obj, images: dict[str, CachedImage]
                ) -> tuple[PodConfig, tuple[Path, ...]]:
        namespace = pod["metadata"]["namespace"]
        refs = {SECRETS.plural: SECRETS, CONFIGMAPS.plural: CONFIGMAPS}

        def read(plural: str, name: str) -> Obj | None:
            return get_or_none(self.api, refs[plural], namespace, name)

        order = list(dict.fromkeys(c["image"] for c in pod["spec"]["containers"]))
        disks = tuple(images[i].disk for i in order)
        configs = [_image_config(images[i]) for i in order]
        index = {c["name"]: order.index(c["image"]) for c in pod["spec"]["containers"]}
        resolved = podspec.containers(pod, configs, index, read)
        volumes: list[EmptyDirVolume | FileVolume] = []
        for v in podspec.volumes(pod, read):
            if v.kind == "emptyDir":
                volumes.append(EmptyDirVolume(v.name, v.medium,  # type: ignore[arg-type]
                                              v.size_limit_bytes))
            else:
                volumes.append(FileVolume(v.name, dict(v.files)))
        containers = tuple(Container(
            c.name, c.image_index, c.argv, c.env, c.working_dir,
            tuple(VolumeMount(m.volume, m.path, m.read_only, m.sub_path) for m in c.mounts))
            for c in resolved)
        spec = pod.get("spec") or {}
        address, gateway, nameservers, searches = self._addressing(pod)
        hostname = (spec.get("hostname") or pod["metadata"]["name"])[:63].rstrip("-.")
        aliases = tuple(HostAlias(a["ip"], tuple(a.get("hostnames") or []))
                        for a in spec.get("hostAliases") or [] if a.get("hostnames"))
        config = PodConfig(
            hostname=hostname, containers=containers, volumes=tuple(volumes),
            address=address, gateway=gateway, nameservers=nameservers, searches=searches,
            host_aliases=aliases, restart_policy=spec.get("restartPolicy") or "Always",
            termination_grace_period_seconds=int(spec.get("terminationGracePeriodSeconds")
                                                 or 0))
        return config, disks

    def _addressing(self, pod: Obj) -> tuple[str, str | None, tuple[str, ...], tuple[str, ...]]:
        ip = pod["status"]["podIP"]
        if self.namespace_network:
            nic = self._attachment(pod)
            return (f"{ip}/{nic.prefix_length}", nic.gateway, tuple(nic.nameservers),
                    tuple(nic.search_domains))
        import ipaddress

        net = ipaddress.ip_network(self.settings.appliance_cidr)
        gateway = str(next(net.hosts()))
        return f"{ip}/{net.prefixlen}", gateway, (gateway,), ()

    def _attachment(self, pod: Obj) -> Any:
        from appliance.network.attach import INTERFACES, attachment, interface_name

        nic = attachment(get_or_none(self.api, INTERFACES, pod["metadata"]["namespace"],
                                     interface_name(pod["metadata"]["name"])) or {})
        if nic is None:
            raise podspec.ConfigError("waiting for the pod's network interface",
                                      "ContainerCreating")
        return nic

    def _nic(self, pod: Obj) -> NicSpec:
        from appliance.network.config import mac_for

        mac = mac_for(pod["metadata"]["uid"])
        if not self.namespace_network:
            return NicSpec(mac, "network", self.network_name)
        nic = self._attachment(pod)
        return NicSpec(nic.mac or mac, "ovs", nic.bridge, port_name=nic.port_name,
                       vlan=nic.vlan, csum_offload_off=self.ovs_datapath == "netdev")

    def _vm_spec(self, pod: Obj, run: PodRun, dom: str, config: PodConfig,
                 image_disks: tuple[Path, ...]) -> PodVmSpec:
        run.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        cfg = write_config_disk(config, run.dir / "config.tar")
        scratch = create_scratch_disk(run.dir / "scratch.img", _scratch_bytes(pod))
        for name in ("console.log", "events.log", "output.log"):
            (run.dir / name).unlink(missing_ok=True)
        cpus, mib = vm_size(pod)
        return PodVmSpec(
            name=dom, uuid=pod["metadata"]["uid"], vcpus=cpus, memory_mib=mib,
            accelerator="kvm" if self.accelerator == "kvm" else "tcg", kernel=self.kernel(),
            free_page_reporting=self._kernel_built,
            image_disks=image_disks, scratch=scratch, config=cfg,
            console_log=run.dir / "console.log", event_log=run.dir / "events.log",
            output_log=run.dir / "output.log", control_socket=self._socket(run),
            nic=self._nic(pod),
            metadata={"namespace": pod["metadata"]["namespace"],
                      "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]})

    def _socket(self, run: PodRun) -> Path:
        sockets = self.settings.run_dir / "pods"
        sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        return sockets / f"{run.uid[:13]}.sock"

    def kernel(self) -> PodKernel:
        """The pod kernel when it is built (``lab up`` builds it), else Debian's; the choice
        and its reason are logged once."""
        with self._kernel_lock:
            if self._kernel is None:
                kernel, choice = kernel_for_pods(self.settings.cache_dir,
                                                 source_dir=self.settings.pod_kernel_source_dir)
                if choice.built is None:
                    LOG.warning("pod VMs boot the distro kernel %s: %s", kernel.release, choice.reason)
                else:
                    LOG.info("pod VMs boot %s", choice.reason)
                self._kernel, self._kernel_built = kernel, choice.built is not None
            return self._kernel

    # -- observing -----------------------------------------------------------------------

    def _run(self, pod: Obj) -> PodRun:
        uid = pod["metadata"]["uid"]
        with self._runs_lock:
            run = self._runs.get(uid)
            if run is None:
                run = PodRun(uid, (pod["metadata"]["namespace"], pod["metadata"]["name"]),
                             self.settings.pods_dir / uid)
                for c in (pod.get("spec") or {}).get("containers") or []:
                    run.containers[c["name"]] = ContainerRun(c["name"])
                self._runs[uid] = run
            return run

    def _poll(self, run: PodRun) -> bool:
        """Apply what the guest wrote since the last look; True if anything changed."""
        with run.lock:
            changed = False
            path = run.dir / "events.log"
            records, run.events_at = channel.read_events(path, run.events_at)
            for record in records:
                changed |= self._apply(run, record)
            out = run.dir / "output.log"
            chunks, run.output_at = channel.read_output(out, run.output_at)
            for chunk in chunks:
                if isinstance(chunk, channel.Output) and chunk.container in run.containers:
                    self.logs.append(run.uid, chunk.container, chunk.restart_count,
                                     chunk.stream, chunk.data)
            return changed

    def _apply(self, run: PodRun, record: Any) -> bool:
        """Fold one event of the guest into what we know of its containers."""
        now = now_rfc3339()
        if isinstance(record, channel.Done):
            run.done = True
            return True
        if isinstance(record, channel.GuestError):
            run.guest_error = record.message
            return True
        c = run.containers.get(getattr(record, "container", ""))
        if c is None:
            return False
        if isinstance(record, channel.Started):
            if c.state == "terminated":
                c.last = _terminated(c)
            c.restarts = record.restart_count
            c.state, c.reason, c.message, c.waiting = "running", "", "", None
            c.started_at, c.finished_at, c.exit_code = now, None, None
            c.ever_started, c.finished = True, False
        elif isinstance(record, channel.Exited):
            self.logs.end(run.uid, c.name, record.restart_count)
            c.state, c.exit_code, c.finished_at = "terminated", record.exit_code, now
            c.reason = "Completed" if record.exit_code == 0 else "Error"
        elif isinstance(record, channel.StartFailed):
            if c.state == "terminated":
                c.last = _terminated(c)
            c.restarts = record.restart_count
            c.state, c.exit_code, c.finished_at = "terminated", 128, now
            c.started_at = now
            c.reason, c.message = "StartError", record.message
            c.waiting = None
        elif isinstance(record, channel.Waiting):
            message = (f"back-off {record.delay_seconds:g}s restarting failed container="
                       f"{c.name}")
            c.waiting = (record.reason, message)
        elif isinstance(record, channel.Finished):
            c.finished, c.waiting = True, None
        else:
            return False
        return True

    def _monitor(self, stop: threading.Event) -> None:
        """Read every pod VM's channels as QEMU writes them; kick a pass when the guest
        reported something."""
        try:
            watcher = Inotify()
        except OSError as exc:
            LOG.warning("no inotify (%s): the pod VMs' channels are read every %.2f s", exc,
                        MONITOR_INTERVAL)
            while not stop.wait(MONITOR_INTERVAL):
                self._poll_all(self._active_runs().values())
            return
        self._watcher = watcher
        watched: dict[Path, int] = {}
        rescan_at = 0.0
        try:
            while not stop.is_set():
                runs = self._active_runs()
                for gone in set(watched) - set(runs):
                    watcher.remove(watched.pop(gone))
                fresh = [run for path, run in runs.items() if path not in watched]
                for run in fresh:
                    with contextlib.suppress(OSError):  # its directory is gone: it is over
                        watched[run.dir] = watcher.add(run.dir)
                written, overflow = watcher.wait(0.0 if fresh else MONITOR_RESCAN)
                if overflow or time.monotonic() >= rescan_at:
                    rescan_at = time.monotonic() + MONITOR_RESCAN
                    self._poll_all(self._active_runs().values())
                else:  # what was written, and the new ones (written before their watch)
                    self._poll_all(runs[path] for path in written | {r.dir for r in fresh}
                                   if path in runs)
        finally:
            self._watcher = None
            watcher.close()

    def _active_runs(self) -> dict[Path, PodRun]:
        with self._runs_lock:
            return {r.dir: r for r in self._runs.values() if r.vm_started and not r.done}

    def _poll_all(self, runs: Iterable[PodRun]) -> None:
        for run in runs:
            try:
                if self._poll(run):
                    self.queue.add(run.key)
            except Exception:
                LOG.exception("[%s/%s] reading the pod VM's channels failed", *run.key)

    # -- status --------------------------------------------------------------------------

    def _write_status(self, pod: Obj, run: PodRun) -> None:
        status = pod_status(pod, run, self.node_ip)
        current = pod.get("status") or {}
        patch = merge_diff(current, {**current, **status})
        if not patch:
            return
        self._announce(pod, current, status)
        try:
            self.api.patch(self.ref, pod["metadata"]["namespace"], pod["metadata"]["name"],
                           {"status": patch}, subresource="status")
        except errors.ApiError as err:
            if err.code != 404:
                raise

    def _announce(self, pod: Obj, before: Obj, after: Obj) -> None:
        """Events for what changed: a container started, or is backing off."""
        old = {c.get("name"): c for c in before.get("containerStatuses") or []}
        for cs in after.get("containerStatuses") or []:
            prev = old.get(cs["name"]) or {}
            state = cs.get("state") or {}
            prev_state = prev.get("state") or {}
            restarted = cs.get("restartCount", 0) != prev.get("restartCount", 0)
            if "running" in state and ("running" not in prev_state or restarted):
                events.record(self.api, pod, "Normal", "Started",
                              f"Started container {cs['name']}", "kubelet")
            waiting = (state.get("waiting") or {}).get("reason")
            if waiting == "CrashLoopBackOff" and (prev_state.get("waiting") or {}).get(
                    "reason") != "CrashLoopBackOff":
                events.record(self.api, pod, "Warning", "BackOff",
                              f"Back-off restarting failed container {cs['name']} in pod "
                              f"{pod['metadata']['name']}_{pod['metadata']['namespace']}"
                              f"({pod['metadata']['uid']})", "kubelet")

    # -- ending --------------------------------------------------------------------------

    def _vm_lost(self, pod: Obj, run: PodRun) -> None:
        """The VM is gone without the guest saying it was done (killed, crashed, host
        restarted): its containers ended with it."""
        LOG.warning("[%s/%s] the pod VM ended unexpectedly", *run.key)
        now = now_rfc3339()
        for c in run.containers.values():
            if c.state != "terminated":
                c.state, c.exit_code, c.finished_at = "terminated", 137, now
                c.reason, c.message = "ContainerStatusUnknown", "the pod VM ended unexpectedly"
                self.logs.end(run.uid, c.name, c.restarts)
        run.done = True
        events.record(self.api, pod, "Warning", "PodVMLost", "the pod VM ended unexpectedly",
                      "kubelet")

    def _delete(self, pod: Obj, run: PodRun) -> float | None:
        meta = pod["metadata"]
        dom = domain_name(pod, self.prefix)
        if self.runtime.running(dom):
            deadline = parse_rfc3339(meta["deletionTimestamp"]).timestamp()
            if time.time() >= deadline:
                self.runtime.kill(dom)
            elif run.term_sent is None:
                for c in (pod.get("spec") or {}).get("containers") or []:
                    events.record(self.api, pod, "Normal", "Killing",
                                  f"Stopping container {c['name']}", "kubelet")
                try:
                    self.runtime.terminate(self._socket(run), timeout=5.0)
                    run.term_sent = time.monotonic()
                except (channel.ControlError, OSError, HypervisorError) as exc:
                    LOG.warning("[%s/%s] TERM to the pod VM failed (%s); killing it",
                                *run.key, exc)
                    self.runtime.kill(dom)
            if self.runtime.running(dom):
                return max(0.2, min(0.5, deadline - time.time()))
        self._poll(run)
        self._release(run)
        self.logs.remove(run.uid)
        shutil.rmtree(run.dir, ignore_errors=True)
        if self.namespace_network:
            from appliance.network.attach import delete_interface

            delete_interface(self.api, pod)
        with self._runs_lock:
            self._runs.pop(run.uid, None)
        drop_finalizer(self.api, self.ref, pod, POD_FINALIZER)
        LOG.info("[%s/%s] pod VM and its files removed", *run.key)
        return None

    def _release(self, run: PodRun) -> None:
        """A finished pod keeps its logs and status, not its disks."""
        for name in ("scratch.img", "config.tar"):
            (run.dir / name).unlink(missing_ok=True)
        self._socket(run).unlink(missing_ok=True)

    def collect_orphans(self) -> list[str]:
        """Pod VMs of this lab whose pod is gone (its finalizer was forced off)."""
        items, _ = self.api.list(self.ref)
        removed = orphans(items, self.prefix, self.runtime.list(self.prefix))
        for dom in removed:
            self.runtime.kill(dom)
        return removed


# -- helpers ---------------------------------------------------------------------------


def registry_policy(settings: Settings, lab_names: frozenset[str],
                    lab_ca: Path | None) -> RegistryPolicy:
    """The administrator's exceptions, plus the lab registry under each of its ``lab_names``
    (``host:port``): allowed at a loopback or private address, and its certificate checked
    against the lab CA alone (trusted for no other registry; the others keep the system's)."""
    return RegistryPolicy(
        allowed_private=frozenset(settings.registries_private) | lab_names,
        insecure=frozenset(settings.registries_insecure),
        registry_cas=tuple((name, lab_ca) for name in sorted(lab_names)) if lab_ca else ())


def _image_config(image: CachedImage) -> podspec.ImageConfig:
    cfg = image.config
    return podspec.ImageConfig(tuple(cfg.env or ()), tuple(cfg.entrypoint or ()),
                               tuple(cfg.cmd or ()), cfg.working_dir or "")


def _scratch_bytes(pod: Obj) -> int:
    from appliance.util.quantity import parse_quantity

    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        limit = (res.get("limits") or {}).get("ephemeral-storage")
        total += int(parse_quantity(limit)) if limit else 0
    return max(total, SCRATCH_DEFAULT)


def _terminated(c: ContainerRun) -> Obj:
    return {"terminated": {"exitCode": c.exit_code, "reason": c.reason,
                           **({"message": c.message} if c.message else {}),
                           "startedAt": c.started_at, "finishedAt": c.finished_at}}


def pod_status(pod: Obj, run: PodRun, node_ip: str) -> Obj:
    """The Pod's status from what its VM reported (kubelet's status manager, in short)."""
    spec = pod.get("spec") or {}
    statuses = []
    for c in spec.get("containers") or []:
        cr = run.containers.get(c["name"]) or ContainerRun(c["name"])
        cs: Obj = {"name": c["name"], "image": c["image"], "imageID": "",
                   "containerID": f"pacific://{run.uid}/{c['name']}",
                   "restartCount": cr.restarts, "ready": cr.state == "running",
                   "started": cr.state == "running"}
        if cr.state == "running":
            cs["state"] = {"running": {"startedAt": cr.started_at}}
        elif cr.state == "terminated" and cr.waiting and not run.done:
            reason, message = cr.waiting
            cs["state"] = {"waiting": {"reason": reason, "message": f"{message} pod="
                                       f"{pod['metadata']['name']}_"
                                       f"{pod['metadata']['namespace']}({run.uid})"}}
            cs["lastState"] = _terminated(cr)
        elif cr.state == "terminated":
            cs["state"] = _terminated(cr)
        else:
            reason, message = run.waiting or (cr.reason or "ContainerCreating", cr.message)
            cs["state"] = {"waiting": {"reason": reason, **({"message": message}
                                                            if message else {})}}
        if cr.last and "lastState" not in cs:
            cs["lastState"] = cr.last
        cs.setdefault("lastState", {})
        statuses.append(cs)
    containers = list(run.containers.values())
    if run.done:
        failed = bool(run.guest_error) or any(c.exit_code != 0 for c in containers)
        phase = "Failed" if failed else "Succeeded"
    elif containers and all(c.ever_started for c in containers):
        phase = "Running"
    else:
        phase = "Pending"
    ready = all(cs.get("ready") for cs in statuses) and phase == "Running"
    conditions = list((pod.get("status") or {}).get("conditions") or [])
    initialized = "True" if run.vm_started else "False"
    conditions = set_condition(conditions, "PodReadyToStartContainers", initialized, "", "")
    conditions = set_condition(conditions, "Initialized", "True", "", "")
    not_ready = [cs["name"] for cs in statuses if not cs.get("ready")]
    why = ("PodCompleted", "") if phase in ("Succeeded", "Failed") else (
        ("ContainersNotReady", f"containers with unready status: [{' '.join(not_ready)}]")
        if not_ready else ("", ""))
    conditions = set_condition(conditions, "ContainersReady", "True" if ready else "False",
                               *why)
    conditions = set_condition(conditions, "Ready", "True" if ready else "False", *why)
    status: Obj = {"phase": phase, "hostIP": node_ip, "hostIPs": [{"ip": node_ip}],
                   "containerStatuses": statuses, "conditions": conditions}
    if run.guest_error:
        status["reason"], status["message"] = "PodVMSetupFailed", run.guest_error
    start = (pod.get("status") or {}).get("startTime")
    status["startTime"] = start or now_rfc3339()
    return status
