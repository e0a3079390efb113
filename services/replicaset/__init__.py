"""The replica controller: keeps `spec.replicas` live pods for every ReplicaSet (DESIGN §5)."""
