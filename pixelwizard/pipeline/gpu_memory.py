"""Peak GPU memory of each stage from a preset's shapes, in seconds instead of bench/memory.py's minutes: what
`pixelwizard doctor` reports per preset, and which of --offload, --hr-gpus N or --num-patches N makes a stage fit.

bench/memory.py counts the real code paths on fake CUDA tensors; these formulas have its terms (docs/performance.md,
"Where the HR memory went"): the weights in their inference dtypes, the tensors that live through a forward or a
decode chunk, and a fixed part. Their per-token and per-area rates are fitted to its 2K and 4K figures; the slow
memory test (tests/test_memory_budget.py) holds every stage within 3% of bench/memory.py, also at a size neither fit
used. Like bench/memory.py they give max_memory_allocated; `CONTEXT_GIB` is added for the CUDA context and allocator
slack when judging whether a GPU fits.

    HR       weights + L x HR_BYTES_PER_TOKEN + HR_FIXED_GIB            L = HR tokens; 12 D bytes of it are the
             float32 residual stream, the float32 anchor feature and bf16 k, v; the rest is the sampler's state
    offload  as HR with only two of the 30 blocks on the GPU
    hr_gpus  FSDP2 shards the weights (the adapter whole, two blocks gathered), Ulysses the stream and k, v; the
             anchor feature, the patchified tokens and the sampler state stay whole on every rank (derived, not fitted)
    LR       weights + B x L_lr x LR_BYTES_PER_ROW                       (B = 2: CFG as one batch)
    text     umT5 weights + TEXT_ACTIVATIONS_GIB
    decode   VAE weights + DECODE_GIB_PER_AREA x (latent height x widest patch), for the split along W (one patch's
             caches and chunk activations: independent of the clip length)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pixelwizard.io.patched_decode import patch_ranges
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.models.vae import WanVAE
from pixelwizard.pipeline.presets import Preset

GIB = 2**30
CONTEXT_GIB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces and allocator slack on top of the allocated peak
# Fitted to bench/memory.py (bench/results/memory_estimate.jsonl): HR 14.95 / 20.33 GiB at 2K / 4K, LR 10.05 GiB,
# text 10.70 GiB, decode (bf16 VAE) 10.43 / 16.51 GiB at 2K, 3 patches / 4K, 4 patches.
HR_BYTES_PER_TOKEN = 41_970
HR_FIXED_GIB = 0.76
LR_BYTES_PER_ROW = 94_300
TEXT_ACTIVATIONS_GIB = 0.12
DECODE_GIB_PER_AREA = 1.7204e-3
ENCODE_GIB_PER_PIXEL = 2.94e-6  # the VAE encoder's activations per pixel of the anchor-size clip it encodes
OFFLOAD_RESIDENT_BLOCKS = 2
GATHERED_BLOCKS = 2  # FSDP2: the block running and the one being prefetched
STAGES = ("text", "lr", "encode", "hr", "decode")  # encode: the lr stage of a video prompt, its clip VAE-encoded


@dataclass(frozen=True)
class Models:
    """Weight bytes of the pretrained networks in their inference dtypes (bf16, the DiT's float32 islands)."""

    hr: int
    lr: int
    hr_blocks: int
    hr_replicated: int  # the spatial adapter, whole on every rank under FSDP
    vae: int
    text: int
    dim: int
    num_layers: int

    @classmethod
    def of(cls, dit: DiTConfig = DiTConfig(), vae: VAEConfig = VAEConfig(), t5: T5Config = T5Config()) -> Models:
        with torch.device("meta"):
            hr_model, lr_model, vae_model = HRDiT(dit), WanDiT(dit), WanVAE(vae)
        text = t5.vocab_size * t5.dim + t5.dim + t5.num_layers * (
            4 * t5.dim * t5.dim_attn + 3 * t5.dim * t5.dim_ffn + 2 * t5.dim + t5.num_buckets * t5.num_heads)
        return cls(hr=_dit_bytes(hr_model), lr=_dit_bytes(lr_model), hr_blocks=_dit_bytes(hr_model, "blocks."),
                   hr_replicated=_dit_bytes(hr_model, "spatial_adapter."), vae=_bytes(vae_model, torch.bfloat16),
                   text=2 * text, dim=dit.dim, num_layers=dit.num_layers)


def _dit_bytes(model: WanDiT, prefix: str = "") -> int:
    return sum(p.numel() * (4 if model.keeps_float32(k) else 2) for k, p in model.named_parameters()
               if k.startswith(prefix))


def _bytes(model: nn.Module, dtype: torch.dtype) -> int:
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def tokens(preset: Preset, lr: bool = False, vae: VAEConfig = VAEConfig(), patch: int = 2) -> int:
    """DiT tokens of the preset's HR (or LR) latent."""
    width, height = (preset.lr_width, preset.lr_height) if lr else (preset.width, preset.height)
    _, t, h, w = vae.latent_shape(preset.frames, height, width)
    return t * (h // patch) * (w // patch)


def hr_gib(preset: Preset, models: Models, *, offload: bool = False, gpus: int = 1) -> float:
    """Peak of the HR stage (4 steps x CFG) on one GPU, with block streaming, or per rank over `gpus` ranks."""
    length = tokens(preset)
    if gpus == 1:
        weights = models.hr - models.hr_blocks * (1 - OFFLOAD_RESIDENT_BLOCKS / models.num_layers) if offload \
            else models.hr
        return (weights + length * HR_BYTES_PER_TOKEN) / GIB + HR_FIXED_GIB
    block = models.hr_blocks / models.num_layers
    weights = (models.hr - models.hr_replicated) / gpus + models.hr_replicated + GATHERED_BLOCKS * block
    split = 12 * models.dim  # the residual stream (fp32) and k, v (bf16) per token, divided over the ranks
    whole = 8 * models.dim + (HR_BYTES_PER_TOKEN - 12 * models.dim)  # anchor feature, tokens, sampler state
    return (weights + length * (whole + split / gpus)) / GIB + HR_FIXED_GIB


def lr_gib(preset: Preset, models: Models) -> float:
    return (models.lr + 2 * tokens(preset, lr=True) * LR_BYTES_PER_ROW) / GIB


def encode_gib(preset: Preset, models: Models) -> float:
    """Peak of a video prompt's anchor: its clip at the anchor size through the VAE encoder (bf16), frames
    streamed in causal chunks, so the clip's length does not count."""
    return models.vae / GIB + ENCODE_GIB_PER_PIXEL * preset.lr_width * preset.lr_height


def text_gib(models: Models) -> float:
    return models.text / GIB + TEXT_ACTIVATIONS_GIB


def decode_gib(preset: Preset, models: Models, num_patches: int | None = None,
               vae: VAEConfig = VAEConfig()) -> float:
    """Peak of the patched decode with a bf16 VAE (the GPU setting): one patch's stream at a time."""
    _, _, h, w = vae.latent_shape(preset.frames, preset.height, preset.width)
    size, other = (w, h) if preset.patch_dim == "w" else (h, w)
    ranges = patch_ranges(size, num_patches or preset.num_patches, preset.overlap)
    return models.vae / GIB + DECODE_GIB_PER_AREA * other * max(end - start for start, end in ranges)


def stage_gib(stage: str, preset: Preset, models: Models) -> float:
    """A stage's peak with the preset's own settings, one GPU, resident weights."""
    if stage == "text":
        return text_gib(models)
    return {"lr": lr_gib, "encode": encode_gib, "hr": hr_gib, "decode": decode_gib}[stage](preset, models)


@dataclass(frozen=True)
class PresetFit:
    """Where a preset stands on a GPU of `gpu_gib`: every stage's peak, the largest, whether the preset fits as it
    is, and for each stage that does not, the settings that make it fit (none: it cannot fit this GPU)."""

    preset: str
    stages: dict[str, float]
    largest: str
    fits: bool | None  # None: no GPU to judge against
    remedies: dict[str, list[str]]


def fit(preset: Preset, models: Models, gpu_gib: float | None, num_heads: int = 24, max_gpus: int = 1,
        max_patches: int = 16) -> PresetFit:
    stages = {s: round(stage_gib(s, preset, models), 2) for s in STAGES}
    largest = max(stages, key=stages.get)
    if gpu_gib is None:
        return PresetFit(preset.name, stages, largest, None, {})
    room = gpu_gib - CONTEXT_GIB
    remedies: dict[str, list[str]] = {stage: [] for stage, gib in stages.items() if gib > room}
    if "hr" in remedies:
        if (offload := hr_gib(preset, models, offload=True)) <= room:
            remedies["hr"].append(f"--offload ({offload:.1f} GiB)")
        gpus = next((n for n in range(2, max_gpus + 1) if num_heads % n == 0
                     and hr_gib(preset, models, gpus=n) <= room), None)
        if gpus is not None:
            remedies["hr"].append(f"--hr-gpus {gpus} ({hr_gib(preset, models, gpus=gpus):.1f} GiB per GPU)")
    if "decode" in remedies:
        patches = next((n for n in range(preset.num_patches + 1, max_patches + 1)
                        if decode_gib(preset, models, n) <= room), None)
        if patches is not None:
            remedies["decode"].append(f"--num-patches {patches} ({decode_gib(preset, models, patches):.1f} GiB)")
    return PresetFit(preset.name, stages, largest, not remedies, remedies)
