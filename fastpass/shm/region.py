"""One shared mapping for every process of a mount, and the locks that guard it.

Facts that shape it:

* The supervisor creates a memfd and maps it MAP_SHARED before it forks any
  worker; a forked worker inherits the fd and the mapping, so every process
  sees the same bytes at the same offsets.  Tables inside it are laid out
  with `struct` at fixed offsets (`Layout`), never pickled.
* Mutations that must not interleave (allocating an inode slot, changing a
  lookup count) take one of the region's locks: glibc's process-shared,
  robust mutexes, one a cache line after the tables.  Uncontended, a lock
  and unlock is two ctypes calls and no syscall: 0.66 us here, against
  1.66 us for the fcntl record locks used before, which take two syscalls
  and, in the kernel, one spinlock per file for every lock of the region
  (measured on the same machine, the same minute).  Robust: when a process
  dies holding one, the kernel hands it to the next locker with EOWNERDEAD,
  which marks it consistent and goes on (as a record lock, dropped at
  death, did): a worker killed in a critical section cannot wedge the
  others.  Lock order: a handle shard's lock, then the handle ring's;
  nobody holds the inode lock and a handle lock at once, and nobody takes
  another lock while holding the per-uid counts' lock.
  A slot's passthrough fields and the attribute cache's slots have
  striped locks of their own; one may be taken under the inode lock, never
  the other way.
* Marking a dead holder's lock consistent does not make its tables so: a
  worker killed between two writes of the inode table (a slot published
  but not yet counted as taken, a bucket split half done) leaves an index
  that hands one slot to two inodes.  So the locks whose sections make
  several dependent writes (`LOGGED`: the inode table's) keep an undo log:
  before each such write the section saves the bytes it overwrites
  (`save`), and unlock empties the log.  The next locker, told EOWNERDEAD,
  writes the saved bytes back, last first, which puts the tables as they
  were before the dead section began; the dead worker's request is then
  replayed from its journal (fastpass.shm.journal) like any other.  A
  section that makes one write (a lookup count) saves nothing.  Tables
  outside the region (the inode slots' own memfd) are written back through
  the `targets` each process registers.
* Readers that only need a consistent slot (a nodeid's handle, an fh's
  owner) read without locks: those fields are written before the slot is
  published and never change while it is live.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import struct
import time
from collections.abc import Callable

LOCK_INODES = 0
LOCK_HANDLE_RING = 1  # the ring of released fhs that other workers hold copies of
LOCK_HANDLES = 2  # + shard: a shard of the handle table
HANDLE_SHARDS = 64  # one per worker (counters.MAX_WORKERS)
LOCK_BACKING = LOCK_HANDLES + HANDLE_SHARDS  # + inode slot % BACKING_STRIPES: the slot's passthrough fields
BACKING_STRIPES = 64
LOCK_ATTRS = LOCK_BACKING + BACKING_STRIPES  # + cache slot % ATTR_STRIPES
ATTR_STRIPES = 256
LOCK_SUCCESSION = LOCK_ATTRS + ATTR_STRIPES  # who takes a dead supervisor's place (fastpass.shm.control)
LOCK_SHARES = LOCK_SUCCESSION + 1  # the per-uid counts (fastpass.shm.shares)
LOCKS = LOCK_SHARES + 1
# What `fastpass stats` counts the waits for a lock under: the table each lock guards.
LOCK_TABLES = ("inodes", "handle ring", "handles", "backing ids", "attributes", "other")
_TABLE_OF = ([0, 1] + [2] * HANDLE_SHARDS + [3] * BACKING_STRIPES + [4] * ATTR_STRIPES
             + [5] * (LOCKS - LOCK_SUCCESSION))  # fmt: skip
assert len(_TABLE_OF) == LOCKS
_LOCK_SIZE = 64  # a pthread_mutex_t (40 bytes on x86-64) alone on its cache line
LOGGED = LOCK_INODES + 1  # the locks 0..LOGGED-1 keep an undo log
UNDO_SIZE = 64 * 1024  # bytes of one lock's log (sparse: a page is used once a section writes there)
_UNDO_HEAD = 8  # the log's bytes in use (u32), whether it spilled (u32), then the entries
SLOTS = 1  # the undo target of the inode slots' memfd (fastpass.fs.slots); 0 is the region
_UNDO_ENTRY = struct.Struct("<BxHIQ")  # target, length, pad, offset; the saved bytes follow, to 8 bytes

log = logging.getLogger("fastpass.region")
_libc = ctypes.CDLL(None, use_errno=True)
_mutex_lock, _mutex_unlock = _libc.pthread_mutex_lock, _libc.pthread_mutex_unlock
_mutex_trylock = _libc.pthread_mutex_trylock
_mutex_lock.argtypes = _mutex_unlock.argtypes = _mutex_trylock.argtypes = [ctypes.c_void_p]
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1


class Layout:
    """Bump allocator of aligned offsets; each table asks for its space once, in a fixed order."""

    def __init__(self) -> None:
        self.size = 0

    def take(self, nbytes: int, align: int = 64) -> int:
        offset = (self.size + align - 1) & ~(align - 1)
        self.size = offset + nbytes
        return offset


class Region:
    def __init__(self, size: int, locks: int = LOCKS, attach: int | None = None):
        """A new region of `size` bytes of tables, or with `attach`, the memfd of one a supervisor
        handed over (`fastpass.restart`): the same bytes and locks, sized alike."""
        at = (size + _LOCK_SIZE - 1) & ~(_LOCK_SIZE - 1)
        self._logs = at + locks * _LOCK_SIZE
        total = self._logs + min(locks, LOGGED) * UNDO_SIZE
        if attach is not None:
            if os.fstat(attach).st_size != total:
                raise ValueError(f"the region handed over has {os.fstat(attach).st_size} bytes, this layout {total}")
            self.fd = attach
        else:
            self.fd = os.memfd_create("fastpass", os.MFD_CLOEXEC)  # fork keeps it; exec does not
            os.ftruncate(self.fd, total)  # sparse: pages are allocated when first touched
        self.map = mmap.mmap(self.fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.view = memoryview(self.map)
        self._base = ctypes.c_char.from_buffer(self.map)  # pins the mapping while the addresses are used
        first = ctypes.addressof(self._base) + at
        self._mutexes = [first + i * _LOCK_SIZE for i in range(locks)]
        self._saved = [0] * min(locks, LOGGED)  # bytes this process has in each lock's log
        self._waits: memoryview | None = None  # where this process counts its waits for a lock (`count_waits`)
        # target number -> its writable mapping here, reaching at least an end offset (0: the region)
        self.targets: dict[int, Callable[[int], mmap.mmap]] = {0: lambda off: self.map}
        if attach is not None:
            return  # the locks are made, and may be held by the workers serving on
        attr = ctypes.create_string_buffer(16)  # pthread_mutexattr_t
        for fn, *args in ((_libc.pthread_mutexattr_init,), (_libc.pthread_mutexattr_setpshared, _PTHREAD_PROCESS_SHARED),
                          (_libc.pthread_mutexattr_setrobust, _PTHREAD_MUTEX_ROBUST)):  # fmt: skip
            _check(fn(attr, *args))
        for mutex in self._mutexes:
            _check(_libc.pthread_mutex_init(ctypes.c_void_p(mutex), attr))

    def lock(self, which: int) -> None:
        """Take lock `which`.  A try first, which costs what a lock costs when it is free (one
        call either way); only a lock another process holds is waited for, and the wait counted."""
        mutex = self._mutexes[which]
        err = _mutex_trylock(mutex)
        if err:
            if err == errno.EBUSY:
                err = self._wait(which)
            if err:
                self._recover(which, err)

    def _wait(self, which: int) -> int:
        """Wait for lock `which`, which another process holds; pthread_mutex_lock's result.  The
        wait is counted where `count_waits` said, under the table the lock guards."""
        start = time.perf_counter_ns()
        err = _mutex_lock(self._mutexes[which])
        waits = self._waits
        if waits is not None:
            at = 2 * _TABLE_OF[which]
            waits[at] += 1
            waits[at + 1] += time.perf_counter_ns() - start
        return err

    def count_waits(self, counters: memoryview) -> None:
        """From now on, count this process's waits for a lock held elsewhere: for the i-th of
        LOCK_TABLES, how many in counters[2 * i] and the ns they took in counters[2 * i + 1] (a
        worker's own block: `fastpass stats` shows contention)."""
        self._waits = counters

    def unlock(self, which: int) -> None:
        if which < LOGGED and self._saved[which]:
            U64.pack_into(self.map, self._logs + which * UNDO_SIZE, 0)  # used, and spilled
            self._saved[which] = 0
        _mutex_unlock(self._mutexes[which])

    def save(self, which: int, target: int, buf: mmap.mmap, off: int, n: int) -> None:
        """Log the `n` bytes at `off` of `target` (mapped here as `buf`) before the section holding
        lock `which` overwrites them."""
        m = self.map
        base = self._logs + which * UNDO_SIZE
        used = self._saved[which]
        at = base + _UNDO_HEAD + used
        end = used + _UNDO_ENTRY.size + ((n + 7) & ~7)
        if _UNDO_HEAD + end > UNDO_SIZE:  # the section goes on unguarded: said if it dies
            U32.pack_into(m, base + 4, 1)
            return
        _UNDO_ENTRY.pack_into(m, at, target, n, 0, off)
        at += _UNDO_ENTRY.size
        m[at : at + n] = buf[off : off + n]
        U32.pack_into(m, base, end)  # counted once whole: a log cut short holds nothing half-saved
        self._saved[which] = end

    def _recover(self, which: int, err: int) -> None:
        """pthread_mutex_lock gave `err`: EOWNERDEAD (its holder died; we hold it now) is taken
        over, and what the dead section wrote is undone."""
        mutex = self._mutexes[which]
        _check(err if err != errno.EOWNERDEAD else _libc.pthread_mutex_consistent(ctypes.c_void_p(mutex)))
        if which >= LOGGED:
            return
        m = self.map
        base = self._logs + which * UNDO_SIZE
        used = U32.unpack_from(m, base)[0]
        entries = []
        at = base + _UNDO_HEAD
        while at < base + _UNDO_HEAD + used:
            target, n, _, off = _UNDO_ENTRY.unpack_from(m, at)
            at += _UNDO_ENTRY.size
            entries.append((target, off, bytes(m[at : at + n])))
            at += (n + 7) & ~7
        for target, off, data in reversed(entries):
            reach = self.targets.get(target)
            if reach is None:  # a process that maps no such table (none takes these locks)
                log.error("lock %d: a dead section's write to table %d is not undone here", which, target)
                continue
            reach(off + len(data))[off : off + len(data)] = data
        if U32.unpack_from(m, base + 4)[0]:
            log.error("a process died inside lock %d's section after its undo log was full: the tables it "
                      "guards may be inconsistent", which)  # fmt: skip
        U64.pack_into(m, base, 0)
        if entries:
            log.warning("a process died inside lock %d's section: %d writes undone", which, len(entries))

def _check(err: int) -> None:
    if err:
        raise OSError(err, os.strerror(err))


U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


RING = 4096  # ids a ring remembers; a reader further behind re-checks everything it holds


def ring_push(region: Region, ring: int, seq: int, value: int) -> None:
    """Append `value` as entry number `seq` of the ring at offset `ring` (caller holds the table's lock)."""
    U64.pack_into(region.map, ring + (seq % RING) * U64.size, value)


def ring_since(region: Region, ring: int, seen: int, seq: int) -> list[int] | None:
    """Entries `seen`..`seq` of a ring, or None when they were overwritten (the reader fell behind)."""
    if seq - seen > RING:
        return None
    m = region.map
    return [U64.unpack_from(m, ring + (s % RING) * U64.size)[0] for s in range(seen, seq)]
