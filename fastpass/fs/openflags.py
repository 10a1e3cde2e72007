"""The open flags of OPEN, CREATE and TMPFILE, and what the backing open does with each.

The kernel sends the application's f_flags less O_CREAT, O_EXCL and O_NOCTTY in OPEN (and
O_TRUNC only with FUSE_ATOMIC_O_TRUNC, which fastpass negotiates); CREATE and TMPFILE carry
O_CREAT/O_EXCL/O_TMPFILE too.  A regular file is opened on the backing by reopening its
inode's O_PATH fd through /proc/self/fd (OPEN, TMPFILE, and every other worker's copy of
an fh) or by name relative to the parent (CREATE).  Flag by flag:

kept, so the backing open behaves as the application's own open would
  O_ACCMODE             the access asked for, checked by the backing as the caller; under the
                        writeback cache O_WRONLY is opened O_RDWR, since the kernel reads a page
                        through the writer's fh before writing part of it (data._open_writer)
  O_TRUNC               the opener's open truncates (atomic with the open); never a copy's
  O_NONBLOCK            no effect on a regular file but leases and locks; kept as asked
  O_SYNC, O_DSYNC       every write through the fh is synchronous on the backing too
  O_DIRECT              the backing's page cache is bypassed (and its EINVAL, where it
                        refuses O_DIRECT, is the application's)
  O_NOATIME             checked by the backing (owner or CAP_FOWNER) as the caller
  O_LARGEFILE           always set on 64-bit; harmless

acted on by the kernel or by fastpass itself, never passed to the backing open
  O_CREAT, O_EXCL       CREATE makes the file by name with O_EXCL itself (data.create)
  O_NOCTTY              a regular file is never a terminal
  O_APPEND              the kernel turns an append into a write at its end of file and sends
                        explicit offsets otherwise (RWF_NOAPPEND, writeback); a backing
                        O_APPEND would move those writes to the end (data.py)
  O_NOFOLLOW            the VFS already refused a symlink as the last component; the reopen
                        goes through a magic link, which O_NOFOLLOW would refuse (ELOOP)
  O_DIRECTORY           OPEN is for non-directories only; the VFS checked it
  O_TMPFILE             TMPFILE opens the directory with it; the file then exists
  O_CLOEXEC             the application's fd table, not the server's: the server's own
                        fds are always close-on-exec
  O_ASYNC               set by fcntl(F_SETFL) for signals to the application; it means
                        nothing to the backing open
  __FMODE_EXEC (0o40)   execve's open (abi.FMODE_EXEC), unknown to open(2): it needs only the
                        execute bit, so OPEN checks that as the caller and opens as the
                        server (data._open_to_exec)
  anything else         unknown bits are dropped rather than guessed at
"""

from __future__ import annotations

import os

# What the opener's backing open keeps of the kernel's flags (see above).
KEPT = (os.O_ACCMODE | os.O_TRUNC | os.O_NONBLOCK | os.O_SYNC | os.O_DSYNC | os.O_DIRECT | os.O_NOATIME
        | os.O_LARGEFILE)  # fmt: skip


def backing(flags: int) -> int:
    """The flags of the opener's backing open (the server adds O_CLOEXEC and what the op needs)."""
    return flags & KEPT


def copy(flags: int) -> int:
    """The flags of another worker's own open of an fh: the opener's, less what the opener did once."""
    return flags & KEPT & ~os.O_TRUNC
