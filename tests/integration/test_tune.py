"""`fastpass tune` end to end, as a user runs it: `python -m fastpass tune` in a subprocess.

As in test_bench, TMPDIR points at a directory of the test's own, so a mount
or mountpoint the command leaves behind is found there.  Two counts, two
workloads that load several workers, half-second runs: the smallest run that
still has a recommendation to check.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from pathlib import Path

import msgspec
import pytest
from conftest import run_fastpass
from test_bench import assert_no_mounts_left, mount_points
from test_cli import assert_refused

import fastpass
from fastpass.bench import tune

WORKLOADS = ["randread-direct", "metadata", "openread"]
MAX_WORKERS = 2
CLIENTS = 3


def run_tune(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `fastpass tune ARGS` from / with TMPDIR under `tmp`."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    here = str(Path(fastpass.__file__).resolve().parent.parent)  # from /, `-m fastpass` would find another one
    return run_fastpass("tune", *args, timeout=60, cwd="/", env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": here})


def test_end_to_end(tmp_path):
    out = {ext: tmp_path / f"tune.{ext}" for ext in ("json", "png")}
    before = mount_points()
    r = run_tune(tmp_path, "--workloads", ",".join(WORKLOADS), "--max-workers", str(MAX_WORKERS), "--size", "4",
                 "--seconds", "0.5", "--clients", str(CLIENTS), "--repeat", "2", "--max-repeat", "3", "--json",
                 str(out["json"]), "--plot", str(out["png"]))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    assert_no_mounts_left(tmp_path, before)

    record = msgspec.json.decode(out["json"].read_bytes(), type=tune.TuneRecord)
    assert record.schema == tune.SCHEMA
    assert record.machine.kernel == platform.release()
    assert record.counts == list(range(1, MAX_WORKERS + 1))
    assert record.paths == [""] and record.path == ""  # the server's default path
    assert [w.name for w in record.workloads] == WORKLOADS
    assert record.clients == CLIENTS
    assert [w.processes for w in record.workloads] == [2, CLIENTS, CLIENTS]  # fio's own 2 jobs; the clients
    for w in record.workloads:
        assert w.ok, w.name
        assert len(w.fastpass) == len(record.counts), w.name
        assert all(v > 0 for v in w.fastpass) and w.bind > 0, w.name
        assert w.knees == [knee(record.counts, w.fastpass)], w.name

    # The scores and the recommendation, recomputed from every round's values.
    for w in record.workloads:
        assert w.fastpass == [statistics.median(r) for r in w.rounds], w.name
    scores = [statistics.geometric_mean(w.fastpass[i] / max(w.fastpass) for w in record.workloads)
              for i in range(len(record.counts))]  # fmt: skip
    assert record.scores == pytest.approx(scores)
    rounds = [len(w.rounds[i]) for w in record.workloads for i in range(len(record.counts))]
    assert 2 <= min(rounds) and max(rounds) <= 3
    per_round = [[statistics.geometric_mean(w.rounds[i][r] / max(w.fastpass) for w in record.workloads)
                  for r in range(len(record.workloads[0].rounds[i]))] for i in range(len(record.counts))]  # fmt: skip
    assert record.round_scores == [pytest.approx(r) for r in per_round]
    best = scores.index(max(scores))
    worse = [max(per_round[i]) < min(per_round[best]) and scores[i] < 0.95 * max(scores) for i in range(len(scores))]
    assert record.workers == next(n for n, w in zip(record.counts, worse) if not w)
    assert record.undecided == [i for i, w in enumerate(worse) if not w and scores[i] < 0.95 * max(scores)]
    for i in record.undecided:  # the loop stopped with it undecided only at --max-repeat
        if record.counts[i] <= record.workers:
            assert len(record.round_scores[i]) == 3
    assert record.spread == pytest.approx(statistics.median((max(r) - min(r)) / s for s, r in zip(scores, per_round)))
    assert record.command == f"fastpass mount --engine native --workers {record.workers} BACKING MOUNTPOINT"
    assert record.fstab == f"workers={record.workers},engine=native"
    assert record.command in r.stdout
    assert f"BACKING MOUNTPOINT fuse.fastpass workers={record.workers},engine=native 0 0" in r.stdout
    assert f"Run-to-run spread of the score: {record.spread:.1%}" in r.stdout
    assert (tune.doubt(record) or "") in r.stdout

    # The knees, recomputed by their definition: the fewest workers no more workers beat by 10%.
    assert record.knees == [knee(record.counts, scores)]
    row = next(line.split() for line in r.stdout.splitlines() if line.split()[:1] == ["knee"])
    assert row[1:] == [tune.knee_text(k, record.counts) for k in [*(w.knees[0] for w in record.workloads),
                                                                   record.knees[0]]]  # fmt: skip
    assert tune.knee_lines(record)[0] in r.stdout

    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def knee(counts: list[int], values: list[float]) -> int | None:
    """tune.knee written out again, to check the record against."""
    return next((n for i, n in enumerate(counts) if values[i + 1 :] and all(v < 1.1 * values[i] for v in values[i + 1 :])),
                None)  # fmt: skip


def test_both_io_paths_in_one_run(tmp_path):
    """`--io both`: every count on each path, scored together; the recommendation names its path."""
    out = tmp_path / "tune.json"
    r = run_tune(tmp_path, "--workloads", "randread-direct", "--max-workers", "2", "--size", "4", "--seconds", "0.5",
                 "--io", "both", "--repeat", "1", "--json", str(out))  # fmt: skip (one round: within 5% or worse)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    record = msgspec.json.decode(out.read_bytes(), type=tune.TuneRecord)
    assert record.paths == ["--io uring", "--io plain"]
    assert record.configs() == [("--io uring", 1), ("--io uring", 2), ("--io plain", 1), ("--io plain", 2)]
    (w,) = record.workloads
    assert len(w.fastpass) == 4 and all(v > 0 for v in w.fastpass)
    scores = [v / max(w.fastpass) for v in w.fastpass]
    assert record.scores == pytest.approx(scores)
    good = sorted((n, -s, path) for (path, n), s in zip(record.configs(), scores) if s >= 0.95 * max(scores))
    assert (record.workers, record.path) == (good[0][0], good[0][2])
    assert f"--workers {record.workers} {record.path} BACKING" in record.command
    assert record.command in r.stdout and f"on {record.path}" in r.stdout
    assert w.knees == [knee([1, 2], w.fastpass[:2]), knee([1, 2], w.fastpass[2:])]
    assert record.knees == [knee([1, 2], scores[:2]), knee([1, 2], scores[2:])]
    for line in tune.knee_lines(record):
        assert line in r.stdout


def test_both_transports_in_one_run(tmp_path):
    """`--transport both`: every count on FUSE-over-io_uring and on /dev/fuse, each mount on the
    transport it names (the uring one said so in the server log's mount lines)."""
    from fastpass.transport import entries as transport

    if transport.enabled() is None or os.geteuid() != 0:
        pytest.skip("--transport uring needs a kernel with FUSE-over-io_uring, and root to turn it on")
    out = tmp_path / "tune.json"
    r = run_tune(tmp_path, "--workloads", "randread-direct", "--max-workers", "1", "--size", "4", "--seconds", "0.5",
                 "--transport", "both", "--repeat", "1", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    record = msgspec.json.decode(out.read_bytes(), type=tune.TuneRecord)
    assert record.configs() == [("--transport uring", 1), ("--transport dev", 1)]
    assert all(v > 0 for v in record.workloads[0].fastpass)
    assert record.path in record.paths and f"--workers 1 {record.path} BACKING" in record.command


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workloads", "metadata,no-such-workload"], "unknown workload no-such-workload"),
        (["--workloads", "metadata", "--max-workers", "0"], "at least 1"),
        (["--workloads", "metadata", "--engine", "pyfuse3", "--max-workers", "2"], "--max-workers 1"),
        (["--workloads", "metadata", "--clients", "0"], "--clients must be at least 1"),
    ],
    ids=["unknown-workload", "no-worker-counts", "pyfuse3-workers", "no-clients"],
)
def test_bad_arguments_are_refused(tmp_path, args, message):
    before = mount_points()
    r = run_tune(tmp_path, *args)
    assert_refused(r.returncode, r.stdout, r.stderr, message)
    assert_no_mounts_left(tmp_path, before)
