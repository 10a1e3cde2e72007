"""The last warnings of each process, kept in the shared region for `fastpass stats`."""

from __future__ import annotations

import logging
import os

from fastpass.shm import warnlog
from fastpass.shm.region import Layout, Region


def _space() -> tuple[warnlog.WarningSpace, Region]:
    layout = Layout()
    space = warnlog.WarningSpace(layout)
    return space, Region(layout.size)


def test_each_process_keeps_its_newest_warnings_and_nothing_below() -> None:
    space, region = _space()
    log = logging.getLogger("fastpass.test-warnlog")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    handler = warnlog.SharedWarnings(space, region, 3)
    log.addHandler(handler)
    try:
        log.info("an info line is not a warning")
        for i in range(warnlog.KEPT + 2):
            log.warning("warning %d", i)
        try:
            raise ZeroDivisionError("a bug")
        except ZeroDivisionError:
            log.exception("unexpected")
        log.error("x" * 1000)  # cut to what an entry holds
    finally:
        log.removeHandler(handler)
    got = warnlog.recent(space, region, {3: "worker 3", 0: "worker 0"}, 10)
    assert [(name, text) for _, name, text in got] == [
        ("worker 3", f"warning: warning {warnlog.KEPT}"),
        ("worker 3", f"warning: warning {warnlog.KEPT + 1}"),
        ("worker 3", "error: unexpected (ZeroDivisionError: a bug)"),
        ("worker 3", "error: " + "x" * (warnlog.TEXT - len("error: "))),
    ][-warnlog.KEPT :]
    assert [t for t, _, _ in got] == sorted(t for t, _, _ in got)
    assert warnlog.recent(space, region, {3: "worker 3"}, 2) == got[-2:]


def test_a_replacement_goes_on_after_its_predecessors_warnings_and_a_fork_keeps_its_own_block() -> None:
    space, region = _space()
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        warnlog.attach(space, region, 0)
        logging.getLogger("fastpass.test-warnlog-2").warning("from the first")
        pid = os.fork()
        if pid == 0:  # a worker: its own block, the parent's handler dropped
            code = 1
            try:
                warnlog.attach(space, region, 1)
                logging.getLogger("fastpass.test-warnlog-2").warning("from the child")
                code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        warnlog.attach(space, region, 0)  # a successor at index 0
        logging.getLogger("fastpass.test-warnlog-2").warning("from the successor")
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
    texts = [(name, text) for _, name, text in warnlog.recent(space, region, {0: "w0", 1: "w1"}, 10)]
    assert texts == [("w0", "warning: from the first"), ("w1", "warning: from the child"),
                     ("w0", "warning: from the successor")]  # fmt: skip
