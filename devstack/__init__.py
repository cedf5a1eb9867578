"""Runs the whole system as local processes on loopback (`make up`, `make demo`)."""
