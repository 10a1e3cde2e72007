"""The shared attribute cache and coherence with the backing (--cache, --revalidate).

Out-of-band changes are made directly in the backing directory while the
kernel holds everything for 60 s; each must show through the mount within
a second.  Changes made through the mount must never leave a stale size or
mtime behind, on any worker, and must not come back as invalidations.
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Mounted, fastpass_mount, run_fastpass, wait_for
from tests.integration.test_cli import assert_refused
from tests.integration.test_passthrough import op_count, stats

LONG = ("--attr-timeout", "60", "--entry-timeout", "60")
CONFIGS = {"w1": ("--workers", "1", "--passthrough", "off"), "w4": ("--workers", "4", "--passthrough", "on"),
           "wb2": ("--workers", "2", "--passthrough", "off", "--writeback-cache"),
           "pyfuse3": ("--engine", "pyfuse3")}  # fmt: skip
SEEN_WITHIN = 1.0  # s, the bound the issue sets for an outside change to show


@pytest.fixture(params=list(CONFIGS))
def watched(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mounted]:
    """A mount that may trust everything for 60 s: only the watcher can make changes show."""
    with fastpass_mount(tmp_path, *CONFIGS[request.param], *LONG) as m:
        yield m


def shows(check: Callable[[], bool], within: float = SEEN_WITHIN) -> bool:
    return wait_for(check, within, interval=0.005)


def lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def test_watched_mount_reports_fanotify_and_long_timeouts(watched: Mounted) -> None:
    c = stats(watched.mnt)["cache"]
    assert (c["mode"], c["coherence"], c["attr_timeout"], c["entry_timeout"]) == ("auto", "fanotify", 60.0, 60.0)
    assert c["watcher_pid"] > 0


# --- out-of-band changes, each seen within a second -------------------------------------
def test_append(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"one\n")
    assert (watched.mnt / "f").read_bytes() == b"one\n"  # attributes and pages now cached
    with open(watched.backing / "f", "ab") as f:
        f.write(b"two\n")
    assert shows(lambda: (watched.mnt / "f").stat().st_size == 8)
    assert (watched.mnt / "f").read_bytes() == b"one\ntwo\n"


def test_overwrite_in_place_drops_cached_pages(watched: Mounted) -> None:
    """Same size, new bytes: only the data changed, so the page cache must go too."""
    (watched.backing / "f").write_bytes(b"a" * 8192)
    assert (watched.mnt / "f").read_bytes() == b"a" * 8192
    with open(watched.backing / "f", "r+b") as f:
        f.write(b"b" * 8192)
    assert shows(lambda: (watched.mnt / "f").read_bytes() == b"b" * 8192)


def test_truncate(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"x" * 10000)
    assert (watched.mnt / "f").stat().st_size == 10000
    os.truncate(watched.backing / "f", 10)
    assert shows(lambda: (watched.mnt / "f").stat().st_size == 10)
    assert (watched.mnt / "f").read_bytes() == b"x" * 10


def test_chmod_and_chown(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"")
    (watched.backing / "d").mkdir()
    for name in ("f", "d"):
        (watched.mnt / name).stat()
        os.chmod(watched.backing / name, 0o640)
        os.chown(watched.backing / name, 1234, 5678)
        assert shows(lambda n=name: stat.S_IMODE((watched.mnt / n).stat().st_mode) == 0o640)
        assert shows(lambda n=name: ((watched.mnt / n).stat().st_uid, (watched.mnt / n).stat().st_gid) == (1234, 5678))


def test_mtime(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"")
    (watched.mnt / "f").stat()
    os.utime(watched.backing / "f", ns=(1_000_000_000, 2_000_000_000))
    assert shows(lambda: (watched.mnt / "f").stat().st_mtime_ns == 2_000_000_000)


def test_create(watched: Mounted) -> None:
    assert lstat_or_none(watched.mnt / "new") is None
    assert os.listdir(watched.mnt) == []
    (watched.backing / "new").write_bytes(b"hello")
    assert shows(lambda: lstat_or_none(watched.mnt / "new") is not None)
    assert (watched.mnt / "new").read_bytes() == b"hello"
    assert os.listdir(watched.mnt) == ["new"]


def test_unlink(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"data")
    assert (watched.mnt / "f").read_bytes() == b"data"
    os.unlink(watched.backing / "f")
    assert shows(lambda: lstat_or_none(watched.mnt / "f") is None)
    assert os.listdir(watched.mnt) == []


def test_unlink_of_a_file_open_through_the_mount(watched: Mounted) -> None:
    """The kernel holds the inode: its link count must drop to 0, as on the backing."""
    (watched.backing / "f").write_bytes(b"data")
    with open(watched.mnt / "f", "rb") as f:
        assert os.fstat(f.fileno()).st_nlink == 1
        os.unlink(watched.backing / "f")
        assert shows(lambda: os.fstat(f.fileno()).st_nlink == 0)
        assert f.read() == b"data"


def test_rename(watched: Mounted) -> None:
    (watched.backing / "a").mkdir()
    (watched.backing / "b").mkdir()
    (watched.backing / "a" / "f").write_bytes(b"moved")
    assert (watched.mnt / "a" / "f").read_bytes() == b"moved"
    assert lstat_or_none(watched.mnt / "b" / "g") is None
    os.rename(watched.backing / "a" / "f", watched.backing / "b" / "g")
    assert shows(lambda: lstat_or_none(watched.mnt / "a" / "f") is None)
    assert shows(lambda: lstat_or_none(watched.mnt / "b" / "g") is not None)
    assert (watched.mnt / "b" / "g").read_bytes() == b"moved"
    assert os.listdir(watched.mnt / "a") == [] and os.listdir(watched.mnt / "b") == ["g"]


def test_rename_over_an_existing_name(watched: Mounted) -> None:
    (watched.backing / "old").write_bytes(b"old")
    (watched.backing / "new").write_bytes(b"replacement")
    assert (watched.mnt / "old").read_bytes() == b"old"
    assert (watched.mnt / "new").read_bytes() == b"replacement"
    os.rename(watched.backing / "new", watched.backing / "old")
    assert shows(lambda: (watched.mnt / "old").read_bytes() == b"replacement")
    assert shows(lambda: lstat_or_none(watched.mnt / "new") is None)


def test_mkdir_and_rmdir(watched: Mounted) -> None:
    assert lstat_or_none(watched.mnt / "d") is None
    nlink = (watched.mnt).stat().st_nlink
    os.mkdir(watched.backing / "d")
    assert shows(lambda: lstat_or_none(watched.mnt / "d") is not None)
    assert shows(lambda: watched.mnt.stat().st_nlink == nlink + 1)
    (watched.backing / "d" / "inside").write_bytes(b"x")
    assert shows(lambda: os.listdir(watched.mnt / "d") == ["inside"])
    os.unlink(watched.backing / "d" / "inside")
    os.rmdir(watched.backing / "d")
    assert shows(lambda: lstat_or_none(watched.mnt / "d") is None)
    assert shows(lambda: watched.mnt.stat().st_nlink == nlink)


def test_symlink_and_hard_link(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"x")
    assert (watched.mnt / "f").stat().st_nlink == 1
    os.link(watched.backing / "f", watched.backing / "g")
    os.symlink("f", watched.backing / "s")
    assert shows(lambda: (watched.mnt / "f").stat().st_nlink == 2)
    assert shows(lambda: lstat_or_none(watched.mnt / "s") is not None)
    assert os.readlink(watched.mnt / "s") == "f"


def test_xattr(watched: Mounted) -> None:
    (watched.backing / "f").write_bytes(b"")
    ctime = (watched.mnt / "f").stat().st_ctime_ns
    time.sleep(0.01)
    os.setxattr(watched.backing / "f", "user.k", b"v")
    assert os.getxattr(watched.mnt / "f", "user.k") == b"v"  # never cached
    assert shows(lambda: (watched.mnt / "f").stat().st_ctime_ns > ctime)


def test_deep_tree_made_behind_its_back(watched: Mounted) -> None:
    """Directories made after the mount are watched too (one filesystem mark, no per-directory watch)."""
    deep = watched.backing / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"1")
    assert shows(lambda: (watched.mnt / "a" / "b" / "c" / "f").read_bytes() == b"1")
    with open(deep / "f", "ab") as f:
        f.write(b"2")
    assert shows(lambda: (watched.mnt / "a" / "b" / "c" / "f").read_bytes() == b"12")


def test_a_filesystem_mounted_inside_the_backing_is_revalidated(watched: Mounted) -> None:
    """A tmpfs mounted inside the backing raises no events on the watched filesystem: its inodes
    get the revalidation period, so its outside changes show within it (1 s), not 60 s; and
    the watched filesystem's own inodes keep their long timeouts."""
    if watched.writeback:
        pytest.skip("writeback cache: the kernel keeps the size of a file it holds, and no event evicts the inodes "
                    "of an unwatched filesystem (docs/caching.md)")  # fmt: skip
    nested = watched.backing / "nested"
    nested.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(nested)], check=True)
    try:
        (nested / "f").write_bytes(b"one")
        (watched.backing / "home").write_bytes(b"one")
        assert (watched.mnt / "nested" / "f").read_bytes() == b"one"
        assert os.stat(watched.mnt / "nested" / "f").st_dev == os.stat(watched.mnt).st_dev  # one mount
        (nested / "f").write_bytes(b"three")
        (nested / "g").write_bytes(b"new")
        os.chmod(nested / "f", 0o600)
        assert wait_for(lambda: (watched.mnt / "nested" / "f").stat().st_size == 5, 2.5, interval=0.05)
        assert stat.S_IMODE((watched.mnt / "nested" / "f").stat().st_mode) == 0o600
        assert (watched.mnt / "nested" / "f").read_bytes() == b"three"
        assert wait_for(lambda: (watched.mnt / "nested" / "g").exists(), 2.5, interval=0.05)
        assert sorted(os.listdir(watched.mnt / "nested")) == ["f", "g"]
        fd = os.open(watched.mnt / "nested" / "f", os.O_RDONLY)  # statx, as `stat` asks
        try:
            assert os.stat(fd).st_size == 5
        finally:
            os.close(fd)
    finally:
        subprocess.run(["umount", "-l", str(nested)], check=True)


def test_many_changes_all_show(watched: Mounted) -> None:
    """A burst of changes: every one shows, none is lost to event merging."""
    names = [f"f{i:03d}" for i in range(200)]
    for n in names:
        (watched.backing / n).write_bytes(b"")
    for n in names:
        (watched.mnt / n).stat()
    for i, n in enumerate(names):
        (watched.backing / n).write_bytes(b"x" * i)
    assert shows(lambda: [(watched.mnt / n).stat().st_size for n in names] == list(range(200)), 2 * SEEN_WITHIN)


# --- changes through the mount ----------------------------------------------------------
# --- pages and listings the kernel keeps across opens, while the watcher keeps them true ----
USERSPACE = ("--workers", "2", "--passthrough", "off", *LONG)


def _backing(tmp_path: Path, names: set[str], size: int) -> None:
    """Files made before the mount: no watcher event of theirs can drop what the test reads."""
    (tmp_path / "backing").mkdir()
    for name in names:
        (tmp_path / "backing" / name).write_bytes(b"x" * size)


def _listings(mnt: Path) -> int:
    s = stats(mnt)
    return op_count(s, "READDIR") + op_count(s, "READDIRPLUS")


def test_reopened_file_is_read_from_kept_pages(tmp_path: Path) -> None:
    _backing(tmp_path, {"f"}, 65536)
    with fastpass_mount(tmp_path, *USERSPACE) as m:
        assert (m.mnt / "f").read_bytes() == b"x" * 65536
        reads = op_count(stats(m.mnt), "READ")
        for _ in range(5):
            assert (m.mnt / "f").read_bytes() == b"x" * 65536
        assert op_count(stats(m.mnt), "READ") == reads  # every reopen read the kernel's pages
        (m.backing / "f").write_bytes(b"y" * 65536)  # outside: same size, new bytes
        assert shows(lambda: (m.mnt / "f").read_bytes() == b"y" * 65536)
        with open(m.mnt / "f", "r+b") as f:  # through the mount: every later open sees it at once
            f.write(b"z" * 4096)
        assert (m.mnt / "f").read_bytes() == b"z" * 4096 + b"y" * 61440


def test_listing_is_kept_until_the_backing_changes(tmp_path: Path) -> None:
    names = {f"n{i:03}" for i in range(100)}
    _backing(tmp_path, names, 0)
    with fastpass_mount(tmp_path, *USERSPACE) as m:
        assert set(os.listdir(m.mnt)) == names
        listings = _listings(m.mnt)
        for _ in range(5):
            assert set(os.listdir(m.mnt)) == names
        assert _listings(m.mnt) == listings  # every reopen listed the kernel's cache
        (m.backing / "outside").write_bytes(b"")
        assert shows(lambda: set(os.listdir(m.mnt)) == names | {"outside"})
        os.unlink(m.backing / "n000")
        os.rename(m.backing / "n001", m.backing / "renamed")
        want = names - {"n000", "n001"} | {"outside", "renamed"}
        assert shows(lambda: set(os.listdir(m.mnt)) == want)
        (m.mnt / "inside").write_bytes(b"")  # through the mount: the kernel drops its own cache
        os.unlink(m.mnt / "n002")
        assert set(os.listdir(m.mnt)) == want - {"n002"} | {"inside"}


@pytest.mark.parametrize("mode", [("--revalidate", "1"), ("--cache", "strict")], ids=["revalidate", "strict"])
def test_without_a_watcher_nothing_is_kept_across_opens(tmp_path: Path, mode: tuple[str, str]) -> None:
    """No watcher, so no one would drop stale pages: every open reads and lists the backing again."""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off", *mode) as m:
        (m.backing / "f").write_bytes(b"x" * 8192)
        assert (m.mnt / "f").read_bytes() == b"x" * 8192
        assert os.listdir(m.mnt) == ["f"]
        reads, listings = op_count(stats(m.mnt), "READ"), _listings(m.mnt)
        assert (m.mnt / "f").read_bytes() == b"x" * 8192
        assert os.listdir(m.mnt) == ["f"]
        assert op_count(stats(m.mnt), "READ") > reads
        assert _listings(m.mnt) > listings


def test_own_changes_are_not_echoed(tmp_path: Path) -> None:
    """With passthrough off every change is a worker's: the watcher must send nothing."""
    with fastpass_mount(tmp_path, "--workers", "2", "--passthrough", "off", *LONG) as m:
        (m.mnt / "d").mkdir()
        for i in range(50):
            p = m.mnt / "d" / f"f{i}"
            p.write_bytes(b"x" * i)
            os.chmod(p, 0o600)
            os.rename(p, m.mnt / "d" / f"g{i}")
            os.setxattr(m.mnt / "d" / f"g{i}", "user.k", b"v")
        for i in range(0, 50, 2):
            os.unlink(m.mnt / "d" / f"g{i}")
        os.truncate(m.mnt / "d" / "g1", 0)
        time.sleep(0.2)  # the watcher's batch pause, several times over
        assert stats(m.mnt)["cache"]["invalidations"] == 0
        os.chmod(m.backing / "d" / "g1", 0o644)  # and an outside change still is
        assert wait_for(lambda: stats(m.mnt)["cache"]["invalidations"] > 0, SEEN_WITHIN)


def _churn(mnt: Path, backing: Path, seed: int, steps: int) -> str:
    """Random writes, appends and truncates to one file; after each, the mount's size and mtime
    must be the backing's.  Returns the first difference, or ""."""
    rng = random.Random(seed)
    name = f"f{seed}"
    with open(mnt / name, "wb"):
        pass
    for step in range(steps):
        kind = rng.choice(("write", "append", "truncate", "reopen-write"))
        path = mnt / name
        if kind == "write":
            with open(path, "r+b") as f:
                f.seek(rng.randrange(0, 1 << 16))
                f.write(os.urandom(rng.randrange(1, 5000)))
        elif kind == "append":
            with open(path, "ab") as f:
                f.write(os.urandom(rng.randrange(1, 3000)))
        elif kind == "truncate":
            os.truncate(path, rng.randrange(0, 1 << 16))
        else:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.write(fd, os.urandom(rng.randrange(0, 7000)))
            os.close(fd)
        ours, truth = os.stat(path), os.stat(backing / name)
        if (ours.st_size, ours.st_mtime_ns) != (truth.st_size, truth.st_mtime_ns):
            return f"{name} step {step} ({kind}): mount {ours.st_size}/{ours.st_mtime_ns}, " \
                   f"backing {truth.st_size}/{truth.st_mtime_ns}"
    return ""


@pytest.mark.parametrize("passthrough", ["off", "on"])
def test_no_stale_size_or_mtime_under_concurrency(tmp_path: Path, passthrough: str) -> None:
    """Six processes churn their own files through 4 workers; every stat after every change is exact."""
    with fastpass_mount(tmp_path, "--workers", "4", "--passthrough", passthrough, *LONG) as m:
        pids = {}
        for seed in range(6):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                code = 1
                try:
                    os.write(w, _churn(m.mnt, m.backing, seed, 150).encode())
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            pids[pid] = r
        problems = []
        for pid, r in pids.items():
            with os.fdopen(r, "rb") as f:
                problems.append(f.read().decode())
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
        assert not any(problems), problems
        s = stats(m.mnt)
        assert sum(w["requests"] for w in s["workers"] if w["requests"]) and len(
            [w for w in s["workers"] if w["requests"]]) > 1, "the churn should have spread over workers"


def test_cache_answers_getattr_after_writes(tmp_path: Path) -> None:
    """A write refreshes the entry, so the GETATTR the kernel sends next is a hit."""
    with fastpass_mount(tmp_path, "--workers", "1", "--passthrough", "off", *LONG) as m:
        with open(m.mnt / "f", "wb") as f:
            for i in range(20):
                f.write(b"x" * 100)
                f.flush()
                assert os.fstat(f.fileno()).st_size == 100 * (i + 1)
        c = stats(m.mnt)["cache"]
        assert c["hits"] >= 10, c
        assert (m.mnt / "f").stat().st_size == (m.backing / "f").stat().st_size == 2000


def test_eviction_keeps_results_right(tmp_path: Path) -> None:
    """A 16-entry cache under a 300-file tree: evictions happen, answers stay the backing's."""
    backing = tmp_path / "backing"
    backing.mkdir()
    for i in range(300):
        (backing / f"f{i}").write_bytes(b"x" * i)
    with fastpass_mount(tmp_path, "--cache-size", "16", "--workers", "2", "--passthrough", "off",
                        "--attr-timeout", "0", "--entry-timeout", "60") as m:  # fmt: skip
        for _ in range(2):
            for i in range(300):
                assert (m.mnt / f"f{i}").stat().st_size == i
        for i in range(0, 300, 3):
            os.truncate(m.backing / f"f{i}", 1)
        for i in range(300):
            assert (m.mnt / f"f{i}").stat().st_size == (1 if i % 3 == 0 else i)
        c = stats(m.mnt)["cache"]
        assert c["size"] == 16 and c["evictions"] > 250 and c["hits"] > 0, c


# --- the other modes ------------------------------------------------------------------------
def test_cache_off_keeps_nothing_and_watches_nothing(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--cache", "off", "--passthrough", "off") as m:
        (m.mnt / "f").write_bytes(b"x")
        for _ in range(3):
            (m.mnt / "f").stat()
        c = stats(m.mnt)["cache"]
        assert (c["mode"], c["coherence"], c["attr_timeout"], c["entry_timeout"]) == ("off", "kernel timeouts", 1, 1)
        assert (c["hits"], c["misses"], c["size"], c["watcher_pid"]) == (0, 0, 0, 0)
        # outside changes still show, within the kernel's 1 s
        with open(m.backing / "f", "ab") as f:
            f.write(b"y")
        assert wait_for(lambda: (m.mnt / "f").stat().st_size == 2, 3)


def test_strict_sees_outside_changes_at_once(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--cache", "strict") as m:
        (m.backing / "f").write_bytes(b"x")
        assert (m.mnt / "f").read_bytes() == b"x"
        for i in range(5):
            with open(m.backing / "f", "ab") as f:
                f.write(b"y")
            assert (m.mnt / "f").stat().st_size == 2 + i  # no waiting at all
            assert (m.mnt / "f").read_bytes() == b"x" + b"y" * (i + 1)
        os.unlink(m.backing / "f")
        assert lstat_or_none(m.mnt / "f") is None
        c = stats(m.mnt)["cache"]
        assert (c["attr_timeout"], c["entry_timeout"], c["watcher_pid"]) == (0, 0, 0)


def test_revalidate_bounds_staleness_without_a_watcher(tmp_path: Path) -> None:
    """--revalidate: no watcher; the kernel's timeouts are capped at S whatever was asked."""
    with fastpass_mount(tmp_path, "--revalidate", "0.3", "--passthrough", "off", *LONG) as m:
        c = stats(m.mnt)["cache"]
        assert (c["coherence"], c["attr_timeout"], c["entry_timeout"], c["watcher_pid"]) == \
               ("revalidate 0.3 s", 0.3, 0.3, 0)  # fmt: skip
        (m.backing / "f").write_bytes(b"x")
        assert (m.mnt / "f").stat().st_size == 1
        with open(m.backing / "f", "ab") as f:
            f.write(b"y")
        os.chmod(m.backing / "f", 0o600)
        start = time.monotonic()
        assert wait_for(lambda: (m.mnt / "f").stat().st_size == 2, 2)
        assert stat.S_IMODE((m.mnt / "f").stat().st_mode) == 0o600
        assert time.monotonic() - start < 1.0
        assert stats(m.mnt)["cache"]["invalidations"] == 0


@pytest.mark.parametrize("args, message", [
    (("--cache", "off", "--revalidate", "1"), "--revalidate applies to --cache auto only"),
    (("--cache-size", "0"), "--cache-size must be at least 1"),
    (("--revalidate", "-1"), "--revalidate must not be negative"),
    (("--attr-timeout", "-1"), "--attr-timeout must not be negative"),
])  # fmt: skip
def test_bad_cache_options_are_refused(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    backing, mnt = tmp_path / "b", tmp_path / "m"
    backing.mkdir()
    mnt.mkdir()
    r = run_fastpass("mount", str(backing), str(mnt), *args)
    assert_refused(r.returncode, r.stdout, r.stderr, message)
    assert not os.path.ismount(mnt)
    r = run_fastpass("mount", str(backing), str(mnt), "--cache", "sometimes")
    assert r.returncode == 2 and "invalid choice" in r.stderr and not os.path.ismount(mnt)


def test_watcher_killed_is_replaced(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, *LONG) as m:
        first = stats(m.mnt)["cache"]["watcher_pid"]
        os.kill(first, 9)
        assert wait_for(lambda: stats(m.mnt)["cache"]["watcher_pid"] not in (0, first), 5)
        (m.backing / "f").write_bytes(b"x")
        assert (m.mnt / "f").stat().st_size == 1
        with open(m.backing / "f", "ab") as f:
            f.write(b"y")
        assert shows(lambda: (m.mnt / "f").stat().st_size == 2)
        assert stats(m.mnt)["restarts"] == 1
        m.allowed_log_errors.append("exited with -9")


@pytest.mark.parametrize("config", ["w1", "wb2"])
def test_a_watcher_whose_queue_overflowed_drops_what_the_kernel_keeps(tmp_path: Path, config: str) -> None:
    """Changes lost to a full fanotify queue (the watcher stopped while 17,000 names were made) still
    show: on the overflow event every attribute, page and name the kernel keeps is dropped."""
    with fastpass_mount(tmp_path, *CONFIGS[config], *LONG) as m:
        (m.backing / "f").write_bytes(b"a" * 10)
        assert (m.mnt / "f").stat().st_size == 10 and (m.mnt / "f").read_bytes() == b"a" * 10
        assert not (m.mnt / "new").exists()
        watcher = stats(m.mnt)["cache"]["watcher_pid"]
        os.kill(watcher, signal.SIGSTOP)
        try:
            (m.backing / "many").mkdir()
            for i in range(17_000):  # more events than fanotify queues (16,384 by default)
                (m.backing / "many" / str(i)).touch()
            (m.backing / "f").write_bytes(b"b" * 20)
            (m.backing / "new").touch()
        finally:
            os.kill(watcher, signal.SIGCONT)
        assert shows(lambda: (m.mnt / "f").stat().st_size == 20 and (m.mnt / "new").exists(), 5)
        assert (m.mnt / "f").read_bytes() == b"b" * 20
        assert "fanotify queue overflowed" in m.log.read_text()
