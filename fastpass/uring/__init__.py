"""Batched backing and device I/O on io_uring, one ring per worker (see DESIGN.md, hard part 4)."""
