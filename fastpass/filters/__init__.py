"""Filters: fuse-bpf's pre- and post-filters around the operations, in Python (see api.py)."""
