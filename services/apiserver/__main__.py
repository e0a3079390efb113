"""`python -m services.apiserver`: serve the Flotilla API over NATS."""
import argparse

from services.lib.runner import run_service

from .server import serve


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replicas", type=int, default=1, help="JetStream replicas of the state log (1 or 3)")
    p.add_argument("--bookmark-seconds", type=float, default=2.0,
                   help="interval of watch bookmarks (also how fast a dead watcher is noticed)")


if __name__ == "__main__":
    run_service("apiserver", serve, _args)
