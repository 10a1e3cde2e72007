"""The shared attribute cache: each nodeid's backing attributes, read by any worker without a lock.

Facts that shape it:

* Direct-mapped and bounded: a nodeid's slot is its inode-table slot
  modulo the cache size, so finding it needs no search.  A fill for
  another nodeid evicts whatever the slot held (counted).
* Readers take no lock.  A slot carries a sequence number that is odd while
  a writer is inside it; a reader reads it, then the nodeid, stamp and
  attributes, then the number again, and uses the copy only if nothing
  changed (else it is a miss and the backing answers).
* Writers (a worker after a backing call, the watcher process) take the
  region's lock of the slot's stripe (`LOCK_ATTRS`).
* The backing is the truth, so what goes in must not be older than what
  is already known.  Every fill carries `t0`, the monotonic time taken
  before the backing call whose result it is; each slot keeps the newest
  such time, or the time of the last change dropped from it (`changed`).
  A fill with `t0` before `changed` is refused: a getattr that raced a
  write on another worker cannot put back the size from before the write,
  whether it arrives after the writer's refresh or after a drop.
  CLOCK_MONOTONIC is the same clock in every process.
* An entry is good for `revalidate` seconds when the backing gives no
  change events (0: until changed or evicted).
* Passthrough opens change a file's data and size in the kernel, without a
  request: the caller does not use the cache for such inodes.
* Beside the attributes, a slot keeps flags that hold as long as the entry
  does.  NO_CAPS: the file has no security.capability, because the worker
  that filled it made the file itself.  The kernel asks for that attribute
  at the first write to each new inode (to know whether the write must drop
  capabilities), so a create + write pays a GETXATTR that the backing would
  answer ENODATA: from the cache it costs no backing call.  Capabilities are
  set only by setxattr, which drops the entry like any change.
"""

from __future__ import annotations

import os
import struct
import time

from fastpass.kernel.abi import ATTR
from fastpass.shm.counters import CACHE_EVICTIONS, CACHE_HITS, CACHE_MISSES
from fastpass.shm.region import ATTR_STRIPES, LOCK_ATTRS, Layout, Region

HEAD = struct.Struct("<QQQQ")  # sequence, nodeid, stamp (t0 of the data), changed
_SEQ = struct.Struct("<Q")
SLOT_SIZE = 128  # head + fuse_attr, rounded to two slots a cache line
_ATTR_AT = HEAD.size
_MASK32 = 0xFFFFFFFF
# fuse_attr fields a read may move: atime, mtime, ctime (seconds)
_TIMES = struct.Struct("<QQQ")
_TIMES_AT = _ATTR_AT + 24
_DAY = 86400
_FLAGS = struct.Struct("<Q")
_FLAGS_AT = _ATTR_AT + ATTR.size
NO_CAPS = 1  # the file has no security.capability (its creator filled the entry)
assert _FLAGS_AT + _FLAGS.size <= SLOT_SIZE


class AttrSpace:
    """Where the cache lives in the region: sized once by the supervisor, before the fork."""

    def __init__(self, layout: Layout, size: int):
        self.size = size
        self.offset = layout.take(SLOT_SIZE * size) if size else 0


class AttrCache:
    """One process's handle on the shared cache; `misc` is its counter block (hits, misses, evictions)."""

    def __init__(self, space: AttrSpace, region: Region, misc: memoryview, revalidate: float, atime: str):
        self._map = region.map
        self._region = region
        self._base = space.offset
        self._size = space.size
        self._misc = misc
        self._ttl = int(revalidate * 1e9)
        self._atime = atime  # the backing's atime policy: "relatime", "strictatime" or "noatime"

    def _at(self, nodeid: int) -> int:
        return self._base + ((nodeid & _MASK32) % self._size) * SLOT_SIZE

    def get(self, nodeid: int) -> bytes | None:
        """The packed fuse_attr of `nodeid`, or None (a miss: ask the backing and `put` it)."""
        m = self._map
        off = self._at(nodeid)
        seq, nid, stamp, _ = HEAD.unpack_from(m, off)
        if nid == nodeid and not seq & 1:
            attr = m[off + _ATTR_AT : off + _ATTR_AT + ATTR.size]
            if _SEQ.unpack_from(m, off)[0] == seq and (not self._ttl or time.monotonic_ns() - stamp < self._ttl):
                self._misc[CACHE_HITS] += 1
                return attr
        self._misc[CACHE_MISSES] += 1
        return None

    def flags(self, nodeid: int) -> int:
        """The flags kept with `nodeid`'s entry (NO_CAPS), 0 where it has none (a miss)."""
        m = self._map
        off = self._at(nodeid)
        seq, nid, stamp, _ = HEAD.unpack_from(m, off)
        if nid == nodeid and not seq & 1:
            (flags,) = _FLAGS.unpack_from(m, off + _FLAGS_AT)
            if _SEQ.unpack_from(m, off)[0] == seq and (not self._ttl or time.monotonic_ns() - stamp < self._ttl):
                return flags
        return 0

    def put(self, nodeid: int, t0: int, attr: bytes, flags: int = 0) -> None:
        """Store the attributes a backing call begun at monotonic time `t0` returned, with
        `flags` (NO_CAPS), unless a change since then makes them possibly stale."""
        m = self._map
        off = self._at(nodeid)
        lock = LOCK_ATTRS + (off - self._base) // SLOT_SIZE % ATTR_STRIPES
        self._region.lock(lock)
        try:
            seq, nid, _, changed = HEAD.unpack_from(m, off)
            if t0 < changed:
                return
            if nid and nid != nodeid:
                self._misc[CACHE_EVICTIONS] += 1
            seq |= 1  # odd while written; one left odd by a worker that died here ends even again
            _SEQ.pack_into(m, off, seq)
            m[off + _ATTR_AT : off + _ATTR_AT + ATTR.size] = attr
            _FLAGS.pack_into(m, off + _FLAGS_AT, flags)
            HEAD.pack_into(m, off, seq + 1, nodeid, t0, t0)  # nothing older may follow
        finally:
            self._region.unlock(lock)

    def changed(self, nodeid: int) -> None:
        """`nodeid` changed in the backing just now: drop its entry, and refuse fills begun before."""
        m = self._map
        off = self._at(nodeid)
        lock = LOCK_ATTRS + (off - self._base) // SLOT_SIZE % ATTR_STRIPES
        now = time.monotonic_ns()
        self._region.lock(lock)
        try:
            seq, nid, stamp, _ = HEAD.unpack_from(m, off)
            if nid == nodeid:
                HEAD.pack_into(m, off, seq + 2, 0, 0, now)
            else:  # another nodeid's entry stays; the mark still guards against a late fill of ours
                HEAD.pack_into(m, off, seq, nid, stamp, now)
        finally:
            self._region.unlock(lock)

    def read(self, nodeid: int) -> None:
        """A read of `nodeid` reached the backing: drop the entry if that read may have moved
        its atime (always under strictatime; under relatime when atime is not after mtime
        and ctime, or a day old)."""
        policy = self._atime
        if policy == "noatime":
            return
        m = self._map
        off = self._at(nodeid)
        if HEAD.unpack_from(m, off)[1] != nodeid:
            return
        if policy == "relatime":
            atime, mtime, ctime = _TIMES.unpack_from(m, off + _TIMES_AT)
            if atime > mtime and atime > ctime and time.time() - atime < _DAY:
                return
        self.changed(nodeid)


def atime_policy(fd: int) -> str:
    """How the backing filesystem moves atime on reads, from its mount flags."""
    flags = os.fstatvfs(fd).f_flag
    if flags & os.ST_NOATIME:
        return "noatime"
    return "relatime" if flags & os.ST_RELATIME else "strictatime"
