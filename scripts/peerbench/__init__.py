"""The parts of `scripts/bench_peers.py`: cases, peer venvs, runs, comparison, the case loop."""
