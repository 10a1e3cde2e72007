"""Filters the tests mount with (`--filter tests.filters_sample:CLASS`); the server imports them.

Each exercises one part of the contract in `fastpass.filters.api`.
"""

from __future__ import annotations

import codecs
import errno
import fnmatch
import os

from fastpass.filters.api import CONTINUE, POSTFILTER, USER, Args, AttrReply, Context, Decision, Dirent, Entry, Filter

OWNER = 4242  # what Owner reports as every file's owner


class Nothing(Filter):
    """Touches no operation: the mount must serve exactly as without a filter."""


class Decide(Filter):
    """GETXATTR decided by the attribute's name: user.continue, user.post, user.user, user.errno."""

    def pre_getxattr(self, ctx: Context, args: Args) -> Decision:
        name = args.name  # type: ignore[attr-defined]
        if name == b"user.post":
            return POSTFILTER
        if name == b"user.user":
            return USER
        if name == b"user.errno":
            raise OSError(errno.EPERM, "refused by Decide")
        return CONTINUE

    def post_getxattr(self, ctx: Context, args: Args, result: bytes | int) -> bytes | int:
        return result + 5 if isinstance(result, int) else b"post:" + result  # size probe, then the value

    def user_getxattr(self, ctx: Context, args: Args) -> bytes | int:
        value = b"answered by the filter"
        return len(value) if args.size == 0 else value  # type: ignore[attr-defined]


class Mark(Filter):
    """Appends its tag to every symlink target read, and answers user.mark itself: shows the stacking order."""

    def __init__(self, tag: str):
        self.tag = tag.encode()

    def post_readlink(self, ctx: Context, args: Args, result: bytes) -> bytes:
        return result + self.tag

    def pre_getxattr(self, ctx: Context, args: Args) -> Decision:
        return USER if args.name == b"user.mark" else CONTINUE  # type: ignore[attr-defined]

    def user_getxattr(self, ctx: Context, args: Args) -> bytes | int:
        return len(self.tag) if args.size == 0 else self.tag  # type: ignore[attr-defined]


class KeepContents(Filter):
    """Changes inputs: O_TRUNC is dropped from every open, and a lookup of "alias" looks up "real"."""

    def pre_open(self, ctx: Context, args: Args) -> None:
        args.flags &= ~os.O_TRUNC  # type: ignore[attr-defined]

    def pre_lookup(self, ctx: Context, args: Args) -> None:
        if args.name == b"alias":  # type: ignore[attr-defined]
            args.name = b"real"  # type: ignore[attr-defined]


class Owner(Filter):
    """Changes outputs: every file is reported as owned by OWNER, in entries, attributes and listings."""

    def post_lookup(self, ctx: Context, args: Args, result: Entry) -> None:
        result.attr.uid = OWNER

    def post_getattr(self, ctx: Context, args: Args, result: AttrReply) -> None:
        result.attr.uid = OWNER

    def post_readdir(self, ctx: Context, args: Args, result: list[Dirent]) -> None:
        for d in result:
            if d.entry is not None:
                d.entry.attr.uid = OWNER


class Broken(Filter):
    """Fails with a bug (not an OSError) on anything about a name "boom", and tries to change frozen inputs."""

    def pre_lookup(self, ctx: Context, args: Args) -> None:
        if args.name == b"boom":  # type: ignore[attr-defined]
            raise ZeroDivisionError("a bug in a filter")

    def post_mkdir(self, ctx: Context, args: Args, result: Entry) -> None:
        if args.name == b"frozen":  # type: ignore[attr-defined]
            args.name = b"other"  # type: ignore[attr-defined]  # inputs are read-only now: AttributeError


class Rot13(Filter):
    """Reads and writes of files whose path matches `pattern` go through rot13; only those need the data."""

    def __init__(self, pattern: str):
        self.pattern = pattern

    def needs_data(self, ctx: Context, flags: int) -> bool:
        return fnmatch.fnmatch(ctx.path, self.pattern)

    def pre_read(self, ctx: Context, args: Args) -> Decision:
        return POSTFILTER if fnmatch.fnmatch(ctx.path, self.pattern) else CONTINUE

    def post_read(self, ctx: Context, args: Args, result: bytes) -> bytes:
        return codecs.encode(result.decode("latin-1"), "rot13").encode("latin-1")

    def pre_write(self, ctx: Context, args: Args) -> None:
        if fnmatch.fnmatch(ctx.path, self.pattern):
            data = bytes(args.data)  # type: ignore[attr-defined]
            args.data = codecs.encode(data.decode("latin-1"), "rot13").encode("latin-1")  # type: ignore[attr-defined]


class Typo(Filter):
    """A hook for an operation that does not exist: refused at mount time."""

    def pre_lokup(self, ctx: Context, args: Args) -> None:
        pass
