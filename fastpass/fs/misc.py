"""Whole-filesystem and protocol-level operations."""

from __future__ import annotations

import os

from fastpass import _linux
from fastpass.fs.context import Fs, Request
from fastpass.kernel import encode


def statfs(fs: Fs, req: Request) -> bytes:
    return encode.statfs_out(os.fstatvfs(fs.inode_fd(req.nodeid)))


def syncfs(fs: Fs, req: Request) -> None:
    _linux.syncfs(fs.inodes.fd(fs.inodes.root))


def interrupt(fs: Fs, req: Request, unique: int) -> None:
    """A worker answers each request before it reads the next, so the target is done already."""


def notify_reply(fs: Fs, req: Request) -> None:
    """Answer to a RETRIEVE notification; fastpass sends none."""


def destroy(fs: Fs, req: Request) -> None:
    """Sent at unmount of fuseblk-style connections; the session ends with the device."""
