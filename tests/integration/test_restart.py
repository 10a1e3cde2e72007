"""`fastpass restart MOUNTPOINT`: the fastpass installed now takes a live mount over.

The supervisor executes the new code in its own process and hands it every fd and shared
table; the new supervisor replaces each worker (and the watcher) by one running the new
code.  Open files, nodeids and I/O go on; no client sees an error; nothing is unmounted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastpass import restart, state
from fastpass.supervisor import resume
from tests.conftest import fastpass_mount, is_mounted, run_fastpass, server_pid, wait_for
from tests.integration.test_faults import CHURN, SECONDS, _ended, _fio
from tests.integration.test_passthrough import stats
from tests.integration.test_transport import _needs_uring

PIDS = ("--workers", "2", "--transport", "dev")


def _pids(mnt: Path) -> set[int]:
    return {w["pid"] for w in stats(mnt)["workers"]}


@pytest.mark.parametrize("extra", [(), ("--passthrough", "off"), ("--writeback-cache",)],
                         ids=["default", "userspace", "writeback"])  # fmt: skip
def test_restart_keeps_open_files_and_names(tmp_path: Path, extra: tuple[str, ...]) -> None:
    with fastpass_mount(tmp_path, *PIDS, *extra) as m:
        (m.mnt / "d").mkdir()
        (m.mnt / "d" / "f").write_text("before\n")
        inode = os.stat(m.mnt / "d" / "f").st_ino
        sup, before = server_pid(m.mnt), _pids(m.mnt)
        with open(m.mnt / "d" / "f", "r+") as held:
            r = run_fastpass("restart", str(m.mnt))
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith(f"fastpass: restarted {m.mnt}: supervisor {sup}, workers "), r.stdout
            assert held.read() == "before\n"
            held.write("after\n")
        assert (m.backing / "d" / "f").read_text() == "before\nafter\n"
        assert os.stat(m.mnt / "d" / "f").st_ino == inode and os.listdir(m.mnt / "d") == ["f"]
        after = stats(m.mnt)
        assert server_pid(m.mnt) == sup and after["supervisor_pid"] == sup and is_mounted(m.mnt)
        assert not before & _pids(m.mnt) and all(w["alive"] for w in after["workers"])
        assert m.log is not None and "restart: every process runs the new code" in m.log.read_text()


def test_restart_under_load_costs_clients_nothing(tmp_path: Path) -> None:
    """fio verified random reads and writes and two create/rename/unlink clients, through two restarts."""
    with fastpass_mount(tmp_path, *PIDS) as m:
        stop = tmp_path / "stop"
        fio = _fio(m.mnt, SECONDS)
        clients = [subprocess.Popen([sys.executable, str(CHURN), str(m.mnt / f"c{i}"), f"c{i}", str(stop)],
                                    stdout=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
        try:
            for _ in range(2):
                time.sleep(SECONDS / 3)
                r = run_fastpass("restart", str(m.mnt))
                assert r.returncode == 0, r.stderr
        finally:
            stop.touch()
            *ends, (_, fio_err) = _ended([*clients, fio], 60 + SECONDS)
            outs = [out for out, _ in ends]
        results = [json.loads(out) for out in outs]
        assert [r["errors"] for r in results] == [{}, {}], results
        assert [r["mismatches"] for r in results] == [0, 0] and all(r["rounds"] > 0 for r in results), results
        assert fio.returncode == 0, fio_err


def test_restart_refused_on_uring_changes_nothing(tmp_path: Path) -> None:
    _needs_uring()
    with fastpass_mount(tmp_path, "--workers", "2", "--transport", "uring") as m:
        before = _pids(m.mnt)
        r = run_fastpass("restart", str(m.mnt))
        assert r.returncode == 1 and "restart needs --transport dev" in r.stderr, r.stderr
        assert _pids(m.mnt) == before and (m.mnt / "x").write_text("y") == 1


def test_restart_of_what_no_fastpass_serves(tmp_path: Path) -> None:
    r = run_fastpass("restart", str(tmp_path))
    assert r.returncode == 1 and "no fastpass server answers" in r.stderr, r.stderr


def test_a_hand_over_of_another_format_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The new code checks what it is handed (the probe runs this before the old code executes it)."""
    with fastpass_mount(tmp_path, *PIDS) as m:
        record = state.read(str(m.mnt))
        assert record is not None
        h = restart.Handover(restart.FORMAT + 1, record, None, -1, -1, -1, -1, -1, [], {}, 0)
        assert resume(h, str(m.mnt), check=True) == 1
        assert f"state format {restart.FORMAT + 1}" in capsys.readouterr().err
        assert server_pid(m.mnt) == m.pid and stats(m.mnt)["restarts"] == 0


def test_sigterm_after_restart_unmounts(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, *PIDS) as m:
        assert run_fastpass("restart", str(m.mnt)).returncode == 0
        sup = server_pid(m.mnt)
        assert sup is not None
        os.kill(sup, signal.SIGTERM)
        assert wait_for(lambda: not is_mounted(m.mnt) and not state.alive(sup), 10)
        assert state.read(str(m.mnt)) is None
