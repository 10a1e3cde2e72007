"""A client that makes, writes, checks, renames and removes files until told to stop.

Run as `python3 churn.py DIR TAG STOPFILE`: each round creates DIR/TAG.N with O_EXCL, writes
4 KiB of a pattern that names the round, closes, stats, renames, reads back, unlinks and
checks that both names are gone.  At the end it prints one JSON line: rounds, mismatches
(data, size or names not as written), {errno: count} of every call that failed and, for each,
which call it was, in which round, and when.  An
EEXIST from the O_EXCL create, or an ENOENT from the rename or unlink, is an operation that
took effect twice; any error at all is one a client should not have seen.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time


def main(directory: str, tag: str, stop: str) -> None:
    errors: collections.Counter[int] = collections.Counter()
    where: dict[str, float] = {}  # the failed call, its round and error -> when (for the server's log)
    rounds = mismatches = 0
    os.makedirs(directory, exist_ok=True)
    n = 0
    while not os.path.exists(stop):
        n += 1
        path = os.path.join(directory, f"{tag}.{n}")
        moved = path + ".moved"
        data = (f"{tag}-{n}-".encode() * 4096)[:4096]
        step = "create"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                step = "write"
                os.write(fd, data)
            finally:
                step = "close"
                os.close(fd)
            step = "stat"
            mismatches += os.stat(path).st_size != len(data)
            step = "rename"
            os.rename(path, moved)
            step = "read"
            with open(moved, "rb") as f:
                mismatches += f.read() != data
            step = "unlink"
            os.unlink(moved)
            mismatches += os.path.lexists(path) or os.path.lexists(moved)
            rounds += 1
        except OSError as e:
            errors[e.errno or 0] += 1
            where[f"{step} {n}: {e}"] = time.time()
    print(json.dumps({"rounds": rounds, "mismatches": mismatches, "errors": dict(errors), "where": where}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
