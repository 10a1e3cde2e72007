"""Micro-benchmarks of the inode table's hot paths (pytest-benchmark), one process, no contention.

Run with `python -m pytest bench/micro/test_inodes.py -q`: a lookup of a name the worker
holds (one more lookup count), a new inode's slot taken and freed, and a view built from
another worker's slot.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastpass.fs.context import Fs
from fastpass.fs.inodes import O_PATH_FLAGS


def test_lookup_held(benchmark, fs: Fs) -> None:
    """LOOKUP of a name whose inode this worker holds an fd on, and the FORGET that balances it."""
    inodes = fs.inodes
    inode, _ = inodes.lookup(inodes.root, b"entry-007")  # one count stays: the slot lives on

    def run() -> int:
        found, _st = inodes.lookup(inodes.root, b"entry-007")
        inodes.forget(found.nodeid, 1)
        return found.nodeid

    assert benchmark(run) == inode.nodeid


def test_new_slot_and_forget(benchmark, fs: Fs, backing: Path) -> None:
    """A name the table does not know: open, handle, a slot taken and published; then the FORGET that frees it."""
    inodes = fs.inodes
    root_fd = inodes.fd(inodes.root)

    def run() -> int:
        inode, _st = inodes.adopt(os.open(b"entry-042", O_PATH_FLAGS, dir_fd=root_fd))
        inodes.forget(inode.nodeid, 1)
        return inode.key[1]

    assert benchmark(run) == os.stat(backing / "entry-042").st_ino


def test_view_of_another_workers_slot(benchmark, fs: Fs) -> None:
    """GET of a nodeid this worker has no view of: the shared slot read into a new view."""
    inodes = fs.inodes
    inode, _ = inodes.lookup(inodes.root, b"entry-009")
    local = inodes._local

    def run() -> int:
        local.pop(inode.nodeid, None)
        return inodes.get(inode.nodeid).key[1]

    assert benchmark(run) == inode.key[1]
