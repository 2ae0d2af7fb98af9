from __future__ import annotations

import math

import pytest
import torch

from pixelwizard.checkpoints.tiny import TINY_VAE, randomize_
from pixelwizard.io.patch_geometry import patch_ranges
from pixelwizard.io.patched_decode import blend_weights, decode_patched
from pixelwizard.models.vae import WanVAE

C, T, H, W = 48, 3, 6, 24  # latent -> 9 frames of 96 x 384 px


def make_vae(local: bool) -> WanVAE:
    vae = randomize_(WanVAE(TINY_VAE), seed=1).eval()
    if local:
        # The decoder's middle attention mixes all positions of a frame, so no overlap can make a patch see what
        # the whole frame sees. Zeroing its output projection (as at training init) leaves a conv-only decoder
        # whose influence decays within a few latent columns: the geometry test for the patch slicing.
        with torch.no_grad():
            vae.decoder.middle[1].proj.weight.zero_()
            vae.decoder.middle[1].proj.bias.zero_()
    return vae


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    return torch.randn(C, T, H, W, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=[False, True], ids=["tiny", "local"])
def decoded(request, latent):
    """(vae, unpatched decode [3, F, H, W]) for the tiny VAE and its attention-free variant."""
    vae = make_vae(request.param)
    return vae, vae.decode(latent[None])[0]


def patched(vae: WanVAE, z: torch.Tensor, **kw) -> torch.Tensor:
    return torch.cat(list(decode_patched(vae, z, **kw)), dim=1)


def column_deviation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean |a - b| per latent column (16 px wide): [W]."""
    return (a - b).abs().mean(dim=(0, 1, 2)).reshape(-1, 16).mean(dim=1)


def test_patch_ranges_presets() -> None:
    assert patch_ranges(160, 3, 3) == [(0, 56), (50, 109), (103, 160)]  # 2K
    assert patch_ranges(240, 4, 3) == [(0, 63), (57, 123), (117, 183), (177, 240)]  # 4K
    assert patch_ranges(24, 1, 3) == [(0, 24)]
    assert patch_ranges(7, 2, 0) == [(0, 3), (3, 7)]  # the last patch takes the remainder
    assert patch_ranges(6, 2, 5) == [(0, 6), (0, 6)]  # clipped to the axis


@pytest.mark.parametrize("args", [(10, 0, 1), (3, 4, 0), (10, 2, -1)])
def test_patch_ranges_rejects(args) -> None:
    with pytest.raises(ValueError):
        patch_ranges(*args)


def test_blend_weights_ramps() -> None:
    ranges = patch_ranges(160, 3, 3)
    weights = blend_weights(ranges, 160, 3)
    assert [w.numel() for w in weights] == [896, 944, 912]
    ramp = 0.5 - 0.5 * torch.cos(math.pi * torch.arange(48) / 47)  # 48 px = 3 latent columns
    first, middle, last = weights
    assert torch.equal(first[:848], torch.ones(848))  # outer border: no ramp
    torch.testing.assert_close(first[-48:], ramp.flip(0))
    torch.testing.assert_close(middle[:48], ramp)
    torch.testing.assert_close(middle[-48:], ramp.flip(0))
    assert torch.equal(middle[48:-48], torch.ones(944 - 96))
    assert middle[0] == 0 and first[-1] == 0 and last[0] == 0 and last[-1] == 1
    # Summed on the canvas: in [1, 2] (each half of a shared band has one patch at full weight), so the blend
    # divides by 1..2 and never by the 1e-6 floor.
    total = torch.zeros(160 * 16)
    for (start, _), w in zip(ranges, weights):
        total[start * 16:start * 16 + w.numel()] += w
    assert total.min() == 1 and total.max() == 2
    assert [w.numel() for w in blend_weights([(0, 5)], 5, 3)] == [80]
    assert torch.equal(blend_weights([(0, 5)], 5, 3)[0], torch.ones(80))


def test_single_patch_is_exact_and_streamed(decoded, latent) -> None:
    vae, full = decoded
    chunks = list(decode_patched(vae, latent, num_patches=1, patch_dim="w", overlap=3))
    assert [c.shape[1] for c in chunks] == [1, 4, 4]
    assert all(c.shape == (3, c.shape[1], 16 * H, 16 * W) and c.dtype == torch.float32 for c in chunks)
    assert torch.equal(torch.cat(chunks, dim=1), full)


def test_chunk_frame_counts(decoded) -> None:
    vae, _ = decoded
    z = torch.randn(C, 5, 2, 6, generator=torch.Generator().manual_seed(1))
    chunks = decode_patched(vae, z, num_patches=2, patch_dim="w", overlap=1, device="cpu")
    assert [(c.shape, c.device.type) for c in chunks] == [((3, f, 32, 96), "cpu") for f in (1, 4, 4, 4, 4)]


def test_full_cover_patches_blend_back(decoded, latent) -> None:
    # h = 6, two patches, overlap 3: both patches span the whole height, so the blend must normalise to x.
    vae, full = decoded
    assert patch_ranges(H, 2, 3) == [(0, 6), (0, 6)]
    out = patched(vae, latent, num_patches=2, patch_dim="h", overlap=3)
    torch.testing.assert_close(out, full, rtol=0, atol=1e-6)


def test_overlap_hides_seams(decoded, latent) -> None:
    """Measured (seed 0 latent, randomize_ seed 1): mean |patched - full| per latent column, n = 3 along W.

    tiny:  overlap 0 -> 0.30-0.32 in the two columns at each seam, 0.07-0.14 elsewhere, 0.154 overall;
           overlap 3 -> flat 0.07-0.09 (the global attention, not the seams), 0.077 overall; max |.| 1.01.
    local: overlap 0 -> 0.30-0.33 at the seams, 0.002 at the borders, 0.117 overall; overlap 3 -> <= 0.065 inside
           the blend bands, < 2e-4 two columns from the image borders, 0.026 overall; max |.| 0.60.
    """
    vae, full = decoded
    seams = [7, 8, 15, 16]  # latent columns either side of the patch borders at 8 and 16
    away = [c for c in range(W) if c not in seams]
    dev0 = column_deviation(patched(vae, latent, num_patches=3, patch_dim="w", overlap=0), full)
    dev3 = column_deviation(patched(vae, latent, num_patches=3, patch_dim="w", overlap=3), full)
    assert dev0[seams].min() > 0.25 and dev0[seams].mean() > 2 * dev0[away].mean()
    assert dev3.max() < 0.12 and dev3[seams].mean() < 0.4 * dev0[seams].mean()
    assert dev3.mean() < 0.6 * dev0.mean()


@pytest.mark.parametrize("patch_dim", ["w", "h"])
def test_local_decoder_is_exact_away_from_the_blend_band(patch_dim) -> None:
    """Two patches of 24 latent lines, overlap 3: blend band [9, 15). Lines 0-2 and 21-23 must match the full
    decode (measured max |.| <= 3.7e-5 there, 0.55 inside the band; up to 1.9 at the seam without overlap)."""
    vae = make_vae(local=True)
    shape = (C, 2, 6, 24) if patch_dim == "w" else (C, 2, 24, 6)
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    full = vae.decode(z[None])[0]
    axis = 3 if patch_dim == "w" else 2
    far = torch.tensor([*range(0, 3 * 16), *range(21 * 16, 24 * 16)])
    dev3 = (patched(vae, z, num_patches=2, patch_dim=patch_dim, overlap=3) - full).abs()
    dev0 = (patched(vae, z, num_patches=2, patch_dim=patch_dim, overlap=0) - full).abs()
    assert dev3.index_select(axis, far).max() < 1e-4
    assert dev0.max() > 1.5 and dev3.max() < 0.75
