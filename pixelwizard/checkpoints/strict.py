"""Strict, lean reading of checkpoint files and loading of state dicts: every file, key and shape checked, one
copy of the weights in host memory.

The readers here touch headers and zip directories only: a safetensors header is parsed and checked against the
file's size, a torch `.pt` is memory-mapped, so a 20 GB file is checked in milliseconds and its tensor bytes are
read only when a tensor is used. Modules are built on the meta device, in the dtypes they should end up in, and
receive the checkpoint's tensors with `assign=True`, each converted to its parameter's dtype as it is assigned,
so a 10 GB model is never held twice.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from pixelwizard.checkpoints.errors import CheckpointError, first_line

MAX_LISTED_KEYS = 5
# safetensors dtype codes -> bytes per element (the format's full list, so any valid header parses)
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_SAFETENSORS_HEADER = 100 << 20  # the format's own limit
RECOPY = "copy or download it again"


def _require_readable(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the checkpoint file inside it")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; check the path")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be opened ({err.strerror}); check its permissions") from None


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A `.pth`/`.pt` file as saved by `torch.save`, memory-mapped, never unpickling arbitrary objects.

    Only the zip directory and the small pickle are read: the tensors are views of the mapped file.
    """
    path = Path(path)
    _require_readable(path)
    try:
        zipfile.ZipFile(path).close()  # the central directory sits at the end: a cut copy has none
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a complete torch zip archive (truncated, damaged, or not a torch "
                              f"checkpoint); {RECOPY}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({first_line(err)}); "
                              f"{RECOPY}") from None


def read_safetensors_header(path: Path) -> dict[str, torch.Size]:
    """key -> shape of a `.safetensors` file, from its header alone, after checking that the header's data
    offsets tile the rest of the file exactly (a truncated or padded copy is named as such)."""
    path = Path(path)
    _require_readable(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else size
        if header_len > min(MAX_SAFETENSORS_HEADER, size - 8):
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({size} bytes, no complete "
                                  f"header); {RECOPY}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: damaged safetensors header ({first_line(err)}); {RECOPY}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: damaged safetensors header (not a json object); {RECOPY}")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - header_len
    shapes, spans = {}, []
    for key, info in header.items():
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            shape = torch.Size(info["shape"])
            itemsize = SAFETENSORS_ITEMSIZE[info["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: damaged safetensors header (entry {key!r}: {info!r}); {RECOPY}") from None
        if end - begin != math.prod(shape) * itemsize:
            raise CheckpointError(f"{path}: damaged safetensors header ({key} {tuple(shape)} {info['dtype']} "
                                  f"does not fill its {end - begin} bytes); {RECOPY}")
        shapes[key] = shape
        spans.append((begin, end))
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise CheckpointError(f"{path}: damaged safetensors header (tensor data overlaps or leaves gaps at "
                                  f"byte {covered}); {RECOPY}")
        covered = end
    if covered != data_bytes:
        state = "truncated" if covered > data_bytes else "longer than its header says"
        raise CheckpointError(f"{path}: {state}: the header lists {covered:,} bytes of tensor data, the file "
                              f"holds {data_bytes:,}; {RECOPY}")
    return shapes


def listed_keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > MAX_LISTED_KEYS else "")


def state_dict_problems(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Size]) -> list[str]:
    """What differs between two key -> shape maps: missing keys, unexpected keys, wrong shapes (first few each)."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    wrong_shape = [
        f"{k} {tuple(found[k])} (expected {tuple(expected[k])})"
        for k in sorted(expected.keys() & found.keys())
        if tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {listed_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listed_keys(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {listed_keys(wrong_shape)}")
    return problems


def check_state_dict(
    expected: Mapping[str, torch.Size],
    found: Mapping[str, torch.Size],
    *,
    source: Path | str,
    layout: str,
    fix: str,
) -> None:
    """Raise one `CheckpointError` naming the file, the first offending keys, the expected layout and the fix."""
    problems = state_dict_problems(expected, found)
    if problems:
        raise CheckpointError(f"{source}: does not match {layout}; {'; '.join(problems)}; {fix}")


def expected_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def assign_state_dict(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor],
    *,
    shapes: Mapping[str, torch.Size] | None = None,
    source: Path | str,
    layout: str,
    fix: str,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Fill `module` (usually built on `meta`, in its target dtypes) with the checkpoint's tensors, strictly.

    `tensors` is a mapping, or a getter called once per key (lazy sources such as safetensors shards); then
    `shapes` lists the source's keys and shapes for the check. Each floating tensor is cast to the dtype of the
    module entry it replaces, one tensor at a time; integer/bool tensors keep theirs.
    """
    if shapes is None:
        assert isinstance(tensors, Mapping)
        shapes = {k: v.shape for k, v in tensors.items()}
    targets = module.state_dict()
    check_state_dict(expected_shapes(module), shapes, source=source, layout=layout, fix=fix)
    get = tensors.__getitem__ if isinstance(tensors, Mapping) else tensors
    converted = {}
    for key in shapes:
        t = get(key)
        dtype = targets[key].dtype if t.is_floating_point() and targets[key].is_floating_point() else t.dtype
        converted[key] = t.to(device=device, dtype=dtype)
    module.load_state_dict(converted, strict=True, assign=True)
    return module
