"""First checks that a mount serves the backing dir at all."""

import os


def test_file_roundtrip(fs):
    (fs.mnt / "a.txt").write_bytes(b"hello")
    assert (fs.backing / "a.txt").read_bytes() == b"hello"
    assert os.listdir(fs.mnt) == ["a.txt"]
    assert (fs.mnt / "a.txt").stat().st_ino == (fs.backing / "a.txt").stat().st_ino
