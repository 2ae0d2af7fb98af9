"""What each stage computes for one prompt, given its models: the stage scripts (around which pipeline/job.py keeps
the books) and the Python API (`pixelwizard.Pipeline`) both call these, so a video is the same made either way.
Here the product's preset is mapped onto the models and samplers: noise shapes, sampler parameters (the
seeds: `provenance.stage_seed`, as every output records them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from pixelwizard import distributed
from pixelwizard.checkpoints import wan, wan_files
from pixelwizard.checkpoints.trainer import load_hr_model, load_lr_model
from pixelwizard.io.image import fit_image
from pixelwizard.io.latent_input import load_latent
from pixelwizard.io.quality import QualityMeter
from pixelwizard.io.render import write_video
from pixelwizard.io.video_input import Clip, clip_frames, fit_frame
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.models.offload import offload_blocks
from pixelwizard.models.vae import WanVAE
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.sampling.samplers import Conditioning, StepCallback, sample_hr, sample_lr
from pixelwizard.sampling.seeds import gaussian_noise

if TYPE_CHECKING:  # transformers takes seconds to import: only the text stage pays for it
    from pixelwizard.models.text_encoder import TextEncoder


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device; use device: auto or cpu")
    return torch.device(requested)


def dit_dtype(config: RunConfig, device: torch.device) -> torch.dtype:
    """bf16 matmuls on a GPU (or the run's dtype); float32 on the CPU, where bf16 is slow and parity is checked."""
    return torch.float32 if device.type == "cpu" else getattr(torch, config.dtype)


def vae_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (the 4K decode fits 24 GB only so; bench/gpu.py measures it against float32), float32 on the
    CPU."""
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def vae_memory_format(device: torch.device) -> torch.memory_format:
    """channels-last-3d on a GPU: cuDNN's convolutions are channels-last natively (NCDHW costs layout conversions
    around every conv) and it passes PyTorch's Conv3d gate on cuDNN 9.8-9.14 (pixelwizard/gpu_traps.py); bench/gpu.py
    times it against NCDHW. NCDHW on the CPU."""
    return torch.contiguous_format if device.type == "cpu" else torch.channels_last_3d


def load_vae(config: RunConfig, device: torch.device) -> WanVAE:
    vae = wan.load_vae(Path(config.ckpt_dir), device=device, dtype=vae_dtype(device))
    return vae.use_memory_format(vae_memory_format(device))


def load_lr_dit(config: RunConfig, device: torch.device) -> WanDiT:
    """The LR anchor's DiT: the base Wan2.2 DiT, or the fine-tuned `lr/model.pt`."""
    ckpt_dir = Path(config.ckpt_dir)
    if config.lr_ckpt is None:
        model = wan.load_dit(ckpt_dir, dtype=dit_dtype(config, device), device=device)
    else:
        model = load_lr_model(Path(config.lr_ckpt), wan_files.read_dit_config(ckpt_dir),
                              dtype=dit_dtype(config, device), device=device)
    return model.use_attention(config.attention, device)


def load_hr_dit(config: RunConfig, device: torch.device) -> HRDiT:
    """The HR shortcut model: with `offload` its blocks stream from host memory (one GPU); under torchrun FSDP2-
    sharded over the ranks and Ulysses sequence-parallel."""
    dit_config = wan_files.read_dit_config(Path(config.ckpt_dir))
    dtype = dit_dtype(config, device)
    if distributed.world_size() > 1:
        sp = distributed.SequenceParallel()
        sp.check_heads(dit_config.num_heads)
        model = load_hr_model(Path(config.hr_ckpt), dit_config, dtype=dtype, device=device,
                              mesh=distributed.device_mesh(device))
        model.use_sequence_parallel(sp)
    elif config.offload and device.type == "cuda":
        model = load_hr_model(Path(config.hr_ckpt), dit_config, dtype=dtype, device="cpu")
        model.block_streamer = offload_blocks(model, device)  # kept with the model: it moves the blocks
    else:
        model = load_hr_model(Path(config.hr_ckpt), dit_config, dtype=dtype, device=device)
    return model.use_attention(config.attention, device)


@dataclass(frozen=True)
class Embedding:
    context: torch.Tensor  # [L, dim], L = tokens read (at most the encoder's text_len)
    tokens: int  # tokens of the whole text, </s> included
    dropped: int  # tokens past text_len, not read


def encode(encoder: TextEncoder, text: str) -> Embedding:
    from pixelwizard.models.text_encoder import clean_prompt

    tokens = len(encoder.tokenizer(clean_prompt(text))["input_ids"])
    (context,) = encoder.encode([text])
    return Embedding(context, tokens, max(0, tokens - encoder.config.text_len))


def encode_first_frame(vae: WanVAE, image: Image.Image, width: int, height: int) -> torch.Tensor:
    """An image's first-frame latent [C, 1, height/16, width/16] (float32, on the CPU) for `first_frame` of
    `lr_anchor` (at the LR size) or `hr_latent` (at the HR size): fitted as Wan2.2's i2v does, encoded in the
    VAE's dtype."""
    return vae.encode(fit_image(image, width, height)[None])[0].float().cpu()


def lr_anchor(dit: WanDiT, cond: Conditioning, preset: Preset, seed: int, config: RunConfig,
              on_step: StepCallback | None = None, *, first_frame: torch.Tensor | None = None) -> torch.Tensor:
    """The LR anchor latent [C, T, h, w] of a prompt (float32, on the CPU); image to video with `first_frame`."""
    shape = wan_files.vae_config(Path(config.ckpt_dir)).latent_shape(preset.frames, preset.lr_height, preset.lr_width)
    return sample_lr(dit, cond, gaussian_noise(shape, seed), **preset.lr_sampling(), on_step=on_step,
                     first_frame=first_frame).cpu()


def clip_of(facts: dict[str, Any]) -> Clip:
    """A video source's clip, from its facts in the run snapshot."""
    return Clip(**{name: facts[name] for name in Clip.__dataclass_fields__})


def video_anchor(vae: WanVAE, path: Path, clip: Clip, preset: Preset,
                 on_step: StepCallback | None = None) -> torch.Tensor:
    """The anchor latent [C, T, h, w] of a video's clip (float32, on the CPU): every frame fitted to the anchor
    size (`preset`'s, in the clip's orientation) and the clip VAE-encoded; `on_step` counts the frames read."""
    frames = []
    for frame in clip_frames(path, clip):
        frames.append(fit_frame(frame, preset.lr_width, preset.lr_height))
        if on_step is not None:
            on_step(len(frames), clip.frames + 1)
    latent = vae.encode(torch.stack(frames, dim=1)[None])[0].float().cpu()
    if on_step is not None:
        on_step(clip.frames + 1, clip.frames + 1)
    return latent


def saved_anchor(path: Path, preset: Preset, config: RunConfig) -> torch.Tensor:
    """A saved anchor latent [C, T, h, w] (float32): its first `preset.frames` frames."""
    return load_latent(path, channels=wan_files.vae_config(Path(config.ckpt_dir)).z_dim, max_frames=preset.frames)


def input_clip(path: Path, clip: Clip, out: Path, sheet: Path, root: Path,
               on_step: StepCallback | None = None) -> dict:
    """A video's clip as the run takes it, at its display size (even sides for yuv420p: an odd side loses its last
    pixel line) and rate, into an H.264 MP4 and a contact sheet inside `root`; returns the clip's quality numbers."""
    width, height = clip.width - clip.width % 2, clip.height - clip.height % 2
    chunks = (frame[None, :height, :width] for frame in clip_frames(path, clip))
    return write_video(chunks, out, width=width, height=height, frames=clip.frames, steps=clip.frames, fps=clip.fps,
                       meter=QualityMeter(width, height), sheet_path=sheet, root=root, on_step=on_step)


def hr_latent(model: HRDiT, cond: Conditioning, anchor: torch.Tensor, preset: Preset, seed: int, config: RunConfig,
              on_step: StepCallback | None = None, *, first_frame: torch.Tensor | None = None) -> torch.Tensor:
    """The HR latent [C, T, H, W] of a prompt from its LR anchor (float32, on the CPU); `first_frame` (the image
    at the HR size) holds its frame 0, experimentally."""
    shape = wan_files.vae_config(Path(config.ckpt_dir)).latent_shape(preset.frames, preset.height, preset.width)
    return sample_hr(model, cond, anchor, gaussian_noise(shape, seed), **preset.hr_sampling(), on_step=on_step,
                     first_frame=first_frame).cpu()


def patches(preset: Preset) -> dict[str, object]:
    """The patched decode's settings."""
    return dict(num_patches=preset.num_patches, patch_dim=preset.patch_dim, overlap=preset.overlap)
