"""The node lifecycle controller: node health from Leases, taints, pod eviction, zone disruption."""
