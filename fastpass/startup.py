"""How `fastpass mount` learns that its background server serves, or why it never will.

`fastpass mount` forks the server (the supervisor) and waits on a pipe for
one line from it: `ok` once every worker serves, or a one-line error.  Just
after its mount(2) (or fusermount3) succeeds, the supervisor first sends
`mounted ID DEV`: the mount's id and device number in mountinfo.  Together
they tell this mount from any other that may sit on the same mountpoint
later, so the waiting process never unmounts someone else's.

The pipe's write end is held by the supervisor and by every process it
forks before it is ready (its workers and its watcher).  End of file with
no answer therefore means that all of them have exited, killed or crashed
before anything could be said, and nobody is left to clean up but the
waiting `fastpass mount`.  It names the cause from the supervisor's wait
status, and if the mount it was told about is still there (a dead FUSE
mount: every access fails with ENOTCONN), it detaches it.  Workers that
outlive their supervisor detach the mount themselves (PR_SET_PDEATHSIG),
and they hold the pipe until they have, so the two never race.

Every failure message ends with the last lines the server logged during this
start, where there are any.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
from typing import BinaryIO

from fastpass import state
from fastpass.kernel import mount

log = logging.getLogger("fastpass")

TAIL = 3  # log lines quoted in a failure message
_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \d+ ")  # time and pid, as cli's log format puts them


def exit_cause(status: int) -> str:
    """A wait status in words: 'was killed by SIGILL', 'exited with status 1'."""
    if os.WIFSIGNALED(status):
        signo = os.WTERMSIG(status)
        try:
            return f"was killed by {signal.Signals(signo).name}"
        except ValueError:
            return f"was killed by signal {signo}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Report:
    """The server's end of the pipe.  Each message is one line in one write(2), so no two interleave."""

    def __init__(self, fd: int):
        self.fd = fd

    def mounted(self, entry: mount.MountEntry | None) -> None:
        if entry is not None:
            os.write(self.fd, f"mounted {entry.mount_id} {entry.dev}\n".encode())

    def ready(self, error: str | None) -> None:
        os.write(self.fd, ("ok" if error is None else " ".join(error.split()) or "failed").encode() + b"\n")
        os.close(self.fd)


def log_size(path: str | None) -> int:
    """Where this start's lines will begin in the log file."""
    try:
        return os.stat(path).st_size if path else 0
    except OSError:
        return 0


def log_lines(path: str | None, start: int) -> list[str]:
    """The lines logged since `start`, without their time and pid."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = [_PREFIX.sub("", line).strip() for line in text.splitlines()]
    return [line for line in lines if line]


def wait(pipe: BinaryIO, pid: int, mountpoint: str, log_path: str | None, log_start: int) -> str | None:
    """Wait for server `pid` to serve (None) or fail (why, one line), leaving no mount of its own behind."""
    reported: mount.MountEntry | None = None
    answer = None
    for line in pipe:  # line by line: the workers hold the pipe open as long as they live
        text = line.decode(errors="replace").strip()
        if text == "ok":
            return None
        if text.startswith("mounted "):
            mount_id, dev = text.split()[1:]
            reported = mount.MountEntry(dev, "", "", int(mount_id))  # who it is, all that is compared
            continue
        answer = text
        break
    _, status = os.waitpid(pid, 0)
    message = answer or f"the server (pid {pid}) {exit_cause(status)} during start-up"
    if reported is not None:
        message += _clear(mountpoint, reported)
    state.remove_stale(mountpoint, pid)
    lines = log_lines(log_path, log_start)
    if answer is not None:  # what led to it, not the server's report of it and its shutdown
        lines = list(itertools.takewhile(lambda line: answer not in line, lines))
    tail = lines[-TAIL:]
    if answer is None and log_path:
        log.error("%s", message)  # the server could not say it: the log would end without a reason
    elif answer is None:
        message += " (no log was kept: --log FILE keeps one)"
    if tail:
        message += "; log: " + " | ".join(tail)
    return message


def _clear(mountpoint: str, reported: mount.MountEntry) -> str:
    """Detach the dead mount the server made, if it is still there; what was done, for the message."""
    if not mount.is_same(mountpoint, reported):
        return ""  # cleared already, or someone else's mount now: not ours to touch
    try:
        mount.unmount(mountpoint)
    except (OSError, mount.MountError) as e:
        return f"; its dead mount on {mountpoint} could not be detached ({e}): fastpass unmount {mountpoint}"
    return f"; its dead mount on {mountpoint} was detached"
