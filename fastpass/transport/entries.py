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
  queue fetch again, so no request stays queued (`EntryTransport.kick`).
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
import errno
import fcntl
import logging
import mmap
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

from fastpass import state
from fastpass.kernel import abi
from fastpass.shm.journal import Journal, unique_at
from fastpass.transport import BACKING, POLL
from fastpass.transport.dev import Reply
from fastpass.uring.ring import Ring, address_of

log = logging.getLogger("fastpass")

PARAMETER = "/sys/module/fuse/parameters/enable_uring"
PAGE = mmap.PAGESIZE
STAGE = abi.IN_HEADER.size + abi.URING_OP_IN_SIZE  # in-header and first argument, copied before the payload
_IOVECS = ctypes.c_uint64 * 4  # struct iovec[2]: base, len, base, len
# The kick's STATFS, pinned to one CPU, so that it goes to that CPU's queue (`EntryTransport.kick`).
KICK = """import os, sys
try:
    os.sched_setaffinity(0, {int(sys.argv[2])})
    os.statvfs(sys.argv[1])
except OSError:
    pass  # an offline CPU queues nothing; an unmount ends the kick too
"""
_GONE = (-errno.ENOTCONN, -errno.ECONNABORTED, -errno.ECANCELED)  # an entry's end with its connection
_HEADER = abi.IN_HEADER.size
_unpack_u32 = struct.Struct("<I").unpack_from
_pack_u32 = struct.Struct("<I").pack_into
_pack_out = abi.OUT_HEADER.pack_into
_pack_cmd = abi.URING_CMD_REQ.pack


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


class Refused(Exception):
    """The kernel refused this worker's FUSE-over-io_uring entries; the message says how."""


class EntryTransport:
    """One worker's entries on its ring: registration or takeover, fetch, and commit.

    A request arrives as the completion of its entry's command.  The worker copies the
    in-header and the first argument (at most 168 bytes, one slice assignment each) to just
    before the entry's payload, so the request is one view laid out as a device read gives
    it, and dispatches it from that (`receiver`); the reply goes into the entry and back with
    COMMIT_AND_FETCH, submitted with the next wait (`replier`).  The two lengths, the copies
    and the view cost 0.86 us a request (timeit, a GETATTR's 16-byte argument, with a test
    run busy on the other core), and the reply is one pack_into of SQE and command
    (`Ring.command`) instead of a write(2): measured per stat with one worker and one client
    (3 alternating rounds), 10.7 us of Python and 23 us waiting for the next request, against
    18 and 33 us on /dev/fuse.
    """

    def __init__(self, share: Share, ring: Ring, devfd: int, journal: Journal, first: int):
        """`first`: the journal slot of entry 0 (entries follow the device's buffers)."""
        self.share = share
        self.ring = ring
        self.devfd = devfd
        self.journal = journal
        self.first = first
        self.backlog: list[tuple[int, int]] = []  # completions that came with the registration
        self._replays: list[int] = []  # entries holding a request a dead predecessor left unanswered

    def take(self, required: bool) -> bool:
        """Register the entries, or take them over from a dead predecessor; whether the kernel
        took them all.  An entry whose header names a request the journal has not seen
        answered holds one the kernel waits for: `leftovers` gives it to be answered first.
        One whose reply was written is committed again as it is (the kernel answers ENOENT
        where it had it already, and the entry is registered anew); one that never had a
        request is registered.  Raises Refused if the kernel refuses them and `required`;
        else says so in the log and the worker serves /dev/fuse alone (whatever entries were
        taken still serve)."""
        share, ring, first, journal = self.share, self.ring, self.first, self.journal
        for i, h in enumerate(share.headers):
            unique = unique_at(share.view, h)  # fuse_in_header.unique, fuse_out_header's too
            if journal.pending(first + i, unique):
                self._replays.append(i)
            elif unique:
                self._commit(first + i, unique)
            else:
                self._register(i)
        refused: dict[int, int] = {}
        while True:  # a refused command completes inside the submit: one look tells
            again = False
            for tag, res in ring.wait(0):
                i = (tag >> 1) - first
                if tag & BACKING or tag == POLL or res >= 0 or i < 0:
                    self.backlog.append((tag, res))
                elif res == -errno.ENOENT:  # its request was answered before its worker died
                    self._register(i)
                    again = True
                else:
                    refused[i] = res
            if not again:
                break
        if not refused:
            return True
        why = ", ".join(sorted({os.strerror(-res) for res in refused.values()}))
        message = f"the kernel refused {len(refused)} of {len(share)} FUSE-over-io_uring entries ({why})"
        if required:
            raise Refused(message)
        log.warning("%s: serving requests from /dev/fuse", message)
        return False

    def _register(self, i: int) -> None:
        share = self.share
        self.ring.uring_cmd(self.devfd, abi.URING_CMD_REGISTER, _pack_cmd(0, 0, share.qids[i]),
                            (self.first + i) << 1, share.iov_addrs[i], abi.URING_IOV_SEGS)  # fmt: skip

    def _commit(self, slot: int, unique: int) -> None:
        """COMMIT_AND_FETCH of the entry in `slot` with the reply it holds (submitted with the
        next wait)."""
        share, i = self.share, slot - self.first
        self.ring.command(abi.URING_CMD_REQ)(self.devfd, abi.URING_CMD_COMMIT_AND_FETCH, share.iov_addrs[i],
                                             abi.URING_IOV_SEGS, slot << 1, 0, unique, share.qids[i])  # fmt: skip

    def replier(self, write: Reply) -> Reply:
        """reply(slot, unique, error, body): a request of the device is answered there (`write`);
        one in an entry gets its reply in the entry, handed back with COMMIT_AND_FETCH
        (submitted with the next wait).  The journal says it is answered once the entry holds
        the whole reply: committed again as it is, it is the same answer."""
        share, devfd, first = self.share, self.devfd, self.first
        view, answered = share.view, self.journal.answered
        memory = view.obj
        headers, payloads, addrs, qids, iovs = share.headers, share.payloads, share.payload_addrs, share.qids, share.iov_addrs
        prep = self.ring.command(abi.URING_CMD_REQ)
        commit, segs, payload_sz = abi.URING_CMD_COMMIT_AND_FETCH, abi.URING_IOV_SEGS, abi.URING_PAYLOAD_SZ

        def reply(slot: int, unique: int, error: int, body: object = None) -> None:
            if slot < first:
                write(slot, unique, error, body)
                return
            i = slot - first
            h = headers[i]
            n = 0
            if body is not None:
                n = len(body)  # type: ignore[arg-type]
                # A READ's data is already where the reply goes: the payload, which was its `area`.
                if body.__class__ is not memoryview or body.obj is not memory or address_of(body) != addrs[i]:
                    p = payloads[i]
                    view[p : p + n] = body  # type: ignore[assignment]
            _pack_out(view, h, 16 + n, error, unique)
            _pack_u32(view, h + payload_sz, n)
            answered[slot] = unique
            prep(devfd, commit, iovs[i], segs, slot << 1, 0, unique, qids[i])

        return reply

    def _stager(self) -> Callable[[int], tuple[memoryview, int]]:
        """stage(i): entry i's request as one view, laid out as a device read gives it, and its
        length; the journal keeps where it lies (the reply will overwrite the kernel's header)."""
        share, first, staged = self.share, self.first, self.journal.staged
        view, headers, payloads = share.view, share.headers, share.payloads
        payload_sz, op_in, header = abi.URING_PAYLOAD_SZ, abi.URING_OP_IN, _HEADER

        def stage(i: int) -> tuple[memoryview, int]:
            h = headers[i]
            p = payloads[i]
            size = _unpack_u32(view, h + payload_sz)[0]
            arg = _unpack_u32(view, h)[0] - header - size  # the first argument's size
            if arg:
                if not 0 < arg <= 128:
                    arg = 0  # dispatch answers EINVAL: the header's length is not what came
                view[p - arg : p] = view[h + op_in : h + op_in + arg]
            start = p - header - arg
            view[start : start + header] = view[h : h + header]
            staged(first + i, unique_at(view, h), start, p + size - start)
            return view[start : p + size], p + size - start

        return stage

    def leftovers(self) -> Iterator[tuple[int, memoryview, int]]:
        """(slot, request, length) of each request a dead predecessor left in an entry unanswered
        (found by `take`), once: staged again unless its journal record says where it lies."""
        share, stage = self.share, self._stager()
        for i in self._replays:
            slot = self.first + i
            state, _, _, start, length = self.journal.record(slot, unique_at(share.view, share.headers[i]))
            yield (slot, *((share.view[start : start + length], length) if state != "new" else stage(i)))
        self._replays = []

    def receiver(self, dispatch: Callable[[memoryview, int, int], int]) -> Callable[[int, int], None]:
        """received(tag, res) for the completion of an entry's command: a request in the entry is
        staged and dispatched; a commit that came after its request was gone (takeover)
        registers the entry anew."""
        first, stage, counts, qids = self.first, self._stager(), self.share.counts, self.share.qids

        def received(tag: int, res: int) -> None:
            if res == 0:  # a request in entry i
                i = (tag >> 1) - first
                counts[qids[i]] += 1
                dispatch(*stage(i), tag >> 1)
            elif res == -errno.ENOENT:
                self._register((tag >> 1) - first)
            elif res not in _GONE:
                log.warning("FUSE-over-io_uring entry %d: %s", (tag >> 1) - first, os.strerror(-res))

        return received

    def kick(self, mountpoint: str) -> None:
        """After a takeover: one STATFS from each CPU of this worker's queues, so each queue
        fetches again (its requests queued while it had no entry wait for a commit).

        Each comes from a process of its own (KICK), not a thread of this worker: a thread
        waiting for its answer would hold this process in the kernel's uninterruptible wait
        for a request already in userspace, so that should this worker die before it answers
        (its own entry may have the STATFS), the process would never end, the supervisor
        never replace it, and its queues never be served again.  The helper holds no fd of the
        worker (close_fds), so it keeps neither the ring nor the entries alive; a thread of
        the worker reaps it."""
        for cpu in self.share.cpus():
            helper = subprocess.Popen([sys.executable, "-c", KICK, mountpoint, str(cpu)], close_fds=True,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            threading.Thread(target=helper.wait, daemon=True).start()
