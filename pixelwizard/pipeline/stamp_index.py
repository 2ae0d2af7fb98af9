"""The stamp index: each stage job lists the outputs it leaves current, with the digest they carry and a signature of
the stamps (size, mtime) of every file of each, so that `status`, the report and the next run's plan learn that an
output is intact and which digest it carries from a stat of its files, without opening any of them. An entry is
checked, never trusted: it counts only while every file it lists still has the size and mtime it recorded
(files.unchanged: any write moves the mtime; `cp -a` keeps both); otherwise the output is read and checked in full,
as if there were no index.

    OUT/.pixelwizard/index/<stage>[/<tag>]/<shard>.stamps.json
        {"files": [[path, ...], ...],                 each output's files, relative to its stage folder, "{id}"
                                                      standing for its id (one list per shape)
         "outputs": {id: [digest, files, signature]}}
    OUT/.pixelwizard/index/<stage>[/<tag>]/<shard>.extras.json
        {id: {seconds, time, metrics, ...}}           what the report shows of it (read only by the report)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pixelwizard.io.files import write_atomic
from pixelwizard.pipeline.layout import Layout

ID = "{id}"
STAMPS, EXTRAS = ".stamps.json", ".extras.json"


def store_files(store: Path) -> list[Path]:
    """Every file of a zarr store, in a stable order."""
    found = []
    for root, dirs, names in os.walk(store):
        dirs.sort()
        found += [Path(root) / name for name in sorted(names)]
    return found


def signature(stats: Iterable[os.stat_result]) -> str:
    """What the index compares: every file's size and mtime, in order (files.unchanged, for a set of files)."""
    stamps = ";".join([f"{st.st_size}:{st.st_mtime_ns}" for st in stats])
    return hashlib.blake2b(stamps.encode(), digest_size=12).hexdigest()


class ShardIndex:
    """The entries one job writes: an output's files as they are now, its digest and what the report shows."""

    def __init__(self, layout: Layout, stage: str, tag: str | None, shard: str):
        self.folder, self.root = layout.folder(stage, tag), layout.out
        self.paths = [index_folder(layout, stage, tag) / f"{shard}{suffix}" for suffix in (STAMPS, EXTRAS)]
        self.shapes: list[list[str]] = []
        self.outputs: dict[str, list[Any]] = {}
        self.extras: dict[str, dict[str, Any]] = {}

    def add(self, item_id: str, files: list[Path], digest: str, **extras: Any) -> None:
        """`files`: the output's, each named after its id (<id>.zarr/..., <id>.mp4, <id>.json)."""
        paths = [f.relative_to(self.folder).as_posix() for f in files]
        if not all(p.startswith(item_id) for p in paths):
            raise ValueError(f"{self.folder}: an output of {item_id} with files not named after it: {paths}")
        shape = [ID + p[len(item_id):] for p in paths]
        if shape not in self.shapes:
            self.shapes.append(shape)
        stats = [os.stat(f) for f in files]
        self.outputs[item_id] = [digest, self.shapes.index(shape), signature(stats)]
        self.extras[item_id] = extras

    def update(self, item_id: str, **extras: Any) -> None:
        if item_id in self.outputs:
            self.extras[item_id].update(extras)

    def save(self) -> None:
        compact = {"separators": (",", ":"), "ensure_ascii": False}
        stamps, extras = self.paths
        write_atomic(extras, json.dumps(self.extras, **compact), self.root)
        write_atomic(stamps, json.dumps({"files": self.shapes, "outputs": self.outputs}, **compact), self.root)


class StampIndex:
    """Every job's entries for one stage (and decode setting), looked up by output id and checked on the way."""

    def __init__(self, layout: Layout, stage: str, tag: str | None):
        self.folder = layout.folder(stage, tag)
        self.prefix = f"{self.folder}{os.sep}"  # a string: pathlib costs more than the stat at 100,000 outputs
        self.index = index_folder(layout, stage, tag)
        self.shards: list[tuple[Path, list[tuple[str, ...]], dict[str, list[Any]]]] = []  # path, shapes, outputs
        self.where: dict[str, int] = {}  # output id -> the shard holding its entry (the last one, if several do)
        self.also: dict[str, list[int]] = {}  # output id -> the other shards with an entry of it
        self._extras: dict[Path, dict[str, Any]] = {}
        for path in sorted(self.index.glob(f"*{STAMPS}")) if self.index.is_dir() else ():
            try:
                shard = json.loads(path.read_text(encoding="utf-8"))
                shapes = [tuple(p.removeprefix(ID) for p in shape) for shape in shard["files"]]  # the id's suffixes
                outputs = shard["outputs"]
                if not isinstance(outputs, dict):
                    continue
            except (OSError, ValueError, KeyError, TypeError):  # torn or foreign: costs a full check
                continue
            for item_id in outputs.keys() & self.where.keys():  # a shard written again, say: each entry is tried
                self.also.setdefault(item_id, []).append(self.where[item_id])
            self.where.update(dict.fromkeys(outputs, len(self.shards)))  # a dict per id would cost seconds at 100,000
            self.shards.append((path, shapes, outputs))

    def lookup(self, item_id: str) -> dict[str, Any] | None:
        """{"digest", "files" (names, relative to the stage folder), "entry"} of the output whose files all still
        have the stamps an entry recorded; None when no entry holds (the caller reads the output itself)."""
        shard = self.where.get(item_id)
        if shard is None:
            return None
        head, also = self.prefix + item_id, self.also.get(item_id)
        for k in (shard,) if also is None else (shard, *also):
            path, shapes, outputs = self.shards[k]
            try:
                digest, shape, sig = outputs[item_id]
                suffixes = shapes[shape]
                stats = [os.stat(head + suffix) for suffix in suffixes]
            except (OSError, ValueError, TypeError, IndexError):
                continue
            if signature(stats) == sig:
                return {"digest": digest, "files": [item_id + suffix for suffix in suffixes], "entry": path}
        return None

    def extras(self, item_id: str, entry: Path) -> dict[str, Any]:
        """What the job that wrote the entry recorded for the report (seconds, time, metrics)."""
        if entry not in self._extras:
            try:
                self._extras[entry] = json.loads(entry.with_name(entry.name.removesuffix(STAMPS) + EXTRAS)
                                                 .read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._extras[entry] = {}
        found = self._extras[entry].get(item_id)
        return found if isinstance(found, dict) else {}


def index_folder(layout: Layout, stage: str, tag: str | None) -> Path:
    return layout.state / "index" / (f"{stage}/{tag}" if tag else stage)
