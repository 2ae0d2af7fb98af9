"""Content identity of checkpoints: a sha256 of every byte of every file, computed once per file and cached.

Hashing a 20 GB checkpoint takes about a minute, so each digest is kept in a cache (one JSON file, beside the run)
under the file's resolved path, with the size, mtime, ctime and inode the file had when it was hashed. A lookup
that finds any of them changed hashes the file again: an edit anywhere in it, a file replaced under the same
name, or a copy (a new inode) is never taken for the old content, and an untouched file is hashed once.
(ctime cannot be set back by a user, so even an in-place edit that restores the mtime is caught.) Facts read from
a content (a video's frame timing, say) are kept under its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pixelwizard.checkpoints.errors import CheckpointError
from pixelwizard.io.files import write_atomic

CHUNK_BYTES = 16 << 20
FACTS = "sha256:"  # the cache's keys of facts about a content, beside the files' paths

Progress = Callable[[Path, int, int], None]  # (file, bytes hashed so far, file size)


def _signature(stat: os.stat_result) -> dict[str, int]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino}


class DigestCache:
    """sha256 digests of files by resolved path, each valid while the file's size, mtime, ctime and inode stay
    what they were when it was hashed; kept in one JSON file at `path`, written atomically after each new digest,
    or only by an explicit `save()` when `persist` is off (a dry run writes nothing; a run writes once it holds
    its directory's lock); inside `root` (the run's OUT; default: the cache's own folder)."""

    def __init__(self, path: Path, persist: bool = True, root: Path | None = None) -> None:
        self.path = Path(path)
        self.persist, self.root = persist, root
        self.entries = self._read()
        self.added: dict[str, dict[str, Any]] = {}  # what this process hashed or noted: what `save` writes

    def _read(self) -> dict[str, dict[str, Any]]:
        """The entries on disk; a missing or damaged cache file only costs a re-hash."""
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def lookup(self, file: Path, stat: os.stat_result) -> str | None:
        entry = self.entries.get(str(file))
        if isinstance(entry, dict) and {k: entry.get(k) for k in _signature(stat)} == _signature(stat):
            return entry.get("sha256")
        return None

    def remember(self, file: Path, stat: os.stat_result, digest: str) -> None:
        self._keep(str(file), {**_signature(stat), "sha256": digest})

    def fact(self, digest: str, name: str) -> Any:
        """What was noted as `name` about the content whose sha256 is `digest` (None if nothing): facts read from a
        file's content (a video's frame timing, say) hold for as long as that content exists, wherever it is."""
        return self.entries.get(FACTS + digest, {}).get(name)

    def note(self, digest: str, name: str, value: Any) -> None:
        """Keep `value` (JSON) as fact `name` of the content whose sha256 is `digest`."""
        self._keep(FACTS + digest, {**self.entries.get(FACTS + digest, {}), name: value})

    def _keep(self, key: str, entry: dict[str, Any]) -> None:
        self.added[key] = self.entries[key] = entry
        if self.persist:
            self.save()

    def save(self) -> None:
        """Write the entries this process added over those on disk (another process may have saved since we
        read), atomically: concurrent savers never leave a torn file, the last one wins."""
        if not self.added:
            return
        self.entries = {**self._read(), **self.added}
        write_atomic(self.path, json.dumps(self.entries, indent=1, sort_keys=True), self.root)


def file_digest(path: Path, cache: DigestCache | None = None, on_progress: Progress | None = None) -> str:
    """sha256 (hex) of the whole file, streamed; from `cache` when the file is unchanged since it was hashed."""
    path = Path(path).resolve()
    try:
        before = path.stat()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror}); check that it exists") from None
    if cache is not None and (digest := cache.lookup(path, before)) is not None:
        return digest
    sha, done = hashlib.sha256(), 0
    buffer = memoryview(bytearray(CHUNK_BYTES))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            sha.update(buffer[:n])
            done += n
            if on_progress is not None:
                on_progress(path, done, before.st_size)
    if _signature(path.stat()) != _signature(before):
        raise CheckpointError(f"{path}: changed while it was being hashed; wait until it is fully written and "
                              "run again")
    digest = sha.hexdigest()
    if cache is not None:
        cache.remember(path, before, digest)
    return digest


def files_digest(files: Iterable[Path], root: Path, cache: DigestCache | None = None,
                 on_progress: Progress | None = None) -> str:
    """One sha256 over a set of files: each file's name (relative to `root`, or its own name outside it, so the
    same files elsewhere have the same identity) and content digest."""
    lines = []
    for file in files:
        file = Path(file)
        try:
            name = file.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            name = file.name
        lines.append(f"{name}\0{file_digest(file, cache, on_progress)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()
