"""Running code as another user in a forked child: the interpreter lives under /root (0700),
so a subprocess started as that user could not even exec it."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

from fastpass import cli  # imported before the fork: the child cannot read /root's site-packages

UID = GID = 1000  # the unprivileged user the tests act as by default


def drop(uid: int, gid: int, groups: list[int]) -> None:
    """Become uid/gid/groups for good (this process only)."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def wait_child(pid: int, deadline: float, what: str) -> int:
    """waitpid with a deadline: a child still running then is killed and reported."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"{what} did not finish in time")
        time.sleep(0.005)


def as_user(fn: Callable[..., Any], *args: Any, uid: int = UID, gid: int = GID, groups: list[int] | None = None,
            timeout: float = 20) -> Any:  # fmt: skip
    """fn(*args) run as uid/gid/groups in a forked child; its OSError is raised here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        try:
            os.close(r)
            try:
                drop(uid, gid, list(groups or []))
                result: tuple = ("ok", fn(*args))
            except OSError as e:
                result = ("oserror", e.errno, e.strerror, e.filename)
            except BaseException:  # noqa: BLE001 - sent back to the parent
                result = ("exc", traceback.format_exc())
            data = pickle.dumps(result)
            while data:
                data = data[os.write(w, data) :]
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"{getattr(fn, '__name__', fn)} as uid {uid} hung")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
    wait_child(pid, deadline + 5, "child")
    result = pickle.loads(b"".join(chunks))
    if result[0] == "oserror":
        raise OSError(result[1], result[2], result[3])
    if result[0] == "exc":
        raise AssertionError(f"as uid {uid}:\n{result[1]}")
    return result[1]


def run_cli_as(uid: int, gid: int, groups: list[int], *argv: str, env: dict[str, str] | None = None,
               timeout: float = 30) -> tuple[int, str, str]:  # fmt: skip
    """`fastpass ARGV` as uid/gid/groups in a forked child: (exit code, stdout, stderr)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 125
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                drop(uid, gid, groups)
                if env is not None:
                    os.environ.clear()
                    os.environ.update(env)
                os.chdir("/")
                try:
                    code = cli.main(list(argv))
                except SystemExit as e:  # argparse
                    code = e.code if isinstance(e.code, int) else 2
            except BaseException:  # noqa: BLE001 - reported on the child's stderr
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        status = wait_child(pid, time.monotonic() + timeout, f"fastpass {' '.join(argv)} as uid {uid}")
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()
