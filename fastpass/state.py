"""The record a running mount leaves beside it: who serves it and what was negotiated.

`fastpass unmount` reads it to wait for the server to finish, and `stats`
to report the negotiated protocol.  One JSON file per mountpoint in a
runtime directory private to the user.
"""

from __future__ import annotations

import hashlib
import os

import msgspec

from fastpass.config import MountConfig
from fastpass.kernel.init import Negotiated


class MountState(msgspec.Struct):
    pid: int
    config: MountConfig
    negotiated: Negotiated | None  # None: libfuse negotiated it (the pyfuse3 engine)
    started: float


def runtime_dir() -> str:
    if os.geteuid() == 0:
        return "/run/fastpass"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/fastpass-{os.getuid()}"
    return os.path.join(base, "fastpass")


def path_for(mountpoint: str) -> str:
    """`mountpoint` as resolved when mounted (resolving it now would stat the mount)."""
    digest = hashlib.sha1(os.fsencode(mountpoint)).hexdigest()[:16]
    return os.path.join(runtime_dir(), f"{digest}.json")


def socket_path(mountpoint: str) -> str:
    """Where the supervisor answers `fastpass stats`, beside its record."""
    return path_for(mountpoint).removesuffix(".json") + ".sock"


def write(state: MountState) -> None:
    os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
    path = path_for(state.config.mountpoint)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(state))
    os.replace(tmp, path)


def read(mountpoint: str) -> MountState | None:
    try:
        with open(path_for(mountpoint), "rb") as f:
            return msgspec.json.decode(f.read(), type=MountState)
    except (OSError, msgspec.DecodeError):
        return None


def remove(mountpoint: str) -> None:
    """Remove the mount's record and its stats socket."""
    for path in (path_for(mountpoint), socket_path(mountpoint)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def remove_stale(mountpoint: str, pid: int) -> None:
    """Remove what server `pid` left behind if it is gone without doing so (it was killed)."""
    record = read(mountpoint)
    if record is not None and record.pid == pid and not alive(pid):
        remove(mountpoint)


def alive(pid: int) -> bool:
    """Whether a process still runs; a zombie (exited, not yet reaped by init) does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except FileNotFoundError:
        return False
