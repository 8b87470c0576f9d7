"""Load balancers: which workloads a service selects, and its listeners.

VirtualMachineService (vm-operator) and core/v1 Service are handled alike:
``spec.selector`` (equality on labels) picks the workloads of the service's
namespace -- a VM's labels for a VM, a pod's for a pod VM, an interface's
own labels for a stand-in host -- and every TCP port becomes an HAProxy
listener on the service's VIP, spreading connections round robin over the
backends with health checks, so a stopped backend drops out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from appliance.kinds.registry import Obj
from appliance.network.hostconfig import Backend, Listener
from appliance.network.ipam import Address
from appliance.network.model import Workload

BALANCED_TYPES = ("LoadBalancer", "ClusterIP")


@dataclass(frozen=True)
class ServiceView:
    kind: str
    namespace: str
    name: str
    type: str
    selector: dict[str, str]
    ports: tuple[Obj, ...]


def view(service: Obj) -> ServiceView:
    spec = service.get("spec") or {}
    meta = service["metadata"]
    return ServiceView(service.get("kind", "Service"), meta["namespace"], meta["name"],
                       str(spec.get("type") or "ClusterIP"), dict(spec.get("selector") or {}),
                       tuple(spec.get("ports") or ()))


def select_backends(service: ServiceView, workloads: Sequence[Workload]) -> list[Workload]:
    if not service.selector:
        return []
    return [w for w in workloads if w.namespace == service.namespace and
            all(w.labels.get(k) == v for k, v in service.selector.items())]


def target_port(port: Obj) -> int | None:
    target = port.get("targetPort")
    if target is None or target == 0:
        return int(port["port"])
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    return None  # a named port: VMs have no container ports to resolve it


def listeners(service: ServiceView, vip: Address, workloads: Sequence[Workload]
              ) -> list[Listener]:
    backends = select_backends(service, workloads)
    out = []
    for port in service.ports:
        target = target_port(port)
        if target is None:
            continue
        out.append(Listener(
            kind=service.kind, service=service.name, vip=vip, port=int(port["port"]),
            protocol=str(port.get("protocol") or "TCP"),
            backends=tuple(Backend(w.name, w.ip, target)
                           for w in sorted(backends, key=lambda w: w.name))))
    return out


def problems(service: ServiceView, workloads: Sequence[Workload]) -> list[str]:
    """Why the service does not (fully) balance, in words for a condition."""
    out = []
    if not service.selector:
        out.append("the service has no selector, so it selects no workloads")
    elif not select_backends(service, workloads):
        selector = ",".join(f"{k}={v}" for k, v in sorted(service.selector.items()))
        out.append(f"the selector {selector} selects no workloads in namespace "
                   f"{service.namespace}")
    for port in service.ports:
        protocol = str(port.get("protocol") or "TCP")
        if protocol != "TCP":
            out.append(f"port {port.get('port')}/{protocol} is not balanced: HAProxy balances "
                       "TCP only")
        if target_port(port) is None:
            out.append(f"port {port.get('port')}: named targetPort {port.get('targetPort')!r} "
                       "cannot be resolved on VMs")
    return out
