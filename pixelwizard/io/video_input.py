"""A user's video as an anchor source: which frames a run takes (`probe_clip`, before anything runs), those frames
as the display shows them (`clip_frames`), and each one fitted to the anchor size (`fit_frame`).

Frames are taken at the source's timing: the clip is a grid of times t0 + k / rate from `start` seconds after the
first frame, at the stream's average rate (or the rate asked for), and each time takes the frame shown nearest to
it. A constant-rate video at its own rate so gives every frame once; a variable-rate one, or another rate, repeats
or skips frames as playback would. The clip is the largest 4n+1 frames the video has, at most the preset's.

Any container and codec the PyAV build reads; rotation metadata (the display matrix) is applied to every frame.
Fitting follows the original upscale script's data operator (dataset_upsample.py, ImageCropAndResize): bilinear
resize of the whole frame to cover the anchor, centre crop, [0, 255] -> [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image

from pixelwizard.io.input_file import InputFileError, existing_file

MIN_FRAMES = 9  # 3 latent frames: the shortest clip the HR model is run on
MIN_SIDE = 16  # pixels: the smallest video side taken
SCAN_MARGIN_S = 2  # seconds of packets read past the clip's end: decode order runs ahead of display order
FIX_VIDEO = "give a video file PyAV reads (MP4, MOV, MKV, WebM), or remove it from the batch"


@dataclass(frozen=True)
class Clip:
    """Which frames of a video a run takes, fixed before any frame is decoded (JSON-ready: the rate as a string)."""

    start: float  # seconds after the first frame
    origin: str  # the first frame's presentation time in seconds, a fraction like "1/24"
    rate: str  # frames per second of the clip, a fraction like "30000/1001"
    frames: int  # 4n+1
    available: int  # frames the video has from `start` on at this rate
    width: int  # display size: rotation applied
    height: int
    rotation: int  # degrees counterclockwise the stored frames turn for display

    @property
    def fps(self) -> Fraction:
        return Fraction(self.rate)

    def times(self) -> list[Fraction]:
        """The presentation times of the clip's frames: its grid."""
        t0 = Fraction(self.origin) + Fraction(self.start)
        return [t0 + k / self.fps for k in range(self.frames)]

    @property
    def portrait(self) -> bool:
        return self.height > self.width

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def largest_4n1(n: int) -> int:
    return n - (n - 1) % 4


def _open(path: Path) -> av.container.InputContainer:
    existing_file(path, "video")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise InputFileError(path, f"not a video PyAV can read ({_reason(err)})", FIX_VIDEO) from None


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise InputFileError(path, "holds no video frames", FIX_VIDEO)
    return container.streams.video[0]


def _seconds(value: int | None, time_base: Fraction) -> Fraction | None:
    return None if value is None else value * time_base


def probe_clip(path: Path, *, max_frames: int, start: float = 0.0, fps: int | None = None) -> Clip:
    """The clip a run takes from the video at `path`: read from packet timestamps and one decoded frame, whatever
    the file's length. Raises InputFileError (one line: the file, the problem, the fix)."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        rate = Fraction(fps) if fps else stream.average_rate or stream.guessed_rate
        if not rate:
            raise InputFileError(path, "gives no frame rate", "give the rate to take it at (--fps, or \"fps\" in the "
                                 "JSONL line)")
        rate = Fraction(rate)
        base = stream.time_base
        first = end = first_frame = None
        try:
            for packet in container.demux(stream):
                pts = _seconds(packet.pts, base)
                if pts is None or packet.size == 0:
                    continue
                first = pts if first is None else min(first, pts)
                end = max(end or pts, pts + (_seconds(packet.duration, base) or 1 / rate))
                if first_frame is None:
                    first_frame = next(iter(stream.decode(packet)), None)
                if pts > first + Fraction(start) + (max_frames + 1) / rate + SCAN_MARGIN_S and first_frame:
                    break
            if first_frame is None:  # a decoder that holds frames back gives them at the end
                first_frame = next(iter(stream.decode(None)), None)
        except av.error.FFmpegError as err:
            raise InputFileError(path, f"is damaged ({_reason(err)})", "re-export or re-download the video") from None
    if first is None or first_frame is None:
        raise InputFileError(path, "holds no video frames", FIX_VIDEO)
    rotation = int(first_frame.rotation) % 360
    width, height = (first_frame.height, first_frame.width) if rotation % 180 else (first_frame.width,
                                                                                      first_frame.height)
    if min(width, height) < MIN_SIDE:
        raise InputFileError(path, f"is {width}x{height} pixels, too small to upscale", f"give a video at least "
                             f"{MIN_SIDE} pixels on each side")
    # Times in milliseconds (MKV, WebM) are rounded: a grid time within half a frame of the end still has its frame.
    available = max(0, math.floor((end - first - Fraction(start)) * rate + Fraction(1, 2)))
    if available < MIN_FRAMES:
        where = f"frame{'' if available == 1 else 's'}" + (f" from {start:g} s on" if start else "")
        raise InputFileError(path, f"has {available} {where} at {float(rate):.4g} fps, fewer than the "
                             f"{MIN_FRAMES} a clip needs", "give a longer video" + (" or an earlier --start"
                                                                                      if start else ""))
    return Clip(start=float(start), origin=str(first), rate=str(rate), frames=largest_4n1(min(available, max_frames)),
                available=available, width=width, height=height, rotation=rotation)


def clip_frames(path: Path, clip: Clip) -> Iterator[np.ndarray]:
    """The clip's frames [H, W, 3] uint8 RGB as the display shows them, in order: for each time of the clip's grid
    the decoded frame nearest to it. Raises InputFileError if the video cannot be decoded that far."""
    path = Path(path)
    grid = clip.times()
    k, previous = 0, None  # the next grid time; the last frame before it, with its time

    def show(frame: av.VideoFrame) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), clip.rotation // 90))

    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            # To the keyframe at or before the clip; frames before it only serve as `previous`.
            container.seek(int(grid[0] / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = frame.pts * stream.time_base
                while k < len(grid) and t >= grid[k]:
                    nearer_previous = previous is not None and grid[k] - previous[1] <= t - grid[k]
                    yield show(previous[0] if nearer_previous else frame)
                    k += 1
                if k == len(grid):
                    return
                previous = (frame, t)
        except av.error.FFmpegError as err:
            raise InputFileError(path, f"is damaged ({_reason(err)})", "re-export or re-download the video") from None
    if previous is None or grid[k] - previous[1] > 1 / clip.fps:
        shown = "no frame" if previous is None else f"frames up to {float(previous[1]):.3f} s"
        raise InputFileError(path, f"decodes to {shown}, short of the {clip.frames} frames it announced",
                             "the file is damaged: re-export or re-download it")
    for _ in range(k, len(grid)):  # the last frame is the nearest to the grid's last times
        yield show(previous[0])


def fit_frame(frame: np.ndarray, width: int, height: int) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, height, width] float32 in [-1, 1]: bilinear resize to cover, centre crop (the
    original's ImageCropAndResize through torchvision on a PIL image, and its ToTensor + Normalize(0.5, 0.5))."""
    image = Image.fromarray(frame)
    scale = max(width / image.width, height / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    top, left = int(round((image.height - height) / 2.0)), int(round((image.width - width) / 2.0))
    image = image.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
    return pixels.sub_(0.5).div_(0.5)
