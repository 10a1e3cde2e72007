"""FUSE_INIT negotiation: take what the running kernel offers, answer what we use.

The kernel offers 64 capability bits (the high half in flags2 behind
INIT_EXT) and its protocol minor; both sides then speak the smaller minor.
What was agreed is kept as a `Negotiated` record, stored beside the mount so
`stats` and the tests can read it.
"""

from __future__ import annotations

import msgspec

from fastpass.kernel import abi
from fastpass.kernel.abi import InitFlag as F

MIN_MINOR = 31  # Linux 5.4: everything below is assumed present
MAX_WRITE = 1 << 20  # 1 MiB requests: measured fastest with 4 KiB pages x 256
MAX_PAGES = MAX_WRITE // 4096
MAX_BACKGROUND = 64
CONGESTION_THRESHOLD = 48

# What fastpass asks for when the kernel offers it, and why:
WANTED = (
    F.ASYNC_READ  # readahead may have several READs in flight
    | F.ATOMIC_O_TRUNC  # O_TRUNC arrives with OPEN: one backing call, not two
    | F.EXPORT_SUPPORT  # LOOKUP of "." and ".." are answered; NFS export works
    | F.BIG_WRITES  # writes larger than a page
    | F.AUTO_INVAL_DATA  # mtime/size change seen at getattr drops stale page cache
    | F.DO_READDIRPLUS
    | F.READDIRPLUS_AUTO  # readdirplus when the kernel expects stats to follow
    | F.ASYNC_DIO
    | F.PARALLEL_DIROPS  # lookups and readdir in one directory run in parallel
    | F.MAX_PAGES
    | F.INIT_EXT
    # We clear suid/sgid when the kernel says so (KILL_SUIDGID on WRITE, SETATTR,
    # OPEN); in exchange it stops asking GETXATTR security.capability before
    # every write, a round trip per write even in passthrough (measured: 8,193
    # GETXATTRs for 8,192 random 4 KiB writes).
    | F.HANDLE_KILLPRIV_V2
    # 7.39, Linux 6.6: shared mmap of a FOPEN_DIRECT_IO file (a file whose reads and writes a
    # filter needs, served without kernel passthrough) goes through the page cache instead of
    # failing with ENODEV.
    | F.DIRECT_IO_ALLOW_MMAP
    # The kernel leaves the caller's umask to us (it comes in CREATE, MKNOD, MKDIR and TMPFILE):
    # the backing call runs under it, so the backing applies it, or the parent's default ACL
    # instead, exactly as for the caller's own call.  Without it the kernel would mask the mode
    # first, and a default ACL would be cut down by bits the caller's umask never meant to drop.
    | F.DONT_MASK
)
# Asked for (as `extra`) with the default_permissions mount option and only then, as the kernel
# turns default_permissions on with it: the kernel checks POSIX ACLs too (it reads
# system.posix_acl_access and _default through GETXATTR, keeps them until an attribute refresh
# or FUSE_NOTIFY_INVAL_INODE, and hands setfacl to SETXATTR, the backing then setting the mode).
KERNEL_PERMISSIONS = F.POSIX_ACL


class KernelTooOld(Exception):
    """The kernel speaks a FUSE protocol older than MIN_MINOR."""


class Negotiated(msgspec.Struct, frozen=True):
    kernel_major: int
    kernel_minor: int
    minor: int
    offered: list[str]
    flags: list[str]
    max_write: int
    max_pages: int
    max_readahead: int

    def has(self, flag: F) -> bool:
        return flag.name in self.flags


def _names(bits: int) -> list[str]:
    return [f.name for f in F if bits & f and f.name]


def negotiate(init_in: tuple, extra: int = 0, stack_depth: int = 1) -> tuple[bytes, Negotiated]:
    """Reply body for INIT given the decoded fuse_init_in and extra wanted flags.

    `stack_depth` is max_stack_depth for PASSTHROUGH: 1 when the backing is not
    itself stacked, 2 when it is on overlayfs or another FUSE mount.
    """
    major, minor, max_readahead, flags, flags2 = init_in
    offered = flags | (flags2 << 32 if flags & F.INIT_EXT else 0)
    if major != abi.KERNEL_VERSION or minor < MIN_MINOR:
        raise KernelTooOld(f"kernel FUSE protocol {major}.{minor} is too old: fastpass needs 7.{MIN_MINOR} (Linux 5.4) or newer")
    use = offered & (WANTED | extra)
    if use & F.WRITEBACK_CACHE:  # the kernel takes no passthrough with it (fs/fuse/inode.c, process_init_reply), silently
        use &= ~F.PASSTHROUGH
    our_minor = min(minor, abi.KERNEL_MINOR_VERSION)
    reply = abi.INIT_OUT.pack(
        abi.KERNEL_VERSION, our_minor, max_readahead,
        use & 0xFFFFFFFF, MAX_BACKGROUND, CONGESTION_THRESHOLD, MAX_WRITE,
        1,  # time_gran: nanoseconds
        MAX_PAGES, 0, use >> 32,
        stack_depth if use & F.PASSTHROUGH else 0,  # max_stack_depth
        0,  # request_timeout: none
    )  # fmt: skip
    return reply, Negotiated(
        kernel_major=major, kernel_minor=minor, minor=our_minor, offered=_names(offered), flags=_names(use),
        max_write=MAX_WRITE, max_pages=MAX_PAGES, max_readahead=max_readahead,
    )  # fmt: skip
