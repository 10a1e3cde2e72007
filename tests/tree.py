"""A tree's comparable shape: what a program left behind, without when it ran or on which mount.

`snapshot` records, per path relative to the root: the type, mode bits,
owner, link count, size, a content hash (a symlink's target instead),
every extended attribute, and on request the mtime and the data/hole map.
Two runs of the same program on two mounts must give equal snapshots;
`differences` lists where they do not, one line per path, so a failing
assertion reads like a diff.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from pathlib import Path

KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
         stat.S_IFSOCK: "socket", stat.S_IFCHR: "chr", stat.S_IFBLK: "blk"}  # fmt: skip


def data_map(path: Path) -> list[tuple[int, int]]:
    """The file's data segments [start, end) by SEEK_DATA/SEEK_HOLE: where its holes are."""
    segments: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        end, pos = os.fstat(fd).st_size, 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            segments.append((start, pos))
    finally:
        os.close(fd)
    return segments


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in sorted(os.listxattr(path, follow_symlinks=False))}  # fmt: skip


def entry(path: Path, *, mtime: bool = False, holes: bool = False, content: bool = True) -> dict:
    """One path's comparable attributes (see the module's docstring)."""
    st = os.lstat(path)
    kind = KINDS[stat.S_IFMT(st.st_mode)]
    e: dict = {"kind": kind, "mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid,
               "nlink": st.st_nlink, "xattrs": _xattrs(path)}  # fmt: skip
    if kind == "symlink":
        e["target"] = os.readlink(path)
    elif kind == "file" and content:
        e["size"] = st.st_size
        e["sha256"] = _digest(path)
    if mtime and content and kind != "symlink":
        e["mtime_ns"] = st.st_mtime_ns
    if holes and kind == "file":
        e["blocks"] = st.st_blocks
        e["data"] = data_map(path)
    return e


def snapshot(root: Path, *, mtime: bool = False, holes: bool = False, loose: tuple[str, ...] = ()) -> dict[str, dict]:
    """Every path under `root` (itself as "."), each with `entry`'s attributes.

    Paths matching a glob in `loose` are compared without size, content and mtime: files
    a program rewrites with what differs between runs by design (a clock, an
    inode number, the order in which concurrent writers won a lock).
    """
    tree = {".": entry(root)}  # the root's mtime is when the job last changed it
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            content = not any(fnmatch.fnmatchcase(rel, pattern) for pattern in loose)
            tree[rel] = entry(path, mtime=mtime, holes=holes, content=content)
    return tree


def differences(expected: dict[str, dict], got: dict[str, dict]) -> list[str]:
    """One line per path whose entries differ, or that only one tree has."""
    lines = []
    for rel in sorted(expected.keys() | got.keys()):
        want, have = expected.get(rel), got.get(rel)
        if want is None or have is None:
            lines.append(f"{rel}: only in {'expected' if have is None else 'got'}")
        elif want != have:
            changed = {k: (want.get(k), have.get(k)) for k in want.keys() | have.keys() if want.get(k) != have.get(k)}
            lines.append(f"{rel}: {changed}")
    return lines
