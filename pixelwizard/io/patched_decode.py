"""Spatially patched VAE decode: split the latent along W or H, decode each patch as its own stream, blend.

A 2K/4K frame does not fit the VAE's activations in one piece, so the latent is cut into `num_patches` strips
that overlap by `overlap` latent columns on inner edges. Each strip is decoded by its own `StreamDecoder`, one
latent frame (1, then 4 pixel frames) at a time.

Patches run one after another, because a stream's causal-conv caches (2 frames per temporal conv, at every
decoder resolution) are its big state: at 4K they are ~55 GiB for the whole frame in float32, so streams of all
patches advanced in lockstep would hold them all at once. Every patch but the last is decoded over the whole clip
into a host canvas, one buffer per patch holding its weighted pixels (float32, or float16 when the VAE runs in half
precision: bf16 output is exact in float16, and the weighted products round at 2^-11); the last patch is streamed,
and each of its chunks is summed with the canvas's frames on the device and yielded. GPU memory is one patch's
caches and one chunk's activations; the host canvas is about (P-1)/P of the video (4K, 4 patches, bf16 VAE: 4.5 GiB;
2K, 3 patches: 1.9 GiB). With one patch there is no canvas and nothing waits.

Copies: the canvas buffers are page-locked (pixelwizard/host_memory.py) and laid out frame-major [F, 3, h, w], so a
chunk's frames are one contiguous range: written from the GPU already converted to the canvas dtype, read back
whole and converted on the GPU, both non-blocking on the decode's stream (so ordered with its kernels).

Blend masks follow the PixelWizard original: a patch has weight 1 except on its inner edges, where a half-cosine
ramp of overlap * 16 px rises from 0 (leading edge) or falls to 0 (trailing edge). Neighbours share 2 * overlap
latent columns; the left patch fades out over the right half of that band, the right patch fades in over the
left half, and the result is normalised by the summed weights.

Across GPUs the patches are independent: with a process group, rank r decodes patches r, r + P, ... (as above:
all but its last into its canvas) into partial chunks that are summed onto rank 0 (one reduce per chunk), which
alone gets the blended video. With as many ranks as patches, no rank needs a canvas.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor

from pixelwizard.host_memory import PinnedHost
from pixelwizard.io.patch_geometry import patch_ranges
from pixelwizard.models.vae import WanVAE

WEIGHT_FLOOR = 1e-6  # the original's max(sum(mask), 1e-6)


def cosine_ramp(length: int) -> Tensor:
    """0.5 - 0.5 cos(pi u) on u = linspace(0, 1, length): rises from exactly 0 to 1 ([0] when length is 1)."""
    return 0.5 - 0.5 * torch.cos(math.pi * torch.linspace(0.0, 1.0, length))


def blend_weights(ranges: list[tuple[int, int]], size: int, overlap: int, scale: int = 16) -> list[Tensor]:
    """Per-patch 1-D pixel weights along the split axis (length = patch width * scale), float32.

    Inner edges (not touching 0 or `size`) carry a cosine ramp of overlap * scale px; outer borders stay 1.
    """
    ramp_px = overlap * scale
    ramp = cosine_ramp(ramp_px)
    weights = []
    for start, end in ranges:
        w = torch.ones((end - start) * scale)
        if ramp_px:
            if start > 0:
                w[:ramp_px] *= ramp
            if end < size:
                w[-ramp_px:] *= ramp.flip(0)
        weights.append(w)
    return weights


def decode_patched(
    vae: WanVAE,
    z: Tensor,
    *,
    num_patches: int,
    patch_dim: Literal["w", "h"],
    overlap: int,
    device: torch.device | str | None = None,
    group: dist.ProcessGroup | None = None,
) -> Iterator[Tensor]:
    """Decode a normalised latent [C, T, h, w] chunk by chunk: yields [3, f, 16h, 16w] float32 in [-1, 1].

    f is 1 for latent frame 0 and 4 after. The chunks are blended on `device` (default: the VAE's device);
    moving them to the CPU is the caller's job. The first chunk comes once all patches but the last are done
    (see the module note). num_patches = 1 reproduces `vae.decode` exactly. With a process
    `group`, every rank must call this with the same arguments; only rank 0's chunks are the blended video.
    """
    if z.ndim != 4:
        raise ValueError(f"latent must be [C, T, h, w], got {tuple(z.shape)}")
    if patch_dim not in ("w", "h"):
        raise ValueError(f"patch_dim must be 'w' or 'h', got {patch_dim!r}")
    device = torch.device(device) if device is not None else vae.conv2.weight.device
    _, t, h, w = z.shape
    scale = vae.space_factor
    axis = -1 if patch_dim == "w" else -2  # the split axis of [.., H, W] tensors
    size = w if patch_dim == "w" else h
    ranges = patch_ranges(size, num_patches, overlap)

    # Normalise the masks once: sum_i(x_i m_i) / max(sum m, floor) == sum_i x_i (m_i / max(sum m, floor)).
    masks = blend_weights(ranges, size, overlap, scale)
    total = torch.zeros(size * scale)
    for (start, _), m in zip(ranges, masks):
        total[start * scale:start * scale + m.numel()] += m
    total.clamp_(min=WEIGHT_FLOOR)
    weights = []
    for (start, _), m in zip(ranges, masks):
        m = (m / total[start * scale:start * scale + m.numel()]).to(device)
        weights.append(m if patch_dim == "w" else m[:, None])  # broadcast over [3, f, H, W]: [w_px] or [h_px, 1]

    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
    mine = [(r, weight) for i, (r, weight) in enumerate(zip(ranges, weights)) if i % world == rank]
    early, last = mine[:-1], mine[-1:]
    host = PinnedHost(vae.conv2.weight.device)
    try:
        canvas = [(start * scale, _decode_to_host(vae, z, (start, end), weight, axis, host))
                  for (start, end), weight in early]
        streams = [(r, weight, vae.stream_decoder()) for r, weight in last]
        first_frame = 0
        for i in range(t):
            frames = 1 if i == 0 else vae.time_factor
            chunk = torch.zeros(3, frames, h * scale, w * scale, device=device)
            for offset, pixels in canvas:  # [F, 3, h, w] host -> [3, f, h, w] float32 on the device
                part = pixels[first_frame:first_frame + frames].to(device, non_blocking=True)
                chunk.narrow(axis, offset, part.shape[axis]).add_(rearrange(part, "f c h w -> c f h w"))
            for (start, end), weight, stream in streams:
                decoded = stream.push(z[None, :, i:i + 1].narrow(axis, start, end - start))[0]
                weighted = _weighted(decoded, weight, chunk.dtype).to(chunk.device)
                chunk.narrow(axis, start * scale, decoded.shape[axis]).add_(weighted)
            if world > 1:
                dist.reduce(chunk, dst=dist.get_global_rank(group, 0), group=group)
            first_frame += frames
            yield chunk
    finally:
        host.release()


def canvas_dtype(vae_dtype: torch.dtype) -> torch.dtype:
    """The host canvas holds float32 output as float32 and half-precision output as float16 (exact for bf16)."""
    return torch.float32 if vae_dtype == torch.float32 else torch.float16


def _weighted(pixels: Tensor, weight: Tensor, dtype: torch.dtype) -> Tensor:
    """pixels [3, f, ph, pw] · weight, computed in float32 on the pixels' device, in `dtype`."""
    return (pixels.float() * weight.to(pixels.device)).to(dtype)


def _decode_to_host(vae: WanVAE, z: Tensor, patch: tuple[int, int], weight: Tensor, axis: int,
                    host: PinnedHost) -> Tensor:
    """Decode latent range `patch` of `z` [C, T, h, w] over the whole clip into a host buffer [F, 3, H | span,
    span | W] of its weighted pixels (`host` page-locks it on CUDA)."""
    start, end = patch
    _, t, h, w = z.shape
    scale = vae.space_factor
    size = [h * scale, w * scale]
    size[axis] = (end - start) * scale
    pixels = host.empty(1 + vae.time_factor * (t - 1), 3, *size, dtype=canvas_dtype(vae.conv2.weight.dtype))
    stream = vae.stream_decoder()
    first_frame = 0
    for i in range(t):
        decoded = stream.push(z[None, :, i:i + 1].narrow(axis, start, end - start))[0]
        frames = decoded.shape[1]
        weighted = rearrange(_weighted(decoded, weight, pixels.dtype), "c f h w -> f c h w").contiguous()
        pixels[first_frame:first_frame + frames].copy_(weighted, non_blocking=True)  # converted on the device
        first_frame += frames
    return pixels
