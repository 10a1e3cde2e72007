"""Fixtures for the hot-path micro-benchmarks: a real Fs over a temp dir, no mount."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastpass.config import MountConfig, resolve
from fastpass.fs.context import Fs
from fastpass.fs.shared import SharedState


@pytest.fixture
def backing(tmp_path: Path) -> Path:
    root = tmp_path / "backing"
    root.mkdir()
    (root / "file").write_bytes(b"x" * 4096)
    for i in range(100):
        (root / f"entry-{i:03d}").touch()
    return root


@pytest.fixture
def fs(backing: Path) -> Iterator[Fs]:
    """What a worker builds at start: Fs over the shared tables the supervisor made."""
    config = resolve(MountConfig(backing=str(backing), mountpoint="/nonexistent"), watched=True)
    root_fd = os.open(backing, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    fs = Fs(config, root_fd, SharedState(root_fd, max_inodes=4096, cache_size=1024, max_handles=1024))
    try:
        yield fs
    finally:
        fs.read_view.release()
        fs.read_buf.close()
        os.close(root_fd)
