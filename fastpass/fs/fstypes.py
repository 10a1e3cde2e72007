"""Backing filesystems told apart by their statfs magic, cached per device number by `Fs`.

Sizes that are not lengths (UNSIZED): procfs, sysfs, cgroupfs and their kin.  Their regular
files are made when read: /proc/uptime says st_size 0 and gives 20-odd bytes, a sysfs attribute
says 4096 and gives a line.  The kernel's page cache on a FUSE file reads
no further than the size the attributes gave (a read at or past it returns 0 without asking
the server), and kernel passthrough would be refused anyway (procfs sets the deepest stacking
depth, ELOOP).  So an open of such a file is FOPEN_DIRECT_IO (fastpass.fs.data): every read
is a READ for the count the application asked, the worker reads the backing at that offset
and replies with what it gave, and the application reads on until a read returns 0, as it
does on the backing itself.  With FOPEN_DIRECT_IO a plain read, pread or readv is never cut
to the file's size (fs/fuse/file.c, fuse_direct_read_iter; only an application's O_DIRECT
read through aio or io_uring is, and these filesystems refuse O_DIRECT opens).

A backing directory may hold mounts of these below it (a container's root, /), so the test
is per file, by the statfs magic of the filesystem its inode is on.

A close that reports nothing (SILENT_CLOSE): local filesystems with no `flush` file operation,
so close(2) of a backing file never fails there and a FLUSH has nothing to report.  A writable
open on them is FOPEN_NOFLUSH too (fastpass.fs.data): one round trip fewer per write-open/close
pair.  NFS, CIFS, FUSE, overlayfs (which passes flush down), f2fs (whose flush ends an atomic
write) and anything unknown keep their FLUSH, whose close of a duplicate reports deferred write
errors as the application's own close would.
"""

from __future__ import annotations

from fastpass import _linux

# statfs f_type values (include/uapi/linux/magic.h; configfs and fusectl from their fs/ sources).
UNSIZED = frozenset({
    0x9FA0,  # proc
    0x62656572,  # sysfs
    0x27E0EB,  # cgroup (v1)
    0x63677270,  # cgroup2
    0x64626720,  # debugfs
    0x74726163,  # tracefs
    0x62656570,  # configfs
    0x73636673,  # securityfs
    0xF97CFF8C,  # selinuxfs
    0x43415D53,  # smackfs
    0x65735543,  # fusectl
    0x42494E4D,  # binfmt_misc
    0xCAFE4A11,  # bpf
})  # fmt: skip


SILENT_CLOSE = frozenset({
    0xEF53,  # ext2, ext3, ext4
    0x58465342,  # xfs
    0x9123683E,  # btrfs
    0x01021994,  # tmpfs
    0x858458F6,  # ramfs
})  # fmt: skip


def magic(fd: int) -> int:
    """The statfs magic of the filesystem holding the inode behind `fd` (O_PATH will do)."""
    return _linux.fstatfs_type(fd)
