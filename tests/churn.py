"""A client that makes, writes, checks, renames and removes files until told to stop.

Run as `python3 churn.py DIR TAG STOPFILE`: each round creates DIR/TAG.N with O_EXCL, writes
4 KiB of a pattern that names the round, closes, stats, renames, reads back, unlinks and
checks that both names are gone.  At the end it prints one JSON line: rounds, mismatches
(data, size or names not as written) and {errno: count} of every call that failed.  An
EEXIST from the O_EXCL create, or an ENOENT from the rename or unlink, is an operation that
took effect twice; any error at all is one a client should not have seen.
"""

from __future__ import annotations

import collections
import json
import os
import sys


def main(directory: str, tag: str, stop: str) -> None:
    errors: collections.Counter[int] = collections.Counter()
    rounds = mismatches = 0
    os.makedirs(directory, exist_ok=True)
    n = 0
    while not os.path.exists(stop):
        n += 1
        path = os.path.join(directory, f"{tag}.{n}")
        moved = path + ".moved"
        data = (f"{tag}-{n}-".encode() * 4096)[:4096]
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            mismatches += os.stat(path).st_size != len(data)
            os.rename(path, moved)
            with open(moved, "rb") as f:
                mismatches += f.read() != data
            os.unlink(moved)
            mismatches += os.path.lexists(path) or os.path.lexists(moved)
            rounds += 1
        except OSError as e:
            errors[e.errno or 0] += 1
    print(json.dumps({"rounds": rounds, "mismatches": mismatches, "errors": dict(errors)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
