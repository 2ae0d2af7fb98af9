"""PixelWizard's trainer checkpoints (`lr/model.pt`, `2k/model.pt`, `4k/model.pt`), loaded strictly.

Layout as the original trainer saves it: `{"generator": state_dict}` (and an unused `"generator_ema"`); keys may
carry FSDP/activation-checkpoint/compile wrapper substrings and a `model.` prefix on every key. Unlike the
original (strict=False for the LR model and the adapter, with only a warning), a missing DiT, dt or adapter key
is an error here, and a file holding the other role's network is named as such. The published files carry no
resolution: only the folder they were published in (`2k/`, `4k/`) says which size they were trained for (files
written here may record it: `resolution`, see pipeline/checks.py).

Both loaders take `device="meta"`: they then check the file, its keys and shapes from the zip directory only
(the up-front check) and return a model without weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelwizard.checkpoints.strict import (
    CheckpointError,
    assign_state_dict,
    check_state_dict,
    expected_shapes,
    read_torch_file,
    state_dict_problems,
)
from pixelwizard.models.config import DiTConfig
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

WRAPPER_SUBSTRINGS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
HR_ONLY_PREFIXES = ("dt_embedding.", "spatial_adapter.")
LR_LAYOUT = "the Wan2.2-TI2V-5B DiT (a PixelWizard lr/model.pt)"
HR_LAYOUT = "the PixelWizard HR model (Wan DiT + dt_embedding + spatial_adapter)"
TRAINER_FIX = "use PixelWizard's checkpoint for Wan2.2-TI2V-5B (huggingface.co/wxli318/PixelWizard)"


def generator_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The generator weights of a trainer checkpoint with wrapper substrings and the shared prefix removed."""
    raw = read_torch_file(path)
    if "generator" in raw:
        state = raw["generator"]
    elif all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = raw  # a bare state dict
    else:
        raise CheckpointError(
            f"{path}: no 'generator' entry (found {', '.join(sorted(map(str, raw))) or 'nothing'}); expected a "
            "PixelWizard trainer checkpoint {'generator': state_dict}: give the model.pt PixelWizard's trainer saved"
        )
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: 'generator' is not a non-empty state dict; {TRAINER_FIX}")
    cleaned = {}
    for key, tensor in state.items():
        for wrapper in WRAPPER_SUBSTRINGS:
            key = key.replace(wrapper, "")
        cleaned[key] = tensor
    if all(k.startswith("model.") for k in cleaned):
        cleaned = {k.removeprefix("model."): v for k, v in cleaned.items()}
    return cleaned


def check_role(path: Path, state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], role: str) -> None:
    """Check `state` strictly against the `role` ("lr" or "hr") model's keys and shapes; a file holding the other
    role's network is named as such, since its missing or extra keys alone would not say so."""
    found = {k: v.shape for k, v in state.items()}
    holds_hr = any(k.startswith(HR_ONLY_PREFIXES) for k in found)
    problems = "; ".join(state_dict_problems(expected, found))
    if role == "hr" and problems and not holds_hr:
        raise CheckpointError(f"{path}: a base Wan2.2 DiT, not a PixelWizard HR checkpoint (no dt_embedding/"
                              f"spatial_adapter; {problems}); give --hr-ckpt PixelWizard's 2k/model.pt or 4k/model.pt")
    if role == "lr" and problems and holds_hr:
        raise CheckpointError(f"{path}: a PixelWizard HR checkpoint, not an LR DiT (it has dt_embedding/"
                              f"spatial_adapter; {problems}); give --lr-ckpt PixelWizard's lr/model.pt, or leave "
                              "it out to use the base DiT")
    check_state_dict(expected, found, source=path, layout=LR_LAYOUT if role == "lr" else HR_LAYOUT, fix=TRAINER_FIX)


def _read_checked(path: Path, expected: Mapping[str, torch.Size], role: str) -> dict[str, torch.Tensor]:
    state = generator_state_dict(path)
    check_role(path, state, expected, role)
    return state


def load_lr_model(path: Path, config: DiTConfig, *, dtype=torch.float32, device="cpu") -> WanDiT:
    """A fine-tuned LR DiT (`lr/model.pt`): the base WanModel keys, nothing more, nothing less."""
    with torch.device("meta"):
        model = WanDiT(config).cast_for_inference(dtype)
    state = _read_checked(path, expected_shapes(model), "lr")
    assign_state_dict(model, state, source=path, layout=LR_LAYOUT, fix=TRAINER_FIX, device=device)
    return model.eval().requires_grad_(False)


def load_hr_model(
    path: Path, config: DiTConfig, *, dtype=torch.float32, device="cpu", mesh: DeviceMesh | None = None
) -> HRDiT:
    """The HR shortcut model: base DiT + `dt_embedding.*` + `spatial_adapter.*`, all required.

    With a device `mesh` (every rank calls this) the DiT is FSDP2-sharded over it and only rank 0 reads the
    file; the spatial adapter, small and used outside forward, stays whole on every rank.
    """
    with torch.device("meta"):
        model = HRDiT(config).cast_for_inference(dtype)
    expected = expected_shapes(model)
    if mesh is None:
        assign_state_dict(model, _read_checked(path, expected, "hr"), source=path, layout=HR_LAYOUT,
                          fix=TRAINER_FIX, device=device)
    else:
        from pixelwizard.distributed import load_sharded  # FSDP's imports: only multi-process runs pay for them

        load_sharded(model, lambda: _read_checked(path, expected, "hr"), source=path, layout=HR_LAYOUT,
                     fix=TRAINER_FIX, device=torch.device(device), mesh=mesh, replicated=(model.spatial_adapter,))
    return model.eval().requires_grad_(False)


def save_trainer_checkpoint(model: torch.nn.Module, path: Path, *, prefix: str = "model.",
                            resolution: tuple[int, int] | None = None) -> None:
    """Write `model` as the original trainer does: `{"generator": {prefix + key: tensor}}`, with the size it was
    trained for (`resolution`: [width, height]; the original records none) where one is given."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    content = {"generator": {prefix + k: v.detach().contiguous() for k, v in model.state_dict().items()}}
    if resolution is not None:
        content["resolution"] = list(resolution)
    torch.save(content, path)
