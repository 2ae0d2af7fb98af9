"""Spatially patched VAE decode: split the latent along W or H, decode each patch as its own stream, blend.

A 2K/4K frame does not fit the VAE's activations in one piece, so the latent is cut into `num_patches` strips
that overlap by `overlap` latent columns on inner edges. Each strip is decoded by its own `StreamDecoder`, one
latent frame (1, then 4 pixel frames) at a time.

Patches run one after another, because a stream's causal-conv caches (2 frames per temporal conv, at every
decoder resolution) are its big state: at 4K they are ~55 GiB for the whole frame in float32, so streams of all
patches advanced in lockstep would hold them all at once. Every patch but the last is decoded over the whole clip
into a host canvas (float32, or float16 when the VAE runs in half precision: bf16 output is exact in float16, and
blend-band products round at 2^-11); the last patch is streamed, and each of its chunks is blended with the
canvas and yielded. GPU memory is one patch's caches and one chunk's activations; the host canvas is (P-1)/P of
the video (4K, 4 patches, bf16 VAE: 4.5 GiB; 2K, 3 patches: 1.8 GiB). With one patch there is no canvas and
nothing waits.

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
from torch import Tensor

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
    canvas = _decode_to_canvas(vae, z, early, axis, scale)  # (canvas [3, F, .., ..] on the host, its offset)
    streams = [(r, weight, vae.stream_decoder()) for r, weight in last]
    first_frame = 0
    for i in range(t):
        frames = 1 if i == 0 else vae.time_factor
        chunk = torch.zeros(3, frames, h * scale, w * scale, device=device)
        if canvas is not None:
            pixels, offset = canvas
            chunk.narrow(axis, offset, pixels.shape[axis]).copy_(pixels[:, first_frame:first_frame + frames])
        for (start, end), weight, stream in streams:
            decoded = stream.push(z[None, :, i:i + 1].narrow(axis, start, end - start))[0]
            chunk.narrow(axis, start * scale, decoded.shape[axis]).add_(_weighted(decoded, weight, chunk))
        if world > 1:
            dist.reduce(chunk, dst=dist.get_global_rank(group, 0), group=group)
        first_frame += frames
        yield chunk


def canvas_dtype(vae_dtype: torch.dtype) -> torch.dtype:
    """The host canvas holds float32 output as float32 and half-precision output as float16 (exact for bf16)."""
    return torch.float32 if vae_dtype == torch.float32 else torch.float16


def _weighted(pixels: Tensor, weight: Tensor, target: Tensor) -> Tensor:
    """pixels [3, f, ph, pw] · weight (float32, on the pixels' device), in `target`'s dtype and device."""
    return (pixels.float() * weight.to(pixels.device)).to(target.device, target.dtype)


def _decode_to_canvas(
    vae: WanVAE, z: Tensor, patches: list[tuple[tuple[int, int], Tensor]], axis: int, scale: int
) -> tuple[Tensor, int] | None:
    """Decode `patches` ((start, end) latent range, blend weight) one after another over the whole clip into a
    host canvas spanning them along `axis`: (canvas [3, F, H | span, span | W], pixel offset of the span)."""
    if not patches:
        return None
    _, t, h, w = z.shape
    lo, hi = min(start for (start, _), _ in patches), max(end for (_, end), _ in patches)
    shape = [3, 1 + vae.time_factor * (t - 1), h * scale, w * scale]
    shape[axis] = (hi - lo) * scale
    canvas = torch.zeros(shape, dtype=canvas_dtype(vae.conv2.weight.dtype))
    for (start, end), weight in patches:
        stream = vae.stream_decoder()
        target = canvas.narrow(axis, (start - lo) * scale, (end - start) * scale)
        first_frame = 0
        for i in range(t):
            decoded = stream.push(z[None, :, i:i + 1].narrow(axis, start, end - start))[0]
            frames = target[:, first_frame:first_frame + decoded.shape[1]]
            frames.add_(_weighted(decoded, weight, frames))
            first_frame += decoded.shape[1]
    return canvas, lo * scale
