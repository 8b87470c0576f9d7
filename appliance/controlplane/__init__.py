"""The supervisor's control-plane VMs (1 or 3): their per-VM configuration, rendered on the
host into cloud-init (``appliance.controlplane.config``)."""
