"""Weight-free quality numbers of a video, accumulated frame by frame: bounded memory, one pass, JSON-ready.

`QualityMeter.add` takes uint8 RGB frames [f, H, W, 3] in time order (the render feeds it the MP4's own frames,
decoded back from the encoder's packets) and keeps running sums, the previous frame's luma and a few frame-sized
buffers, whatever the clip's length.

- `mhd_mse`: the PixelWizard paper's HD-MSE (its compute_metrics/quality_metric.py): frames in [0, 1], RGB; for
  k in 3, 4, 5 resize bilinearly to (H // 2^k, W // 2^k) and back to (H, W) (align_corners=False, no
  antialias: `F.interpolate`'s defaults there), sum the three mean squared errors; mean over frames. Higher
  means more detail finer than 8 to 32 px (the paper reports 0.0147 at 2K, 0.0102 at 4K).
- `sharpness`: variance of the 4-neighbour Laplacian of the luma over interior pixels, in 8-bit levels (the
  scale of OpenCV's `cv2.Laplacian(gray).var()`), mean over frames.
- `flicker`: mean |luma difference| of consecutive frames in 8-bit levels, mean over pairs, and the worst pair.
- `seam`: for a patched decode, the squared luma step across each patch boundary (between pixel lines b - 1 and
  b) divided by the same step energy across the lines whole VAE cells (`cell` px) away, 1 to 4 cells either
  side: those share the boundary's phase in the decoder's 16-px upsampling grid, so 1.0 means an invisible seam;
  above 1 the seam is an edge, below 1 a line flatter than its surroundings (a hard patch edge decoded with
  zero padding on noise-like texture).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pixelwizard.io.patch_geometry import seam_references

MHD_LEVELS = (3, 4, 5)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # BT.601, the matrix the H.264 encoder converts RGB with


def energy_ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None  # None: no texture around the seam to compare with


class QualityMeter:
    """Streams the frames of one `width` x `height` video into the metrics above; `result()` gives them as a dict.

    `boundaries` are seam positions in pixels along `axis` ("w": columns, "h": rows), e.g. `seam_boundaries`;
    `cell` is the spacing of the reference lines.
    """

    def __init__(self, width: int, height: int, boundaries: list[int] | tuple[int, ...] = (), axis: str = "w",
                 cell: int = 16) -> None:
        if axis not in ("w", "h"):
            raise ValueError(f"seam axis must be 'w' or 'h', got {axis!r}")
        if width < 3 or height < 3:
            raise ValueError(f"frames of {width}x{height} are too small to measure (at least 3x3)")
        self.width, self.height, self.axis = width, height, axis
        self.boundaries = [int(b) for b in boundaries]
        size = width if axis == "w" else height
        if any(not 1 <= b < size for b in self.boundaries):
            raise ValueError(f"seam boundaries {self.boundaries} must lie in 1..{size - 1} (the {axis} axis)")
        self.references = seam_references(self.boundaries, size, cell)
        if not all(self.references):
            raise ValueError(f"no seam reference lines: {size} px along {axis} is too small for cell {cell} px")
        self.lines = torch.tensor(self.boundaries + sum(self.references, []), dtype=torch.long)
        self.line_energy = torch.zeros(len(self.lines), dtype=torch.float64)  # summed over frames
        self.frames = 0
        self.mhd_sum = self.sharpness_sum = self.flicker_sum = 0.0
        self.flicker_worst, self.flicker_worst_at = -1.0, -1
        # Reused buffers: a fresh 100 MB tensor per 4K frame costs more in page faults than the arithmetic.
        self.rgb = torch.empty(1, 3, height, width)
        self.resized = torch.empty(1, 3, height, width)
        self.luma, self.previous_luma = torch.empty(height, width), torch.empty(height, width)
        self.laplacian = torch.empty(height - 2, width - 2)

    @torch.inference_mode()  # whichever thread calls it, and whatever grad mode that thread is in
    def add(self, frames: np.ndarray) -> None:
        """Measure the next frames [f, H, W, 3] uint8 RGB of the video."""
        if frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3) or frames.dtype != np.uint8:
            raise ValueError(f"frames must be uint8 [f, {self.height}, {self.width}, 3], got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        for frame in torch.from_numpy(frames):
            self.rgb[0].copy_(frame.permute(2, 0, 1))  # 8-bit levels, as float
            self.mhd_sum += self.mhd_squared_error() / (self.rgb.numel() * 255.0**2)
            r, g, b = self.rgb[0]
            torch.mul(r, LUMA_WEIGHTS[0], out=self.luma).add_(g, alpha=LUMA_WEIGHTS[1]).add_(b, alpha=LUMA_WEIGHTS[2])
            self.sharpness_sum += self.laplacian_variance()
            if self.frames > 0:
                step = self.previous_luma.sub_(self.luma).abs_().mean().item()
                self.flicker_sum += step
                if step > self.flicker_worst:
                    self.flicker_worst, self.flicker_worst_at = step, self.frames - 1
            if self.boundaries:
                dim = 1 if self.axis == "w" else 0
                steps = self.luma.index_select(dim, self.lines) - self.luma.index_select(dim, self.lines - 1)
                self.line_energy += steps.double().square_().mean(dim=1 - dim)
            self.luma, self.previous_luma = self.previous_luma, self.luma
            self.frames += 1

    def mhd_squared_error(self) -> float:
        """Sum over k of the summed squared error of `rgb` against its 2^k round trip (8-bit levels)."""
        h, w = self.height, self.width
        total = 0.0
        for k in MHD_LEVELS:
            low = F.interpolate(self.rgb, size=(max(1, h // 2**k), max(1, w // 2**k)), mode="bilinear",
                                align_corners=False)
            # F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False), into the reused buffer.
            torch.ops.aten.upsample_bilinear2d.out(low, [h, w], False, None, None, out=self.resized)
            total += self.resized.sub_(self.rgb).square_().sum().item()
        return total

    def laplacian_variance(self) -> float:
        y, lap = self.luma, self.laplacian
        torch.add(y[:-2, 1:-1], y[2:, 1:-1], out=lap).add_(y[1:-1, :-2]).add_(y[1:-1, 2:]).sub_(y[1:-1, 1:-1], alpha=4)
        return lap.var(correction=0).item()

    def result(self) -> dict:
        """The metrics so far, JSON-ready; `flicker` needs two frames and `seam` boundaries, else they are None."""
        if self.frames == 0:
            raise ValueError("no frames were measured")
        n = self.frames
        flicker = None
        if n > 1:
            at = self.flicker_worst_at
            flicker = {"mean": self.flicker_sum / (n - 1), "worst": self.flicker_worst, "worst_pair": [at, at + 1]}
        seam = None
        if self.boundaries:
            energy = (self.line_energy / n).tolist()
            across, rest = energy[:len(self.boundaries)], energy[len(self.boundaries):]
            around = []
            for refs in self.references:
                around.append(sum(rest[:len(refs)]) / len(refs))
                rest = rest[len(refs):]
            seam = {"overall": energy_ratio(sum(across), sum(around)),
                    "per_boundary": [energy_ratio(a, b) for a, b in zip(across, around)],
                    "boundaries": self.boundaries, "axis": self.axis}
        return {"frames": n, "mhd_mse": self.mhd_sum / n, "sharpness": self.sharpness_sum / n, "flicker": flicker,
                "seam": seam}
