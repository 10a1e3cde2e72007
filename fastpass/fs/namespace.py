"""Names: lookup, forget, create-by-name, remove, rename, link, symlinks.

Every call is relative to the parent's O_PATH fd and never follows a
symlink, so a symlink in the backing tree is served as a symlink and no
name can lead outside the backing root.  New entries are looked up again
after creation, so their attributes are the backing's own.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from fastpass import _linux
from fastpass.fs.context import CallerUmask, Fs, Request, proc_path
from fastpass.kernel import abi


def lookup(fs: Fs, req: Request, name: bytes) -> bytes:
    """The kernel's LOOKUP: a missing name may be answered with a negative entry (`Fs.absent`)."""
    try:
        return fs.lookup_entry(req.nodeid, name)
    except FileNotFoundError:
        negative = fs.absent(req.nodeid)
        if negative is None:
            raise
        return negative


def forget(fs: Fs, req: Request, nlookup: int) -> None:
    fs.inodes.forget(req.nodeid, nlookup)


def batch_forget(fs: Fs, req: Request, forgets: list[tuple[int, int]]) -> None:
    forget_one = fs.inodes.forget
    for nodeid, nlookup in forgets:
        forget_one(nodeid, nlookup)


def mkdir(fs: Fs, req: Request, mode: int, umask: int, name: bytes) -> bytes:
    with CallerUmask(umask):
        os.mkdir(name, mode, dir_fd=fs.inode_fd(req.nodeid))
    fs.changed(req.nodeid)
    return fs.lookup_entry(req.nodeid, name)


def mknod(fs: Fs, req: Request, mode: int, rdev: int, umask: int, name: bytes) -> bytes:
    with CallerUmask(umask):
        os.mknod(name, mode, os.makedev(*abi.new_decode_dev(rdev)), dir_fd=fs.inode_fd(req.nodeid))
    fs.changed(req.nodeid)
    return fs.lookup_entry(req.nodeid, name)


def symlink(fs: Fs, req: Request, name: bytes, target: bytes) -> bytes:
    os.symlink(target, name, dir_fd=fs.inode_fd(req.nodeid))
    fs.changed(req.nodeid)
    return fs.lookup_entry(req.nodeid, name)


def link(fs: Fs, req: Request, oldnodeid: int, newname: bytes) -> bytes:
    # linkat(fd, "", AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; the magic link does not.
    os.link(proc_path(fs.inode_fd(oldnodeid)), newname, dst_dir_fd=fs.inode_fd(req.nodeid), follow_symlinks=True)
    fs.changed(req.nodeid)
    return fs.lookup_entry(req.nodeid, newname)  # the linked inode's new count goes to the cache


def readlink(fs: Fs, req: Request) -> bytes:
    return os.readlink(b"", dir_fd=fs.inode_fd(req.nodeid))


def unlink(fs: Fs, req: Request, name: bytes) -> None:
    dir_fd = fs.inode_fd(req.nodeid)
    victim = fs.known(dir_fd, name)
    os.unlink(name, dir_fd=dir_fd)
    fs.changed(req.nodeid, victim)  # its link count and ctime moved


def rmdir(fs: Fs, req: Request, name: bytes) -> None:
    dir_fd = fs.inode_fd(req.nodeid)
    victim = fs.known(dir_fd, name)
    os.rmdir(name, dir_fd=dir_fd)
    fs.changed(req.nodeid, victim)


def _renamed(fs: Fs, req: Request, newdir: int, old: bytes, new: bytes, call: Callable[[int, int], None]) -> None:
    """Run a rename; the cache forgets both directories, the moved inode (ctime) and a replaced one."""
    src, dst = fs.inode_fd(req.nodeid), fs.inode_fd(newdir)
    moved, replaced = fs.known(src, old), fs.known(dst, new)
    call(src, dst)
    fs.changed(req.nodeid, newdir, moved, replaced)


def rename(fs: Fs, req: Request, newdir: int, old: bytes, new: bytes) -> None:
    _renamed(fs, req, newdir, old, new, lambda src, dst: os.rename(old, new, src_dir_fd=src, dst_dir_fd=dst))


def rename2(fs: Fs, req: Request, newdir: int, flags: int, old: bytes, new: bytes) -> None:
    """NOREPLACE, EXCHANGE and WHITEOUT (the only flags the kernel forwards) go to the backing,
    which answers EINVAL for combinations it refuses, as renameat2(2) on it would."""
    _renamed(fs, req, newdir, old, new, lambda src, dst: _linux.renameat2(src, old, dst, new, flags))
