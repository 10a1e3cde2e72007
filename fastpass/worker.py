"""The request loop: read -> decode -> handler -> encode -> write, on one device fd.

Errors are caught here and only here: a handler returns a reply body or
raises OSError, and this loop writes exactly one reply (or none, for the
opcodes the kernel expects none for).  A malformed request is EINVAL and a
log line; an unexpected exception is EIO, a counter and one traceback per
(operation, exception type, origin): a filter's failure names the filter
as its `origin`, so each filter is logged once per operation; the loop
itself never dies of a request.

The request buffer is an mmap placed so that a WRITE's payload (after the
40-byte in-header and the 40-byte write_in) starts on a page boundary:
the payload goes to pwrite() without a copy, and O_DIRECT backing writes
get the alignment they need.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import time
from collections.abc import Callable

from fastpass.fs.context import Fs, Request
from fastpass.fs.table import Route
from fastpass.kernel import abi
from fastpass.kernel.debug import describe_reply, describe_request
from fastpass.kernel.init import MAX_WRITE
from fastpass.kernel.opcodes import Malformed

log = logging.getLogger("fastpass.worker")

_HEAD = abi.IN_HEADER.size + abi.WRITE_IN.size  # 80: where a WRITE's payload starts
_PAGE = mmap.PAGESIZE
_IGNORED_WRITE_ERRORS = (errno.ENOENT,)  # the request was interrupted or aborted meanwhile


class Worker:
    def __init__(self, devfd: int, fs: Fs, routes: list[Route | None], allow_other: bool, debug: bool,
                 idle: Callable[[], None] | None = None):  # fmt: skip
        self.devfd = devfd
        self.fs = fs
        self.routes = routes
        self.allow_other = allow_other
        self.debug = debug
        self.idle = idle  # more to do when idle (filters write out their buffers)
        self.errors_logged: set[tuple[int, type, object]] = set()
        self.unexpected = 0
        self._mem = mmap.mmap(-1, _PAGE + MAX_WRITE + _PAGE)
        self.buf = memoryview(self._mem)[_PAGE - _HEAD :]
        self.waiting = False  # blocked in read(), between requests

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
        devfd = self.devfd
        buf = self.buf
        bufs = [buf]
        readv = os.readv
        unpack_header = abi.IN_HEADER.unpack_from
        routes = self.routes
        n_routes = len(routes)
        fs = self.fs
        creds = fs.credentials if self.allow_other else None
        debug = self.debug
        reply = self._reply
        sync = fs.sync
        record = fs.counters.record
        clock = time.perf_counter_ns
        while True:
            sync()
            self.waiting = True
            try:
                n = readv(devfd, bufs)
            except OSError as e:
                self.waiting = False
                if e.errno == errno.ENOENT:  # interrupted before we read it
                    continue
                if e.errno in (errno.ENODEV, errno.ECONNABORTED):
                    return
                raise
            self.waiting = False
            if n < abi.IN_HEADER.size:
                if n == 0:  # end of stream: a socket in tests; /dev/fuse never returns 0
                    return
                log.error("short request of %d bytes ignored", n)
                continue
            length, opcode, unique, nodeid, uid, gid, pid, _extlen, _ = unpack_header(buf)
            route = routes[opcode] if opcode < n_routes else None
            if route is None:
                if debug:
                    log.debug("-> %d unknown opcode %d", unique, opcode)
                    log.debug("<- %d unknown opcode %d error ENOSYS", unique, opcode)
                reply(unique, -errno.ENOSYS)
                continue
            try:
                if length != n:
                    raise Malformed(f"header length {length} but {n} bytes read")
                args = route.decode(buf[abi.IN_HEADER.size : n])
            except Malformed as e:
                log.error("malformed %s request %d: %s", route.name, unique, e)
                if route.reply:
                    reply(unique, -errno.EINVAL)
                continue
            req = Request(unique, opcode, nodeid, uid, gid, pid)
            if debug:
                log.debug("-> %s", describe_request(route.name, req, args))
            handler = route.handler
            if handler is None:  # a deliberate ENOSYS row of the handler table
                if debug:
                    log.debug("<- %s", describe_reply(route.name, unique, -errno.ENOSYS, None))
                reply(unique, -errno.ENOSYS)
                continue
            switched = creds is not None and route.as_caller and creds.become(req)
            start = clock()
            try:
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

    def _unexpected(self, name: str, opcode: int, exc: Exception) -> None:
        self.unexpected += 1
        origin = getattr(exc, "origin", None)
        key = (opcode, type(exc), origin)
        if key not in self.errors_logged:
            self.errors_logged.add(key)
            where = f"{name} (filter {origin})" if origin else name
            log.error("unexpected error in %s, answered EIO", where, exc_info=exc)
