"""A saved anchor latent as an anchor source: a Wan2.2 VAE latent [C, T, h, w] (or [1, C, T, h, w]) in a `.pt`
(a tensor, a list of them, or a dict with `latent`/`latents`, as the original's LoadTorchLatent reads), a
`.safetensors` (its `latent` tensor, or its only one), an `.npy`, or a zarr store (a PixelWizard `lr/<id>.zarr`,
or a zarr array). Checked for shape, dtype and finiteness; its spatial size is free (the HR model resizes the
anchor to its token grid), its orientation is its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pixelwizard.io.input_file import InputFileError, existing_file

KEYS = ("latent", "latents")
MIN_LATENT_FRAMES = 3  # 9 video frames
FIX = "give a Wan2.2 VAE latent [C, T, h, w] saved with torch.save, safetensors, numpy or zarr"


def _pick(loaded: object, path: Path) -> object:
    """The latent in what a `.pt` or `.safetensors` file holds."""
    if isinstance(loaded, (list, tuple)) and loaded:
        return loaded[0]
    if isinstance(loaded, dict):
        for key in KEYS:
            if key in loaded:
                return _pick(loaded[key], path)
        tensors = [v for v in loaded.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise InputFileError(path, f"holds {len(tensors)} tensors and none named {' or '.join(KEYS)}",
                             "save the anchor under the key 'latent'")
    return loaded


def _read(path: Path) -> object:
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        import zarr

        node = zarr.open(str(path), mode="r")
        array = node if isinstance(node, zarr.Array) else next((node[k] for k in KEYS if k in node), None)
        if array is None:
            raise InputFileError(path, f"is a zarr group without an array named {' or '.join(KEYS)}", FIX)
        data = np.asarray(array[...])
        if array.attrs.get("logical_dtype") == "bfloat16":  # a PixelWizard store keeps bf16 as its bits
            return torch.from_numpy(data).view(torch.bfloat16)
        return data
    existing_file(path, "latent")
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return _pick(load_file(path), path)
    return _pick(torch.load(path, map_location="cpu", weights_only=True), path)


def load_latent(path: Path, *, channels: int, max_frames: int) -> torch.Tensor:
    """The anchor latent [channels, T, h, w] float32 in the file at `path`, its first T latent frames where it has
    more than `max_frames` (4n+1) video frames. Raises InputFileError (one line: the file, the problem, the fix)."""
    path = Path(path)
    if path.suffix.lower() == ".zarr" and not path.is_dir():
        raise InputFileError(path, "no such zarr store", "check the latent path")
    try:
        loaded = _read(path)
    except InputFileError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader's failure is the file's
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputFileError(path, f"cannot be read as a latent ({reason})", FIX) from None
    if isinstance(loaded, np.ndarray):
        if not np.issubdtype(loaded.dtype, np.floating):
            raise InputFileError(path, f"holds {loaded.dtype} values, not floating point", FIX)
        loaded = torch.from_numpy(np.ascontiguousarray(loaded))
    if not isinstance(loaded, torch.Tensor):
        raise InputFileError(path, f"holds a {type(loaded).__name__}, not a tensor", FIX)
    latent = loaded[0] if loaded.ndim == 5 and loaded.shape[0] == 1 else loaded
    if latent.ndim != 4 or latent.shape[0] != channels:
        raise InputFileError(path, f"holds a tensor of shape {list(loaded.shape)}, not a latent [{channels}, T, h, w]",
                             FIX)
    if not latent.is_floating_point():
        raise InputFileError(path, f"holds {latent.dtype} values, not floating point", FIX)
    if latent.shape[1] < MIN_LATENT_FRAMES or min(latent.shape[2:]) < 1:
        raise InputFileError(path, f"holds {latent.shape[1]} latent frames, fewer than the {MIN_LATENT_FRAMES} (9 "
                             "video frames) a clip needs", "give a longer latent")
    latent = latent[:, : (max_frames - 1) // 4 + 1].float()
    if not torch.isfinite(latent).all():
        raise InputFileError(path, "holds NaN or infinite values", "give a latent without them (re-encode the video)")
    return latent.contiguous()
