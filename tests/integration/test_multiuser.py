"""Several users on one mount, and a mount made by a user who is not root.

With --allow-other each request runs with the caller's fsuid, fsgid and
supplementary groups, so the backing's own permission checks and ownership
rules apply to the caller.  Without it the kernel lets nobody but the
mounter in.  A non-root user mounts through fusermount3.

Acting as another user: the interpreter lives under /root (mode 0700), so a
subprocess started with `user=1000` cannot exec it.  `as_user` (tests/users.py)
forks this process and drops to the uid/gid/groups in the child (setgroups, setresgid,
setresuid: no capability survives), runs a function there and sends its
result or OSError back through a pipe.  `run_cli_as` does the same around
`fastpass.cli.main()`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import MNT_DETACH, _libc, fastpass_mount, is_mounted, wait_for

from tests.users import GID, UID, as_user, run_cli_as

OTHER_GROUP = 4242


# --- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def user1000():
    """uid 1000 with a passwd entry (fusermount3 wants one); created with useradd if missing."""
    created = False
    try:
        import pwd

        pwd.getpwuid(UID)
    except KeyError:
        subprocess.run(["useradd", "-u", str(UID), "-U", "-M", "-s", "/usr/sbin/nologin", "fastpass-test"],
                       check=True, capture_output=True)  # fmt: skip
        created = True
    yield UID
    if created:
        subprocess.run(["userdel", "fastpass-test"], check=False, capture_output=True)


@pytest.fixture(scope="session")
def dev_fuse_for_users(user1000):
    """fusermount3 opens /dev/fuse as the user: make it 0666 as distributions do, for the session.

    This machine has no udev rule for it (it comes up 0600 root).  The mode is
    put back afterwards unless someone changed it meanwhile.
    """
    import stat as stat_

    before = stat_.S_IMODE(os.stat("/dev/fuse").st_mode)
    changed = before & 0o006 != 0o006
    if changed:
        os.chmod("/dev/fuse", 0o666)
    yield
    if changed and stat_.S_IMODE(os.stat("/dev/fuse").st_mode) == 0o666:
        os.chmod("/dev/fuse", before)


SHARED = {"w1": ("--workers", "1"), "w4": ("--workers", "4"), "pyfuse3": ("--engine", "pyfuse3")}


@pytest.fixture(params=list(SHARED))
def shared(request, world_dir, user1000):
    """A root mount with --allow-other (1 and 4 workers, and pyfuse3) of a backing dir with a world-writable `pub`."""
    with fastpass_mount(world_dir, "--allow-other", *SHARED[request.param]) as m:
        pub = m.backing / "pub"
        pub.mkdir()
        pub.chmod(0o777)
        yield m


# --- --allow-other: the caller's own credentials ----------------------------------------------
def _create(path: Path, data: bytes) -> tuple[int, int]:
    path.write_bytes(data)
    st = os.stat(path)
    return st.st_uid, st.st_gid


def test_file_created_by_user_is_owned_by_user(shared):
    owner = as_user(_create, shared.mnt / "pub" / "mine", b"data of 1000")
    assert owner == (UID, GID), "the mount reports the wrong owner"
    st = os.stat(shared.backing / "pub" / "mine")
    assert (st.st_uid, st.st_gid) == (UID, GID), "the backing file is not owned by its creator"
    assert (shared.backing / "pub" / "mine").read_bytes() == b"data of 1000"


def test_directory_created_by_user_is_owned_by_user(shared):
    def mkdir_and_fill(path: Path) -> tuple[int, int]:
        os.mkdir(path, 0o755)
        (path / "inner").write_text("x")
        os.symlink("inner", path / "link")
        st = os.stat(path)
        return st.st_uid, st.st_gid

    assert as_user(mkdir_and_fill, shared.mnt / "pub" / "dir") == (UID, GID)
    for name in ("dir", "dir/inner", "dir/link"):
        st = os.lstat(shared.backing / "pub" / name)
        assert (st.st_uid, st.st_gid) == (UID, GID), name


def test_user_cannot_read_root_private_file(shared):
    secret = shared.backing / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    for mode in ("rb", "r+b", "ab"):
        with pytest.raises(PermissionError) as exc:
            as_user(lambda p, m: open(p, m).close(), shared.mnt / "secret", mode)
        assert exc.value.errno == errno.EACCES, mode
    # Root still can, through the same mount.
    assert (shared.mnt / "secret").read_text() == "root only"


def test_user_cannot_create_in_root_dir(shared):
    root_dir = shared.backing / "rootdir"
    root_dir.mkdir()
    root_dir.chmod(0o755)
    calls: list[tuple[str, Callable[[Path], Any]]] = [
        ("create", lambda d: open(d / "new", "xb").close()),
        ("mkdir", lambda d: os.mkdir(d / "newdir")),
        ("symlink", lambda d: os.symlink("x", d / "newlink")),
        ("mknod", lambda d: os.mkfifo(d / "fifo")),
    ]
    for what, call in calls:
        with pytest.raises(PermissionError) as exc:
            as_user(call, shared.mnt / "rootdir")
        assert exc.value.errno == errno.EACCES, what
    assert os.listdir(root_dir) == []


def test_user_cannot_remove_or_rename_in_root_dir(shared):
    root_dir = shared.backing / "rootdir"
    root_dir.mkdir()
    (root_dir / "f").write_text("x")
    (root_dir / "f").chmod(0o666)
    for what, call in [("unlink", lambda d: os.unlink(d / "f")), ("rename", lambda d: os.rename(d / "f", d / "g"))]:
        with pytest.raises(PermissionError) as exc:
            as_user(call, shared.mnt / "rootdir")
        assert exc.value.errno == errno.EACCES, what
    # ... but writing a world-writable file is allowed.
    as_user(lambda p: p.write_text("written by 1000"), shared.mnt / "rootdir" / "f")
    assert (root_dir / "f").read_text() == "written by 1000"
    assert os.stat(root_dir / "f").st_uid == 0


def test_user_cannot_chown_or_chmod_others_files(shared):
    (shared.backing / "pub" / "rootfile").write_text("x")
    with pytest.raises(PermissionError) as exc:
        as_user(os.chmod, shared.mnt / "pub" / "rootfile", 0o777)
    assert exc.value.errno == errno.EPERM
    as_user(_create, shared.mnt / "pub" / "mine", b"")
    with pytest.raises(PermissionError) as exc:
        as_user(os.chown, shared.mnt / "pub" / "mine", 0, 0)
    assert exc.value.errno == errno.EPERM
    assert os.stat(shared.backing / "pub" / "mine").st_uid == UID


def test_supplementary_groups(shared):
    f = shared.backing / "group_file"
    f.write_text("for group 4242")
    os.chown(f, 0, OTHER_GROUP)
    f.chmod(0o640)
    read = lambda p: p.read_text()
    assert as_user(read, shared.mnt / "group_file", groups=[OTHER_GROUP]) == "for group 4242"
    with pytest.raises(PermissionError) as exc:
        as_user(read, shared.mnt / "group_file", groups=[])
    assert exc.value.errno == errno.EACCES
    # And with the group again, right after (no stale per-caller cache either way).
    assert as_user(read, shared.mnt / "group_file", groups=[OTHER_GROUP]) == "for group 4242"


def test_supplementary_group_dir_create(shared):
    d = shared.backing / "gdir"
    d.mkdir()
    os.chown(d, 0, OTHER_GROUP)
    d.chmod(0o770)
    as_user(lambda p: p.write_text("ok"), shared.mnt / "gdir" / "f", groups=[OTHER_GROUP])
    st = os.stat(d / "f")
    assert (st.st_uid, st.st_gid) == (UID, GID)
    with pytest.raises(PermissionError):
        as_user(lambda p: p.write_text("no"), shared.mnt / "gdir" / "g", groups=[])
    assert not (d / "g").exists()


def test_setgid_directory_group_inherited(shared):
    d = shared.backing / "sgid"
    d.mkdir()
    os.chown(d, 0, OTHER_GROUP)
    d.chmod(0o2777)
    as_user(lambda p: p.write_text("x"), shared.mnt / "sgid" / "f")
    st = os.stat(d / "f")
    assert (st.st_uid, st.st_gid) == (UID, OTHER_GROUP)


def test_caller_umask_applies(shared):
    def make(d: Path) -> tuple[int, int, int]:
        os.umask(0o027)
        (d / "f").write_text("x")
        os.mkdir(d / "dir")
        os.mkfifo(d / "fifo")
        return tuple(os.stat(d / n).st_mode & 0o7777 for n in ("f", "dir", "fifo"))  # type: ignore[return-value]

    assert as_user(make, shared.mnt / "pub") == (0o640, 0o750, 0o640)
    assert [os.stat(shared.backing / "pub" / n).st_mode & 0o7777 for n in ("f", "dir", "fifo")] == [0o640, 0o750, 0o640]


def test_access_checks_the_caller(shared):
    secret = shared.backing / "secret"
    secret.write_text("x")
    secret.chmod(0o600)
    mine = shared.backing / "pub" / "mine"
    mine.write_text("x")
    os.chown(mine, UID, GID)
    mine.chmod(0o700)

    def probe(p: Path) -> tuple[bool, bool, bool]:
        return os.access(p, os.R_OK), os.access(p, os.W_OK), os.access(p, os.X_OK)

    assert as_user(probe, shared.mnt / "secret") == (False, False, False)
    assert as_user(probe, shared.mnt / "pub" / "mine") == (True, True, True)
    assert probe(shared.mnt / "secret") == (True, True, False)  # root: no x bit, no X_OK


def test_listing_without_search_permission_shows_names_only(shared):
    """A directory the user may read but not search (r--): its names are listed, each stat is
    EACCES, as on the backing: the entries were resolved as the caller (on the ring by default)."""
    d = shared.backing / "nosearch"
    d.mkdir()
    for i in range(40):
        (d / f"f{i}").write_text("x")
    d.chmod(0o744)

    def ls_l(p: Path) -> list[tuple[str, int]]:
        out = []
        for name in sorted(os.listdir(p)):
            try:
                os.lstat(p / name)
                out.append((name, 0))
            except OSError as e:
                out.append((name, e.errno))
        return out

    want = [(f"f{i}", errno.EACCES) for i in sorted(range(40), key=lambda i: f"f{i}")]
    assert as_user(ls_l, d) == want  # the backing itself, as the user
    # pyfuse3 cannot send a name without linking it: such names are left out (its documented limit)
    assert as_user(ls_l, shared.mnt / "nosearch") == (want if shared.engine == "native" else [])
    assert ls_l(shared.mnt / "nosearch") == [(name, 0) for name, _ in want]  # root may


def test_root_after_user_is_root_again(shared):
    """The worker restores its own credentials after serving another user."""
    as_user(_create, shared.mnt / "pub" / "u", b"")
    (shared.mnt / "rootmade").write_text("x")
    st = os.stat(shared.backing / "rootmade")
    assert (st.st_uid, st.st_gid) == (0, 0)
    os.chmod(shared.mnt / "pub" / "u", 0o600)  # root may chmod the user's file


@pytest.mark.parametrize("workers", ["1", "4"], ids=["w1", "w4"])
def test_without_allow_other_user_is_shut_out(world_dir, user1000, workers):
    with fastpass_mount(world_dir, "--workers", workers) as m:
        (m.backing / "f").write_text("x")
        (m.backing / "f").chmod(0o644)
        for call in (os.stat, os.listdir):
            with pytest.raises(PermissionError) as exc:
                as_user(call, m.mnt)
            assert exc.value.errno == errno.EACCES, call
        with pytest.raises(PermissionError) as exc:
            as_user(lambda p: p.read_text(), m.mnt / "f")
        assert exc.value.errno == errno.EACCES
        assert (m.mnt / "f").read_text() == "x"  # the mounter is served


# --- a mount made by uid 1000 through fusermount3 -------------------------------------------
def _state_path(runtime: Path, mnt: Path) -> Path:
    """Where fastpass as a non-root user keeps the mount's record (see fastpass.state)."""
    digest = hashlib.sha1(os.fsencode(str(mnt))).hexdigest()[:16]
    return runtime / "fastpass" / f"{digest}.json"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"  # pid 1 reaps late here
    except FileNotFoundError:
        return False


def _user_dirs(world_dir: Path) -> tuple[Path, Path, Path, dict[str, str], Path]:
    """backing (with a file `existing`), mountpoint and runtime dir of uid 1000, its environment and a log
    file it may create."""
    backing, mnt, runtime = world_dir / "backing", world_dir / "mnt", world_dir / "run"
    for d in (backing, mnt, runtime):
        d.mkdir()
        os.chown(d, UID, GID)
    runtime.chmod(0o700)
    (backing / "existing").write_text("was there")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(world_dir)}
    return backing, mnt, runtime, env, runtime / "server.log"


def _clear_user_mount(mnt: Path, pid: int | None) -> None:
    """Last resort after a user's mount test: unmount as the user who mounted, then lazily; end the server."""
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", "--", str(mnt)], check=False, user=UID, group=GID, extra_groups=[],
                       capture_output=True, timeout=15)  # fmt: skip
    if is_mounted(mnt):
        _libc.umount2(os.fsencode(str(mnt)), MNT_DETACH)
    if pid is not None and not wait_for(lambda: not _alive(pid), 10):
        os.kill(pid, signal.SIGKILL)


def test_user_mount_with_fusermount(world_dir, user1000, dev_fuse_for_users):
    backing, mnt, runtime, env, log = _user_dirs(world_dir)
    os.chown(backing / "existing", UID, GID)
    pid = None
    try:
        code, out, err = run_cli_as(UID, GID, [], "mount", str(backing), str(mnt), "--log", str(log), env=env)
        assert code == 0, f"mount as uid {UID} failed: {err}\nlog:\n{log.read_text() if log.exists() else ''}"
        assert is_mounted(mnt)
        record = _state_path(runtime, mnt)
        assert record.exists(), "no state record in $XDG_RUNTIME_DIR/fastpass"
        pid = msgspec.json.decode(record.read_bytes())["pid"]
        assert os.stat(f"/proc/{pid}").st_uid == UID, "the server does not run as the user"

        def roundtrip(m: Path) -> tuple[list[str], str, bytes, tuple[int, int]]:
            (m / "new").write_bytes(b"written through a user mount")
            os.mkdir(m / "sub")
            (m / "sub" / "deep").write_text("deep")
            st = os.stat(m / "new")
            return sorted(os.listdir(m)), (m / "existing").read_text(), (m / "new").read_bytes(), (st.st_uid, st.st_gid)

        names, existing, new, owner = as_user(roundtrip, mnt)
        assert names == ["existing", "new", "sub"]
        assert existing == "was there"
        assert new == b"written through a user mount"
        assert owner == (UID, GID)
        assert (backing / "new").read_bytes() == b"written through a user mount"
        assert (backing / "sub" / "deep").read_text() == "deep"
        assert os.stat(backing / "new").st_uid == UID

        # No fanotify without root: attributes and names are revalidated every second instead.
        code, out, err = run_cli_as(UID, GID, [], "stats", "--json", str(mnt), env=env)
        assert code == 0, err
        cache = json.loads(out)["cache"]
        assert (cache["coherence"], cache["attr_timeout"], cache["entry_timeout"], cache["watcher_pid"]) == \
               ("revalidate 1 s", 1.0, 1.0, 0)  # fmt: skip
        (backing / "existing").write_text("changed behind its back")
        assert as_user(lambda m: wait_for(lambda: (m / "existing").read_text() == "changed behind its back", 3), mnt)

        code, out, err = run_cli_as(UID, GID, [], "unmount", str(mnt), env=env)
        assert code == 0, f"unmount as uid {UID} failed: {out}{err}"
        assert err == ""
        assert not is_mounted(mnt)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "the user's server outlived `fastpass unmount`"
        assert not record.exists(), "the state record outlived the mount"
        text = log.read_text()
        assert "Traceback" not in text and " ERROR " not in text, text
        assert "not registered" not in text, text  # the default io depth fits the user's RLIMIT_MEMLOCK
    finally:
        _clear_user_mount(mnt, pid)


def test_user_mount_refused_on_foreign_mountpoint(world_dir, user1000, dev_fuse_for_users):
    """fusermount3 refuses a mountpoint the user cannot write: one clear line, nothing mounted."""
    backing, mnt, runtime = world_dir / "backing", world_dir / "mnt", world_dir / "run"
    for d in (backing, runtime):
        d.mkdir()
        os.chown(d, UID, GID)
    mnt.mkdir()
    mnt.chmod(0o755)  # root's
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime)}
    try:
        code, _out, err = run_cli_as(UID, GID, [], "mount", str(backing), str(mnt), env=env)
        assert code != 0
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastpass: error: "), err
        assert str(mnt) in lines[0], "the message should name the mountpoint"
        assert not is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", "--", str(mnt)], check=False, user=UID, group=GID, extra_groups=[],
                           capture_output=True, timeout=15)  # fmt: skip


def test_user_mount_with_o_options(world_dir, user1000, dev_fuse_for_users):
    """`fastpass SOURCE MOUNTPOINT -o OPTIONS` as a user, as mount.fuse3 runs it: the options reach the
    mount through fusermount3 (which adds nosuid,nodev itself: suid and dev given are said to have no
    effect), a bad one is refused with nothing mounted, and `umount MNT` by the user ends the server."""
    backing, mnt, runtime, env, log = _user_dirs(world_dir)
    pid = None
    try:
        code, _out, err = run_cli_as(UID, GID, [], str(backing), str(mnt), "-o", "ro,workers=1,bogus", env=env)
        assert (code, err.splitlines()) == (1, ["fastpass: error: unknown mount option 'bogus'"])
        assert not is_mounted(mnt)

        opts = f"ro,noexec,suid,dev,fsname=users\\,data,workers=1,cache=auto,log={log}"
        code, _out, err = run_cli_as(UID, GID, [], str(backing), str(mnt), "-o", opts, env=env)
        assert code == 0, f"{err}\nlog:\n{log.read_text() if log.exists() else ''}"
        assert err.startswith("fastpass: warning: suid and dev take effect only as root"), err  # not dropped unsaid
        pid = msgspec.json.decode(_state_path(runtime, mnt).read_bytes())["pid"]
        with open("/proc/self/mountinfo") as f:
            fields = next(line.split() for line in f if line.split()[4] == str(mnt))
        assert {"ro", "noexec", "nosuid", "nodev"} <= set(fields[5].split(","))
        assert fields[fields.index("-") + 1 : fields.index("-") + 3] == ["fuse.fastpass", "users,data"]
        assert as_user(lambda m: (m / "existing").read_text(), mnt) == "was there"
        with pytest.raises(OSError) as exc:
            as_user(lambda m: (m / "new").write_text("x"), mnt)
        assert exc.value.errno == errno.EROFS

        r = subprocess.run(["umount", str(mnt)], user=UID, group=GID, extra_groups=[], capture_output=True, text=True,
                           timeout=30, check=False)  # fmt: skip
        assert r.returncode == 0, f"umount as uid {UID}: {r.stderr}"
        assert not is_mounted(mnt)
        assert wait_for(lambda: not _alive(pid), 10), "the user's server outlived umount"
        text = log.read_text()
        assert "Traceback" not in text and " ERROR " not in text, text
    finally:
        _clear_user_mount(mnt, pid)


def test_stats_of_another_users_mount_says_whose(tmp_path, user1000):
    """A user asking about root's mount is told whose server it is, not "no such file"."""
    with fastpass_mount(tmp_path, "--workers", "1") as m:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(tmp_path)}
        code, _out, err = run_cli_as(UID, GID, [], "stats", str(m.mnt), env=env)
        assert code == 1 and err.splitlines() == [
            f"fastpass: error: {m.mnt} is served by the fastpass of uid 0: only that user can ask it"], err
