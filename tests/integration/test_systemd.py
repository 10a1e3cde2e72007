"""fastpass under systemd: docs/operations.md's `Type=notify` unit, its ExecStart run as systemd runs it.

systemd gives the service a datagram socket in $NOTIFY_SOCKET (a path, or '@name' in the abstract
namespace) and waits for READY=1; on `systemctl stop` it sends SIGTERM and expects STOPPING=1.
The test binds its own socket and checks the order of events without timing anything: it fills
the socket's queue first, so that the server's send blocks (as sd_notify's does) until the test
reads.  While the server is held inside its READY=1 the mount must already serve; while it is
held inside its STOPPING=1 the mount must still be there.  The kernel shows the wait as the
sender's wchan, unix_wait_for_peer.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import MOUNT_TIMEOUT, OPERATIONS, Mounted, check_log, is_mounted, server_pid, stop, wait_for

from fastpass import state
from fastpass.kernel.mount import mount_entry
from tests.users import as_user

FILLER = b"filler"


def documented_unit() -> str:
    """The unit docs/operations.md shows: the fenced block that holds `Type=notify`."""
    blocks = OPERATIONS.read_text().split("```")[1::2]
    units = [b.partition("\n")[2] for b in blocks if "Type=notify" in b]
    assert len(units) == 1, "docs/operations.md should show one Type=notify unit"
    return units[0]


def exec_start(unit: str, backing: Path, mnt: Path) -> list[str]:
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("/srv/data", str(backing)).replace("/mnt/data", str(mnt)))


class NotifySocket:
    """The test's side of $NOTIFY_SOCKET, with a way to hold the sender (a full queue)."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.filler.setblocking(False)

    def fill(self) -> None:
        """Queue datagrams until the queue is full: the next sender waits until `receive` makes room."""
        target = self.sock.getsockname()
        while True:
            try:
                self.filler.sendto(FILLER, target)
            except BlockingIOError:
                return

    def receive(self, timeout: float) -> str:
        """The next datagram that is not filler."""
        deadline = time.monotonic() + timeout
        while True:
            if not select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("no notification")
            data = self.sock.recv(4096)
            if data != FILLER:
                return data.decode()

    def close(self) -> None:
        self.sock.close()
        self.filler.close()


def _held_in_send(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "unix_wait_for_peer"
    except OSError:
        return False


def _serves(mnt: Path) -> list[str] | None:
    """The mount's listing, from a child with a deadline (None if it hangs: a mount that does not serve)."""
    try:
        return as_user(lambda: sorted(os.listdir(mnt)) if (mnt / "f").read_text() == "served" else [], uid=0,
                       gid=0, timeout=15)  # fmt: skip
    except TimeoutError:
        return None


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_unit_notifies_ready_then_stopping(tmp_path, helper_env, kind):
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    (backing / "f").write_text("served")
    notify = NotifySocket(str(tmp_path / "notify") if kind == "path" else f"@fastpass-test-{uuid.uuid4().hex}")
    log = tmp_path / "stderr.log"  # the journal, here
    m = Mounted("native", backing, mnt, log)
    server = None
    try:
        notify.fill()
        with open(log, "w") as err:
            server = subprocess.Popen(exec_start(documented_unit(), backing, mnt), env={**helper_env,
                                      "NOTIFY_SOCKET": notify.address}, stdout=err, stderr=err)  # fmt: skip
        m.pid = server.pid
        assert wait_for(lambda: _held_in_send(server.pid) or server.poll() is not None, MOUNT_TIMEOUT), \
            "the server neither notified nor exited"  # fmt: skip
        assert server.poll() is None, f"the server exited: {log.read_text()}"
        entry = mount_entry(str(mnt))
        assert entry is not None and entry.fstype == "fuse.fastpass"
        assert _serves(mnt) == ["f"], "READY=1 came before the mount served"
        assert notify.receive(10) == "READY=1"

        notify.fill()
        os.kill(server.pid, signal.SIGTERM)  # as systemctl stop with KillMode=mixed: the main process alone
        assert wait_for(lambda: _held_in_send(server.pid) or not is_mounted(mnt), 10)
        assert is_mounted(mnt) and _serves(mnt) == ["f"], "the mount went before STOPPING=1"
        assert notify.receive(10) == "STOPPING=1"
        assert server.wait(timeout=MOUNT_TIMEOUT) == 0
        assert not is_mounted(mnt)
        assert state.read(str(mnt)) is None
    finally:
        notify.close()  # a server still held in a send is let go (ECONNREFUSED)
        m.pid = m.pid or server_pid(mnt)
        stop(m)
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
    check_log(m)


def test_background_server_never_notifies(tmp_path, helper_env):
    """Without -f the server is not the process systemd started: it drops $NOTIFY_SOCKET."""
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    notify = NotifySocket(str(tmp_path / "notify"))
    m = Mounted("native", backing, mnt, tmp_path / "server.log")
    try:
        command = [c for c in exec_start(documented_unit(), backing, mnt) if c != "-f"]
        r = subprocess.run([*command, "--log", str(m.log)], env={**helper_env, "NOTIFY_SOCKET": notify.address},
                           capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False)  # fmt: skip
        assert r.returncode == 0, r.stderr
        m.pid = server_pid(mnt)
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=MOUNT_TIMEOUT, check=False)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: not state.alive(m.pid), 10)
        assert not select.select([notify.sock], [], [], 0)[0], notify.sock.recv(4096)
    finally:
        notify.close()
        stop(m)
    check_log(m)


def test_documented_unit_verifies(tmp_path, helper_env):
    """systemd's own check of the unit: no warning, and its ExecStart exists."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    unit = tmp_path / "fastpass-data.service"
    unit.write_text(documented_unit())
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                       timeout=60, check=False)  # fmt: skip
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
