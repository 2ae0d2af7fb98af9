"""Everything that can be known before a run starts, checked in seconds before any job is submitted: the output
directory, the checkpoints (headers, not tensor data), GPU counts, patch settings and free disk. Each problem is one
line naming the file or setting and the fix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from pixelwizard.checkpoints import preflight, wan_files
from pixelwizard.io.patched_decode import patch_ranges
from pixelwizard.models.attention import select_backend
from pixelwizard.pipeline.provenance import OutputState
from pixelwizard.pipeline.run_config import RunConfig, RunConfigError
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES

BITS_PER_PIXEL = 0.5  # generous for H.264 at crf 18: sizes the disk estimate of the videos
DISK_MARGIN = 1.1


def check_out(out: Path) -> None:
    """OUT must be a directory this process can write, or creatable as one."""
    if out.exists() and not out.is_dir():
        raise RunConfigError(f"--out {out}: is a file; give a directory (it is created if missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunConfigError(f"--out {out}: {existing} is not writable (read-only file system or permissions); "
                             "choose a directory you can write")


def check_checkpoints(config: RunConfig) -> None:
    """Every checkpoint file present, readable, complete and of the right role and shapes (headers only)."""
    preflight.check_checkpoints(Path(config.ckpt_dir), lr_ckpt=config.lr_ckpt and Path(config.lr_ckpt),
                                hr_ckpt=Path(config.hr_ckpt), preset_name=config.preset)


def check_parallelism(snapshot: RunSnapshot, visible_gpus: int) -> None:
    """GPU counts the model and the patches can use, and no more GPUs per job than the machine has."""
    config, preset = snapshot.config, snapshot.preset
    dit = wan_files.read_dit_config(Path(config.ckpt_dir))
    if dit.num_heads % config.hr_gpus:
        valid = ", ".join(str(n) for n in range(1, dit.num_heads + 1) if dit.num_heads % n == 0)
        raise RunConfigError(f"--hr-gpus {config.hr_gpus}: the {dit.num_heads} attention heads are split evenly "
                             f"over the HR job's GPUs; use one of {valid}")
    if config.decode_gpus > preset.num_patches:
        raise RunConfigError(f"--decode-gpus {config.decode_gpus}: more GPUs than decode patches "
                             f"({preset.num_patches}); use at most {preset.num_patches} or more --num-patches")
    for name in ("hr_gpus", "decode_gpus"):
        wanted = getattr(config, name)
        if visible_gpus and wanted > visible_gpus:
            raise RunConfigError(f"--{name.replace('_', '-')} {wanted}: only {visible_gpus} GPUs are visible here")


def check_kernels(config: RunConfig) -> None:
    """The attention kernel asked for is installed (checked where this machine has the GPU the jobs will use), and
    block streaming is for one-process HR jobs."""
    if config.offload and config.hr_gpus > 1:
        raise RunConfigError(f"--offload streams the DiT's blocks to one GPU; with --hr-gpus {config.hr_gpus} the "
                             "weights are already split over the GPUs: use one or the other")
    if config.device != "cpu" and torch.cuda.is_available():
        select_backend(config.attention, "cuda")


def check_patches(snapshot: RunSnapshot) -> None:
    """Every decode patch must be narrower than the latent, or patching does nothing but cost."""
    preset = snapshot.preset
    _, _, height, width = wan_files.vae_config(Path(snapshot.config.ckpt_dir)).latent_shape(
        preset.frames, preset.height, preset.width)
    size = width if preset.patch_dim == "w" else height
    try:
        ranges = patch_ranges(size, preset.num_patches, preset.overlap)
    except ValueError as err:
        raise RunConfigError(f"--num-patches {preset.num_patches}: {err}") from None
    widest = max(end - start for start, end in ranges)
    if preset.num_patches > 1 and widest >= size:
        most = (size - size // preset.num_patches) // 2
        raise RunConfigError(f"--overlap {preset.overlap}: a patch then spans the whole latent ({size} units along "
                             f"{preset.patch_dim}), so patching does nothing; use an overlap below {most}")


def output_bytes(snapshot: RunSnapshot, stage: str) -> int:
    """About how many bytes one output of `stage` takes on disk (latents as stored, videos at BITS_PER_PIXEL)."""
    preset = snapshot.preset
    vae = wan_files.vae_config(Path(snapshot.config.ckpt_dir))
    if stage == "hr":
        c, t, h, w = vae.latent_shape(preset.frames, preset.height, preset.width)
        return 4 * c * t * h * w
    if stage == "lr":
        c, t, h, w = vae.latent_shape(preset.frames, preset.lr_height, preset.lr_width)
        return 4 * c * t * h * w
    if stage in ("decode", "preview"):
        width, height = (preset.width, preset.height) if stage == "decode" else (preset.lr_width, preset.lr_height)
        return int(width * height * preset.frames * BITS_PER_PIXEL / 8)
    t5 = wan_files.t5_config(Path(snapshot.config.ckpt_dir))
    return 2 * t5.dim * t5.text_len  # a bf16 embedding of at most text_len tokens


def check_disk(snapshot: RunSnapshot, out: Path, todo: list[OutputState]) -> None:
    needed = sum(output_bytes(snapshot, s.stage) for s in todo if s.stage in STAGES)
    existing = next(p for p in (out, *out.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if needed * DISK_MARGIN > free:
        counts = ", ".join(f"{n} {stage}" for stage, n in _count(todo).items())
        raise RunConfigError(f"--out {out}: about {_size(needed)} are needed for the outputs still to make "
                             f"({counts}) but {_size(free)} are free there; free space or choose another --out")


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _count(states: list[OutputState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state.stage] = counts.get(state.stage, 0) + 1
    return counts
