"""Micro-benchmarks of the per-request hot path (pytest-benchmark).

Run with `python -m pytest bench/micro -q`; not part of the main suite.
Each benchmark also checks its result, so a fast wrong answer fails.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from fastpass.filters import stack
from fastpass.fs.context import Fs, Request
from fastpass.fs.table import build
from fastpass.kernel import abi, encode
from fastpass.kernel.abi import Opcode
from fastpass.kernel.opcodes import SPECS, decoder

HDR = abi.IN_HEADER.size
WRITE_SIZE = 128 * 1024


def _request(opcode: int, body: bytes, unique: int = 2, nodeid: int = abi.ROOT_ID) -> bytearray:
    head = abi.IN_HEADER.pack(HDR + len(body), opcode, unique, nodeid, os.getuid(), os.getgid(), os.getpid(), 0, 0)
    return bytearray(head + body)


def test_in_header_decode(benchmark) -> None:
    buf = _request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0))
    unpack = abi.IN_HEADER.unpack_from
    got = benchmark(unpack, buf)
    assert got[:4] == (HDR + 16, Opcode.GETATTR, 2, 1)


def test_write_decode_128k(benchmark) -> None:
    data = os.urandom(WRITE_SIZE)
    buf = _request(Opcode.WRITE, abi.WRITE_IN.pack(7, 1 << 20, WRITE_SIZE, 0, 0, os.O_RDWR) + data)
    view = memoryview(buf)
    decode = decoder(SPECS[Opcode.WRITE])

    def run():
        return decode(view[HDR:])

    got = benchmark(run)
    assert got[:3] == (7, 1 << 20, WRITE_SIZE)
    assert got[-1].nbytes == WRITE_SIZE and got[-1].obj is buf  # a view into the request, no copy


def test_getattr_reply_encode(benchmark, backing: Path) -> None:
    st = os.stat(backing / "file")
    got = benchmark(lambda: encode.attr_out((1, 0), encode.attr(st)))
    assert len(got) == abi.ATTR_OUT_SIZE
    assert abi.ATTR_OUT.unpack(got)[3] == st.st_ino


def test_readdir_encode_100(benchmark) -> None:
    entries = [(1000 + i, i + 1, 8, f"entry-{i:03d}".encode()) for i in range(100)]
    dirent = encode.dirent

    def run():
        return b"".join([dirent(ino, off, dtype, name) for ino, off, dtype, name in entries])

    got = benchmark(run)
    assert len(got) == sum(encode.dirent_size(name, False) for *_, name in entries) == 100 * 40


def test_readdir_handler_100(benchmark, fs: Fs) -> None:
    """READDIR through its route on the real backing (102 entries with . and ..), from offset 0."""
    routes = build()
    req = Request(4, Opcode.OPENDIR, abi.ROOT_ID, os.getuid(), os.getgid(), os.getpid())
    fh, _flags, _bid = abi.OPEN_OUT.unpack(routes[Opcode.OPENDIR].handler(fs, req, os.O_RDONLY, 0))
    route = routes[Opcode.READDIR]
    body = memoryview(abi.READ_IN.pack(fh, 0, 64 * 1024, 0, 0, 0))
    req = Request(6, Opcode.READDIR, abi.ROOT_ID, os.getuid(), os.getgid(), os.getpid())

    def run():
        return route.handler(fs, req, *route.decode(body))

    got = benchmark(run)
    names = set()
    pos = 0
    while pos < len(got):
        _ino, _off, namelen, _type = abi.DIRENT.unpack_from(got, pos)
        names.add(got[pos + abi.NAME_OFFSET : pos + abi.NAME_OFFSET + namelen])
        pos += encode.dirent_size(b"x" * namelen, False)
    assert len(names) == 103  # ., .., file, 100 entries
    routes[Opcode.RELEASEDIR].handler(fs, req, fh, 0, 0, 0)


class _Pre:
    def pre_getattr(self, ctx, args):
        return None  # CONTINUE: the reply is not decoded


class _Post:
    def post_getattr(self, ctx, args, result):
        result.attr.uid = 4242  # decode, change, encode


class _Other:
    def pre_lookup(self, ctx, args):
        return None  # a filter on another operation: GETATTR keeps its bare handler


@pytest.mark.parametrize("filters", [[], [_Other()], [_Pre()], [_Post()]], ids=["none", "other-op", "pre", "post"])
def test_getattr_dispatch(benchmark, fs: Fs, backing: Path, filters: list) -> None:
    """What the worker does for one GETATTR: header, route, decode, Request, handler, reply header;
    without filters, with a filter on another operation, and with a pre- or post-filter on GETATTR."""
    routes, _needs = stack.install(build(), filters)
    buf = _request(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0))
    view = memoryview(buf)
    unpack_header = abi.IN_HEADER.unpack_from
    n = len(buf)

    def run():
        _length, opcode, unique, nodeid, uid, gid, pid, _extlen, _ = unpack_header(buf)
        route = routes[opcode]
        args = route.decode(view[HDR:n])
        body = route.handler(fs, Request(unique, opcode, nodeid, uid, gid, pid), *args)
        return abi.OUT_HEADER.pack(16 + len(body), 0, unique) + body  # as Worker._reply frames it

    got = benchmark(run)
    assert struct.unpack_from("<IiQ", got) == (16 + abi.ATTR_OUT_SIZE, 0, 2)
    attr = abi.ATTR_OUT.unpack_from(got, 16)
    assert attr[3] == os.stat(backing).st_ino
    assert attr[14] == (4242 if filters and isinstance(filters[0], _Post) else os.getuid())


def test_attr_cache_hit(benchmark, fs: Fs, backing: Path) -> None:
    """A GETATTR answered from the shared cache: seqlock read plus the reply head."""
    assert fs.cache is not None
    fs.cache.put(abi.ROOT_ID, time.monotonic_ns(), encode.attr(os.stat(backing)))
    got = benchmark(fs.cached_attr, abi.ROOT_ID)
    assert got is not None and abi.ATTR_OUT.unpack(got)[3] == os.stat(backing).st_ino


def test_attr_cache_refresh(benchmark, fs: Fs, backing: Path) -> None:
    """What a write adds for the cache: fstat, pack, a locked store."""
    fd = os.open(backing / "file", os.O_RDONLY)
    try:
        benchmark(fs.refresh, abi.ROOT_ID, fd)
    finally:
        os.close(fd)
    assert fs.cache is not None and abi.ATTR.unpack(fs.cache.get(abi.ROOT_ID))[1] == 4096  # type: ignore[arg-type]


def test_journal_effect(benchmark) -> None:
    """What the journal adds to a request with an effect (CREATE's 144-byte reply): the start,
    the recorded reply and the slot marked answered.  Other requests pay the last store only."""
    from fastpass.shm.journal import Journal

    journal = Journal(8)
    body = bytes(range(144))
    answered, started, done = journal.answered, journal.started, journal.done

    def run():
        started(3, 42)
        done(3, 42, 0, body)
        answered[3] = 42

    benchmark(run)
    assert journal.record(3, 42) == ("done", 0, body, 0, 0) and not journal.pending(3, 42)


@pytest.mark.parametrize("opcode", ["GETATTR", "MKDIR"])
def test_worker_dispatch(benchmark, fs: Fs, backing: Path, opcode: str) -> None:
    """The whole of a worker's step for one request, as `Worker.serve` takes it: dispatch (header,
    route, decode, the journal for an effect, the handler, the counters) and the reply written on
    the device fd (here a seqpacket socket, read back by the benchmark); GETATTR without an
    effect, MKDIR of an existing name (EEXIST) with one."""
    import socket

    from fastpass.seat import Seat
    from fastpass.worker import Worker

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    (backing / "d").mkdir()
    body = abi.GETATTR_IN.pack(0, 0) if opcode == "GETATTR" else abi.MKDIR_IN.pack(0o755, 0) + b"d\0"
    buf = _request(Opcode[opcode], body)
    dispatch = Worker(Seat(theirs.fileno()), fs, build(), allow_other=False, debug=False)._dispatcher()
    view = memoryview(buf)
    n = len(buf)

    def run():
        dispatch(view, n, 0)
        return ours.recv(4096)

    try:
        got = benchmark(run)
    finally:
        ours.close()
        theirs.close()
    assert struct.unpack_from("<IiQ", got)[1:] == ((0, 2) if opcode == "GETATTR" else (-17, 2))
