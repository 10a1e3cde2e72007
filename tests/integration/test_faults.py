"""Faults under load: workers or the supervisor killed at any instant cost the clients nothing.

Each run mounts with two workers, runs fio (random reads and writes, every block verified
by its crc32c) and two clients that create (O_EXCL), write, stat, rename, read back and
unlink files (tests/churn.py), and SIGKILLs a worker picked at random every `interval`
seconds.  Wanted, on both transports, both data paths and the writeback cache: no client
sees an error, no data differs from what was written, and no operation takes effect twice
(an O_EXCL create that answers EEXIST, a rename or unlink that answers ENOENT).

One kernel limit on FUSE-over-io_uring: a request the kernel hands to an entry of a worker
in the instant it is being killed (its task dead, its entries not yet cancelled) never
reaches userspace; the kernel ends it with ECANCELED (fs/fuse/dev_uring.c,
fuse_uring_send_in_task).  Nothing was done for it, so nothing is done twice; the uring
runs allow that error and no other.

FASTPASS_FAULT_SECONDS sets how long each run lasts (default 10; the figures in docs/operations.md
come from 60).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import fastpass_mount, run_fastpass, server_pid, wait_for
from tests.integration.test_lifecycle import children, successor
from tests.integration.test_passthrough import stats
from tests.integration.test_transport import _needs_uring

CHURN = Path(__file__).resolve().parent.parent / "churn.py"
SECONDS = float(os.environ.get("FASTPASS_FAULT_SECONDS", "10"))
MODES = {
    "dev": ("--transport", "dev"),
    "dev-userspace": ("--transport", "dev", "--passthrough", "off"),
    "uring": ("--transport", "uring"),
    "uring-userspace": ("--transport", "uring", "--passthrough", "off"),
    "writeback": ("--transport", "dev", "--writeback-cache"),
}


def _ended(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    """Each process's (stdout, stderr) once it has ended.  One that has not within `timeout` is
    killed, every one of them is waited for, and the test fails."""
    outs, late = [], []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            outs.append(proc.communicate())
            late.append(proc.args)
    assert not late, f"still running {timeout:g} s after the end: {late}"
    return outs


def _fio(directory: Path, seconds: float, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["fio", "--name=verified", f"--directory={directory}", "--rw=randrw", "--bs=4k", "--size=8M",
         "--numjobs=4", "--verify=crc32c", "--verify_backlog=64", "--verify_fatal=1", f"--runtime={seconds:.0f}",
         "--time_based", "--group_reporting", "--output-format=json", "--verify_state_save=0", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("interval", [0.5, 3.0])
@pytest.mark.parametrize("mode", MODES)
def test_killed_workers_cost_clients_nothing(tmp_path: Path, mode: str, interval: float) -> None:
    uring = mode.startswith("uring")
    if uring:
        _needs_uring()
    with fastpass_mount(tmp_path, "--workers", "2", *MODES[mode]) as m:
        m.allowed_log_errors.append("replaced by")
        stop = tmp_path / "stop"
        fio = _fio(m.mnt, SECONDS, *(["--continue_on_error=io"] if uring else []))  # verify errors still end it
        clients = [subprocess.Popen([sys.executable, str(CHURN), str(m.mnt / f"c{i}"), f"c{i}", str(stop)],
                                    stdout=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
        kills = 0
        try:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() + interval < deadline:
                time.sleep(interval)
                assert m.pid is not None
                try:
                    os.kill(random.choice(children(m.pid)), signal.SIGKILL)
                    kills += 1
                except (IndexError, ProcessLookupError):  # the last one killed is being replaced
                    pass
        finally:
            stop.touch()
            *ends, (fio_out, fio_err) = _ended([*clients, fio], 60 + SECONDS)
            outs = [out for out, _ in ends]
        after = stats(m.mnt)
        results = [json.loads(out) for out in outs]
        assert kills >= max(1, int(SECONDS / interval) - 2), kills
        assert after["restarts"] >= kills and all(w["alive"] for w in after["workers"]), after["workers"]
        assert all(r["rounds"] > 0 for r in results), results
        seen = {errno.errorcode[int(e)] for r in results for e in r["errors"]}
        assert seen <= ({"ECANCELED"} if uring else set()), (results, seen)
        assert [r["mismatches"] for r in results] == [0, 0], results
        assert fio.returncode == 0 or uring, fio_err  # with errors let through, fio's status counts them
        assert "verify" not in fio_err and "bad" not in fio_err, fio_err
        job = json.loads(fio_out[fio_out.index("{") :])["jobs"][0]
        print(f"{mode}, a kill every {interval} s for {SECONDS:.0f} s: {kills} kills, {after['restarts']} restarts, "
              f"{sum(w['replayed'] for w in after['workers'])} requests replayed; clients: "
              f"{sum(r['rounds'] for r in results)} rounds, errors {[r['errors'] for r in results]}; fio: "
              f"{(job['read']['io_bytes'] + job['write']['io_bytes']) >> 20} MiB, {job.get('total_err', 0)} errors")
        assert job["error"] in ((0, errno.ECANCELED) if uring else (0,)), job  # the first I/O error
        assert job["read"]["io_bytes"] > 0 and job["write"]["io_bytes"] > 0, job


def _whole(mnt: Path) -> bool:
    """Whether the pool is whole again after one worker was replaced.  A stats request that gets
    no answer counts as not yet (seen once, under the whole suite's load: 5 s without an answer
    from a successor just after it replaced a worker)."""
    r = run_fastpass("stats", str(mnt), "--json")
    if r.returncode != 0:
        return False
    s = json.loads(r.stdout)
    return s["restarts"] == 1 and all(w["alive"] for w in s["workers"])


@pytest.mark.parametrize("mode", ["dev", "uring"])
def test_killed_supervisors_cost_clients_nothing(tmp_path: Path, mode: str) -> None:
    """Under the same load: the supervisor killed, then its successor, then a worker (which the
    second successor replaces): no client error, the pool whole at the end."""
    if mode == "uring":
        _needs_uring()
    with fastpass_mount(tmp_path, "--workers", "2", *MODES[mode]) as m:
        m.allowed_log_errors.append("replaced by")
        stop = tmp_path / "stop"
        fio = _fio(m.mnt, SECONDS, *(["--continue_on_error=io"] if mode == "uring" else []))
        clients = [subprocess.Popen([sys.executable, str(CHURN), str(m.mnt / f"c{i}"), f"c{i}", str(stop)],
                                    stdout=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
        try:
            time.sleep(SECONDS / 4)
            assert m.pid is not None
            os.kill(m.pid, signal.SIGKILL)
            first = successor(m, m.pid)
            time.sleep(SECONDS / 4)
            os.kill(first, signal.SIGKILL)
            second = successor(m, first)
            time.sleep(SECONDS / 8)
            os.kill(stats(m.mnt)["workers"][0]["pid"], signal.SIGKILL)
            assert wait_for(lambda: _whole(m.mnt), 20)
        finally:
            stop.touch()
            *ends, (_, fio_err) = _ended([*clients, fio], 60 + SECONDS)
            outs = [out for out, _ in ends]
        results = [json.loads(out) for out in outs]
        assert server_pid(m.mnt) == second
        seen = {errno.errorcode[int(e)] for r in results for e in r["errors"]}
        assert seen <= ({"ECANCELED"} if mode == "uring" else set()), (results, seen)  # the worker's kill, on uring
        assert [r["mismatches"] for r in results] == [0, 0] and all(r["rounds"] > 0 for r in results), results
        assert fio.returncode == 0 or mode == "uring", fio_err
        assert "verify" not in fio_err and "bad" not in fio_err, fio_err
