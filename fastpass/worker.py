"""The request loop: next request -> decode -> handler -> encode -> reply, over a worker's transports.

Errors are caught here and only here: a handler returns a reply body or
raises OSError, and this loop writes exactly one reply (or none, for the
opcodes the kernel expects none for).  A malformed request is EINVAL and a
log line; an unexpected exception is EIO, a counter and one traceback per
(operation, exception type, origin): a filter's failure names the filter
as its `origin`, so each filter is logged once per operation; the loop
itself never dies of a request.

One loop (`serve`) and one dispatch step (`_dispatcher`) serve every transport
(`fastpass.transport`): requests read from /dev/fuse, and where the worker has
FUSE-over-io_uring entries, requests in those.

- Without a ring: one blocking read of the device, the handler, one write, in turn.
- With a ring: a pool of `io_depth` request buffers (slots).  The operations in
  `fastpass.fs.table.RING` submit the backing calls that may wait (reads the
  page cache cannot answer, O_DIRECT I/O, fsync, fallocate, READDIRPLUS's new
  entries) to the worker's io_uring, and their slot stays busy until the last
  CQE (a WRITE's payload and a READ's data live in the slot's buffer); the
  rest run their handler inline and answer at once.  While no backing call is
  out, a worker on /dev/fuse alone waits for the next request in a blocking
  read of the device, exactly as without a ring; while some are out, it reads
  every request already queued and then waits on the ring for whichever comes
  first, a backing call's completion or the device's readiness.  The backing
  calls of one pass go to the kernel in one submit and each is answered as its
  CQE arrives, so one worker keeps many requests in flight while the backing is
  slow.
- With entries, the ring is the only place the worker waits: requests in its
  entries, backing completions and the device's readiness (forgets,
  interrupts, requests queued there before the kernel switched) arrive there.
"""

from __future__ import annotations

import errno
import logging
import struct
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
from fastpass.transport import BACKING, POLL
from fastpass.transport.dev import ANSWERED, INTERRUPTED, Dev
from fastpass.transport.entries import EntryTransport, Share
from fastpass.uring.ring import PART, Ring

log = logging.getLogger("fastpass.worker")

_SLOTS = PART // 2 - 1  # a tag's slot number lies below PART (the call's index in a batch above it)
MAX_REPLAYS = 2  # a request whose replay ended in its worker's death this often is answered EIO
_HEADER = abi.IN_HEADER.size
# Under load a worker lets go of what other workers freed at most once a millisecond, not before
# every request: each sync reads the shared freed rings (0.8 us a request with one worker, 3.5 with
# two, on the meta round: docs/performance.md).  Nothing is used from a stale fd meanwhile, since
# nodeids and fhs carry generations; an idle worker still syncs at once (`idle_sync`).
_SYNC_NS = 1_000_000
_unpack_u32 = struct.Struct("<I").unpack_from


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
        self.journal = seat.journal
        self.fs = fs
        self.routes = routes
        self.allow_other = allow_other
        self.debug = debug
        self.idle = idle  # more to do when idle (filters write out their buffers)
        self.ring = ring
        self.unexpected = Unexpected()
        self.dev = Dev(seat.devfd, seat.pool, seat.journal.answered)
        self.entries = None if entries is None else EntryTransport(entries, ring, seat.devfd, seat.journal, len(seat.pool))  # type: ignore[arg-type]
        self.drain = drain
        if ring is not None:
            try:
                ring.register_buffers(seat.pool.memory if entries is None else entries.region)
            except OSError as e:  # a memlock limit: the ring reads and writes the pool all the same
                log.warning("io_uring buffers not registered (%s): O_DIRECT I/O pins pages per call", e.strerror)
        self.inflight: dict[int, _Calls] = {}  # per slot on the ring path, while its calls are out
        fs.fds.busy_since = self._busy_since
        self.waiting = False  # blocked waiting for requests, none in progress
        fs.counters.misc[IO_PATH] = IO_NAMES.index("plain" if ring is None else "uring")
        fs.counters.misc[TRANSPORT] = TRANSPORT_NAMES.index("dev")
        # reply(slot, unique, error, body): the one way a request is answered, wherever it came from
        write = self.dev.replier()
        self._reply = write if self.entries is None else self.entries.replier(write)

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
            return ANSWERED
        return dispatch(buf, n, slot, state == "started")

    def _replay_buffers(self, dispatch: Callable[..., int]) -> set[int]:
        """Answer what a killed predecessor left in the request buffers; the slots that wait for
        backing calls on the ring."""
        busy = set()
        for slot, buf in enumerate(self.dev.pool.bufs):
            unique = unique_at(buf)
            if self.journal.pending(slot, unique):
                n = _unpack_u32(buf, 0)[0]
                if not _HEADER <= n <= len(buf):
                    self.journal.answered[slot] = unique
                elif self._replay(dispatch, buf, n, slot) != ANSWERED:
                    busy.add(slot)
        return busy

    def serve(self) -> None:
        """Serve until the connection ends (unmount or abort), after what a killed predecessor
        left; without a ring, nothing is ever in flight and this is the plain loop."""
        dev, ring, entries = self.dev, self.ring, self.entries
        inflight = self.inflight
        misc = self.fs.counters.misc
        sync = self._syncer()
        dispatch = self._dispatcher()
        complete = self._complete
        bufs, read, drain = dev.pool.bufs, dev.read, dev.drain
        busy = self._replay_buffers(dispatch)
        free = [s for s in range(len(bufs) if ring is not None else 1) if s not in busy]  # the last is read into next
        received = None  # what takes an entry's completion (None: requests come from the device alone)
        done: list[tuple[int, int]] = []
        if entries is not None:
            for slot, request, n in entries.leftovers():
                self._replay(dispatch, request, n, slot)
            received = entries.receiver(dispatch)
            done, entries.backlog = entries.backlog, []
        polling = False  # a POLL_ADD of the device fd is armed on the ring
        ended = self.drain  # draining: nothing more is read
        while True:
            for tag, res in done:
                if tag & BACKING:
                    complete(tag, res, free)
                elif tag == POLL:
                    polling = False
                    if received is not None:
                        ended = drain(dispatch, free) or ended
                else:
                    received(tag, res)  # type: ignore[misc]
            if not inflight:
                if ended:
                    return
                if received is None:  # idle on the device alone: wait in read(2) itself
                    sync()
                    slot = free[-1]
                    self.waiting = True
                    try:
                        n = read(slot)
                    finally:
                        self.waiting = False
                    if n > 0:
                        if dispatch(bufs[slot], n, slot) != ANSWERED:
                            free.pop()
                    elif n != INTERRUPTED:  # the connection ended (a socket in tests reads 0 at its end)
                        return
                    done = []
                    continue
            else:
                if received is None:  # take the requests already queued on the device
                    ended = ended or drain(dispatch, free)
                misc[PEAK_IN_FLIGHT] = max(misc[PEAK_IN_FLIGHT], len(inflight))
            sync()
            if free and not ended and not polling:
                ring.poll_in(dev.devfd, POLL)  # type: ignore[union-attr]
                polling = True
            self.waiting = not inflight
            try:
                done = ring.wait()  # type: ignore[union-attr]
            finally:
                self.waiting = False

    def _complete(self, tag: int, res: int, free: list[int]) -> None:
        """A backing call's CQE; the last of a request's answers it and frees a device slot."""
        slot = tag >> 1 & _SLOTS
        calls = self.inflight[slot]
        if calls.results is not None:
            calls.results[tag // PART] = res
        calls.left -= 1
        if not calls.left:
            self._finish(slot, res)
            if slot < len(self.dev.pool):  # an entry's slot is its entry's
                free.append(slot)

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

        It answers at once and returns ANSWERED, or (ring path, a RING op) submits the backing
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
        areas = self.dev.pool.data + (self.entries.share.areas if self.entries is not None else [])  # by slot
        inflight = self.inflight
        misc = fs.counters.misc
        header = abi.IN_HEADER.size
        answered = self.journal.answered
        started, done = self.journal.started, self.journal.done
        run, unexpected = run_route, self.unexpected

        def dispatch(buf: memoryview, n: int, slot: int, again: bool = False) -> int:
            if n < header:
                log.error("short request of %d bytes ignored", n)
                return ANSWERED
            length, opcode, unique, nodeid, uid, gid, pid, _extlen, _ = unpack_header(buf)
            route = routes[opcode] if opcode < n_routes else None
            if route is None:
                if debug:
                    log.debug("-> %d unknown opcode %d", unique, opcode)
                    log.debug("<- %d unknown opcode %d error ENOSYS", unique, opcode)
                reply(slot, unique, -errno.ENOSYS)
                return ANSWERED
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
                return ANSWERED
            req = Request(unique, opcode, nodeid, uid, gid, pid)
            if debug:
                log.debug("-> %s", describe_request(route.name, req, args))
            handler = route.handler
            if handler is None:  # a deliberate ENOSYS row of the handler table
                if debug:
                    log.debug("<- %s", describe_reply(route.name, unique, -errno.ENOSYS, None))
                reply(slot, unique, -errno.ENOSYS)
                return ANSWERED
            submit = route.submit if ring is not None else None
            effect = route.effect
            if effect:
                started(slot, unique)
            start = clock()
            if submit is not None:
                before = ring.prepared
                error, body = run(fs, route, req, submit, (ring, slot << 1 | BACKING, areas[slot], *args), creds,
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
            return ANSWERED

        return dispatch

