"""The inode table on a real mount: it grows past its first size while several workers serve a
walk, the kernel forgets cold inodes when fastpass asks (FUSE_NOTIFY_PRUNE), and under
--allow-other one uid at its share of the table leaves root and the other uids room."""

from __future__ import annotations

import errno
import json
import os
import pickle
import select
import signal
from pathlib import Path

import pytest
from conftest import bind_mount, fastpass_mount, run_fastpass, wait_for

from fastpass.fs.slots import FIRST_SLOTS
from tests.users import as_user, drop, wait_child

A, B = 1000, 1001  # the uid that fills its share, and another one


def _stats(mnt: Path) -> dict:
    r = run_fastpass("stats", str(mnt), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _count(s: dict, *names: str) -> int:
    return sum(o["count"] for o in s["ops"] if o["name"] in names)


def _tree(root: Path, dirs: int, files: int) -> None:
    for d in range(dirs):
        (root / f"d{d:02d}").mkdir()
        for i in range(files):
            (root / f"d{d:02d}" / f"f{i:03d}").write_bytes(b"x" * (i % 7))


def _walk(top: Path, retry_enfile: bool = False) -> tuple[dict[str, tuple], int]:
    """lstat of every name under `top` (relative path -> the fields a bind mount shows alike), and
    how many ENFILEs were retried."""
    seen: dict[str, tuple] = {}
    retried = 0
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            while True:
                try:
                    st = os.lstat(path)
                    break
                except OSError as e:
                    if not (retry_enfile and e.errno == errno.ENFILE):
                        raise
                    retried += 1
            seen[os.path.relpath(path, top)] = (st.st_mode, st.st_ino, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                                                st.st_mtime_ns)  # fmt: skip
    return seen, retried


def test_a_walk_past_the_first_table_size_matches_the_bind_mount(tmp_path: Path) -> None:
    """4,040 inodes through a table made for 1,024: it doubles twice while two workers serve the
    walk, each mapping what the other grew; every stat equals the bind mount's and nothing fails."""
    (tmp_path / "backing").mkdir()
    _tree(tmp_path / "backing", 40, 100)
    with fastpass_mount(tmp_path, "--workers", "2") as m:
        got, _ = _walk(m.mnt)
        s = _stats(m.mnt)
        assert s["errors"] == {}
        assert s["inode_slots"] >= 4 * FIRST_SLOTS  # (live inodes may be fewer: another drop_caches forgets)
        assert s["pruned"] == 0  # no bound near: nothing to prune
    with bind_mount(tmp_path) as b:
        want, _ = _walk(b.mnt)
    assert len(want) == 4040 and got == want


def test_near_the_bound_the_kernel_forgets_cold_inodes(tmp_path: Path) -> None:
    """--max-inodes 256 and a walk of 3,030 inodes: fastpass names cold inodes in FUSE_NOTIFY_PRUNE,
    the kernel sends their FORGETs, the table stays within its bound, and the walk sees what the
    bind mount shows (an ENFILE while the FORGETs were on their way would be retried and counted)."""
    (tmp_path / "backing").mkdir()
    _tree(tmp_path / "backing", 30, 100)
    with fastpass_mount(tmp_path, "--workers", "1", "--max-inodes", "256") as m:
        negotiated = _stats(m.mnt)["negotiated"]
        if negotiated["minor"] < 45:
            pytest.skip(f"FUSE_NOTIFY_PRUNE needs protocol 7.45 (Linux 6.18), the kernel has 7.{negotiated['minor']}")
        got, retried = _walk(m.mnt, retry_enfile=True)
        s = _stats(m.mnt)
        assert s["pruned"] > 0
        assert _count(s, "FORGET", "BATCH_FORGET") > 0  # the kernel forgot what it was asked to
        assert s["inodes"] <= 256 and s["inode_slots"] == FIRST_SLOTS  # never grown: slots were reused
        assert s["errors"].get("ENFILE", 0) == retried
    with bind_mount(tmp_path) as b:
        want, _ = _walk(b.mnt)
    assert got == want


def _hold_open(paths: list[Path], uid: int) -> tuple[int, int, int, int]:
    """A child as `uid` opens `paths` one by one and keeps them open until the first failure; returns
    (its pid, how many it holds, the failure's errno, a pipe) while it holds them.  A byte written
    to the pipe makes it close them and exit."""
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.close(r)
            os.close(go_w)
            drop(uid, uid, [])
            held, err = [], 0
            for path in paths:
                try:
                    held.append(os.open(path, os.O_RDONLY))
                except OSError as e:
                    err = e.errno
                    break
            os.write(w, pickle.dumps((len(held), err)))
            os.read(go_r, 1)
            for fd in held:
                os.close(fd)
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    try:
        if not select.select([r], [], [], 60)[0]:
            raise TimeoutError("the holding child did not report")
        n, err = pickle.loads(os.read(r, 4096))
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    return pid, n, err, go_w


def _open_create_close(directory: Path, name: str) -> bytes:
    """What a user does: read an existing file, create one, close both."""
    data = (directory / "shared").read_bytes()
    with open(directory / name, "wb") as f:
        f.write(b"mine")
    return data


def test_one_uid_at_its_share_leaves_root_and_another_uid_room(world_dir: Path) -> None:
    """--allow-other --max-inodes 200 (a uid's share by default: half, 100 inodes): uid A holds files open until
    ENFILE, at its share; root and uid B still open, create and close; once A closes its files,
    its cold inodes are pruned and it opens again."""
    with fastpass_mount(world_dir, "--allow-other", "--workers", "2", "--max-inodes", "200") as m:
        pub = m.backing / "pub"
        pub.mkdir()
        pub.chmod(0o777)
        for i in range(150):
            (pub / f"a{i:03d}").write_text("a")
        (pub / "shared").write_text("both")
        for path in pub.iterdir():
            path.chmod(0o644)
        pid, held, err, release = _hold_open([m.mnt / "pub" / f"a{i:03d}" for i in range(150)], A)
        try:
            assert err == errno.ENFILE
            assert 90 <= held <= 100  # its share, less what it looked up on the way (the pub directory)
            assert _open_create_close(m.mnt / "pub", "root-made") == b"both"  # root
            assert as_user(_open_create_close, m.mnt / "pub", "b-made", uid=B, gid=B) == b"both"
            assert os.stat(m.backing / "pub" / "b-made").st_uid == B
            with pytest.raises(OSError) as info:  # A itself: still at its share
                as_user(_open_create_close, m.mnt / "pub", "a-made", uid=A, gid=A)
            assert info.value.errno == errno.ENFILE
        finally:
            os.write(release, b"x")
            os.close(release)
            wait_child(pid, float("inf"), "holding child")

        def a_opens_again() -> bool:
            try:
                return as_user(_open_create_close, m.mnt / "pub", "a-made", uid=A, gid=A) == b"both"
            except OSError as e:
                assert e.errno == errno.ENFILE, e
                return False

        assert wait_for(a_opens_again, 30, interval=0.1)  # after the FORGETs of its pruned inodes
        assert _stats(m.mnt)["pruned"] > 0
