"""Tiny random-weight checkpoints in the exact Wan2.2-TI2V-5B layout, for tests, CI and the demo.

The architectures are the real ones with small numbers in the same config schema; the files go through the
same strict loaders as the real weights.
"""

from __future__ import annotations

import json
import math
import string
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn

from pixelwizard.checkpoints import wan as weights
from pixelwizard.checkpoints import wan_files
from pixelwizard.checkpoints.trainer import save_trainer_checkpoint
from pixelwizard.io.files import publish_tree
from pixelwizard.models import text_encoder
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig, config_to_json
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.models.vae import WanVAE
from pixelwizard.pipeline.presets import PRESETS

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
    text_encoder.save_wan_t5(encoder, ckpt_dir / wan_files.T5_FILE)
    config_to_json(t5, ckpt_dir / wan_files.T5_CONFIG)
    write_tiny_tokenizer(ckpt_dir / wan_files.TOKENIZER_DIR, t5.vocab_size)
    return ckpt_dir


def write_tiny_weights(directory: Path, *, seed: int = 0, root: Path | None = None) -> dict[str, Path]:
    """The full set a run needs, laid out like the real downloads:

        DIR/Wan2.2-TI2V-5B/             the Wan2.2 checkpoint directory (tiny)
        DIR/PixelWizard/lr/model.pt     a "fine-tuned" LR DiT in the trainer layout
        DIR/PixelWizard/tiny/model.pt   the HR shortcut model (DiT + dt embedding + spatial adapter)

    Written like every output (io/files.py), inside `root` (default: DIR itself): built in a temporary folder there,
    then moved in file by file once every destination is checked.
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "ckpt_dir": directory / "Wan2.2-TI2V-5B",
        "lr_ckpt": directory / "PixelWizard" / "lr" / "model.pt",
        "hr_ckpt": directory / "PixelWizard" / "tiny" / "model.pt",
    }
    tiny = PRESETS["tiny"]  # the size the tiny HR model is "trained" for: `generate --preset 2k` refuses it up front
    with tempfile.TemporaryDirectory(prefix=".tiny-weights.tmp-", dir=root) as build:
        staged = {name: Path(build) / path.relative_to(root) for name, path in paths.items()}
        write_tiny_checkpoint(staged["ckpt_dir"], seed=seed)
        save_trainer_checkpoint(randomize_(WanDiT(TINY_DIT), seed + 3), staged["lr_ckpt"])
        save_trainer_checkpoint(randomize_(HRDiT(TINY_DIT), seed + 4), staged["hr_ckpt"],
                                resolution=(tiny.width, tiny.height))
        publish_tree(Path(build), root)
    return paths


def write_hollow_dit(ckpt_dir: Path, config: DiTConfig, *, num_shards: int = 3) -> None:
    """The DiT of `config` in the published sharded layout with real headers but holes for the tensor data:
    the shards have their full size (20 GB for the real config) yet take no disk, for tests and benchmarks of
    what must never read tensor data. Loading tensors from them gives zeros."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(config).state_dict().items()}
    shards = weights.dit_shard_keys(list(shapes), num_shards)
    total = 0
    for name, keys in shards.items():
        header, offset = {}, 0
        for key in keys:
            size = shapes[key].numel() * 4
            header[key] = {"dtype": "F32", "shape": list(shapes[key]), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header).encode()
        with open(ckpt_dir / name, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            f.truncate(8 + len(raw) + offset)  # a hole: no blocks are written
        total += offset
    weights.write_dit_index(ckpt_dir, config, shards, total)


# Tiny tokenizer: same file format and special ids as google/umt5-xxl, a small vocabulary built in code.
_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2
_WORDS = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "is", "to", "by", "under", "over", "through",
    "cat", "dog", "bird", "fish", "horse", "man", "woman", "child", "city", "street", "forest", "river", "sea",
    "sky", "sun", "moon", "night", "day", "rain", "snow", "light", "water", "fire", "tree", "flower", "mountain",
    "car", "boat", "red", "blue", "green", "white", "black", "golden", "small", "large", "slow", "fast",
    "running", "walking", "flying", "swimming", "camera", "shot", "close", "wide", "view", "video", "cinematic",
)


def _tiny_vocab(vocab_size: int) -> list[tuple[str, float]]:
    """Specials, every printable ASCII character, then whole words, then letter pairs, cut at `vocab_size`.

    Unigram log-probabilities favour long pieces, so known words stay one token and anything ASCII still
    tokenises without `<unk>`.
    """
    chars = [c for c in string.printable if not c.isspace()]
    base = [(s, 0.0) for s in _SPECIALS] + [("\u2581", -6.0)] + [(c, -8.0) for c in chars]
    if vocab_size < len(base):
        raise ValueError(f"a tiny tokenizer needs vocab_size >= {len(base)}, got {vocab_size}")
    extra = [(f"\u2581{w}", -2.0) for w in _WORDS]
    extra += [(f"\u2581{c}", -5.0) for c in string.ascii_lowercase]
    extra += [(a + b, -4.0) for a in string.ascii_lowercase for b in string.ascii_lowercase]
    return (base + extra)[:vocab_size]


def write_tiny_tokenizer(directory: Path, vocab_size: int) -> None:
    """A deterministic T5-style fast tokenizer (no download), loadable with `AutoTokenizer.from_pretrained`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.Unigram(_tiny_vocab(vocab_size), unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    tokenizer_config = {"tokenizer_class": "T5Tokenizer", **specials, "extra_ids": 0,
                        "additional_special_tokens": [], "model_max_length": 512}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
