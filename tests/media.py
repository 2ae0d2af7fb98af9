"""Synthetic input files for the tests, written with PyAV and PIL: videos whose every frame says which one it is
(its grey level), with a white block in the stored frame's top-left corner that shows where rotation put it."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

STEP, PERIOD = 12, 20  # frame i is grey level 8 + STEP * (i % PERIOD)


def level(index: int) -> int:
    return 8 + STEP * (index % PERIOD)


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    """[height, width, 3] uint8: frame `index`'s grey level, and the white marker block top-left."""
    pixels = np.full((height, width, 3), level(index), np.uint8)
    pixels[: max(2, height // 4), : max(2, width // 4)] = 255
    return pixels


def write_video(path: Path, frames: int, width: int = 64, height: int = 48, *, rate: int = 24,
                times_ms: list[int] | None = None, rotation: int | None = None, codec: str = "libx264",
                pix_fmt: str = "yuv420p") -> Path:
    """A video of `frames` frames at `rate` fps, or at the presentation times `times_ms` (variable frame rate);
    `rotation`: the display matrix's counterclockwise degrees (what phones record)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if times_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        container.start_encoding()  # a header even without frames
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pixels(i, width, height), format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, width: int, height: int, *, orientation: int | None = None) -> Path:
    """An image of frame 0's pixels (`path`'s suffix picks the format); `orientation`: its EXIF orientation tag
    (6: a camera held upright stores the picture turned, and says so)."""
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.fromarray(frame_pixels(0, width, height)).save(path, exif=exif)
    return path


def shown(frames) -> list[int]:
    """Which source frame (modulo PERIOD) each of `frames` shows: its grey level, read away from the marker."""
    found = []
    for frame in frames:
        grey = int(np.median(frame[frame.shape[0] // 2:, frame.shape[1] // 2:]))
        found.append(min(range(PERIOD), key=lambda i: abs(level(i) - grey)))
    return found


def marker_corner(frame: np.ndarray) -> str:
    """Where the white marker block is: "top-left", "top-right", "bottom-left" or "bottom-right"."""
    h, w = frame.shape[:2]
    corners = {"top-left": frame[: h // 8, : w // 8], "top-right": frame[: h // 8, -(w // 8):],
               "bottom-left": frame[-(h // 8):, : w // 8], "bottom-right": frame[-(h // 8):, -(w // 8):]}
    return max(corners, key=lambda name: corners[name].mean())
