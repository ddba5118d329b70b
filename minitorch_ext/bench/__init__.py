"""Benchmark harness (placeholder in branch optim; the harness is written on main)."""
