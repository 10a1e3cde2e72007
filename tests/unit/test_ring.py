"""The ring on its own, against the kernel: set-up and probe, each opcode with its tag and
result (errors as negative errno ints), registered buffers with O_DIRECT, SQE128 and CQE32,
a full SQ and a full CQ, a signal during a wait, a probe that cannot take its caller down,
and the pure-Python rule for everything fastpass/uring imports."""

from __future__ import annotations

import ast
import ctypes
import errno
import mmap
import os
import select
import signal
import stat
import struct
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from fastpass.transport import dev as buffers
from fastpass.uring import abi
from fastpass.uring.ring import NEEDED_OPS, SETUP_FLAGS, Ring, Unavailable, isolated, why_unavailable
from tests.no_io_uring import refuse

STATX = struct.Struct("<I4x8xIIIH2xQQ")  # struct statx: mask, ..., nlink, uid, gid, mode, ino, size
URING = Path(__file__).parents[2] / "fastpass" / "uring"


def wait_for(ring: Ring, tags: set[int]) -> dict[int, int]:
    """Wait until every tag has completed: {tag: result}."""
    got: dict[int, int] = {}
    while len(got) < len(tags):
        got.update(ring.wait())
    assert set(got) == tags
    return got


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring(16)
    yield r
    r.close()


@pytest.fixture
def file_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    yield fd
    os.close(fd)


def fdinfo(ring: Ring) -> str:
    """What the kernel shows of the ring (/proc/self/fdinfo): its registered buffers, its CQ overflow list."""
    return Path(f"/proc/self/fdinfo/{ring._fd}").read_text()


def test_probe_and_preferred_flags(ring: Ring) -> None:
    assert why_unavailable() is None
    assert ring.flags == SETUP_FLAGS[0], "Linux 6.18 takes single issuer + deferred task running"
    assert set(NEEDED_OPS) | set(abi.OP_NAMES) <= ring.ops == ring.probe()
    assert 255 not in ring.ops


def test_nop(ring: Ring) -> None:
    before = ring.prepared
    ring.nop(tag=(1 << 64) - 1)  # the whole u64 comes back
    assert ring.prepared == before + 1 and ring.pending == 1
    assert ring.wait() == [((1 << 64) - 1, 0)]
    assert ring.pending == 0


def test_read_write_fsync_fallocate_complete_with_their_tags(ring: Ring, file_fd: int) -> None:
    out = memoryview(bytearray(b"hello ring"))
    ring.writev(file_fd, out, 4, tag=11)
    assert wait_for(ring, {11}) == {11: len(out)}
    ring.fsync(file_fd, True, tag=12)
    ring.fallocate(file_fd, 0, 0, 1 << 16, tag=13)
    assert wait_for(ring, {12, 13}) == {12: 0, 13: 0}
    assert os.fstat(file_fd).st_size == 1 << 16
    back = memoryview(bytearray(10))
    ring.readv(file_fd, back, 4, tag=14)
    ring.readv(file_fd, memoryview(bytearray(0)), 4, tag=15)  # an empty read
    assert wait_for(ring, {14, 15}) == {14: 10, 15: 0} and bytes(back) == b"hello ring"
    ring.writev(file_fd, b"bytes too", 100, tag=16)  # read-only data: the kernel writes a copy
    assert wait_for(ring, {16}) == {16: 9} and os.pread(file_fd, 9, 100) == b"bytes too"
    with pytest.raises(TypeError):
        ring.readv(file_fd, memoryview(b"read-only"), 0, tag=17)  # nowhere to read into
    assert ring.pending == 0


def test_errors_are_negative_errno_not_raised(ring: Ring, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ring.readv(fd, memoryview(bytearray(8)), 0, tag=1)  # read(2) of a directory
        ring.fsync(9999, False, tag=2)  # not an fd
        ring.fallocate(fd, 0, 0, 4096, tag=3)  # not open for writing
        assert wait_for(ring, {1, 2, 3}) == {1: -errno.EISDIR, 2: -errno.EBADF, 3: -errno.EBADF}
    finally:
        os.close(fd)


def test_poll_completes_when_there_is_something_to_read(ring: Ring) -> None:
    r, w = os.pipe()
    try:
        ring.poll_in(r, tag=5)
        ring.fsync(w, False, tag=6)  # a pipe has nothing to sync: EINVAL, and the poll still waits
        assert ring.wait() == [(6, -errno.EINVAL)]
        os.write(w, b"x")
        assert wait_for(ring, {5})[5] & select.POLLIN
    finally:
        os.close(r)
        os.close(w)


def test_open_path_takes_any_name_and_gives_an_fd_or_a_negative_errno(ring: Ring, tmp_path: Path) -> None:
    names = ["caf\u00e9", b"caf\xe9", os.fsdecode(b"\xff\xfe")]  # UTF-8, not UTF-8, a surrogate-escaped str
    for name in names:
        (tmp_path / os.fsdecode(name)).write_text("x")
    dfd = os.open(tmp_path, os.O_PATH)
    try:
        before = ring.prepared
        for tag, name in enumerate(names):
            ring.open_path(dfd, name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, tag=tag)
        ring.open_path(dfd, "missing", os.O_PATH, tag=9)
        ring.open_path(dfd, "new", os.O_RDWR | os.O_CREAT | os.O_EXCL, tag=10, mode=0o640)
        assert ring.prepared == before + len(names) + 2  # what a request's submit tells its calls by
        got = wait_for(ring, {0, 1, 2, 9, 10})
        assert got[9] == -errno.ENOENT
        for tag, name in enumerate(names):
            assert os.path.samestat(os.fstat(got[tag]), os.stat(tmp_path / os.fsdecode(name)))
        assert stat.S_IMODE(os.fstat(got[10]).st_mode) == 0o640
        for fd in (got[0], got[1], got[2], got[10]):
            os.close(fd)
        with pytest.raises(ValueError):
            ring.open_path(dfd, b"a\0b", os.O_PATH, tag=11)  # the kernel would open "a"
    finally:
        os.close(dfd)


def test_statx_fills_the_buffer(ring: Ring, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 1234)
    dfd = os.open(tmp_path, os.O_PATH)
    buf = bytearray(256)
    try:
        ring.statx(dfd, "f", 0x100, 0x7FF, memoryview(buf), tag=1)  # AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS
        ring.statx(dfd, b"missing", 0, 0x7FF, memoryview(bytearray(256)), tag=2)
        assert wait_for(ring, {1, 2}) == {1: 0, 2: -errno.ENOENT}
        st = os.stat(tmp_path / "f")
        _mask, nlink, uid, gid, mode, ino, size = STATX.unpack_from(buf)
        assert (nlink, uid, gid, mode, ino, size) == (1, st.st_uid, st.st_gid, st.st_mode, st.st_ino, 1234)
        with pytest.raises(ValueError):
            ring.statx(dfd, "f", 0, 0x7FF, memoryview(bytearray(100)), tag=3)
    finally:
        os.close(dfd)


def test_close_fd(ring: Ring, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH)
    ring.close_fd(fd, tag=1)
    ring.close_fd(fd, tag=2)  # closed by then: the kernel runs them in order here
    assert wait_for(ring, {1, 2}) == {1: 0, 2: -errno.EBADF}
    with pytest.raises(OSError) as e:
        os.fstat(fd)
    assert e.value.errno == errno.EBADF


def _direct_dir(tmp_path: Path) -> Path:
    """A directory whose filesystem takes O_DIRECT (tmpfs refuses it), or a skip saying so."""
    for d in (tmp_path, Path("/var/tmp")):
        try:
            os.close(os.open(d, os.O_RDWR | os.O_DIRECT | os.O_TMPFILE, 0o600))
        except OSError:
            continue
        return d
    pytest.skip("no filesystem here takes O_DIRECT (tmpfs does not)")


def test_registered_buffers_serve_o_direct_io(ring: Ring, tmp_path: Path) -> None:
    """The worker's pool registered as one fixed buffer: O_DIRECT reads and writes from its
    page-aligned areas are READ_FIXED / WRITE_FIXED, and come out right."""
    pool = buffers.BufferPool(3)
    ring.register_buffers(pool.memory)
    base = ctypes.addressof(ctypes.c_char.from_buffer(pool.memory))
    assert f"UserBufs:\t1\n    0: 0x{base:x}/{len(pool.memory)}\n" in fdinfo(ring)
    data = os.urandom(1 << 20)
    fd = os.open(_direct_dir(tmp_path), os.O_RDWR | os.O_DIRECT | os.O_TMPFILE, 0o600)
    try:
        pool.data[0][: len(data)] = data
        ring.writev(fd, pool.data[0][: len(data)], 0, tag=1)
        assert wait_for(ring, {1}) == {1: len(data)}
        ring.readv(fd, pool.data[1][:4096], 8192, tag=2)
        ring.readv(fd, pool.data[2][:65536], 65536, tag=3)
        assert wait_for(ring, {2, 3}) == {2: 4096, 3: 65536}
        assert pool.data[1][:4096] == data[8192 : 8192 + 4096] and pool.data[2][:65536] == data[65536:131072]
        ring.readv(fd, pool.data[1][1:4097], 0, tag=4)  # not aligned: O_DIRECT refuses it, as with preadv
        assert wait_for(ring, {4}) == {4: -errno.EINVAL}
    finally:
        os.close(fd)
    with pytest.raises(BufferError):
        pool.memory.close()  # registered memory stays mapped while the ring lives
    ring.close()
    pool.bufs.clear()
    pool.data.clear()


def test_uring_cmd_on_a_128_byte_sqe_ring_gets_the_files_errno(tmp_path: Path) -> None:
    """A URING_CMD with an 80-byte command to a file whose driver has no commands: its errno."""
    ring = Ring(8, sqe128=True, cqe32=True)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        ring.uring_cmd(fd, 1, bytes(range(80)), tag=7)
        ring.nop(tag=8)  # a plain op on the same ring: 128-byte SQE slots, 32-byte CQEs
        ring.writev(fd, b"after", 0, tag=9)
        assert wait_for(ring, {7, 8, 9}) == {7: -errno.EOPNOTSUPP, 8: 0, 9: 5}
        with pytest.raises(ValueError):
            ring.uring_cmd(fd, 1, bytes(81), tag=10)
    finally:
        os.close(fd)
        ring.close()
    small = Ring(8)
    try:
        with pytest.raises(ValueError):
            small.uring_cmd(0, 1, bytes(17), tag=1)  # a 64-byte SQE has 16 bytes of command
    finally:
        small.close()


def test_a_full_submission_queue_is_flushed_not_refused(tmp_path: Path) -> None:
    ring = Ring(4)
    try:
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        for tag in range(50):
            ring.fsync(fd, False, tag)
        assert wait_for(ring, set(range(50))) == dict.fromkeys(range(50), 0)
        os.close(fd)
    finally:
        ring.close()


def test_more_completions_than_the_cq_holds_are_all_reaped() -> None:
    """200 NOPs on a ring whose CQ holds 8, submitted before any is reaped: the kernel keeps what
    does not fit in its overflow list, and every completion comes back once."""
    ring = Ring(4)
    try:
        for tag in range(200):
            ring.nop(tag)
        ring.submit()
        assert "CqOverflowList:\n  user_data=" in fdinfo(ring)  # the overflow happened
        got: list[tuple[int, int]] = []
        while len(got) < 200:
            got += ring.wait()
        assert sorted(got) == [(tag, 0) for tag in range(200)]
    finally:
        ring.close()


def test_a_signal_ends_a_wait_after_its_handler_ran(ring: Ring) -> None:
    r, w = os.pipe()
    ran: list[int] = []

    def handler(signo: int, frame: object) -> None:
        ran.append(signo)
        if len(ran) == 2:
            raise KeyboardInterrupt  # an exception from the handler comes out of the wait, as from os calls

    old = signal.signal(signal.SIGALRM, handler)
    try:
        ring.poll_in(r, tag=1)  # nothing will come
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert ring.wait() == [] and ran == [signal.SIGALRM]
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            ring.wait()
        os.write(w, b"x")  # the poll was never lost
        assert wait_for(ring, {1})[1] & select.POLLIN
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(r)
        os.close(w)


def test_a_probe_that_crashes_or_hangs_is_an_answer() -> None:
    assert isolated(lambda: None) is None
    assert isolated(lambda: "no") == "no"
    assert isolated(lambda: ctypes.string_at(0)) == "io_uring probe died of SIGSEGV"  # a wrong pointer
    assert isolated(lambda: time.sleep(60), timeout=0.2) == "io_uring probe hung for 0.2 s"


@pytest.mark.parametrize("err", [errno.EPERM, errno.ENOSYS], ids=["disabled", "absent"])
def test_a_kernel_that_refuses_io_uring(err: int) -> None:
    """io_uring_setup refused (as by kernel.io_uring_disabled=2, seccomp, or a kernel without it),
    here by a seccomp filter in a child: the probe says why, and Ring raises Unavailable."""

    def check() -> str:
        refuse(err)
        try:
            Ring(8)
        except Unavailable as e:
            return f"{why_unavailable()} | {e}"
        return "a ring was set up"

    why = f"io_uring_setup failed: {os.strerror(err)}"
    assert isolated(check) == f"{why} | {why}"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_fastpass_uring_imports_no_compiled_module_outside_the_standard_library() -> None:
    """Every module the files of fastpass/uring import (followed through fastpass/uring) is the
    standard library's or fastpass's own: nothing compiled for one CPU (python-liburing's wheels
    were, for AVX-512)."""
    seen: set[str] = set()
    todo = [f"fastpass.uring.{p.stem}" for p in URING.glob("*.py")]
    outside: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        spec = find_spec(name)
        assert spec is not None and spec.origin is not None and spec.origin.endswith(".py"), name
        for imported in _imports(Path(spec.origin)):
            top = imported.split(".")[0]
            if imported.startswith("fastpass.uring"):
                todo.append(imported)
            elif top == "fastpass":  # the protocol layer (kernel.abi's layouts): pure Python too
                assert find_spec(imported).origin.endswith(".py"), imported  # type: ignore[union-attr]
            elif top != "__future__":
                outside.add(top)
    assert "fastpass.uring.ring" in seen and "liburing" not in outside
    assert outside <= sys.stdlib_module_names, outside - sys.stdlib_module_names


def test_pool_buffers_take_any_request_with_write_payload_page_aligned() -> None:
    pool = buffers.BufferPool(3)
    assert len(pool) == 3 and len(pool.memory) == 3 * buffers.SIZE
    base = ctypes.addressof(ctypes.c_char.from_buffer(pool.memory))
    for buf, data in zip(pool.bufs, pool.data):
        assert len(buf) >= 8192 and len(buf) >= buffers.HEAD + (1 << 20)  # the read-buffer rule
        assert buf.obj is pool.memory
        # The payload (and a READ's data) starts HEAD bytes in, on a page boundary.
        assert ctypes.addressof(ctypes.c_char.from_buffer(data)) % mmap.PAGESIZE == 0
        assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) + buffers.HEAD - base < len(pool.memory)
        assert len(data) >= 1 << 20
