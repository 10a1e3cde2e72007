"""`fastpass bench` end to end, as a user runs it: `python -m fastpass bench` in a subprocess.

The bench makes its mountpoints with tempfile, so each test points TMPDIR at
a directory of its own: a mount or mountpoint the bench leaves behind is then
found there, and cannot be confused with the mounts of whatever else runs on
the machine.  Sizes and durations are the smallest that still exercise every
path (two rounds, so both orders of the A/B alternation run).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import stat
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from conftest import FASTPASS, Mounted, mounts_under, run_fastpass, server_pid, stop, wait_for
from test_cli import NOBODY, assert_refused

# Imported here, not only by the CLI: the child forked as nobody cannot read /root's site-packages.
import fastpass
from fastpass.bench import progress, pyworkloads, report, runner, suites  # noqa: F401
from fastpass.bench.workloads import Load
from tests.users import run_cli_as

WORKLOADS = ["seqread", "seqwrite", "metadata", "openread", "readdir", "smallfiles", "randread-cold", "stat-tree",
             "oob-latency"]  # fmt: skip
REPEAT = 2


@pytest.fixture(autouse=True)
def no_mount_outlives_the_test(tmp_path: Path) -> Iterator[None]:
    """A bench killed before its own clean-up (the subprocess timeout) leaves mounts under TMPDIR: end them."""
    yield
    for point, fstype in reversed(mounts_under(tmp_path)):
        mnt = Path(point)
        native = fstype.startswith("fuse")
        stop(Mounted("native" if native else "bind", mnt, mnt, pid=server_pid(mnt) if native else None))


def bench(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `fastpass bench ARGS` from / with TMPDIR under `tmp`."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    here = str(Path(fastpass.__file__).resolve().parent.parent)  # from /, `-m fastpass` would find another one
    return run_fastpass("bench", *args, timeout=120, cwd="/", env={**os.environ, "TMPDIR": str(tmpdir),
                                                                     "PYTHONPATH": here})  # fmt: skip


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo", "rb") as f:
        return {os.fsdecode(line.split(b" ")[4]) for line in f}


def assert_no_mounts_left(tmp: Path, before: set[str]) -> None:
    """No mount under `tmp` appeared since `before`, and no bench mountpoint directory is left there."""
    new = {point for point in mount_points() - before if point.startswith(f"{tmp}/")}
    assert not new, f"the bench left mounts behind: {new}"
    assert not list(tmp.rglob("fastpass-bench-*")), "the bench left directories behind"


def test_end_to_end(tmp_path):
    out = {ext: tmp_path / f"bench.{ext}" for ext in ("json", "md", "png")}
    before = mount_points()
    r = bench(tmp_path, "--workloads", ",".join(WORKLOADS), "--size", "8", "--seconds", "0.5", "--repeat",
              str(REPEAT), "--json", str(out["json"]), "--report", str(out["md"]), "--plot", str(out["png"]))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    assert_no_mounts_left(tmp_path, before)

    record = check_record(out["json"], WORKLOADS, ["fastpass", "bind"])
    assert record.configs[0].mount_options == ["--engine=native", "--passthrough=auto", "--cache=auto"]
    assert record.clients == os.cpu_count()  # the default: one client per CPU
    for res in record.results:
        assert res.cold == (res.name == "randread-cold")
        expected = {"metadata": record.clients, "openread": record.clients, "randread-cold": 2}.get(res.name, 1)
        assert res.processes == expected, res.name

    text = out["md"].read_text()
    for name in WORKLOADS:
        assert f"`{name}`" in text, f"{name} missing from the report"
    assert record.machine.kernel in text and f"--clients {record.clients}" in text
    assert f"--clients {record.clients}" in r.stdout
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def check_record(path: Path, workloads: list[str], configs: list[str]) -> runner.BenchRecord:
    """The JSON record at `path`: every workload ran on every configuration in rotating order, each round
    verified, with its ratio to the bind mount's run of the same round."""
    record = msgspec.json.decode(path.read_bytes(), type=runner.BenchRecord)
    assert record.schema == runner.SCHEMA
    assert record.machine.kernel == platform.release()
    assert record.machine.cpus >= 1 and record.machine.python == platform.python_version()
    assert [c.name for c in record.configs] == configs
    for c in record.configs:
        assert (c.mount_options is None) == (c.name == "bind")
        native = c.mount_options is not None and "pyfuse3" not in c.mount_options  # libfuse negotiates for pyfuse3
        assert (c.negotiated is not None and c.negotiated.minor > 0) == native, c.name
    assert [res.name for res in record.results] == workloads
    for res in record.results:
        assert res.orders == [configs[i % len(configs) :] + configs[: i % len(configs)] for i in range(REPEAT)]
        assert [c.config for c in res.configs] == configs
        assert res.ok, f"{res.name}: {[m.detail for c in res.configs for m in c.runs]}"
        bind = res.of("bind").runs
        for c in res.configs:
            assert len(c.runs) == len(c.ratios) == REPEAT, (res.name, c.config)
            for m, b, ratio in zip(c.runs, bind, c.ratios):
                assert m.ok and m.unit == res.unit, (res.name, c.config)
                assert m.value > 0, (res.name, c.config)
                assert ratio == pytest.approx(m.value / b.value), (res.name, c.config)
    return record


# Kernel timeouts long enough that a stale answer is certain to be seen, short enough for a test.
STALE_FOR = 0.3


def test_variants(tmp_path):
    """Two variants beside fastpass and bind: each is mounted with its options, measured every round, reported.

    With --cache off and STALE_FOR-second kernel timeouts, a change made in the backing cannot show
    before the kernel's copy expires, so oob-latency measures that (the names were looked up before
    each change); with the watcher (the default auto) it shows sooner.
    """
    out = {ext: tmp_path / f"bench.{ext}" for ext in ("json", "md", "png")}
    before = mount_points()
    off = f"--cache off --attr-timeout {STALE_FOR} --entry-timeout {STALE_FOR}"
    r = bench(tmp_path, "--workloads", "stat-tree,oob-latency", "--size", "2", "--repeat", str(REPEAT),
              "--variant", f"off={off}", "--variant", "strict=--cache strict", "--json", str(out["json"]),
              "--report", str(out["md"]), "--plot", str(out["png"]))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stderr
    assert_no_mounts_left(tmp_path, before)

    configs = ["fastpass", "off", "strict", "bind"]
    record = check_record(out["json"], ["stat-tree", "oob-latency"], configs)
    assert record.configs[1].mount_options[-len(off.split()) :] == off.split()
    assert record.configs[2].mount_options[-2:] == ["--cache", "strict"]

    changes = len(pyworkloads.OOB_CHANGES) * pyworkloads.OOB_PER_KIND
    oob = record.results[1]
    for c in oob.configs:
        assert [len(m.latency_ms) for m in c.runs] == [changes] * REPEAT, c.config
        assert max(c.latency_ms) < pyworkloads.OOB_DEADLINE * 1000, c.config
    median = {c.config: statistics.median(c.latency_ms) for c in oob.configs}
    assert median["off"] >= 0.8 * STALE_FOR * 1000, median
    assert median["fastpass"] < median["off"], median
    assert median["bind"] < median["fastpass"], median
    assert record.results[0].configs[0].runs[0].latency_ms == []

    text = out["md"].read_text()
    for name in ["`stat-tree`", "`oob-latency`", "off / bind", "strict / bind", f"{off}`"]:
        assert name in text, f"{name} missing from the report"
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in configs:
        assert name in r.stdout, f"{name} missing from the table"


def test_stat_tree_fails_a_wrong_size(tmp_path):
    """On a plain directory (no mount): one file whose size differs from what prepare wrote fails the run."""
    w = suites.WORKLOADS["stat-tree"]
    w.prepare(str(tmp_path), Load(1, 0.0, 1))
    assert sum(len(files) for _, _, files in os.walk(tmp_path)) == pyworkloads.STAT_TREE_FILES_PER_MB
    (tmp_path / "stat-tree" / "d000" / "f00007").write_bytes(b"")
    m = w.run(str(tmp_path), str(tmp_path), Load(1, 0.0, 1))
    assert not m.ok and "f00007: 0 bytes, not 7" in m.detail, m.detail
    assert f"{pyworkloads.STAT_TREE_ROUNDS} of " in m.detail  # once per round


def test_oob_latency_on_the_backing_itself(tmp_path):
    """Measured on the backing directory itself, every change shows at the first look."""
    w = suites.WORKLOADS["oob-latency"]
    w.prepare(str(tmp_path), Load(1, 0.0, 1))
    m = w.run(str(tmp_path), str(tmp_path), Load(1, 0.0, 1))
    assert m.ok, m.detail
    assert len(m.latency_ms) == len(pyworkloads.OOB_CHANGES) * pyworkloads.OOB_PER_KIND
    assert statistics.median(m.latency_ms) < pyworkloads.OOB_POLL * 1000  # shown at the first look
    assert m.value == pytest.approx(1000 / statistics.median(m.latency_ms))


def test_openread_checks_every_file(fs):
    """On each engine and the bind mount: two clients read their own files through the mount, every
    file checked; a file corrupted in the backing fails the run, named, even in a run of no time at all
    (each client's first pass over all its files is always made)."""
    load = Load(1, 0.2, 2)
    clean, corrupt = pyworkloads.OpenRead("openread", ""), pyworkloads.OpenRead("openread-corrupt", "")
    for w in (clean, corrupt):
        w.prepare(str(fs.backing), load)
    assert sorted(p.name for p in (fs.backing / "openread").iterdir()) == ["client0", "client1"]
    assert len(list((fs.backing / "openread" / "client1").iterdir())) == pyworkloads.OPENREAD_FILES
    bad = fs.backing / "openread-corrupt" / "client1" / f"s{pyworkloads.OPENREAD_FILES - 1:03d}"
    data = bytearray(bad.read_bytes())
    data[100] ^= 1  # same size, one bit
    bad.write_bytes(data)

    m = clean.run(str(fs.mnt), str(fs.backing), load)
    assert m.ok and m.unit == "ops/s", m.detail
    assert m.value >= pyworkloads.OPENREAD_FILES * 2 / 10  # at least the first passes, in well under 10 s
    m = corrupt.run(str(fs.mnt), str(fs.backing), Load(1, 0.0, 2))
    wrong = fs.mnt / bad.relative_to(fs.backing)
    assert not m.ok
    assert m.detail == f"{wrong}: read 4096 bytes that differ from the 4096 prepare wrote", m.detail


def test_clients_are_honoured(tmp_path):
    """--clients 3: the record says 3, and the server saw three processes in each multi-client workload, each
    on its own client's files only (by the audit filter's pid and path of each CREATE and OPEN)."""
    log, out = tmp_path / "audit.jsonl", tmp_path / "bench.json"
    r = bench(tmp_path, "--workloads", "metadata,openread,readdir", "--clients", "3", "--size", "2", "--seconds",
              "0.3", "--filter", f"audit:path={log}", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    record = msgspec.json.decode(out.read_bytes(), type=runner.BenchRecord)
    assert record.clients == 3
    assert [(res.name, res.processes) for res in record.results] == [("metadata", 3), ("openread", 3), ("readdir", 1)]

    clients: dict[tuple[str, str], set[str]] = {}  # (workload, op) -> "pid client" seen
    for line in log.read_text().splitlines():
        e = json.loads(line)
        parts = (e["path"] or "").split("/")
        where = [p for p in parts if p.startswith("client")]
        if e["op"] in ("create", "open") and where and e["errno"] == 0:
            workload = next(p for p in parts if p in ("metadata", "openread"))
            clients.setdefault((workload, e["op"]), set()).add(f"{e['pid']} {where[0]}")
    for key in [("metadata", "create"), ("openread", "open")]:
        pids = {entry.split()[0] for entry in clients[key]}
        dirs = {entry.split()[1] for entry in clients[key]}
        assert dirs == {"client0", "client1", "client2"}, key
        assert len(pids) == len(clients[key]) == 3, f"{key}: each process on its own client's files: {clients[key]}"


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything about every entry under `root` that the bench must not change."""
    found = {}
    for entry in sorted(root.rglob("*")):
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(entry)
        elif stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(entry.read_bytes()).hexdigest()
        else:
            content = ""
        found[str(entry.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, content)
    return found


def test_explicit_backing_is_left_as_it_was(tmp_path):
    backing = tmp_path / "data"
    (backing / "sub" / "deep").mkdir(parents=True)
    (backing / "empty").mkdir()
    (backing / "notes.txt").write_text("keep me\n")
    (backing / "sub" / "deep" / "blob").write_bytes(os.urandom(100_000))
    (backing / "private").write_bytes(b"secret")
    (backing / "private").chmod(0o600)
    os.utime(backing / "notes.txt", ns=(1_000_000_000, 1_000_000_000))
    (backing / "link").symlink_to("sub/deep/blob")
    before = snapshot(backing)
    mounts_before = mount_points()

    r = bench(tmp_path, str(backing), "--workloads", "seqwrite,metadata,readdir,smallfiles", "--size", "4",
              "--seconds", "0.2")  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert snapshot(backing) == before
    assert_no_mounts_left(tmp_path, mounts_before)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--workloads", "seqread,no-such-workload"], "unknown workload no-such-workload", id="unknown-workload"
        ),
        pytest.param(["{tmp}/missing", "--workloads", "seqread"], "{tmp}/missing does not exist", id="backing-missing"),
        pytest.param(["--variant", "cache-off"], "expected NAME=OPTIONS", id="variant-no-equals"),
        pytest.param(["--variant", "a/b=--cache off"], "expected NAME=OPTIONS", id="variant-bad-name"),
        pytest.param(["--variant", "bind=--cache off"], "bind is the bench's own", id="variant-reserved-name"),
        pytest.param(
            ["--variant", "x=--cache bogus"],
            "--variant x: argument --cache: invalid choice: 'bogus'",
            id="variant-bad-choice",
        ),
        pytest.param(
            ["--variant", "x=--no-such-option"],
            "--variant x: unrecognized arguments: --no-such-option",
            id="variant-unknown-option",
        ),
        pytest.param(
            ["--variant", "x=--workers"],
            "--variant x: argument -w/--workers: expected one argument",
            id="variant-missing-value",
        ),
        pytest.param(["--variant", "x=--foreground"], "--variant x: --foreground", id="variant-foreground"),
        pytest.param(["--variant", "x=--cache 'off"], "--variant x: No closing quotation", id="variant-bad-quoting"),
        pytest.param(["--variant", "x=", "--variant", "x=--cache off"], "--variant x given twice", id="variant-twice"),
        pytest.param(["--workloads", "metadata", "--clients", "0"], "--clients must be at least 1", id="no-clients"),
        # Parsed fine, refused by `fastpass mount` once the default configuration is mounted: that one goes too.
        pytest.param(
            ["--workloads", "readdir", "--variant", "x=--log {tmp}/missing/log"],
            "x: cannot write the log file",
            id="variant-mount-fails",
        ),
    ],
)
def test_bad_arguments_are_refused(tmp_path, args, message):
    before = mount_points()
    r = bench(tmp_path, *(a.format(tmp=tmp_path) for a in args))
    assert_refused(r.returncode, r.stdout, r.stderr, message.format(tmp=tmp_path))
    assert_no_mounts_left(tmp_path, before)


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_needs_root(world_dir, monkeypatch, command):
    """As nobody, refused in one line before it creates or mounts anything (a bind mount needs root).

    The forked child inherits tempfile's directory: one nobody may write in, so
    a mountpoint made there before the check would be ours to see (and not
    a PermissionError that hides the order).  The generated backing would go
    to /var/tmp, owned by nobody.
    """
    tmp = world_dir / "tmp"
    tmp.mkdir()
    os.chown(tmp, NOBODY, NOBODY)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def nobodys_backings() -> set[Path]:
        return {d for d in Path("/var/tmp").glob("fastpass-bench-*") if d.lstat().st_uid == NOBODY}

    backings, mounts = nobodys_backings(), mount_points()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    code, out, err = run_cli_as(NOBODY, NOBODY, [], command, "--workloads", "seqread", env=env)
    assert_refused(code, out, err, "need root", "bind mount")
    assert list(tmp.iterdir()) == []
    assert nobodys_backings() == backings
    assert_no_mounts_left(world_dir, mounts)


def test_ctrl_c_ends_in_one_line_and_unmounts(tmp_path):
    """SIGINT while a workload runs: one line of its own on stderr, status 130, no mount or directory left."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    before = mount_points()
    here = str(Path(fastpass.__file__).resolve().parent.parent)
    proc = subprocess.Popen([*FASTPASS, "bench", "--workloads", "metadata", "--seconds", "120"], cwd="/", text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": here})  # fmt: skip
    try:
        assert wait_for(lambda: len({p for p in mount_points() - before if p.startswith(f"{tmpdir}/")}) >= 2, 60)
        time.sleep(1)  # into the workload
        proc.send_signal(signal.SIGINT)  # to the bench alone, as `kill -INT` would: its clients are its to end
        _out, err = proc.communicate(timeout=60)  # the workload would take 120 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.splitlines()  # the progress bar's line, then one line of its own
    assert proc.returncode == 130 and lines[-1] == "fastpass: interrupted; every mount it made is gone", err
    assert "Traceback" not in err and len(lines) <= 2, err
    assert_no_mounts_left(tmp_path, before)


def test_engines_in_one_run(tmp_path):
    """The native engine, the pyfuse3 engine (a variant) and bind, measured in one run with verified data."""
    out = tmp_path / "bench.json"
    before = mount_points()
    r = bench(tmp_path, "--workloads", "seqwrite,metadata", "--size", "4", "--seconds", "0.3", "--repeat",
              str(REPEAT), "--variant", "pyfuse3=--engine pyfuse3", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert_no_mounts_left(tmp_path, before)
    record = check_record(out, ["seqwrite", "metadata"], ["fastpass", "pyfuse3", "bind"])
    assert record.configs[0].mount_options[0] == "--engine=native"
    assert record.configs[1].mount_options[-2:] == ["--engine", "pyfuse3"]
    assert record.configs[1].negotiated is None  # libfuse negotiated it
    for result in record.results:
        assert all(m.ok and m.value > 0 for c in result.configs for m in c.runs), result.name


def test_filter_stacks_in_one_run(tmp_path):
    """--filter reaches the bench's own mount; a variant adds its own filters; all measured in the same rounds."""
    log, out = tmp_path / "audit.jsonl", tmp_path / "bench.json"
    before = mount_points()
    r = bench(tmp_path, "--workloads", "seqread,metadata", "--size", "4", "--seconds", "0.2", "--repeat", str(REPEAT),
              "--filter", "hide:pattern=matches-nothing", "--variant", f"audit=--filter audit:path={log}",
              "--json", str(out))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert_no_mounts_left(tmp_path, before)
    record = check_record(out, ["seqread", "metadata"], ["fastpass", "audit", "bind"])
    assert "--filter=hide:pattern=matches-nothing" in record.configs[0].mount_options
    assert record.configs[1].mount_options[-2:] == ["--filter", f"audit:path={log}"]
    ops = {json.loads(line)["op"] for line in log.read_text().splitlines()}
    assert {"lookup", "read"} <= ops


def test_bad_filter_is_refused_before_measuring(tmp_path):
    before = mount_points()
    r = bench(tmp_path, "--workloads", "seqread", "--filter", "hide")
    assert_refused(r.returncode, r.stdout, r.stderr, "missing a required argument: 'pattern'")
    assert_no_mounts_left(tmp_path, before)
