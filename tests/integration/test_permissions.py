"""Who may do what with --allow-other: a table of cases, every result equal to a bind mount's.

Each case builds a small tree on the backing (as root), then one user acts on
it through the mount: root, uid 1000 (with supplementary group 4242) and uid
1001 (no supplementary group).  What is compared, per step: the errno or the
result (data read, the exit status of a program run, a stat's mode and
owner, getfacl's output), and afterwards the whole tree as the backing holds
it (type, mode, owner, group, data, link target and POSIX ACLs of every
entry).  The same table runs on a bind mount of the same kind of directory,
the kernel's own answer, and on fastpass with one worker on plain syscalls
and with four workers, kernel passthrough and io_uring.

Each table runs twice: with every path fresh (built on the backing), so that
the user's own walk is the first through the mount, and with every path
already cached by another user (root builds the tree through the mount and
reads every file).
The second is where a FUSE server that checks permissions only on the
requests it gets lets users through: the kernel walks cached dentries
without asking, and an OPEN names the inode, not the path.

ACL cases need a backing filesystem with POSIX ACLs and setfacl/getfacl
(package `acl`); they are their own tests and skip, saying why, without them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fastpass import state
from fastpass.kernel.abi import InitFlag
from tests.conftest import Mounted, bind_mount, fastpass_mount, scratch_dir, wait_for
from tests.users import as_user

GROUP = 4242  # a group only uid 1000 is in (as a supplementary group)
USERS = {"root": (0, 0, []), "u1": (1000, 1000, [GROUP]), "u2": (1001, 1001, [])}
CONFIGS = {
    "w1-plain": ("--workers", "1", "--passthrough", "off", "--io", "plain"),
    "w4-passthrough-uring": ("--workers", "4", "--passthrough", "on", "--io", "uring"),
    "w2-writeback": ("--workers", "2", "--passthrough", "off", "--writeback-cache"),
}
SCRIPT = b"#!/bin/sh\nexit 3\n"
ACL_XATTRS = ("system.posix_acl_access", "system.posix_acl_default")


# --- what a step returns -------------------------------------------------------------------------
def outcome(fn: Callable[..., Any], *args: Any) -> Any:
    """What `fn` returned, or the name of the errno it failed with."""
    try:
        result = fn(*args)
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, e.errno)
    return "ok" if result is None else result


def read(p: Path) -> bytes:
    return p.read_bytes()


def append(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"+")


def run(p: Path) -> int:
    return subprocess.run([p], capture_output=True, check=False).returncode


def stat_of(p: Path) -> tuple[str, int, int]:
    st = os.lstat(p)
    return oct(st.st_mode), st.st_uid, st.st_gid


def create(p: Path, mode: int = 0o644) -> None:
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))


def access(p: Path) -> tuple[bool, bool, bool]:
    return os.access(p, os.R_OK), os.access(p, os.W_OK), os.access(p, os.X_OK)


def tool(*argv: str | Path) -> tuple[int, str]:
    """A real program's verdict and output (paths kept out of it: they differ between mounts)."""
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    return r.returncode, r.stdout


def ftruncate(p: Path) -> None:
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, 1)
    finally:
        os.close(fd)


def tmpfile_mode(d: Path, mode: int) -> str:
    fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, mode)
    try:
        return oct(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def made(d: Path, umask: int) -> dict[str, Any]:
    """A file, a directory, a FIFO and an O_TMPFILE made under `umask` (their modes and ACLs are
    in the tree compared afterwards)."""
    os.umask(umask)
    try:
        return {
            "create": outcome(create, d / "file", 0o666),
            "mkdir": outcome(os.mkdir, d / "dir", 0o777),
            "mkfifo": outcome(os.mkfifo, d / "fifo", 0o666),
            "tmpfile": outcome(tmpfile_mode, d, 0o666),
        }
    finally:
        os.umask(0o022)


# --- what the backing holds afterwards ---------------------------------------------------------
def acl_entries(raw: bytes) -> list[tuple[int, int, int]]:
    """system.posix_acl_* as (tag, perm, id) entries (header: version 2)."""
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8)]


def tree(root: Path) -> list[tuple]:
    """Every entry under `root` as the backing holds it, in a form equal across backings."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = os.lstat(p)
            entry: list[Any] = [str(p.relative_to(root)), oct(st.st_mode), st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                entry.append(p.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(p))
            if not stat.S_ISLNK(st.st_mode):
                for name_ in ACL_XATTRS:
                    try:
                        entry.append(acl_entries(os.getxattr(p, name_, follow_symlinks=False)))
                    except OSError as e:
                        entry.append(errno.errorcode[e.errno])
            out.append(tuple(entry))
    return out


# --- the cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path, tuple], None]  # (case dir, the acting user's uid, gid, groups), as root
    act: Callable[[Path], dict[str, Any]]  # (case dir through the mount), as the user


def _file(p: Path, mode: int, uid: int = 0, gid: int = 0, data: bytes = b"data") -> Path:
    p.write_bytes(data)
    os.chown(p, uid, gid)
    os.chmod(p, mode)
    return p


def _dir(p: Path, mode: int, uid: int = 0, gid: int = 0) -> Path:
    p.mkdir()
    os.chown(p, uid, gid)
    os.chmod(p, mode)
    return p


def _setfacl(p: Path, *args: str) -> None:
    subprocess.run(["setfacl", *args, str(p)], check=True, capture_output=True)


def _walk_case(dir_mode: int) -> Case:
    """A directory of this mode (root's, group 4242) holding a 0644 file: the search and read bits."""

    def build(b: Path, who: tuple) -> None:
        _file(_dir(b / "d", dir_mode, 0, GROUP) / "f", 0o644)

    def act(d: Path) -> dict[str, Any]:
        return {"stat d": outcome(stat_of, d / "d"), "list d": outcome(lambda: sorted(os.listdir(d / "d"))),
                "stat f": outcome(stat_of, d / "d" / "f"), "read f": outcome(read, d / "d" / "f"),
                "access f": outcome(access, d / "d" / "f"), "chdir d": outcome(os.chdir, d / "d")}  # fmt: skip

    return Case(f"walk-{dir_mode:04o}", build, act)


def _file_case(mode: int, owned: bool) -> Case:
    """A file of this mode, root's or the user's, group 4242: read, write and exec bits."""

    def build(b: Path, who: tuple) -> None:
        _file(b / "f", mode, who[0] if owned else 0, GROUP, SCRIPT)

    def act(d: Path) -> dict[str, Any]:
        return {"read": outcome(read, d / "f"), "append": outcome(append, d / "f"), "exec": outcome(run, d / "f"),
                "access": outcome(access, d / "f")}  # fmt: skip

    return Case(f"file-{mode:04o}-{'own' if owned else 'root'}", build, act)


def _dir_write_case(mode: int) -> Case:
    """A directory of this mode (root's, group 4242) holding a 0666 file and an empty directory:
    every call that adds or removes a name."""

    def build(b: Path, who: tuple) -> None:
        d = _dir(b / "d", mode, 0, GROUP)
        _file(d / "victim", 0o666)
        _dir(d / "sub", 0o777)

    def act(d: Path) -> dict[str, Any]:
        w = d / "d"
        return {"create": outcome(create, w / "new"), "mkdir": outcome(os.mkdir, w / "newdir"),
                "symlink": outcome(os.symlink, "victim", w / "link"), "mkfifo": outcome(os.mkfifo, w / "fifo"),
                "link": outcome(os.link, w / "victim", w / "hard"),
                "rename": outcome(os.rename, w / "victim", w / "moved"), "unlink": outcome(os.unlink, w / "hard"),
                "rmdir": outcome(os.rmdir, w / "sub"), "list": outcome(lambda: sorted(os.listdir(w)))}  # fmt: skip

    return Case(f"dirw-{mode:04o}", build, act)


def _prefix_case(locked_mode: int) -> Case:
    """The user's own file in a directory whose search bit it lacks (root's, this mode): every call
    on a path through it is EACCES (POSIX: "search permission is denied for a component of the
    path prefix"), whoever looked the path up before."""

    def build(b: Path, who: tuple) -> None:
        uid, gid, _ = who
        locked = _dir(b / "locked", locked_mode)
        _file(locked / "f", 0o666, uid, gid)
        _dir(locked / "sub", 0o777, uid, gid)
        _file(_dir(b / "open", 0o777) / "g", 0o666, uid, gid)

    def act(d: Path) -> dict[str, Any]:
        f, locked, gid = d / "locked" / "f", d / "locked", os.getgid()
        return {"stat": outcome(stat_of, f), "open": outcome(read, f), "chmod": outcome(os.chmod, f, 0o600),
                "chown": outcome(os.chown, f, -1, gid), "truncate": outcome(os.truncate, f, 1),
                "ftruncate": outcome(ftruncate, f), "utime": outcome(os.utime, f, (1, 1)),
                "setxattr": outcome(os.setxattr, f, "user.x", b"1"), "getxattr": outcome(os.listxattr, f),
                "link from": outcome(os.link, f, d / "open" / "l"), "link into": outcome(os.link, d / "open" / "g", locked / "h"),
                "symlink": outcome(os.symlink, "f", locked / "s"), "mkdir": outcome(os.mkdir, locked / "dd"),
                "mkfifo": outcome(os.mkfifo, locked / "p"), "rmdir": outcome(os.rmdir, locked / "sub"),
                "rename": outcome(os.rename, f, d / "open" / "r"), "unlink": outcome(os.unlink, locked / "f")}  # fmt: skip

    return Case(f"prefix-{locked_mode:04o}", build, act)


def _own_noexec_build(b: Path, who: tuple) -> None:
    d = _dir(b / "d", 0o700, who[0], who[1])
    _file(d / "f", 0o644, who[0], who[1])
    os.chmod(d, 0o600)  # the owner may read names, not search


def _own_noexec_act(d: Path) -> dict[str, Any]:
    return {"list": outcome(lambda: sorted(os.listdir(d / "d"))), "stat f": outcome(stat_of, d / "d" / "f"),
            "read f": outcome(read, d / "d" / "f"), "create": outcome(create, d / "d" / "g")}  # fmt: skip


def _deep_build(b: Path, who: tuple) -> None:
    _file(_dir(_dir(_dir(b / "a", 0o755) / "b", 0o700) / "c", 0o755) / "f", 0o644)
    _file(_dir(_dir(_dir(b / "x", 0o755) / "y", 0o700, 1000, 1000) / "z", 0o755) / "f", 0o644)


def _deep_act(d: Path) -> dict[str, Any]:
    return {"read a/b/c/f": outcome(read, d / "a" / "b" / "c" / "f"), "stat a/b/c": outcome(stat_of, d / "a" / "b" / "c"),
            "read x/y/z/f (y is 1000's)": outcome(read, d / "x" / "y" / "z" / "f")}  # fmt: skip


def _sticky_build(b: Path, who: tuple) -> None:
    for owner_name, owner in (("root", 0), ("u1", 1000)):
        d = _dir(b / f"sticky-{owner_name}", 0o1777, owner, owner)
        for uid in (0, 1000, 1001):
            for use in ("unlink", "rename", "write"):
                _file(d / f"{use}-{uid}", 0o666, uid, uid)


def _sticky_act(d: Path) -> dict[str, Any]:
    out = {}
    for owner_name in ("root", "u1"):
        s = d / f"sticky-{owner_name}"
        for uid in (0, 1000, 1001):
            out[f"{owner_name}: unlink {uid}'s"] = outcome(os.unlink, s / f"unlink-{uid}")
            out[f"{owner_name}: rename {uid}'s"] = outcome(os.rename, s / f"rename-{uid}", s / f"renamed-{uid}")
            out[f"{owner_name}: write {uid}'s"] = outcome(append, s / f"write-{uid}")
        out[f"{owner_name}: create"] = outcome(create, s / f"new-{os.getuid()}")
    return out


def _setgid_build(b: Path, who: tuple) -> None:
    _dir(b / "sg2775", 0o2775, 0, GROUP)
    _dir(b / "sg2777", 0o2777, 0, GROUP)
    _file(b / "sg2777" / "mine", 0o644, who[0], who[1])


def _setgid_act(d: Path) -> dict[str, Any]:
    out = {}
    for name in ("sg2775", "sg2777"):
        s = d / name
        out[f"{name}: create"] = outcome(create, s / "f", 0o644)
        out[f"{name}: create 2755"] = outcome(create, s / "f2755", 0o2755)
        out[f"{name}: mkdir"] = outcome(os.mkdir, s / "sub", 0o755)
        out[f"{name}: mkdir 2755"] = outcome(os.mkdir, s / "sub2755", 0o2755)
    mine = d / "sg2777" / "mine"
    out["chown mine to 4242"] = outcome(os.chown, mine, -1, GROUP)
    out["chmod mine 2755"] = outcome(os.chmod, mine, 0o2755)
    out["stat mine"] = outcome(stat_of, mine)
    return out


def _groups_build(b: Path, who: tuple) -> None:
    _file(b / "g0640", 0o640, 0, GROUP)
    _file(_dir(b / "gdir0750", 0o750, 0, GROUP) / "f", 0o644)
    _dir(b / "gdir0770", 0o770, 0, GROUP)


def _groups_act(d: Path) -> dict[str, Any]:
    return {"read g0640": outcome(read, d / "g0640"), "append g0640": outcome(append, d / "g0640"),
            "list gdir0750": outcome(lambda: sorted(os.listdir(d / "gdir0750"))),
            "read gdir0750/f": outcome(read, d / "gdir0750" / "f"), "create in gdir0770": outcome(create, d / "gdir0770" / "n"),
            "chown own file to 4242": outcome(lambda: (create(d / "gdir0770" / "o"), os.chown(d / "gdir0770" / "o", -1, GROUP)))}  # fmt: skip


def _umask_case(umask: int) -> Case:
    def build(b: Path, who: tuple) -> None:
        _dir(b / "d", 0o777)

    return Case(f"umask-{umask:03o}", build, lambda d: made(d / "d", umask))


TABLE = [
    *(_walk_case(m) for m in (0o700, 0o711, 0o744, 0o750, 0o705, 0o701)),
    *(_file_case(m, False) for m in (0o600, 0o640, 0o604, 0o460, 0o000, 0o755, 0o711, 0o644)),
    *(_file_case(m, True) for m in (0o400, 0o200, 0o100, 0o070, 0o700)),
    *(_dir_write_case(m) for m in (0o755, 0o775, 0o757, 0o777, 0o733, 0o575)),
    _prefix_case(0o700),
    _prefix_case(0o744),
    Case("own-dir-0600", _own_noexec_build, _own_noexec_act),
    Case("deep", _deep_build, _deep_act),
    Case("sticky", _sticky_build, _sticky_act),
    Case("setgid", _setgid_build, _setgid_act),
    Case("groups", _groups_build, _groups_act),
    _umask_case(0o022),
    _umask_case(0o077),
]


# --- ACL cases ----------------------------------------------------------------------------------
def _getfacl(p: Path) -> tuple[int, str]:
    return tool("getfacl", "-n", "--omit-header", "--absolute-names", p)


def _acl_file_build(b: Path, who: tuple) -> None:
    _setfacl(_file(b / "user-rw", 0o640, data=SCRIPT), "-m", "u:1001:rw")
    _setfacl(_file(b / "mask-r", 0o640, data=SCRIPT), "-m", "u:1001:rwx,m::r")
    _setfacl(_file(b / "group-r", 0o600, data=SCRIPT), "-m", "g:4242:r")
    _setfacl(_file(b / "user-x", 0o700, data=SCRIPT), "-m", "u:1000:rx")
    _setfacl(_file(b / "deny-u1", 0o644, data=SCRIPT), "-m", "u:1000:-")
    _file(_dir(b / "search-u1", 0o700) / "f", 0o644)
    _setfacl(b / "search-u1", "-m", "u:1000:x")
    _setfacl(_dir(b / "write-u2", 0o755), "-m", "u:1001:rwx")


def _acl_file_act(d: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("user-rw", "mask-r", "group-r", "user-x", "deny-u1"):
        p = d / name
        out[name] = (outcome(read, p), outcome(append, p), outcome(run, p), outcome(access, p), _getfacl(p))
    out["search-u1"] = (outcome(read, d / "search-u1" / "f"), outcome(lambda: os.listdir(d / "search-u1")),
                        _getfacl(d / "search-u1"))  # fmt: skip
    out["write-u2"] = (outcome(create, d / "write-u2" / "n"), outcome(os.mkdir, d / "write-u2" / "m"))
    return out


def _acl_set_build(b: Path, who: tuple) -> None:
    uid, gid, _ = who
    _file(b / "mine", 0o644, uid, gid)
    _file(b / "mine-sgid", 0o2770, uid, GROUP)
    _setfacl(_file(b / "mine-acl", 0o660, uid, gid), "-m", "u:1001:rw")
    _file(b / "roots", 0o666)
    _dir(b / "mydir", 0o755, uid, gid)


def _acl_set_act(d: Path) -> dict[str, Any]:
    return {"setfacl mine": tool("setfacl", "-m", "u:1001:rw", d / "mine"),
            "setfacl mine mode": tool("setfacl", "-m", "u::r,g::rwx,o::-", d / "mine"),
            "setfacl sgid": tool("setfacl", "-m", "u:1000:r", d / "mine-sgid"),
            "chmod acl": outcome(os.chmod, d / "mine-acl", 0o604),
            "setfacl -b": tool("setfacl", "-b", d / "mine-acl"),
            "setfacl roots": tool("setfacl", "-m", "u:1000:rw", d / "roots"),
            "setfacl default": tool("setfacl", "-d", "-m", "u:1001:rwx", d / "mydir"),
            "getfacl mine": _getfacl(d / "mine"), "getfacl mine-sgid": _getfacl(d / "mine-sgid"),
            "stat mine": outcome(stat_of, d / "mine"), "stat mine-sgid": outcome(stat_of, d / "mine-sgid")}  # fmt: skip


def _default_acl_case(umask: int, spec: str) -> Case:
    """Made in a directory with this default ACL, under this umask: the default ACL, not the umask,
    shapes the new inodes (as the kernel's own filesystems do)."""

    def build(b: Path, who: tuple) -> None:
        _setfacl(_dir(b / "d", 0o777), "-d", "-m", spec)

    return Case(f"default-acl-{umask:03o}-{spec}", build, lambda d: made(d / "d", umask))


ACL_TABLE = [
    Case("acl-access", _acl_file_build, _acl_file_act),
    Case("acl-set", _acl_set_build, _acl_set_act),
    *(_default_acl_case(u, s) for u in (0o022, 0o077) for s in ("u::rwx,g::rwx,o::rx", "u:1001:rwx,g::rx,o::-")),
]


# --- running a table -------------------------------------------------------------------------------
def _act_all(pairs: list[tuple[str, Callable[[Path], dict[str, Any]], Path]]) -> dict[str, Any]:
    """In the user's child: every case's steps."""
    os.umask(0o022)
    out = {}
    for name, act, d in pairs:
        os.chdir("/")  # a case may chdir; and the test's own directory may be closed to the user
        out[name] = act(d)
    return out


def _warm(path: Path) -> None:
    """Root walks the tree and reads every regular file: all of it in the kernel's caches."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                p.read_bytes()


def run_table(m: Mounted, table: str, who: str, cached: bool) -> dict[str, Any]:
    """Build every case of a table afresh, let `who` act through `m`, and say what happened."""
    cases, user = TABLES[table], USERS[who]
    name = f"{table}-{who}-{'cached' if cached else 'fresh'}"
    top, via = m.backing / name, m.mnt / name
    # Cached: root builds the tree through the mount (no outside change for the watcher to
    # invalidate) and reads it all; fresh: built on the backing, the user's walk comes first.
    built = via if cached else top
    built.mkdir(mode=0o755)
    for case in cases:
        d = built / case.name
        d.mkdir(mode=0o755)
        case.build(d, user)
    if cached:
        _warm(via)
    results = as_user(_act_all, [(c.name, c.act, via / c.name) for c in cases], uid=user[0], gid=user[1],
                      groups=user[2], timeout=120)  # fmt: skip
    return {c.name: (results[c.name], tree(top / c.name)) for c in cases}


def _differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    lines = []
    for name, (steps, after) in want.items():
        g_steps, g_after = got[name]
        for step, value in steps.items():
            if g_steps.get(step) != value:
                lines.append(f"{name}: {step}: fastpass {g_steps.get(step)!r}, bind {value!r}")
        if g_after != after:
            lines.append(f"{name}: tree afterwards: fastpass {g_after!r}\n    bind {after!r}")
    return lines


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bind_tables() -> Iterator[dict[tuple[str, str, bool], Any]]:
    """The bind mount's answer to each (table, user, fresh or cached), computed once."""
    with scratch_dir("fastpass-perm-") as base, bind_mount(base) as m:
        answers: dict[tuple[str, str, bool], Any] = {}

        def answer(table: str, who: str, cached: bool) -> Any:
            key = (table, who, cached)
            if key not in answers:
                answers[key] = run_table(m, table, who, cached)
            return answers[key]

        yield answer  # type: ignore[misc]


@pytest.fixture(scope="module", params=list(CONFIGS))
def shared_mount(request) -> Iterator[Mounted]:
    """fastpass with --allow-other, in each configuration, for the whole module."""
    with scratch_dir("fastpass-perm-") as base, fastpass_mount(base, "--allow-other", *CONFIGS[request.param]) as m:
        yield m


@functools.cache
def _acl_support() -> str | None:
    """Why the ACL cases cannot run here, or None."""
    if shutil.which("setfacl") is None or shutil.which("getfacl") is None:
        return "setfacl/getfacl not installed (package acl; tools/setup installs it)"
    with scratch_dir("fastpass-perm-") as base:
        try:
            _setfacl(_file(base / "probe", 0o644), "-m", "u:1001:r")
        except subprocess.CalledProcessError as e:
            return f"the backing filesystem under /tmp has no POSIX ACLs: {e.stderr.decode().strip()}"
    return None


TABLES = {"modes": TABLE, "acl": ACL_TABLE}


# --- the tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cached", [False, True], ids=["fresh", "cached"])
@pytest.mark.parametrize("who", list(USERS))
@pytest.mark.parametrize("table", list(TABLES))
def test_table_equals_bind(shared_mount, bind_tables, table: str, who: str, cached: bool) -> None:
    if table == "acl" and (why := _acl_support()):
        pytest.skip(why)
    got = run_table(shared_mount, table, who, cached)
    want = bind_tables(table, who, cached)
    assert not (diff := _differences(got, want)), "\n".join(diff)


@pytest.mark.parametrize("hold", [False, True], ids=["closed", "held-open"])
def test_private_dir_after_root_cached_it(shared_mount, hold: bool) -> None:
    """The reproducer: root reads private/f (0700 dir) through the mount, then uid 1000 may not
    read it, whether or not root still holds it open (its passthrough backing file included)."""
    private = shared_mount.mnt / f"private-{hold}"  # made through the mount, as a user of it would
    through = _file(_dir(private, 0o700) / "f", 0o644, data=b"root's")
    assert through.read_bytes() == b"root's"
    with open(through, "rb") if hold else contextlib.nullcontext():
        for uid in (1000, 1001):
            with pytest.raises(PermissionError):
                as_user(read, through, uid=uid, gid=uid)
            with pytest.raises(PermissionError):
                as_user(os.stat, through, uid=uid, gid=uid)
    with pytest.raises(PermissionError):  # as on the backing itself
        as_user(read, shared_mount.backing / private.name / "f", uid=1000, gid=1000)


def _poll_as(uid: int, fn: Callable[..., Any], *args: Any) -> Any:
    return as_user(outcome, fn, *args, uid=uid, gid=uid, groups=[])


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_backing_changes_show_through(world_dir, cache: str) -> None:
    """chmod and setfacl made on the backing itself reach the kernel's checks: with the watcher
    (cache auto) through its invalidations, without it within the attribute timeout (1 s)."""
    with fastpass_mount(world_dir, "--allow-other", "--workers", "1", "--cache", cache) as m:
        d = _dir(m.backing / "d", 0o755)
        _file(d / "f", 0o640)
        f = m.mnt / "d" / "f"
        assert _poll_as(1001, read, f) == "EACCES"
        assert _poll_as(1001, os.stat, m.mnt / "d") != "EACCES"  # d's attributes are in the kernel now
        os.chmod(d, 0o700)
        assert wait_for(lambda: _poll_as(1001, os.stat, f) == "EACCES", 5), "chmod on the backing not seen"
        if (why := _acl_support()) is not None:
            pytest.skip(why)
        _setfacl(d, "-m", "u:1001:x")
        _setfacl(d / "f", "-m", "u:1001:r")
        assert wait_for(lambda: _poll_as(1001, read, f) == b"data", 5), "setfacl on the backing not seen"
        _setfacl(d / "f", "-x", "u:1001")
        assert wait_for(lambda: _poll_as(1001, read, f) == "EACCES", 5), "an ACL removed on the backing still grants"


def _mount_options(mnt: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == str(mnt):
                return right.split()[2].split(",")
    raise AssertionError(f"{mnt} is not mounted")


@pytest.mark.parametrize(("options", "checks"), [
    (("--allow-other",), True),
    (("--allow-other", "--no-default-permissions"), False),
    (("--default-permissions",), True),
    ((), False),
], ids=["allow-other", "allow-other-unchecked", "default-permissions", "neither"])  # fmt: skip
def test_kernel_checks_follow_the_options(world_dir, options: tuple[str, ...], checks: bool) -> None:
    with fastpass_mount(world_dir, "--workers", "1", *options) as m:
        assert ("default_permissions" in _mount_options(m.mnt)) == checks
        negotiated = state.read(str(m.mnt)).negotiated
        assert negotiated.has(InitFlag.POSIX_ACL) == checks
        assert negotiated.has(InitFlag.DONT_MASK)
