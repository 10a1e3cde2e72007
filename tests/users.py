"""Running code as another user in a forked child: the interpreter lives under /root (0700),
so a subprocess started as that user could not even exec it."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback

from fastpass import cli  # imported before the fork: the child cannot read /root's site-packages


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
