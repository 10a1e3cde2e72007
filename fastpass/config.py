"""Mount options, each with what it promises.  Stored as JSON beside the mount."""

from __future__ import annotations

import msgspec

DEFAULT_MAX_INODES = 1 << 20


class MountConfig(msgspec.Struct, frozen=True):
    backing: str
    mountpoint: str
    # Let users other than the mounter in; each request then runs with the
    # caller's fsuid/fsgid/groups, so the backing's permission checks decide.
    allow_other: bool = False
    # Let the kernel check mode bits before asking fastpass (fewer requests).
    default_permissions: bool = False
    # How long (s) the kernel may trust attributes and names without asking.
    attr_timeout: float = 1.0
    entry_timeout: float = 1.0
    # One log line per request and per reply.
    debug: bool = False
    # Where the server logs when it runs in the background.
    log: str | None = None
    # Mount over a non-empty directory, hiding its contents while mounted.
    nonempty: bool = False
    # Worker processes, each reading requests from its own clone of the device fd.
    workers: int = 1
    # Kernel passthrough of regular files' reads, writes and mmap: "auto" uses it
    # where the kernel offers it and we are root, "on" refuses to mount without it.
    passthrough: str = "auto"
    # Inodes the kernel may know at once (184 bytes of shared memory each, touched
    # as used); a lookup past it fails with ENFILE until the kernel forgets some.
    max_inodes: int = DEFAULT_MAX_INODES
    # Filters around the operations, outermost first: each `NAME[:ARG=VALUE,...]` (a built-in)
    # or `MODULE:CLASS[:ARG=VALUE,...]`; see fastpass.filters.
    filters: tuple[str, ...] = ()


def split_time(seconds: float) -> tuple[int, int]:
    """(sec, nsec) of a timeout, the form every FUSE reply carries."""
    whole = int(seconds)
    return whole, round((seconds - whole) * 1e9)
