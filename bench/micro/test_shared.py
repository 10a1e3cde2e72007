"""Micro-benchmarks of the shared tables' locks and the open/release bookkeeping (pytest-benchmark).

Run with `python -m pytest bench/micro -q`.  One process: what a worker pays
per lock and per open/release pair when nobody contends, the figures the
docstrings of fastpass.shm.region and fastpass.fs.passthrough quote.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fastpass.fs.fds import FdBudget
from fastpass.fs.handles import HandleSpace, HandleTable
from fastpass.fs.inode_index import InodeIndex
from fastpass.fs.inodes import InodeTable
from fastpass.fs.passthrough import Passthrough
from fastpass.fs.slots import InodeSpace
from fastpass.shm.counters import CounterSpace, WorkerCounters
from fastpass.shm.region import LOCK_INODES, U64, Layout, Region


def test_region_lock_pair(benchmark) -> None:
    """A robust process-shared mutex: lock, one shared increment, unlock."""
    region = Region(U64.size)

    def run() -> None:
        region.lock(LOCK_INODES)
        U64.pack_into(region.map, 0, U64.unpack_from(region.map, 0)[0] + 1)
        region.unlock(LOCK_INODES)

    benchmark(run)
    assert U64.unpack_from(region.map, 0)[0] > 0


def test_record_lock_pair_for_comparison(benchmark) -> None:
    """What the tables used before: an fcntl record lock on one byte of the region's memfd."""
    region = Region(U64.size, locks=1)

    def run() -> None:
        fcntl.lockf(region.fd, fcntl.LOCK_EX, 1, 0)
        U64.pack_into(region.map, 0, U64.unpack_from(region.map, 0)[0] + 1)
        fcntl.lockf(region.fd, fcntl.LOCK_UN, 1, 0)

    benchmark(run)
    assert U64.unpack_from(region.map, 0)[0] > 0


def test_handle_add_release(benchmark, tmp_path: Path) -> None:
    layout = Layout()
    space = HandleSpace(layout, 1 << 12)
    counters = CounterSpace(layout)
    region = Region(layout.size)
    table = HandleTable(space, region, 0, WorkerCounters(counters, region, 0).misc, FdBudget())

    def run() -> tuple[int, int]:
        return table.release(table.add(None, 5, os.O_RDONLY, 0))

    assert benchmark(run) == (5, os.O_RDONLY)
    assert HandleTable.live(space, region) == 0


def test_kept_backing_id_join_detach(benchmark, tmp_path: Path) -> None:
    """A read-only open of a file whose backing id is kept: join, then the release's detach."""
    (tmp_path / "f").write_text("x")
    layout = Layout()
    space = InodeSpace(layout, 64)
    counters = CounterSpace(layout)
    region = Region(layout.size)
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    InodeIndex.format(space, region, root)
    misc = WorkerCounters(counters, region, 0).misc
    index = InodeIndex(space, region, 0, misc)
    table = InodeTable(index, os.open(tmp_path, os.O_PATH), FdBudget(100))
    passthrough = Passthrough(-1, index, region, misc)  # no device: the id comes from `register` below
    inode, _ = table.lookup(table.root, b"f")
    assert passthrough.attach(inode, 0, True, lambda: 7) == (7, False)
    passthrough.release(inode.nodeid)  # kept: no open, still registered

    def run() -> int:
        backing_id = passthrough.join(inode, 0)[1]
        passthrough.release(inode.nodeid)
        return backing_id

    assert benchmark(run) == 7
    assert not index.in_passthrough(inode.nodeid)
