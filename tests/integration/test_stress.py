"""Debian's stress-ng file-system stressors, with --verify, on one fastpass mount.

One mount for the module, in the configuration a user gets by default on a
2-core machine (2 workers, passthrough auto, io_uring); each stressor then
runs 2 instances for 2 seconds in a directory of its own on it, and must
exit 0, do some work (its bogo-op count), leave no files behind, and leave
no error in the server's log.

Stressors of stress-ng's filesystem and io classes left out, and why:
- bind-mount, binderfs, eventfd, handle, procfs, io: they never touch the
  temp path (bind mounts of /, binderfs, eventfds, /proc/self/mountinfo's
  own files, sync(2)); counted on a mount, they send it no request.
- fiemap, verity: FUSE has no FS_IOC_FIEMAP and no fs-verity; stress-ng
  says it skips them.
- io-uring: stress-ng 0.15.06's own IORING_OP_STATX check fails on this
  kernel on ext4 itself (ENOENT), mount or not.
- rawdev: it needs a block device, not a directory.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import Mounted, check_log, fastpass_mount, is_mounted

STRESSORS = [
    # filesystem class
    "access", "chattr", "chdir", "chmod", "chown", "copy-file", "dentry", "dir", "dirdeep", "dirmany", "dnotify",
    "dup", "fallocate", "fanotify", "fcntl", "file-ioctl", "filename", "flock", "fpunch", "fsize", "fstat",
    "getdent", "hdd", "inode-flags", "inotify", "iomix", "ioprio", "lease", "link", "locka", "lockf", "lockofd",
    "mknod", "open", "rename", "symlink", "sync-file", "touch", "utime", "xattr",
    # io class, and memory stressors that work on a file in the temp path
    "aio", "aiol", "readahead", "revio", "seek", "mmap", "msync", "sendfile",
]  # fmt: skip
OPTIONS = {"mmap": ("--mmap-file",)}  # without it, mmap maps anonymous memory
# Counted in threads that stress-ng 0.15.06 never adds to the bogo ops (0 on ext4 too).
UNCOUNTED = {"inode-flags"}
SECONDS, INSTANCES = 2, 2


@pytest.fixture(scope="module")
def mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounted]:
    with fastpass_mount(tmp_path_factory.mktemp("stress"), "--workers", "2") as m:
        yield m


def bogo_ops(output: str, stressor: str) -> int:
    """The stressor's bogo-op count from --metrics-brief's table."""
    for line in output.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[0] == "stress-ng:" and fields[1] == "metrc:" and fields[3] == stressor:
            return int(fields[4])
    raise AssertionError(f"no metrics line for {stressor}:\n{output}")


@pytest.mark.parametrize("stressor", STRESSORS)
def test_stressor(mount: Mounted, stressor: str) -> None:
    """stress-ng --STRESSOR 2 --verify on the mount: a clean pass that did work and left nothing behind."""
    where = mount.mnt / stressor
    where.mkdir()
    cmd = ["stress-ng", f"--{stressor}", str(INSTANCES), *OPTIONS.get(stressor, ()), "--timeout", str(SECONDS),
           "--verify", "--metrics-brief", "--temp-path", str(where)]  # fmt: skip
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=SECONDS + 60)
    output = r.stdout + r.stderr
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{output}"
    assert "skipping" not in output, output
    assert stressor in UNCOUNTED or bogo_ops(output, stressor) > 0, output
    assert is_mounted(mount.mnt)
    assert os.listdir(where) == [], "stress-ng removes what it made"
    check_log(mount)
