"""`python -m gateway.loadtest`: the load test and comparison CLI."""

from gateway.loadtest.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
