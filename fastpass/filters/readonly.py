"""`readonly`: every mutation through the mount fails with EROFS; reading is untouched."""

from __future__ import annotations

import errno
import os

from fastpass.filters.api import Args, Context, Filter

_WRITE_OPEN = os.O_WRONLY | os.O_RDWR | os.O_TRUNC


def _refuse(self: Filter, ctx: Context, args: Args) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


class ReadOnly(Filter):
    """Opens for writing are refused, so no WRITE ever reaches a file: reads stay in kernel passthrough."""

    def pre_open(self, ctx: Context, args: Args) -> None:
        if args.flags & _WRITE_OPEN:  # type: ignore[attr-defined]
            _refuse(self, ctx, args)

    pre_setattr = pre_mknod = pre_mkdir = pre_symlink = pre_link = pre_unlink = pre_rmdir = _refuse
    pre_rename = pre_create = pre_tmpfile = pre_write = pre_fallocate = pre_copy_file_range = _refuse
    pre_setxattr = pre_removexattr = _refuse

    def needs_data(self, ctx: Context, flags: int) -> bool:
        return False  # a file open here is open read-only: its reads are not ours to see
