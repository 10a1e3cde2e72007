"""Open-file and open-directory handles: the `fh` the kernel hands back.

Any worker may receive a READ, WRITE, FSYNC or RELEASE for an fh another
worker opened.  Facts that shape the answer:

* An fh is a slot in a shared table holding the inode's nodeid and the open
  flags; `fh = generation << 32 | slot`, so a stale fh never aliases a new
  one.  Each worker keeps its own backing fd per fh, opened lazily.
* A worker's own fd is a reopen of the inode (through its O_PATH fd) with
  the opener's backing flags less O_TRUNC, which the opener already acted
  on (fastpass.fs.openflags).  Separate open file descriptions of one inode behave as one
  open file for everything fastpass serves: data and size live in the
  inode, reads and writes carry explicit offsets, O_APPEND is the kernel's
  (it sends append offsets), fsync flushes the inode, and an unlinked file
  stays reachable while the kernel keeps its nodeid.  Reopening costs one
  open(2) the first time a worker meets an fh; passing the opener's fd
  (pidfd_getfd, 2.7 us) would also need the opener alive.
* Under the writeback cache the kernel writes a file's dirty pages back
  through whichever writable fh of the inode it picks (the latest opened),
  on whichever worker is free: a WRITE of an fh this worker never opened is
  served by its own reopen, as above.
* RELEASE frees the slot and puts the fh in a ring; every worker closes its
  own copy when it sees it (`sync`, at the top of each request), so copies
  in busy workers go at once and those in an idle worker when it next
  works.
* Directory handles keep their READDIR state per worker: entries read but
  not sent, and the backing offset they start at.  Offsets are the
  backing's own cookies, so any worker continues any listing by seeking.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import deque

from fastpass.fs import openflags
from fastpass.shm.counters import FOREIGN_FILES
from fastpass.shm.region import LOCK_HANDLES, RING, U32, U64, Layout, Region, ring_push, ring_since

SLOT = struct.Struct("<IIQII")  # generation, kind, nodeid, open flags (| PASSTHROUGH_MARK), creating worker
HEADER = struct.Struct("<IIQ")  # next fresh slot, free-stack depth, release-ring sequence
FREE, FILE, DIR = 0, 1, 2
_MASK32 = 0xFFFFFFFF
PASSTHROUGH_MARK = 1 << 31  # kept with the open flags: the fh holds one of its inode's passthrough opens


def _badf() -> OSError:
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


class DirHandle:
    """A worker's open backing directory and the entries read but not yet sent.

    `pos` is the offset (the backing's d_off cookie) of `pending[0]`, so a
    READDIR at that offset continues from memory.  Any other offset
    (seekdir, rewinddir, or a listing another worker continued) seeks this
    worker's own open directory there.
    """

    __slots__ = ("fd", "pending", "pos")

    def __init__(self, fd: int):
        self.fd = fd
        self.pos = 0
        self.pending: deque[tuple[int, int, int, bytes]] = deque()  # (ino, next_off, type, name)


class HandleSpace:
    def __init__(self, layout: Layout, capacity: int):
        self.capacity = capacity
        self.header = layout.take(HEADER.size)
        self.slots = layout.take(SLOT.size * (capacity + 1))
        self.free = layout.take(U32.size * capacity)
        self.ring = layout.take(U64.size * RING)


class HandleTable:
    @staticmethod
    def format(space: HandleSpace, region: Region) -> None:
        HEADER.pack_into(region.map, space.header, 1, 0, 0)

    def __init__(self, space: HandleSpace, region: Region, worker: int, misc: memoryview):
        self._worker = worker
        self._misc = misc  # this worker's misc counters (FOREIGN_FILES)
        self._space = space
        self._region = region
        self._map = region.map
        self._files: dict[int, int | DirHandle] = {}  # fh -> this worker's fd or DirHandle
        self._seen = self._ring_seq()

    def _ring_seq(self) -> int:
        return HEADER.unpack_from(self._map, self._space.header)[2]

    @staticmethod
    def live(space: HandleSpace, region: Region) -> int:
        """Entries in use, read from the shared header (for stats)."""
        fresh, depth, _ = HEADER.unpack_from(region.map, space.header)
        return fresh - 1 - depth

    def add(self, obj: int | DirHandle, nodeid: int, flags: int) -> int:
        """Publish an open file or directory; returns its fh."""
        space, region = self._space, self._region
        region.lock(LOCK_HANDLES)
        try:
            fresh, depth, seq = HEADER.unpack_from(self._map, space.header)
            if depth:
                (slot,) = U32.unpack_from(self._map, space.free + (depth - 1) * U32.size)
                depth -= 1
            elif fresh <= space.capacity:
                slot, fresh = fresh, fresh + 1
            else:
                raise OSError(errno.ENFILE, f"handle table full ({space.capacity} open files)")
            off = space.slots + slot * SLOT.size
            gen = SLOT.unpack_from(self._map, off)[0]
            SLOT.pack_into(self._map, off, gen, DIR if obj.__class__ is DirHandle else FILE, nodeid, flags, self._worker)
            HEADER.pack_into(self._map, space.header, fresh, depth, seq)
        finally:
            region.unlock(LOCK_HANDLES)
        fh = gen << 32 | slot
        self._files[fh] = obj
        return fh

    def slot(self, fh: int, kind: int) -> tuple[int, int]:
        """(nodeid, open flags) of a live fh of `kind`, for a worker about to open its copy; EBADF otherwise."""
        slot = fh & _MASK32
        if not 0 < slot <= self._space.capacity:
            raise _badf()
        gen, live_kind, nodeid, flags, creator = SLOT.unpack_from(self._map, self._space.slots + slot * SLOT.size)
        if live_kind != kind or gen != fh >> 32:
            raise _badf()
        if creator != self._worker:
            self._misc[FOREIGN_FILES] += 1
        return nodeid, openflags.copy(flags)

    def local(self, fh: int) -> int | DirHandle | None:
        return self._files.get(fh)

    def keep(self, fh: int, obj: int | DirHandle) -> None:
        self._files[fh] = obj

    def release(self, fh: int) -> tuple[int, bool]:
        """Free the fh for every worker and close this worker's copy; (nodeid, was a passthrough open)."""
        slot = fh & _MASK32
        space, region = self._space, self._region
        if not 0 < slot <= space.capacity:
            raise _badf()
        off = space.slots + slot * SLOT.size
        region.lock(LOCK_HANDLES)
        try:
            gen, kind, nodeid, flags, _creator = SLOT.unpack_from(self._map, off)
            if kind == FREE or gen != fh >> 32:
                raise _badf()
            SLOT.pack_into(self._map, off, (gen + 1) & _MASK32, FREE, 0, 0, 0)
            fresh, depth, seq = HEADER.unpack_from(self._map, space.header)
            U32.pack_into(self._map, space.free + depth * U32.size, slot)
            ring_push(region, space.ring, seq, fh)
            HEADER.pack_into(self._map, space.header, fresh, depth + 1, seq + 1)
        finally:
            region.unlock(LOCK_HANDLES)
        self._close(fh)
        return nodeid, bool(flags & PASSTHROUGH_MARK)

    def _live(self, fh: int) -> bool:
        gen, kind = SLOT.unpack_from(self._map, self._space.slots + (fh & _MASK32) * SLOT.size)[:2]
        return kind != FREE and gen == fh >> 32

    def _close(self, fh: int) -> None:
        obj = self._files.pop(fh, None)
        if obj is not None:
            os.close(obj if obj.__class__ is int else obj.fd)

    def sync(self) -> None:
        """Close this worker's copies of fhs released elsewhere since the last call."""
        seq = self._ring_seq()
        if seq == self._seen:
            return
        released = ring_since(self._region, self._space.ring, self._seen, seq)
        if released is None:  # fell behind the ring: check every copy
            released = [fh for fh in self._files if not self._live(fh)]
        for fh in released:
            self._close(fh)
        self._seen = seq
