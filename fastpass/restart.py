"""`fastpass restart MOUNTPOINT`: a new fastpass takes over a live mount, with no client error.

How: the supervisor executes the fastpass now installed (`python -m fastpass resume`) in
its own process, so it keeps its pid, its children and every fd it hands over: the
session fd, each worker seat (device clone, buffer and journal memfds), the shared
region's memfd (inodes, handles, attribute cache, counters: the nodeids and fhs the
kernel holds stay valid), the backing root and the watcher's fanotify fd.  What the new
code needs to read them comes in a `Handover` record in a memfd of its own.  The
resumed supervisor then replaces the workers one at a time (SIGTERM, and a new worker
at the same seat, which answers whatever its predecessor left: `fastpass.shm.journal`),
and the watcher, so every process runs the new code; the kernel holds the requests
that arrive meanwhile.

What may differ between the two versions is guarded: before it executes anything, the
supervisor runs the new code once as a probe (`resume --check`) on the same record, which
refuses a hand-over whose FORMAT differs or whose region it would lay out otherwise; the
supervisor then answers `fastpass restart` with the refusal and goes on as it was.

FUSE-over-io_uring is refused: the kernel holds the addresses of the workers' entries in
the memory of the processes that registered them, which an exec cannot keep.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import msgspec

from fastpass import state

log = logging.getLogger("fastpass")

FORMAT = 4  # of the handed-over state: the region's layout, the seats and the journal; bump when any changes


REFUSED_ON_RINGS = ("requests come from FUSE-over-io_uring entries, whose addresses the kernel holds in the "
                    "workers' memory: restart needs --transport dev")  # fmt: skip


class SeatFds(msgspec.Struct):
    index: int
    devfd: int
    depth: int
    entries: int
    buffers: int  # memfd
    journal: int  # memfd


class Handover(msgspec.Struct):
    format: int
    record: state.MountState
    ours: list | None  # mount.MountEntry's fields
    session: int
    root_fd: int
    fan_fd: int
    region: int  # memfd
    inodes: int  # memfd of the inode table's slots
    seats: list[SeatFds]
    workers: dict[int, int]  # pid -> index (the watcher's is WATCHER)
    restarts: int


def prepare(handover: Handover) -> tuple[list[str], list[int]] | str:
    """`handover` written to a memfd and probed by the fastpass now installed: the command that
    resumes it and the fds it inherits, or why the new code refuses it (nothing changed then)."""
    fd = os.memfd_create("fastpass-handover", 0)  # inherited by the probe and across the exec
    os.write(fd, msgspec.json.encode(handover))
    fds = [fd, handover.session, handover.root_fd, handover.region, handover.inodes,
           *(f for s in handover.seats for f in (s.devfd, s.buffers, s.journal)),
           *([handover.fan_fd] if handover.fan_fd >= 0 else [])]  # fmt: skip
    command = [sys.executable, "-m", "fastpass", "resume", handover.record.config.mountpoint, str(fd)]
    probe = subprocess.run([*command, "--check"], pass_fds=fds, capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        os.close(fd)
        return probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"the new code exited {probe.returncode}"
    return command, fds


def execute(command: list[str], fds: list[int]) -> None:
    """Become the new code, keeping `fds`; never returns."""
    log.info("restart: handing the mount over to %s", " ".join(command))
    for f in fds:
        os.set_inheritable(f, True)
    logging.shutdown()
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # the event loop's mask must not outlive it
    os.execv(sys.executable, command)


def read(fd: int) -> Handover:
    """The record a supervisor handed over in memfd `fd` (closed)."""
    try:
        return msgspec.json.decode(os.pread(fd, os.fstat(fd).st_size, 0), type=Handover)
    finally:
        os.close(fd)


def refused(h: Handover, mountpoint: str) -> str | None:
    """Why this code cannot take `h` over; None: it can (the region's layout is checked as it is attached)."""
    if h.format != FORMAT:
        return f"the running server hands over state format {h.format}, this fastpass reads {FORMAT}"
    if h.record.config.mountpoint != mountpoint:
        return f"the hand-over is for {h.record.config.mountpoint}"
    return None
