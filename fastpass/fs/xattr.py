"""Extended attributes, with the kernel's size-probe and ERANGE rules.

GETXATTR/LISTXATTR with size 0 ask only for the length; a non-zero size too
small for the value is ERANGE, as getxattr(2) itself answers.
"""

from __future__ import annotations

import errno
import os

from fastpass.fs.attrcache import NO_CAPS
from fastpass.fs.context import Fs, Request, proc_path
from fastpass.kernel import abi


def _sized(value: bytes, size: int) -> bytes:
    if size == 0:
        return abi.GETXATTR_OUT.pack(len(value))
    if len(value) > size:
        raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
    return value


_CAPS = b"security.capability"


def getxattr(fs: Fs, req: Request, size: int, name: bytes) -> bytes:
    # The kernel asks for the capabilities at the first write to each new inode: for a file a worker
    # made, the cache knows there are none (fastpass.fs.attrcache, NO_CAPS).
    if name == _CAPS and fs.cache is not None and fs.cache.flags(req.nodeid) & NO_CAPS:
        raise OSError(errno.ENODATA, os.strerror(errno.ENODATA))
    return _sized(os.getxattr(proc_path(fs.inode_fd(req.nodeid)), name), size)


def listxattr(fs: Fs, req: Request, size: int) -> bytes:
    names = os.listxattr(proc_path(fs.inode_fd(req.nodeid)))
    return _sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)


def setxattr(fs: Fs, req: Request, size: int, flags: int, name: bytes, value: bytes) -> None:
    os.setxattr(proc_path(fs.inode_fd(req.nodeid)), name, value, flags)
    fs.changed(req.nodeid)  # ctime; a POSIX ACL may change the mode too


def removexattr(fs: Fs, req: Request, name: bytes) -> None:
    os.removexattr(proc_path(fs.inode_fd(req.nodeid)), name)
    fs.changed(req.nodeid)
