"""The seat journal without a mount: what a replacement learns of each slot's request, and
what a record cut by a worker's death says (fastpass.shm.journal)."""

from __future__ import annotations

import pytest

from fastpass.shm.journal import BODY, Journal


def test_a_record_follows_its_request() -> None:
    j = Journal(3)
    assert j.record(1, 7) == ("new", 0, None, 0, 0)
    j.staged(1, 7, 4000, 96)
    assert j.record(1, 7) == ("staged", 0, None, 4000, 96)
    j.started(1, 7)
    assert j.record(1, 7) == ("started", 0, None, 4000, 96)  # the staged copy to run it again from
    j.done(1, 7, 0, b"entry")
    assert j.record(1, 7) == ("done", 0, b"entry", 4000, 96)
    assert j.record(1, 8)[0] == "new" and j.record(2, 7)[0] == "new"  # another request, another slot
    j.started(2, 9)
    j.done(2, 9, -17, None)
    assert j.record(2, 9)[:3] == ("done", -17, None)
    j.started(0, 10)
    j.done(0, 10, 0, b"x" * (BODY + 1))  # too large to keep: run again, in redo mode
    assert j.record(0, 10)[0] == "started"


def test_pending_and_tries() -> None:
    j = Journal(2)
    assert not j.pending(0, 0)  # a slot that never held a request
    assert j.pending(0, 5)
    j.answered[0] = 5
    assert not j.pending(0, 5) and j.pending(0, 6)
    assert [j.tries(1, 5), j.tries(1, 5), j.tries(1, 6)] == [0, 1, 0]


class _Killed(BaseException):
    """The worker's death between two stores of a record."""


@pytest.mark.parametrize("write", ["staged", "started", "done", "done-with-body"])
def test_a_record_cut_before_it_names_its_request_says_nothing_of_it(write: str) -> None:
    """A worker killed amid a record's stores leaves the record of the request before: the
    new request is "new" (nothing of it ran), never the old one's state or reply."""
    j = Journal(2)
    j.staged(1, 7, 4000, 96)
    j.done(1, 7, 0, b"the reply to 7")

    def killed(*args: object) -> None:
        raise _Killed

    j._name = killed  # type: ignore[method-assign]  # the last store: the one that names the request
    with pytest.raises(_Killed):
        {"staged": lambda: j.staged(1, 8, 5000, 80), "started": lambda: j.started(1, 8),
         "done": lambda: j.done(1, 8, -2, None), "done-with-body": lambda: j.done(1, 8, 0, b"the reply to 8")}[write]()  # fmt: skip
    assert j.record(1, 8) == ("new", 0, None, 0, 0)
