"""What a checkpoint is, by content: the sha256 of every byte of its files, computed once per file and cached.

A 20 GB checkpoint takes tens of seconds to hash, so digests are kept in a JSON cache (one per run directory) keyed
by the resolved path and trusted only while the file's size, mtime and inode are those it was hashed with: an
edit, a truncation or a replacement by a copy re-hashes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from pixelwizard.io.files import file_stamp, sha256_file, write_atomic


class DigestCache:
    """File digests keyed by resolved path, valid while the file's stamp (size, mtime, inode) is unchanged."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.entries: dict[str, dict] = {}
        self.changed = False
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:  # a damaged cache only costs re-hashing
                self.entries = {}

    def digest(self, file: Path, on_hash: Callable[[Path], None] | None = None) -> str:
        """sha256 of the whole file; `on_hash(file)` is called before a file is actually read."""
        key = str(Path(file).resolve())
        stamp = file_stamp(Path(key))
        entry = self.entries.get(key)
        if entry is not None and entry.get("stamp") == stamp:
            return entry["sha256"]
        if on_hash is not None:
            on_hash(Path(file))
        sha = sha256_file(Path(key))
        self.entries[key] = {"stamp": stamp, "sha256": sha}
        self.changed = True
        return sha

    def save(self) -> None:
        if self.path is not None and self.changed:
            write_atomic(self.path, json.dumps(self.entries, indent=0, sort_keys=True))
            self.changed = False


def files_identity(files: Iterable[Path], root: Path, cache: DigestCache,
                   on_hash: Callable[[Path], None] | None = None) -> str:
    """One digest over a set of files, each named relative to `root` (or by its name when outside it), so that
    the same files elsewhere have the same identity."""
    lines = []
    for file in sorted(Path(f) for f in files):
        try:
            name = file.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            name = file.name
        lines.append(f"{name} {cache.digest(file, on_hash)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
