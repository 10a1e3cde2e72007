"""The inode table: nodeid <-> backing inode, shared by every worker, never by path.

Size: over 500 lines and `InodeTable` over 25 methods: it holds the shared index, each
worker's fd cache, the passthrough backing ids and forget; splitting them (issue 25,
step 2) is still to do.

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
* The bound is `--max-inodes` (a memory cap; by default the nodeid format's
  own).  Before a lookup meets it, and before a uid meets its share under
  allow_other, the table asks the kernel to forget cold inodes
  (FUSE_NOTIFY_PRUNE, 7.45): from `batch` slots below the bound, every
  batch/2 slots taken, it picks up to `batch` live slots that no lookup
  has touched since the clock hand last passed them (CLOCK; a slot's first
  lookup leaves it untouched, so a walk's inodes go first) and have no
  passthrough open, and `prune` sends them from a thread of the worker
  (`fastpass.fs.prune`).  The kernel drops those it can (no open file, no
  cwd, no child dentry) and sends their FORGETs.  Only at the bound itself
  is a lookup answered ENFILE, and only to the uid whose share is full.
* A backing inode number can be reused once the inode is freed.  The file
  handle carries the inode's own generation on handle-capable filesystems,
  so a lookup that finds a known (st_dev, st_ino) with a different handle
  has met a reused number: the name gets a new slot, and the old nodeid
  stays valid until the kernel forgets it.
* Each worker keeps its own O_PATH fds, opened lazily from the handle
  (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH) and kept in an LRU
  that gives way to open files (`fastpass.fs.fds`); views without an fd are
  dropped too, so a worker's memory follows its fds, not the table.  A local fd pins the
  inode, so while this worker holds one, a lookup of the same
  (st_dev, st_ino) needs no handle comparison.  Without usable handles (not
  root, or a filesystem without export support) fds are pinned and never
  evicted, and one worker serves.
* Under the writeback cache the kernel keeps a regular file's size and times
  for as long as it holds the inode (fastpass.fs.watcher), and it may still
  hold one nothing uses: the RELEASE it sent at the last close holds it until
  answered, and a LOOKUP answered meanwhile finds it again.  So the watcher
  marks a file changed outside (`outdate`), and a lookup of a marked regular
  file that no open holds (`opened` counts them) retires its slot: out of
  the index, and the name gets a new slot, which the kernel makes a new
  inode of, with the backing's size.  A marked file still open keeps its
  slot, and its entries are valid for no time, so each walk asks again.
* Every use of the index and every change of a slot's count happens under
  the inode lock; slot contents are written before the slot is published in
  the index and do not change while it is live, so reading a slot by nodeid
  needs no lock.  When a count reaches zero the nodeid goes into a ring of
  freed nodeids, from which every worker closes its own fd for it (`sync`,
  at the top of each request).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections import OrderedDict
from collections.abc import Callable

from fastpass import _linux
from fastpass.config import MAX_INODES
from fastpass.fs.fds import FLOOR, FdBudget
from fastpass.kernel.abi import ROOT_ID
from fastpass.shm import growable
from fastpass.shm.counters import FOREIGN_NODES
from fastpass.shm.growable import Growable
from fastpass.shm.region import (
    BACKING_STRIPES,
    LOCK_BACKING,
    LOCK_INODES,
    RING,
    SLOTS,
    U32,
    U64,
    Layout,
    Region,
    ring_push,
    ring_since,
)

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# A slot, 200 bytes: generation, live, nlookup, dev, ino, next (index chain or free list), head (of
# the index bucket numbered like this slot), passthrough backing id, opens (passthrough opens where
# passthrough is on; every open file under the writeback cache, which excludes it), uid it was
# registered as, whether the id may stay registered with no open (its file is read-only), mount
# id, handle length, touched by a lookup since the clock hand passed, creating worker, share cell
# of the uid that made it, changed outside (the writeback cache), retired (out of the index while
# live), handle.
SLOT = struct.Struct("<IIqQQIIiiIIiBBHIBB2x128s")
SLOT_SIZE = SLOT.size
_IDENT = struct.Struct("<IIqQQI")  # generation .. next, at 0: written without the bucket head after it
_REST = struct.Struct("<iiIIiBBHIBB2x128s")  # backing id .. handle, at _BACKING_AT
_CHAIN = struct.Struct("<QQI")  # dev, ino, next, at _KEY_AT
_GEN_LIVE = struct.Struct("<II")
_COUNT = struct.Struct("<IIq")  # generation, live, nlookup
_NLOOKUP = struct.Struct("<q")
_KEY_AT, _NEXT_AT, _HEAD_AT, _BACKING_AT, _REF_AT, _CELL_AT, _OUTDATED_AT, _RETIRED_AT = 16, 32, 36, 40, 61, 64, 68, 69
_OPENS_AT = _BACKING_AT + 4
_BACKING = struct.Struct("<iiII")
_I32 = struct.Struct("<i")
# Backing ids kept registered with no open, at most: each pins a kernel file, its dentry and the
# backing inode (about 1.5 KiB), and a deleted file's blocks, until the kernel forgets the inode.
IDLE_IDS = 16384
# The table's header, in the region: slots the file holds, the index's level and split pointer, next
# never-used slot, head of the free list, live slots (the root's included), the clock hand,
# slots taken (or refused) since the last prune, freed-ring sequence.
HEADER = struct.Struct("<IIIIIIIIQ")
_EXTENT, _FRESH, _LIVE, _HAND, _SINCE, _SEQ = 0, 12, 20, 24, 28, 32  # offsets
# A uid's share cell, in the region: used, uid, its live slots, slots it took (or was refused)
# since its last prune.  Cells are claimed by probing from the uid's home and never emptied (a
# cell whose count is 0 may be claimed again), so a probe ends at the first unused one.
CELL = struct.Struct("<IIII")
_CELL_COUNT = 8
UIDS = 1024  # share cells; a uid that finds none free (1023 others with live slots) is not counted
FIRST_SLOTS = 1024  # the table's first size (200 KiB); it doubles as it fills
FIRST_BUCKETS = 256  # the index's first size, <= FIRST_SLOTS
MAX_SLOTS = MAX_INODES  # the nodeid's 32 bits of slot, less slot 0: the default bound
MAX_PRUNE = 4096  # nodeids one prune asks the kernel to forget, at most
_MASK32 = 0xFFFFFFFF
_ROOT_SLOT = 1


def prune_batch(bound: int) -> int:
    """How far below a bound pruning starts, and how many nodeids one prune names."""
    return max(4, min(bound // 8, MAX_PRUNE))


class Inode:
    """This worker's view of a live slot: identity plus its own O_PATH fd (-1 when not open)."""

    __slots__ = ("fd", "generation", "handle", "key", "mount_id", "nodeid")

    def __init__(self, nodeid: int, key: tuple[int, int], handle: bytes | None, mount_id: int, fd: int):
        self.nodeid = nodeid
        self.generation = nodeid >> 32
        self.key = key
        self.handle = handle
        self.mount_id = mount_id
        self.fd = fd


def _stale() -> OSError:
    return OSError(errno.ESTALE, os.strerror(errno.ESTALE))


def handle_of(fd: int) -> tuple[bytes | None, int]:
    """(file handle, mount id) of the inode behind `fd`, or (None, -1) where the filesystem has none."""
    try:
        return _linux.name_to_handle(fd)
    except OSError:
        return None, -1


def _anchor(path: bytes | str) -> int | None:
    """An fd open_by_handle_at accepts as its mount_fd: a real open of the directory (O_PATH gives EBADF)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def can_reopen(mount_fd: int, handle: bytes) -> bool:
    """Whether open_by_handle_at works here (it needs CAP_DAC_READ_SEARCH)."""
    try:
        os.close(_linux.open_by_handle(mount_fd, handle, O_PATH_FLAGS))
        return True
    except OSError:
        return False


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


def _bucket(h: int, level: int, split: int) -> int:
    """Linear hashing: h's bucket among FIRST_BUCKETS << level, plus `split` already split in two."""
    low = FIRST_BUCKETS << level
    b = h & (low - 1)
    return h & ((low << 1) - 1) if b < split else b


class SlotReader:
    """One process's mapping of the table's slots, mapped again as far as the table has grown when
    a slot past it is met, and the index walk.  The watcher reads with one (and marks files changed
    outside); a worker's InodeTable is one."""

    def __init__(self, space: InodeSpace, region: Region):
        self._space = space
        self._region = region
        self._rmap = region.map  # header, ring, kept counts, share cells
        self._hdr = space.header
        extent = U32.unpack_from(region.map, space.header + _EXTENT)[0]
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

    def _find(self, key: tuple[int, int], level: int, split: int) -> tuple[int, int, int]:
        """(bucket, previous slot in its chain or 0, slot) of `key`, slot 0 if absent, in the index
        of that level and split (lock held)."""
        bucket = _bucket(hash(key), level, split)
        m = self._map
        slot = U32.unpack_from(m, bucket * SLOT_SIZE + _HEAD_AT)[0]
        prev = 0
        dev, ino = key
        while slot:
            d, i, nxt = _CHAIN.unpack_from(m, slot * SLOT_SIZE + _KEY_AT)
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
            row = SLOT.unpack_from(self._map, slot * SLOT_SIZE)
        finally:
            region.unlock(LOCK_INODES)
        gen, live, hlen, h = row[0], row[1], row[12], row[18]
        if not live or (handle is not None and hlen and h[:hlen] != handle):
            return 0
        return gen << 32 | slot

    def live(self) -> list[int]:
        """Every nodeid the kernel may hold now (a snapshot: the watcher's overflow drops them all)."""
        fresh = self._catch_up()[3]
        m = self._map
        found = []
        for slot in range(_ROOT_SLOT, fresh):
            gen, live = _GEN_LIVE.unpack_from(m, slot * SLOT_SIZE)
            if live:
                found.append(gen << 32 | slot)
        return found

    def outdate(self, nodeid: int) -> None:
        """Mark a live inode changed outside, so that the kernel's next lookup of it, once no open
        holds it, makes a new inode (the writeback cache; see the module's comment).  A slot freed
        and taken again since `nodeid_of` is marked too: its next lookup then retires it for nothing."""
        slot = nodeid & _MASK32
        if slot != _ROOT_SLOT and self._reach(slot):
            self._map[slot * SLOT_SIZE + _OUTDATED_AT] = 1


def _no_ids(backing_id: int) -> None:
    raise AssertionError(f"backing id {backing_id} without passthrough")


class InodeTable(SlotReader):
    @staticmethod
    def format(space: InodeSpace, region: Region, root_fd: int) -> None:
        """Write the empty table with its root; once, in the supervisor, before any worker starts."""
        st = os.fstat(root_fd)
        handle, mount_id = handle_of(root_fd)
        h = handle or b""
        key = (st.st_dev, st.st_ino)
        table = Growable(space.fd, FIRST_SLOTS * SLOT_SIZE)
        try:
            m = table.map
            off = _ROOT_SLOT * SLOT_SIZE
            _IDENT.pack_into(m, off, 0, 1, 1 << 62, *key, 0)
            _REST.pack_into(m, off + _BACKING_AT, 0, 0, 0, 0, mount_id, len(h), 0, 0, 0, 0, 0, h)
            U32.pack_into(m, _bucket(hash(key), 0, 0) * SLOT_SIZE + _HEAD_AT, _ROOT_SLOT)
        finally:
            table.close()
        batch = prune_batch(space.capacity)  # the first crossing prunes at once
        HEADER.pack_into(region.map, space.header, FIRST_SLOTS, 0, 0, _ROOT_SLOT + 1, 0, 1, _ROOT_SLOT, batch, 0)

    def __init__(self, space: InodeSpace, region: Region, root_fd: int, fds: FdBudget, worker: int,
                 misc: memoryview, share: int = 0) -> None:  # fmt: skip
        """`share`: the most live slots one uid may have made (0: no per-uid bound)."""
        super().__init__(space, region)
        self._fds = fds
        self._uid = os.geteuid()
        self._worker = worker
        self._misc = misc  # this worker's misc counters (FOREIGN_NODES)
        self._batch = prune_batch(space.capacity)
        self._mark = space.capacity - self._batch  # live slots from which the table prunes
        self._share = share
        self._share_batch = prune_batch(share)
        self._local: dict[int, Inode] = {}  # nodeid -> this worker's view
        self._local_limit = fds.limit + 1024  # views kept before those without an fd are shed
        self._local_keys: dict[tuple[int, int], Inode] = {}
        self._open: OrderedDict[int, Inode] = OrderedDict()  # LRU of views holding an fd (not the root)
        st = os.fstat(root_fd)
        handle, mount_id = handle_of(root_fd)
        anchor = _anchor(f"/proc/self/fd/{root_fd}")
        self.reopen = handle is not None and anchor is not None and can_reopen(anchor, handle)
        self._mount_fds = {mount_id: anchor} if self.reopen else {}
        fds.paths, fds.shed_paths, fds.paths_pinned = self._open, self._shed, not self.reopen
        self._seen = self._ring_seq()
        self.root = Inode(ROOT_ID, (st.st_dev, st.st_ino), handle, mount_id, root_fd)
        self._local[ROOT_ID] = self.root
        # closes a passthrough backing id (`fastpass.fs.passthrough` sets it where passthrough is on)
        self.unregister: Callable[[int], None] = _no_ids
        # asks the kernel to forget these nodeids (`fastpass.fs.prune`, set where the kernel has
        # FUSE_NOTIFY_PRUNE); None: nothing is pruned, a full table is ENFILE until the kernel forgets
        self.prune: Callable[[list[int]], None] | None = None

    # --- shared slots and index (callers hold the inode lock where they mutate) -------
    def _save(self, off: int, n: int) -> None:
        """Log `n` bytes of the slots before this section overwrites them (undone if it dies)."""
        self._region.save(LOCK_INODES, SLOTS, self._map, off, n)  # type: ignore[arg-type]

    def _save_r(self, off: int, n: int) -> None:
        """Log `n` bytes of the region (header, share cells, freed ring) before they are overwritten."""
        self._region.save(LOCK_INODES, 0, self._rmap, off, n)  # type: ignore[arg-type]

    def _read_slot(self, slot: int) -> tuple:
        return SLOT.unpack_from(self._map, slot * SLOT_SIZE)

    def _hget(self, at: int) -> int:
        return U32.unpack_from(self._rmap, self._hdr + at)[0]

    def _hset(self, at: int, value: int) -> None:
        U32.pack_into(self._rmap, self._hdr + at, value)

    def _new_slot(self, bucket: int, key: tuple[int, int], mount_id: int, handle: bytes | None,
                  cell: int) -> tuple[int, int]:  # fmt: skip
        """(slot, generation) of a new live slot for `key` with one lookup, published at the head of
        `bucket` (where `_find` did not find the key), the table grown if no slot is free, and one
        bucket split if the index has fewer buckets than live slots."""
        rmap, hdr = self._rmap, self._hdr
        extent, level, split, fresh, free, live, hand, since, seq = HEADER.unpack_from(rmap, hdr)
        if free:
            slot = free
            gen, _live, *_, free = _IDENT.unpack_from(self._map, slot * SLOT_SIZE)
        else:
            if fresh >= self._mapped:
                extent = min(self._mapped * 2, self._space.capacity + 1)
                self._file.grow(extent * SLOT_SIZE)
                self._map = self._file.map
                self._mapped = extent
            slot, gen = fresh, 0
            fresh += 1
        m = self._map
        off = slot * SLOT_SIZE
        head = bucket * SLOT_SIZE + _HEAD_AT
        h = handle or b""
        self._save_r(hdr, HEADER.size)
        self._save(off, SLOT_SIZE)
        self._save(head, U32.size)
        _IDENT.pack_into(m, off, gen, 1, 1, key[0], key[1], U32.unpack_from(m, head)[0])
        _REST.pack_into(m, off + _BACKING_AT, 0, 0, 0, 0, mount_id, len(h), 0, self._worker, cell, 0, 0, h)
        U32.pack_into(m, head, slot)
        live += 1
        if live > (FIRST_BUCKETS << level) + split:
            level, split = self._split(level, split)
        HEADER.pack_into(rmap, hdr, extent, level, split, fresh, free, live, hand, since, seq)
        return slot, gen

    def _split(self, level: int, split: int) -> tuple[int, int]:
        """Split bucket `split` into itself and `split + FIRST_BUCKETS << level` by one more bit of
        hash; returns the new (level, split).  The new bucket's head lives in that slot's record,
        which exists: the buckets are never more than the live slots."""
        low = FIRST_BUCKETS << level
        mask = (low << 1) - 1
        m = self._map
        src = split * SLOT_SIZE + _HEAD_AT
        slot = U32.unpack_from(m, src)[0]
        stay = move = 0
        while slot:
            off = slot * SLOT_SIZE
            dev, ino, nxt = _CHAIN.unpack_from(m, off + _KEY_AT)
            self._save(off + _NEXT_AT, U32.size)
            if hash((dev, ino)) & mask == split:
                U32.pack_into(m, off + _NEXT_AT, stay)
                stay = slot
            else:
                U32.pack_into(m, off + _NEXT_AT, move)
                move = slot
            slot = nxt
        self._save(src, U32.size)
        self._save((split + low) * SLOT_SIZE + _HEAD_AT, U32.size)
        U32.pack_into(m, src, stay)
        U32.pack_into(m, (split + low) * SLOT_SIZE + _HEAD_AT, move)
        split += 1
        return (level + 1, 0) if split == low else (level, split)

    def _unlink(self, bucket: int, prev: int, slot: int) -> None:
        """Take `slot` out of its index chain (as `_find` placed it)."""
        m = self._map
        nxt = U32.unpack_from(m, slot * SLOT_SIZE + _NEXT_AT)[0]
        at = prev * SLOT_SIZE + _NEXT_AT if prev else bucket * SLOT_SIZE + _HEAD_AT
        self._save(at, U32.size)
        U32.pack_into(m, at, nxt)

    def _ring_seq(self) -> int:
        return U64.unpack_from(self._rmap, self._hdr + _SEQ)[0]

    def _free(self, slot: int, gen: int, key: tuple[int, int], cell: int) -> int:
        """Unpublish a live slot, put it on the free list with its next generation, and tell the
        other workers through the freed ring; the ring entry's number."""
        m, rmap, hdr = self._map, self._rmap, self._hdr
        extent, level, split, fresh, free, live, hand, since, seq = HEADER.unpack_from(rmap, hdr)
        bucket, prev, found = self._find(key, level, split)
        if found == slot:
            self._unlink(bucket, prev, slot)
        off = slot * SLOT_SIZE
        self._save_r(hdr, HEADER.size)
        self._save(off, _NEXT_AT + U32.size)
        _GEN_LIVE.pack_into(m, off, (gen + 1) & _MASK32, 0)
        U32.pack_into(m, off + _NEXT_AT, free)
        if cell:
            at = self._space.cells + cell * CELL.size + _CELL_COUNT
            self._save_r(at, U32.size)
            U32.pack_into(rmap, at, U32.unpack_from(rmap, at)[0] - 1)
        self._save_r(self._space.ring + (seq % RING) * U64.size, U64.size)
        ring_push(self._region, self._space.ring, seq, gen << 32 | slot)
        HEADER.pack_into(rmap, hdr, extent, level, split, fresh, slot, live - 1, hand, since, seq + 1)
        return seq

    # --- the bound, the uids' shares and pruning (lock held) ---------------------------
    def _cell_of(self, uid: int) -> int:
        """The share cell counting `uid`'s slots, claimed if it has none; 0 if no cell is free."""
        base = self._space.cells
        c = home = 1 + (uid * 0x9E3779B1 & _MASK32) % (UIDS - 1)
        reuse = 0
        while True:
            used, owner, count, _since = CELL.unpack_from(self._rmap, base + c * CELL.size)
            if not used:
                break
            if owner == uid:
                return c
            if not count and not reuse:
                reuse = c
            c = c + 1 if c + 1 < UIDS else 1
            if c == home:
                c = 0
                break
        c = reuse or c
        if c:
            CELL.pack_into(self._rmap, base + c * CELL.size, 1, uid, 0, self._share_batch)
        return c

    def _room(self, cell: int, victims: list[int]) -> str | None:
        """Before a slot is taken: what is full (None: nothing), and in `victims` the cold
        nodeids to prune if the table, or `cell`'s uid, is within a batch of its bound."""
        full = None
        live = self._hget(_LIVE)
        bound = self._space.capacity
        if live >= self._mark:
            since = self._hget(_SINCE) + 1
            if since >= self._batch // 2:
                since = 0
                victims += self._cold(self._batch, 0)
            self._hset(_SINCE, since)
            if live >= bound:
                full = f"inode table full ({bound} inodes)"
        if cell:
            at = self._space.cells + cell * CELL.size
            _used, uid, count, since = CELL.unpack_from(self._rmap, at)
            share = self._share
            if count >= share - self._share_batch:
                since += 1
                if since >= self._share_batch // 2:
                    since = 0
                    victims += self._cold(self._share_batch, cell)
                U32.pack_into(self._rmap, at + 12, since)
                if count >= share and full is None:
                    full = f"uid {uid} has its share of the inode table ({share} inodes)"
        return full

    def _cold(self, n: int, cell: int) -> list[int]:
        """Up to `n` nodeids to prune, of `cell`'s uid if given: live slots with no passthrough
        open that no lookup touched since the clock hand last passed them (the hand clears the
        mark as it goes).  At most 4n slots are looked at, so a prune holds the lock briefly."""
        if self.prune is None:
            return []
        m = self._map
        fresh = self._hget(_FRESH)
        hand = self._hget(_HAND)
        found: list[int] = []
        for _ in range(min(4 * n, fresh - 2)):
            hand = hand + 1 if hand + 1 < fresh else 2
            off = hand * SLOT_SIZE
            gen, live = _GEN_LIVE.unpack_from(m, off)
            if not live or (cell and U32.unpack_from(m, off + _CELL_AT)[0] != cell):
                continue
            if m[off + _REF_AT]:
                m[off + _REF_AT] = 0
            elif _I32.unpack_from(m, off + _OPENS_AT)[0] <= 0:
                found.append(gen << 32 | hand)
                if len(found) == n:
                    break
        self._hset(_HAND, hand)
        return found

    # --- what the operations use ----------------------------------------------------------
    @staticmethod
    def live(space: InodeSpace, region: Region) -> int:
        """Entries in use, read from the shared header (for stats)."""
        return U32.unpack_from(region.map, space.header + _LIVE)[0]

    @staticmethod
    def slots(space: InodeSpace, region: Region) -> int:
        """Slots the table has room for now (SLOT_SIZE bytes of shared memory each, for stats)."""
        return U32.unpack_from(region.map, space.header + _EXTENT)[0]

    def get(self, nodeid: int) -> Inode:
        inode = self._local.get(nodeid)
        if inode is not None:
            return inode
        slot = nodeid & _MASK32
        if slot <= _ROOT_SLOT or not self._reach(slot):
            raise _stale()
        gen, live, _n, dev, ino, *_, mount_id, hlen, _ref, creator, _cell, _outdated, _retired, handle = self._read_slot(slot)
        if not live or gen != nodeid >> 32:
            raise _stale()
        if creator != self._worker:
            self._misc[FOREIGN_NODES] += 1
        if len(self._local) >= self._local_limit:
            self._shed_views()
        inode = Inode(nodeid, (dev, ino), handle[:hlen] if hlen else None, mount_id, -1)
        self._local[nodeid] = inode
        return inode

    def _shed_views(self) -> None:
        """Drop the views that hold no fd (a later `get` makes them again from the slot)."""
        self._local = {n: v for n, v in self._local.items() if v.fd >= 0}
        self._local_limit = max(2 * len(self._local), self._fds.limit + 1024)

    def fd(self, inode: Inode) -> int:
        """The inode's O_PATH fd in this worker, opened from its handle if need be."""
        fd = inode.fd
        if fd >= 0:
            if inode.nodeid != ROOT_ID:
                self._open.move_to_end(inode.nodeid)
            return fd
        if inode.handle is None:
            raise _stale()
        mount_fd = self._mount_fd(inode.mount_id)
        try:
            inode.fd = _linux.open_by_handle(mount_fd, inode.handle, O_PATH_FLAGS)
        except PermissionError:
            # Serving a caller (allow_other): its fsuid dropped our CAP_DAC_READ_SEARCH.  An
            # O_PATH fd grants nothing by itself, so take it as the server and go back.
            with _linux.fsuid(self._uid):
                inode.fd = _linux.open_by_handle(mount_fd, inode.handle, O_PATH_FLAGS)
        self._keep(inode)
        return inode.fd

    def _mount_fd(self, mount_id: int) -> int:
        """An fd on the mount a handle belongs to (open_by_handle_at needs one), from mountinfo."""
        fd = self._mount_fds.get(mount_id)
        if fd is None:
            with open("/proc/self/mountinfo", "rb") as f:
                for line in f:
                    fields = line.split(b" ", 5)
                    if int(fields[0]) == mount_id:
                        fd = _anchor(fields[4])
                        break
            if fd is None:
                raise _stale()
            self._mount_fds[mount_id] = fd
        return fd

    def _keep(self, inode: Inode) -> None:
        self._open[inode.nodeid] = inode
        self._local_keys[inode.key] = inode
        self._fds.trim()

    def _shed(self, n: int) -> int:
        """Close up to `n` of the least recently used fds, FLOOR staying, and drop their views (a
        later `get` makes them again from the slot); how many were closed."""
        n = min(n, len(self._open) - FLOOR) if self.reopen else 0
        for _ in range(n):
            old = self._open.popitem(last=False)[1]
            self._close_local(old)
            self._local.pop(old.nodeid, None)
        return max(n, 0)

    def _close_local(self, inode: Inode) -> None:
        if inode.fd >= 0:
            os.close(inode.fd)
            inode.fd = -1
        if self._local_keys.get(inode.key) is inode:
            del self._local_keys[inode.key]

    def _drop(self, nodeid: int) -> None:
        """Forget this worker's view of a freed nodeid, closing its fd."""
        inode = self._local.pop(nodeid, None)
        if inode is not None:
            self._open.pop(nodeid, None)
            self._close_local(inode)

    def sync(self) -> None:
        """Close the fds of nodeids other workers have freed since the last call."""
        seq = self._ring_seq()
        if seq == self._seen:
            return
        freed = ring_since(self._region, self._space.ring, self._seen, seq)
        if freed is None:  # fell behind the ring: check every view
            m = self._map
            freed = [n for n in self._local if n != ROOT_ID and _GEN_LIVE.unpack_from(m, (n & _MASK32) * SLOT_SIZE)
                     != (n >> 32, 1)]  # fmt: skip
        for nodeid in freed:
            self._drop(nodeid)
        self._seen = seq

    def lookup(self, parent: Inode, name: bytes, ino: int = 0) -> tuple[Inode, os.stat_result]:
        """Resolve `name` in `parent` without following symlinks; counts one lookup.

        `ino`, the entry's d_ino from getdents where the caller has it, spares the stat
        for a name whose inode this worker does not hold: it is opened straight away (on
        ext4, a cold 10,000-entry listing took 11.3 us an entry so, against 18.5 with the
        stat first).  A d_ino that differs from st_ino (overlayfs) only costs that stat.
        """
        if name == b"." or (name == b".." and parent.nodeid == ROOT_ID):
            st = os.fstat(self.fd(parent))
            self._count(parent, 1)
            return parent, st
        pfd = self.fd(parent)
        if not ino or self.holds(parent, ino):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            known = self._local_keys.get((st.st_dev, st.st_ino))
            if known is not None and known.fd >= 0 and self._count(known, 1):  # pinned: the number was not reused
                return known, st
        return self.adopt(os.open(name, O_PATH_FLAGS, dir_fd=pfd))

    def holds(self, parent: Inode, ino: int) -> bool:
        """Whether this worker holds an fd on inode number `ino` of `parent`'s filesystem."""
        return (parent.key[0], ino) in self._local_keys

    def adopt(self, fd: int) -> tuple[Inode, os.stat_result]:
        """Take ownership of a fresh O_PATH fd (closed on failure); counts one lookup."""
        try:
            st = os.fstat(fd)
            return self.add(fd, st), st
        except BaseException:
            os.close(fd)
            raise

    def _count(self, inode: Inode, n: int) -> bool:
        """Add `n` lookups to a live inode, marking it touched for the clock; False if its slot was
        freed or retired meanwhile, or a lookup is to retire it (`add` then decides)."""
        if inode.nodeid == ROOT_ID:
            return True
        off = (inode.nodeid & _MASK32) * SLOT_SIZE
        m = self._map
        region = self._region
        region.lock(LOCK_INODES)
        try:
            gen, live, nlookup = _COUNT.unpack_from(m, off)
            if not live or gen != inode.generation or m[off + _RETIRED_AT] or (m[off + _OUTDATED_AT] and self._retires(off)):
                return False
            _NLOOKUP.pack_into(m, off + 8, nlookup + n)
            m[off + _REF_AT] = 1
            return True
        finally:
            region.unlock(LOCK_INODES)

    def add(self, fd: int, st: os.stat_result) -> Inode:
        """Take ownership of an O_PATH fd for a backing inode; counts one lookup.  A new slot is
        charged to the uid this thread acts as (with shares), and may start a prune."""
        key = (st.st_dev, st.st_ino)
        handle, mount_id = handle_of(fd)
        uid = _linux.fsuid_now() if self._share else 0
        victims: list[int] = []
        region = self._region
        region.lock(LOCK_INODES)
        try:
            header = self._catch_up()
            bucket, prev, slot = self._find(key, header[1], header[2])
            if slot:
                off = slot * SLOT_SIZE
                row = self._read_slot(slot)
                if handle is not None and handle != row[18][: row[12]]:  # a reused inode number
                    self._unlink(bucket, prev, slot)  # the name gets a new slot
                    slot = 0
                elif self._retires(off):
                    self._save(off + _OUTDATED_AT, 2)
                    if stat.S_ISREG(st.st_mode):
                        self._unlink(bucket, prev, slot)
                        self._map[off + _RETIRED_AT] = 1
                        slot = 0
                    else:  # the kernel keeps no size or times but a regular file's
                        self._map[off + _OUTDATED_AT] = 0
                if slot:
                    _NLOOKUP.pack_into(self._map, off + 8, row[2] + 1)
                    self._map[off + _REF_AT] = 1
                    gen = row[0]
            if not slot:
                cell = 0
                if self._share or header[5] >= self._mark:  # live: near the bound
                    cell = self._cell_of(uid) if self._share else 0
                    full = self._room(cell, victims)
                    if full is not None:
                        raise OSError(errno.ENFILE, full)
                slot, gen = self._new_slot(bucket, key, mount_id, handle, cell)
                if cell:
                    at = self._space.cells + cell * CELL.size + _CELL_COUNT
                    self._save_r(at, U32.size)
                    U32.pack_into(self._rmap, at, U32.unpack_from(self._rmap, at)[0] + 1)
        finally:
            region.unlock(LOCK_INODES)
            if victims:
                self.prune(victims)  # type: ignore[misc]
        nodeid = gen << 32 | slot
        inode = self._local.get(nodeid)
        if inode is None:
            inode = self._local[nodeid] = Inode(nodeid, key, handle, mount_id, -1)
        if inode.fd < 0:
            inode.fd = fd
            self._keep(inode)
        else:
            os.close(fd)
        return inode

    def _retires(self, off: int) -> bool:
        """Whether a lookup is to retire the slot at `off`: changed outside and held by no open."""
        m = self._map
        return m[off + _OUTDATED_AT] != 0 and _I32.unpack_from(m, off + _OPENS_AT)[0] <= 0

    def outdated(self, nodeid: int) -> bool:
        """Whether the inode was changed outside while the kernel may keep its size and times."""
        return self._map[(nodeid & _MASK32) * SLOT_SIZE + _OUTDATED_AT] != 0

    def opened(self, nodeid: int, n: int) -> None:
        """Count `n` more (or fewer) open files of the inode (the writeback cache; passthrough counts
        its own opens in the same field).  Never below 0, whatever a worker that died mid-request
        left."""
        off, lock = self._backing_at(nodeid & _MASK32)
        m = self._map
        region = self._region
        region.lock(lock)
        try:
            _I32.pack_into(m, off + 4, max(0, _I32.unpack_from(m, off + 4)[0] + n))
        finally:
            region.unlock(lock)

    def in_passthrough(self, nodeid: int) -> bool:
        """Whether the inode has a passthrough open: the kernel then changes its data and size itself."""
        slot = nodeid & _MASK32
        return self._reach(slot) and _I32.unpack_from(self._map, slot * SLOT_SIZE + _OPENS_AT)[0] > 0

    def _backing_at(self, slot: int) -> tuple[int, int]:
        """(offset of slot's passthrough fields, the lock of its stripe), the slot mapped here."""
        self._reach(slot)
        return slot * SLOT_SIZE + _BACKING_AT, LOCK_BACKING + slot % BACKING_STRIPES

    def attach_backing(self, inode: Inode, uid: int, read_only: bool, register: Callable[[], int]) -> tuple[int, bool]:
        """The inode's passthrough backing id for one more open, registering one if it has none.

        The kernel allows one backing file per inode while any passthrough open
        of it lives, so the id and its open count are shared by every worker.
        An id registered from a read-only file outlives its last open (up to
        IDLE_IDS of them) and serves the next open by the same uid without a
        registration; the inode's FORGET closes it.  Returns (backing id,
        own_io): own_io means the id was registered with another uid's
        credentials, so this open may use it only for mmap and must do its
        reads and writes in userspace.  `register()` gives the id of the
        opener's file (`read_only` says whether it is), or 0 when it cannot;
        then (0, False).
        """
        slot = inode.nodeid & _MASK32
        off, lock = self._backing_at(slot)
        m = self._map
        region = self._region
        region.lock(lock)
        try:
            backing_id, opens, owner, keep = _BACKING.unpack_from(m, off)
            if backing_id > 0:
                if opens or owner == uid:
                    _I32.pack_into(m, off + 4, opens + 1)
                    return backing_id, owner != uid
                self._close_backing(slot, off)  # idle, another uid's: the opener's own credentials serve better
            backing_id = register()
            if backing_id > 0:
                keep = read_only and self._count_kept(slot, 1)
                _BACKING.pack_into(m, off, backing_id, 1, uid, keep)
            return backing_id, False
        finally:
            region.unlock(lock)

    def join_backing(self, inode: Inode, uid: int) -> int:
        """One more open of the inode's backing id if `uid` registered it (in use or kept idle); else 0."""
        slot = inode.nodeid & _MASK32
        off, lock = self._backing_at(slot)
        m = self._map
        self._region.lock(lock)
        try:
            backing_id, opens, owner, _keep = _BACKING.unpack_from(m, off)
            if backing_id <= 0 or owner != uid:
                return 0
            _I32.pack_into(m, off + 4, opens + 1)
            return backing_id
        finally:
            self._region.unlock(lock)

    def detach_backing(self, nodeid: int) -> None:
        """One passthrough open fewer; after the last, an id that may not stay idle is closed
        (once, whichever worker)."""
        slot = nodeid & _MASK32
        off, lock = self._backing_at(slot)
        m = self._map
        region = self._region
        region.lock(lock)
        try:
            backing_id, opens, _owner, keep = _BACKING.unpack_from(m, off)
            if backing_id <= 0 or opens <= 0:
                return
            if opens > 1 or keep:
                _I32.pack_into(m, off + 4, opens - 1)
            else:
                self._close_backing(slot, off)
        finally:
            region.unlock(lock)

    def _close_backing(self, slot: int, off: int) -> None:
        """Close the id the slot's passthrough fields at `off` hold, and clear them (stripe lock held)."""
        backing_id, _opens, _owner, keep = _BACKING.unpack_from(self._map, off)
        _BACKING.pack_into(self._map, off, 0, 0, 0, 0)
        if keep:
            self._count_kept(slot, -1)
        self.unregister(backing_id)

    def _count_kept(self, slot: int, n: int) -> bool:
        """Count `n` more ids that may stay idle in `slot`'s stripe (its lock held); False if
        that would pass the stripe's share of IDLE_IDS."""
        at = self._space.kept + slot % BACKING_STRIPES * U32.size
        (kept,) = U32.unpack_from(self._rmap, at)
        if n > 0 and kept >= IDLE_IDS // BACKING_STRIPES:
            return False
        U32.pack_into(self._rmap, at, kept + n)
        return True

    def forget(self, nodeid: int, nlookup: int) -> None:
        if nodeid == ROOT_ID:
            return
        slot = nodeid & _MASK32
        if slot <= _ROOT_SLOT:
            return
        region = self._region
        region.lock(LOCK_INODES)
        try:
            self._catch_up()
            if slot >= self._mapped:
                return
            row = self._read_slot(slot)
            gen, live, count = row[:3]
            if not live or gen != nodeid >> 32:
                return
            if count > nlookup:
                _NLOOKUP.pack_into(self._map, slot * SLOT_SIZE + 8, count - nlookup)
                return
            pushed = self._free(slot, gen, (row[3], row[4]), row[15])
            off, lock = self._backing_at(slot)
            if _I32.unpack_from(self._map, off)[0] > 0:  # idle: the kernel released every open before it forgot
                region.lock(lock)
                try:
                    self._close_backing(slot, off)
                finally:
                    region.unlock(lock)
        finally:
            region.unlock(LOCK_INODES)
        self._drop(nodeid)
        if pushed == self._seen:  # caught up before our own entry: `sync` need not read it back
            self._seen = pushed + 1
