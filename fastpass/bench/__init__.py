"""Benchmarks of fastpass against a bind mount of the same directory."""
