"""/dev/fuse: requests read from a seat's clone of the device, replies and notifications written to it.

THE BUFFERS

Every read of the device lands in a request buffer, a stretch of an anonymous
mmap placed so that a WRITE's payload (after the 40-byte in-header and the
40-byte write_in) starts on a page boundary: the payload goes to the backing
without a copy, and O_DIRECT backing writes get the alignment they need.  The
same page-aligned region serves a READ's data on the ring path: the request
has been decoded by then, so a slot needs one buffer, not two.

The pool is one mapping, so a worker's ring registers it as one fixed buffer
(`Ring.register_buffers`): reads and writes into it are READ_FIXED and
WRITE_FIXED, whose pages the kernel pinned once instead of on every O_DIRECT
call.  Memory: a buffer is max_write + 2 pages (1 MiB + 8 KiB); a pool of
`depth` buffers is the ring worker's whole data memory, fixed at start-up
(`--io-depth`), and resident once registered.  The pool belongs to the seat
(`fastpass.seat`): a killed worker's requests stay in it for its replacement.

READING

While nothing waits on the ring, a worker waits for the next request in a
blocking read of the device.  While backing calls are out, the fd is
O_NONBLOCK: the worker reads every request already queued into free slots,
then waits on the ring for a completion or for a POLL_ADD of the device.

Why the device is not read on the ring: its read ignores IOCB_NOWAIT (only
the file's O_NONBLOCK counts), so the ring can only run a blocking read in an
io-wq thread (IOSQE_ASYNC), and that hand-off halved the ops/s of
metadata-bound work (4,967 against 8,064 creates+stats+reads+unlinks a second
with --cache off, measured on this project's 2-core machine) for nothing: a
request that is already queued is read at once either way.  Replies are plain
writes: the device takes them without blocking, and a write costs less than
an SQE from Python.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections.abc import Callable

from fastpass.kernel import abi, encode
from fastpass.kernel.init import MAX_WRITE

log = logging.getLogger("fastpass.transport")

HEAD = abi.IN_HEADER.size + abi.WRITE_IN.size  # 80: where a WRITE's payload starts
PAGE = mmap.PAGESIZE
SIZE = PAGE + MAX_WRITE + PAGE  # mapped per buffer
INTERRUPTED = -1  # `Dev.read`: the request was interrupted before it was read
ANSWERED = -1  # what a dispatch returns for a request answered at once (or needing no answer): its buffer is free
_IGNORED_WRITE_ERRORS = (errno.ENOENT,)  # the request was interrupted or aborted meanwhile
_ENDED = (errno.ENODEV, errno.ECONNABORTED)  # reads after the connection ended


class BufferPool:
    """`depth` request buffers, each with a slot number; a slot is free or carries one request."""

    def __init__(self, depth: int, attach: int | None = None):
        """`depth` buffers in a memfd of their own (`attach`: one handed over, `fastpass.restart`)."""
        self.fd = os.memfd_create("fastpass-buffers", os.MFD_CLOEXEC) if attach is None else attach
        if attach is None:
            os.ftruncate(self.fd, depth * SIZE)
        self.memory = mmap.mmap(self.fd, depth * SIZE)
        whole = memoryview(self.memory)
        self.bufs = [whole[i * SIZE + PAGE - HEAD : (i + 1) * SIZE] for i in range(depth)]
        self.data = [buf[HEAD:] for buf in self.bufs]  # page aligned: a READ's data on the ring

    def __len__(self) -> int:
        return len(self.bufs)


Reply = Callable[[int, int, int, object], None]  # reply(slot, unique, error, body): the one way a request is answered


class Dev:
    """One worker's side of its seat's device clone: reads into the pool's buffers, replies."""

    def __init__(self, devfd: int, pool: BufferPool, answered: memoryview):
        """`answered`: the seat journal's column that says which request each slot last answered."""
        self.devfd = devfd
        self.pool = pool
        self.answered = answered
        # The fd's mode: blocking while the worker is idle, O_NONBLOCK while calls are out.  The
        # mode belongs to the clone, which the worker's predecessor at this index had: one killed
        # while calls were out left it O_NONBLOCK.
        self.blocking = os.get_blocking(devfd)
        self._iovs = [[buf] for buf in pool.bufs]

    def read(self, slot: int) -> int:
        """Wait for one request and read it into `slot`'s buffer; its length, 0 once the
        connection has ended, or INTERRUPTED."""
        if not self.blocking:
            os.set_blocking(self.devfd, True)
            self.blocking = True
        try:
            return os.readv(self.devfd, self._iovs[slot])
        except OSError as e:
            if e.errno == errno.ENOENT:
                return INTERRUPTED
            if e.errno not in _ENDED:
                raise
            return 0

    def drain(self, dispatch: Callable[[memoryview, int, int], int], free: list[int]) -> bool:
        """Read and dispatch the requests already queued into free slots, without waiting; whether
        the connection has ended.  A request that `dispatch` does not answer at once (ANSWERED)
        keeps its slot until its backing calls end.  At most one pass of the pool, so a steady stream of requests
        answered inline cannot keep the ring's completions waiting (the device's poll fires at
        once if more are queued)."""
        if self.blocking:
            os.set_blocking(self.devfd, False)
            self.blocking = False
        bufs, iovs, devfd = self.pool.bufs, self._iovs, self.devfd
        readv = os.readv
        for _ in range(len(bufs)):
            if not free:
                break
            slot = free[-1]
            try:
                n = readv(devfd, iovs[slot])
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOENT:  # interrupted before we read it
                    continue
                if e.errno not in _ENDED:
                    raise
                return True
            if n == 0:  # the connection ended (a socket in tests reads 0 at its end)
                return True
            if dispatch(bufs[slot], n, slot) != ANSWERED:
                free.pop()
        return False

    def replier(self) -> Reply:
        """reply(slot, unique, error, body) on the device, for the request in `slot`; then the
        slot's journal says it is answered."""
        devfd, answered, pack = self.devfd, self.answered, abi.OUT_HEADER.pack
        write, writev = os.write, os.writev

        def reply(slot: int, unique: int, error: int, body: object = None) -> None:
            try:
                if body is None:
                    write(devfd, pack(16, error, unique))
                elif body.__class__ is bytes:
                    write(devfd, pack(16 + len(body), 0, unique) + body)  # type: ignore[operator]
                else:
                    writev(devfd, [pack(16 + len(body), 0, unique), body])  # type: ignore[arg-type]
            except OSError as e:
                if e.errno not in _IGNORED_WRITE_ERRORS:
                    log.warning("reply to %d failed: %s", unique, e.strerror)
            answered[slot] = unique

        return reply


class Notifier:
    """Notifications written on a device fd of the connection (on either transport, the kernel
    takes them only there): the watcher's, the writeback cache's, and prunes."""

    def __init__(self, devfd: int):
        self.devfd = devfd

    def inval_inode(self, nodeid: int, data: bool) -> None:
        os.write(self.devfd, encode.inval_inode(nodeid, data))

    def inval_entry(self, parent: int, name: bytes, child: int) -> None:
        os.write(self.devfd, encode.delete(parent, child, name) if child else encode.inval_entry(parent, name))

    def forget_names(self) -> None:
        """Every name the kernel holds is looked up again at its next use (FUSE_NOTIFY_INC_EPOCH,
        7.44); a kernel without it refuses the code (EINVAL), and its names follow their timeouts."""
        try:
            os.write(self.devfd, encode.inc_epoch())
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            log.warning("the kernel cannot be told to look every name up again (no FUSE_NOTIFY_INC_EPOCH): "
                        "names changed meanwhile show within the entry timeout")  # fmt: skip

    def prune(self, nodeids: list[int]) -> None:
        """Ask the kernel to forget these nodeids where nothing holds them (FUSE_NOTIFY_PRUNE, 7.45)."""
        os.write(self.devfd, encode.prune(nodeids))
