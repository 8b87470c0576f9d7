"""coordination.k8s.io/v1 Lease: what leader election is built on, as in Kubernetes.

The supervisor's controllers run in one supervisor at a time; the one holding
Lease ``kube-system/pacific-lab-controllers`` runs them
(``appliance.controllers.leader``). ``kubectl get leases -n kube-system`` shows
the holder.
"""

from __future__ import annotations

from appliance.kinds.registry import Kind, PrinterColumn, Version
from appliance.kinds.schema import integer, obj, string, top_level

LEASE = Kind(
    group="coordination.k8s.io", kind="Lease", plural="leases", singular="lease",
    namespaced=True, builtin=True, has_status=False,
    versions=(Version("v1", top_level(spec=obj({
        "holderIdentity": string(), "leaseDurationSeconds": integer(),
        "acquireTime": string(format="date-time"), "renewTime": string(format="date-time"),
        "leaseTransitions": integer(), "strategy": string(), "preferredHolder": string()})),
        storage=True, printer_columns=(
            PrinterColumn("Name", format="name", json_path=".metadata.name"),
            PrinterColumn("Holder", json_path=".spec.holderIdentity"),
            PrinterColumn("Age", type="date", json_path=".metadata.creationTimestamp"))),),
)

KINDS = (LEASE,)
