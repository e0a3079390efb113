"""The service proxy (kube-proxy's part): Service ClusterIPs and NodePorts -> ready endpoints (TCP)."""
