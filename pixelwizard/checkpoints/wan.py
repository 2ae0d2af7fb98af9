"""Load the three Wan2.2-TI2V-5B networks from a checkpoint directory laid out as
`huggingface-cli download Wan-AI/Wan2.2-TI2V-5B` leaves it, and write that layout back (tiny checkpoints).

    <ckpt_dir>/config.json                                      DiT config (WanModel)
    <ckpt_dir>/diffusion_pytorch_model.safetensors.index.json   DiT weight map over the shards
    <ckpt_dir>/diffusion_pytorch_model-0000k-of-0000n.safetensors
    <ckpt_dir>/Wan2.2_VAE.pth                                   VAE state dict (+ optional vae_config.json)
    <ckpt_dir>/models_t5_umt5-xxl-enc-bf16.pth                  umT5 encoder state dict (+ optional t5_config.json)
    <ckpt_dir>/google/umt5-xxl/                                 tokenizer
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pixelwizard.checkpoints.strict import CheckpointError, assign_state_dict, read_torch_file
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig, config_from_json, config_to_json
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.vae import WanVAE

if TYPE_CHECKING:  # transformers takes ~2 s to import: only the text stage pays for it
    from pixelwizard.models.text_encoder import TextEncoder

DIT_CONFIG = "config.json"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SINGLE = "diffusion_pytorch_model.safetensors"
VAE_FILE = "Wan2.2_VAE.pth"
VAE_CONFIG = "vae_config.json"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_CONFIG = "t5_config.json"
TOKENIZER_DIR = "google/umt5-xxl"

LAYOUT = (
    "the Wan2.2-TI2V-5B checkpoint layout (as `huggingface-cli download Wan-AI/Wan2.2-TI2V-5B` writes it: "
    f"{DIT_CONFIG}, {DIT_INDEX} + shards, {VAE_FILE}, {T5_FILE}, {TOKENIZER_DIR}/)"
)


def _require_file(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path}: missing; expected {LAYOUT}")
    return path


def _optional_config(cls, path: Path):
    """The `.pth` files carry no config: a json beside them (tiny checkpoints) overrides the real widths."""
    return config_from_json(cls, path) if path.exists() else cls()


def _dit_shards(ckpt_dir: Path) -> dict[str, Path]:
    """key -> shard file, from the index json (sharded layout) or a single safetensors file."""
    index = ckpt_dir / DIT_INDEX
    if not index.exists() and (ckpt_dir / DIT_SINGLE).exists():
        with safe_open(ckpt_dir / DIT_SINGLE, framework="pt") as f:
            return {k: ckpt_dir / DIT_SINGLE for k in f.keys()}
    try:
        weight_map = json.loads(_require_file(index).read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({err})") from None
    files = {name: _require_file(ckpt_dir / name) for name in set(weight_map.values())}
    return {k: files[name] for k, name in weight_map.items()}


def dit_dtypes(model: WanDiT, dtype: torch.dtype):
    """Per-key target dtype: `dtype` for the big layers, float32 for the model's float32 islands."""
    return lambda key: torch.float32 if model.keeps_float32(key) else dtype


def load_dit(ckpt_dir: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> WanDiT:
    """The DiT, built on meta and filled shard by shard (memory-mapped), each tensor cast straight to its
    inference dtype (`dtype`, or float32 for the time path, modulations, norms and head)."""
    ckpt_dir = Path(ckpt_dir)
    config = config_from_json(DiTConfig, _require_file(ckpt_dir / DIT_CONFIG))
    key_to_file = _dit_shards(ckpt_dir)
    with torch.device("meta"):
        model = WanDiT(config)
    with ExitStack() as stack:
        handles = {p: stack.enter_context(safe_open(p, framework="pt")) for p in set(key_to_file.values())}
        shapes = {}
        for key, path in key_to_file.items():
            if key not in handles[path].keys():
                raise CheckpointError(f"{path}: the index {DIT_INDEX} maps {key} to this shard, which lacks it")
            shapes[key] = torch.Size(handles[path].get_slice(key).get_shape())
        assign_state_dict(
            model, lambda key: handles[key_to_file[key]].get_tensor(key), shapes=shapes,
            source=ckpt_dir / DIT_INDEX, layout=f"the WanModel DiT of {DIT_CONFIG}", dtype=dit_dtypes(model, dtype),
            device=device,
        )
    return model.eval().requires_grad_(False)


def save_dit(model: WanDiT, ckpt_dir: Path, *, num_shards: int = 3) -> None:
    """Write `config.json`, the index and `num_shards` safetensors shards in the published naming."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    keys = list(state)
    per_shard = -(-len(keys) // num_shards)
    weight_map = {}
    for i in range(num_shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        chunk = keys[i * per_shard:(i + 1) * per_shard]
        save_file({k: state[k] for k in chunk}, ckpt_dir / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (ckpt_dir / DIT_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config_to_json(model.config, ckpt_dir / DIT_CONFIG, _class_name="WanModel")


def vae_config(ckpt_dir: Path) -> VAEConfig:
    """The VAE's config: `vae_config.json` beside the weights (tiny checkpoints), else Wan2.2's."""
    return _optional_config(VAEConfig, Path(ckpt_dir) / VAE_CONFIG)


def load_vae(ckpt_dir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    ckpt_dir = Path(ckpt_dir)
    path = _require_file(ckpt_dir / VAE_FILE)
    config = vae_config(ckpt_dir)
    with torch.device("meta"):
        model = WanVAE(config)
    assign_state_dict(model, read_torch_file(path), source=path, layout=f"the Wan2.2 VAE ({config})",
                      dtype=dtype, device=device)
    return model.eval().requires_grad_(False)


def save_vae(model: WanVAE, ckpt_dir: Path) -> None:
    torch.save(model.state_dict(), Path(ckpt_dir) / VAE_FILE)
    if model.config != VAEConfig():
        config_to_json(model.config, Path(ckpt_dir) / VAE_CONFIG)


def load_text_encoder(
    ckpt_dir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16
) -> TextEncoder:
    from pixelwizard.models.text_encoder import TextEncoder

    ckpt_dir = Path(ckpt_dir)
    config = _optional_config(T5Config, ckpt_dir / T5_CONFIG)
    return TextEncoder.load(_require_file(ckpt_dir / T5_FILE), _require_file(ckpt_dir / TOKENIZER_DIR), config,
                            device=device, dtype=dtype)


def dit_files(ckpt_dir: Path) -> list[Path]:
    """Every file the base DiT is read from (config, index, shards): what its provenance fingerprints."""
    ckpt_dir = Path(ckpt_dir)
    return [ckpt_dir / DIT_CONFIG, *sorted(set(_dit_shards(ckpt_dir).values()))]


def check_checkpoint_dir(ckpt_dir: Path) -> None:
    """Fail fast, before any long run, if a file of the layout is missing (contents are checked at load)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: not a directory; expected {LAYOUT}")
    for name in (DIT_CONFIG, VAE_FILE, T5_FILE, TOKENIZER_DIR):
        _require_file(ckpt_dir / name)
    _dit_shards(ckpt_dir)
