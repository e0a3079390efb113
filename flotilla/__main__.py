"""`python -m flotilla`: the same as the `flotilla` command."""
from flotilla.cli import run

if __name__ == "__main__":
    run()
