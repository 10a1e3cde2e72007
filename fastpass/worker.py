"""The request loop: read -> decode -> handler -> encode -> write, on one device fd.

Size: over 500 lines while the FUSE-over-io_uring entries' protocol (registration,
takeover, commit) lives here beside the /dev/fuse loop; it is to move into a transport
package of its own (issue 25, step 1).

Errors are caught here and only here: a handler returns a reply body or
raises OSError, and this loop writes exactly one reply (or none, for the
opcodes the kernel expects none for).  A malformed request is EINVAL and a
log line; an unexpected exception is EIO, a counter and one traceback per
(operation, exception type, origin): a filter's failure names the filter
as its `origin`, so each filter is logged once per operation; the loop
itself never dies of a request.

Three loops share one dispatch step (`_dispatcher`) and one reply step (`_reply`):

- plain: one blocking read of the device, the handler, one write, in turn;
  the request lands in a buffer laid out so a WRITE's payload is page
  aligned (`fastpass.uring.buffers`).
- ring: a pool of `io_depth` request buffers (slots).  The operations in
  `fastpass.fs.table.RING` submit the backing calls that may wait (reads the
  page cache cannot answer, O_DIRECT I/O, fsync, fallocate, READDIRPLUS's new
  entries) to the worker's io_uring, and their slot stays busy until the last
  CQE (a WRITE's payload and a READ's data live in the slot's buffer); the
  rest run their handler inline and answer at once.
  While no backing call is out, the worker waits for the next request in a
  blocking read of the device, exactly as the plain loop does.  While some
  are out, the device fd is O_NONBLOCK: the worker reads every request
  already queued into free slots, dispatches each, and then waits on the
  ring for whichever comes first, a backing call's completion or a POLL_ADD
  of the device fd.  The backing calls of one pass go to the kernel in one
  submit and each is answered as its CQE arrives, so one worker keeps many
  requests in flight while the backing is slow.  Replies are plain writes:
  the device takes them without blocking, and a write costs less than an
  SQE from Python.

  Why the device is not read on the ring: its read ignores IOCB_NOWAIT (only
  the file's O_NONBLOCK counts), so the ring can only run a blocking read in
  an io-wq thread (IOSQE_ASYNC), and that hand-off halved the ops/s of
  metadata-bound work (4,967 against 8,064 creates+stats+reads+unlinks a
  second with --cache off, measured on this project's 2-core machine) for
  nothing: a request that is already queued is read at once either way.
- entries (FUSE-over-io_uring, `fastpass.transport`): the kernel writes each
  request into one of the worker's entries and completes its command on the
  ring; the worker copies the in-header and the first argument (at most 168
  bytes, one slice assignment each) to just before the entry's payload, so the
  request is one view laid out as a device read gives it, and dispatches it
  from that; the reply goes into the entry and back with COMMIT_AND_FETCH,
  submitted with the next wait.  The ring is the only place the worker waits:
  requests, backing completions and the device's readiness (forgets,
  interrupts, requests queued there before the kernel switched) arrive there.
  The two lengths, the copies and the view cost 0.86 us a request (timeit, a
  GETATTR's 16-byte argument, with a test run busy on the other core), and
  the reply is one pack_into of SQE and command (`Ring.command`) instead of
  a write(2): measured per stat with one worker and one client (3 alternating
  rounds), 10.7 us of Python and 23 us waiting for the next request, against
  18 and 33 us on /dev/fuse.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Callable

from fastpass.fs import redo
from fastpass.fs.context import Fs, Request
from fastpass.fs.table import Route, Unexpected, run_route
from fastpass.kernel import abi
from fastpass.kernel.debug import describe_reply, describe_request
from fastpass.kernel.opcodes import Malformed
from fastpass.seat import Seat
from fastpass.shm.counters import IO_NAMES, IO_PATH, PEAK_IN_FLIGHT, REPLAYED, RING_CALLS, TRANSPORT, TRANSPORT_NAMES
from fastpass.shm.journal import unique_at
from fastpass.transport import Share
from fastpass.uring.ring import PART, Ring, address_of

log = logging.getLogger("fastpass.worker")

_IGNORED_WRITE_ERRORS = (errno.ENOENT,)  # the request was interrupted or aborted meanwhile
_ENDED = (errno.ENODEV, errno.ECONNABORTED)  # reads after the connection ended
_BACKING = 1  # tag bit of a slot's backing calls; the slot number is above it, up to PART
_SLOTS = PART // 2 - 1
_POLL = 0  # the tag of the device's readiness poll (slot 0 without the _BACKING bit)
_INLINE = -1  # dispatch: the request was answered (or needs no answer); its buffer is free
MAX_REPLAYS = 2  # a request whose replay ended in its worker's death this often is answered EIO
_GONE = (-errno.ENOTCONN, -errno.ECONNABORTED, -errno.ECANCELED)  # an entry's end with its connection
_HEADER = abi.IN_HEADER.size
# Under load a worker lets go of what other workers freed at most once a millisecond, not before
# every request: each sync reads the shared freed rings (0.8 us a request with one worker, 3.5 with
# two, on the meta round: docs/performance.md).  Nothing is used from a stale fd meanwhile, since
# nodeids and fhs carry generations; an idle worker still syncs at once (`idle_sync`).
_SYNC_NS = 1_000_000
_unpack_u32 = struct.Struct("<I").unpack_from
_pack_u32 = struct.Struct("<I").pack_into
_pack_out = abi.OUT_HEADER.pack_into
_pack_cmd = abi.URING_CMD_REQ.pack


class Refused(Exception):
    """The kernel refused this worker's FUSE-over-io_uring entries; the message says how."""


class _Calls:
    """A request's backing calls on the ring, from its submit until the last completion."""

    __slots__ = ("left", "req", "results", "route", "start", "state")

    def __init__(self, route: Route, req: Request, start: int, state: object, left: int, results: list[int] | None):
        self.route = route
        self.req = req
        self.start = start  # perf_counter ns at dispatch
        self.state = state  # what the route's `done` needs
        self.left = left  # calls still out
        self.results = results  # a batch's results, in call order; None: one call, its result is the last CQE's


class Worker:
    def __init__(self, seat: Seat, fs: Fs, routes: list[Route | None], allow_other: bool, debug: bool,
                 idle: Callable[[], None] | None = None, ring: Ring | None = None,
                 entries: Share | None = None, drain: bool = False):  # fmt: skip
        """`seat`: the device clone, request buffers and journal of this worker's index, with
        whatever a killed predecessor left in them (answered first, by `serve`).  `ring`: serve
        on it with as many requests in flight as the seat has buffers; None: the plain loop,
        one buffer.  `entries` (with a ring made with sqe128): take requests from these
        FUSE-over-io_uring entries too.  `drain`: answer only what the predecessor left, read
        nothing new (the index was retired: `Pool.resize`)."""
        self.devfd = seat.devfd
        self.journal = seat.journal
        self.fs = fs
        self.routes = routes
        self.allow_other = allow_other
        self.debug = debug
        self.idle = idle  # more to do when idle (filters write out their buffers)
        self.ring = ring
        self.unexpected = Unexpected()
        self.pool = seat.pool
        self.entries = entries
        self.drain = drain
        self.first_entry = len(self.pool) if entries is not None else 1 << 30  # slot of entry 0
        self.backlog: list[tuple[int, int]] = []  # completions that came with the entries' registration
        self.replays: list[int] = []  # entries holding a request a dead predecessor left unanswered
        if ring is not None:
            try:
                ring.register_buffers(self.pool.memory if entries is None else entries.region)
            except OSError as e:  # a memlock limit: the ring reads and writes the pool all the same
                log.warning("io_uring buffers not registered (%s): O_DIRECT I/O pins pages per call", e.strerror)
        self.inflight: dict[int, _Calls] = {}  # per slot on the ring path, while its calls are out
        fs.fds.busy_since = self._busy_since
        self.waiting = False  # blocked waiting for requests, none in progress
        fs.counters.misc[IO_PATH] = IO_NAMES.index("plain" if ring is None else "uring")
        fs.counters.misc[TRANSPORT] = TRANSPORT_NAMES.index("dev")
        # reply(slot, unique, error, body): the one way a request is answered, wherever it came from
        self._write_reply = self._writer()
        self._reply = self._write_reply if entries is None else self._committer()

    def _busy_since(self) -> int | None:
        """When the oldest request in flight on the ring was dispatched; None when none is."""
        inflight = self.inflight
        return min(c.start for c in inflight.values()) if inflight else None

    def idle_sync(self) -> None:
        """For a periodic signal: let go of what other workers freed, if no request is in progress.

        A worker syncs before each request, so an idle one would otherwise keep
        its fds for released files and forgotten inodes (and an unlinked file's
        blocks with them) until its next request.
        """
        if self.waiting:
            self.fs.sync()
            if self.idle is not None:
                self.idle()

    def _syncer(self) -> Callable[[], None]:
        """The serve loops' sync between requests: `Fs.sync` once _SYNC_NS has passed since the last."""
        sync, clock = self.fs.sync, time.monotonic_ns
        due = 0

        def sync_due() -> None:
            nonlocal due
            now = clock()
            if now >= due:
                sync()
                due = now + _SYNC_NS

        return sync_due

    def _writer(self) -> Callable[[int, int, int, object], None]:
        """reply(slot, unique, error, body) on the device, for the request in `slot`; then the
        slot's journal says it is answered."""
        devfd, answered, pack = self.devfd, self.journal.answered, abi.OUT_HEADER.pack
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

    def _replay(self, dispatch: Callable[..., int], buf: memoryview, n: int, slot: int) -> int:
        """Answer a request that a killed predecessor read into `slot` and left unanswered, as
        its journal record says: send the recorded reply, run it again in redo mode (it started
        and may have taken effect), or run it as new.  Returns what `dispatch` returns."""
        self.fs.counters.misc[REPLAYED] += 1
        unique = unique_at(buf)
        opcode = _unpack_u32(buf, 4)[0]
        route = self.routes[opcode] if opcode < len(self.routes) else None
        state, error, body, _, _ = self.journal.record(slot, unique)
        if self.journal.tries(slot, unique) >= MAX_REPLAYS and state != "done":
            log.error("request %d (opcode %d) was being served by %d workers that died: answered EIO", unique,
                      opcode, MAX_REPLAYS + 1)  # fmt: skip
            state, error, body = "done", -errno.EIO, None
        if state == "done" or (state == "started" and route is not None and not route.reply):
            if route is not None and route.reply:  # ENOENT if the kernel had it already: answered all the same
                self._reply(slot, unique, error, body)
            else:  # a FORGET begun or done: applying it again could forget what another lookup counted
                self.journal.answered[slot] = unique
            return _INLINE
        return dispatch(buf, n, slot, state == "started")

    def _replay_buffers(self, dispatch: Callable[..., int]) -> set[int]:
        """Answer what a killed predecessor left in the request buffers; the slots that wait for
        backing calls on the ring."""
        busy = set()
        for slot, buf in enumerate(self.pool.bufs):
            unique = unique_at(buf)
            if self.journal.pending(slot, unique):
                n = _unpack_u32(buf, 0)[0]
                if not _HEADER <= n <= len(buf):
                    self.journal.answered[slot] = unique
                elif self._replay(dispatch, buf, n, slot) != _INLINE:
                    busy.add(slot)
        return busy

    def serve(self) -> None:
        """Serve until the connection ends (unmount or abort); without a ring, inflight stays
        empty and this is the plain loop."""
        if self.entries is not None:
            self._serve_entries()
            return
        ring, pool, devfd = self.ring, self.pool, self.devfd
        bufs = pool.bufs
        iovs = [[buf] for buf in bufs]
        inflight = self.inflight
        misc = self.fs.counters.misc
        sync = self._syncer()
        readv = os.readv
        dispatch = self._dispatcher()
        busy = self._replay_buffers(dispatch)
        free = [s for s in range(len(pool) if ring is not None else 1) if s not in busy]  # the last is read into next
        complete = self._complete
        blocking = True  # the device fd's mode: blocking while idle, O_NONBLOCK while calls are out
        polling = False  # a POLL_ADD of the device fd is armed on the ring
        ended = self.drain  # draining: nothing more is read
        while not ended or inflight:
            if not inflight:  # idle: wait for a request in read(2) itself, as the plain loop does
                if not blocking:
                    os.set_blocking(devfd, True)
                    blocking = True
                sync()
                slot = free[-1]
                self.waiting = True
                try:
                    n = readv(devfd, iovs[slot])
                except OSError as e:
                    if e.errno == errno.ENOENT:  # interrupted before we read it
                        continue
                    if e.errno not in _ENDED:
                        raise
                    n = 0
                finally:
                    self.waiting = False
                if n == 0:  # the connection ended (a socket in tests reads 0 at its end)
                    return
                if dispatch(bufs[slot], n, slot) != _INLINE:
                    free.pop()
                continue
            # Backing calls are out: take the requests already queued, without blocking, into the
            # free slots; then wait on the ring for a completion or for the device to have more.
            if blocking:
                os.set_blocking(devfd, False)
                blocking = False
            ended = ended or self._drain(dispatch, free, iovs)
            misc[PEAK_IN_FLIGHT] = max(misc[PEAK_IN_FLIGHT], len(inflight))
            assert ring is not None
            if free and not ended and not polling:
                ring.poll_in(devfd, _POLL)
                polling = True
            for tag, res in ring.wait():
                if tag == _POLL:
                    polling = False
                else:
                    complete(tag, res, free)
            sync()

    def _drain(self, dispatch: Callable[[memoryview, int, int], int], free: list[int], iovs: list[list[memoryview]]) -> bool:
        """Read and dispatch the requests queued on the (O_NONBLOCK) device into free slots;
        whether the connection has ended.  At most one pass of the pool, so a steady stream of
        requests answered inline cannot keep the ring's completions waiting (the device's poll
        fires at once if more are queued)."""
        bufs = self.pool.bufs
        readv = os.readv
        for _ in range(len(bufs)):
            if not free:
                break
            slot = free[-1]
            try:
                n = readv(self.devfd, iovs[slot])
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOENT:  # interrupted before we read it
                    continue
                if e.errno not in _ENDED:
                    raise
                return True
            if n == 0:  # the connection ended: answer what is out, then return
                return True
            if dispatch(bufs[slot], n, slot) != _INLINE:
                free.pop()
        return False

    def _complete(self, tag: int, res: int, free: list[int]) -> None:
        """A backing call's CQE; the last of a request's answers it and frees a device slot."""
        slot = tag >> 1 & _SLOTS
        calls = self.inflight[slot]
        if calls.results is not None:
            calls.results[tag // PART] = res
        calls.left -= 1
        if not calls.left:
            self._finish(slot, res)
            if slot < self.first_entry:
                free.append(slot)

    # --- FUSE-over-io_uring (fastpass.transport) ------------------------------------------------
    def take_entries(self, required: bool) -> None:
        """Register this worker's entries, or take them over from a dead predecessor.  An entry
        whose header names a request the journal has not seen answered holds one the kernel
        waits for: `serve` answers it first.  One whose reply was written is committed again as
        it is (the kernel answers ENOENT where it had it already, and the entry is registered
        anew); one that never had a request is registered.  Raises Refused if the kernel refuses
        them and `required`; else says so in the log and serves /dev/fuse alone (whatever
        entries were taken still serve)."""
        share, ring = self.entries, self.ring
        assert share is not None and ring is not None
        view, first, journal = share.view, self.first_entry, self.journal
        for i, h in enumerate(share.headers):
            unique = unique_at(view, h)  # fuse_in_header.unique, fuse_out_header's too
            if journal.pending(first + i, unique):
                self.replays.append(i)
            elif unique:
                self._commit(first + i, unique)
            else:
                self._register(i)
        refused: dict[int, int] = {}
        while True:  # a refused command completes inside the submit: one look tells
            again = False
            for tag, res in ring.wait(0):
                i = (tag >> 1) - self.first_entry
                if tag & _BACKING or tag == _POLL or res >= 0 or i < 0:
                    self.backlog.append((tag, res))
                elif res == -errno.ENOENT:  # its request was answered before its worker died
                    self._register(i)
                    again = True
                else:
                    refused[i] = res
            if not again:
                break
        if refused:
            why = ", ".join(sorted({os.strerror(-res) for res in refused.values()}))
            message = f"the kernel refused {len(refused)} of {len(share)} FUSE-over-io_uring entries ({why})"
            if required:
                raise Refused(message)
            log.warning("%s: serving requests from /dev/fuse", message)
            return
        self.fs.counters.misc[TRANSPORT] = TRANSPORT_NAMES.index("uring")

    def _register(self, i: int) -> None:
        share = self.entries
        self.ring.uring_cmd(self.devfd, abi.URING_CMD_REGISTER, _pack_cmd(0, 0, share.qids[i]),  # type: ignore[union-attr]
                            (self.first_entry + i) << 1, share.iov_addrs[i], abi.URING_IOV_SEGS)  # fmt: skip

    def _commit(self, slot: int, unique: int) -> None:
        """COMMIT_AND_FETCH of the entry in `slot` with the reply it holds (submitted with the
        next wait)."""
        share, i = self.entries, slot - self.first_entry
        self.ring.command(abi.URING_CMD_REQ)(self.devfd, abi.URING_CMD_COMMIT_AND_FETCH, share.iov_addrs[i],  # type: ignore[union-attr]
                                             abi.URING_IOV_SEGS, slot << 1, 0, unique, share.qids[i])  # fmt: skip

    def _committer(self) -> Callable[[int, int, int, object], None]:
        """reply(slot, unique, error, body) for a worker with entries: a request of the device is
        answered there; one in an entry gets its reply in the entry, handed back with
        COMMIT_AND_FETCH (submitted with the next wait).  The journal says it is answered once
        the entry holds the whole reply: committed again as it is, it is the same answer."""
        share, devfd, first, write = self.entries, self.devfd, self.first_entry, self._write_reply
        assert share is not None and self.ring is not None
        view, memory, answered = share.view, share.view.obj, self.journal.answered
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

    def _serve_entries(self) -> None:
        """The loop of a worker with entries: one wait on the ring for everything, requests in
        entries, the backing calls' completions and the device's readiness (forgets, interrupts,
        and requests the kernel queued there before it switched to the rings)."""
        ring, pool, devfd, share = self.ring, self.pool, self.devfd, self.entries
        assert ring is not None and share is not None
        iovs = [[buf] for buf in pool.bufs]
        inflight = self.inflight
        misc = self.fs.counters.misc
        sync = self._syncer()
        wait = ring.wait
        dispatch = self._dispatcher()
        complete = self._complete
        first = self.first_entry
        view = share.view
        headers, payloads, qids, counts = share.headers, share.payloads, share.qids, share.counts
        payload_sz, op_in, header, backing, poll = abi.URING_PAYLOAD_SZ, abi.URING_OP_IN, _HEADER, _BACKING, _POLL
        staged = self.journal.staged

        def stage(i: int) -> tuple[memoryview, int]:
            """Entry i's request as one view, laid out as a device read gives it, and its length;
            the journal keeps where it lies (the reply will overwrite the kernel's header)."""
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

        busy = self._replay_buffers(dispatch)  # what a killed predecessor left, first
        free = [s for s in range(len(pool)) if s not in busy]
        for i in self.replays:
            slot = first + i
            state, _, _, start, length = self.journal.record(slot, unique_at(view, headers[i]))
            request, n = (view[start : start + length], length) if state != "new" else stage(i)
            self._replay(dispatch, request, n, slot)
        self.replays = []
        os.set_blocking(devfd, False)
        polling = False
        ended = False
        done, self.backlog = self.backlog, []
        while True:
            for tag, res in done:
                if tag & backing:
                    complete(tag, res, free)
                elif tag == poll:
                    polling = False
                    ended = self._drain(dispatch, free, iovs) or ended
                elif res == 0:  # a request in entry i
                    i = (tag >> 1) - first
                    counts[qids[i]] += 1
                    dispatch(*stage(i), tag >> 1)
                elif res == -errno.ENOENT:  # committed after its request was gone (takeover): anew
                    self._register((tag >> 1) - first)
                elif res not in _GONE:
                    log.warning("FUSE-over-io_uring entry %d: %s", (tag >> 1) - first, os.strerror(-res))
            if inflight:
                misc[PEAK_IN_FLIGHT] = max(misc[PEAK_IN_FLIGHT], len(inflight))
            elif ended:
                return
            sync()
            if free and not ended and not polling:
                ring.poll_in(devfd, poll)
                polling = True
            self.waiting = not inflight
            try:
                done = wait()
            finally:
                self.waiting = False

    def kick(self, mountpoint: str) -> None:
        """After a takeover: one STATFS from a thread on each CPU of this worker's queues, so each
        queue fetches again (its requests queued while it had no entry wait for a commit)."""

        def statfs(cpu: int) -> None:
            try:
                os.sched_setaffinity(0, {cpu})  # this thread: its requests go to queue `cpu`
                os.statvfs(mountpoint)
            except OSError:
                pass  # an offline CPU queues nothing; an unmount ends the kick too

        for cpu in self.entries.cpus():  # type: ignore[union-attr]
            threading.Thread(target=statfs, args=(cpu,), daemon=True).start()

    def _finish(self, slot: int, res: int) -> None:
        """The last CQE of a slot's backing calls: the reply to its request; the slot is free."""
        c = self.inflight.pop(slot)
        route, req, start, state, results = c.route, c.req, c.start, c.state, c.results
        body = None
        error = 0 if results is not None else min(0, res)
        if not error:
            error, body = run_route(self.fs, route, req, route.done, (state, res if results is None else results),  # type: ignore[arg-type]
                                    self.fs.credentials if self.allow_other else None, self.unexpected)  # fmt: skip
        self.fs.counters.record(req.opcode, time.perf_counter_ns() - start, error)
        if self.debug:
            log.debug("<- %s", describe_reply(route.name, req.unique, error, body))
        if route.effect:
            self.journal.done(slot, req.unique, error, body)
        self._reply(slot, req.unique, error, body)

    def _dispatcher(self) -> Callable[..., int]:
        """The step every loop shares: `dispatch(buf, n, slot, again=False)` serves the request
        in buf[:n]; `again`: a dead worker started it, run it in redo mode (`fastpass.fs.redo`).

        It answers at once and returns _INLINE, or (ring path, a RING op) submits the backing
        call tagged with `slot` and returns the slot, which stays busy until `_finish`.  A
        request with an effect is journaled around its handler (`fastpass.shm.journal`).
        """
        unpack_header = abi.IN_HEADER.unpack_from
        routes = self.routes
        n_routes = len(routes)
        fs = self.fs
        creds = fs.credentials if self.allow_other else None
        debug = self.debug
        reply = self._reply
        record = fs.counters.record
        clock = time.perf_counter_ns
        ring = self.ring
        areas = self.pool.data + (self.entries.areas if self.entries is not None else [])  # by slot
        inflight = self.inflight
        misc = fs.counters.misc
        header = abi.IN_HEADER.size
        answered = self.journal.answered
        started, done = self.journal.started, self.journal.done
        run, unexpected = run_route, self.unexpected

        def dispatch(buf: memoryview, n: int, slot: int, again: bool = False) -> int:
            if n < header:
                log.error("short request of %d bytes ignored", n)
                return _INLINE
            length, opcode, unique, nodeid, uid, gid, pid, _extlen, _ = unpack_header(buf)
            route = routes[opcode] if opcode < n_routes else None
            if route is None:
                if debug:
                    log.debug("-> %d unknown opcode %d", unique, opcode)
                    log.debug("<- %d unknown opcode %d error ENOSYS", unique, opcode)
                reply(slot, unique, -errno.ENOSYS)
                return _INLINE
            try:
                if length != n:
                    raise Malformed(f"header length {length} but {n} bytes read")
                args = route.decode(buf[header:n])
            except Malformed as e:
                log.error("malformed %s request %d: %s", route.name, unique, e)
                if route.reply:
                    reply(slot, unique, -errno.EINVAL)
                else:
                    answered[slot] = unique
                return _INLINE
            req = Request(unique, opcode, nodeid, uid, gid, pid)
            if debug:
                log.debug("-> %s", describe_request(route.name, req, args))
            handler = route.handler
            if handler is None:  # a deliberate ENOSYS row of the handler table
                if debug:
                    log.debug("<- %s", describe_reply(route.name, unique, -errno.ENOSYS, None))
                reply(slot, unique, -errno.ENOSYS)
                return _INLINE
            submit = route.submit if ring is not None else None
            effect = route.effect
            if effect:
                started(slot, unique)
            start = clock()
            if submit is not None:
                before = ring.prepared
                error, body = run(fs, route, req, submit, (ring, slot << 1 | _BACKING, areas[slot], *args), creds,
                                  unexpected)  # fmt: skip
                calls = ring.prepared - before
                if calls and not error:
                    misc[RING_CALLS] += calls
                    inflight[slot] = _Calls(route, req, start, body, calls, [0] * calls if route.batch else None)
                    return slot
                # answered without the ring: `body` is the reply itself
            else:
                error, body = run(fs, route, req, redo.redoing(handler) if again else handler, args, creds, unexpected)
            record(opcode, clock() - start, error)
            if debug:
                log.debug("<- %s", describe_reply(route.name, unique, error, body))
            if effect:
                done(slot, unique, error, body)
            if route.reply:
                reply(slot, unique, error, body)
            else:
                answered[slot] = unique
            return _INLINE

        return dispatch

