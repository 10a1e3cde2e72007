"""Shared memory: the tables every worker of a mount reads and writes."""
