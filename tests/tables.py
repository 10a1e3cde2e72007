"""Inode tables without a mount, as the supervisor and the workers make them, for the unit tests;
`close_all()` lets go of every fd, mapping and memfd they took."""

from __future__ import annotations

import os
from pathlib import Path

from fastpass.fs.fds import FdBudget
from fastpass.fs.inodes import InodeSpace, InodeTable
from fastpass.shm.counters import CounterSpace, WorkerCounters
from fastpass.shm.region import Layout, Region

_made: list[tuple[InodeSpace, Region, list[InodeTable]]] = []


def inode_space(tmp_path: Path, capacity: int) -> tuple[InodeSpace, CounterSpace, Region]:
    """The shared part, formatted with `tmp_path` as the root (what the supervisor does before the fork)."""
    layout = Layout()
    space = InodeSpace(layout, capacity)
    counters = CounterSpace(layout)
    region = Region(layout.size)
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    InodeTable.format(space, region, root)
    os.close(root)
    _made.append((space, region, []))
    return space, counters, region


def inode_table(tmp_path: Path, space: InodeSpace, counters: CounterSpace, region: Region, worker: int,
                share: int = 0, fds: int = 64) -> InodeTable:  # fmt: skip
    """Worker `worker`'s view of the table, within a budget of `fds` fds."""
    table = InodeTable(space, region, os.open(tmp_path, os.O_PATH), FdBudget(limit=fds), worker,
                       WorkerCounters(counters, region, worker).misc, share)  # fmt: skip
    next(tables for s, _, tables in _made if s is space).append(table)
    return table


def close_all() -> None:
    while _made:
        space, region, tables = _made.pop()
        for table in tables:
            for inode in list(table._open.values()):
                table._close_local(inode)
            for fd in (table.root.fd, *table._mount_fds.values()):
                os.close(fd)
            table._file.close()
        os.close(space.fd)
        os.close(region.fd)
