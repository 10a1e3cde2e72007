"""Symlinks, hard links and special files (FIFO, socket, device nodes) through the mount.

Every case runs on fastpass and on a bind mount (the kernel's own answer).
A symlink is served as a symlink whatever it points at: its text is never
resolved by the server, only by the kernel on the caller's side.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from tests.conftest import err

TARGETS = [
    ("rel", b"data"),
    ("abs_outside", b"/etc/passwd"),
    ("dotdot", b"../../x"),
    ("dangling", b"no/such/thing"),
    ("to_dir", b"dir"),
    ("self", b"self"),
    ("long", b"p/" * 1000 + b"end"),  # 2003 bytes
    ("longest", b"q/" * 2047 + b"e"),  # 4095 bytes: PATH_MAX - 1
    ("bytes", b"\xff\xfe not utf-8 \n"),
]


def test_symlinks(fs):
    """symlink/readlink/lstat for targets inside, outside, dangling and odd; the kernel follows them."""
    m, b = fs.mnt, fs.backing
    (m / "data").write_bytes(b"payload")
    (m / "dir").mkdir()
    (m / "dir" / "inner").write_bytes(b"in")
    os.symlink(b"/etc/passwd", b / "pre_existing")  # made in the backing, seen through the mount
    for name, target in TARGETS:
        os.symlink(target, os.fsencode(m / name))
    for name, target in TARGETS + [("pre_existing", b"/etc/passwd")]:
        assert os.readlink(os.fsencode(m / name)) == os.readlink(os.fsencode(b / name)) == target, name
        lm, lb = os.lstat(m / name), os.lstat(b / name)
        assert stat.S_ISLNK(lm.st_mode) and stat.S_ISLNK(lb.st_mode), name
        assert (lm.st_size, lm.st_ino, lm.st_mode, lm.st_nlink) == (len(target), lb.st_ino, lb.st_mode, 1), name
    assert os.readlink(m / "abs_outside") == "/etc/passwd"

    # Following happens on the caller's side, exactly as on any filesystem.
    passwd = Path("/etc/passwd").read_bytes()
    assert (m / "abs_outside").read_bytes() == passwd == (m / "pre_existing").read_bytes()
    assert (m / "rel").read_bytes() == b"payload"
    assert os.listdir(m / "to_dir") == ["inner"] and (m / "to_dir" / "inner").read_bytes() == b"in"
    assert os.path.realpath(m / "to_dir") == str(m / "dir")
    for name, want in [("dangling", errno.ENOENT), ("dotdot", errno.ENOENT), ("self", errno.ELOOP)]:
        assert err(os.stat, m / name) == want, name
    assert err(os.open, m / "rel", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
    assert err(os.readlink, m / "data") == errno.EINVAL
    assert err(os.symlink, "x", m / "rel") == errno.EEXIST

    # Writing through a symlink writes the target; removing it leaves the target.
    with open(m / "rel", "ab") as f:
        f.write(b"+")
    assert (b / "data").read_bytes() == b"payload+"
    os.unlink(m / "rel")
    assert not os.path.lexists(b / "rel") and (b / "data").exists()
    os.rename(m / "to_dir", m / "dir" / "moved")  # a relative link keeps its text when moved
    assert os.readlink(m / "dir" / "moved") == os.readlink(b / "dir" / "moved") == "dir"
    assert sorted(os.listdir(m)) == sorted(os.listdir(b))


def test_hard_links(fs):
    """link(2): one inode under two names, nlink on both, shared content, errors for dirs and existing names."""
    m, b = fs.mnt, fs.backing
    (m / "a").write_bytes(b"shared")
    (m / "sub").mkdir()
    os.link(m / "a", m / "b")
    os.link(m / "a", m / "sub" / "c")
    ino = os.stat(b / "a").st_ino
    for name in ("a", "b", "sub/c"):
        assert os.stat(m / name).st_nlink == os.stat(b / name).st_nlink == 3, name
        assert os.stat(m / name).st_ino == os.stat(b / name).st_ino == ino, name
    with open(m / "b", "r+b") as f:
        f.write(b"SH")
    assert (m / "a").read_bytes() == (b / "sub" / "c").read_bytes() == b"SHared"
    fd = os.open(m / "sub" / "c", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"!")
        os.unlink(m / "a")
        assert os.fstat(fd).st_nlink == 2
        assert os.stat(m / "b").st_nlink == os.stat(b / "b").st_nlink == 2
    finally:
        os.close(fd)
    assert (m / "b").read_bytes() == (b / "b").read_bytes() == b"SHared!"

    cases = [
        (os.link, (m / "sub", m / "sub2"), errno.EPERM),  # no hard links to directories
        (os.link, (m / "b", m / "sub" / "c"), errno.EEXIST),
        (os.link, (m / "missing", m / "x"), errno.ENOENT),
        (os.link, (m / "b", m / "nodir" / "x"), errno.ENOENT),
    ]
    assert [err(fn, *args) for fn, args, _ in cases] == [e for _, _, e in cases]

    # A hard link to a symlink links the symlink itself (link(2) does not follow).
    os.symlink("b", m / "sl")
    os.link(m / "sl", m / "sl2")
    assert stat.S_ISLNK(os.lstat(b / "sl2").st_mode) and os.lstat(m / "sl2").st_nlink == 2
    assert os.readlink(m / "sl2") == "b"
    os.unlink(m / "b")
    os.unlink(m / "sub" / "c")
    assert sorted(os.listdir(b)) == sorted(os.listdir(m)) == ["sl", "sl2", "sub"]


def test_special_files(fs):
    """mknod FIFO, socket, char and block devices (root); a FIFO and a unix socket carry data."""
    m, b = fs.mnt, fs.backing
    old = os.umask(0)
    try:
        nodes = [
            ("fifo", stat.S_IFIFO | 0o644, 0, stat.S_ISFIFO),
            ("sock", stat.S_IFSOCK | 0o755, 0, stat.S_ISSOCK),
            ("null", stat.S_IFCHR | 0o666, os.makedev(1, 3), stat.S_ISCHR),
            ("big_dev", stat.S_IFCHR | 0o600, os.makedev(4095, 1048575), stat.S_ISCHR),  # the largest numbers
            ("loop", stat.S_IFBLK | 0o660, os.makedev(7, 0), stat.S_ISBLK),
            ("plain", stat.S_IFREG | 0o640, 0, stat.S_ISREG),
        ]
        for name, mode, dev, _ in nodes:
            os.mknod(m / name, mode, dev)
        os.mkfifo(m / "fifo2", 0o600)
    finally:
        os.umask(old)
    for name, mode, dev, is_kind in nodes + [("fifo2", stat.S_IFIFO | 0o600, 0, stat.S_ISFIFO)]:
        sm, sb = os.lstat(m / name), os.lstat(b / name)
        assert is_kind(sb.st_mode) and is_kind(sm.st_mode), name
        assert sm.st_mode == sb.st_mode == mode, name
        assert sm.st_rdev == sb.st_rdev == dev, name
        assert sm.st_ino == sb.st_ino and sm.st_size == sb.st_size == 0, name
    assert (os.major(os.stat(m / "null").st_rdev), os.minor(os.stat(m / "null").st_rdev)) == (1, 3)
    assert err(os.mknod, m / "fifo", stat.S_IFIFO | 0o644) == errno.EEXIST

    # A FIFO on the mount is a pipe: the kernel carries the data.
    r = os.open(m / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(m / "fifo", os.O_WRONLY | os.O_NONBLOCK)
    try:
        assert os.write(w, b"through the fifo") == 16
        assert os.read(r, 100) == b"through the fifo"
    finally:
        os.close(w)
        os.close(r)
    assert os.stat(b / "fifo").st_size == 0

    # bind() of a unix socket creates the node through the mount; connect() reaches it.
    path = str(m / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        assert stat.S_ISSOCK(os.lstat(b / "live.sock").st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    for name in ("fifo", "sock", "null", "loop", "live.sock"):
        os.unlink(m / name)
    assert sorted(os.listdir(b)) == sorted(os.listdir(m)) == ["big_dev", "fifo2", "plain"]
