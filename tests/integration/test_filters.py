"""Filters on real mounts: the contract (decisions, stacking, changed inputs and outputs, failures),
passthrough kept exactly for the files no filter needs, and the four built-ins.

The test filters live in tests/filters_sample.py; the server imports them as
`tests.filters_sample` (the mount runs from the repository root).
"""

from __future__ import annotations

import errno
import json
import mmap
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from tests.conftest import ENGINES, err, fastpass_mount, mounts_under, run_fastpass
from tests.filters_sample import OWNER
from tests.integration.test_passthrough import op_count, stats

SAMPLE = "tests.filters_sample"
NO_CACHE = ("--attr-timeout", "0", "--entry-timeout", "0")  # every stat and lookup reaches the server


def sample(cls: str, args: str = "") -> tuple[str, str]:
    return "--filter", f"{SAMPLE}:{cls}" + (f":{args}" if args else "")


@pytest.fixture(params=[name for name, options in ENGINES.items() if "--writeback-cache" not in options])
def config(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Every fastpass configuration that takes filters: 1 worker in userspace, 4 workers with kernel
    passthrough, pyfuse3 (the writeback cache refuses filters: test_writeback)."""
    return ENGINES[request.param]


# --- the contract -------------------------------------------------------------------------------


def test_each_decision(tmp_path: Path, config: tuple[str, ...]) -> None:
    with fastpass_mount(tmp_path, *config, *sample("Decide")) as m:
        f = m.backing / "f"
        f.write_bytes(b"")
        for name in ("continue", "post", "user", "errno"):
            os.setxattr(f, f"user.{name}", b"backing")
        path = m.mnt / "f"
        assert os.getxattr(path, "user.continue") == b"backing"
        assert os.getxattr(path, "user.post") == b"post:backing"  # the size probe was post-filtered too
        assert os.getxattr(path, "user.user") == b"answered by the filter"
        assert err(os.getxattr, path, "user.errno") == errno.EPERM
        assert err(os.getxattr, path, "user.absent") == errno.ENODATA  # CONTINUE passes the backing's errno


def test_stacking_order(tmp_path: Path) -> None:
    """Pre-filters run outermost first (its USER answer wins); post-filters innermost first."""
    with fastpass_mount(tmp_path, *sample("Mark", "tag=1"), *sample("Mark", "tag=2")) as m:
        os.symlink("target", m.backing / "link")
        (m.backing / "f").write_bytes(b"")
        assert os.readlink(m.mnt / "link") == "target21"
        assert os.getxattr(m.mnt / "f", "user.mark") == b"1"
        head = run_fastpass("stats", str(m.mnt)).stdout.partition("\noptions:")[0]  # the options list names them too
        assert head.count(f"{SAMPLE}:Mark:tag=") == 2


def test_changed_inputs(tmp_path: Path, config: tuple[str, ...]) -> None:
    with fastpass_mount(tmp_path, *config, *NO_CACHE, *sample("KeepContents")) as m:
        (m.backing / "real").write_bytes(b"contents")
        with open(m.mnt / "real", "r+b") as f:  # an O_TRUNC open without the O_TRUNC
            os.close(os.open(m.mnt / "real", os.O_WRONLY | os.O_TRUNC))
            assert f.read() == b"contents"
        assert (m.backing / "real").read_bytes() == b"contents"
        assert (m.mnt / "alias").read_bytes() == b"contents"
        assert (m.mnt / "alias").stat().st_ino == (m.backing / "real").stat().st_ino


def test_changed_outputs(tmp_path: Path, config: tuple[str, ...]) -> None:
    """Attributes in LOOKUP, GETATTR and READDIRPLUS entries, and what lookups READDIRPLUS counted."""
    with fastpass_mount(tmp_path, *config, *NO_CACHE, *sample("Owner")) as m:
        for i in range(50):
            (m.backing / f"f{i}").write_bytes(b"x")
        assert all(e.stat(follow_symlinks=False).st_uid == OWNER for e in os.scandir(m.mnt))
        assert (m.mnt / "f7").stat().st_uid == OWNER
        assert (m.backing / "f7").stat().st_uid == 0
        assert os.stat(m.mnt).st_uid == OWNER
        assert (m.mnt / "f7").read_bytes() == b"x"


def test_exception_in_a_filter_is_eio_logged_once_and_the_worker_lives(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "1", *NO_CACHE, *sample("Broken")) as m:
        m.allowed_log_errors += ["(filter Broken)", "Traceback"]  # counted below: once per operation
        before = stats(m.mnt)["workers"][0]["pid"]
        for _ in range(3):
            assert err(os.stat, m.mnt / "boom") == errno.EIO
        assert err(os.mkdir, m.mnt / "frozen") == errno.EIO  # a post-filter changing frozen inputs
        assert (m.backing / "frozen").is_dir()  # the backing call had been made
        (m.backing / "ok").write_bytes(b"fine")
        assert (m.mnt / "ok").read_bytes() == b"fine"
        s = stats(m.mnt)
        assert s["workers"][0]["pid"] == before and s["restarts"] == 0
        assert s["inodes"] <= 3  # root, ok, and nothing left of the mkdir the kernel never heard of
        # `stats` shows them too, for whoever does not read the log
        expected = [f"error: unexpected error in {op} (filter Broken), answered EIO (FilterError: filter Broken "
                    f"failed in {hook})" for op, hook in (("LOOKUP", "pre_lookup"), ("MKDIR", "post_mkdir"))]  # fmt: skip
        assert [(w["process"], w["text"]) for w in s["warnings"]] == [("worker 0", text) for text in expected]
        shown = run_fastpass("stats", str(m.mnt)).stdout
        assert "last warnings:" in shown and "worker 0: error: unexpected error in LOOKUP (filter Broken)" in shown
    log = m.log.read_text()
    assert log.count("unexpected error") == 2, log
    assert log.count("unexpected error in LOOKUP (filter Broken)") == 1, log
    assert log.count("unexpected error in MKDIR (filter Broken)") == 1, log
    assert "ZeroDivisionError: a bug in a filter" in log and "read-only after the backing call" in log


def test_empty_filter_changes_nothing(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "on", *sample("Nothing")) as m:
        (m.mnt / "f").write_bytes(b"data" * 1000)
        assert (m.mnt / "f").read_bytes() == b"data" * 1000
        s = stats(m.mnt)
        assert op_count(s, "READ") == 0 and op_count(s, "WRITE") == 0


# --- passthrough: off exactly for the files whose data a filter needs ----------------------------


def test_passthrough_off_exactly_for_filtered_files(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "on", *sample("Rot13", "pattern=*.rot")) as m:
        plain = b"Hello, World\n" * 1000
        (m.mnt / "fast.txt").write_bytes(plain)
        (m.mnt / "fast.txt").read_bytes()
        s = stats(m.mnt)
        assert op_count(s, "READ") == 0 and op_count(s, "WRITE") == 0
        assert sum(w["opens_userspace"] for w in s["workers"]) == 0

        (m.mnt / "slow.rot").write_bytes(plain)
        assert (m.backing / "slow.rot").read_bytes() == plain.translate(ROT13)
        assert (m.mnt / "slow.rot").read_bytes() == plain
        s = stats(m.mnt)
        assert op_count(s, "READ") > 0 and op_count(s, "WRITE") > 0
        assert sum(w["opens_userspace"] for w in s["workers"]) == 2

        # Both kinds open at once: the filtered open shares the inode's backing id (the kernel's rule).
        (m.backing / "both.rot").write_bytes(plain.translate(ROT13))
        with open(m.mnt / "fast.txt", "rb") as fast, open(m.mnt / "both.rot", "rb") as slow:
            assert fast.read() == plain and slow.read() == plain
        reads = op_count(stats(m.mnt), "READ")
        assert (m.mnt / "fast.txt").read_bytes() == plain
        assert op_count(stats(m.mnt), "READ") == reads


def test_filtered_files_are_not_cached(tmp_path: Path, config: tuple[str, ...]) -> None:
    """Every read of a filtered file reaches the filter, also where the page cache would serve it; shared
    mmap still works (page-ins filtered without passthrough; the backing file itself with it)."""
    with fastpass_mount(tmp_path, *config, *sample("Rot13", "pattern=*.rot")) as m:
        plain = b"Hello, World\n" * 1000
        (m.backing / "f.rot").write_bytes(plain.translate(ROT13))
        with open(m.mnt / "f.rot", "rb") as f:
            for _ in range(3):
                reads = op_count(stats(m.mnt), "READ")
                assert os.pread(f.fileno(), len(plain), 0) == plain
                assert op_count(stats(m.mnt), "READ") > reads
        with open(m.mnt / "f.rot", "r+b") as f:
            if m.engine == "pyfuse3":  # libfuse 3.14 has no DIRECT_IO_ALLOW_MMAP: no shared mmap of such files
                assert err(mmap.mmap, f.fileno(), 0) == errno.ENODEV
                return
            with mmap.mmap(f.fileno(), 0) as mm:
                assert mm[:] == (plain.translate(ROT13) if m.passthrough else plain)


ROT13 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm"
)


def test_filtered_and_unfiltered_opens_of_one_file(tmp_path: Path) -> None:
    """quota needs only writes: a reader in passthrough and a writer in userspace share one inode."""
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "on", "--filter", "quota:bytes=1M") as m:
        (m.backing / "f").write_bytes(b"a" * 4096)
        with open(m.mnt / "f", "rb") as r:
            with open(m.mnt / "f", "r+b") as w:
                w.seek(4096)
                w.write(b"b" * 4096)
                w.flush()
            assert r.read() == b"a" * 4096 + b"b" * 4096
        s = stats(m.mnt)
        assert op_count(s, "WRITE") > 0 and op_count(s, "READ") == 0
        assert sum(w["opens_passthrough"] for w in s["workers"]) == 1
        assert sum(w["opens_userspace"] for w in s["workers"]) == 1


# --- mount-time errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule:Class", "cannot import nosuchmodule"),
        (f"{SAMPLE}:NoSuchClass", "has no class NoSuchClass"),
        (f"{SAMPLE}:Typo", "pre_lokup: no operation 'lokup'"),
        ("hide", "missing a required argument: 'pattern'"),
        ("hide:patern=x", "no argument patern (arguments: pattern)"),
        ("quota:bytes=lots", "bytes must be a number"),
        ("audit:path=/nonexistent/dir/audit.log", "No such file or directory"),
        ("justamodule", "expected MODULE:CLASS"),
        (f"{SAMPLE}:Mark:tag", "'tag' is not ARG=VALUE"),
    ],
)
def test_bad_spec_is_one_line_and_nothing_is_mounted(tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    r = run_fastpass("mount", str(tmp_path / "b"), str(tmp_path / "m"), "--filter", spec)
    assert r.returncode == 1
    assert r.stderr.startswith("fastpass: error: --filter") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not mounts_under(tmp_path)


# --- built-ins -----------------------------------------------------------------------------------


def test_readonly(tmp_path: Path, config: tuple[str, ...]) -> None:
    with fastpass_mount(tmp_path, *config, "--filter", "readonly") as m:
        (m.backing / "f").write_bytes(b"data")
        (m.backing / "d").mkdir()
        os.setxattr(m.backing / "f", "user.a", b"1")
        f, d = m.mnt / "f", m.mnt / "d"
        refused = [
            lambda: os.open(f, os.O_WRONLY),
            lambda: os.open(f, os.O_RDWR),
            lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
            lambda: os.open(m.mnt / "new", os.O_WRONLY | os.O_CREAT, 0o644),
            lambda: os.open(m.mnt, os.O_WRONLY | os.O_TMPFILE, 0o644),
            lambda: os.mkdir(m.mnt / "nd"),
            lambda: os.mknod(m.mnt / "fifo", 0o644 | 0o010000),
            lambda: os.symlink("f", m.mnt / "s"),
            lambda: os.link(f, m.mnt / "hard"),
            lambda: os.unlink(f),
            lambda: os.rmdir(d),
            lambda: os.rename(f, m.mnt / "g"),
            lambda: os.chmod(f, 0o600),
            lambda: os.truncate(f, 0),
            lambda: os.utime(f, (1, 1)),
            lambda: os.setxattr(f, "user.b", b"2"),
            lambda: os.removexattr(f, "user.a"),
        ]
        want = [errno.EROFS] * len(refused)
        if m.engine == "pyfuse3":
            want[4] = errno.EOPNOTSUPP  # no O_TMPFILE through pyfuse3: the kernel answers before any filter
        assert [err(op) for op in refused] == want
        assert f.read_bytes() == b"data" and os.getxattr(f, "user.a") == b"1"
        assert sorted(os.listdir(m.mnt)) == ["d", "f"]
        assert (m.backing / "f").read_bytes() == b"data"
        if m.passthrough:
            assert op_count(stats(m.mnt), "READ") == 0  # nothing to filter in reads: they stay passed through


def test_hide(tmp_path: Path, config: tuple[str, ...]) -> None:
    with fastpass_mount(tmp_path, *config, "--filter", "hide:pattern=*.secret,pattern=private/*") as m:
        b = m.backing
        (b / "key.secret").write_bytes(b"k")
        (b / "visible").write_bytes(b"v")
        (b / "private").mkdir()
        (b / "private" / "x").write_bytes(b"x")
        (b / "sub").mkdir()
        (b / "sub" / "deep.secret").write_bytes(b"d")
        (b / "sub" / "x").write_bytes(b"x")
        mnt = m.mnt
        assert sorted(os.listdir(mnt)) == ["private", "sub", "visible"]
        assert sorted(e.name for e in os.scandir(mnt / "sub")) == ["x"]
        assert os.listdir(mnt / "private") == []
        assert err(os.stat, mnt / "key.secret") == errno.ENOENT
        assert err(os.stat, mnt / "private" / "x") == errno.ENOENT
        assert err(open, mnt / "sub" / "deep.secret", "rb") == errno.ENOENT
        assert (mnt / "sub" / "x").read_bytes() == b"x" and (mnt / "visible").read_bytes() == b"v"
        # Making or replacing a hidden name: EACCES, and the hidden file is untouched.
        assert err(open, mnt / "key.secret", "wb") == errno.EACCES
        assert err(os.mkdir, mnt / "new.secret") == errno.EACCES
        assert err(os.symlink, "visible", mnt / "l.secret") == errno.EACCES
        assert err(os.link, mnt / "visible", mnt / "key.secret") == errno.EACCES
        assert err(os.rename, mnt / "visible", mnt / "key.secret") == errno.EACCES
        assert err(os.rename, mnt / "visible", mnt / "private" / "y") == errno.EACCES
        assert (b / "key.secret").read_bytes() == b"k" and (b / "visible").exists()
        assert not (b / "new.secret").exists() and not (b / "private" / "y").exists()


def test_hide_many_hidden_entries(tmp_path: Path) -> None:
    """Batches where every entry is hidden do not end the listing, and the lookups READDIRPLUS made
    for dropped entries are forgotten again."""
    with fastpass_mount(tmp_path, "--workers", "2", "--filter", "hide:pattern=h*") as m:
        d = m.backing / "d"
        d.mkdir()
        for i in range(3000):
            (d / f"h{i:05d}").write_bytes(b"")
        (d / "visible").write_bytes(b"")
        assert [e.name for e in os.scandir(m.mnt / "d")] == ["visible"]
        assert [e.is_file() for e in os.scandir(m.mnt / "d")] == [True]
        assert stats(m.mnt)["inodes"] < 10


def test_audit(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "on", "--filter", f"audit:path={log}") as m:
        with multiprocessing.get_context("fork").Pool(4) as pool:
            pool.map(_churn, [(m.mnt, i) for i in range(8)])
        assert err(os.stat, m.mnt / "absent") == errno.ENOENT
        deadline = time.monotonic() + 10  # idle workers write their buffers within about a second
        while b'"absent"' not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert b'"absent"' in log.read_bytes()
        s = stats(m.mnt)
        assert op_count(s, "WRITE") > 0 and op_count(s, "READ") > 0  # audit logs data: no passthrough
    lines = [json.loads(line) for line in log.read_text().splitlines()]  # every line whole
    assert {"time", "op", "uid", "gid", "pid", "path", "errno", "us"} <= set(lines[0])
    by_op: dict[str, list[dict]] = {}
    for line in lines:
        by_op.setdefault(line["op"], []).append(line)
    assert len(by_op["create"]) == 8 and len(by_op["unlink"]) == 8
    assert {line["path"] for line in by_op["create"]} == {f"f{i}" for i in range(8)}
    assert all(line["errno"] == 0 and line["uid"] == 0 and line["us"] > 0 for line in by_op["create"])
    assert sum(1 for line in by_op["write"] if line["path"].startswith("f")) >= 8
    assert {"path": "absent", "errno": errno.ENOENT} in [{k: line[k] for k in ("path", "errno")}
                                                         for line in by_op["lookup"]]  # fmt: skip
    assert len({line["pid"] for line in by_op["create"]}) > 1


def _churn(job: tuple[Path, int]) -> None:
    """Runs in a forked child: create, write, read back and remove one file."""
    mnt, i = job
    path = mnt / f"f{i}"
    path.write_bytes(b"x" * 100_000)
    assert path.read_bytes() == b"x" * 100_000
    path.unlink()


def test_quota(tmp_path: Path, config: tuple[str, ...]) -> None:
    with fastpass_mount(tmp_path, *config, "--filter", "quota:bytes=1M") as m:
        half = b"h" * (512 * 1024)
        fd = os.open(m.mnt / "a", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert os.write(fd, half) == len(half)
            assert os.pwrite(fd, half, 0) == len(half)  # rewriting in place is not growth
        finally:
            os.close(fd)
        fd = os.open(m.mnt / "b", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            assert os.write(fd, half) == len(half)
            assert err(os.write, fd, b"1") == errno.EDQUOT  # 1 MiB used: one more byte is past the limit
            assert err(os.truncate, m.mnt / "a", 2 << 20) == errno.EDQUOT
            if m.engine != "pyfuse3":  # no FALLOCATE through pyfuse3 (glibc then writes zeros itself)
                assert err(os.posix_fallocate, fd, 0, 2 << 20) == errno.EDQUOT
        finally:
            os.close(fd)
        assert (m.backing / "b").stat().st_size == len(half)  # the refused write changed nothing
        os.truncate(m.mnt / "a", 1000)  # shrinking gives bytes back
        with open(m.mnt / "c", "wb") as f:
            f.write(b"c" * (512 * 1024 - 2000))
        os.close(os.open(m.mnt / "b", os.O_WRONLY | os.O_TRUNC))  # so does O_TRUNC
        os.truncate(m.mnt / "b", 512 * 1024)  # and a truncate up is growth
        assert err(os.truncate, m.mnt / "b", 512 * 1024 + 1001) == errno.EDQUOT
        os.unlink(m.mnt / "c")  # removing is not shrinking: the bytes stay counted
        assert err(os.truncate, m.mnt / "b", 512 * 1024 + 1001) == errno.EDQUOT


def test_quota_is_shared_by_workers(tmp_path: Path) -> None:
    """Four writers on four workers: together they get the limit, not each."""
    with fastpass_mount(tmp_path, "--workers", "4", "--passthrough", "on", "--filter", "quota:bytes=4M") as m:
        with multiprocessing.get_context("fork").Pool(4) as pool:
            written = pool.map(_fill, [m.mnt / f"f{i}" for i in range(4)])
        assert sum(written) == 4 << 20
        assert sum((m.backing / f"f{i}").stat().st_size for i in range(4)) == 4 << 20
        assert len([w for w in stats(m.mnt)["workers"] if w["requests"]]) > 1


def _fill(path: Path) -> int:
    """Write 64 KiB at a time until EDQUOT; how much was written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    done = 0
    try:
        while True:
            try:
                done += os.write(fd, b"q" * 65536)
            except OSError as e:
                assert e.errno == errno.EDQUOT
                return done
    finally:
        os.close(fd)
