"""The Cluster API controllers the supervisor runs, in one list."""

from __future__ import annotations

from pathlib import Path

from appliance.clusters.cluster import ClusterController
from appliance.clusters.controlplane import KubeadmControlPlaneController
from appliance.clusters.deployments import MachineDeploymentController, MachineSetController
from appliance.clusters.healthcheck import MachineHealthCheckController
from appliance.clusters.kubeadmconfig import KubeadmConfigController
from appliance.clusters.machine import MachineController
from appliance.clusters.resourceset import ClusterResourceSetController
from appliance.clusters.tkc import TkcController
from appliance.clusters.tkgclass import ShippedClassController
from appliance.clusters.topology import TopologyController
from appliance.clusters.vsphere import VSphereClusterController, VSphereMachineController
from appliance.controllers.base import Controller
from appliance.resources import ResourceApi


def cluster_controllers(api: ResourceApi, run_dir: Path) -> list[Controller]:
    """CAPI core, CABPK, KCP, CAPV's supervisor mode, and vSphere's TKG service on top
    (TanzuKubernetesCluster, the shipped ClusterClass). ``run_dir`` holds the short-lived
    client credentials for guest clusters' APIs."""
    guests = run_dir / "guest-clusters"
    return [ClusterController(api), VSphereClusterController(api),
            KubeadmControlPlaneController(api), KubeadmConfigController(api),
            MachineController(api, guests), VSphereMachineController(api),
            MachineSetController(api), MachineDeploymentController(api),
            MachineHealthCheckController(api, guests),
            ClusterResourceSetController(api, guests), TopologyController(api),
            TkcController(api), ShippedClassController(api)]
