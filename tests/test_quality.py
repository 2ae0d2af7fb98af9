from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pixelwizard.checkpoints.tiny import TINY_VAE, randomize_
from pixelwizard.io.patch_geometry import seam_boundaries
from pixelwizard.io.quality import QualityMeter
from pixelwizard.io.render import render_video
from pixelwizard.io.video import read_video
from pixelwizard.models.vae import WanVAE
from pixelwizard.pipeline.presets import PRESETS


def grey(values: np.ndarray) -> np.ndarray:
    """[f, H, W] levels -> [f, H, W, 3] uint8 with R = G = B, whose BT.601 luma is the level itself."""
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=-1)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64 weights of 1-D linear resampling with half-pixel centres (align_corners=False, no
    antialias): output i reads the input at (i + 0.5) * n_in / n_out - 0.5, clamped at 0 and at the last pixel."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(src), n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, min(lo + 1, n_in - 1)] += frac
    return m


def reference_mhd_mse(frames: np.ndarray) -> float:
    """The paper's HD-MSE written out with separable numpy matrices in float64: frames [F, H, W, 3] uint8."""
    x = frames.astype(np.float64) / 255.0
    _, h, w, _ = x.shape
    total = 0.0
    for k in (3, 4, 5):
        hs, ws = h // 2**k, w // 2**k
        rows = bilinear_matrix(hs, h) @ bilinear_matrix(h, hs)  # [h, h]: down then up along H
        cols = bilinear_matrix(ws, w) @ bilinear_matrix(w, ws)
        back = np.einsum("ij,fjkc,lk->filc", rows, x, cols, optimize=True)
        total += np.mean((back - x) ** 2)
    return total


def measure(frames: np.ndarray, **kw) -> dict:
    meter = QualityMeter(frames.shape[2], frames.shape[1], **kw)
    meter.add(frames)
    return meter.result()


def test_mhd_mse_matches_an_independent_computation() -> None:
    # Sizes not divisible by 2^k (100 // 32 = 3, so the round trip is not an integer-ratio one) and content with
    # structure at every scale: a smooth field plus noise.
    rng = np.random.default_rng(0)
    f, h, w = 3, 100, 148
    y, x = np.mgrid[0:h, 0:w] / 40.0
    smooth = 127 + 100 * np.sin(x[None, ..., None] * [1.0, 1.7, 2.3] + y[None, ..., None] + np.arange(f)[:, None,
                                                                                                       None, None])
    frames = np.clip(smooth + rng.normal(0, 12, (f, h, w, 3)), 0, 255).astype(np.uint8)
    expected = reference_mhd_mse(frames)
    assert expected > 0.01
    assert measure(frames)["mhd_mse"] == pytest.approx(expected, rel=1e-5)
    meter = QualityMeter(w, h)  # streamed one frame at a time: the same mean over frames
    for frame in frames:
        meter.add(frame[None])
    assert meter.result()["mhd_mse"] == pytest.approx(expected, rel=1e-5)


def test_mhd_mse_closed_forms() -> None:
    # Alternating black/white columns: with widths divisible by 32, every 2^k downsample reads two neighbouring
    # columns at weight 1/2 each, so the low-res image is 0.5 everywhere and comes back flat: 3 x 0.25.
    stripes = np.tile(np.array([0, 255], dtype=np.uint8), 48)[None, None].repeat(40, axis=1)  # [1, 40, 96]
    assert measure(grey(stripes))["mhd_mse"] == pytest.approx(0.75, rel=1e-6)
    assert measure(grey(np.full((2, 40, 96), 77)))["mhd_mse"] == 0.0


def test_sharpness_closed_forms() -> None:
    # A 0/255 checkerboard: the Laplacian is -1020 on white pixels and +1020 on black ones, half each.
    board = 255 * (np.add.outer(np.arange(34), np.arange(50)) % 2)
    assert measure(grey(board[None]))["sharpness"] == pytest.approx(1020.0**2, rel=1e-5)
    # A linear ramp has no curvature.
    ramp = np.add.outer(np.arange(34), 2 * np.arange(50))
    assert measure(grey(ramp[None]))["sharpness"] == pytest.approx(0.0, abs=1e-6)


def test_flicker_streams_across_calls() -> None:
    meter = QualityMeter(32, 16)
    levels = [10, 20, 50, 45]  # steps 10, 30, 5
    frames = grey(np.stack([np.full((16, 32), v) for v in levels]))
    meter.add(frames[:2])  # two calls: the pair (1, 2) spans them
    meter.add(frames[2:])
    result = meter.result()
    assert result["frames"] == 4
    assert result["flicker"]["mean"] == pytest.approx(15.0, rel=1e-5)
    assert result["flicker"]["worst"] == pytest.approx(30.0, rel=1e-5)
    assert result["flicker"]["worst_pair"] == [1, 2]
    assert measure(grey(np.zeros((1, 16, 32))))["flicker"] is None


@pytest.mark.parametrize("axis", ["w", "h"])
def test_seam_closed_form(axis) -> None:
    # A ramp of 1 level per pixel with a step of 10 more at pixel 64: 11^2 across the seam, 1^2 across the
    # reference lines (48, 80, 32, 96, 16, 112; 0 and 128 lie outside).
    ramp = np.arange(128) + 10 * (np.arange(128) >= 64)
    image = np.broadcast_to(ramp, (8, 128)) if axis == "w" else np.broadcast_to(ramp[:, None], (128, 8))
    meter = QualityMeter(image.shape[1], image.shape[0], [64], axis=axis, cell=16)
    assert meter.references == [[48, 80, 32, 96, 16, 112]]
    meter.add(grey(image[None]))
    seam = meter.result()["seam"]  # exact up to the float32 luma of a grey level (0.299 + 0.587 + 0.114 = 1)
    assert seam == {"overall": pytest.approx(121.0, rel=1e-5), "per_boundary": [pytest.approx(121.0, rel=1e-5)],
                    "boundaries": [64], "axis": axis}
    smooth = np.broadcast_to(np.arange(128), (8, 128))
    assert measure(grey(smooth[None]), boundaries=[64])["seam"]["overall"] == pytest.approx(1.0, rel=1e-5)
    flat = measure(grey(np.zeros((1, 8, 128))), boundaries=[64])["seam"]
    assert flat["overall"] is None and flat["per_boundary"] == [None]  # nothing to compare with
    assert measure(grey(smooth[None]))["seam"] is None


def test_seam_boundaries_follow_the_patches() -> None:
    # The middle of each shared band of patch_ranges: 2K (160, 3, 3) -> [(0, 56), (50, 109), (103, 160)].
    assert seam_boundaries(160, 3, 3, 16) == [53 * 16, 106 * 16]
    assert seam_boundaries(160, 3, 0, 16) == [53 * 16, 106 * 16]
    assert seam_boundaries(240, 4, 3, 16) == [960, 1920, 2880]  # 4K
    tiny = PRESETS["tiny"]
    assert seam_boundaries(tiny.width // 16, tiny.num_patches, tiny.overlap, 16) == [128]
    assert seam_boundaries(24, 1, 3, 16) == []


def test_meter_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        QualityMeter(32, 16).add(np.zeros((1, 16, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[f, 16, 32, 3\]"):
        QualityMeter(32, 16).add(np.zeros((1, 32, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="1..31"):
        QualityMeter(32, 16, [32])
    with pytest.raises(ValueError, match="reference"):
        QualityMeter(32, 16, [16], cell=64)
    with pytest.raises(ValueError, match="no frames"):
        QualityMeter(32, 16).result()


@pytest.fixture(scope="module")
def tiny_renders(tmp_path_factory):
    """The tiny preset's decode (2 patches along w) of one HR-sized latent [48, 3, 10, 16], without overlap and
    with the preset's overlap of 1: {overlap: (mp4 path, metrics)}."""
    vae = randomize_(WanVAE(TINY_VAE), seed=1).eval()
    latent = torch.randn(48, 3, 10, 16, generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("renders")
    renders = {}
    with torch.inference_mode():
        for overlap in (0, PRESETS["tiny"].overlap):
            path = out / f"overlap{overlap}.mp4"
            renders[overlap] = path, render_video(vae, latent, path, fps=24, num_patches=2, patch_dim="w",
                                                  overlap=overlap)
    return renders


@pytest.mark.slow  # two tiny-VAE decodes: ~20 s on 2 cores
def test_seam_separates_no_overlap_from_the_default_overlap(tiny_renders) -> None:
    """Measured (this latent and VAE seed; 3 other latent seeds within the ranges in brackets): seam 0.457
    without overlap [0.45, 0.58], 0.864 with overlap 1 [0.75, 0.90], 0.994 with overlap 3 [0.94, 1.02]. The
    random VAE draws noise-like texture, which the zero padding at a hard patch edge flattens, so its seam shows as
    a ratio below 1 (on natural images a hard cut is an edge: above 1)."""
    hard, blended = tiny_renders[0][1], tiny_renders[1][1]
    assert hard["seam"]["boundaries"] == blended["seam"]["boundaries"] == [128]
    assert hard["seam"]["overall"] == hard["seam"]["per_boundary"][0]
    assert abs(math.log(hard["seam"]["overall"])) > 0.6
    assert abs(math.log(blended["seam"]["overall"])) < 0.25
    # The other numbers barely move: the seam score is what tells the two decodes apart.
    assert blended["mhd_mse"] == pytest.approx(hard["mhd_mse"], rel=0.02)
    assert blended["flicker"]["mean"] == pytest.approx(hard["flicker"]["mean"], rel=0.05)


@pytest.mark.slow
def test_render_metrics_are_those_of_the_written_mp4(tiny_renders) -> None:
    for path, metrics in tiny_renders.values():
        frames, _ = read_video(path)
        assert metrics == measure(frames, boundaries=[128], axis="w")
        assert metrics["frames"] == 9 and json.loads(json.dumps(metrics, allow_nan=False)) == metrics
