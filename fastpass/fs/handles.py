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
* The table is cut into HANDLE_SHARDS shards, each with its own slots,
  free stack and lock; a worker allocates from its own shard (another's
  when it is full), so opens on different workers never wait on one lock,
  and a release waits only on the shard its fh came from.
* A RELEASE of an fh that only its opener held (the common case: it came
  to the opener) frees the slot and nothing more.  One that another worker
  may hold a copy of (it took the slot to make one, or the release came to
  another worker) also goes into a ring, under a lock of its own; every
  worker closes its copy when it sees it (`sync`, at the top of each
  request), so copies in busy workers go at once and those in an idle
  worker when it next works.
* A worker's own fd for a file it opened stays until the RELEASE.  Its copies
  of other fhs, and its open directories, are a cache that gives way when
  fds are short (the oldest first; `fastpass.fs.fds`), reopened by the next
  request that needs one: a listing continues at its offset in a new open.
* With --allow-other each slot is charged to the uid that opened it, and a
  uid holding its share (`--max-open-per-user`, over all workers) is
  refused with EMFILE (`fastpass.shm.shares`), so that one user's open
  files leave fds and slots for the others.
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
from fastpass.fs.fds import FdBudget
from fastpass.shm.counters import FOREIGN_FILES
from fastpass.shm.region import (
    HANDLE_SHARDS,
    LOCK_HANDLE_RING,
    LOCK_HANDLES,
    LOCK_SHARES,
    RING,
    U32,
    U64,
    Layout,
    Region,
    ring_push,
    ring_since,
)
from fastpass.shm.shares import Shares, ShareSpace

# generation, kind, nodeid, open flags (| PASSTHROUGH_MARK), creating worker, copied elsewhere,
# the opener's uid
SLOT = struct.Struct("<IIQIHHI")
SHARD = struct.Struct("<II")  # next fresh slot (shard-relative, from 0), free-stack depth
RING_HEADER = U64  # release-ring sequence
FREE, FILE, DIR = 0, 1, 2
_MASK32 = 0xFFFFFFFF
PASSTHROUGH_MARK = 1 << 31  # kept with the open flags: the fh holds one of its inode's passthrough opens


def _badf() -> OSError:
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


def _fd_of(obj: int | DirHandle) -> int:
    return obj if obj.__class__ is int else obj.fd  # type: ignore[return-value,union-attr]


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
        self.per_shard = max(1, capacity // HANDLE_SHARDS)
        self.capacity = self.per_shard * HANDLE_SHARDS  # slots 1..capacity; shard s has s*per+1..(s+1)*per
        self.shards = layout.take(64 * HANDLE_SHARDS)  # a header a cache line
        self.slots = layout.take(SLOT.size * (self.capacity + 1))
        self.free = layout.take(U32.size * self.capacity)  # shard s's stack at s*per
        self.ring_header = layout.take(RING_HEADER.size)
        self.ring = layout.take(U64.size * RING)
        self.users = ShareSpace(layout)


class HandleTable:
    @staticmethod
    def format(space: HandleSpace, region: Region) -> None:
        """Nothing to write: a zeroed region is an empty table."""

    def __init__(self, space: HandleSpace, region: Region, worker: int, misc: memoryview, fds: FdBudget,
                 share: int = 0):  # fmt: skip
        """`share`: the fhs one uid may hold over all workers; 0: no limit."""
        self._worker = worker
        self._shard = worker % HANDLE_SHARDS
        self._misc = misc  # this worker's misc counters (FOREIGN_FILES)
        self._space = space
        self._region = region
        self._map = region.map
        self._files: dict[int, int | DirHandle] = {}  # fh -> this worker's fd or DirHandle
        self._cached: dict[int, None] = {}  # the fhs of _files it may give back (copies, directories), oldest first
        self._fds = fds
        fds.files, fds.copies, fds.shed_copies = self._files, self._cached, self._shed
        self._users = Shares(space.users, region, LOCK_SHARES, share) if share else None
        self._seen = self._ring_seq()

    def _ring_seq(self) -> int:
        return RING_HEADER.unpack_from(self._map, self._space.ring_header)[0]

    @staticmethod
    def live(space: HandleSpace, region: Region) -> int:
        """Entries in use, read from the shards' headers (for stats)."""
        return sum(fresh - depth for fresh, depth in (SHARD.unpack_from(region.map, space.shards + 64 * s)
                                                      for s in range(HANDLE_SHARDS)))  # fmt: skip

    def add(self, obj: int | DirHandle | None, nodeid: int, flags: int, uid: int) -> int:
        """Publish an open file or directory that `uid` opened; returns its fh.  `obj`: this
        worker's fd or DirHandle, None where it opens one when a request needs it.  EMFILE
        where this worker's fds or the uid's share are used up (the caller closes `obj`)."""
        kind = DIR if obj.__class__ is DirHandle else FILE
        if kind == FILE and obj is not None:
            self._fds.admit()
        users = self._users
        if users is not None and not users.charge(uid):
            raise OSError(errno.EMFILE, f"uid {uid} holds its share of open files ({users.share})")
        fh = self._take(self._shard, kind, nodeid, flags, uid)
        if not fh:  # its own shard is full
            fh = next(filter(None, (self._take(s, kind, nodeid, flags, uid) for s in range(HANDLE_SHARDS))), 0)
            if not fh:
                if users is not None:
                    users.refund(uid)
                raise OSError(errno.ENFILE, f"handle table full ({self._space.capacity} open files)")
        if obj is not None:
            self._files[fh] = obj
            if kind == DIR:
                self._cached[fh] = None
            self._fds.trim()
        return fh

    def _take(self, shard: int, kind: int, nodeid: int, flags: int, uid: int) -> int:
        """The fh of a slot of `shard` now holding the new handle, or 0 when the shard is full."""
        space, region, m = self._space, self._region, self._map
        head = space.shards + 64 * shard
        region.lock(LOCK_HANDLES + shard)
        try:
            fresh, depth = SHARD.unpack_from(m, head)
            if depth:
                depth -= 1
                (slot,) = U32.unpack_from(m, space.free + (shard * space.per_shard + depth) * U32.size)
            elif fresh < space.per_shard:
                slot = shard * space.per_shard + fresh + 1
                fresh += 1
            else:
                return 0
            off = space.slots + slot * SLOT.size
            (gen,) = U32.unpack_from(m, off)
            SLOT.pack_into(m, off, gen, kind, nodeid, flags, self._worker, 0, uid)
            SHARD.pack_into(m, head, fresh, depth)
            return gen << 32 | slot
        finally:
            region.unlock(LOCK_HANDLES + shard)

    def slot(self, fh: int, kind: int) -> tuple[int, int]:
        """(nodeid, open flags) of a live fh of `kind`, for a worker about to open its copy; EBADF
        otherwise.  Marks the fh copied, so that its release tells every worker."""
        slot = fh & _MASK32
        space = self._space
        if not 0 < slot <= space.capacity:
            raise _badf()
        off = space.slots + slot * SLOT.size
        lock = LOCK_HANDLES + (slot - 1) // space.per_shard
        self._region.lock(lock)  # against a release: it sees the mark, or we see the slot freed
        try:
            gen, live_kind, nodeid, flags, creator, _copied, uid = SLOT.unpack_from(self._map, off)
            if live_kind != kind or gen != fh >> 32:
                raise _badf()
            SLOT.pack_into(self._map, off, gen, live_kind, nodeid, flags, creator, 1, uid)
        finally:
            self._region.unlock(lock)
        if creator != self._worker:
            self._misc[FOREIGN_FILES] += 1
        return nodeid, openflags.copy(flags)

    def local(self, fh: int) -> int | DirHandle | None:
        return self._files.get(fh)

    def keep(self, fh: int, obj: int | DirHandle) -> None:
        """Keep this worker's reopen of an fh (`slot`) for the next request on it."""
        self._files[fh] = obj
        self._cached[fh] = None
        self._fds.trim()

    def _shed(self, n: int) -> int:
        """Give back up to `n` of the oldest fds it may (closed once no request may use them)."""
        cached, files, doom = self._cached, self._files, self._fds.doom
        n = min(n, len(cached))
        for _ in range(n):
            fh = next(iter(cached))
            del cached[fh]
            doom(_fd_of(files.pop(fh)))
        return n

    def release(self, fh: int) -> tuple[int, int]:
        """Free the fh for every worker and close this worker's copy; (nodeid, its open flags with
        PASSTHROUGH_MARK if it held one of the inode's passthrough opens)."""
        slot = fh & _MASK32
        space, region, m = self._space, self._region, self._map
        if not 0 < slot <= space.capacity:
            raise _badf()
        off = space.slots + slot * SLOT.size
        shard = (slot - 1) // space.per_shard
        head = space.shards + 64 * shard
        region.lock(LOCK_HANDLES + shard)
        try:
            gen, kind, nodeid, flags, creator, copied, uid = SLOT.unpack_from(m, off)
            if kind == FREE or gen != fh >> 32:
                raise _badf()
            SLOT.pack_into(m, off, (gen + 1) & _MASK32, FREE, 0, 0, 0, 0, 0)
            fresh, depth = SHARD.unpack_from(m, head)
            U32.pack_into(m, space.free + (shard * space.per_shard + depth) * U32.size, slot)
            SHARD.pack_into(m, head, fresh, depth + 1)
            if copied or creator != self._worker:
                region.lock(LOCK_HANDLE_RING)
                try:
                    (seq,) = RING_HEADER.unpack_from(m, space.ring_header)
                    ring_push(region, space.ring, seq, fh)
                    RING_HEADER.pack_into(m, space.ring_header, seq + 1)
                finally:
                    region.unlock(LOCK_HANDLE_RING)
        finally:
            region.unlock(LOCK_HANDLES + shard)
        if self._users is not None:
            self._users.refund(uid)
        self._close(fh)
        return nodeid, flags

    def _live(self, fh: int) -> bool:
        gen, kind = SLOT.unpack_from(self._map, self._space.slots + (fh & _MASK32) * SLOT.size)[:2]
        return kind != FREE and gen == fh >> 32

    def _close(self, fh: int) -> None:
        obj = self._files.pop(fh, None)
        if obj is not None:
            self._cached.pop(fh, None)
            os.close(_fd_of(obj))

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
