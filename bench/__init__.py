"""idmint benchmarks against its peers: `python -m bench` (or `make bench`).

See docs/BENCHMARKS.md for what is measured, how, and the latest numbers.
"""
