"""Per-prompt zarr v3 stores that are published atomically, carry checksums and are never read half-written or
corrupt.

A store is written into a hidden temporary sibling, its group attributes (with `complete: true`) are written after
every array, and only then is it renamed to its final path. Readers refuse any store without `complete`, because
zarr silently reads unwritten chunks as the fill value. Every chunk ends in its crc32c (zarr's crc32c codec), every
chunk is written (also all-zero ones), and the group attributes record each file's stamp (size, mtime, inode). A
latent [C, T, H, W] is one shard file of a chunk per latent frame (zarr's sharding codec; its index has its own
crc32c): a 121-frame latent is 3 files instead of 33, and `status` stats every file of a run.

    verify_store()   cheap while every file is unchanged (files.unchanged: a stat per file, a copy passes);
                     otherwise every chunk is read and its checksum checked, and on success the stamps are renewed
                     when the caller writes in the run (read-only callers, `status` and dry runs, leave the store
                     as it is)
    read_store()     zarr checks each chunk's crc32c as it decodes it
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c

if TYPE_CHECKING:  # imported where used: `status` checks stores without them (seconds of imports)
    import torch
    import zarr

from pixelwizard.io.files import OutputPathError, file_stamp, staged, unchanged, write_atomic

FORMAT_VERSION = 3  # 2: crc32c per chunk, every chunk written, file stamps; 3: a latent in one shard
READABLE = (2, 3)  # a format-2 store (a chunk file per latent frame) is still read and checked as it is
RESERVED_ATTRS = ("complete", "format_version", "files")
UNWRITTEN = 2**64 - 1  # a shard index entry's offset for a chunk that was never written
METADATA = "zarr.json"


class StoreError(RuntimeError):
    """A store that cannot be used: absent, incomplete or corrupt. The message says which and what to do."""


class IncompleteStoreError(StoreError):
    def __init__(self, path: Path):
        super().__init__(f"{path}: zarr store is incomplete (its writer crashed or is still running); "
                         "re-run the stage that writes it")


class CorruptStoreError(StoreError):
    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: corrupt store ({problem}); it is recomputed on the next run")


def _check_attrs(attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise TypeError(f"attribute key {key!r} must be a str")
        if key in RESERVED_ATTRS:
            raise ValueError(f"attribute {key!r} is reserved for the store itself; rename it")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"attribute {key!r} is not JSON-serialisable ({err}); "
                            "convert it to str/number/bool/None/list/dict") from err


def _write_array(group: zarr.Group, name: str, tensor: torch.Tensor) -> None:
    import torch
    import zarr

    tensor = tensor.detach().cpu().contiguous()  # no copy when already a contiguous CPU tensor
    attributes = {}
    if tensor.dtype == torch.bfloat16:  # zarr has no bfloat16: keep the exact bits
        tensor, attributes = tensor.view(torch.uint16), {"logical_dtype": "bfloat16"}
    data = tensor.numpy()
    # [C, T, H, W] latents: one latent frame per chunk, so a reader can fetch frames lazily, all in one shard file;
    # anything else: one chunk
    chunks = (data.shape[0], 1, *data.shape[2:]) if data.ndim == 4 else data.shape
    array = group.create_array(
        name, shape=data.shape, dtype=data.dtype, chunks=tuple(max(c, 1) for c in chunks),
        shards=tuple(max(s, 1) for s in data.shape) if data.ndim == 4 else None, fill_value=0,
        compressors=[zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()], attributes=attributes,
        config={"write_empty_chunks": True},  # a missing chunk file then always means damage
    )
    array[...] = data


def _stamps(path: Path) -> dict[str, list[int]]:
    """The stamp of every file of the store but the group's own zarr.json (which holds the stamps), by relative
    path. `status` checks every store of a run, so this walks with scandir: no second stat per file."""
    stamps = {}

    def walk(directory: str, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif entry.is_file(follow_symlinks=False):
                    stamps[prefix + entry.name] = file_stamp(entry)

    walk(str(path), "")
    stamps.pop(METADATA, None)
    return dict(sorted(stamps.items()))


def _write_group_attrs(path: Path, attrs: Mapping[str, Any], root: Path) -> None:
    meta = {"zarr_format": 3, "node_type": "group", "attributes": dict(attrs)}
    write_atomic(path / METADATA, json.dumps(meta, ensure_ascii=False, indent=1), root)


def is_store(path: Path) -> bool:
    """Whether `path` is a zarr store (a folder with its zarr.json): one of ours, which a new store may replace."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode) and stat.S_ISREG(os.lstat(path / METADATA).st_mode)
    except FileNotFoundError:
        return False


def write_store(path: Path, arrays: Mapping[str, torch.Tensor], attrs: Mapping[str, Any],
                root: Path | None = None) -> None:
    """Write `arrays` and `attrs` as a complete zarr v3 group at `path` inside `root` (default: its own folder),
    replacing a store already there (never anything else, see io/files.py).

    float32 and other numpy-representable dtypes are stored as is, bfloat16 as its uint16 bits with the array
    attribute `logical_dtype: "bfloat16"`. Attributes must be JSON (tuples come back as lists).
    """
    import zarr

    _check_attrs(attrs)
    with staged(Path(path), root, directory=True, ours=is_store) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        for name, tensor in arrays.items():
            _write_array(group, name, tensor)
        # Last: the stamps of the finished files (a rename keeps them) and the completion mark.
        meta = {**attrs, "format_version": FORMAT_VERSION, "files": _stamps(tmp), "complete": True}
        _write_group_attrs(tmp, meta, tmp)


def _group_attrs(path: Path) -> dict[str, Any]:
    """Attributes of the group at `path` from its zarr.json alone; raises FileNotFoundError / IncompleteStoreError."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such zarr store; run the stage that writes it")
    try:
        meta = json.loads((path / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise IncompleteStoreError(path) from None
    attrs = meta.get("attributes", {}) if meta.get("node_type") == "group" else {}
    if attrs.get("complete") is not True:
        raise IncompleteStoreError(path)
    return attrs


def store_attrs(path: Path) -> dict[str, Any] | None:
    """Group attributes of a complete store (one small file read), or None if it is absent or incomplete."""
    try:
        return _group_attrs(Path(path))
    except (FileNotFoundError, IncompleteStoreError):
        return None


def _ends_in_its_crc32c(data: bytes) -> bool:
    """Whether `data` ends in the crc32c of what comes before (zarr's crc32c codec: little-endian)."""
    return len(data) >= 4 and google_crc32c.value(data[:-4]).to_bytes(4, "little") == data[-4:]


def _files(path: Path, name: str, array: zarr.Array) -> list[tuple[tuple[int, ...], Path]]:
    """Each file of an array (a chunk, or a shard of chunks) with its index in the grid of files."""
    import numpy as np

    per_file = array.shards or array.chunks
    return [(index, path / name / "c" / "/".join(map(str, index)) if index else path / name / "c")
            for index in np.ndindex(*(math.ceil(s / c) for s, c in zip(array.shape, per_file)))]


def _check_shard_index(path: Path, shard: Path, array: zarr.Array) -> None:
    """A shard's index (at its end: the offset and size of each chunk, then its crc32c) intact and listing every
    chunk; raises CorruptStoreError. zarr itself reads an empty shard, or an entry marked unwritten, as zeros."""
    import numpy as np

    chunks = math.prod(s // c for s, c in zip(array.shards, array.chunks))
    size = 16 * chunks + 4
    try:
        with open(shard, "rb") as file:
            file.seek(-size, os.SEEK_END)  # OSError when the file is shorter than its index
            index = file.read(size)
    except OSError:
        raise CorruptStoreError(path, f"shard {shard.relative_to(path)} is missing or cut short") from None
    if not _ends_in_its_crc32c(index):
        raise CorruptStoreError(path, f"shard {shard.relative_to(path)} fails its checksum")
    if (np.frombuffer(index[:-4], dtype="<u8")[0::2] == UNWRITTEN).any():
        raise CorruptStoreError(path, f"shard {shard.relative_to(path)} lacks a chunk")


def _check_chunks(path: Path) -> None:
    """Every chunk file (or shard) of every array present and matching its crc32c(s); raises CorruptStoreError."""
    import zarr

    group = zarr.open_group(path, mode="r", zarr_format=3)
    for name in group.array_keys():
        array = group[name]
        for index, chunk in _files(path, name, array):
            if array.shards:  # its index and every chunk in it carry a crc32c, which zarr checks as it decodes
                _check_shard_index(path, chunk, array)
                try:
                    array[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, array.shards))]
                except ValueError:
                    raise CorruptStoreError(path, f"shard {chunk.relative_to(path)} fails its checksum") from None
                continue
            try:
                data = chunk.read_bytes()
            except OSError:
                raise CorruptStoreError(path, f"chunk {chunk.relative_to(path)} is missing") from None
            if not _ends_in_its_crc32c(data):
                raise CorruptStoreError(path, f"chunk {chunk.relative_to(path)} fails its checksum")


def verify_store(path: Path, renew_in: Path | None = None) -> dict[str, Any]:
    """The attributes of a complete, intact store; raises FileNotFoundError, IncompleteStoreError or
    CorruptStoreError. Reads the chunks only when a file changed since the stamps were taken; then, with
    `renew_in` (the run's folder, for callers that may write in it), records the new stamps."""
    path = Path(path)
    attrs = _group_attrs(path)
    if attrs.get("format_version") not in READABLE:
        raise CorruptStoreError(path, f"format {attrs.get('format_version')}, this version reads "
                                      f"{' and '.join(map(str, READABLE))}")
    stamps, recorded = _stamps(path), attrs.get("files") or {}
    if stamps.keys() == recorded.keys() and all(unchanged(recorded[name], s) for name, s in stamps.items()):
        return attrs
    if missing := sorted(set(recorded) - set(stamps)):
        raise CorruptStoreError(path, f"{missing[0]} is missing")
    _check_chunks(path)
    attrs = {**attrs, "files": stamps}  # intact, e.g. a copy: renew the stamps so the next check is cheap
    if renew_in is not None:
        try:
            _write_group_attrs(path, attrs, renew_in)
        except (OutputPathError, OSError):  # reached through a link, a read-only copy: the next check reads again
            pass
    return attrs


def read_store(path: Path, names: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Arrays (all, or `names`) as CPU tensors in their logical dtype, and the group attributes; every chunk's
    checksum is checked as it is decoded (a mismatch raises CorruptStoreError).

    The attributes include the internal `complete`, `format_version` and `files` keys.
    """
    import numpy as np
    import torch
    import zarr

    path = Path(path)
    attrs = _group_attrs(path)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    tensors = {}
    for name in sorted(group.array_keys()) if names is None else names:
        if name not in group:
            raise KeyError(f"{path}: no array {name!r}")
        array = group[name]
        for _, shard in _files(path, name, array) if array.shards else ():
            _check_shard_index(path, shard, array)
        try:
            data = np.asarray(array[...])  # np.asarray: 0-d arrays come back as numpy scalars
        except ValueError as err:  # zarr's crc32c codec, or a truncated chunk
            raise CorruptStoreError(path, f"array {name}: {err}") from None
        tensor = torch.from_numpy(data)
        if array.attrs.get("logical_dtype") == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        tensors[name] = tensor
    return tensors, attrs
