"""Shutdown in every way a mount can end, and never a hung or orphaned mount.

The server is a supervisor (the pid in the mount's state record) and its
workers (/proc/<pid>/task/<pid>/children), each run here with one worker
and with four.  Every wait has a deadline, every access to a mount that
might hang runs in a child process with a timeout, and only processes this
test started are ever signalled, by pid.

pid 1 on these machines reaps orphans late (about a second), so a process in
state Z counts as gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mounted, fastpass_mount, is_mounted, run_fastpass, server_pid, wait_for
from test_cli import processes_mentioning
from test_passthrough import stats

from fastpass import state
from fastpass.config import IDLE_SYNC
from fastpass.supervisor import SUPERVISOR_NAME, WATCHER_NAME

ACCESS_TIMEOUT = 5
POOL = pytest.mark.parametrize("workers", [1, 4], ids=["w1", "w4"])


# --- helpers ---------------------------------------------------------------------
def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone before or while it was read
        return None


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z")


def wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def children(pid: int, watcher: bool = False) -> list[int]:
    """The supervisor's live workers (and its watcher process too, if asked)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids = [int(c) for c in f.read().split() if alive(int(c))]
    except FileNotFoundError:
        return []
    return [c for c in pids if watcher or comm(c) != WATCHER_NAME]


@contextlib.contextmanager
def pool_mount(tmp_path: Path, workers: int, *options: str, backing: Path | None = None) -> Iterator[Mounted]:
    with fastpass_mount(tmp_path, "--workers", str(workers), *options, backing=backing) as m:
        yield m


def server_processes(m: Mounted, workers: int) -> tuple[int, list[int]]:
    """(supervisor, workers) of a running mount."""
    assert m.pid is not None and alive(m.pid)
    assert wait_for(lambda: len(children(m.pid)) == workers, 5), (
        f"expected {workers} workers under supervisor {m.pid}, found {children(m.pid)}"
    )
    return m.pid, children(m.pid)


def survivors(m: Mounted) -> list[int]:
    """Live processes whose command line names this mount (a daemon keeps its CLI's argv)."""
    return [pid for pid in processes_mentioning(str(m.mnt)) if alive(pid)]


def processes_named(name: str, m: Mounted) -> list[int]:
    return [pid for pid in survivors(m) if comm(pid) == name]


def probe(mnt: Path, timeout: float = ACCESS_TIMEOUT) -> str:
    """Stat and list the mount root from a child: 'ok', 'error <errno name>' or 'hung'."""
    code = (
        "import errno, os, sys\n"
        "try:\n"
        "    os.stat(sys.argv[1]); os.listdir(sys.argv[1])\n"
        "except OSError as e:\n"
        "    print('error', errno.errorcode.get(e.errno, e.errno)); sys.exit(0)\n"
        "print('ok')\n"
    )
    try:
        r = subprocess.run(
            [sys.executable, "-c", code, str(mnt)], check=False, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:  # run() has SIGKILLed its child already
        return "hung"
    return r.stdout.strip() or f"crashed: {r.stderr.strip()}"


def assert_all_gone(m: Mounted, *pids: int, timeout: float = 10) -> None:
    for pid in pids:
        assert wait_for(lambda pid=pid: not alive(pid), timeout), f"process {pid} ({proc_state(pid)}) did not exit"
    assert wait_for(lambda: not survivors(m), 5), f"fastpass processes survived: {survivors(m)}"


def assert_unmounted(m: Mounted, timeout: float = 10) -> None:
    assert wait_for(lambda: not is_mounted(m.mnt), timeout), f"{m.mnt} is still mounted"


def forget_server(m: Mounted) -> None:
    """Remove what a SIGKILLed supervisor could not: its state record and its stats socket."""
    state.remove(str(m.mnt))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state.path_for(str(m.mnt)).removesuffix(".json") + ".sock")


def unmount_and_check(m: Mounted) -> None:
    """`fastpass unmount`, then every process of this mount must be gone."""
    sup = m.pid
    everyone = [sup, *children(sup, watcher=True)] if sup else []
    r = run_fastpass("unmount", str(m.mnt), timeout=15)
    assert r.returncode == 0, r.stderr
    assert not is_mounted(m.mnt)
    assert_all_gone(m, *everyone)


# --- signals to the supervisor ---------------------------------------------------------
@POOL
@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(tmp_path, workers, signo):
    with pool_mount(tmp_path, workers) as m:
        (m.mnt / "f").write_text("kept")
        sup, pool = server_processes(m, workers)
        os.kill(sup, signo)
        assert_unmounted(m)
        assert_all_gone(m, sup, *pool)
        assert state.read(str(m.mnt)) is None, "the state record outlived the server"
        text = m.log.read_text()
        assert "stopped" in text, text
        assert signo.name in text or f"signal {int(signo)}" in text, f"the log does not say which signal:\n{text}"
    assert (m.backing / "f").read_text() == "kept"


@POOL
def test_sigterm_while_busy_detaches_lazily(tmp_path, workers):
    with pool_mount(tmp_path, workers) as m:
        (m.backing / "f").write_text("still readable")
        sup, pool = server_processes(m, workers)
        with open(m.mnt / "f") as held:
            os.kill(sup, signal.SIGTERM)
            assert_unmounted(m)
            time.sleep(0.3)
            assert alive(sup) and all(alive(w) for w in pool), "the server quit while a file was still open"
            assert held.read() == "still readable"
        assert_all_gone(m, sup, *pool)


@POOL
def test_repeated_signals_are_harmless(tmp_path, workers):
    with pool_mount(tmp_path, workers) as m:
        sup, pool = server_processes(m, workers)
        for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            if alive(sup):
                os.kill(sup, signo)
        assert_unmounted(m)
        assert_all_gone(m, sup, *pool)


# --- fastpass unmount -----------------------------------------------------------------
@POOL
def test_unmount_while_file_open_is_lazy(tmp_path, workers):
    with pool_mount(tmp_path, workers) as m:
        (m.backing / "f").write_text("open during unmount")
        sup, pool = server_processes(m, workers)
        held = open(m.mnt / "f")  # noqa: SIM115 - closed by hand, around the unmount
        try:
            r = run_fastpass("unmount", str(m.mnt), timeout=15)
            assert r.returncode == 0, r.stderr
            assert r.stderr == ""
            assert "busy" in r.stdout and "lazily" in r.stdout, r.stdout
            assert len(r.stdout.splitlines()) == 1, r.stdout
            assert not is_mounted(m.mnt), "a lazy unmount leaves nothing in the mount table"
            time.sleep(0.3)
            assert alive(sup) and all(alive(w) for w in pool), "the server quit while a file was still open"
            assert held.read() == "open during unmount", "the open file stopped being served"
        finally:
            held.close()
        assert_all_gone(m, sup, *pool)
        assert state.read(str(m.mnt)) is None


@POOL
def test_unmount_idle_is_clean(tmp_path, workers):
    with pool_mount(tmp_path, workers) as m:
        sup, pool = server_processes(m, workers)
        r = run_fastpass("unmount", str(m.mnt), timeout=15)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "" and r.stderr == ""
        assert not is_mounted(m.mnt)
        assert_all_gone(m, sup, *pool, timeout=2)


# --- workers that end or die ----------------------------------------------------------
@POOL
def test_worker_killed_is_replaced_and_nothing_hangs(tmp_path, workers):
    """SIGKILL of a worker: no access hangs, and the supervisor restores the pool."""
    with pool_mount(tmp_path, workers) as m:
        m.allowed_log_errors.append("exited with")  # the supervisor reports the crash, as it should
        (m.backing / "f").write_text("x")
        sup, pool = server_processes(m, workers)
        victim = pool[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            outcome = probe(m.mnt, timeout=2)
            assert outcome != "hung", "an access to the mount hung after a worker died"
            if outcome == "ok" and victim not in children(sup) and len(children(sup)) == workers:
                break
            time.sleep(0.05)
        if is_mounted(m.mnt):  # the design: a crashed worker is replaced and the mount serves on
            assert alive(sup), "the mount is there but its supervisor is gone"
            now = children(sup)
            assert len(now) == workers and victim not in now, f"the pool was not restored: {now}"
            assert (m.mnt / "f").read_text() == "x"
            assert "replaced by" in m.log.read_text()
            shown = [(w["process"], w["text"]) for w in stats(m.mnt)["warnings"]]
            assert any(p == "supervisor" and f"worker {victim} exited with" in t and "replaced by" in t
                       for p, t in shown), shown  # fmt: skip
            unmount_and_check(m)
        else:  # the other acceptable end: the supervisor gave up, detached and exited
            assert wait_for(lambda: not alive(sup), 10), "the supervisor outlived its mount"
            assert probe(m.mnt) == "ok"  # the bare mountpoint directory again
            assert_all_gone(m, sup, *pool)


@POOL
def test_pending_request_survives_worker_death(tmp_path, workers):
    """A request no worker had read yet is served by the replacement, not left hanging."""
    with pool_mount(tmp_path, workers) as m:
        m.allowed_log_errors.append("exited with")
        (m.backing / "d").mkdir()
        (m.backing / "d" / "x").write_text("x")
        sup, pool = server_processes(m, workers)
        for w in pool:
            os.kill(w, signal.SIGSTOP)  # nobody answers what comes next
        waiter = subprocess.Popen(
            [sys.executable, "-c", "import os, sys; print(sorted(os.listdir(sys.argv[1])))", str(m.mnt / "d")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(0.3)
            assert waiter.poll() is None, "the request was answered by stopped workers?"
            for w in pool:
                os.kill(w, signal.SIGKILL)
            try:
                out, err = waiter.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail("the caller stayed blocked after the workers were killed")
        finally:
            if waiter.poll() is None:
                waiter.kill()
                waiter.wait(timeout=10)
        if is_mounted(m.mnt) and alive(sup):
            assert out.strip() == "['x']", f"the pending request was not served by a replacement: {out}{err}"
            unmount_and_check(m)
        else:
            assert_all_gone(m, sup, *pool)


@contextlib.contextmanager
def stuck_backing(backing: Path) -> Iterator[tuple[Mounted, list[int]]]:
    """A second fastpass mount at BACKING/inner/mnt, with its worker stopped.

    An outer request that touches it blocks inside the outer worker, in the
    middle of serving: a deterministic in-flight request.
    """
    inner_root = backing / "inner"
    inner_root.mkdir()
    with fastpass_mount(inner_root, "--workers", "1") as inner:
        stopped = children(inner.pid)
        for w in stopped:
            os.kill(w, signal.SIGSTOP)
        try:
            yield inner, stopped
        finally:
            for w in stopped:
                if alive(w):
                    os.kill(w, signal.SIGCONT)


@POOL
def test_worker_killed_mid_request_is_answered_by_its_replacement(tmp_path, workers):
    """SIGKILL of a worker while it is serving a request: the caller does not see it.  The
    replacement serves the request again (here it waits on the same stuck backing), the
    caller gets its answer once the backing answers, and the others go on meanwhile."""
    backing = tmp_path / "backing"
    backing.mkdir()
    (backing / "f").write_text("fine")
    with stuck_backing(backing) as (_inner, stopped), pool_mount(tmp_path, workers, backing=backing) as m:
        m.allowed_log_errors.append("exited with")
        sup, _pool = server_processes(m, workers)
        target = m.mnt / "inner" / "mnt"
        caller = subprocess.Popen([sys.executable, "-c", "import os, sys; os.stat(sys.argv[1])", str(target)])
        try:

            def busy() -> list[int]:
                # Idle: blocked reading the device (plain) or waiting on the ring (uring).
                return [w for w in children(sup) if wchan(w) not in ("fuse_dev_do_read", "io_cqring_wait", "")]

            assert wait_for(lambda: len(busy()) == 1, 5), f"no worker got stuck on the inner mount: {busy()}"
            time.sleep(0.1)
            busy_now = busy()
            assert len(busy_now) == 1, busy_now
            os.kill(busy_now[0], signal.SIGKILL)
            assert wait_for(lambda: len(children(sup)) == workers and busy_now[0] not in children(sup), 5)
            # the replacement took the request up again: it waits on the stuck backing as its predecessor did
            assert wait_for(lambda: len(busy()) == 1 and busy() != busy_now, 5), busy()
            assert caller.poll() is None, "the caller was answered before the backing answered"
            if workers > 1:
                assert probe(m.mnt) == "ok"
                assert (m.mnt / "f").read_text() == "fine"
            for w in stopped:
                os.kill(w, signal.SIGCONT)
            try:
                caller.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail("the caller of a request whose worker died stayed blocked")
            assert caller.returncode == 0, "the request its worker died serving failed"
        finally:
            if caller.poll() is None:
                caller.kill()
                caller.wait(timeout=10)
        assert probe(m.mnt) == "ok"
        assert (m.mnt / "f").read_text() == "fine"
        unmount_and_check(m)


def test_workers_dying_over_and_over_leave_a_dead_mount(tmp_path):
    """A worker that keeps dying young is not restarted forever: the supervisor gives up and
    exits, leaving the mount in place and dead (ENOTCONN, as libfuse leaves it) rather than
    detaching it under its users, whose writes by path would land underneath; the log says
    why, and `fastpass unmount` clears it."""
    with pool_mount(tmp_path, 1) as m:
        m.allowed_log_errors += ["exited with", "giving up", "nothing can serve"]
        sup, _ = server_processes(m, 1)
        killed = []
        deadline = time.monotonic() + 30
        while alive(sup) and time.monotonic() < deadline:
            now = children(sup)
            if not now:
                time.sleep(0.01)
                continue
            for w in now:
                if w not in killed:
                    os.kill(w, signal.SIGKILL)
                    killed.append(w)
            time.sleep(0.02)
            assert probe(m.mnt, timeout=3) != "hung", f"the mount hung after {len(killed)} worker deaths"
        assert not alive(sup), f"the supervisor kept restarting workers ({len(killed)} killed)"
        assert is_mounted(m.mnt), "the supervisor gave up and detached the mount"
        assert probe(m.mnt) == "error ENOTCONN"
        assert "nothing can serve" in m.log.read_text()
        r = run_fastpass("unmount", str(m.mnt), timeout=15)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.mnt)
        assert_all_gone(m, sup, *killed)


@POOL
def test_sigterm_to_a_worker(tmp_path, workers):
    """A worker told to stop on its own (SIGTERM) is replaced like a crashed one: the pool keeps its size."""
    with pool_mount(tmp_path, workers) as m:
        m.allowed_log_errors.append("exited with")
        sup, pool = server_processes(m, workers)
        os.kill(pool[0], signal.SIGTERM)
        assert wait_for(lambda: not alive(pool[0]), 10), "the worker ignored SIGTERM"
        assert wait_for(lambda: len(children(sup)) == workers and pool[0] not in children(sup), 5), children(sup)
        assert probe(m.mnt) == "ok"
        unmount_and_check(m)


# --- the supervisor killed ----------------------------------------------------------
def successor(m: Mounted, dead: int) -> int:
    """The supervisor that took a killed one's place: its record names it and it lives."""
    assert wait_for(lambda: server_pid(m.mnt) not in (None, dead) and alive(server_pid(m.mnt)), 10), (
        f"nobody took the place of supervisor {dead}"
    )
    new = server_pid(m.mnt)
    assert new is not None
    return new


@POOL
def test_supervisor_killed_is_succeeded(tmp_path, workers):
    """kill -9 of the supervisor: the workers serve on, one of them forks a successor that adopts
    the pool (stats, worker replacement, unmount work again), and writes by path land in the
    backing, never in the directory under the mountpoint."""
    with pool_mount(tmp_path, workers) as m:
        m.allowed_log_errors.append("replaced by")
        (m.backing / "f").write_text("x")
        sup, pool = server_processes(m, workers)
        os.kill(sup, signal.SIGKILL)
        assert wait_for(lambda: not alive(sup), 5)
        assert is_mounted(m.mnt) and (m.mnt / "f").read_text() == "x"
        r = subprocess.run(["sh", "-c", f"echo important > {m.mnt}/report.txt"], check=False)
        assert r.returncode == 0 and (m.backing / "report.txt").read_text() == "important\n"
        new = successor(m, sup)
        assert f"the supervisor (pid {sup}) is gone: pid {new} took its place" in m.log.read_text()
        s = stats(m.mnt)
        assert s["supervisor_pid"] == new and [w["pid"] for w in s["workers"]] == pool
        os.kill(pool[0], signal.SIGKILL)
        assert wait_for(lambda: stats(m.mnt)["restarts"] == 1 and all(w["alive"] for w in stats(m.mnt)["workers"]), 10)
        assert (m.mnt / "report.txt").read_text() == "important\n"
        r = run_fastpass("unmount", str(m.mnt), timeout=15)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(m.mnt) and not list(m.mnt.iterdir()), "something landed under the mountpoint"
        assert_all_gone(m, sup, new, *pool)


def test_supervisor_killed_with_many_workers_one_succeeds(tmp_path):
    """Eight orphaned workers look at once: exactly one successor, no error from any of them,
    and after a second kill (of the successor, which is nobody's parent) another one."""
    with pool_mount(tmp_path, 8) as m:
        sup, pool = server_processes(m, 8)
        os.kill(sup, signal.SIGKILL)
        new = successor(m, sup)
        time.sleep(IDLE_SYNC * 2)  # every worker has looked by now
        assert server_pid(m.mnt) == new and processes_named(SUPERVISOR_NAME, m) == [new]
        os.kill(new, signal.SIGKILL)
        third = successor(m, new)  # the adopted workers have no parent left to tell them: they look
        assert probe(m.mnt) == "ok"
        text = m.log.read_text()
        assert text.count("took its place") == 2, text
        bad = [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line]
        assert not bad, f"orphaned workers logged errors:\n{text}"
        r = run_fastpass("unmount", str(m.mnt), timeout=15)
        assert r.returncode == 0, r.stderr
        assert_all_gone(m, sup, new, third, *pool)


@POOL
def test_supervisor_killed_with_file_open(tmp_path, workers):
    """Orphaned with a file open: the mount stays, the open file reads and writes on, and a
    later unmount ends everything."""
    with pool_mount(tmp_path, workers) as m:
        (m.backing / "f").write_text("x")
        sup, pool = server_processes(m, workers)
        with open(m.mnt / "f", "r+") as held:
            os.kill(sup, signal.SIGKILL)
            assert wait_for(lambda: not alive(sup), 5)
            assert held.read() == "x"
            held.write("yz")
        assert (m.backing / "f").read_text() == "xyz"
        new = successor(m, sup)
        r = run_fastpass("unmount", str(m.mnt), timeout=15)
        assert r.returncode == 0, r.stderr
        assert_all_gone(m, sup, new, *pool)


def test_no_process_left_after_clean_stops(tmp_path):
    """Across a few mounts, every supervisor and worker is gone after unmount."""
    seen: list[int] = []
    for workers in (1, 4, 2):
        with pool_mount(tmp_path, workers) as m:
            sup, pool = server_processes(m, workers)
            seen += [sup, *pool]
        assert server_pid(m.mnt) is None
    for pid in seen:
        assert wait_for(lambda pid=pid: not alive(pid), 10), pid


# --- a server that must never block on its own backing ----------------------------------
_RACER = """
import os, signal, sys, time
mnt, seconds = sys.argv[1], float(sys.argv[2])

def give_up(*args):
    raise InterruptedError  # a FIFO opened on our side must not keep us (a plain return would retry)

signal.signal(signal.SIGALRM, give_up)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        os.close(os.open(os.path.join(mnt, "n"), os.O_CREAT | os.O_WRONLY, 0o644))
    except OSError:
        pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        os.unlink(os.path.join(mnt, "n"))
    except OSError:
        pass
"""

_FIFO_MAKER = """
import os, sys, time
backing, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        os.mkfifo(os.path.join(backing, "n"))
    except OSError:
        pass
    try:
        os.unlink(os.path.join(backing, "n"))
    except OSError:
        pass
"""


@POOL
def test_fifo_appearing_in_backing_does_not_hang_the_mount(tmp_path, workers):
    """A FIFO that appears in the backing between the kernel's LOOKUP and its CREATE.

    CREATE opens the name with O_CREAT but without O_EXCL or O_NONBLOCK, so if
    another process has just made a FIFO there, the worker's own open(2) waits
    for a FIFO writer/reader that never comes; once every worker is caught so,
    every request on the mount waits behind them.  The mount must keep answering.
    """
    seconds = 10
    with pool_mount(tmp_path, workers) as m:
        m.allowed_log_errors.append("exited with")  # if workers had to be released
        sup, _pool = server_processes(m, workers)
        procs = [
            subprocess.Popen([sys.executable, "-c", _RACER, str(m.mnt), str(seconds)]),
            subprocess.Popen([sys.executable, "-c", _FIFO_MAKER, str(m.backing), str(seconds)]),
        ]
        hung = None
        blocked: list[str] = []
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and hung is None:
                outcome = probe(m.mnt, timeout=3)
                if outcome != "ok":
                    hung = outcome
                    blocked = [wchan(w) for w in children(sup)]
                time.sleep(0.1)
        finally:
            # A request a worker has read cannot be abandoned even by SIGKILL: its caller
            # waits for the reply.  So first release our workers from their FIFO open(2)
            # (a worker's exit fails its request), then end the helpers.
            for _ in range(3):
                for w in children(sup):
                    if wchan(w) == "wait_for_partner":
                        os.kill(w, signal.SIGTERM)
                time.sleep(0.2)
            for p in procs:
                p.kill()
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=10)
        assert hung is None, f"the mount stopped answering ({hung}); its workers were blocked in {blocked!r}"
