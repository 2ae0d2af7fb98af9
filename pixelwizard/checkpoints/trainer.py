"""PixelWizard's trainer checkpoints (`lr/model.pt`, `2k/model.pt`, `4k/model.pt`), loaded strictly.

Layout as the original trainer saves it: `{"generator": state_dict}` and optionally `"generator_ema"`; keys may
carry FSDP/activation-checkpoint/compile wrapper substrings and a `model.` prefix on every key. Unlike the
original (strict=False for the LR model and the adapter, with only a warning), a missing DiT, dt or adapter key
is an error here. The files carry no resolution, so each load records a fingerprint for provenance.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pixelwizard.checkpoints.strict import CheckpointError, assign_state_dict, read_torch_file
from pixelwizard.checkpoints.wan import dit_dtypes
from pixelwizard.models.config import DiTConfig
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

WRAPPER_SUBSTRINGS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
FINGERPRINT_BYTES = 1 << 20  # hash the first and last MiB: cheap on a 20 GB file, catches a changed file


def generator_state_dict(path: Path, *, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The generator weights of a trainer checkpoint with wrapper substrings and the shared prefix removed."""
    raw = read_torch_file(path)
    wanted = "generator_ema" if use_ema else "generator"
    if wanted in raw:
        state = raw[wanted]
    elif all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = raw  # a bare state dict
    else:
        raise CheckpointError(
            f"{path}: no '{wanted}' entry (found {', '.join(sorted(map(str, raw))) or 'nothing'}); expected a "
            "PixelWizard trainer checkpoint {'generator': state_dict}"
        )
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: '{wanted}' is not a non-empty state dict")
    cleaned = {}
    for key, tensor in state.items():
        for wrapper in WRAPPER_SUBSTRINGS:
            key = key.replace(wrapper, "")
        cleaned[key] = tensor
    if all(k.startswith("model.") for k in cleaned):
        cleaned = {k.removeprefix("model."): v for k, v in cleaned.items()}
    return cleaned


def load_lr_model(path: Path, config: DiTConfig, *, dtype=torch.float32, device="cpu", use_ema=False) -> WanDiT:
    """A fine-tuned LR DiT (`lr/model.pt`): the base WanModel keys, nothing more, nothing less."""
    with torch.device("meta"):
        model = WanDiT(config)
    assign_state_dict(model, generator_state_dict(path, use_ema=use_ema), source=path,
                      layout="the Wan2.2-TI2V-5B DiT (a PixelWizard lr/model.pt)", dtype=dit_dtypes(model, dtype),
                      device=device)
    return model.eval().requires_grad_(False)


def load_hr_model(
    path: Path, config: DiTConfig, *, dtype=torch.float32, device="cpu", use_ema=False, mesh: DeviceMesh | None = None
) -> HRDiT:
    """The HR shortcut model: base DiT + `dt_embedding.*` + `spatial_adapter.*`, all required.

    With a device `mesh` (every rank calls this) the DiT is FSDP2-sharded over it and only rank 0 reads the
    file; the spatial adapter, small and used outside forward, stays whole on every rank.
    """
    with torch.device("meta"):
        model = HRDiT(config)
    layout = "the PixelWizard HR model (Wan DiT + dt_embedding + spatial_adapter)"
    if mesh is None:
        assign_state_dict(model, generator_state_dict(path, use_ema=use_ema), source=path, layout=layout,
                          dtype=dit_dtypes(model, dtype), device=device)
    else:
        from pixelwizard.distributed import load_sharded  # FSDP's imports: only multi-process runs pay for them

        load_sharded(model, lambda: generator_state_dict(path, use_ema=use_ema), source=path, layout=layout,
                     dtype=dit_dtypes(model, dtype), device=torch.device(device), mesh=mesh,
                     replicated=(model.spatial_adapter,))
    return model.eval().requires_grad_(False)


def fingerprint(path: Path) -> dict[str, object]:
    """Identity of a checkpoint file for provenance: path, size, mtime and a hash of its ends."""
    path = Path(path).resolve()
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
            digest.update(f.read())
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_ends": digest.hexdigest()}


def warn_if_resolution_mismatch(path: Path, preset_name: str) -> None:
    """The files carry no resolution: a checkpoint kept under `2k/` or `4k/` hints at the one it was trained for."""
    folder = Path(path).parent.name.lower()
    if folder in ("2k", "4k") and folder != preset_name:
        warnings.warn(f"{path}: sits in a '{folder}' folder but the preset is '{preset_name}'; "
                      "check that --hr-ckpt matches the resolution", stacklevel=2)


def save_trainer_checkpoint(model: torch.nn.Module, path: Path, *, prefix: str = "model.") -> None:
    """Write `model` as the original trainer does: `{"generator": {prefix + key: tensor}}`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": {prefix + k: v.detach().contiguous() for k, v in model.state_dict().items()}}, path)
