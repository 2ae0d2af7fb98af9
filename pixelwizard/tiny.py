"""Tiny random-weight checkpoints in the exact Wan2.2-TI2V-5B layout, for tests, CI and the demo.

The architectures are the real ones with small numbers in the same config schema; the files go through the
same strict loaders as the real weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from pixelwizard import text_encoder, weights
from pixelwizard.config import DiTConfig, T5Config, VAEConfig, config_to_json
from pixelwizard.dit import WanDiT
from pixelwizard.hr_model import HRDiT
from pixelwizard.trainer_checkpoint import save_trainer_checkpoint
from pixelwizard.vae import WanVAE

TINY_T5 = T5Config(vocab_size=384, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2)
TINY_DIT = DiTConfig(dim=64, ffn_dim=128, freq_dim=32, num_heads=4, num_layers=2, text_dim=TINY_T5.dim)
TINY_VAE = VAEConfig(dim=8, dec_dim=16)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Seeded weights with unit-scale activations: fan-in scaled matrices, unit norm gains, small biases.

    PyTorch's and the original's initialisers zero some layers (the DiT head), which would make a demo
    produce flat grey; every tensor here is random and the result depends on `seed` only.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        elif name.endswith("bias"):
            p.copy_(0.02 * torch.randn(p.shape, generator=gen))
        else:  # norm gains, modulation tables
            p.copy_(1.0 + 0.02 * torch.randn(p.shape, generator=gen))
    return module


def write_tiny_checkpoint(
    ckpt_dir: Path,
    *,
    seed: int = 0,
    dit: DiTConfig = TINY_DIT,
    vae: VAEConfig = TINY_VAE,
    t5: T5Config = TINY_T5,
) -> Path:
    """Write `<ckpt_dir>` as a complete Wan2.2-TI2V-5B directory with tiny random models."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    weights.save_dit(randomize_(WanDiT(dit), seed), ckpt_dir)
    weights.save_vae(randomize_(WanVAE(vae), seed + 1), ckpt_dir)
    encoder = text_encoder.random_umt5(t5, seed + 2, torch.bfloat16)
    text_encoder.save_wan_t5(encoder, ckpt_dir / weights.T5_FILE)
    config_to_json(t5, ckpt_dir / weights.T5_CONFIG)
    text_encoder.write_tiny_tokenizer(ckpt_dir / weights.TOKENIZER_DIR, t5.vocab_size)
    return ckpt_dir


def write_tiny_weights(directory: Path, *, seed: int = 0) -> dict[str, Path]:
    """The full set a run needs, laid out like the real downloads:

        DIR/Wan2.2-TI2V-5B/             the Wan2.2 checkpoint directory (tiny)
        DIR/PixelWizard/lr/model.pt     a "fine-tuned" LR DiT in the trainer layout
        DIR/PixelWizard/tiny/model.pt   the HR shortcut model (DiT + dt embedding + spatial adapter)
    """
    directory = Path(directory)
    paths = {
        "ckpt_dir": directory / "Wan2.2-TI2V-5B",
        "lr_ckpt": directory / "PixelWizard" / "lr" / "model.pt",
        "hr_ckpt": directory / "PixelWizard" / "tiny" / "model.pt",
    }
    write_tiny_checkpoint(paths["ckpt_dir"], seed=seed)
    save_trainer_checkpoint(randomize_(WanDiT(TINY_DIT), seed + 3), paths["lr_ckpt"])
    save_trainer_checkpoint(randomize_(HRDiT(TINY_DIT), seed + 4), paths["hr_ckpt"])
    return paths
