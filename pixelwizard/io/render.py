"""Latent -> MP4 (+ contact sheet, + quality numbers): patched, streamed VAE decode into a background encoder."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from pixelwizard.io.files import write_atomic
from pixelwizard.io.patch_geometry import check_decode_settings, seam_boundaries
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.io.quality import QualityMeter
from pixelwizard.io.video import VideoWriter
from pixelwizard.models.vae import WanVAE


def render_video(
    vae: WanVAE,
    latent: torch.Tensor,
    path: Path,
    *,
    fps: int,
    num_patches: int = 1,
    patch_dim: str = "w",
    overlap: int = 0,
    sheet_path: Path | None = None,
    root: Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
    group: dist.ProcessGroup | None = None,
) -> dict:
    """Decode `latent` [C, T, h, w] chunk by chunk (never the whole clip in memory) into an MP4 at `path` and
    return its quality numbers (`QualityMeter.result()`, measured on the MP4's frames decoded back, with the
    patch seams of this decode). The next chunk decodes while the previous one encodes; both files appear only
    once complete, and any exception (from `on_step` too) leaves neither. With a process `group` this is rank 0's
    side of a decode whose patches the other ranks share (they iterate `decode_patched` with the same arguments).
    Both files are written inside `root` (default: their own folder, see io/files.py)."""
    c, t, h, w = latent.shape
    frames = 1 + vae.time_factor * (t - 1)
    scale = vae.space_factor
    width, height = w * scale, h * scale
    size = w if patch_dim == "w" else h
    check_decode_settings(size, num_patches, overlap, scale, patch_dim)
    meter = QualityMeter(width, height, seam_boundaries(size, num_patches, overlap, scale), axis=patch_dim, cell=scale)
    chunks = decode_patched(vae, latent, num_patches=num_patches, patch_dim=patch_dim, overlap=overlap, group=group)
    if on_step is not None:
        on_step(0, t)
    with VideoWriter(path, width, height, fps=fps, total_frames=frames, readback=meter.add, root=root) as writer:
        for i, chunk in enumerate(chunks):
            writer.write(chunk)
            if on_step is not None:
                on_step(i + 1, t)
    if sheet_path is not None:
        png = io.BytesIO()
        writer.contact_sheet().save(png, format="PNG")
        write_atomic(sheet_path, png.getvalue(), root)
    return meter.result()
