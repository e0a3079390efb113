"""The API server: the only writer of the state log; serves every verb of DESIGN §3 over NATS."""
