"""Extended attributes through the mount: flags, errors, sizes, size probes, many names.

Every case runs on fastpass and on a bind mount (the kernel's own answer).
Where the backing filesystem sets a limit (ext4 without ea_inode keeps a
value within one block), the same call made straight on the backing says
what the mount must answer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from tests.conftest import err, wait_for

libc = ctypes.CDLL(None, use_errno=True)
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t


def raw_getxattr(path, name: str, size: int) -> tuple[int, bytes]:
    """getxattr(2) with a buffer of `size` (0: NULL): (return value or -errno, bytes returned)."""
    buf = ctypes.create_string_buffer(max(size, 1))
    n = libc.getxattr(os.fsencode(path), name.encode(), buf if size else None, size)
    if n < 0:
        return -ctypes.get_errno(), b""
    return n, buf.raw[:n] if size else b""


def raw_listxattr(path, size: int) -> tuple[int, bytes]:
    buf = ctypes.create_string_buffer(max(size, 1))
    n = libc.listxattr(os.fsencode(path), buf if size else None, size)
    if n < 0:
        return -ctypes.get_errno(), b""
    return n, buf.raw[:n] if size else b""


def user_xattrs(path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}


def test_set_get_list_remove(fs):
    """user.* xattrs on a file, a dir and an fd: values, XATTR_CREATE/REPLACE, ENODATA, removal."""
    m, b = fs.mnt, fs.backing
    (m / "f").write_bytes(b"x")
    (m / "d").mkdir()
    for name in ("f", "d"):
        p = m / name
        os.setxattr(p, "user.a", b"1")
        os.setxattr(p, "user.empty", b"")
        os.setxattr(p, "user.bin", bytes(range(256)))
        assert os.getxattr(p, "user.a") == os.getxattr(b / name, "user.a") == b"1"
        assert os.getxattr(p, "user.empty") == b""
        assert os.getxattr(p, "user.bin") == os.getxattr(b / name, "user.bin") == bytes(range(256))
        assert sorted(os.listxattr(p)) == sorted(os.listxattr(b / name))
        assert {"user.a", "user.empty", "user.bin"} <= set(os.listxattr(p))

        cases = [
            (os.setxattr, (p, "user.a", b"2", os.XATTR_CREATE), errno.EEXIST),
            (os.setxattr, (p, "user.missing", b"2", os.XATTR_REPLACE), errno.ENODATA),
            (os.getxattr, (p, "user.missing"), errno.ENODATA),
            (os.removexattr, (p, "user.missing"), errno.ENODATA),
            (os.setxattr, (p, "user.a", b"2", 4), errno.EINVAL),  # an unknown flag
            (os.setxattr, (p, "user." + "n" * 251, b"v"), errno.ERANGE),  # name over 255 bytes
            (os.setxattr, (p, "user.", b"v"), errno.EINVAL),
            (os.getxattr, (p, "bogus.ns"), errno.EOPNOTSUPP),
            (os.setxattr, (p, "user.big", b"v" * 65537), errno.E2BIG),
        ]
        assert [err(fn, *args) for fn, args, _ in cases] == [e for _, _, e in cases], name
        assert os.getxattr(p, "user.a") == b"1"  # the failed calls changed nothing

        os.setxattr(p, "user.a", b"replaced", os.XATTR_REPLACE)
        os.setxattr(p, "user.new", b"created", os.XATTR_CREATE)
        assert user_xattrs(p) == user_xattrs(b / name)
        assert user_xattrs(b / name)["user.a"] == b"replaced"
        os.removexattr(p, "user.a")
        assert err(os.getxattr, b / name, "user.a") == errno.ENODATA
        assert "user.a" not in os.listxattr(p)
        assert user_xattrs(p) == user_xattrs(b / name)

    # Other namespaces root may use, and a name that is not UTF-8.
    for name, value in (("trusted.t", b"trusted"), (os.fsdecode(b"user.\xff\xfe raw"), b"raw")):
        os.setxattr(m / "f", name, value)
        assert os.getxattr(b / "f", name) == os.getxattr(m / "f", name) == value
        assert name in os.listxattr(m / "f")
        os.removexattr(m / "f", name)
        assert err(os.getxattr, b / "f", name) == errno.ENODATA

    # Through an open fd, and on the mount root.
    fd = os.open(m / "f", os.O_RDONLY)
    try:
        os.setxattr(fd, "user.byfd", b"fd")
        assert os.getxattr(fd, "user.byfd") == os.getxattr(b / "f", "user.byfd") == b"fd"
        assert "user.byfd" in os.listxattr(fd)
        os.removexattr(fd, "user.byfd")
        assert err(os.getxattr, fd, "user.byfd") == errno.ENODATA
    finally:
        os.close(fd)
    os.setxattr(m, "user.root", b"r")
    assert os.getxattr(b, "user.root") == b"r"
    os.removexattr(m, "user.root")
    # user.* xattrs are not allowed on a symlink itself (EPERM), whichever filesystem says so.
    os.symlink("f", m / "ln")
    assert err(os.setxattr, m / "ln", "user.x", b"1", follow_symlinks=False) == errno.EPERM
    assert os.listxattr(m / "ln", follow_symlinks=False) == os.listxattr(b / "ln", follow_symlinks=False)
    os.setxattr(m / "ln", "user.viatarget", b"t")  # follows to f
    assert os.getxattr(b / "f", "user.viatarget") == b"t"


def test_sizes_and_probes(fs):
    """Values up to 64 KiB (as the backing allows), size 0 probes, ERANGE, and listxattr of many names."""
    m, b = fs.mnt, fs.backing
    (m / "f").write_bytes(b"")
    (b / "ref").write_bytes(b"")
    for size in (1, 100, 1000, 3000, 3900, 4096, 16384, 65536):
        value = os.urandom(size)
        for p in (b / "ref", m / "f"):  # a fresh slot each time
            for n in os.listxattr(p):
                os.removexattr(p, n)
        want = err(os.setxattr, b / "ref", "user.v", value)
        assert err(os.setxattr, m / "f", "user.v", value) == want, size
        if want == 0:
            assert os.getxattr(m / "f", "user.v") == os.getxattr(b / "f", "user.v") == value
            assert raw_getxattr(m / "f", "user.v", 0) == (size, b"")  # probe: the length
            assert raw_getxattr(m / "f", "user.v", size) == (size, value)
            assert raw_getxattr(m / "f", "user.v", size + 100) == (size, value)
            if size > 1:
                assert raw_getxattr(m / "f", "user.v", size - 1) == (-errno.ERANGE, b"")
        else:
            assert want in (errno.ENOSPC, errno.E2BIG) and err(os.getxattr, m / "f", "user.v") == errno.ENODATA
    assert raw_getxattr(m / "f", "user.none", 0) == (-errno.ENODATA, b"")

    # An empty value: the probe says 0.
    os.setxattr(m / "f", "user.zero", b"")
    assert raw_getxattr(m / "f", "user.zero", 0) == (0, b"") == raw_getxattr(b / "f", "user.zero", 0)
    assert raw_getxattr(m / "f", "user.zero", 10) == (0, b"")

    # Many names on a fresh file: the list (with its probe and ERANGE) is the backing's.
    (m / "many").write_bytes(b"")
    names = [f"user.n{i:03d}" for i in range(100)]
    for i, n in enumerate(names):
        os.setxattr(m / "many", n, bytes([i]))
    assert sorted(os.listxattr(m / "many")) == sorted(os.listxattr(b / "many"))
    assert set(names) <= set(os.listxattr(m / "many"))
    assert all(os.getxattr(m / "many", n) == bytes([i]) for i, n in enumerate(names))
    total, _ = raw_listxattr(b / "many", 0)
    assert raw_listxattr(m / "many", 0) == (total, b"")
    n, raw = raw_listxattr(m / "many", total)
    assert n == total and raw == raw_listxattr(b / "many", total)[1]
    assert sorted(raw.split(b"\0")[:-1]) == sorted(x.encode() for x in os.listxattr(b / "many"))
    assert raw_listxattr(m / "many", total - 1) == (-errno.ERANGE, b"")
    assert raw_listxattr(m / "many", 5) == (-errno.ERANGE, b"")
    for n in names[::2]:
        os.removexattr(m / "many", n)
    assert sorted(os.listxattr(m / "many")) == sorted(os.listxattr(b / "many"))
    assert not set(names[::2]) & set(os.listxattr(b / "many"))


# VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, then permitted/inheritable words: CAP_NET_BIND_SERVICE
CAPS = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


def test_capabilities_of_files_made_through_the_mount(fs):
    """A file made through the mount has no security.capability: the kernel asks at its first
    write, and fastpass answers that from the cache where the worker made the file.  Capabilities
    set afterwards show at once through the mount, and within the watcher's delay when set in the
    backing, as on a bind mount."""
    m, b = fs.mnt, fs.backing
    with open(m / "made", "wb") as f:
        f.write(b"#!/bin/sh\n")
    assert err(os.getxattr, m / "made", "security.capability") == errno.ENODATA
    os.setxattr(m / "made", "security.capability", CAPS)
    assert os.getxattr(m / "made", "security.capability") == os.getxattr(b / "made", "security.capability") == CAPS

    fd = os.open(m / "fresh", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o755)  # made, not yet written
    os.close(fd)
    os.setxattr(b / "fresh", "security.capability", CAPS)  # behind the mount's back
    assert wait_for(lambda: raw_getxattr(m / "fresh", "security.capability", 64) == (len(CAPS), CAPS), 3)
    with open(m / "fresh", "r+b") as f:  # the write drops them, as on the backing itself
        f.write(b"x")
    assert err(os.getxattr, m / "fresh", "security.capability") == errno.ENODATA
    assert err(os.getxattr, b / "fresh", "security.capability") == errno.ENODATA
