"""Latency load tests that compare the serving backends: load generation, statistics and reports.

Entry points: `python -m gateway.loadtest` (cli.py) and the gateway router (api.py).
"""
