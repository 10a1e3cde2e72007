"""Filters that make a mount's start fail for real (`--filter tests.startup_filters:CLASS`).

A filter is made in the supervisor, before it mounts.  Through
`os.register_at_fork` it also acts in every process the supervisor forks
after mounting (its workers and its watcher), before they serve.  So each
start-up failure below happens at a known point, by a real signal, with no
test hook in fastpass itself.
"""

from __future__ import annotations

import os
import signal

from fastpass.filters.api import Filter


def _signal(name: str) -> signal.Signals:
    return signal.Signals[name]


class SupervisorDies(Filter):
    """The supervisor kills itself while it loads its filters: before anything is mounted."""

    def __init__(self, signal: str = "SIGKILL"):
        os.kill(os.getpid(), _signal(signal))


class WorkersDie(Filter):
    """Every worker (and the watcher) kills itself as soon as it is forked, after the mount exists."""

    def __init__(self, signal: str = "SIGKILL"):
        signo = _signal(signal)
        os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signo))


class SupervisorKilled(Filter):
    """The first worker forked SIGKILLs the supervisor: after the mount exists, before it is ready.

    With `workers=die` each forked process then kills itself too, so nobody
    is left to detach the mount but the waiting `fastpass mount`; with
    `workers=live` they go on, find their supervisor gone and detach it.
    """

    def __init__(self, workers: str = "live"):
        if workers not in ("live", "die"):
            raise ValueError("workers must be live or die")

        supervisor = os.getpid()  # filters are made in the supervisor

        def child() -> None:
            if os.getppid() == supervisor:  # never whoever adopted us once it is gone
                os.kill(supervisor, signal.SIGKILL)
            if workers == "die":
                os.kill(os.getpid(), signal.SIGKILL)

        os.register_at_fork(after_in_child=child)
