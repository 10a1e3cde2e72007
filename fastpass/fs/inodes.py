"""The inode table: nodeid <-> backing inode, shared by every worker, never by path.

Facts that shape it:

* Any worker may receive any request, so the table lives in shared memory
  (`fastpass.shm.region`): a slot per inode holding its (st_dev, st_ino),
  its file handle (`name_to_handle_at`) and its lookup count, and a hash
  index from (st_dev, st_ino) to slot.  A nodeid is `generation << 32 |
  slot`: it names a slot without any search, and a slot reused after a
  FORGET gets a new generation, so the kernel never confuses an old inode
  with a new one.  The root is slot 1, generation 0: nodeid 1.
* A backing inode number can be reused once the inode is freed.  The file
  handle carries the inode's own generation on handle-capable filesystems,
  so a lookup that finds a known (st_dev, st_ino) with a different handle
  has met a reused number: the name gets a new slot, and the old nodeid
  stays valid until the kernel forgets it.
* Each worker keeps its own O_PATH fds, opened lazily from the handle
  (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH) and kept in an LRU
  that gives way to open files (`fastpass.fs.fds`).  A local fd pins the inode, so while this
  worker holds one, a lookup of the same (st_dev, st_ino) needs no handle
  comparison.  Without usable handles (not root, or a filesystem without
  export support) fds are pinned and never evicted, and one worker serves.
* Lookup counts change under the inode lock; slot contents are written
  before the slot is published in the index and do not change while it is
  live, so reading a slot by nodeid needs no lock.  When a count reaches
  zero the nodeid goes into a ring of freed nodeids, from which every
  worker closes its own fd for it (`sync`, at the top of each request).
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from collections import OrderedDict
from collections.abc import Callable

from fastpass import _linux
from fastpass.fs.fds import FLOOR, FdBudget
from fastpass.kernel.abi import ROOT_ID
from fastpass.shm.counters import FOREIGN_NODES
from fastpass.shm.region import (
    BACKING_STRIPES,
    LOCK_BACKING,
    LOCK_INODES,
    RING,
    U32,
    U64,
    Layout,
    Region,
    ring_push,
    ring_since,
)

O_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# generation, live, nlookup, dev, ino, mount_id, handle length, creating worker,
# passthrough backing id, passthrough opens, uid it was registered as, whether the id may stay
# registered with no open (its file is read-only), handle
SLOT = struct.Struct("<IIqQQiHHiiII128s")
_BACKING_AT = 40  # offset of the passthrough fields in a slot
_BACKING = struct.Struct("<iiII")
_I32 = struct.Struct("<i")
# Backing ids kept registered with no open, at most: each pins a kernel file, its dentry and the
# backing inode (about 1.5 KiB), and a deleted file's blocks, until the kernel forgets the inode.
IDLE_IDS = 16384
ENTRY = struct.Struct("<QQII")  # dev, ino, slot, used
HEADER = struct.Struct("<IIQ")  # next fresh slot, free-stack depth, freed-ring sequence
_MASK32 = 0xFFFFFFFF
_ROOT_SLOT = 1


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
    """Where the table lives in the region: sized once by the supervisor, before the fork."""

    def __init__(self, layout: Layout, capacity: int):
        self.capacity = capacity
        self.index_size = 1 << (2 * capacity - 1).bit_length()  # load factor <= 1/2
        self.header = layout.take(HEADER.size)
        self.slots = layout.take(SLOT.size * (capacity + 2))
        self.free = layout.take(U32.size * capacity)
        self.index = layout.take(ENTRY.size * self.index_size)
        self.ring = layout.take(U64.size * RING)
        self.kept = layout.take(U32.size * BACKING_STRIPES)  # ids that may stay idle, per lock stripe


def _probe(m: mmap.mmap, space: InodeSpace, key: tuple[int, int]) -> tuple[int, int]:
    mask = space.index_size - 1
    i = hash(key) & mask
    while True:
        dev, ino, slot, used = ENTRY.unpack_from(m, space.index + i * ENTRY.size)
        if not used or (dev, ino) == key:
            return i, slot if used else 0
        i = (i + 1) & mask


def nodeid_of(space: InodeSpace, region: Region, key: tuple[int, int], handle: bytes | None) -> int:
    """The live nodeid of backing inode `key`, or 0 if the kernel does not know it.  With a
    handle, a slot holding another handle (a reused inode number) does not count."""
    region.lock(LOCK_INODES)
    try:
        _, slot = _probe(region.map, space, key)
        if not slot:
            return 0
        gen, live, *_, hlen, _creator, _bid, _opens, _uid, _idle, h = SLOT.unpack_from(region.map, space.slots + slot * SLOT.size)
    finally:
        region.unlock(LOCK_INODES)
    if not live or (handle is not None and hlen and h[:hlen] != handle):
        return 0
    return gen << 32 | slot


def _no_ids(backing_id: int) -> None:
    raise AssertionError(f"backing id {backing_id} without passthrough")


class InodeTable:
    @staticmethod
    def format(space: InodeSpace, region: Region, root_fd: int) -> None:
        """Write the empty table with its root; once, in the supervisor, before any worker starts."""
        st = os.fstat(root_fd)
        handle, mount_id = handle_of(root_fd)
        h = handle or b""
        key = (st.st_dev, st.st_ino)
        SLOT.pack_into(region.map, space.slots + _ROOT_SLOT * SLOT.size, 0, 1, 1 << 62, *key, mount_id, len(h), 0,
                       0, 0, 0, 0, h)  # fmt: skip
        HEADER.pack_into(region.map, space.header, _ROOT_SLOT + 1, 0, 0)
        i = hash(key) & (space.index_size - 1)
        ENTRY.pack_into(region.map, space.index + i * ENTRY.size, *key, _ROOT_SLOT, 1)

    def __init__(self, space: InodeSpace, region: Region, root_fd: int, fds: FdBudget, worker: int,
                 misc: memoryview) -> None:  # fmt: skip
        self._space = space
        self._region = region
        self._map = region.map
        self._mask = space.index_size - 1
        self._fds = fds
        self._uid = os.geteuid()
        self._worker = worker
        self._misc = misc  # this worker's misc counters (FOREIGN_NODES)
        self._local: dict[int, Inode] = {}  # nodeid -> this worker's view
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

    # --- shared slots and index (callers hold the inode lock where they mutate) -------
    def _read_slot(self, slot: int) -> tuple:
        return SLOT.unpack_from(self._map, self._space.slots + slot * SLOT.size)

    def _write_slot(self, slot: int, gen: int, live: int, nlookup: int, key: tuple[int, int], mount_id: int,
                    handle: bytes | None) -> None:  # fmt: skip
        h = handle or b""
        SLOT.pack_into(self._map, self._space.slots + slot * SLOT.size, gen, live, nlookup, key[0], key[1], mount_id,
                       len(h), self._worker, 0, 0, 0, 0, h)  # fmt: skip

    def _set_nlookup(self, slot: int, nlookup: int) -> None:
        struct.pack_into("<q", self._map, self._space.slots + slot * SLOT.size + 8, nlookup)

    def _entry_at(self, i: int) -> tuple:
        return ENTRY.unpack_from(self._map, self._space.index + i * ENTRY.size)

    def _put_entry(self, i: int, dev: int, ino: int, slot: int, used: int) -> None:
        ENTRY.pack_into(self._map, self._space.index + i * ENTRY.size, dev, ino, slot, used)

    def _find(self, key: tuple[int, int]) -> tuple[int, int]:
        """(index position, slot) of `key`, slot 0 if absent (position is then the free cell)."""
        return _probe(self._map, self._space, key)

    def _insert(self, key: tuple[int, int], slot: int) -> None:
        i, _ = self._find(key)
        self._put_entry(i, key[0], key[1], slot, 1)

    def _remove(self, i: int) -> None:
        """Empty index cell `i`, shifting later entries of its probe run back (no tombstones)."""
        mask = self._mask
        self._put_entry(i, 0, 0, 0, 0)
        j = i
        while True:
            j = (j + 1) & mask
            dev, ino, slot, used = self._entry_at(j)
            if not used:
                return
            home = hash((dev, ino)) & mask
            if (i <= j and i < home <= j) or (i > j and (home > i or home <= j)):
                continue  # still reachable from its home
            self._put_entry(i, dev, ino, slot, 1)
            self._put_entry(j, 0, 0, 0, 0)
            i = j

    def _ring_seq(self) -> int:
        return HEADER.unpack_from(self._map, self._space.header)[2]

    def _alloc(self) -> tuple[int, int]:
        """A free slot and its generation."""
        space = self._space
        fresh, depth, seq = HEADER.unpack_from(self._map, space.header)
        if depth:
            (slot,) = U32.unpack_from(self._map, space.free + (depth - 1) * U32.size)
            HEADER.pack_into(self._map, space.header, fresh, depth - 1, seq)
            return slot, self._read_slot(slot)[0]
        if fresh > space.capacity:
            raise OSError(errno.ENFILE, f"inode table full ({space.capacity} inodes)")
        HEADER.pack_into(self._map, space.header, fresh + 1, depth, seq)
        return fresh, 0

    def _free(self, slot: int, gen: int, key: tuple[int, int]) -> None:
        space = self._space
        i, found = self._find(key)
        if found == slot:
            self._remove(i)
        struct.pack_into("<II", self._map, space.slots + slot * SLOT.size, (gen + 1) & _MASK32, 0)
        fresh, depth, seq = HEADER.unpack_from(self._map, space.header)
        U32.pack_into(self._map, space.free + depth * U32.size, slot)
        ring_push(self._region, space.ring, seq, gen << 32 | slot)
        HEADER.pack_into(self._map, space.header, fresh, depth + 1, seq + 1)

    # --- what the operations use ----------------------------------------------------------
    @staticmethod
    def live(space: InodeSpace, region: Region) -> int:
        """Entries in use, read from the shared header (for stats)."""
        fresh, depth, _ = HEADER.unpack_from(region.map, space.header)
        return fresh - 1 - depth

    def get(self, nodeid: int) -> Inode:
        inode = self._local.get(nodeid)
        if inode is not None:
            return inode
        slot = nodeid & _MASK32
        if not 1 < slot <= self._space.capacity:
            raise _stale()
        gen, live, _n, dev, ino, mount_id, hlen, creator, *_passthrough, handle = self._read_slot(slot)
        if not live or gen != nodeid >> 32:
            raise _stale()
        if creator != self._worker:
            self._misc[FOREIGN_NODES] += 1
        inode = Inode(nodeid, (dev, ino), handle[:hlen] if hlen else None, mount_id, -1)
        self._local[nodeid] = inode
        return inode

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
        """Close up to `n` of the least recently used fds, FLOOR staying; how many were closed."""
        n = min(n, len(self._open) - FLOOR) if self.reopen else 0
        for _ in range(n):
            self._close_local(self._open.popitem(last=False)[1])
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
            freed = [n for n in self._local if n != ROOT_ID and self._read_slot(n & _MASK32)[:2] != (n >> 32, 1)]
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
        """Add `n` lookups to a live inode; False if its slot was freed meanwhile."""
        if inode.nodeid == ROOT_ID:
            return True
        slot = inode.nodeid & _MASK32
        region = self._region
        region.lock(LOCK_INODES)
        try:
            gen, live, nlookup = self._read_slot(slot)[:3]
            if not live or gen != inode.generation:
                return False
            self._set_nlookup(slot, nlookup + n)
            return True
        finally:
            region.unlock(LOCK_INODES)

    def add(self, fd: int, st: os.stat_result) -> Inode:
        """Take ownership of an O_PATH fd for a backing inode; counts one lookup."""
        key = (st.st_dev, st.st_ino)
        handle, mount_id = handle_of(fd)
        region = self._region
        region.lock(LOCK_INODES)
        try:
            i, slot = self._find(key)
            if slot:
                gen, _live, nlookup, *_ = row = self._read_slot(slot)
                if handle is None or handle == row[12][: row[6]]:
                    self._set_nlookup(slot, nlookup + 1)
                else:  # a reused inode number: the name gets a new slot
                    self._remove(i)
                    slot = 0
            if not slot:
                slot, gen = self._alloc()
                self._write_slot(slot, gen, 1, 1, key, mount_id, handle)
                self._insert(key, slot)
        finally:
            region.unlock(LOCK_INODES)
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

    def nodeid_of(self, key: tuple[int, int]) -> int:
        """The live nodeid of backing inode `key`, or 0."""
        return nodeid_of(self._space, self._region, key, None)

    def in_passthrough(self, nodeid: int) -> bool:
        """Whether the inode has a passthrough open: the kernel then changes its data and size itself."""
        at = self._space.slots + (nodeid & _MASK32) * SLOT.size + _BACKING_AT + 4
        return _I32.unpack_from(self._map, at)[0] > 0

    def _backing_at(self, slot: int) -> tuple[int, int]:
        """(offset of slot's passthrough fields, the lock of its stripe)."""
        return self._space.slots + slot * SLOT.size + _BACKING_AT, LOCK_BACKING + slot % BACKING_STRIPES

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
        (kept,) = U32.unpack_from(self._map, at)
        if n > 0 and kept >= IDLE_IDS // BACKING_STRIPES:
            return False
        U32.pack_into(self._map, at, kept + n)
        return True

    def forget(self, nodeid: int, nlookup: int) -> None:
        if nodeid == ROOT_ID:
            return
        slot = nodeid & _MASK32
        if not 1 < slot <= self._space.capacity:
            return
        region = self._region
        region.lock(LOCK_INODES)
        try:
            gen, live, count, dev, ino = self._read_slot(slot)[:5]
            if not live or gen != nodeid >> 32:
                return
            if count > nlookup:
                self._set_nlookup(slot, count - nlookup)
                return
            self._free(slot, gen, (dev, ino))
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
