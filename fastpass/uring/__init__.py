"""Batched backing and device I/O on io_uring, one ring per worker (docs/internals.md, docs/io.md)."""
