"""Running again a request whose effect may already have happened.

A worker died between starting a request with an effect and recording its reply
(`fastpass.shm.journal`): its replacement runs the request again, and where the
backing then answers "already so" (the name exists, the name is gone), that is the
first run's success, and it answers as the first run would have.  The other requests
with effects come out the same when run twice: writes and fallocate go to explicit
offsets (the backing open has no O_APPEND, `fastpass.fs.data`), setattr sets values,
and open, opendir and lookup at worst leave one handle or lookup count unclaimed.

Left as they are (said in the README): a RENAME_EXCHANGE run twice swaps back, and a
request whose first run failed with the "already so" errno answers success.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from fastpass.fs.context import Fs, Request
from fastpass.kernel.abi import Opcode as O

Handler = Callable[..., object]
_nodeid = struct.Struct("<Q").unpack_from  # fuse_entry_out.nodeid


def _entry(name_at: int) -> Callable[[Handler, Fs, Request, tuple], object]:
    """The made name's entry, as the first run answered it."""
    return lambda handler, fs, req, args: fs.lookup_entry(req.nodeid, args[name_at])


def _linked(handler: Handler, fs: Fs, req: Request, args: tuple) -> object:
    oldnodeid, newname = args
    entry = fs.lookup_entry(req.nodeid, newname)
    if _nodeid(entry)[0] != oldnodeid:  # the name is another inode's: not our link
        fs.inodes.forget(_nodeid(entry)[0], 1)
        raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
    return entry


def _created(handler: Handler, fs: Fs, req: Request, args: tuple) -> object:
    """Open the file the first run made, without truncating what it may hold by now."""
    flags, *rest = args
    return handler(fs, req, flags & ~(os.O_EXCL | os.O_TRUNC), *rest)


def _gone(handler: Handler, fs: Fs, req: Request, args: tuple) -> None:
    return None


# opcode -> (the errno that says the first run took effect, the answer then)
AFTER: dict[int, tuple[int, Callable[[Handler, Fs, Request, tuple], object]]] = {
    O.MKDIR: (errno.EEXIST, _entry(-1)),
    O.MKNOD: (errno.EEXIST, _entry(-1)),
    O.SYMLINK: (errno.EEXIST, _entry(0)),
    O.LINK: (errno.EEXIST, _linked),
    O.CREATE: (errno.EEXIST, _created),
    O.UNLINK: (errno.ENOENT, _gone),
    O.RMDIR: (errno.ENOENT, _gone),
    O.RENAME: (errno.ENOENT, _gone),
    O.RENAME2: (errno.ENOENT, _gone),
    O.SETXATTR: (errno.EEXIST, _gone),  # XATTR_CREATE
    O.REMOVEXATTR: (errno.ENODATA, _gone),
}


def redoing(handler: Handler) -> Handler:
    """`handler` in redo mode (`again`), called as any handler is."""
    return lambda fs, req, *args: again(handler, fs, req, args)


def again(handler: Handler, fs: Fs, req: Request, args: tuple) -> object:
    """Run the request again; "already so" from the backing is the first run's success."""
    try:
        return handler(fs, req, *args)
    except OSError as e:
        after = AFTER.get(req.opcode)
        if after is None or e.errno != after[0]:
            raise
        return after[1](handler, fs, req, args)
