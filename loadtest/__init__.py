"""Benchmarks and load scenarios (fan-out, many channels, idle connections, connect storm)."""
