"""Where a patched decode cuts the latent and where its seams lie: the one geometry of the decode
(io/patched_decode.py), the seam meter (io/quality.py) and the check of decode settings before a run
(`check_decode_settings`), so that settings the check accepts are decoded and measured in the job.

Plain integers, no tensors: the CLI checks settings with it before anything heavy is loaded.
"""

from __future__ import annotations

SEAM_REFERENCE_CELLS = 4  # reference lines per side of a seam, one VAE cell apart


class DecodeSettingsError(ValueError):
    """Decode patch settings that cannot decode this latent; the message names the setting and its real limit."""


def patch_ranges(size: int, num_patches: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open latent ranges [start, end) of each patch along one axis of length `size`.

    Patch i owns [base*i, base*(i+1)) with base = size // num_patches (the last patch owns the remainder) and
    is widened by `overlap` on each inner edge, clipped to [0, size).
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 latent units, got {overlap}")
    if size < num_patches:
        raise ValueError(f"cannot split {size} latent units into {num_patches} patches at least 1 unit wide")
    base = size // num_patches
    ranges = []
    for i in range(num_patches):
        first, last = i == 0, i == num_patches - 1
        start = base * i - (0 if first else overlap)
        end = size if last else base * (i + 1) + overlap
        ranges.append((max(0, start), min(size, end)))
    return ranges


def seam_boundaries(size: int, num_patches: int, overlap: int, scale: int) -> list[int]:
    """Pixel positions b of the seams of a decode split into `num_patches` along an axis of `size` latent units:
    the middle of the band two neighbours share (`patch_ranges`), where their blend weights cross 0.5; without
    overlap, the cut itself. The seam lies between pixel lines b - 1 and b."""
    ranges = patch_ranges(size, num_patches, overlap)
    return [scale * ((start + end) // 2) for (_, end), (start, _) in zip(ranges, ranges[1:])]


def seam_references(boundaries: list[int], size: int, cell: int) -> list[list[int]]:
    """For each seam b (pixels along an axis of `size` px), the lines it is compared with: whole cells away, 1 to
    SEAM_REFERENCE_CELLS either side, inside the frame and not seams themselves."""
    return [[r for j in range(1, SEAM_REFERENCE_CELLS + 1) for r in (b - j * cell, b + j * cell)
             if 1 <= r < size and r not in boundaries] for b in boundaries]


def _problem(size: int, num_patches: int, overlap: int, scale: int, axis: str) -> str | None:
    """What keeps these settings from decoding (and measuring) a latent of `size` units, or None."""
    if size < num_patches:
        return f"the latent is {size} units ({size * scale} px) along {axis}, too few for {num_patches} patches"
    ranges = patch_ranges(size, num_patches, overlap)
    if num_patches > 1 and any(end - start >= size for start, end in ranges):
        return f"a patch then spans the whole latent ({size} units along {axis}), so patching does nothing"
    if not all(seam_references(seam_boundaries(size, num_patches, overlap, scale), size * scale, scale)):
        base = size // num_patches
        return (f"patches {base} unit{'s' if base > 1 else ''} wide leave a seam with no line a whole cell ({scale} "
                "px) away that is not a seam itself, to measure the seam against")
    return None


def _most(accepted) -> int:
    """The largest n such that accepted(k) holds for every k in 0..n (given accepted(0))."""
    n = 0
    while accepted(n + 1):
        n += 1
    return n


def check_decode_settings(size: int, num_patches: int, overlap: int, scale: int, axis: str = "w") -> None:
    """Raise DecodeSettingsError unless `num_patches` patches overlapping by `overlap` decode, and have their seams
    measured, along an axis (`axis`, for the message) of `size` latent units of `scale` px; the message names the
    setting to change and the largest value of it that works, with every smaller one, given the other."""
    if num_patches < 1 or overlap < 0:
        raise DecodeSettingsError(f"--num-patches {num_patches} --overlap {overlap}: use 1 or more patches and an "
                                  "overlap of 0 or more")
    problem = _problem(size, num_patches, overlap, scale, axis)
    if problem is None:
        return
    if _problem(size, num_patches, 0, scale, axis) is None:  # the overlap is what does not fit
        most = _most(lambda n: _problem(size, num_patches, n, scale, axis) is None)
        raise DecodeSettingsError(f"--overlap {overlap}: {problem}; with {num_patches} patches use an overlap of at "
                                  f"most {most}")
    most = _most(lambda n: _problem(size, n + 1, overlap, scale, axis) is None) + 1
    raise DecodeSettingsError(f"--num-patches {num_patches}: {problem}; with overlap {overlap} use at most {most} "
                              f"patch{'es' if most > 1 else ''}")
