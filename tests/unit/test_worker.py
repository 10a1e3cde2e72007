"""The request loop on a seqpacket socket instead of /dev/fuse: raw requests in, raw replies out.

A SOCK_SEQPACKET pair keeps message boundaries as the device does, so the
worker runs unchanged over a real backing directory and every reply can be
checked byte for byte, including the malformed cases the kernel never sends.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

import pytest

from fastpass.config import MountConfig, resolve
from fastpass.fs.context import Fs
from fastpass.fs.shared import SharedState
from fastpass.fs.table import build
from fastpass.kernel import abi
from fastpass.kernel.abi import Opcode
from fastpass.seat import Seat
from fastpass.uring.ring import Ring
from fastpass.worker import Worker


@pytest.fixture(params=["plain", "uring", "plain-left-nonblocking"])
def channel(request: pytest.FixtureRequest, tmp_path: Path):
    """The worker on one end of a socket pair, on either I/O path: plain in a thread (the test
    can reach into it), uring in a forked child that sets up its own ring, as a mount's worker
    does.  plain-left-nonblocking: its end is O_NONBLOCK before it starts, as a device clone is
    where the predecessor at the index was killed while backing calls were out (the mode is the
    clone's); it must still wait for each request."""
    (tmp_path / "file").write_bytes(b"0123456789")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(10)  # a worker that died fails the test instead of hanging it
    if request.param == "plain-left-nonblocking":
        os.set_blocking(theirs.fileno(), False)
    root_fd = os.open(tmp_path, os.O_PATH)
    config = resolve(MountConfig(backing=str(tmp_path), mountpoint="/nonexistent"), watched=False)
    fs = Fs(config, root_fd, SharedState(root_fd, 4096, cache_size=1024, max_handles=1024))
    worker = child = t = None
    if request.param != "uring":
        worker = Worker(Seat(theirs.fileno()), fs, build(), allow_other=False, debug=False)
        t = threading.Thread(target=worker.serve, daemon=True)
        t.start()
    else:
        child = os.fork()
        if child == 0:
            code = 1
            try:
                ours.close()
                Worker(Seat(theirs.fileno(), 4), fs, build(), False, False, Ring(4)).serve()
                code = 0
            finally:
                os._exit(code)

    def call(opcode: int, body: bytes, nodeid: int = abi.ROOT_ID, unique: int = 2, length: int | None = None):
        size = abi.IN_HEADER.size + len(body) if length is None else length
        ours.send(abi.IN_HEADER.pack(size, opcode, unique, nodeid, 0, 0, os.getpid(), 0, 0) + body)
        reply = ours.recv(1 << 21)
        out_len, error, out_unique = abi.OUT_HEADER.unpack_from(reply)
        assert out_len == len(reply) and out_unique == unique
        return error, reply[abi.OUT_HEADER.size :]

    yield call, worker
    ours.close()
    if t is not None:
        t.join(5)
        assert not t.is_alive(), "the worker did not end with its channel"
    else:
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0, "the worker did not end cleanly"
    theirs.close()


def test_lookup_then_read(channel) -> None:
    call, _ = channel
    error, entry = call(Opcode.LOOKUP, b"file\0")
    assert error == 0
    nodeid = abi.ENTRY_OUT.unpack(entry)[0]
    error, opened = call(Opcode.OPEN, abi.OPEN_IN.pack(os.O_RDONLY, 0), nodeid)
    fh = abi.OPEN_OUT.unpack(opened)[0]
    error, data = call(Opcode.READ, abi.READ_IN.pack(fh, 2, 5, 0, 0, 0), nodeid)
    assert (error, data) == (0, b"23456")


@pytest.mark.parametrize(
    ("opcode", "body", "length"),
    [
        (Opcode.LOOKUP, b"no-nul", None),  # name without its NUL
        (Opcode.GETATTR, b"\0" * 8, None),  # fuse_getattr_in cut to 8 of 16 bytes
        (Opcode.WRITE, abi.WRITE_IN.pack(1, 0, 100, 0, 0, 0) + b"short", None),  # payload < size
        (Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0), 999),  # header length disagrees with the read
    ],
    ids=["lookup-no-nul", "getattr-short", "write-short-payload", "length-mismatch"],
)
def test_malformed_is_einval_and_the_worker_lives(channel, opcode: int, body: bytes, length: int | None, caplog) -> None:
    call, worker = channel
    assert call(opcode, body, length=length) == (-errno.EINVAL, b"")
    assert worker is None or "malformed" in caplog.text  # a ring worker logs in its child
    error, attr = call(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0))
    assert error == 0 and len(attr) == abi.ATTR_OUT_SIZE


@pytest.mark.parametrize("opcode", [Opcode.GETLK, Opcode.IOCTL, Opcode.BMAP, 7, 19, 200, 4096])
def test_unsupported_and_unknown_opcodes_are_enosys(channel, opcode: int) -> None:
    call, _ = channel
    assert call(opcode, b"")[0] == -errno.ENOSYS


def test_backing_errno_passes_through(channel) -> None:
    call, _ = channel
    assert call(Opcode.LOOKUP, b"x" * 300 + b"\0")[0] == -errno.ENAMETOOLONG
    assert call(Opcode.GETATTR, abi.GETATTR_IN.pack(0, 0), nodeid=12345)[0] == -errno.ESTALE


def test_a_missing_name_is_a_negative_entry_for_the_entry_timeout(channel) -> None:
    """nodeid 0 with entry_valid: the kernel keeps the name as missing (1 s: this mount is unwatched)."""
    call, _ = channel
    error, entry = call(Opcode.LOOKUP, b"missing\0")
    assert error == 0 and len(entry) == abi.ENTRY_OUT_SIZE
    nodeid, _generation, entry_valid, _attr_valid, entry_valid_nsec, _ = abi.ENTRY_OUT_HEAD.unpack_from(entry)
    assert (nodeid, entry_valid, entry_valid_nsec) == (0, 1, 0)


@pytest.mark.parametrize("channel", ["plain"], indirect=True)  # the ring worker's routes are in a child
def test_unexpected_exception_is_eio_once_logged(channel, caplog) -> None:
    """(The ring path shares this dispatch step.)"""
    call, worker = channel
    from fastpass.fs import misc

    def broken(fs, req):
        raise RuntimeError("bug")

    routes = worker.routes
    routes[Opcode.STATFS] = routes[Opcode.STATFS]._replace(handler=broken)
    assert call(Opcode.STATFS, b"")[0] == -errno.EIO
    assert call(Opcode.STATFS, b"")[0] == -errno.EIO
    assert caplog.text.count("Traceback") == 1 and worker.unexpected.count == 2
    routes[Opcode.STATFS] = routes[Opcode.STATFS]._replace(handler=misc.statfs)
    assert call(Opcode.STATFS, b"")[0] == 0
