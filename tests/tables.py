"""Inode tables without a mount, as the supervisor and the workers make them, for the unit tests;
`close_all()` lets go of every fd, mapping and memfd they took."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from fastpass.fs.fds import FdBudget
from fastpass.fs.inode_index import InodeIndex
from fastpass.fs.inodes import InodeTable
from fastpass.fs.passthrough import Passthrough
from fastpass.fs.slots import InodeSpace
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
    InodeIndex.format(space, region, root)
    os.close(root)
    _made.append((space, region, []))
    return space, counters, region


def inode_table(tmp_path: Path, space: InodeSpace, counters: CounterSpace, region: Region, worker: int,
                share: int = 0, fds: int = 64, prune: Callable[[list[int]], None] | None = None,
                closed: list[int] | None = None) -> InodeTable:  # fmt: skip
    """Worker `worker`'s view of the table, within a budget of `fds` fds, pruning through `prune`.
    With `closed`, it has passthrough (`table._passthrough`) on no device: ids come from the
    `register` its caller gives `attach`, and the ids closed are appended to `closed`."""
    misc = WorkerCounters(counters, region, worker).misc
    index = InodeIndex(space, region, worker, misc, share, prune)
    passthrough = None
    if closed is not None:
        passthrough = Passthrough(-1, index, region, misc)
        passthrough.close = closed.append  # type: ignore[method-assign]
    table = InodeTable(index, os.open(tmp_path, os.O_PATH), FdBudget(limit=fds), passthrough)
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
            table.index._file.close()
        os.close(space.fd)
        os.close(region.fd)
