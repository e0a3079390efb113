"""The node agent (Flotilla's kubelet): registers its Node, renews its Lease, runs the pods bound to
it as real processes (or hollow ones, for benchmarks), probes them, restarts them, serves their
logs over NATS and keeps a local checkpoint so that its own restart leaves them running."""
