"""Per-prompt zarr v3 stores that are published atomically and never read half-written.

A store is written into a hidden sibling `.<name>.tmp-<pid>-<hex>`, its group attributes (with `complete: true`) are
written after every array, and only then is it renamed to its final path. Readers refuse any store without `complete`,
because zarr silently reads unwritten chunks as the fill value.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

FORMAT_VERSION = 1
RESERVED_ATTRS = ("complete", "format_version")
_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")


class IncompleteStoreError(RuntimeError):
    def __init__(self, path: Path):
        super().__init__(f"{path}: zarr store is incomplete (its writer crashed or is still running); "
                         "re-run the stage that writes it")


def _temp_sibling(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


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
    tensor = tensor.detach().cpu().contiguous()  # no copy when already a contiguous CPU tensor
    attributes = {}
    if tensor.dtype == torch.bfloat16:  # zarr has no bfloat16: keep the exact bits
        tensor, attributes = tensor.view(torch.uint16), {"logical_dtype": "bfloat16"}
    data = tensor.numpy()
    # [C, T, H, W] latents: one latent frame per chunk, so a reader can fetch frames lazily; anything else: one chunk
    chunks = (data.shape[0], 1, *data.shape[2:]) if data.ndim == 4 else data.shape
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=tuple(max(c, 1) for c in chunks),
                               compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0, attributes=attributes)
    array[...] = data


def _publish(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
        return
    # rename(2) cannot replace a non-empty directory: swap the old store aside, move the new one in, then delete the
    # old. Between the two renames (microseconds) nothing is at `path`; a crash there leaves the old store in a temp
    # sibling that remove_stale_temps() collects.
    old = _temp_sibling(path)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old)


def write_store(path: Path, arrays: Mapping[str, torch.Tensor], attrs: Mapping[str, Any]) -> None:
    """Write `arrays` and `attrs` as a complete zarr v3 group at `path`, replacing any store already there.

    float32 and other numpy-representable dtypes are stored as is, bfloat16 as its uint16 bits with the array
    attribute `logical_dtype: "bfloat16"`. Attributes must be JSON (tuples come back as lists).
    """
    path = Path(path)
    _check_attrs(attrs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    tmp.mkdir()
    try:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        for name, tensor in arrays.items():
            _write_array(group, name, tensor)
        group.attrs.update({**attrs, "format_version": FORMAT_VERSION, "complete": True})  # last: marks completion
        _publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _group_attrs(path: Path) -> dict[str, Any]:
    """Attributes of the group at `path` from its zarr.json alone; raises FileNotFoundError / IncompleteStoreError."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such zarr store; run the stage that writes it")
    try:
        meta = json.loads((path / "zarr.json").read_text())
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


def read_store(path: Path, names: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Arrays (all, or `names`) as CPU tensors in their logical dtype, and the group attributes.

    The attributes include the internal `complete` and `format_version` keys; callers check `format_version`.
    """
    path = Path(path)
    attrs = _group_attrs(path)
    group = zarr.open_group(path, mode="r", zarr_format=3)
    tensors = {}
    for name in sorted(group.array_keys()) if names is None else names:
        if name not in group:
            raise KeyError(f"{path}: no array {name!r}")
        array = group[name]
        tensor = torch.from_numpy(np.asarray(array[...]))  # np.asarray: 0-d arrays come back as numpy scalars
        if array.attrs.get("logical_dtype") == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        tensors[name] = tensor
    return tensors, attrs


def provenance_digest(provenance: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `provenance` (sorted keys, no whitespace); 1 and 1.0 differ."""
    canonical = json.dumps(provenance, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, owned by another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temps(parent: Path, min_age_s: float = 3600.0) -> int:
    """Delete temp siblings left by crashed writers in `parent`; returns how many were removed.

    A temp is removed only if its writer pid is not alive on this host AND it was last modified at least `min_age_s`
    ago. The age guard is what makes this safe on a shared filesystem, where a pid says nothing about writers on other
    nodes; pass 0 only when every writer runs on this host.
    """
    parent, cutoff = Path(parent), time.time() - min_age_s
    stale = [entry for entry in (parent.iterdir() if parent.is_dir() else ())
             if (match := _TEMP_RE.match(entry.name)) and entry.is_dir() and not _pid_alive(int(match.group(1)))
             and entry.stat().st_mtime <= cutoff]
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
    return len(stale)
