"""Latent -> MP4 (+ contact sheet): patched, streamed VAE decode straight into the video encoder."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from pixelwizard.io.patched_decode import decode_patched
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
    on_step: Callable[[int, int], None] | None = None,
    group: dist.ProcessGroup | None = None,
) -> None:
    """Decode `latent` [C, T, h, w] chunk by chunk (never the whole clip in memory) into an MP4 at `path`;
    both files appear only once complete. With a process `group` this is rank 0's side of a decode whose
    patches the other ranks share (they iterate `decode_patched` with the same arguments)."""
    c, t, h, w = latent.shape
    frames = 1 + vae.time_factor * (t - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = decode_patched(vae, latent, num_patches=num_patches, patch_dim=patch_dim, overlap=overlap, group=group)
    if on_step is not None:
        on_step(0, t)
    with VideoWriter(path, w * vae.space_factor, h * vae.space_factor, fps=fps, total_frames=frames) as writer:
        for i, chunk in enumerate(chunks):
            writer.write(chunk)
            if on_step is not None:
                on_step(i + 1, t)
    if sheet_path is not None:
        tmp = sheet_path.with_name(f".{sheet_path.name}.tmp-{os.getpid()}.png")
        writer.contact_sheet().save(tmp)
        tmp.replace(sheet_path)
