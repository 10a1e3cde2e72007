"""Kernel passthrough: file data that never reaches the server, with the backing's own semantics."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import subprocess
import time
from pathlib import Path

import pytest

from fastpass.fs import fstypes
from tests.conftest import fastpass_mount, mounts_under, run_fastpass
from tests.integration.test_cli import NOBODY, assert_refused
from tests.users import UID, as_user, run_cli_as

MiB = 1 << 20


def stats(mnt: Path) -> dict:
    r = run_fastpass("stats", str(mnt), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def op_count(s: dict, name: str) -> int:
    return sum(o["count"] for o in s["ops"] if o["name"] == name)


def test_data_never_reaches_the_server(tmp_path: Path) -> None:
    """32 MiB written and read back twice: the workers see no READ and no WRITE at all."""
    with fastpass_mount(tmp_path, "--workers", "4", "--passthrough", "on") as m:
        data = os.urandom(32 * MiB)
        with open(m.mnt / "big", "wb") as f:
            f.writelines(data[off : off + MiB] for off in range(0, len(data), MiB))
        for _ in range(2):
            assert hashlib.sha256((m.mnt / "big").read_bytes()).digest() == hashlib.sha256(data).digest()
        assert (m.backing / "big").read_bytes() == data
        assert (m.mnt / "big").stat().st_size == len(data)
        s = stats(m.mnt)
        assert s["passthrough"] is True
        assert op_count(s, "READ") == 0 and op_count(s, "WRITE") == 0, s["ops"]
        assert op_count(s, "OPEN") + op_count(s, "CREATE") >= 3
        assert sum(w["opens_passthrough"] for w in s["workers"]) >= 3
        assert sum(w["opens_userspace"] for w in s["workers"]) == 0


def test_off_serves_every_byte(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "off") as m:
        (m.mnt / "f").write_bytes(os.urandom(4 * MiB))
        assert (m.mnt / "f").read_bytes() == (m.backing / "f").read_bytes()
        s = stats(m.mnt)
        assert s["passthrough"] is False
        assert op_count(s, "WRITE") > 0 and op_count(s, "READ") > 0
        assert sum(w["opens_passthrough"] for w in s["workers"]) == 0


def test_mmap_direct_and_append_behave_as_on_the_backing(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "4", "--passthrough", "on") as m:
        (m.mnt / "f").write_bytes(b"\0" * (2 * MiB))
        with open(m.mnt / "f", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:  # shared mapping, written back
            mm[4096:4101] = b"hello"
            mm.flush()
        assert (m.backing / "f").read_bytes()[4096:4101] == b"hello"

        buf = mmap.mmap(-1, MiB)  # page-aligned, as O_DIRECT wants
        buf[:] = os.urandom(MiB)
        fd = os.open(m.mnt / "d", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            assert os.pwritev(fd, [buf], 0) == MiB
            back = mmap.mmap(-1, MiB)
            assert os.preadv(fd, [back], 0) == MiB and back[:] == buf[:]
        finally:
            os.close(fd)
        assert (m.backing / "d").read_bytes() == buf[:]

        a = os.open(m.mnt / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        b = os.open(m.mnt / "log", os.O_WRONLY | os.O_APPEND)
        try:
            for fd_, line in [(a, b"one\n"), (b, b"two\n"), (a, b"three\n")]:
                os.write(fd_, line)
        finally:
            os.close(a)
            os.close(b)
        assert (m.backing / "log").read_bytes() == b"one\ntwo\nthree\n" == (m.mnt / "log").read_bytes()
        s = stats(m.mnt)
        assert op_count(s, "READ") == 0 and op_count(s, "WRITE") == 0, s["ops"]


def test_reopening_many_times_releases_every_backing_id(tmp_path: Path) -> None:
    """Each last close frees the inode's backing id (a leak would exhaust or wedge the inode)."""
    with fastpass_mount(tmp_path, "--workers", "4", "--passthrough", "on") as m:
        for i in range(300):
            with open(m.mnt / f"f{i % 7}", "ab") as f:
                f.write(b"x")
            assert (m.mnt / f"f{i % 7}").read_bytes() == b"x" * (i // 7 + 1)
        assert stats(m.mnt)["open_handles"] == 0


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _settled(mnt: Path, key: str, want: int) -> dict:
    """stats once `key` is `want`: FORGET comes from the kernel some time after the unlink."""
    deadline = time.monotonic() + 10
    while (s := stats(mnt))[key] != want and time.monotonic() < deadline:
        time.sleep(0.02)
    return s


def test_a_read_only_file_keeps_its_backing_id_between_opens(tmp_path: Path) -> None:
    """Reopening an unchanged file registers nothing again; writing and exec still work; the
    inode's FORGET closes the id."""
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "on") as m:
        # made through the mount: an outside create would drop the name (and the inode) on its way in
        (m.mnt / "tool").write_text("#!/bin/sh\necho one\n")
        (m.mnt / "tool").chmod(0o755)
        assert (stats(m.mnt)["backing_registrations"], stats(m.mnt)["backing_ids"]) == (1, 0)  # writable: closed
        for _ in range(20):
            assert (m.mnt / "tool").read_bytes().startswith(b"#!/bin/sh")
        s = stats(m.mnt)
        assert (s["backing_registrations"], s["backing_ids"]) == (2, 1), s
        # such an open joins the id without a backing open of its own; what needs one opens it then
        fd = os.open(m.mnt / "tool", os.O_RDONLY)
        try:
            os.fsync(fd)
            assert os.lseek(fd, 0, os.SEEK_DATA) == 0 and os.lseek(fd, 0, os.SEEK_END) == 19
            assert os.pread(fd, 9, 0) == b"#!/bin/sh" and os.fstat(fd).st_size == 19
        finally:
            os.close(fd)
        with open(m.mnt / "tool", "a") as f:  # a write open of the same inode joins the kept id
            f.write("echo two\n")
        assert (m.backing / "tool").read_text().endswith("echo two\n")
        # the kept id's file is read-only, so it holds no write access: exec is no ETXTBSY
        assert subprocess.run([m.mnt / "tool"], check=True, capture_output=True, text=True).stdout == "one\ntwo\n"
        s = stats(m.mnt)
        assert s["backing_registrations"] == 2 and op_count(s, "READ") == 0 and op_count(s, "WRITE") == 0, s
        os.unlink(m.mnt / "tool")
        assert _settled(m.mnt, "backing_ids", 0)["backing_ids"] == 0


def test_a_write_opened_id_is_closed_at_the_last_release(tmp_path: Path) -> None:
    """An id registered from a writable file would hold write access: exec of the file right
    after writing it must work, so such an id ends with its last open."""
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "on") as m:
        script = m.mnt / "new"
        script.write_text("#!/bin/sh\necho fresh\n")
        script.chmod(0o755)
        assert subprocess.run([script], check=True, capture_output=True, text=True).stdout == "fresh\n"
        s = _settled(m.mnt, "backing_ids", 1)  # exec's own read-only open may keep its id
        assert s["backing_registrations"] == 2, s


def test_a_kept_id_is_registered_again_for_another_uid(world_dir: Path) -> None:
    """An idle id registered as root would pass uid 1000's I/O with root's credentials, or push
    it to userspace: the next open by another uid registers its own, and its I/O is passed through."""
    with fastpass_mount(world_dir, "--workers", "2", "--passthrough", "on", "--allow-other") as m:
        (m.mnt / "f").write_bytes(b"shared data")  # through the mount, as in the test above
        (m.mnt / "f").chmod(0o644)
        assert (m.mnt / "f").read_bytes() == b"shared data"
        assert as_user(_read, m.mnt / "f", uid=UID, gid=UID) == b"shared data"
        s = stats(m.mnt)
        assert (s["backing_registrations"], s["backing_ids"]) == (3, 1), s
        assert sum(w["opens_userspace"] for w in s["workers"]) == 0
        assert op_count(s, "READ") == 0


@pytest.mark.parametrize("passthrough", ["on", "off"])
def test_a_close_with_nothing_to_report_sends_no_flush(tmp_path: Path, passthrough: str) -> None:
    """FOPEN_NOFLUSH where a close has no error to report: a read-only open, and a writable one on
    a local filesystem whose close never fails (fastpass.fs.fstypes).  Every close flushes where a
    filter hooks FLUSH."""
    fd = os.open(tmp_path, os.O_PATH | os.O_CLOEXEC)
    try:
        local = fstypes.magic(fd) in fstypes.SILENT_CLOSE
    finally:
        os.close(fd)
    if not local:
        pytest.skip(f"{tmp_path} is not on a filesystem whose close reports nothing (ext4, xfs, btrfs, tmpfs)")
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", passthrough) as m:
        (m.backing / "f").write_bytes(b"data")
        for _ in range(10):
            assert (m.mnt / "f").read_bytes() == b"data"
        with open(m.mnt / "f", "r+b") as f:
            f.write(b"DA")
        (m.mnt / "new").write_bytes(b"made")
        assert op_count(stats(m.mnt), "FLUSH") == 0
        assert (m.backing / "f").read_bytes() == b"DAta"
        assert (m.backing / "new").read_bytes() == b"made"
    log = tmp_path / "audit.jsonl"
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", passthrough, "--filter",
                        f"audit:path={log},data=no") as m:  # fmt: skip
        assert (m.mnt / "f").read_bytes() == b"DAta"
        assert op_count(stats(m.mnt), "FLUSH") == 1


def test_a_writers_close_flushes_where_the_backing_may_report(tmp_path: Path) -> None:
    """On a backing whose close can fail (here a FUSE filesystem: another fastpass), a writer's
    close still sends FLUSH, to close a duplicate of the backing fd as the application's own close
    would.  A read-only close sends none."""
    lower_dir, upper_dir = tmp_path / "lower", tmp_path / "upper"
    lower_dir.mkdir()
    upper_dir.mkdir()
    with fastpass_mount(lower_dir, "--workers", "1", "--passthrough", "off") as lower:
        with fastpass_mount(upper_dir, "--workers", "1", "--passthrough", "off", backing=lower.mnt) as upper:
            (lower.backing / "f").write_bytes(b"data")
            assert (upper.mnt / "f").read_bytes() == b"data"
            assert op_count(stats(upper.mnt), "FLUSH") == 0
            with open(upper.mnt / "f", "r+b") as f:
                f.write(b"DA")
            assert op_count(stats(upper.mnt), "FLUSH") == 1
        assert (lower.backing / "f").read_bytes() == b"DAta"


def test_on_without_root_is_refused(world_dir: Path) -> None:
    backing, mnt = world_dir / "b", world_dir / "m"
    backing.mkdir()
    mnt.mkdir()
    for d in (backing, mnt):
        os.chown(d, NOBODY, NOBODY)
    code, out, err = run_cli_as(NOBODY, NOBODY, [], "mount", str(backing), str(mnt), "--workers", "1",
                                "--passthrough", "on")  # fmt: skip
    assert_refused(code, out, err, "--passthrough on needs root")
    assert not mounts_under(world_dir)
