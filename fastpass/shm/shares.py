"""Per-uid counts in shared memory: how much of a shared resource each user holds now.

With --allow-other the server's fds and table slots serve every user of the mount, so
one user who holds very many must not leave none for the others: each uid may hold a
share, counted over all workers, and is refused past it.

A table of CELLS cells (uid + 1, count; 0 is an empty cell), open addressing with linear
probing, under one lock of the region.  A cell whose count drops to 0 is emptied at once
and the cells after it in its probe run shift back (no tombstones), so the table only
holds the uids that hold something now, and a probe for an absent uid stops at the first
empty cell.
"""

from __future__ import annotations

import struct

from fastpass.shm.region import Layout, Region

CELL = struct.Struct("<II")  # uid + 1 (0: empty), count
CELLS = 4096  # uids holding something at once, at most (32 KiB, touched as used)
_MASK = CELLS - 1


class ShareSpace:
    def __init__(self, layout: Layout):
        self.cells = layout.take(CELL.size * CELLS)


class Shares:
    """Counts per uid against one `share`, under region lock `lock`."""

    def __init__(self, space: ShareSpace, region: Region, lock: int, share: int):
        self.share = share
        self._at = space.cells
        self._region = region
        self._map = region.map
        self._lock = lock

    def _find(self, key: int) -> tuple[int, int]:
        """(cell, count) of `key` (uid + 1), or (the empty cell where it would go, -1); the
        cell is -1 as well when the table is full."""
        m, at = self._map, self._at
        i = hash(key) & _MASK
        for _ in range(CELLS):
            k, count = CELL.unpack_from(m, at + i * CELL.size)
            if k == key:
                return i, count
            if not k:
                return i, -1
            i = (i + 1) & _MASK
        return -1, -1

    def charge(self, uid: int) -> bool:
        """One more for `uid`; False (nothing counted) where it holds its share already, or
        the table has no room for another uid."""
        key = uid + 1
        region = self._region
        region.lock(self._lock)
        try:
            i, count = self._find(key)
            if i < 0 or count >= self.share:
                return False
            CELL.pack_into(self._map, self._at + i * CELL.size, key, max(count, 0) + 1)
            return True
        finally:
            region.unlock(self._lock)

    def refund(self, uid: int) -> None:
        """One fewer for `uid` (charged before)."""
        region = self._region
        region.lock(self._lock)
        try:
            i, count = self._find(uid + 1)
            if count > 1:
                CELL.pack_into(self._map, self._at + i * CELL.size, uid + 1, count - 1)
            elif count == 1:
                self._empty(i)
        finally:
            region.unlock(self._lock)

    def held(self, uid: int) -> int:
        """What `uid` holds now (a lock-free read, for stats and tests)."""
        return max(self._find(uid + 1)[1], 0)

    def _empty(self, i: int) -> None:
        """Empty cell `i`, shifting later cells of its probe run back into reach of their home."""
        m, at, size = self._map, self._at, CELL.size
        CELL.pack_into(m, at + i * size, 0, 0)
        j = i
        while True:
            j = (j + 1) & _MASK
            key, count = CELL.unpack_from(m, at + j * size)
            if not key:
                return
            home = hash(key) & _MASK
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue  # still reachable from its home
            CELL.pack_into(m, at + i * size, key, count)
            CELL.pack_into(m, at + j * size, 0, 0)
            i = j
