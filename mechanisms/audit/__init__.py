"""Empirical privacy auditing: canary clients, the one-run epsilon estimate, exposure."""
