"""Atomic publishing: every output is written under a hidden temporary sibling and renamed into place when
complete, so a reader sees the old output or the new one, never half of one. Temporaries left by killed writers
are collected later.

    .<name>.tmp-<pid>-<hex>        the temporary sibling of <name> (a file or a directory)
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path

_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")


def temp_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path` (same directory, so the final rename is atomic)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def publish(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` (file or directory) to `path`, replacing what is there."""
    if not path.is_dir() or path.is_symlink():
        os.replace(tmp, path)
        return
    # rename(2) cannot replace a non-empty directory: swap the old one aside, move the new one in, then delete the
    # old. Between the two renames (microseconds) nothing is at `path`; a crash there leaves the old one in a temp
    # sibling that remove_stale_temps() collects.
    old = temp_sibling(path)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write a small file whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            tmp.write_bytes(content)
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temp(tmp: Path) -> None:
    """Drop an unfinished temporary (file or directory) after a failed write."""
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, owned by another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temps(parent: Path, min_age_s: float = 3600.0) -> int:
    """Delete temporaries left by crashed writers in `parent`; returns how many were removed.

    A temporary is removed only if its writer pid is not alive on this host AND it was last modified at least
    `min_age_s` ago. The age guard is what makes this safe on a shared filesystem, where a pid says nothing about
    writers on other nodes; pass 0 only when every writer runs on this host.
    """
    parent, cutoff = Path(parent), time.time() - min_age_s
    stale = [entry for entry in (parent.iterdir() if parent.is_dir() else ())
             if (match := _TEMP_RE.match(entry.name)) and not _pid_alive(int(match.group(1)))
             and entry.lstat().st_mtime <= cutoff]
    for entry in stale:
        remove_temp(entry)
    return len(stale)


def file_stamp(path: Path | os.DirEntry) -> list[int]:
    """A file's size, mtime and inode, recorded when an output is written and compared by `unchanged`."""
    st = path.stat(follow_symlinks=False)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def unchanged(recorded: object, stamp: list[int]) -> bool:
    """Whether a file still holds what it held when `recorded` was taken: the same size and the same mtime, to the
    nanosecond. Any write sets the mtime to the time of the write, a truncation changes the size; a copy made
    with `cp -a` or `rsync -a`, or a move to another file system, keeps both, so a copied run is not read again
    (only its inodes differ). A file edited and then given back its old mtime on purpose would pass."""
    return isinstance(recorded, list) and recorded[:2] == stamp[:2]


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
