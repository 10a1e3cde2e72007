"""The request loop: read -> decode -> handler -> encode -> write, on one device fd.

Errors are caught here and only here: a handler returns a reply body or
raises OSError, and this loop writes exactly one reply (or none, for the
opcodes the kernel expects none for).  A malformed request is EINVAL and a
log line; an unexpected exception is EIO, a counter and one traceback per
(operation, exception type, origin): a filter's failure names the filter
as its `origin`, so each filter is logged once per operation; the loop
itself never dies of a request.

Two loops share one dispatch step (`_dispatcher`):

- plain: one blocking read of the device, the handler, one write, in turn;
  the request lands in a buffer laid out so a WRITE's payload is page
  aligned (`fastpass.uring.buffers`).
- ring: `io_depth` reads of the device are in flight on the worker's
  io_uring, one pool buffer each.  Every request that completes in a pass is
  dispatched: READ, WRITE, FSYNC and FALLOCATE submit their backing call to
  the ring (their slot stays busy until its CQE: a WRITE's payload and a
  READ's data live in the slot's buffer) and the rest run their handler
  inline and answer at once, their slot re-armed.  The backing calls of the
  whole pass go to the kernel in one submit, and each is answered as its CQE
  arrives, so one worker keeps many requests in flight while the backing is
  slow.  Replies are plain writes: the device takes them without blocking,
  and a write costs less than an SQE from Python.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable

from fastpass.fs.context import Fs, Request
from fastpass.fs.table import Route
from fastpass.kernel import abi
from fastpass.kernel.debug import describe_reply, describe_request
from fastpass.kernel.opcodes import Malformed
from fastpass.shm.counters import IO_NAMES, IO_PATH, PEAK_IN_FLIGHT
from fastpass.uring.buffers import BufferPool, request_buffer
from fastpass.uring.ring import Ring

log = logging.getLogger("fastpass.worker")

_IGNORED_WRITE_ERRORS = (errno.ENOENT,)  # the request was interrupted or aborted meanwhile
_ENDED = (errno.ENODEV, errno.ECONNABORTED)  # reads after the connection ended
# A device read on the ring that ends without a request: interrupted before we read it (ENOENT),
# or cut short by a signal (EINTR) or a non-blocking attempt (EAGAIN); the slot reads again.
_RETRY = (errno.ENOENT, errno.EINTR, errno.EAGAIN)
_BACKING = 1  # tag bit: the CQE of a slot's backing call, else of its device read
_INLINE = -1  # dispatch: the request was answered (or needs no answer); its buffer is free


class Worker:
    def __init__(self, devfd: int, fs: Fs, routes: list[Route | None], allow_other: bool, debug: bool,
                 idle: Callable[[], None] | None = None, ring: Ring | None = None, depth: int = 1):  # fmt: skip
        """`ring`: serve on it with `depth` requests in flight; None: the plain loop."""
        self.devfd = devfd
        self.fs = fs
        self.routes = routes
        self.allow_other = allow_other
        self.debug = debug
        self.idle = idle  # more to do when idle (filters write out their buffers)
        self.ring = ring
        self.errors_logged: set[tuple[int, type, object]] = set()
        self.unexpected = 0
        self.pool = BufferPool(depth) if ring is not None else None
        self.buf = request_buffer() if ring is None else None
        # Per slot on the ring path, while its backing call is in flight:
        # (route, request, start ns, what the route's `done` needs).
        self.inflight: dict[int, tuple[Route, Request, int, object]] = {}
        self.waiting = False  # blocked waiting for requests, none in progress
        fs.counters.misc[IO_PATH] = IO_NAMES.index("plain" if ring is None else "uring")

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

    def _reply(self, unique: int, error: int, body: object = None) -> None:
        try:
            if body is None:
                os.write(self.devfd, abi.OUT_HEADER.pack(16, error, unique))
            elif body.__class__ is bytes:
                os.write(self.devfd, abi.OUT_HEADER.pack(16 + len(body), 0, unique) + body)  # type: ignore[operator]
            else:
                os.writev(self.devfd, [abi.OUT_HEADER.pack(16 + len(body), 0, unique), body])  # type: ignore[arg-type]
        except OSError as e:
            if e.errno not in _IGNORED_WRITE_ERRORS:
                log.warning("reply to %d failed: %s", unique, e.strerror)

    def serve(self) -> None:
        """Serve until the connection ends (unmount or abort)."""
        if self.ring is None:
            self._serve_plain()
        else:
            self._serve_ring()

    def _serve_plain(self) -> None:
        devfd = self.devfd
        buf = self.buf
        assert buf is not None
        bufs = [buf]
        readv = os.readv
        sync = self.fs.sync
        dispatch = self._dispatcher()
        while True:
            sync()
            self.waiting = True
            try:
                n = readv(devfd, bufs)
            except OSError as e:
                self.waiting = False
                if e.errno == errno.ENOENT:  # interrupted before we read it
                    continue
                if e.errno in _ENDED:
                    return
                raise
            self.waiting = False
            if n == 0:  # end of stream: a socket in tests; /dev/fuse never returns 0
                return
            dispatch(buf, n, 0)

    def _serve_ring(self) -> None:
        ring, pool, devfd = self.ring, self.pool, self.devfd
        assert ring is not None and pool is not None
        bufs = pool.bufs
        inflight = self.inflight
        misc = self.fs.counters.misc
        sync = self.fs.sync
        dispatch = self._dispatcher()
        finish = self._finish
        armed = 0  # device reads in flight
        for slot in range(len(pool)):
            ring.read_device(devfd, bufs[slot], slot << 1)
            armed += 1
        ended = False
        while armed or inflight:
            self.waiting = not inflight
            done = ring.wait()
            self.waiting = False
            sync()
            for tag, res in done:
                slot = tag >> 1
                if tag & _BACKING:
                    finish(slot, res)
                elif res > 0:
                    armed -= 1
                    if dispatch(bufs[slot], res, slot) != _INLINE:
                        misc[PEAK_IN_FLIGHT] = max(misc[PEAK_IN_FLIGHT], len(inflight))
                        continue
                elif res == 0 or -res in _ENDED:  # end of stream (a socket in tests) or of the connection
                    armed -= 1
                    ended = True
                    continue
                elif -res in _RETRY:
                    armed -= 1
                else:
                    raise OSError(-res, os.strerror(-res))
                if not ended:  # the slot is free: read the next request into it
                    ring.read_device(devfd, bufs[slot], slot << 1)
                    armed += 1

    def _finish(self, slot: int, res: int) -> None:
        """A backing call's CQE: the reply to its request and its counters; the slot is free."""
        route, req, start, state = self.inflight.pop(slot)
        body = None
        error = min(0, res)
        if not error:
            try:
                body = route.done(self.fs, req, state, res)  # type: ignore[misc]
            except OSError as e:
                error = -(e.errno or errno.EIO)
            except Exception as e:  # noqa: BLE001 - a bug: EIO for the caller, the worker lives on
                error = -errno.EIO
                self._unexpected(route.name, req.opcode, e)
        self.fs.counters.record(req.opcode, time.perf_counter_ns() - start, error)
        if self.debug:
            log.debug("<- %s", describe_reply(route.name, req.unique, error, body))
        self._reply(req.unique, error, body)

    def _dispatcher(self) -> Callable[[memoryview, int, int], int]:
        """The step both loops share: `dispatch(buf, n, slot)` serves the request in buf[:n].

        It answers at once and returns _INLINE, or (ring path, a RING op) submits the backing
        call tagged with `slot` and returns the slot, which stays busy until `_finish`.
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
        areas = self.pool.data if self.pool is not None else None
        inflight = self.inflight
        header = abi.IN_HEADER.size

        def dispatch(buf: memoryview, n: int, slot: int) -> int:
            if n < header:
                log.error("short request of %d bytes ignored", n)
                return _INLINE
            length, opcode, unique, nodeid, uid, gid, pid, _extlen, _ = unpack_header(buf)
            route = routes[opcode] if opcode < n_routes else None
            if route is None:
                if debug:
                    log.debug("-> %d unknown opcode %d", unique, opcode)
                    log.debug("<- %d unknown opcode %d error ENOSYS", unique, opcode)
                reply(unique, -errno.ENOSYS)
                return _INLINE
            try:
                if length != n:
                    raise Malformed(f"header length {length} but {n} bytes read")
                args = route.decode(buf[header:n])
            except Malformed as e:
                log.error("malformed %s request %d: %s", route.name, unique, e)
                if route.reply:
                    reply(unique, -errno.EINVAL)
                return _INLINE
            req = Request(unique, opcode, nodeid, uid, gid, pid)
            if debug:
                log.debug("-> %s", describe_request(route.name, req, args))
            handler = route.handler
            if handler is None:  # a deliberate ENOSYS row of the handler table
                if debug:
                    log.debug("<- %s", describe_reply(route.name, unique, -errno.ENOSYS, None))
                reply(unique, -errno.ENOSYS)
                return _INLINE
            submit = route.submit if ring is not None else None
            switched = creds is not None and route.as_caller and creds.become(req)
            start = clock()
            try:
                if submit is not None:  # never AS_CALLER: no credentials to restore later
                    inflight[slot] = (route, req, start, submit(fs, ring, slot << 1 | _BACKING, areas[slot], req, *args))
                    return slot
                body = handler(fs, req, *args)
                error = 0
            except OSError as e:
                error = -(e.errno or errno.EIO)
                body = None
            except Exception as e:  # noqa: BLE001 - a bug: EIO for the caller, the worker lives on
                error = -errno.EIO
                body = None
                self._unexpected(route.name, opcode, e)
            finally:
                if switched:
                    creds.restore()
            record(opcode, clock() - start, error)
            if debug:
                log.debug("<- %s", describe_reply(route.name, unique, error, body))
            if route.reply:
                reply(unique, error, body)
            return _INLINE

        return dispatch

    def _unexpected(self, name: str, opcode: int, exc: Exception) -> None:
        self.unexpected += 1
        origin = getattr(exc, "origin", None)
        key = (opcode, type(exc), origin)
        if key not in self.errors_logged:
            self.errors_logged.add(key)
            where = f"{name} (filter {origin})" if origin else name
            log.error("unexpected error in %s, answered EIO", where, exc_info=exc)
