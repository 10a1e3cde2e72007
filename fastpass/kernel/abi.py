"""Kernel FUSE ABI facts: every struct, opcode, flag and ioctl number, in one place.

Layouts follow `include/uapi/linux/fuse.h` (protocol 7.45, Linux 6.18) with the
kernel's field names (that header and fs/fuse/ are the sources).  Each struct is
a `struct.Struct` named after the C struct without `fuse_`, upper-cased, so a
header diff maps onto this file line by line.  Padding and unused fields are
`x` pad bytes: decoders then yield only the fields that carry meaning, and
sizes still match the kernel's.  x86_64 / little-endian only.
"""

from __future__ import annotations

import enum
import struct

KERNEL_VERSION = 7
KERNEL_MINOR_VERSION = 45  # the newest minor this code knows (Linux 6.18)
ROOT_ID = 1
MIN_READ_BUFFER = 8192

# --- framing -------------------------------------------------------------
# len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER = struct.Struct("<IIQQIIIHH")
# len, error, unique
OUT_HEADER = struct.Struct("<IiQ")
UNIQUE_RESEND = 1 << 63  # 7.40: set on requests re-queued by NOTIFY_RESEND
INT_REQ_BIT = 1  # bit 0 of an INTERRUPT request's own unique

# --- attributes ----------------------------------------------------------
# ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec,
# mode, nlink, uid, gid, rdev, blksize, flags
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
# nodeid, generation, entry_valid, attr_valid, entry_valid_nsec, attr_valid_nsec
ENTRY_OUT_HEAD = struct.Struct("<QQQQII")
ENTRY_OUT_SIZE = ENTRY_OUT_HEAD.size + ATTR.size  # 128
# attr_valid, attr_valid_nsec, dummy
ATTR_OUT_HEAD = struct.Struct("<QII")
ATTR_OUT_SIZE = ATTR_OUT_HEAD.size + ATTR.size  # 104
# The same two replies as single structs, so that one pack() builds each.
ENTRY_OUT = struct.Struct(ENTRY_OUT_HEAD.format + ATTR.format[1:])
ATTR_OUT = struct.Struct(ATTR_OUT_HEAD.format + ATTR.format[1:])
GETATTR_IN = struct.Struct("<I4xQ")  # getattr_flags, (dummy), fh
GETATTR_FH = 1 << 0

# --- INIT ----------------------------------------------------------------
INIT_IN = struct.Struct("<IIIII44x")  # major, minor, max_readahead, flags, flags2
# major, minor, max_readahead, flags, max_background, congestion_threshold,
# max_write, time_gran, max_pages, map_alignment, flags2, max_stack_depth,
# request_timeout (7.43)
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")


class InitFlag(enum.IntFlag):
    """INIT capability bits; bits 32+ travel in flags2 when INIT_EXT is set."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30
    INIT_RESERVED = 1 << 31
    SECURITY_CTX = 1 << 32
    HAS_INODE_DAX = 1 << 33
    CREATE_SUPP_GROUP = 1 << 34
    HAS_EXPIRE_ONLY = 1 << 35
    DIRECT_IO_ALLOW_MMAP = 1 << 36
    PASSTHROUGH = 1 << 37  # 7.40, Linux 6.9
    NO_EXPORT_SUPPORT = 1 << 38
    HAS_RESEND = 1 << 39  # 7.40
    ALLOW_IDMAP = 1 << 40  # 7.41
    OVER_IO_URING = 1 << 41  # 7.42, Linux 6.14
    REQUEST_TIMEOUT = 1 << 42  # 7.43


# --- open / create -------------------------------------------------------
OPEN_IN = struct.Struct("<II")  # flags, open_flags
OPEN_OUT = struct.Struct("<QIi")  # fh, open_flags, backing_id (7.40)
CREATE_IN = struct.Struct("<IIII")  # flags, mode, umask, open_flags


class FopenFlag(enum.IntFlag):
    """fuse_open_out.open_flags."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5  # 7.35
    PARALLEL_DIRECT_WRITES = 1 << 6  # 7.38
    PASSTHROUGH = 1 << 7  # 7.40


# --- namespace -----------------------------------------------------------
MKNOD_IN = struct.Struct("<III4x")  # mode, rdev, umask, (padding)
MKDIR_IN = struct.Struct("<II")  # mode, umask
RENAME_IN = struct.Struct("<Q")  # newdir
RENAME2_IN = struct.Struct("<QI4x")  # newdir, flags, (padding)
LINK_IN = struct.Struct("<Q")  # oldnodeid
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<I4x")  # count, (dummy)
FORGET_ONE = struct.Struct("<QQ")  # nodeid, nlookup

# --- setattr -------------------------------------------------------------
# valid, (padding), fh, size, lock_owner, atime, mtime, ctime, atimensec,
# mtimensec, ctimensec, mode, (unused4), uid, gid, (unused5)
SETATTR_IN = struct.Struct("<I4xQQQQQQIIII4xII4x")


class Fattr(enum.IntFlag):
    """fuse_setattr_in.valid."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6
    ATIME_NOW = 1 << 7
    MTIME_NOW = 1 << 8
    LOCKOWNER = 1 << 9
    CTIME = 1 << 10
    KILL_SUIDGID = 1 << 11


# --- data ----------------------------------------------------------------
# fh, offset, size, read_flags|write_flags, lock_owner, flags, (padding)
READ_IN = struct.Struct("<QQIIQI4x")
WRITE_IN = READ_IN
WRITE_OUT = struct.Struct("<I4x")  # size, (padding)
RELEASE_IN = struct.Struct("<QIIQ")  # fh, flags, release_flags, lock_owner
FLUSH_IN = struct.Struct("<Q8xQ")  # fh, (unused, padding), lock_owner
FSYNC_IN = struct.Struct("<QI4x")  # fh, fsync_flags, (padding)
FSYNC_FDATASYNC = 1 << 0
LSEEK_IN = struct.Struct("<QQI4x")  # fh, offset, whence, (padding)
LSEEK_OUT = struct.Struct("<Q")  # offset
FALLOCATE_IN = struct.Struct("<QQQI4x")  # fh, offset, length, mode, (padding)
# fh_in, off_in, nodeid_out, fh_out, off_out, len, flags
COPY_FILE_RANGE_IN = struct.Struct("<QQQQQQQ")
COPY_FILE_RANGE_OUT = struct.Struct("<Q")  # bytes_copied (7.45)
WRITE_CACHE = 1 << 0  # write_flags: delayed write from the page cache
WRITE_KILL_SUIDGID = 1 << 2  # write_flags (7.33): clear suid/sgid, the writer lacks CAP_FSETID
OPEN_KILL_SUIDGID = 1 << 0  # fuse_open_in/fuse_create_in.open_flags (7.33): O_TRUNC by such a caller
# fuse_open_in.flags carries the file's f_flags, and execve's open (O_RDONLY) keeps the kernel's
# __FMODE_EXEC there: an open to execute, for which the kernel checked MAY_EXEC, not MAY_READ.
FMODE_EXEC = 0o40

# --- misc ----------------------------------------------------------------
# blocks, bfree, bavail, files, ffree, bsize, namelen, frsize, padding, spare[6]
STATFS_OUT = struct.Struct("<QQQQQIIII24x")
ACCESS_IN = struct.Struct("<I4x")  # mask, (padding)
GETXATTR_IN = struct.Struct("<I4x")  # size, (padding)
GETXATTR_OUT = struct.Struct("<I4x")  # size, (padding)
SETXATTR_IN_COMPAT = struct.Struct("<II")  # size, flags (no SETXATTR_EXT)
SETXATTR_IN_EXT = struct.Struct("<III4x")  # size, flags, setxattr_flags, (padding)
INTERRUPT_IN = struct.Struct("<Q")  # unique
SYNCFS_IN = struct.Struct("<8x")  # (padding)
# getattr_flags, (reserved), fh, sx_flags, sx_mask
STATX_IN = struct.Struct("<I4xQII")
STATX_OUT_HEAD = struct.Struct("<QII16x")  # attr_valid, attr_valid_nsec, flags, spare
STATX_SIZE = 256  # struct fuse_statx: bit-compatible with struct statx
STATX_DEV = struct.Struct("<136xII")  # fuse_statx up to dev_major, dev_minor: the device the inode is on

# --- directories ---------------------------------------------------------
DIRENT = struct.Struct("<QQII")  # ino, off, namelen, type; name follows
DIRENT_ALIGN = 8
NAME_OFFSET = DIRENT.size  # 24
NAME_OFFSET_DIRENTPLUS = ENTRY_OUT_SIZE + DIRENT.size  # 152

# --- notifications (server -> kernel, unique = 0) ------------------------
NOTIFY_INVAL_INODE_OUT = struct.Struct("<Qqq")  # ino, off, len
NOTIFY_INVAL_ENTRY_OUT = struct.Struct("<QII")  # parent, namelen, flags
NOTIFY_DELETE_OUT = struct.Struct("<QQII")  # parent, child, namelen, padding
NOTIFY_PRUNE_OUT = struct.Struct("<IIQ")  # count, padding, spare; count u64 nodeids follow (7.45, Linux 6.18)
NOTIFY_PRUNE_MINOR = 45  # the protocol minor that has FUSE_NOTIFY_PRUNE


class NotifyCode(enum.IntEnum):
    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6
    RESEND = 7  # 7.40
    INC_EPOCH = 8  # 7.44
    PRUNE = 9  # 7.45


# --- device ioctls (magic 0xE5) ------------------------------------------
DEV_IOC_CLONE = 0x8004E500
DEV_IOC_BACKING_OPEN = 0x4010E501
DEV_IOC_BACKING_CLOSE = 0x4004E502
DEV_IOC_SYNC_INIT = 0x0000E503
BACKING_MAP = struct.Struct("<iIQ")  # fd, flags, padding


# --- FUSE-over-io_uring (7.42, Linux 6.14; fs/fuse/dev_uring.c) -------------
# A server's entry is two buffers it registers with IORING_OP_URING_CMD on an SQE128 ring:
# struct fuse_uring_req_header (288 bytes) and a payload of at least max_payload_sz.  The kernel
# writes a request's fuse_in_header into in_out, its first argument (the per-op struct; empty for
# ops whose first argument is a name) into op_in, the rest into the payload, and the payload's
# length into ring_ent_in_out.payload_sz; the reply is fuse_out_header in in_out, every out
# argument in the payload, and payload_sz.
URING_HEADER_SIZE = 288  # sizeof(struct fuse_uring_req_header)
URING_IN_OUT = 0  # char in_out[128]: fuse_in_header / fuse_out_header
URING_OP_IN = 128  # char op_in[128]: the first in-argument
URING_OP_IN_SIZE = 128
URING_PAYLOAD_SZ = 256 + 16  # fuse_uring_ent_in_out (flags u64, commit_id u64, payload_sz u32, ...) at 256
URING_CMD_REGISTER = 1  # enum fuse_uring_cmd: register an entry, then fetch a request into it
URING_CMD_COMMIT_AND_FETCH = 2  # answer the entry's request, then fetch the next into it
URING_IOV_SEGS = 2  # the SQE's addr is an iovec[2] (header, payload) and its len 2
URING_CMD_REQ = struct.Struct("<QQH6x")  # fuse_uring_cmd_req in the SQE's command area: flags, commit_id, qid

def new_encode_dev(major: int, minor: int) -> int:
    """fuse_attr.rdev and fuse_mknod_in.rdev use the kernel's 32-bit new_encode_dev form."""
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def new_decode_dev(rdev: int) -> tuple[int, int]:
    """(major, minor) of a 32-bit kernel dev number."""
    return (rdev & 0xFFF00) >> 8, (rdev & 0xFF) | ((rdev >> 12) & 0xFFF00)


class Opcode(enum.IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50  # 7.34
    TMPFILE = 51  # 7.37
    STATX = 52  # 7.39
    COPY_FILE_RANGE_64 = 53  # 7.45
