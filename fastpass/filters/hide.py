"""`hide`: names matching glob patterns are invisible and cannot be created through the mount.

A pattern without "/" is matched against every entry's name (`*.secret`,
`.git`); one with "/" against the entry's path relative to the root
(`private/*`, where `*` also crosses "/").  A hidden entry:

* is not found: LOOKUP answers ENOENT, so it cannot be opened, listed into,
  stat'ed, renamed or removed by path;
* is left out of READDIR and READDIRPLUS;
* cannot be made or replaced: CREATE, MKNOD, MKDIR, SYMLINK, LINK and RENAME
  onto a hidden name answer EACCES.  ENOENT there would be a lie the caller
  could not act on, and EEXIST would tell that the name exists.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re

from fastpass.filters.api import Args, Context, Dirent, Filter

_DOTS = (b".", b"..")


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Hide(Filter):
    def __init__(self, pattern: str | list[str]):
        patterns = [pattern] if isinstance(pattern, str) else pattern
        if not all(patterns):
            raise ValueError("hide: an empty pattern")
        names = [p for p in patterns if "/" not in p]
        paths = [p.strip("/") for p in patterns if "/" in p]
        self._name = re.compile("|".join(fnmatch.translate(p) for p in names)).match if names else None
        self._path = re.compile("|".join(fnmatch.translate(p) for p in paths)).match if paths else None

    def hidden(self, ctx: Context, nodeid: int, name: bytes) -> bool:
        """Whether entry `name` of directory `nodeid` is hidden (paths are read only if a pattern needs them)."""
        if name in _DOTS:
            return False
        if self._name is not None and self._name(os.fsdecode(name)):
            return True
        return self._path is not None and bool(self._path(ctx.path_of(nodeid, name)))

    def pre_lookup(self, ctx: Context, args: Args) -> None:
        if self.hidden(ctx, ctx.nodeid, args.name):  # type: ignore[attr-defined]
            raise _error(errno.ENOENT)

    def post_readdir(self, ctx: Context, args: Args, result: list[Dirent]) -> list[Dirent]:
        return [d for d in result if not self.hidden(ctx, ctx.nodeid, d.name)]

    def _refuse_name(self, ctx: Context, nodeid: int, name: bytes) -> None:
        if self.hidden(ctx, nodeid, name):
            raise _error(errno.EACCES)

    def pre_create(self, ctx: Context, args: Args) -> None:
        self._refuse_name(ctx, ctx.nodeid, args.name)  # type: ignore[attr-defined]

    pre_mknod = pre_mkdir = pre_symlink = pre_create

    def pre_link(self, ctx: Context, args: Args) -> None:
        self._refuse_name(ctx, ctx.nodeid, args.newname)  # type: ignore[attr-defined]

    def pre_rename(self, ctx: Context, args: Args) -> None:
        self._refuse_name(ctx, args.newdir, args.new)  # type: ignore[attr-defined]
