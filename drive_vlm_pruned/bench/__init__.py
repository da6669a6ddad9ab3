"""Benchmarks that print figures (never tests)."""
