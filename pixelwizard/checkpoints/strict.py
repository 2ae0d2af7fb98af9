"""Strict, lean loading of state dicts: every key and shape checked, one copy of the weights in host memory.

Modules are built on the meta device and receive the checkpoint's tensors with `assign=True`, each converted to
the target dtype/device as it is assigned, so a 10 GB model is never held twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

MAX_LISTED_KEYS = 5


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or does not match the model it is loaded into."""


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A `.pth`/`.pt` file as saved by `torch.save`, memory-mapped, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint ({err})") from None


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > MAX_LISTED_KEYS else "")


def check_state_dict(
    expected: Mapping[str, torch.Size],
    found: Mapping[str, torch.Size],
    *,
    source: Path | str,
    layout: str,
) -> None:
    """Raise one `CheckpointError` naming the file, the first offending keys and the expected layout."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    wrong_shape = [
        f"{k} {tuple(found[k])} (expected {tuple(expected[k])})"
        for k in sorted(expected.keys() & found.keys())
        if tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong_shape:
        problems.append(f"wrong shapes: {_listed(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source}: does not match {layout}; " + "; ".join(problems))


def expected_shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def assign_state_dict(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor] | Callable[[str], torch.Tensor],
    *,
    shapes: Mapping[str, torch.Size] | None = None,
    source: Path | str,
    layout: str,
    dtype: torch.dtype | Callable[[str], torch.dtype] | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Fill `module` (usually built on `meta`) with the checkpoint's tensors, strictly.

    `tensors` is a mapping, or a getter called once per key (lazy sources such as safetensors shards); then
    `shapes` lists the source's keys and shapes for the check. Floating tensors are cast to `dtype` when given
    (a dtype, or a function of the key for mixed-precision modules), one tensor at a time; integer/bool tensors
    keep theirs.
    """
    if shapes is None:
        assert isinstance(tensors, Mapping)
        shapes = {k: v.shape for k, v in tensors.items()}
    check_state_dict(expected_shapes(module), shapes, source=source, layout=layout)
    get = tensors.__getitem__ if isinstance(tensors, Mapping) else tensors
    dtype_of = dtype if callable(dtype) else lambda _key: dtype
    converted = {}
    for key in shapes:
        t = get(key)
        target = dtype_of(key) if t.is_floating_point() else None
        converted[key] = t.to(device=device, dtype=target or t.dtype)
    module.load_state_dict(converted, strict=True, assign=True)
    return module
