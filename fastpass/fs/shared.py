"""Everything the workers of one mount share, sized and formatted by the supervisor before the fork."""

from __future__ import annotations

from fastpass.fs.attrcache import AttrSpace
from fastpass.fs.handles import HandleSpace, HandleTable
from fastpass.fs.inode_index import InodeIndex
from fastpass.fs.slots import InodeSpace
from fastpass.shm.control import ControlSpace
from fastpass.shm.counters import CounterSpace
from fastpass.shm.region import Layout, Region
from fastpass.shm.warnlog import WarningSpace

DEFAULT_MAX_HANDLES = 1 << 18  # 28 B a slot


class SharedState:
    def __init__(self, root_fd: int, max_inodes: int, cache_size: int = 0, max_handles: int = DEFAULT_MAX_HANDLES,
                 attach: tuple[int, int] | None = None):  # fmt: skip
        """`attach`: the memfds of the region and of the inode slots of a supervisor that handed
        over (`fastpass.restart`), whose tables live on as they are; else new ones, formatted."""
        layout = Layout()
        self.inodes = InodeSpace(layout, max_inodes, None if attach is None else attach[1])
        self.handles = HandleSpace(layout, max_handles)
        self.attrs = AttrSpace(layout, cache_size)
        self.counters = CounterSpace(layout)
        self.control = ControlSpace(layout)
        self.warnings = WarningSpace(layout)
        self.region = Region(layout.size, attach=None if attach is None else attach[0])
        if attach is not None:
            return
        InodeIndex.format(self.inodes, self.region, root_fd)
        HandleTable.format(self.handles, self.region)
