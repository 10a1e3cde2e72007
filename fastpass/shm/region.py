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
* Readers that only need a consistent slot (a nodeid's handle, an fh's
  owner) read without locks: those fields are written before the slot is
  published and never change while it is live.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

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
_LOCK_SIZE = 64  # a pthread_mutex_t (40 bytes on x86-64) alone on its cache line

_libc = ctypes.CDLL(None, use_errno=True)
_mutex_lock, _mutex_unlock = _libc.pthread_mutex_lock, _libc.pthread_mutex_unlock
_mutex_lock.argtypes = _mutex_unlock.argtypes = [ctypes.c_void_p]
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
        total = at + locks * _LOCK_SIZE
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
        if attach is not None:
            return  # the locks are made, and may be held by the workers serving on
        attr = ctypes.create_string_buffer(16)  # pthread_mutexattr_t
        for fn, *args in ((_libc.pthread_mutexattr_init,), (_libc.pthread_mutexattr_setpshared, _PTHREAD_PROCESS_SHARED),
                          (_libc.pthread_mutexattr_setrobust, _PTHREAD_MUTEX_ROBUST)):  # fmt: skip
            _check(fn(attr, *args))
        for mutex in self._mutexes:
            _check(_libc.pthread_mutex_init(ctypes.c_void_p(mutex), attr))

    def lock(self, which: int) -> None:
        mutex = self._mutexes[which]
        err = _mutex_lock(mutex)
        if err:
            _recover(mutex, err)

    def unlock(self, which: int) -> None:
        _mutex_unlock(self._mutexes[which])



def _recover(mutex: int, err: int) -> None:
    """pthread_mutex_lock gave `err`: EOWNERDEAD (its holder died; we hold it now) is taken over."""
    _check(err if err != errno.EOWNERDEAD else _libc.pthread_mutex_consistent(ctypes.c_void_p(mutex)))

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
