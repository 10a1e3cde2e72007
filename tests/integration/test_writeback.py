"""The kernel's writeback cache (--writeback-cache) on the userspace data path, with 2 workers.

Writes land in the page cache and reach a worker later, through any writable fh of the
inode, on any worker; the kernel reads a page through a writer's fh before writing part of
it, appends at its own idea of the end, and keeps a file's size and times itself.  Each case
checks what the application and the backing see, against the bind mount's behaviour.
"""

from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mounted, bind_mount, err, fastpass_mount, run_fastpass
from tests.integration.test_cache import LONG, shows
from tests.integration.test_cli import assert_refused
from tests.integration.test_passthrough import MiB, op_count, stats
from tests.users import as_user

WRITEBACK = ("--workers", "2", "--passthrough", "off", "--writeback-cache", *LONG)


@pytest.fixture
def wb(tmp_path: Path) -> Iterator[Mounted]:
    with fastpass_mount(tmp_path, *WRITEBACK) as m:
        yield m


def test_negotiated_without_passthrough(wb: Mounted) -> None:
    s = stats(wb.mnt)
    assert "WRITEBACK_CACHE" in s["negotiated"]["flags"]
    assert "PASSTHROUGH" not in s["negotiated"]["flags"]
    assert s["passthrough"] is False


def test_passthrough_auto_means_off(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "auto", "--writeback-cache") as m:
        s = stats(m.mnt)
        assert "WRITEBACK_CACHE" in s["negotiated"]["flags"] and s["passthrough"] is False


@pytest.mark.parametrize("args, message", [
    (("--passthrough", "on"), "excludes --passthrough on"),
    (("--engine", "pyfuse3"), "native engine"),
    (("--cache", "strict"), "--cache strict"),
    (("--allow-other", "--no-default-permissions"), "needs --default-permissions"),
    (("--filter", "readonly"), "takes no --filter"),
], ids=["passthrough-on", "pyfuse3", "strict", "no-default-permissions", "filter"])  # fmt: skip
def test_refused_combinations(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    r = run_fastpass("mount", str(tmp_path / "b"), str(tmp_path / "m"), "--writeback-cache", *args)
    assert_refused(r.returncode, r.stdout, r.stderr, message)


def test_write_only_open_and_partial_page_write(wb: Mounted) -> None:
    """The kernel reads the rest of the page through the O_WRONLY fh before writing part of it."""
    (wb.backing / "f").write_bytes(b"a" * 10000)
    fd = os.open(wb.mnt / "f", os.O_WRONLY)
    try:
        assert os.pwrite(fd, b"XY", 5000) == 2
    finally:
        os.close(fd)
    assert (wb.backing / "f").read_bytes() == b"a" * 5000 + b"XY" + b"a" * 4998


def _write_part(path: Path, offset: int, data: bytes, truncate: int | None = None) -> None:
    """Open write-only, write `data` at `offset`, fsync, close; then truncate by path if asked."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    if truncate is not None:
        os.truncate(path, truncate)


def test_write_only_file_as_a_user_who_may_not_read_it(world_dir: Path) -> None:
    """Mode 0622: others may write but not read; their partial-page write still works."""
    with fastpass_mount(world_dir, *WRITEBACK, "--allow-other") as m:
        (m.backing / "f").write_bytes(b"a" * 6000)
        (m.backing / "f").chmod(0o622)
        as_user(_write_part, m.mnt / "f", 100, b"XY")
        assert (m.backing / "f").read_bytes() == b"a" * 100 + b"XY" + b"a" * 5898


def test_append_from_two_opens(wb: Mounted) -> None:
    path = wb.mnt / "log"
    path.write_bytes(b"0123")
    a = os.open(path, os.O_WRONLY | os.O_APPEND)
    b = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(a, b"A" * 5000)
        os.write(b, b"B" * 10)
        os.write(a, b"C")
    finally:
        os.close(a)
        os.close(b)
    want = b"0123" + b"A" * 5000 + b"B" * 10 + b"C"
    assert path.read_bytes() == want
    assert (wb.backing / "log").read_bytes() == want


def test_append_after_an_outside_append(wb: Mounted) -> None:
    """The kernel appends at its own end of file: it must have learnt the outside append first."""
    path = wb.mnt / "log"
    path.write_bytes(b"mount\n")
    with open(wb.backing / "log", "ab") as f:
        f.write(b"outside\n")
    assert shows(lambda: path.stat().st_size == 14)
    with open(path, "ab") as f:
        f.write(b"mount again\n")
    assert (wb.backing / "log").read_bytes() == b"mount\noutside\nmount again\n"


def test_mmap_write(wb: Mounted) -> None:
    (wb.backing / "f").write_bytes(b"\0" * 3 * mmap.PAGESIZE)
    with open(wb.mnt / "f", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[10:15] = b"hello"
        mm[mmap.PAGESIZE * 2 + 1 : mmap.PAGESIZE * 2 + 3] = b"!!"
        mm.flush()
        data = (wb.backing / "f").read_bytes()
    assert data[10:15] == b"hello" and data[mmap.PAGESIZE * 2 + 1 : mmap.PAGESIZE * 2 + 3] == b"!!"


def test_size_after_write_seen_by_another_process_then_by_the_backing(wb: Mounted) -> None:
    path = wb.mnt / "f"
    with open(path, "wb") as f:
        f.write(b"x" * 12345)
        f.flush()  # in the kernel's page cache now, perhaps not yet in the backing
        r = subprocess.run([sys.executable, "-c", f"import os; print(os.stat({str(path)!r}).st_size)"],
                           capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        assert int(r.stdout) == 12345
        os.fsync(f.fileno())
        assert (wb.backing / "f").stat().st_size == 12345
        f.write(b"y" * 10)
    assert (wb.backing / "f").read_bytes() == b"x" * 12345 + b"y" * 10  # close wrote it back


def test_outside_changes_after_close_show_at_the_next_open(wb: Mounted) -> None:
    """Written and closed through the mount, then changed outside: a grow, an overwrite, a shrink."""
    path = wb.mnt / "f"
    path.write_bytes(b"a" * 8192)
    assert path.read_bytes() == b"a" * 8192
    for content in (b"b" * 9000, b"c" * 9000, b"d" * 100):
        (wb.backing / "f").write_bytes(content)  # truncates, then writes
        assert shows(lambda c=content: path.stat().st_size == len(c) and path.read_bytes() == c)


def test_open_file_keeps_the_kernels_size(wb: Mounted) -> None:
    """While a program holds the file, the kernel's size stands (docs/caching.md: what writeback promises);
    the data it reads within that size is the backing's, and once closed the size follows.

    Many times over: a stat right after the close races the close's RELEASE, which holds the
    kernel's inode until answered (before the fix, 6 rounds in 10 kept the old size for good)."""
    for i in range(40):
        path = wb.mnt / f"f{i}"
        path.write_bytes(b"a" * 100)
        with open(path, "rb") as held:
            (wb.backing / f"f{i}").write_bytes(b"b" * 200)
            assert shows(lambda: (os.pread(held.fileno(), 100, 0) == b"b" * 100))
            assert os.fstat(held.fileno()).st_size == 100
            assert path.stat().st_size == 100
        assert shows(lambda p=path: p.stat().st_size == 200), f"round {i}"


def test_small_writes_reach_the_server_in_pages(wb: Mounted) -> None:
    """1000 writes of 100 bytes: far fewer WRITE requests than writes (the point of the cache)."""
    before = op_count(stats(wb.mnt), "WRITE")
    with open(wb.mnt / "f", "wb", buffering=0) as f:
        f.writelines(bytes([i % 256]) * 100 for i in range(1000))
    assert (wb.backing / "f").read_bytes() == b"".join(bytes([i % 256]) * 100 for i in range(1000))
    assert op_count(stats(wb.mnt), "WRITE") - before < 100


def test_writeback_through_an_o_direct_fh(wb: Mounted) -> None:
    """Dirty pages may be written back through any writable fh, an O_DIRECT one too, and a
    file's last page is short, which an O_DIRECT backing write refuses."""
    (wb.backing / "f").write_bytes(b"a" * 5000)
    fd = os.open(wb.mnt / "f", os.O_RDWR)
    direct = os.open(wb.mnt / "f", os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwrite(fd, b"B" * 100, 4100)  # dirties the last, partial page
        os.fsync(direct)
    finally:
        os.close(fd)
        os.close(direct)
    assert (wb.backing / "f").read_bytes() == b"a" * 4100 + b"B" * 100 + b"a" * 800


def test_a_writer_who_does_not_own_the_file_closes_cleanly(world_dir: Path) -> None:
    """The kernel sends its own mtime after a write (SETATTR with FATTR_CTIME), as the writer."""
    with fastpass_mount(world_dir, *WRITEBACK, "--allow-other") as m:
        (m.backing / "f").write_bytes(b"a" * 5000)
        (m.backing / "f").chmod(0o666)
        as_user(_write_part, m.mnt / "f", 100, b"B" * 10, 300)
        assert (m.backing / "f").read_bytes() == b"a" * 100 + b"B" * 10 + b"a" * 190


def _seeks(fd: int, probes: list[tuple[int, int]]) -> list[int | str]:
    """lseek(fd, offset, whence) for each (whence, offset): the offset, or the errno's name."""
    out: list[int | str] = []
    for whence, offset in probes:
        try:
            out.append(os.lseek(fd, offset, whence))
        except OSError as e:
            out.append(errno.errorcode[e.errno])
    return out


def test_seek_data_and_hole_answer_what_the_kernel_holds(wb: Mounted, tmp_path: Path) -> None:
    """1 MiB written to a new file, not yet written back (the backing may still have 0 bytes):
    SEEK_DATA and SEEK_HOLE answer as on a bind mount, before fsync and after.  In a sparse
    file the kernel's answer is that the whole file is data (docs/caching.md: The writeback cache)."""
    (tmp_path / "ref").mkdir()
    probes = [(os.SEEK_DATA, 0), (os.SEEK_HOLE, 0), (os.SEEK_DATA, MiB - 1), (os.SEEK_HOLE, MiB - 1),
              (os.SEEK_DATA, MiB), (os.SEEK_HOLE, MiB)]  # fmt: skip
    with bind_mount(tmp_path / "ref") as ref:
        answers = []
        for m in (wb, ref):
            fd = os.open(m.mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, b"x" * MiB, 0)
                before = _seeks(fd, probes)
                os.fsync(fd)
                answers.append((before, _seeks(fd, probes)))
            finally:
                os.close(fd)
        dense = [0, MiB, MiB - 1, MiB, "ENXIO", "ENXIO"]
        assert answers[0] == answers[1] == (dense, dense)
    fd = os.open(wb.mnt / "sparse", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"a" * 4096, 0)
        os.pwrite(fd, b"b" * 4096, 4 * MiB)
        os.fsync(fd)
        assert _seeks(fd, [(os.SEEK_HOLE, 0), (os.SEEK_DATA, MiB)]) == [4 * MiB + 4096, MiB]
    finally:
        os.close(fd)


def test_stress_ng_seek(wb: Mounted) -> None:
    """stress-ng's seek stressor (SEEK_DATA/SEEK_HOLE on files it has just written) with --verify."""
    (wb.mnt / "seek").mkdir()
    cmd = ["stress-ng", "--seek", "2", "--timeout", "2", "--verify", "--metrics-brief", "--temp-path",
           str(wb.mnt / "seek")]  # fmt: skip
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.listdir(wb.mnt / "seek") == []


def test_a_write_the_backing_refuses_for_its_size_fails_at_fsync_and_close(wb: Mounted, tmp_path: Path) -> None:
    """A 1-byte write at 17 TiB: the backing (ext4: 16 TiB files at most) refuses it with EFBIG at
    once, but the kernel takes it into its cache, and the writeback fails later: EFBIG at fsync,
    EIO at a close without fsync.  The mount then shows the size the write made until the kernel
    forgets the file (docs/caching.md: The writeback cache)."""
    offset = 17 << 40
    probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        refused = err(os.pwrite, probe, b"z", offset)
    finally:
        os.close(probe)
    if refused != errno.EFBIG:
        pytest.skip(f"the backing's filesystem takes a write at 17 TiB (errno {refused})")
    for name, ending in (("synced", os.fsync), ("closed", None)):
        fd = os.open(wb.mnt / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            assert os.pwrite(fd, b"z", offset) == 1
            if ending is not None:
                assert err(ending, fd) == errno.EFBIG
        finally:
            closed = err(os.close, fd)
        assert closed == (errno.EIO if ending is None else 0)
        assert (wb.backing / name).stat().st_size == 0
        assert (wb.mnt / name).stat().st_size == offset + 1
