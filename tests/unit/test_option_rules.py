"""The option rules that need nothing of the system (fastpass.config.RULES), and where they are checked."""

from __future__ import annotations

import pytest

from fastpass import config as C
from fastpass import options


def _config(**fields: object) -> C.MountConfig:
    return options.config("/", "/", dict(fields))


@pytest.mark.parametrize(
    ("fields", "root", "why"),
    [
        ({"passthrough": "on"}, False, "--passthrough on needs root"),
        ({"max_inodes": 8}, True, "--max-inodes must be 0 (no bound) or from 16 to"),
        ({"workers": C.MAX_WORKERS + 1}, True, f"--workers must be from 1 to {C.MAX_WORKERS}"),
        ({"engine": "pyfuse3", "workers": 2}, True, "--engine pyfuse3 serves from one process"),
        ({"engine": "pyfuse3", "io": "uring"}, True, "--engine pyfuse3 has no io_uring path"),
        ({"writeback_cache": True, "passthrough": "on"}, True, "--writeback-cache excludes --passthrough on"),
        ({"writeback_cache": True, "cache": "strict"}, True, "--cache strict caches nothing"),
        ({"writeback_cache": True, "allow_other": True, "default_permissions": False}, True, "needs --default-perm"),
        ({"transport": "uring", "io": "plain"}, True, "--transport uring takes requests on each worker's io_uring"),
        ({"io_depth": C.MAX_IO_DEPTH + 1}, True, f"--io-depth must be from 1 to {C.MAX_IO_DEPTH}"),
        ({"revalidate": 2.0, "cache": "off"}, True, "--revalidate applies to --cache auto only"),
        ({"attr_timeout": -1.0}, True, "--attr-timeout must not be negative"),
    ],
)
def test_a_broken_rule_says_why(fields: dict, root: bool, why: str) -> None:
    found = C.problem(_config(**fields), root)
    assert found is not None and why in found


@pytest.mark.parametrize("root", [True, False])
def test_the_defaults_break_no_rule(root: bool) -> None:
    assert C.problem(_config(), root) is None
    assert C.problem(_config(engine="pyfuse3"), root) is None
    assert C.problem(_config(writeback_cache=True), root) is None


def test_options_problem_finds_them_without_mounting() -> None:
    """What bench asks of a variant's options: a value argparse refuses, or a broken rule."""
    assert options.problem(["--workers", "0"]) == f"--workers must be from 1 to {C.MAX_WORKERS}"
    assert "excludes --passthrough on" in (options.problem(["--writeback-cache", "--passthrough", "on"]) or "")
    assert options.problem(["--io-depth", "x"]) is not None
    assert options.problem(["--workers", "2", "--cache", "off"]) is None
