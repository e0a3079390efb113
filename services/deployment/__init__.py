"""The Deployment controller: rolls ReplicaSets named by a hash of the pod template (DESIGN §5)."""
