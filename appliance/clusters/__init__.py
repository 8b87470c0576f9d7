"""Guest clusters the Cluster API way: the certificates CAPI keeps for a cluster, the
kubeadm documents CABPK renders, and the cloud-config that turns a VM into a node."""
