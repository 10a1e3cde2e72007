"""The inode table's shared memory: its slots, field by field, and reading them from any process.

Facts that shape it:

* Any worker may receive any request, so the table lives in shared memory:
  a slot per inode holding its (st_dev, st_ino), its file handle
  (`name_to_handle_at`) and its lookup count, and a hash index from
  (st_dev, st_ino) to slot.  A nodeid is `generation << 32 | slot`: it
  names a slot without any search, and a slot reused after a FORGET gets a
  new generation, so the kernel never confuses an old inode with a new one.
  The root is slot 1, generation 0: nodeid 1.
* The table has no size fixed before the fork: a tree walk would fill any
  such size for every user of the mount.  The slots live in a memfd of their
  own that grows by doubling (`fastpass.shm.growable`); slots never move, so
  a worker that meets a slot past what it has mapped maps the file again
  and goes on.  The index grows without moving anything either: its chains
  are threaded through the slots (`next`), and its bucket heads are a field
  of the slots too (bucket b's head lives in slot b's record, whatever slot
  b holds), split one bucket at a time as the table fills (linear hashing:
  buckets `h mod 2^k` below the split pointer become `h mod 2^(k+1)`), so
  an insert costs one split at most and nothing is ever rehashed at once.
  Freed slots form a list through `next` as well.
* The layout is the restart format too (`fastpass.restart` hands the memfd
  and the region to a new supervisor as they are), so it is written once,
  as the field list below, and every offset and partial record is derived
  from it: code reads a field by its name.
* Every use of the index and every change of a slot's count happens under
  the inode lock (`fastpass.fs.inode_index` makes them); slot contents are
  written before the slot is published in the index and do not change while
  it is live, so reading a slot by nodeid needs no lock.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterable

from fastpass import _linux
from fastpass.config import MAX_INODES
from fastpass.kernel.abi import ROOT_ID
from fastpass.shm import growable
from fastpass.shm.growable import Growable
from fastpass.shm.region import BACKING_STRIPES, LOCK_INODES, RING, SLOTS, U32, U64, Layout, Region, ring_since

# A slot, 200 bytes: its fields in order, each with its struct code.
FIELDS = (
    ("generation", "I"),  # of the nodeid the slot gives while live
    ("live", "I"),
    ("nlookup", "q"),
    ("dev", "Q"),  # (dev, ino): the index's key
    ("ino", "Q"),
    ("next", "I"),  # the index chain, or the free list
    ("head", "I"),  # of the index bucket numbered like this slot, whatever slot this is
    ("backing_id", "i"),  # passthrough (fastpass.fs.passthrough)
    ("opens", "i"),  # passthrough opens where passthrough is on; every open file under the writeback cache
    ("owner", "I"),  # the uid the backing id was registered as
    ("keep", "I"),  # whether the id may stay registered with no open (its file is read-only)
    ("mount_id", "i"),
    ("hlen", "B"),  # the handle's length (0: none)
    ("ref", "B"),  # touched by a lookup since the clock hand passed
    ("creator", "H"),  # the worker that made it
    ("cell", "I"),  # the share cell of the uid that made it
    ("outdated", "B"),  # changed outside (the writeback cache)
    ("retired", "B"),  # out of the index while live
    ("", "2x"),
    ("handle", "128s"),
)
_CODES = [code for _, code in FIELDS]
AT = {name: struct.calcsize("<" + "".join(_CODES[:i])) for i, (name, _) in enumerate(FIELDS) if name}


def fields(first: str, last: str) -> struct.Struct:
    """The slot's fields `first`..`last` as one record, at AT[first]."""
    names = [name for name, _ in FIELDS]
    return struct.Struct("<" + "".join(_CODES[names.index(first) : names.index(last) + 1]))


SLOT = fields("generation", "handle")
SLOT_SIZE = SLOT.size
GEN_LIVE = fields("generation", "live")
COUNT = fields("generation", "nlookup")
NLOOKUP = fields("nlookup", "nlookup")
CHAIN = fields("dev", "next")  # at KEY_AT
BACKING = fields("backing_id", "keep")  # at BACKING_AT
BACKING_ID = fields("backing_id", "backing_id")
OPENS = fields("opens", "opens")
KEY_AT, NEXT_AT, HEAD_AT, BACKING_AT, OPENS_AT = AT["dev"], AT["next"], AT["head"], AT["backing_id"], AT["opens"]
HLEN_AT, HANDLE_AT, REF_AT, CELL_AT = AT["hlen"], AT["handle"], AT["ref"], AT["cell"]
OUTDATED_AT, RETIRED_AT = AT["outdated"], AT["retired"]

# The table's header, in the region: slots the file holds, the index's level and split pointer, next
# never-used slot, head of the free list, live slots (the root's included), the clock hand,
# slots taken (or refused) since the last prune, freed-ring sequence.
HEADER = struct.Struct("<IIIIIIIIQ")
EXTENT, FRESH, LIVE, HAND, SINCE, SEQ = 0, 12, 20, 24, 28, 32  # offsets
# A uid's share cell, in the region: used, uid, its live slots, slots it took (or was refused)
# since its last prune.  Cells are claimed by probing from the uid's home and never emptied (a
# cell whose count is 0 may be claimed again), so a probe ends at the first unused one.
CELL = struct.Struct("<IIII")
CELL_COUNT = 8
UIDS = 1024  # share cells; a uid that finds none free (1023 others with live slots) is not counted
FIRST_SLOTS = 1024  # the table's first size (200 KiB); it doubles as it fills
FIRST_BUCKETS = 256  # the index's first size, <= FIRST_SLOTS
MAX_SLOTS = MAX_INODES  # the nodeid's 32 bits of slot, less slot 0: the default bound
MASK32 = 0xFFFFFFFF
ROOT_SLOT = 1


class Inode:
    """This worker's view of a live slot: identity plus its own O_PATH fd (-1 when not open,
    `fastpass.fs.inodes` opens and keeps it)."""

    __slots__ = ("fd", "generation", "handle", "key", "mount_id", "nodeid")

    def __init__(self, nodeid: int, key: tuple[int, int], handle: bytes | None, mount_id: int, fd: int):
        self.nodeid = nodeid
        self.generation = nodeid >> 32
        self.key = key
        self.handle = handle
        self.mount_id = mount_id
        self.fd = fd


def stale() -> OSError:
    return OSError(errno.ESTALE, os.strerror(errno.ESTALE))


def handle_of(fd: int) -> tuple[bytes | None, int]:
    """(file handle, mount id) of the inode behind `fd`, or (None, -1) where the filesystem has none."""
    try:
        return _linux.name_to_handle(fd)
    except OSError:
        return None, -1


def bucket_of(h: int, level: int, split: int) -> int:
    """Linear hashing: h's bucket among FIRST_BUCKETS << level, plus `split` already split in two."""
    low = FIRST_BUCKETS << level
    b = h & (low - 1)
    return h & ((low << 1) - 1) if b < split else b


class InodeSpace:
    """Where the table lives: its header, freed-ring and share cells laid out in the region, its
    slots in a growing memfd of their own; made by the supervisor, before the fork."""

    def __init__(self, layout: Layout, capacity: int, attach: int | None = None):
        """`attach`: the slots' memfd of a supervisor that handed over (`fastpass.restart`)."""
        self.capacity = min(capacity, MAX_SLOTS) or MAX_SLOTS  # live inodes at most, root included; 0: no bound
        self.header = layout.take(HEADER.size)
        self.ring = layout.take(U64.size * RING)
        self.kept = layout.take(U32.size * BACKING_STRIPES)  # ids that may stay idle, per lock stripe
        self.cells = layout.take(CELL.size * UIDS)
        self.fd = growable.create("fastpass-inodes", FIRST_SLOTS * SLOT_SIZE) if attach is None else attach

    def live(self, region: Region) -> int:
        """Entries in use, read from the shared header (for stats)."""
        return U32.unpack_from(region.map, self.header + LIVE)[0]

    def slots(self, region: Region) -> int:
        """Slots the table has room for now (SLOT_SIZE bytes of shared memory each, for stats)."""
        return U32.unpack_from(region.map, self.header + EXTENT)[0]


class SlotReader:
    """One process's mapping of the table's slots, mapped again as far as the table has grown when
    a slot past it is met, and the index walk.  The watcher reads with one (and marks files changed
    outside); a worker's InodeIndex is one."""

    def __init__(self, space: InodeSpace, region: Region):
        self._space = space
        self._region = region
        self._rmap = region.map  # header, ring, kept counts, share cells
        self._hdr = space.header
        extent = U32.unpack_from(region.map, space.header + EXTENT)[0]
        self._file = Growable(space.fd, extent * SLOT_SIZE)
        self._map = self._file.map  # the slots; taken again after each remap
        self._mapped = extent  # slots mapped here
        region.targets[SLOTS] = self._reaching  # where a dead section's writes are undone (region.py)

    def _catch_up(self) -> tuple[int, ...]:
        """Map every slot the table has now (another process may have grown it); returns the
        header as it is."""
        header = HEADER.unpack_from(self._rmap, self._hdr)
        if header[0] != self._mapped:
            self._file.remap(header[0] * SLOT_SIZE)
            self._map = self._file.map
            self._mapped = header[0]
        return header

    def _reaching(self, end: int) -> Growable:
        """The slots' mapping, mapped at least up to byte `end`."""
        self._reach((end - 1) // SLOT_SIZE)
        return self._map  # type: ignore[return-value]

    def _reach(self, slot: int) -> bool:
        """Whether `slot` exists, mapping the table's new slots if it lies past this process's."""
        if slot < self._mapped:
            return True
        self._catch_up()
        return slot < self._mapped

    def _handle(self, off: int) -> bytes:
        """The handle of the slot at `off` (b"": none)."""
        m = self._map
        at = off + HANDLE_AT
        return m[at : at + m[off + HLEN_AT]]

    def _find(self, key: tuple[int, int], level: int, split: int) -> tuple[int, int, int]:
        """(bucket, previous slot in its chain or 0, slot) of `key`, slot 0 if absent, in the index
        of that level and split (lock held)."""
        bucket = bucket_of(hash(key), level, split)
        m = self._map
        slot = U32.unpack_from(m, bucket * SLOT_SIZE + HEAD_AT)[0]
        prev = 0
        dev, ino = key
        while slot:
            d, i, nxt = CHAIN.unpack_from(m, slot * SLOT_SIZE + KEY_AT)
            if i == ino and d == dev:
                return bucket, prev, slot
            prev, slot = slot, nxt
        return bucket, prev, 0

    def nodeid_of(self, key: tuple[int, int], handle: bytes | None = None) -> int:
        """The live nodeid of backing inode `key`, or 0 if the kernel does not know it.  With a
        handle, a slot holding another handle (a reused inode number) does not count."""
        region = self._region
        region.lock(LOCK_INODES)
        try:
            header = self._catch_up()
            slot = self._find(key, header[1], header[2])[2]
            if not slot:
                return 0
            off = slot * SLOT_SIZE
            gen, live = GEN_LIVE.unpack_from(self._map, off)
            own = self._handle(off)
        finally:
            region.unlock(LOCK_INODES)
        if not live or (handle is not None and own and own != handle):
            return 0
        return gen << 32 | slot

    def live(self) -> list[int]:
        """Every nodeid the kernel may hold now (a snapshot: the watcher's overflow drops them all)."""
        fresh = self._catch_up()[3]
        m = self._map
        found = []
        for slot in range(ROOT_SLOT, fresh):
            gen, live = GEN_LIVE.unpack_from(m, slot * SLOT_SIZE)
            if live:
                found.append(gen << 32 | slot)
        return found

    def outdate(self, nodeid: int) -> None:
        """Mark a live inode changed outside, so that the kernel's next lookup of it, once no open
        holds it, makes a new inode (the writeback cache; see fastpass.fs.inode_index).  A slot
        freed and taken again since `nodeid_of` is marked too: its next lookup then retires it for
        nothing."""
        slot = nodeid & MASK32
        if slot != ROOT_SLOT and self._reach(slot):
            self._map[slot * SLOT_SIZE + OUTDATED_AT] = 1

    def outdated(self, nodeid: int) -> bool:
        """Whether the inode was changed outside while the kernel may keep its size and times."""
        return self._map[(nodeid & MASK32) * SLOT_SIZE + OUTDATED_AT] != 0

    def in_passthrough(self, nodeid: int) -> bool:
        """Whether the inode has a passthrough open: the kernel then changes its data and size itself."""
        slot = nodeid & MASK32
        return self._reach(slot) and OPENS.unpack_from(self._map, slot * SLOT_SIZE + OPENS_AT)[0] > 0

    def ring_seq(self) -> int:
        """The freed ring's sequence: how many nodeids were ever freed."""
        return U64.unpack_from(self._rmap, self._hdr + SEQ)[0]

    def freed(self, seen: int, seq: int, views: Iterable[int]) -> list[int]:
        """The nodeids freed from ring entry `seen` to `seq`; where the ring has overwritten them
        (the caller fell behind), those of `views` that are no longer live."""
        found = ring_since(self._region, self._space.ring, seen, seq)
        if found is None:
            m = self._map
            found = [n for n in views if n != ROOT_ID and GEN_LIVE.unpack_from(m, (n & MASK32) * SLOT_SIZE)
                     != (n >> 32, 1)]  # fmt: skip
        return found
