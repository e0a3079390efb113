"""Flotilla's services: each `python -m services.<name>`; `services.lib` is the library they share."""
