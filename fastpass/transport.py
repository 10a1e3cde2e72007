"""FUSE-over-io_uring: where requests come from when they do not come from reads of /dev/fuse.

THE KERNEL'S SIDE (fs/fuse/dev_uring.c and include/uapi/linux/fuse.h, Linux 6.14+)

- The connection has one queue per possible CPU, and a request goes to the queue of the CPU
  its caller runs on.  A queue holds entries: a 288-byte header buffer and a payload buffer
  a server registered with IORING_OP_URING_CMD (REGISTER) on an SQE128 ring.  The CQE of an
  entry's command completes when a request has been written into it; the server answers
  with COMMIT_AND_FETCH on the same entry, which also waits for the next request: one SQE
  per request, where /dev/fuse takes a read and a write.
- The kernel routes requests to the rings only once every queue has an entry; until then
  (and for the requests already queued when it switches) they come through /dev/fuse.
  FORGET, BATCH_FORGET and INTERRUPT always do, and notifications are always written there.
- It offers FUSE_OVER_IO_URING in INIT, and takes it from the reply, only while the fuse
  module's `enable_uring` parameter is on (off by default; root may change it).  A
  connection that negotiated it keeps it when the parameter goes off later.
- An entry whose ring is gone is not given back: the kernel cancels the commands of a dead
  process (the entries it held waiting become unusable) and leaves the requests it was
  serving in the queue's list of requests in userspace, found again only by a commit with
  their `unique`.  A queue left with no usable entry queues its requests, and they stay
  queued after new entries are registered: only a commit fetches a queued request.

WHAT FASTPASS DOES ABOUT IT

- The entries of every worker live in one shared mapping the supervisor makes before it
  forks (`Entries`), so each buffer has the same address in every worker, and a worker's
  replacement, forked the same way, finds the entries of the dead one at the addresses the
  kernel has.  For each entry whose header still names a request (a nonzero `unique`), it
  commits that request with ECONNABORTED, as the kernel ends the requests a dying worker
  had read from /dev/fuse, and the entry is its own again; the kernel answers ENOENT where
  that request was already answered, and the entry is registered anew (as are entries that
  never had a request).  Then one request from a thread on each CPU of its queues makes each
  queue fetch again, so no request stays queued (`Worker.kick`).
- Queues are divided among workers (`queues_of`); each worker registers `depth` entries
  on each of its queues.
- The `enable_uring` parameter is machine-wide: `--transport auto` never changes it (it uses
  the ring where the kernel offers it, that is, where root turned it on), and `--transport
  uring` as root turns it on for the mount and the INIT answer only (`offered`), then puts it
  back, so that other FUSE servers starting later see the machine as it was.  A normal user
  cannot change it: `--transport uring` then refuses to mount while it is off.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import mmap
import os
from collections.abc import Iterator

from fastpass import state
from fastpass.kernel import abi

log = logging.getLogger("fastpass")

PARAMETER = "/sys/module/fuse/parameters/enable_uring"
PAGE = mmap.PAGESIZE
STAGE = abi.IN_HEADER.size + abi.URING_OP_IN_SIZE  # in-header and first argument, copied before the payload
_IOVECS = ctypes.c_uint64 * 4  # struct iovec[2]: base, len, base, len


def possible_cpus() -> int:
    """The kernel's queue count, num_possible_cpus(): CPUs in /sys/devices/system/cpu/possible."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            return cpu_count(f.read())
    except OSError:
        return os.sysconf("SC_NPROCESSORS_CONF")


def cpu_count(cpu_list: str) -> int:
    """How many CPUs a kernel CPU list names ("0-3,8-11" is 8)."""
    count = 0
    for part in cpu_list.strip().split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def queues_of(index: int, workers: int, queues: int) -> list[int]:
    """The queues worker `index` registers entries on: every workers-th queue, or with more
    workers than queues, one queue shared with the others that have it."""
    if workers <= queues:
        return list(range(index, queues, workers))
    return [index % queues]


def enabled() -> bool | None:
    """The fuse module's enable_uring parameter; None where the kernel has no FUSE-over-io_uring."""
    try:
        with open(PARAMETER) as f:
            return f.read().strip() in ("Y", "1")
    except OSError:
        return None


def refusal(transport: str) -> str | None:
    """Why `--transport uring` cannot be had here, said before anything is mounted; None: it can."""
    if transport != "uring":
        return None
    on = enabled()
    if on is None:
        return ("--transport uring: this kernel has no FUSE-over-io_uring (Linux 6.14+ built with "
                "CONFIG_FUSE_IO_URING): use --transport auto or dev")  # fmt: skip
    if not on and os.geteuid() != 0:
        return (f"--transport uring: the kernel offers FUSE-over-io_uring only while {PARAMETER} is Y, it is N, "
                "and only root may change it: ask root to turn it on, or use --transport auto or dev")  # fmt: skip
    return None


def _set(on: bool) -> None:
    with open(PARAMETER, "w") as f:
        f.write("Y" if on else "N")


@contextlib.contextmanager
def offered(transport: str) -> Iterator[None]:
    """Around the mount and the INIT answer: for `--transport uring` as root, the parameter on
    while the kernel negotiates, then back as it was.  fastpass mounts doing the same wait for
    each other (a lock file), so none puts it back while another one negotiates."""
    if transport != "uring" or os.geteuid() != 0 or enabled() is not False:
        yield
        return
    os.makedirs(state.runtime_dir(), mode=0o700, exist_ok=True)
    with open(os.path.join(state.runtime_dir(), "enable_uring.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        was = enabled()
        if not was:
            _set(True)
            log.info("turned on %s for this mount's start (FUSE-over-io_uring; put back when INIT is answered)",
                     PARAMETER)  # fmt: skip
        try:
            yield
        finally:
            if not was:
                _set(False)


class Entries:
    """Every worker's entries in one shared mapping, made by the supervisor before it forks.

    Layout: the requests-per-queue counters (u64, one row of `queues` per worker), then each
    worker's entries, contiguous (its ring registers them as one fixed buffer).  An entry is
    one page holding the kernel's header at its start and, at its end, the STAGE bytes where
    a request's in-header and first argument are copied to lie just before the payload, which
    starts on the next page: the request is then one contiguous view, as a /dev/fuse read
    gives it, and a WRITE's data and a READ's reply are page aligned.
    """

    def __init__(self, queues: int, workers: int, depth: int, payload: int):
        self.queues, self.workers, self.depth = queues, workers, depth
        self.payload = -(-payload // PAGE) * PAGE
        self.entry = PAGE + self.payload
        counters = -(-(workers * queues * 8) // PAGE) * PAGE
        self.starts = [counters]  # byte offset of each worker's entries, and the end
        for index in range(workers):
            self.starts.append(self.starts[-1] + len(queues_of(index, workers, queues)) * depth * self.entry)
        self.map = mmap.mmap(-1, self.starts[-1])  # MAP_SHARED: forked workers see the same bytes
        self.counts = memoryview(self.map)[:counters].cast("Q")

    def requests_per_queue(self) -> list[int]:
        rows = self.counts.tolist()
        return [sum(rows[w * self.queues + q] for w in range(self.workers)) for q in range(self.queues)]

    def share(self, index: int) -> Share:
        return Share(self, index)


class Share:
    """One worker's entries: for entry i, its queue, where its header and payload lie, and the
    iovec[2] its REGISTER points to."""

    def __init__(self, entries: Entries, index: int):
        self.view = memoryview(entries.map)
        start, end = entries.starts[index], entries.starts[index + 1]
        self.region = self.view[start:end]  # registered with the worker's ring as its fixed buffer
        self.counts = entries.counts[index * entries.queues : (index + 1) * entries.queues]
        qids = queues_of(index, entries.workers, entries.queues)
        self.qids = [q for q in qids for _ in range(entries.depth)]
        self.headers = [start + i * entries.entry for i in range(len(self.qids))]
        self.payloads = [h + PAGE for h in self.headers]
        self.areas = [self.view[p : p + entries.payload] for p in self.payloads]
        self._pin = ctypes.c_char.from_buffer(entries.map)  # the mapping's address, held while we are
        base = ctypes.addressof(self._pin)
        self.payload_addrs = [base + p for p in self.payloads]
        self.iovs = [_IOVECS(base + h, abi.URING_HEADER_SIZE, base + h + PAGE, entries.payload) for h in self.headers]
        self.iov_addrs = [ctypes.addressof(iov) for iov in self.iovs]

    def __len__(self) -> int:
        return len(self.qids)

    def cpus(self) -> list[int]:
        """The CPUs whose callers this worker serves (a queue's number is its CPU's)."""
        return sorted(set(self.qids))
