"""Running out of file descriptors: the opener alone sees it.

The server starts with RLIMIT_NOFILE 1024, soft and hard, as `(ulimit -n 1024; fastpass
mount ...)` gives it, and a caller holds more files open than that.  Opens past what a
worker may hold fail with EMFILE, and nothing else fails: names resolve, directories list
and change, every close() succeeds (its FLUSH, and under the writeback cache the writes of
the dirty pages, need no fd the worker cannot get), the data written before it is on the
backing, and once closed the files open again.

Under --allow-other one uid that holds files open until it is refused stops at its share
(half the fd limit by default), and root and a second uid still open, create and close.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ENGINES, fastpass_mount

from fastpass.stats import fetch
from tests.users import UID, as_user, drop

LIMIT = 1024
FILES = 1500
OTHER_UID = 1001
SHARED = {  # --allow-other configurations: both data paths, the writeback cache, libfuse
    "native-2": ("--workers", "2", "--passthrough", "off"),
    "native-2-passthrough": ("--workers", "2", "--passthrough", "on"),
    "native-2-writeback": ("--workers", "2", "--passthrough", "off", "--writeback-cache"),
    "pyfuse3": ("--engine", "pyfuse3"),
}


@pytest.fixture(autouse=True)
def _room_to_hold_them() -> Iterator[None]:
    """This process holds more files open than the server may: its own soft limit goes up for the test."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < FILES + 256:
        pytest.skip(f"the test needs {FILES + 256} fds of its own; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FILES + 256), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _files(backing: Path, n: int) -> list[str]:
    names = [f"f{i}" for i in range(n)]
    for name in names:
        (backing / name).write_bytes(b"")
        (backing / name).chmod(0o666)
    return names


@pytest.mark.parametrize("config", list(ENGINES))
def test_only_opens_fail_when_the_server_runs_out_of_fds(tmp_path: Path, config: str) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    names = _files(backing, FILES)
    held: dict[str, int] = {}
    with fastpass_mount(tmp_path, *ENGINES[config], nofile=LIMIT) as m:
        try:
            for name in names:
                try:
                    held[name] = os.open(m.mnt / name, os.O_RDWR)
                except OSError as e:
                    assert e.errno == errno.EMFILE, f"open of {name}: {e}"
            assert len(held) >= LIMIT // 2
            stats = fetch(str(m.mnt))
            assert stats.fd_limit == LIMIT and all(0 < w.fds <= LIMIT for w in stats.workers if w.alive)
            # While the worker's fds are spoken for, what opens nothing for the caller works.
            assert sorted(os.listdir(m.mnt)) == sorted(names)
            assert os.stat(m.mnt / names[-1]).st_size == 0
            os.mkdir(m.mnt / "d")
            os.rename(m.mnt / "d", m.mnt / "e")
            os.rmdir(m.mnt / "e")
            for name, fd in held.items():
                assert os.pwrite(fd, name.encode(), 0) == len(name)
            written = list(held)
            while held:
                os.close(held.popitem()[1])  # raises on an error of its FLUSH (or of the writeback it waits for)
        finally:
            for fd in held.values():
                os.close(fd)
        for name in written:
            assert (backing / name).read_bytes() == name.encode()
        for name in names[-10:]:  # fds given back: the ones refused before open now
            with open(m.mnt / name, "rb+") as f:
                f.write(b"again")
        assert (backing / names[-1]).read_bytes() == b"again"


@contextlib.contextmanager
def _holding(mnt: Path, names: list[str], uid: int) -> Iterator[tuple[int, int]]:
    """`uid`, in a child, opens the files in turn until one is refused and holds them; yields
    (how many it holds, the refusal's errno).  On leaving, it closes them, and a close that
    fails fails the test."""
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            drop(uid, uid, [])
            fds, refused = [], 0
            for name in names:
                try:
                    fds.append(os.open(mnt / name, os.O_RDWR))
                except OSError as e:
                    refused = e.errno
                    break
            os.write(out_w, f"{len(fds)} {refused}\n".encode())
            os.read(go_r, 1)
            failed = 0
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    failed += 1
            os.write(out_w, f"{failed}\n".encode())
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(out_w)

    poll = select.poll()
    poll.register(out_r, select.POLLIN)

    def line() -> bytes:
        data = b""
        deadline = time.monotonic() + 60
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            assert left > 0 and poll.poll(left * 1000), "the holding child hung"
            chunk = os.read(out_r, 64)
            assert chunk, "the holding child died"
            data += chunk
        return data

    try:
        count, refused = map(int, line().split())
        yield count, refused
        os.write(go_w, b"x")
        assert line() == b"0\n", "a close by the holding uid failed"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_w)
        os.close(out_r)


def _open_create_close(mnt: Path, name: str) -> str:
    with open(mnt / "f0", "rb+") as f:
        f.read(1)
    with open(mnt / name, "w") as f:
        f.write(name)
    return (mnt / name).read_text()


@pytest.mark.parametrize("config", list(SHARED))
def test_one_uid_out_of_its_share_leaves_root_and_others_room(world_dir: Path, config: str) -> None:
    backing = world_dir / "backing"
    backing.mkdir()
    backing.chmod(0o777)
    names = _files(backing, FILES)
    with fastpass_mount(world_dir, "--allow-other", *SHARED[config], nofile=LIMIT) as m:
        with _holding(m.mnt, names, UID) as (count, refused):
            assert (count, refused) == (LIMIT // 2, errno.EMFILE)  # the default share: half the fd limit
            assert _open_create_close(m.mnt, "by-root") == "by-root"
            assert as_user(_open_create_close, m.mnt, "by-other", uid=OTHER_UID, gid=OTHER_UID) == "by-other"
            with pytest.raises(OSError) as e:
                as_user(_open_create_close, m.mnt, "by-holder")
            assert e.value.errno == errno.EMFILE
        assert as_user(_open_create_close, m.mnt, "by-holder") == "by-holder"  # its files closed: room again


def test_the_share_is_an_option_counts_directories_and_binds_root(world_dir: Path) -> None:
    backing = world_dir / "backing"
    backing.mkdir()
    backing.chmod(0o777)
    names = _files(backing, 40)
    with fastpass_mount(world_dir, "--allow-other", "--workers", "2", "--max-open-per-user", "30") as m:

        def fill() -> tuple[int, int]:
            dirs = [os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY) for _ in range(10)]
            files = []
            try:
                for name in names:
                    files.append(os.open(m.mnt / name, os.O_RDWR))
            except OSError as e:
                return len(files), e.errno
            finally:
                for fd in dirs + files:
                    os.close(fd)
            return len(files), 0

        assert as_user(fill) == (20, errno.EMFILE)
        assert fill() == (20, errno.EMFILE)  # root has a share too, of the same size
