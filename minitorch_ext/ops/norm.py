"""Norm family (placeholder; written on main)."""
