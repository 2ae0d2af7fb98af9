"""The Wan2.2-TI2V-5B checkpoint directory without torch: its file names, the networks' configs and the files each
network is read from (the content identity of a run's checkpoints, which `status` and `report` compute too).

    <ckpt_dir>/config.json                                      DiT config (WanModel)
    <ckpt_dir>/diffusion_pytorch_model.safetensors.index.json   DiT weight map over the shards
    <ckpt_dir>/diffusion_pytorch_model-0000k-of-0000n.safetensors
    <ckpt_dir>/Wan2.2_VAE.pth                                   VAE state dict (+ optional vae_config.json)
    <ckpt_dir>/models_t5_umt5-xxl-enc-bf16.pth                  umT5 encoder state dict (+ optional t5_config.json)
    <ckpt_dir>/google/umt5-xxl/                                 tokenizer
"""

from __future__ import annotations

import json
from pathlib import Path

from pixelwizard.checkpoints.errors import CheckpointError, first_line
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig, config_from_json

DIT_CONFIG = "config.json"
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_SINGLE = "diffusion_pytorch_model.safetensors"
VAE_FILE = "Wan2.2_VAE.pth"
VAE_CONFIG = "vae_config.json"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_CONFIG = "t5_config.json"
TOKENIZER_DIR = "google/umt5-xxl"

LAYOUT = (
    "the Wan2.2-TI2V-5B checkpoint layout (as `hf download Wan-AI/Wan2.2-TI2V-5B` writes it: "
    f"{DIT_CONFIG}, {DIT_INDEX} + shards, {VAE_FILE}, {T5_FILE}, {TOKENIZER_DIR}/)"
)
REDOWNLOAD = "download the checkpoint again (hf download Wan-AI/Wan2.2-TI2V-5B --local-dir DIR)"


def require_file(path: Path) -> Path:
    if not path.exists():
        raise CheckpointError(f"{path}: missing; expected {LAYOUT}")
    return path


def _optional_config(cls, path: Path):
    """The `.pth` files carry no config: a json beside them (tiny checkpoints) overrides the real widths."""
    return config_from_json(cls, path) if path.exists() else cls()


def dit_weights_file(ckpt_dir: Path) -> Path:
    """The file that names the DiT's tensors: the index json, or the single safetensors file when there is one."""
    if not (ckpt_dir / DIT_INDEX).exists() and (ckpt_dir / DIT_SINGLE).exists():
        return ckpt_dir / DIT_SINGLE
    return require_file(ckpt_dir / DIT_INDEX)


def dit_weight_map(index: Path) -> dict[str, Path]:
    """key -> shard file, from the index json; every shard must be there."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = {name: index.parent / name for name in set(weight_map.values())}
    except (AttributeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a safetensors index with a 'weight_map' ({first_line(err)}); "
                              f"{REDOWNLOAD}") from None
    files = {name: require_file(path) for name, path in names.items()}
    return {k: files[name] for k, name in weight_map.items()}


def read_dit_config(ckpt_dir: Path) -> DiTConfig:
    return config_from_json(DiTConfig, require_file(Path(ckpt_dir) / DIT_CONFIG))


def t5_config(ckpt_dir: Path) -> T5Config:
    """The umT5 encoder's config: `t5_config.json` beside the weights (tiny checkpoints), else umT5-XXL's."""
    return _optional_config(T5Config, Path(ckpt_dir) / T5_CONFIG)


def vae_config(ckpt_dir: Path) -> VAEConfig:
    """The VAE's config: `vae_config.json` beside the weights (tiny checkpoints), else Wan2.2's."""
    return _optional_config(VAEConfig, Path(ckpt_dir) / VAE_CONFIG)


def dit_files(ckpt_dir: Path) -> list[Path]:
    """Every file the base DiT is read from: config, index (or the single safetensors file), shards."""
    ckpt_dir = Path(ckpt_dir)
    weights_file = dit_weights_file(ckpt_dir)
    shards = sorted(set(dit_weight_map(weights_file).values())) if weights_file.name == DIT_INDEX else []
    return [require_file(ckpt_dir / DIT_CONFIG), weights_file, *shards]


def vae_files(ckpt_dir: Path) -> list[Path]:
    ckpt_dir = Path(ckpt_dir)
    return [require_file(ckpt_dir / VAE_FILE), *_present(ckpt_dir / VAE_CONFIG)]


def text_encoder_files(ckpt_dir: Path) -> list[Path]:
    """The umT5 weights, their optional config and every file of the tokenizer folder."""
    ckpt_dir = Path(ckpt_dir)
    tokenizer = sorted(p for p in require_file(ckpt_dir / TOKENIZER_DIR).rglob("*") if p.is_file())
    return [require_file(ckpt_dir / T5_FILE), *_present(ckpt_dir / T5_CONFIG), *tokenizer]


def _present(path: Path) -> list[Path]:
    return [path] if path.exists() else []
