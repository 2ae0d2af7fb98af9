"""A contact sheet: evenly spaced frames of a clip as thumbnails in a grid, kept beside each video (and sized by the
run's disk estimate without importing the video stack)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


class ContactSheet:
    """Collects `count` evenly spaced frames of a `total_frames` clip as thumbnails and tiles them in a grid.

    Thumbnails are `thumb_width` px wide (the frame width if smaller), aspect ratio kept.
    """

    def __init__(self, total_frames: int, count: int = 8, columns: int = 4, thumb_width: int = 256) -> None:
        if total_frames < 1 or count < 1 or columns < 1 or thumb_width < 1:
            raise ValueError("total_frames, count, columns and thumb_width must all be >= 1")
        self.picks = frozenset(round(i * (total_frames - 1) / max(count - 1, 1)) for i in range(count))
        self.columns, self.thumb_width = columns, thumb_width
        self.thumbs: list[Image.Image] = []
        self.seen = 0

    def add(self, frames: np.ndarray) -> None:
        """Offer the next frames [f, H, W, 3] uint8 of the clip; the picked ones are kept as thumbnails."""
        for frame in frames:
            if self.seen in self.picks:
                h, w = frame.shape[:2]
                tw = min(self.thumb_width, w)  # never upscale
                size = (tw, max(1, round(h * tw / w)))
                self.thumbs.append(Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS))
            self.seen += 1

    def image(self) -> Image.Image:
        """The thumbnails so far, row-major in `columns` columns (fewer if there are fewer thumbnails)."""
        if not self.thumbs:
            raise ValueError("no frames were collected for the contact sheet")
        tw, th = self.thumbs[0].size
        cols = min(self.columns, len(self.thumbs))
        sheet = Image.new("RGB", (cols * tw, math.ceil(len(self.thumbs) / cols) * th))
        for i, thumb in enumerate(self.thumbs):
            sheet.paste(thumb, ((i % cols) * tw, (i // cols) * th))
        return sheet
