"""A start that fails leaves nothing behind and says why.

Each failure is real: a filter from tests/startup_filters.py kills the
supervisor or its workers with a signal at a known point of the start
(before the mount exists, or after it and before it serves), or the
environment makes the server fail after mounting.  After each,
`fastpass mount` has exited non-zero with one line on stderr naming who
died and how, nothing is mounted under the test's directory
(/proc/self/mountinfo), no process of the mount is left, and neither is its
state record.  A dead FUSE mount on the mountpoint is named as such, with
how to clear it, and `fastpass unmount` clears it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from conftest import fastpass_mount, is_mounted, mounts_under, run_fastpass, wait_for
from test_cli import assert_nothing_left, assert_refused
from test_lifecycle import alive, children, probe
from test_multiuser import GID, UID, dev_fuse_for_users, user1000  # noqa: F401 - fixtures

from fastpass import state
from fastpass.cli import SYSLOG
from tests.users import run_cli_as

FILTERS = "tests.startup_filters"
POOL = pytest.mark.parametrize("workers", [1, 4], ids=["w1", "w4"])
SERVER_KILLED = r"^fastpass: error: the server \(pid \d+\) was killed by {} during start-up"


def failed_mount(tmp_path: Path, *options: str, log: bool = True) -> tuple[str, str]:
    """`fastpass mount` that must fail: (its one error line, the server's log); nothing may be left."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    logfile = tmp_path / "server.log"
    r = run_fastpass("mount", str(backing), str(mnt), *(("--log", str(logfile)) if log else ()), *options)
    line = assert_refused(r.returncode, r.stdout, r.stderr)
    assert r.stdout == ""
    assert_nothing_left(tmp_path)
    assert probe(mnt) == "ok" and os.listdir(mnt) == [], "the bare mountpoint is not back"
    assert state.read(str(mnt)) is None, "the state record outlived a failed start"
    assert not os.path.exists(state.socket_path(str(mnt))), "the stats socket outlived a failed start"
    return line, logfile.read_text() if log else ""


# --- the supervisor dies ------------------------------------------------------------------
@pytest.mark.parametrize("signo", ["SIGKILL", "SIGUSR1"])
def test_supervisor_killed_before_mounting(tmp_path, signo):
    line, log = failed_mount(tmp_path, "--filter", f"{FILTERS}:SupervisorDies:signal={signo}")
    assert re.match(SERVER_KILLED.format(signo) + "$", line), line
    assert f"was killed by {signo} during start-up" in log, f"the log does not say why:\n{log}"


@POOL
def test_supervisor_killed_after_mounting_workers_detach(tmp_path, workers):
    """The supervisor dies with the mount made and its first workers forked: they detach the mount."""
    line, log = failed_mount(tmp_path, "--workers", str(workers), "--filter", f"{FILTERS}:SupervisorKilled")
    assert re.match(SERVER_KILLED.format("SIGKILL"), line), line
    assert "fastpass: mounted" in line, f"the message does not quote the log: {line}"
    assert "mounted" in log and "was killed by SIGKILL during start-up" in log, log
    assert "could not unmount" not in log, f"orphaned workers fought over the unmount:\n{log}"


@POOL
def test_supervisor_killed_after_mounting_nobody_left(tmp_path, workers):
    """The supervisor and every process it forked die after mounting: `fastpass mount` detaches the dead mount."""
    line, log = failed_mount(tmp_path, "--workers", str(workers), "--filter", f"{FILTERS}:SupervisorKilled:workers=die")
    assert re.match(SERVER_KILLED.format("SIGKILL"), line), line
    assert f"its dead mount on {tmp_path / 'mnt'} was detached" in line, line
    assert "was detached" in log, f"the log does not say what happened:\n{log}"


def test_failure_without_a_log_says_so(tmp_path):
    line, _ = failed_mount(tmp_path, "--filter", f"{FILTERS}:SupervisorKilled:workers=die", log=False)
    assert re.match(SERVER_KILLED.format("SIGKILL"), line), line
    assert "--log FILE" in line, line


# --- a worker dies --------------------------------------------------------------------------
@POOL
def test_worker_killed_during_startup(tmp_path, workers):
    """Workers that die before serving fail the start: the supervisor unmounts and says which, and how."""
    line, log = failed_mount(tmp_path, "--workers", str(workers), "--filter", f"{FILTERS}:WorkersDie")
    who = r"(worker \d+|the watcher) \(pid \d+\) was killed by SIGKILL during start-up"
    assert re.match(rf"^fastpass: error: {who}; log: .*fastpass: mounted ", line), line
    assert re.search(rf" ERROR fastpass: {who}$", log, re.MULTILINE), log
    assert "Traceback" not in log, log


# --- as a user, through fusermount3 ------------------------------------------------------------
def user_mount_fails(world_dir: Path, runtime: Path, *options: str) -> tuple[str, str]:
    """`fastpass mount` as uid 1000 that must fail: (its error line, the log); nothing may be left."""
    backing, mnt, logs = world_dir / "backing", world_dir / "mnt", world_dir / "logs"
    for d in (backing, mnt, logs):
        d.mkdir()
        os.chown(d, UID, GID)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "HOME": str(world_dir)}
    try:
        code, out, err = run_cli_as(UID, GID, [], "mount", str(backing), str(mnt), "--log", str(logs / "server.log"),
                                    *options, env=env)  # fmt: skip
        line = assert_refused(code, out, err)
        assert mounts_under(world_dir) == [], "a failed start as a user left a mount"
        assert probe(mnt) == "ok"
        records = runtime / "fastpass"
        assert not records.exists() or not os.listdir(records), "a failed start left its state record"
        return line, (logs / "server.log").read_text()
    finally:
        if is_mounted(mnt):
            run_fastpass("unmount", str(mnt))


def test_user_supervisor_killed_after_mounting(world_dir, user1000, dev_fuse_for_users):  # noqa: F811
    """As a user, the dead mount a killed server left is detached with fusermount3."""
    runtime = world_dir / "run"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, UID, GID)
    line, _ = user_mount_fails(world_dir, runtime, "--filter", f"{FILTERS}:SupervisorKilled:workers=die")
    assert re.match(SERVER_KILLED.format("SIGKILL"), line), line
    assert f"its dead mount on {world_dir / 'mnt'} was detached" in line, line


def test_user_server_fails_after_mounting(world_dir, user1000, dev_fuse_for_users):  # noqa: F811
    """A runtime directory the user cannot write fails the start after mounting: the server detaches
    its mount, and the message gives its exit status and the exception from its log."""
    runtime = world_dir / "root-owned"
    runtime.mkdir(mode=0o755)
    line, log = user_mount_fails(world_dir, runtime)
    assert re.match(r"^fastpass: error: the server \(pid \d+\) exited with status 1 during start-up; log: ", line), line
    assert line.endswith(f"PermissionError: [Errno 13] Permission denied: '{runtime / 'fastpass'}'"), line
    assert "mounted" in log and "Traceback" in log, log


# --- a dead mount on the mountpoint ----------------------------------------------------------------
def test_dead_mountpoint_is_named_and_unmount_clears_it(tmp_path):
    with fastpass_mount(tmp_path, "--workers", "2") as m:
        sup = m.pid
        pool = children(sup, watcher=True)
        assert pool
        for pid in pool:  # stopped, they cannot act on their supervisor's death
            os.kill(pid, signal.SIGSTOP)
        os.kill(sup, signal.SIGKILL)
        assert wait_for(lambda: not alive(sup), 10)
        for pid in pool:
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not any(alive(pid) for pid in pool), 10)
        assert is_mounted(m.mnt)
        assert probe(m.mnt) == "error ENOTCONN", "not a dead FUSE mount"
        assert state.read(str(m.mnt)) is not None, "the killed server's record should be there"

        r = run_fastpass("mount", str(m.backing), str(m.mnt), "--log", str(m.log))
        line = assert_refused(r.returncode, r.stdout, r.stderr, f"mountpoint {m.mnt} is a dead FUSE mount",
                              f"`fastpass unmount {m.mnt}`", f"`umount -l {m.mnt}`")  # fmt: skip
        assert "does not exist" not in line
        assert is_mounted(m.mnt), "a refused mount must not touch what is there"

        r = run_fastpass("unmount", str(m.mnt))
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert not is_mounted(m.mnt)
        assert probe(m.mnt) == "ok"
        assert state.read(str(m.mnt)) is None, "`fastpass unmount` left the dead server's record"
        assert not os.path.exists(state.socket_path(str(m.mnt)))
    # and the mountpoint serves again
    with fastpass_mount(tmp_path) as m:
        (m.backing / "f").write_text("again")
        assert (m.mnt / "f").read_text() == "again"
    assert not is_mounted(m.mnt)


# --- where a background server's log goes without --log ---------------------------------------
def test_background_mount_without_log_logs_to_syslog(tmp_path):
    """Like other daemons: its messages reach syslog's socket, /dev/log, tagged fastpass[PID]."""
    if os.path.exists(SYSLOG):
        pytest.skip(f"{SYSLOG} belongs to this machine's syslog: its messages would go there, not to this test")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        listener.bind(SYSLOG)
        listener.settimeout(30)
        (tmp_path / "b").mkdir()
        (tmp_path / "m").mkdir()
        r = run_fastpass("mount", str(tmp_path / "b"), str(tmp_path / "m"), "--workers", "1")
        assert r.returncode == 0, r.stderr
        try:
            pid = state.read(str(tmp_path / "m")).pid
            message = b""
            while b"mounted" not in message:
                message = listener.recv(65536)
            text = message.decode()
            assert f"fastpass[{pid}]: INFO fastpass: mounted {tmp_path / 'b'} on {tmp_path / 'm'}" in text, text
            assert text.startswith(f"<{8 * 3 + 6}>"), text  # facility daemon, severity info
        finally:
            assert run_fastpass("unmount", str(tmp_path / "m")).returncode == 0
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SYSLOG)
