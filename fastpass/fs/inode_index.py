"""The inode index: one worker's hand on the shared slots (`fastpass.fs.slots`), and every change to them.

Facts that shape it:

* The bound is `--max-inodes` (a memory cap; by default the nodeid format's
  own).  Before a lookup meets it, and before a uid meets its share under
  allow_other, the index asks the kernel to forget cold inodes
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
  the inode lock, and every write of that section is logged first (`_save`,
  `_save_r`: a worker that dies inside it has its writes undone,
  `fastpass.shm.region`).  When a count reaches zero the slot is freed: its
  passthrough fields are cleared before it can be taken again, the id they
  held handed back for the caller to close (`fastpass.fs.passthrough`), and
  the nodeid goes into a ring of freed nodeids, from which every worker
  closes its own fd for it (`fastpass.fs.inodes`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from fastpass import _linux
from fastpass.fs.slots import (
    AT,
    BACKING,
    BACKING_AT,
    BACKING_ID,
    CELL,
    CELL_AT,
    CELL_COUNT,
    CHAIN,
    COUNT,
    FIRST_BUCKETS,
    FIRST_SLOTS,
    FRESH,
    GEN_LIVE,
    HAND,
    HEAD_AT,
    HEADER,
    KEY_AT,
    LIVE,
    MASK32,
    NEXT_AT,
    NLOOKUP,
    OPENS,
    OPENS_AT,
    OUTDATED_AT,
    REF_AT,
    RETIRED_AT,
    ROOT_SLOT,
    SINCE,
    SLOT,
    SLOT_SIZE,
    UIDS,
    Inode,
    InodeSpace,
    SlotReader,
    bucket_of,
    fields,
    handle_of,
    stale,
)
from fastpass.kernel.abi import ROOT_ID
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
    Region,
    ring_push,
)

_IDENT = fields("generation", "next")  # written without the bucket head after it: that is another bucket's
_REST = fields("backing_id", "handle")  # at BACKING_AT
_NLOOKUP_AT = AT["nlookup"]
MAX_PRUNE = 4096  # nodeids one prune asks the kernel to forget, at most


def prune_batch(bound: int) -> int:
    """How far below a bound pruning starts, and how many nodeids one prune names."""
    return max(4, min(bound // 8, MAX_PRUNE))


class InodeIndex(SlotReader):
    """The slots as one worker uses them: views of them, lookup counts, new and freed slots, the
    bound, and the fields passthrough and the writeback cache count opens in."""

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
            off = ROOT_SLOT * SLOT_SIZE
            _IDENT.pack_into(m, off, 0, 1, 1 << 62, *key, 0)
            _REST.pack_into(m, off + BACKING_AT, 0, 0, 0, 0, mount_id, len(h), 0, 0, 0, 0, 0, h)
            U32.pack_into(m, bucket_of(hash(key), 0, 0) * SLOT_SIZE + HEAD_AT, ROOT_SLOT)
        finally:
            table.close()
        batch = prune_batch(space.capacity)  # the first crossing prunes at once
        HEADER.pack_into(region.map, space.header, FIRST_SLOTS, 0, 0, ROOT_SLOT + 1, 0, 1, ROOT_SLOT, batch, 0)

    def __init__(self, space: InodeSpace, region: Region, worker: int, misc: memoryview, share: int = 0,
                 prune: Callable[[list[int]], None] | None = None) -> None:  # fmt: skip
        """`share`: the most live slots one uid may have made (0: no per-uid bound); `prune` asks
        the kernel to forget these nodeids (`fastpass.fs.prune`, where the kernel has
        FUSE_NOTIFY_PRUNE); None: nothing is pruned, a full table is ENFILE until the kernel forgets."""
        super().__init__(space, region)
        self._worker = worker
        self._misc = misc  # this worker's misc counters (FOREIGN_NODES)
        self._batch = prune_batch(space.capacity)
        self._mark = space.capacity - self._batch  # live slots from which the table prunes
        self._share = share
        self._share_batch = prune_batch(share)
        self._prune = prune

    # --- shared slots and index (callers hold the inode lock where they mutate) -------
    def _save(self, off: int, n: int) -> None:
        """Log `n` bytes of the slots before this section overwrites them (undone if it dies)."""
        self._region.save(LOCK_INODES, SLOTS, self._map, off, n)  # type: ignore[arg-type]

    def _save_r(self, off: int, n: int) -> None:
        """Log `n` bytes of the region (header, share cells, freed ring) before they are overwritten."""
        self._region.save(LOCK_INODES, 0, self._rmap, off, n)  # type: ignore[arg-type]

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
            gen, _live, _nlookup, _dev, _ino, free = _IDENT.unpack_from(self._map, slot * SLOT_SIZE)
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
        head = bucket * SLOT_SIZE + HEAD_AT
        h = handle or b""
        self._save_r(hdr, HEADER.size)
        self._save(off, SLOT_SIZE)
        self._save(head, U32.size)
        _IDENT.pack_into(m, off, gen, 1, 1, key[0], key[1], U32.unpack_from(m, head)[0])
        _REST.pack_into(m, off + BACKING_AT, 0, 0, 0, 0, mount_id, len(h), 0, self._worker, cell, 0, 0, h)
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
        src = split * SLOT_SIZE + HEAD_AT
        slot = U32.unpack_from(m, src)[0]
        stay = move = 0
        while slot:
            off = slot * SLOT_SIZE
            dev, ino, nxt = CHAIN.unpack_from(m, off + KEY_AT)
            self._save(off + NEXT_AT, U32.size)
            if hash((dev, ino)) & mask == split:
                U32.pack_into(m, off + NEXT_AT, stay)
                stay = slot
            else:
                U32.pack_into(m, off + NEXT_AT, move)
                move = slot
            slot = nxt
        self._save(src, U32.size)
        self._save((split + low) * SLOT_SIZE + HEAD_AT, U32.size)
        U32.pack_into(m, src, stay)
        U32.pack_into(m, (split + low) * SLOT_SIZE + HEAD_AT, move)
        split += 1
        return (level + 1, 0) if split == low else (level, split)

    def _unlink(self, bucket: int, prev: int, slot: int) -> None:
        """Take `slot` out of its index chain (as `_find` placed it)."""
        m = self._map
        nxt = U32.unpack_from(m, slot * SLOT_SIZE + NEXT_AT)[0]
        at = prev * SLOT_SIZE + NEXT_AT if prev else bucket * SLOT_SIZE + HEAD_AT
        self._save(at, U32.size)
        U32.pack_into(m, at, nxt)

    def _free(self, slot: int, gen: int) -> int:
        """Unpublish a live slot, put it on the free list with its next generation, and tell the
        other workers through the freed ring; the ring entry's number."""
        m, rmap, hdr = self._map, self._rmap, self._hdr
        off = slot * SLOT_SIZE
        dev, ino, _next = CHAIN.unpack_from(m, off + KEY_AT)
        cell = U32.unpack_from(m, off + CELL_AT)[0]
        extent, level, split, fresh, free, live, hand, since, seq = HEADER.unpack_from(rmap, hdr)
        bucket, prev, found = self._find((dev, ino), level, split)
        if found == slot:
            self._unlink(bucket, prev, slot)
        self._save_r(hdr, HEADER.size)
        self._save(off, NEXT_AT + U32.size)
        GEN_LIVE.pack_into(m, off, (gen + 1) & MASK32, 0)
        U32.pack_into(m, off + NEXT_AT, free)
        if cell:
            at = self._space.cells + cell * CELL.size + CELL_COUNT
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
        c = home = 1 + (uid * 0x9E3779B1 & MASK32) % (UIDS - 1)
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
        live = self._hget(LIVE)
        bound = self._space.capacity
        if live >= self._mark:
            since = self._hget(SINCE) + 1
            if since >= self._batch // 2:
                since = 0
                victims += self._cold(self._batch, 0)
            self._hset(SINCE, since)
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
        if self._prune is None:
            return []
        m = self._map
        fresh = self._hget(FRESH)
        hand = self._hget(HAND)
        found: list[int] = []
        for _ in range(min(4 * n, fresh - 2)):
            hand = hand + 1 if hand + 1 < fresh else 2
            off = hand * SLOT_SIZE
            gen, live = GEN_LIVE.unpack_from(m, off)
            if not live or (cell and U32.unpack_from(m, off + CELL_AT)[0] != cell):
                continue
            if m[off + REF_AT]:
                m[off + REF_AT] = 0
            elif OPENS.unpack_from(m, off + OPENS_AT)[0] <= 0:
                found.append(gen << 32 | hand)
                if len(found) == n:
                    break
        self._hset(HAND, hand)
        return found

    # --- what the worker's inode table uses ------------------------------------------------
    def view(self, nodeid: int) -> Inode:
        """A new view, with no fd, of live `nodeid`; ESTALE if its slot is free or holds another
        generation."""
        slot = nodeid & MASK32
        if slot <= ROOT_SLOT or (slot >= self._mapped and not self._reach(slot)):
            raise stale()
        (gen, live, _nlookup, dev, ino, _next, _head, _backing_id, _opens, _owner, _keep, mount_id, hlen, _ref, creator,
         _cell, _outdated, _retired, handle) = SLOT.unpack_from(self._map, slot * SLOT_SIZE)  # fmt: skip
        if not live or gen != nodeid >> 32:
            raise stale()
        if creator != self._worker:
            self._misc[FOREIGN_NODES] += 1
        return Inode(nodeid, (dev, ino), handle[:hlen] if hlen else None, mount_id, -1)

    def count(self, nodeid: int, n: int) -> bool:
        """Add `n` lookups to a live inode, marking it touched for the clock; False if its slot was
        freed or retired meanwhile, or a lookup is to retire it (`take` then decides)."""
        if nodeid == ROOT_ID:
            return True
        off = (nodeid & MASK32) * SLOT_SIZE
        m = self._map
        region = self._region
        region.lock(LOCK_INODES)
        try:
            gen, live, nlookup = COUNT.unpack_from(m, off)
            if not live or gen != nodeid >> 32 or m[off + RETIRED_AT] or (m[off + OUTDATED_AT] and self._retires(off)):
                return False
            NLOOKUP.pack_into(m, off + _NLOOKUP_AT, nlookup + n)
            m[off + REF_AT] = 1
            return True
        finally:
            region.unlock(LOCK_INODES)

    def take(self, key: tuple[int, int], handle: bytes | None, mount_id: int, mode: int) -> int:
        """The nodeid of backing inode `key` (its handle, its mount, its st_mode) with one lookup
        more: its live slot's, or a new slot's, charged to the uid this thread acts as (with
        shares), which may start a prune.  ENFILE at the bound, or at the uid's share."""
        uid = _linux.fsuid_now() if self._share else 0
        victims: list[int] = []
        region = self._region
        region.lock(LOCK_INODES)
        try:
            header = self._catch_up()
            bucket, prev, slot = self._find(key, header[1], header[2])
            if slot:
                off = slot * SLOT_SIZE
                if handle is not None and handle != self._handle(off):  # a reused inode number
                    self._unlink(bucket, prev, slot)  # the name gets a new slot
                    slot = 0
                elif self._retires(off):
                    self._save(off + OUTDATED_AT, 2)
                    if stat.S_ISREG(mode):
                        self._unlink(bucket, prev, slot)
                        self._map[off + RETIRED_AT] = 1
                        slot = 0
                    else:  # the kernel keeps no size or times but a regular file's
                        self._map[off + OUTDATED_AT] = 0
                if slot:
                    m = self._map
                    gen, _live, nlookup = COUNT.unpack_from(m, off)
                    NLOOKUP.pack_into(m, off + _NLOOKUP_AT, nlookup + 1)
                    m[off + REF_AT] = 1
            if not slot:
                cell = 0
                if self._share or header[5] >= self._mark:  # live: near the bound
                    cell = self._cell_of(uid) if self._share else 0
                    full = self._room(cell, victims)
                    if full is not None:
                        raise OSError(errno.ENFILE, full)
                slot, gen = self._new_slot(bucket, key, mount_id, handle, cell)
                if cell:
                    at = self._space.cells + cell * CELL.size + CELL_COUNT
                    self._save_r(at, U32.size)
                    U32.pack_into(self._rmap, at, U32.unpack_from(self._rmap, at)[0] + 1)
        finally:
            region.unlock(LOCK_INODES)
            if victims:
                self._prune(victims)  # type: ignore[misc]
        return gen << 32 | slot

    def forget(self, nodeid: int, nlookup: int) -> tuple[int, int] | None:
        """Take `nlookup` lookups off a live inode, freeing its slot at none.  For a slot freed:
        (its entry's number in the freed ring, the passthrough backing id it held, 0 if none: the
        caller closes it); None if the slot lives on, or was not this nodeid's."""
        slot = nodeid & MASK32
        if slot <= ROOT_SLOT:
            return None
        region = self._region
        region.lock(LOCK_INODES)
        try:
            if slot >= self._mapped and not self._reach(slot):
                return None
            m = self._map
            off = slot * SLOT_SIZE
            gen, live, count = COUNT.unpack_from(m, off)
            if not live or gen != nodeid >> 32:
                return None
            if count > nlookup:
                NLOOKUP.pack_into(m, off + _NLOOKUP_AT, count - nlookup)
                return None
            pushed = self._free(slot, gen)
            backing_id = 0
            # idle: the kernel released every open before it forgot
            if BACKING_ID.unpack_from(m, off + BACKING_AT)[0] > 0:
                lock = self.backing(slot)[2]
                region.lock(lock)
                try:
                    backing_id = self.drop_backing(slot)
                finally:
                    region.unlock(lock)
            return pushed, backing_id
        finally:
            region.unlock(LOCK_INODES)

    def _retires(self, off: int) -> bool:
        """Whether a lookup is to retire the slot at `off`: changed outside and held by no open."""
        m = self._map
        return m[off + OUTDATED_AT] != 0 and OPENS.unpack_from(m, off + OPENS_AT)[0] <= 0

    # --- a slot's open count and passthrough fields (its stripe's lock) ----------------
    def opened(self, nodeid: int, n: int) -> None:
        """Count `n` more (or fewer) open files of the inode (the writeback cache; passthrough counts
        its own opens in the same field).  Never below 0, whatever a worker that died mid-request
        left."""
        m, off, lock = self.backing(nodeid & MASK32)
        region = self._region
        region.lock(lock)
        try:
            OPENS.pack_into(m, off + OPENS_AT, max(0, OPENS.unpack_from(m, off + OPENS_AT)[0] + n))
        finally:
            region.unlock(lock)

    def backing(self, slot: int) -> tuple[Growable, int, int]:
        """(the slots' mapping, the slot's offset in it, the lock of its stripe), the slot mapped:
        where its open count and passthrough fields (BACKING_AT) are read and written."""
        if slot >= self._mapped:
            self._reach(slot)
        return self._map, slot * SLOT_SIZE, LOCK_BACKING + slot % BACKING_STRIPES  # type: ignore[return-value]

    def drop_backing(self, slot: int) -> int:
        """Clear the slot's passthrough fields (its stripe's lock held); the id they held, which the
        caller closes."""
        m = self._map
        off = slot * SLOT_SIZE + BACKING_AT
        backing_id, _opens, _owner, keep = BACKING.unpack_from(m, off)
        BACKING.pack_into(m, off, 0, 0, 0, 0)
        if keep:
            self.count_kept(slot, -1, 0)
        return backing_id

    def count_kept(self, slot: int, n: int, most: int) -> bool:
        """Count `n` more ids that may stay idle in `slot`'s stripe (its lock held); False, counting
        none, if more than `most` would be."""
        at = self._space.kept + slot % BACKING_STRIPES * U32.size
        (kept,) = U32.unpack_from(self._rmap, at)
        if n > 0 and kept >= most:
            return False
        U32.pack_into(self._rmap, at, kept + n)
        return True
