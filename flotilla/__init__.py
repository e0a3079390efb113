"""Flotilla's user-facing side: the CLI, `flotilla up`, and the embedded nats-server it runs."""
