"""Set-user-ID bits after writes and truncation, as the kernel's own filesystems keep them.

fastpass negotiates HANDLE_KILLPRIV_V2: the kernel stops asking for
security.capability before every write and instead tells fastpass when a
caller without CAP_FSETID writes or truncates, and fastpass clears the bits.
Checked for a user (who loses them) and root (who keeps them), with the
data served in userspace and passed through by the kernel, against a bind
mount of the same kind of backing.
"""

from __future__ import annotations

import contextlib
import os
import stat

import pytest

from tests.conftest import bind_mount, fastpass_mount
from tests.integration.test_multiuser import user1000  # noqa: F401 (a fixture)
from tests.users import GID, UID, as_user


def _write(path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)


def _truncate(path, size: int) -> None:
    os.truncate(path, size)


@pytest.fixture(params=["passthrough-off", "passthrough-on", "pyfuse3", "bind"])
def mounted(request, world_dir, user1000):  # noqa: F811
    if request.param == "bind":
        cm = bind_mount(world_dir)
    elif request.param == "pyfuse3":
        cm = fastpass_mount(world_dir, "--allow-other", "--engine", "pyfuse3")
    else:
        cm = fastpass_mount(world_dir, "--allow-other", "--workers", "2", "--passthrough", request.param.split("-")[1])
    with cm as m:
        yield m


@pytest.mark.parametrize("change", ["write", "truncate"])
def test_a_user_loses_setuid_root_keeps_it(mounted, change: str) -> None:
    act = (lambda p: _write(p, b"new")) if change == "write" else (lambda p: _truncate(p, 1))
    for who, expect_kept in (("user", False), ("root", True)):
        path = mounted.backing / f"{who}-{change}"
        path.write_bytes(b"old data")
        os.chown(path, UID, GID)
        os.chmod(path, 0o6755)  # set-user-ID and set-group-ID with group execute
        with contextlib.suppress(OSError):
            os.setxattr(path, "security.capability", bytes.fromhex("0100000200000000000000000000000000000000"))
        if who == "user":
            as_user(act, mounted.mnt / path.name)
        else:
            act(mounted.mnt / path.name)
        mode = os.stat(path).st_mode
        assert bool(mode & stat.S_ISUID) == expect_kept, (who, oct(mode))
        assert bool(mode & stat.S_ISGID) == expect_kept, (who, oct(mode))
        assert os.stat(mounted.mnt / path.name).st_mode == mode
        if not expect_kept:
            assert "security.capability" not in os.listxattr(path)
