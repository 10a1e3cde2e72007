"""Kernel passthrough: regular files whose reads, writes and mmap never reach userspace.

Facts that shape it (fs/fuse/passthrough.c, backing.c and iomode.c, Linux 6.9-6.18):

* A backing file is registered on the connection (FUSE_DEV_IOC_BACKING_OPEN
  on any device fd, so any worker) and named by an id in the OPEN/CREATE
  reply with FOPEN_PASSTHROUGH.  The kernel then serves read, write, splice
  and mmap on that file itself, with the credentials of the thread that
  registered it.
* While an inode has a passthrough open, every new open of it must carry
  FOPEN_PASSTHROUGH with the same id, else the application's open(2) fails
  with EIO.  So the id lives in the shared inode slot with its open count
  (`fastpass.fs.slots`; `attach` below), read and written under the lock of
  the slot's stripe, and the last release, on whichever worker, closes it
  once.
* For each passthrough open the kernel opens its own backing file from the
  registered one's path, with the application's open flags (O_APPEND and
  O_DIRECT included), and does that I/O with the registrant's credentials.
  So the opener's own fd is registered while the request runs with the
  opener's credentials: passthrough I/O can do no more on the backing than
  the opener could.  A later open by another uid still carries the id (the
  rule above) plus FOPEN_DIRECT_IO, so its reads and writes come to
  userspace and run there; only its mmap uses the backing file.  An open
  whose reads or writes a filter needs (`fastpass.fs.data`) is answered
  the same way, with the id registered if it is the inode's first: every
  open of a regular file then agrees with the kernel's one-mode-per-inode
  rule, filtered or not, and shared mmap keeps working.
* Linux 6.18 does not carry RWF_NOAPPEND into the backing write: on an
  O_APPEND file such a write appends.
* KEEP_CACHE and the writeback cache are never used with it (EIO otherwise).
* Registering and closing an id are two ioctls under the slot's lock, most of
  what passthrough added to an open/release pair.  The kernel opens its own
  backing file for every open, from the registered file's path with the
  opener's flags, and drops the inode's hold on the id at its last release,
  so an id stays usable with no open.  One registered from a read-only file
  (it holds no write access: no ETXTBSY for an exec of it) is therefore kept
  until the kernel forgets the inode, and serves the next open by the same
  uid with no ioctl (up to IDLE_IDS of them).  The FORGET that frees the
  slot clears its fields under the inode lock, before the slot can be taken
  again (`InodeIndex.forget`), and the worker that freed it closes the id
  (`InodeTable.forget` calls `close`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from fastpass import _linux
from fastpass.fs.inode_index import InodeIndex
from fastpass.fs.slots import BACKING, BACKING_AT, MASK32, OPENS, OPENS_AT, Inode
from fastpass.kernel import abi
from fastpass.kernel.abi import FopenFlag
from fastpass.shm.counters import BACKING_CLOSED, BACKING_REGISTERED
from fastpass.shm.region import BACKING_STRIPES, Region

log = logging.getLogger("fastpass.passthrough")

# Plain ints: IntFlag's | runs in Python.
_PASSTHROUGH, _DIRECT_IO = int(FopenFlag.PASSTHROUGH), int(FopenFlag.DIRECT_IO)
# Backing ids kept registered with no open, at most: each pins a kernel file, its dentry and the
# backing inode (about 1.5 KiB), and a deleted file's blocks, until the kernel forgets the inode.
IDLE_IDS = 16384


class Passthrough:
    """One worker's passthrough: backing ids registered on its device fd, shared through the
    inode slots (`InodeIndex.backing`)."""

    def __init__(self, devfd: int, index: InodeIndex, region: Region, misc: memoryview):
        self._devfd = devfd
        self._index = index
        self._region = region  # the slots' stripe locks
        self._misc = misc  # this worker's counters: ids registered and closed
        self._warned: set[int] = set()

    def open(self, inode: Inode, fd: int, uid: int, flags: int) -> tuple[int, int]:
        """(open_flags, backing_id) for a regular file the caller `uid` has just opened as `fd` with `flags`."""

        def register() -> int:
            try:
                backing_id = _linux.backing_open(self._devfd, fd, abi.DEV_IOC_BACKING_OPEN)
            except OSError as e:
                if e.errno not in self._warned:
                    self._warned.add(e.errno)
                    log.warning("passthrough registration failed (%s): such files are served in userspace",
                                e.strerror)  # fmt: skip
                return 0
            self._misc[BACKING_REGISTERED] += 1
            return backing_id

        read_only = flags & os.O_ACCMODE == os.O_RDONLY
        backing_id, own_io = self.attach(inode, uid, read_only, register)
        if not backing_id:
            return 0, 0
        return _PASSTHROUGH | (_DIRECT_IO if own_io else 0), backing_id

    def attach(self, inode: Inode, uid: int, read_only: bool, register: Callable[[], int]) -> tuple[int, bool]:
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
        slot = inode.nodeid & MASK32
        m, off, lock = self._index.backing(slot)
        at = off + BACKING_AT
        region = self._region
        region.lock(lock)
        try:
            backing_id, opens, owner, keep = BACKING.unpack_from(m, at)
            if backing_id > 0:
                if opens or owner == uid:
                    OPENS.pack_into(m, off + OPENS_AT, opens + 1)
                    return backing_id, owner != uid
                # idle, another uid's: the opener's own credentials serve better
                self.close(self._index.drop_backing(slot))
            backing_id = register()
            if backing_id > 0:
                keep = read_only and self._index.count_kept(slot, 1, IDLE_IDS // BACKING_STRIPES)
                BACKING.pack_into(m, at, backing_id, 1, uid, keep)
            return backing_id, False
        finally:
            region.unlock(lock)

    def join(self, inode: Inode, uid: int) -> tuple[int, int]:
        """(open_flags, backing_id) of the id `uid` registered for the inode, one open more, or
        (0, 0): an open that needs nothing of the worker but the id (a plain read-only one,
        checked already) joins it without opening the backing file itself."""
        m, off, lock = self._index.backing(inode.nodeid & MASK32)
        region = self._region
        region.lock(lock)
        try:
            backing_id, opens, owner, _keep = BACKING.unpack_from(m, off + BACKING_AT)
            if backing_id <= 0 or owner != uid:
                return 0, 0
            OPENS.pack_into(m, off + OPENS_AT, opens + 1)
        finally:
            region.unlock(lock)
        return _PASSTHROUGH, backing_id

    def release(self, nodeid: int) -> None:
        """One passthrough open fewer; after the last, an id that may not stay idle is closed
        (once, whichever worker)."""
        slot = nodeid & MASK32
        m, off, lock = self._index.backing(slot)
        region = self._region
        region.lock(lock)
        try:
            backing_id, opens, _owner, keep = BACKING.unpack_from(m, off + BACKING_AT)
            if backing_id <= 0 or opens <= 0:
                return
            if opens > 1 or keep:
                OPENS.pack_into(m, off + OPENS_AT, opens - 1)
            else:
                self.close(self._index.drop_backing(slot))
        finally:
            region.unlock(lock)

    def close(self, backing_id: int) -> None:
        """Close a backing id no slot holds any more."""
        _linux.backing_close(self._devfd, backing_id, abi.DEV_IOC_BACKING_CLOSE)
        self._misc[BACKING_CLOSED] += 1
