"""The command line: bad input is refused before anything is mounted, with one clear line.

Every refusal must print exactly one line on stderr starting with
`fastpass: error:`, exit non-zero, and leave nothing mounted under the test's
directory and no server process behind.

Running as another user: the interpreter lives under /root (mode 0700), so a
subprocess started with `user=65534` cannot even exec it.  `run_cli_as` forks
this process instead, drops to the user's uid/gid/groups in the child and
calls `fastpass.cli.main()` there, with stdout/stderr captured to files: the
same code path as `python -m fastpass`, minus the exec.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FASTPASS, MNT_DETACH, MS_BIND, fastpass_mount, is_mounted, mounts_under, run_fastpass, server_pid

from tests.users import run_cli_as

_libc = ctypes.CDLL(None, use_errno=True)
NOBODY = 65534


# --- helpers -------------------------------------------------------------------
def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (a daemon keeps its CLI's argv); a zombie's is empty."""
    needle = text.encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def assert_refused(code: int, stdout: str, stderr: str, *must_contain: str) -> str:
    assert code != 0, f"expected a non-zero exit; stdout={stdout!r} stderr={stderr!r}"
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {lines!r}"
    line = lines[0]
    assert line.startswith("fastpass: error: "), line
    assert "Traceback" not in stderr
    for text in must_contain:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def bind(src: Path, dst: Path) -> None:
    if _libc.mount(os.fsencode(str(src)), os.fsencode(str(dst)), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(dst))


def unbind(dst: Path) -> None:
    if is_mounted(dst):
        _libc.umount2(os.fsencode(str(dst)), MNT_DETACH)


def refuse_mount(tmp_path: Path, backing: Path, mnt: Path, *must_contain: str, options: tuple[str, ...] = ()) -> str:
    r = run_fastpass("mount", str(backing), str(mnt), "--log", str(tmp_path / "server.log"), *options)
    line = assert_refused(r.returncode, r.stdout, r.stderr, *must_contain)
    assert r.stdout == ""
    return line


def assert_nothing_left(tmp_path: Path, allowed: list[tuple[str, str]] | None = None) -> None:
    assert mounts_under(tmp_path) == (allowed or [])
    deadline = time.monotonic() + 5
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_mentioning(str(tmp_path)) == [], "a fastpass process survived a refused mount"


# --- refused mounts ------------------------------------------------------------
def test_backing_missing(tmp_path):
    (tmp_path / "mnt").mkdir()
    refuse_mount(tmp_path, tmp_path / "nope", tmp_path / "mnt", "does not exist", str(tmp_path / "nope"))
    assert_nothing_left(tmp_path)


def test_backing_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "mnt").mkdir()
    refuse_mount(tmp_path, tmp_path / "file", tmp_path / "mnt", "not a directory", str(tmp_path / "file"))
    assert_nothing_left(tmp_path)


def test_backing_unreadable(world_dir):
    """As uid 65534, a 0700 root-owned backing dir cannot be served."""
    backing = world_dir / "secret"
    backing.mkdir(mode=0o700)
    backing.chmod(0o700)
    (backing / "inside").write_text("x")
    mnt = world_dir / "mnt"
    mnt.mkdir()
    os.chown(mnt, NOBODY, NOBODY)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XDG_RUNTIME_DIR": str(world_dir / "run")}
    code, out, err = run_cli_as(NOBODY, NOBODY, [], "mount", str(backing), str(mnt), env=env)
    assert_refused(code, out, err, "not readable", str(backing))
    assert mounts_under(world_dir) == []


def test_mountpoint_missing(tmp_path):
    (tmp_path / "backing").mkdir()
    refuse_mount(tmp_path, tmp_path / "backing", tmp_path / "mnt", "does not exist", str(tmp_path / "mnt"))
    assert_nothing_left(tmp_path)


def test_mountpoint_is_a_file(tmp_path):
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").write_text("x")
    refuse_mount(tmp_path, tmp_path / "backing", tmp_path / "mnt", "not a directory", str(tmp_path / "mnt"))
    assert_nothing_left(tmp_path)
    assert (tmp_path / "mnt").read_text() == "x"


def test_mountpoint_already_a_mount_point(tmp_path):
    (tmp_path / "backing").mkdir()
    (tmp_path / "other").mkdir()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bind(tmp_path / "other", mnt)
    try:
        refuse_mount(tmp_path, tmp_path / "backing", mnt, "already a mount point", str(mnt))
        # The bind mount is untouched and nothing is stacked on it.
        assert_nothing_left(tmp_path, allowed=[(str(mnt), mounts_under(mnt)[0][1])])
        assert len(mounts_under(mnt)) == 1
        assert not mounts_under(mnt)[0][1].startswith("fuse")
    finally:
        unbind(mnt)
    assert mounts_under(tmp_path) == []


def test_mountpoint_not_empty_then_nonempty(tmp_path):
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "served").write_text("from backing")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "hidden").write_text("under the mount")
    line = refuse_mount(tmp_path, backing, mnt, "not empty", str(mnt))
    assert "--nonempty" in line, "the message should name the option that allows it"
    assert_nothing_left(tmp_path)

    with fastpass_mount(tmp_path, "--nonempty") as m:
        assert is_mounted(mnt)
        assert os.listdir(mnt) == ["served"]
        assert (mnt / "served").read_text() == "from backing"
        assert m.pid is not None
    assert not is_mounted(mnt)
    assert os.listdir(mnt) == ["hidden"]
    assert (mnt / "hidden").read_text() == "under the mount"


def test_mountpoint_already_a_fastpass_mount(tmp_path):
    """A second mount on a live fastpass mount is refused and leaves the first one serving."""
    with fastpass_mount(tmp_path) as m:
        (m.backing / "f").write_text("first")
        other = tmp_path / "other"
        other.mkdir()
        refuse_mount(tmp_path, other, m.mnt, "already a mount point", str(m.mnt))
        assert len(mounts_under(m.mnt)) == 1
        assert (m.mnt / "f").read_text() == "first"
        assert server_pid(m.mnt) == m.pid


def test_relative_paths(tmp_path):
    (tmp_path / "backing").mkdir()
    (tmp_path / "backing" / "f").write_text("rel")
    (tmp_path / "mnt").mkdir()
    log = tmp_path / "server.log"
    r = run_fastpass("mount", "backing", "./mnt", "--log", "server.log", cwd=tmp_path)
    try:
        assert r.returncode == 0, r.stderr
        assert is_mounted(tmp_path / "mnt")
        assert (tmp_path / "mnt" / "f").read_text() == "rel"
        assert log.exists(), "--log relative to the caller's directory"
        u = run_fastpass("unmount", "mnt", cwd=tmp_path)
        assert u.returncode == 0, u.stderr
        assert not is_mounted(tmp_path / "mnt")
    finally:
        pid = server_pid(tmp_path / "mnt")
        if is_mounted(tmp_path / "mnt"):
            run_fastpass("unmount", str(tmp_path / "mnt"))
        unbind(tmp_path / "mnt")
        if pid is not None and _proc_state(pid) not in (None, "Z"):
            time.sleep(2)
            if _proc_state(pid) not in (None, "Z"):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("where", ["inside", "deep", "same"])
def test_mountpoint_inside_backing(tmp_path, where):
    backing = tmp_path / "backing"
    backing.mkdir()
    mnt = {"inside": backing / "sub", "deep": backing / "a" / "b", "same": backing}[where]
    mnt.mkdir(parents=True, exist_ok=True)
    refuse_mount(tmp_path, backing, mnt, "inside the backing", str(mnt))
    assert_nothing_left(tmp_path)


def test_mountpoint_inside_backing_through_symlink(tmp_path):
    """A mountpoint reached through a symlink is still inside the backing tree."""
    backing = tmp_path / "backing"
    (backing / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(backing)
    refuse_mount(tmp_path, backing, tmp_path / "link" / "sub", "inside the backing")
    assert_nothing_left(tmp_path)


# --- refused unmounts ----------------------------------------------------------
@pytest.mark.parametrize("exists", [True, False])
def test_unmount_not_mounted(tmp_path, exists):
    target = tmp_path / "plain"
    if exists:
        target.mkdir()
    r = run_fastpass("unmount", str(target))
    assert_refused(r.returncode, r.stdout, r.stderr, "is not mounted", str(target))
    assert_nothing_left(tmp_path)


def test_unmount_of_a_bind_mount_is_refused(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    bind(tmp_path / "src", mnt)
    try:
        r = run_fastpass("unmount", str(mnt))
        assert_refused(r.returncode, r.stdout, r.stderr, "not a fastpass mount", str(mnt))
        assert is_mounted(mnt), "fastpass unmount removed a mount that is not its own"
        assert (mnt / "f").read_text() == "x"
    finally:
        unbind(mnt)
    assert mounts_under(tmp_path) == []


def test_log_file_not_writable(tmp_path):
    """A --log path the server cannot open is bad input too: say so, naming the file."""
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    log = tmp_path / "no-such-dir" / "server.log"
    r = run_fastpass("mount", str(tmp_path / "backing"), str(tmp_path / "mnt"), "--log", str(log))
    assert_refused(r.returncode, r.stdout, r.stderr, str(log))
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("count", ["0", "-3"])
def test_workers_must_be_positive(tmp_path, count):
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    refuse_mount(tmp_path, tmp_path / "backing", tmp_path / "mnt", "--workers", options=("--workers", count))
    assert_nothing_left(tmp_path)


def test_worker_pool_needs_root(world_dir):
    """As a user, workers cannot reopen inodes by handle: more than one is refused, clearly."""
    backing = world_dir / "backing"
    backing.mkdir()
    mnt = world_dir / "mnt"
    mnt.mkdir()
    run = world_dir / "run"
    run.mkdir()
    for d in (backing, mnt, run):
        os.chown(d, NOBODY, NOBODY)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "XDG_RUNTIME_DIR": str(run)}
    code, out, err = run_cli_as(NOBODY, NOBODY, [], "mount", str(backing), str(mnt), "--workers", "2", env=env)
    assert_refused(code, out, err, "--workers 1")
    assert mounts_under(world_dir) == []


def test_bad_option_value(tmp_path):
    (tmp_path / "backing").mkdir()
    (tmp_path / "mnt").mkdir()
    r = run_fastpass("mount", str(tmp_path / "backing"), str(tmp_path / "mnt"), "--attr-timeout", "soon")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert mounts_under(tmp_path) == []


# --- successful mounts -----------------------------------------------------------
_DEBUG_LINE = re.compile(r" DEBUG fastpass\.worker: (->|<-) (\d+) ([A-Z_0-9]+) ")


def test_debug_logs_each_request_and_reply(tmp_path):
    with fastpass_mount(tmp_path, "--debug", "--attr-timeout", "0", "--entry-timeout", "0") as m:
        (m.backing / "probe").write_bytes(b"12345")
        st1 = os.stat(m.mnt / "probe")
        st2 = os.stat(m.mnt / "probe")
        assert st1.st_size == st2.st_size == 5
        with pytest.raises(FileNotFoundError):
            os.stat(m.mnt / "absent")
    text = m.log.read_text()
    requests: dict[int, str] = {}
    replies: dict[int, str] = {}
    order: list[tuple[str, int]] = []
    for line in text.splitlines():
        match = _DEBUG_LINE.search(line)
        if not match:
            continue
        arrow, unique, name = match.group(1), int(match.group(2)), match.group(3)
        table = requests if arrow == "->" else replies
        assert unique not in table, f"two {arrow} lines for request {unique}:\n{text}"
        table[unique] = name
        order.append((arrow, unique))
    assert requests, f"no request lines in the debug log:\n{text}"
    assert requests == replies, f"request and reply lines do not pair up:\n{text}"
    for unique in requests:  # the reply line follows its request line
        assert order.index(("->", unique)) < order.index(("<-", unique))
    names = set(requests.values())
    assert "LOOKUP" in names and "GETATTR" in names, names
    lookups = [line for line in text.splitlines() if re.search(r"-> \d+ LOOKUP .*b'probe'", line)]
    assert lookups, f"no LOOKUP of 'probe' logged:\n{text}"
    assert re.search(r"<- \d+ LOOKUP error ENOENT", text), f"the failed lookup's errno is not logged:\n{text}"


def test_debug_logs_unanswerable_requests_too(tmp_path):
    """A request fastpass does not support (Python's open() sends an IOCTL, TCGETS) still gets
    its own request line, naming the operation, before its ENOSYS reply line."""
    with fastpass_mount(tmp_path, "--debug") as m:
        (m.backing / "probe").write_bytes(b"12345")
        with open(m.mnt / "probe", "rb") as f:  # a buffered open() asks isatty(): FUSE_IOCTL
            assert f.read() == b"12345"
    text = m.log.read_text()
    requests = {int(u) for u in re.findall(r"DEBUG fastpass\.worker: -> (\d+) ", text)}
    replies = {int(u) for u in re.findall(r"DEBUG fastpass\.worker: <- (\d+) ", text)}
    assert replies, text
    unlogged = sorted(replies - requests)
    assert not unlogged, f"requests {unlogged} have a reply line but no request line:\n{text}"
    assert re.search(r"-> \d+ IOCTL ", text), f"the IOCTL request is not logged by name:\n{text}"


def test_no_debug_lines_without_debug(tmp_path):
    with fastpass_mount(tmp_path) as m:
        (m.backing / "probe").write_bytes(b"x")
        os.stat(m.mnt / "probe")
    assert not _DEBUG_LINE.search(m.log.read_text())


def test_mount_returns_only_when_serving(tmp_path):
    """Right after `fastpass mount` returns, the mount is there and answers."""
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "marker").write_text("served")
    parent_dev = os.stat(tmp_path).st_dev
    for round_ in range(5):
        with fastpass_mount(tmp_path) as m:
            assert is_mounted(m.mnt), f"round {round_}: not mounted when `fastpass mount` returned"
            st = os.stat(m.mnt)
            assert st.st_dev != parent_dev, f"round {round_}: stat saw the bare mountpoint"
            assert os.listdir(m.mnt) == ["marker"], f"round {round_}"
            assert (m.mnt / "marker").read_text() == "served"
            assert m.pid is not None and server_pid(m.mnt) == m.pid
        assert not is_mounted(m.mnt)


def test_unmount_waits_for_the_server(tmp_path):
    with fastpass_mount(tmp_path) as m:
        pid = m.pid
        assert pid is not None
        r = run_fastpass("unmount", str(m.mnt))
        assert r.returncode == 0, r.stderr
        assert r.stderr == ""
        assert not is_mounted(m.mnt)
        assert server_pid(m.mnt) is None, "the mount's state record outlived the server"
        state = _proc_state(pid)
        assert state in (None, "Z"), f"server {pid} still running ({state}) after `fastpass unmount` returned"


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def test_version_is_the_installed_packages() -> None:
    from importlib import metadata

    r = run_fastpass("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fastpass {metadata.version('fastpass')}", r


def test_stats_output_read_in_part(tmp_path: Path) -> None:
    """`stats --json | head` ends quietly as other tools do; the table counts in words that agree."""
    with fastpass_mount(tmp_path, "--workers", "1") as m:
        cmd = " ".join(shlex.quote(a) for a in (*FASTPASS, "stats", str(m.mnt), "--json"))
        # `true` exits without reading, long before the stats arrive: the write meets a closed pipe
        r = subprocess.run(["bash", "-o", "pipefail", "-c", f"{cmd} | true"], capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
        assert r.stderr == "" and r.returncode == 0, r
        table = run_fastpass("stats", str(m.mnt), env={**os.environ, "COLUMNS": "300"}).stdout
        assert ", 1 worker, 0 restarts, " in table, table


def test_stats_options_line_is_one_line_at_any_width(tmp_path: Path) -> None:
    """The `-o` list `stats` shows can be pasted: one line even on a 40-column terminal."""
    with fastpass_mount(tmp_path, "--workers", "1", "--cache-size", "4096") as m:
        table = run_fastpass("stats", str(m.mnt), env={**os.environ, "COLUMNS": "40"}).stdout
        lines = [line for line in table.splitlines() if line.startswith("options: ")]
        assert len(lines) == 1 and "cache_size=4096" in lines[0] and len(lines[0]) > 40, table


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_plot_without_matplotlib_is_refused_before_running(tmp_path: Path, command: str) -> None:
    """matplotlib is the `plot` extra: without it, --plot is refused in one line before any mount,
    not after a whole run.  (A module set to None in sys.modules is one importlib finds no spec for,
    as where it is not installed.)"""
    chart = tmp_path / "chart.png"
    code = (f"import sys; sys.modules['matplotlib'] = None; from fastpass.cli import main; "
            f"sys.exit(main([{command!r}, {str(tmp_path)!r}, '--plot', {str(chart)!r}]))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert_refused(r.returncode, r.stdout, r.stderr, "--plot needs matplotlib", "fastpass[plot]")
    assert not chart.exists()
    assert mounts_under(tmp_path) == []
