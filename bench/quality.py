"""What the quality numbers and the read-back of the MP4 cost per frame, at 4K by default, on this CPU.

    python bench/quality.py [--size 3840x2144] [--frames 9] [--out bench/results/quality_cpu.jsonl]

One json line per run, seconds per frame:
- meter_s: `QualityMeter.add` (all four metrics, with the 4K preset's 3 seams);
- encode_s: libx264 at the writer's settings (crf 18, preset medium), rgb24 frames in, packets out;
- readback_s: the read-back alone: those packets through an H.264 decoder plus the rgb24 conversion;
- writer_s / writer_measured_s: `VideoWriter` end to end (enter to exit) without a read-back and with
  `readback=meter.add`; to_uint8_s: the caller's own share of `write()` before the hand-off to the encoder
  thread (on a GPU, the device-side conversion and the copy of uint8 frames to the host).
Each figure is wall time, and *_cpu the process's CPU time (all threads) over the same span: on a shared machine
the CPU figure is the steadier one. Content is synthetic (a moving smooth field, a fine texture and mild noise);
x264's speed depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from report import report

from pixelwizard.io.patch_geometry import seam_boundaries
from pixelwizard.io.quality import QualityMeter
from pixelwizard.io.video import VideoWriter, to_uint8


def synthetic_chunks(width: int, height: int, frames: int) -> list[torch.Tensor]:
    """[3, f, H, W] chunks in [-1, 1] chunked like the VAE's output (1, 4, 4, ...)."""
    gen = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    video = []
    for t in range(frames):
        field = 0.5 * torch.sin(x / 300 + t / 5) * torch.cos(y / 200)
        field += 0.25 * torch.sin((x + 3 * t) / 7) * torch.sin(y / 9)
        rgb = torch.stack([field, 0.8 * field + 0.1, -field]) + 0.03 * torch.randn(3, height, width, generator=gen)
        video.append(rgb.clamp(-1, 1))
    video = torch.stack(video, dim=1)
    return list(video.split([1] + [4] * ((frames - 1) // 4), dim=1))


def meter_for(width: int, height: int) -> QualityMeter:
    return QualityMeter(width, height, seam_boundaries(width // 16, 4, 3, 16), axis="w")


class Timer:
    """Wall and process CPU seconds of a `with` block, per frame."""

    def __init__(self, frames: int) -> None:
        self.frames = frames

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = (time.perf_counter() - self.wall) / self.frames
        self.cpu = (time.process_time() - self.cpu) / self.frames


def write(path: Path, chunks: list[torch.Tensor], width: int, height: int, frames: int, readback=None) -> Timer:
    with Timer(frames) as timer, VideoWriter(path, width, height, readback=readback) as writer:
        for chunk in chunks:
            writer.write(chunk)
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="3840x2144", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=9, help="4n+1")
    parser.add_argument("--out", help="append json lines here")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    chunks = synthetic_chunks(width, height, args.frames)
    frames = np.concatenate([to_uint8(c) for c in chunks])
    n = len(frames)

    with Timer(n) as to_uint8_time:
        for chunk in chunks:
            to_uint8(chunk)

    meter = meter_for(width, height)
    meter.add(frames[:1])  # first call: lazy initialisation inside torch
    with Timer(n) as meter_time:
        meter.add(frames)
    buffers = sum(t.numel() * t.element_size() for t in (meter.rgb, meter.resized, meter.luma, meter.previous_luma,
                                                          meter.laplacian))

    with tempfile.TemporaryDirectory() as tmp:
        container = av.open(os.path.join(tmp, "raw.mp4"), "w", format="mp4")
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        with Timer(n) as encode_time:
            packets = [p for f in frames for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24"))]
            packets += stream.encode()
        decoder = av.CodecContext.create("h264", "r")
        decoder.extradata = stream.codec_context.extradata
        with Timer(n) as readback_time:
            decoded = [f.to_ndarray(format="rgb24") for p in [*packets, None] for f in decoder.decode(p)]
        container.close()
        assert len(decoded) == n

        plain = write(Path(tmp) / "plain.mp4", chunks, width, height, n)
        measured = write(Path(tmp) / "measured.mp4", chunks, width, height, n, readback=meter_for(width, height).add)

    results = {"size": f"{width}x{height}", "frames": n, "torch_threads": torch.get_num_threads(),
               "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "meter_buffers_mib": buffers / 2**20,
               "bytes_per_frame": sum(p.size for p in packets) / n}
    for name, timer in (("meter", meter_time), ("encode", encode_time), ("readback", readback_time),
                        ("to_uint8", to_uint8_time), ("writer", plain), ("writer_measured", measured)):
        results[f"{name}_s"], results[f"{name}_cpu_s"] = round(timer.wall, 4), round(timer.cpu, 4)
    report(json.dumps(results), args.out)


if __name__ == "__main__":
    main()
