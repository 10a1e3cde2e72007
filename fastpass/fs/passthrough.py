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
  (`InodeTable.attach_backing`), and the last release, on whichever worker,
  closes it once.
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
  uid with no ioctl.
"""

from __future__ import annotations

import logging
import os

from fastpass import _linux
from fastpass.fs.inodes import Inode, InodeTable
from fastpass.kernel import abi
from fastpass.kernel.abi import FopenFlag
from fastpass.shm.counters import BACKING_CLOSED, BACKING_REGISTERED

log = logging.getLogger("fastpass.passthrough")

# Plain ints: IntFlag's | runs in Python.
_PASSTHROUGH, _DIRECT_IO = int(FopenFlag.PASSTHROUGH), int(FopenFlag.DIRECT_IO)


class Passthrough:
    def __init__(self, devfd: int, inodes: InodeTable, misc: memoryview):
        self._devfd = devfd
        self._inodes = inodes
        self._misc = misc  # this worker's counters: ids registered and closed
        self._warned: set[int] = set()
        inodes.unregister = self._close

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
        backing_id, own_io = self._inodes.attach_backing(inode, uid, read_only, register)
        if not backing_id:
            return 0, 0
        return _PASSTHROUGH | (_DIRECT_IO if own_io else 0), backing_id

    def join(self, inode: Inode, uid: int) -> tuple[int, int]:
        """(open_flags, backing_id) of the id `uid` registered for the inode, one open more, or
        (0, 0): an open that needs nothing of the worker but the id (a plain read-only one,
        checked already) joins it without opening the backing file itself."""
        backing_id = self._inodes.join_backing(inode, uid)
        return (_PASSTHROUGH, backing_id) if backing_id else (0, 0)

    def release(self, nodeid: int) -> None:
        self._inodes.detach_backing(nodeid)

    def _close(self, backing_id: int) -> None:
        _linux.backing_close(self._devfd, backing_id, abi.DEV_IOC_BACKING_CLOSE)
        self._misc[BACKING_CLOSED] += 1
