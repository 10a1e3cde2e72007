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
import stat
import subprocess
import tempfile
from pathlib import Path

import msgspec
import pytest
from conftest import run_fastpass
from test_cli import NOBODY, assert_refused

# Imported here, not only by the CLI: the child forked as nobody cannot read /root's site-packages.
from fastpass.bench import progress, report, runner  # noqa: F401
from tests.users import run_cli_as

WORKLOADS = ["seqread", "seqwrite", "metadata", "readdir", "smallfiles", "randread-cold"]
REPEAT = 2


def bench(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `fastpass bench ARGS` from / with TMPDIR under `tmp`."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return run_fastpass("bench", *args, timeout=120, cwd="/", env={**os.environ, "TMPDIR": str(tmpdir)})


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

    record = msgspec.json.decode(out["json"].read_bytes(), type=runner.BenchRecord)
    assert record.schema == runner.SCHEMA
    assert record.machine.kernel == platform.release()
    assert record.machine.cpus >= 1 and record.machine.python == platform.python_version()
    assert record.negotiated is not None and record.negotiated.minor > 0
    assert [res.name for res in record.results] == WORKLOADS
    for res in record.results:
        assert len(res.pairs) == REPEAT, res.name
        assert res.ok, f"{res.name}: {[(p.fastpass.detail, p.bind.detail) for p in res.pairs]}"
        assert res.cold == (res.name == "randread-cold")
        for p in res.pairs:
            assert p.fastpass.ok and p.bind.ok, res.name
            assert p.fastpass.unit == p.bind.unit == res.unit
            assert p.fastpass.value > 0 and p.bind.value > 0, res.name
            assert p.ratio == pytest.approx(p.fastpass.value / p.bind.value), res.name

    text = out["md"].read_text()
    for name in WORKLOADS:
        assert f"`{name}`" in text, f"{name} missing from the report"
    assert record.machine.kernel in text
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_filter_variants_in_one_run(tmp_path):
    """--filter reaches every fastpass mount; each --variant is its own mount, measured in the same rounds
    against the same bind runs."""
    log, out = tmp_path / "audit.jsonl", tmp_path / "bench.json"
    before = mount_points()
    r = bench(tmp_path, "--workloads", "seqread,metadata", "--size", "4", "--seconds", "0.2", "--repeat", "2",
              "--filter", "hide:pattern=matches-nothing", "--variant", "plain", "--variant", f"audit=audit:path={log}",
              "--variant", "audit=hide:pattern=other", "--json", str(out))  # fmt: skip
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert_no_mounts_left(tmp_path, before)
    record = msgspec.json.decode(out.read_bytes(), type=runner.BenchRecord)
    assert "--filter=hide:pattern=matches-nothing" in record.mount_options
    assert record.variants == {"plain": [], "audit": [f"--filter=audit:path={log}", "--filter=hide:pattern=other"]}
    assert [(res.name, res.variant) for res in record.results] == [
        ("seqread", "plain"), ("seqread", "audit"), ("metadata", "plain"), ("metadata", "audit")]  # fmt: skip
    for plain, audited in (record.results[:2], record.results[2:]):
        assert [p.bind for p in plain.pairs] == [p.bind for p in audited.pairs]  # one bind run per round
        assert plain.ok and audited.ok
    assert "seqread (audit)" in r.stdout
    ops = {json.loads(line)["op"] for line in log.read_text().splitlines()}
    assert {"lookup", "read"} <= ops


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workloads", "seqread,no-such-workload"], "unknown workload no-such-workload"),
        (["--workloads", "seqread", "--filter", "hide"], "missing a required argument: 'pattern'"),
        (["--workloads", "seqread", "--variant", "bind"], "variant names must be identifiers"),
        (["{tmp}/missing", "--workloads", "seqread"], "{tmp}/missing does not exist"),
    ],
    ids=["unknown-workload", "bad-filter", "bad-variant", "backing-missing"],
)
def test_bad_arguments_are_refused(tmp_path, args, message):
    before = mount_points()
    r = bench(tmp_path, *(a.format(tmp=tmp_path) for a in args))
    assert_refused(r.returncode, r.stdout, r.stderr, message.format(tmp=tmp_path))
    assert_no_mounts_left(tmp_path, before)


def test_cold_workload_needs_root(world_dir, monkeypatch):
    """As nobody, refused before the bench creates or mounts anything.

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
    code, out, err = run_cli_as(NOBODY, NOBODY, [], "bench", "--workloads", "seqread,randread-cold", env=env)
    assert_refused(code, out, err, "randread-cold", "root")
    assert list(tmp.iterdir()) == []
    assert nobodys_backings() == backings
    assert_no_mounts_left(world_dir, mounts)
