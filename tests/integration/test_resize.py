"""`fastpass workers MOUNTPOINT N`: a live mount's worker count changes under load, costing clients nothing.

Each load run is the fault suite's (tests/integration/test_faults.py): fio with every block
verified by its crc32c, and two clients creating (O_EXCL), renaming and unlinking files, while
the count goes up and down.  A retired worker gets SIGTERM at any instant; what it had read and
not answered stays in its seat and a drainer answers it, so no client sees an error and nothing
is done twice.
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

from fastpass.config import MAX_WORKERS
from tests.conftest import fastpass_mount, run_fastpass, server_pid
from tests.integration.test_faults import CHURN, MODES, SECONDS, _ended, _fio
from tests.integration.test_lifecycle import children, successor
from tests.integration.test_passthrough import stats
from tests.integration.test_transport import _needs_uring

COUNTS = [4, 1, 3, 2, 4, 1, 2]


def _set(mnt: Path, n: int) -> subprocess.CompletedProcess:
    return run_fastpass("workers", str(mnt), str(n))


@pytest.mark.parametrize("mode", ["dev", "dev-userspace", "writeback"])
def test_worker_count_changes_under_load_cost_clients_nothing(tmp_path: Path, mode: str) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--max-workers", "4", *MODES[mode]) as m:
        stop = tmp_path / "stop"
        fio = _fio(m.mnt, SECONDS)
        clients = [subprocess.Popen([sys.executable, str(CHURN), str(m.mnt / f"c{i}"), f"c{i}", str(stop)],
                                    stdout=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
        try:
            for n in COUNTS:
                time.sleep(SECONDS / (len(COUNTS) + 1))
                r = _set(m.mnt, n)
                assert r.returncode == 0, r.stderr
                assert r.stdout.startswith(f"{m.mnt}: {n} worker"), r.stdout
                assert m.pid is not None and len(children(m.pid)) == n, children(m.pid)
        finally:
            stop.touch()
            *ends, (fio_out, fio_err) = _ended([*clients, fio], 60 + SECONDS)
        results = [json.loads(out) for out, _ in ends]
        after = stats(m.mnt)
        assert [w["index"] for w in after["workers"]] == list(range(COUNTS[-1])), after["workers"]
        assert after["restarts"] == 0, after  # retired, not crashed
        assert all(r["rounds"] > 0 for r in results) and [r["errors"] for r in results] == [{}, {}], results
        assert [r["mismatches"] for r in results] == [0, 0], results
        assert fio.returncode == 0 and "verify" not in fio_err and "bad" not in fio_err, fio_err
        job = json.loads(fio_out[fio_out.index("{") :])["jobs"][0]
        assert job["error"] == 0 and job["read"]["io_bytes"] > 0 and job["write"]["io_bytes"] > 0, job
        log = m.log.read_text()
        assert all(f"workers: {a} -> {b}" in log for a, b in zip([2, *COUNTS], COUNTS)), log
        print(f"{mode}: counts {COUNTS} over {SECONDS:.0f} s, {log.count('drainer')} drainers: clients "
              f"{sum(r['rounds'] for r in results)} rounds, fio {(job['read']['io_bytes'] + job['write']['io_bytes']) >> 20} "
              "MiB, no error")


def test_workers_shows_and_refuses(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--max-workers", "3", "--transport", "dev") as m:
        r = run_fastpass("workers", str(m.mnt))
        assert r.returncode == 0 and r.stdout.startswith(f"{m.mnt}: 2 workers (pids ") and "at most 3" in r.stdout
        for bad in ("0", "4"):
            r = _set(m.mnt, int(bad))
            assert r.returncode == 1 and "has room for 1 to 3 workers (--max-workers" in r.stderr, r.stderr
        assert len(stats(m.mnt)["workers"]) == 2
        assert "max_workers=3" in stats(m.mnt)["options"]
    r = run_fastpass("workers", str(tmp_path / "nowhere"), "2")
    assert r.returncode == 1 and "no fastpass server answers" in r.stderr, r.stderr


def test_max_workers_below_workers_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "m").mkdir()
    r = run_fastpass("mount", str(tmp_path / "b"), str(tmp_path / "m"), "--workers", "3", "--max-workers", "2")
    assert r.returncode == 1 and "--max-workers must be 0 (twice the CPUs) or from --workers to 63" in r.stderr


def test_default_room_is_twice_the_cpus(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "1", "--transport", "dev") as m:
        assert stats(m.mnt)["max_workers"] == min(MAX_WORKERS, 2 * (os.cpu_count() or 1))
        assert _set(m.mnt, 2).returncode == 0
        (m.mnt / "f").write_text("x")
        assert (m.backing / "f").read_text() == "x"


def test_uring_transport_refuses_a_change(tmp_path: Path) -> None:
    _needs_uring()
    with fastpass_mount(tmp_path, "--workers", "2", "--transport", "uring") as m:
        r = _set(m.mnt, 3)
        assert r.returncode == 1 and "FUSE-over-io_uring entries" in r.stderr and "--transport dev" in r.stderr
        assert len(stats(m.mnt)["workers"]) == 2


def test_a_successor_keeps_the_changed_count(tmp_path: Path) -> None:
    """The count set last survives the supervisor: its successor adopts every worker serving."""
    with fastpass_mount(tmp_path, "--workers", "1", "--max-workers", "3", "--transport", "dev") as m:
        assert _set(m.mnt, 3).returncode == 0
        assert m.pid is not None
        os.kill(m.pid, signal.SIGKILL)
        new = successor(m, m.pid)
        s = stats(m.mnt)
        assert [w["index"] for w in s["workers"] if w["alive"]] == [0, 1, 2], s["workers"]
        assert _set(m.mnt, 2).returncode == 0 and len(children(new)) <= 2
        (m.mnt / "after").write_text("y")
        assert (m.backing / "after").read_text() == "y" and server_pid(m.mnt) == new


def test_a_restart_keeps_the_changed_count(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "1", "--max-workers", "3", "--transport", "dev") as m:
        assert _set(m.mnt, 3).returncode == 0
        r = run_fastpass("restart", str(m.mnt))
        assert r.returncode == 0, r.stderr
        s = stats(m.mnt)
        assert [w["index"] for w in s["workers"]] == [0, 1, 2] and all(w["alive"] for w in s["workers"])
        assert _set(m.mnt, 1).returncode == 0
        assert len(stats(m.mnt)["workers"]) == 1
        with open(m.mnt / "f", "w") as f:
            f.write("z")
        assert (m.backing / "f").read_text() == "z"


def test_live_tune_settles_under_the_mounts_own_load(tmp_path: Path) -> None:
    """`fastpass tune MOUNTPOINT` tries every count under two clients' load, with no client error,
    and leaves the mount with its recommendation (or, with --no-apply, with what it had)."""
    with fastpass_mount(tmp_path, "--workers", "1", "--max-workers", "3", "--transport", "dev") as m:
        stop = tmp_path / "stop"
        clients = [subprocess.Popen([sys.executable, str(CHURN), str(m.mnt / f"c{i}"), f"c{i}", str(stop)],
                                    stdout=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
        try:
            out = tmp_path / "tune.json"
            r = run_fastpass("tune", str(m.mnt), "--seconds", "0.5", "--repeat", "2", "--max-repeat", "3",
                             "--json", str(out), timeout=120)  # fmt: skip
            assert r.returncode == 0, r.stderr
            record = json.loads(out.read_text())
            assert record["counts"] == [1, 2, 3] and record["was"] == 1 and record["applied"], record
            assert all(2 <= len(rates) <= 3 and min(rates) > 0 for rates in record["rates"]), record
            assert all(min(cpu) > 0 for cpu in record["cpu_us"]), record
            assert max(record["scores"]) == 1.0 and record["workers"] in record["counts"], record
            assert len(stats(m.mnt)["workers"]) == record["workers"]
            assert f"Recommended: {record['workers']} worker" in r.stdout, r.stdout
            assert f"now serves with {record['workers']} worker" in r.stdout, r.stdout
            r = run_fastpass("tune", str(m.mnt), "--seconds", "0.3", "--repeat", "1", "--max-workers", "2",
                             "--no-apply", timeout=120)  # fmt: skip
            assert r.returncode == 0 and "(as before: --no-apply)" in r.stdout, r.stdout + r.stderr
            assert len(stats(m.mnt)["workers"]) == record["workers"]
        finally:
            stop.touch()
            ends = _ended(clients, 60)
        results = [json.loads(out) for out, _ in ends]
        assert [(r["errors"], r["mismatches"]) for r in results] == [({}, 0), ({}, 0)], results
        assert all(r["rounds"] > 0 for r in results), results


def test_live_tune_refuses_an_idle_mount_and_offline_options(tmp_path: Path) -> None:
    with fastpass_mount(tmp_path, "--workers", "2", "--max-workers", "3", "--transport", "dev") as m:
        r = run_fastpass("tune", str(m.mnt), "--seconds", "0.3", "--repeat", "1", timeout=60)
        assert r.returncode == 1 and "tune a live mount while its workload runs" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(stats(m.mnt)["workers"]) == 2  # back to what it had
        r = run_fastpass("tune", str(m.mnt), "--workloads", "metadata", timeout=60)
        assert r.returncode == 1 and "--workloads is for tuning on fresh mounts" in r.stderr, r.stderr
        r = run_fastpass("tune", str(m.mnt), "--max-workers", "4", timeout=60)
        assert r.returncode == 1 and "can serve with 1 to 3 workers" in r.stderr, r.stderr
