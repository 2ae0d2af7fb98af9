from __future__ import annotations

import os
import signal
import threading
import time

import av
import numpy as np
import pytest
import torch
from PIL import Image

from pixelwizard.checkpoints.tiny import TINY_VAE, randomize_
from pixelwizard.io.contact_sheet import ContactSheet
from pixelwizard.io.render import render_video
from pixelwizard.io.video import VideoWriter, check_frame_size, read_video, to_uint8
from pixelwizard.models.vae import WanVAE

H, W = 96, 160


def smooth_chunks(frames: int = 9) -> list[torch.Tensor]:
    """A moving colour gradient in [-1, 1], chunked like the VAE's output: 1, 4, 4, ... frames."""
    t, y, x = torch.meshgrid(torch.arange(frames, dtype=torch.float32), torch.linspace(0, 1, H),
                             torch.linspace(0, 1, W), indexing="ij")
    video = torch.stack([0.8 * torch.sin(3 * x + 0.2 * t), 0.8 * torch.cos(2 * y - 0.1 * t), x + y - 1])  # [3, F, H, W]
    return list(video.split([1] + [4] * ((frames - 1) // 4), dim=1))


def encoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("encode ")]


def write(path, chunks, **kw) -> VideoWriter:
    with VideoWriter(path, W, H, **kw) as writer:
        for chunk in chunks:
            writer.write(chunk)
    return writer


def test_to_uint8_matches_the_original_rounding() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.999, 1.0, 3.0])
    chunk = x.view(1, 1, 1, -1).expand(3, 2, 1, -1)
    out = to_uint8(chunk)
    assert out.shape == (2, 1, 7, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    # (x + 1) / 2 * 255 truncated: -0.5 -> 63.75 -> 63, 0 -> 127.5 -> 127, 0.999 -> 254.87 -> 254.
    assert out[0, 0, :, 0].tolist() == [0, 0, 63, 127, 254, 255, 255]
    chunk = torch.zeros(3, 1, 2, 2)
    chunk[1] = 1.0
    assert to_uint8(chunk)[0, 0, 0].tolist() == [127, 255, 127]  # channels last


@pytest.mark.parametrize("fps", [None, 30])
def test_writer_roundtrip(tmp_path, fps) -> None:
    chunks = smooth_chunks()
    path = tmp_path / "clip.mp4"
    write(path, chunks, **({} if fps is None else {"fps": fps}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # the temp file was renamed
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height, stream.frames) == (W, H, 9)
    data = path.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # faststart
    frames, rate = read_video(path)
    assert rate == (fps or 24) and frames.shape == (9, H, W, 3) and frames.dtype == np.uint8
    expected = np.concatenate([to_uint8(c) for c in chunks])
    # Measured mean |error| 1.46 (of 255), max 7. Most of it is swscale's yuv420p -> rgb24 readback, about 1.2
    # levels dark on average (crf 0 reads back with mean 1.3); the encoded planes themselves are unbiased.
    error = np.abs(frames.astype(np.int16) - expected)
    assert error.mean() < 3 and error.max() < 24


def test_odd_size_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"161x96.*even.*160x96 or 162x96"):
        VideoWriter(tmp_path / "odd.mp4", 161, 96)
    with pytest.raises(ValueError, match="positive"):
        check_frame_size(0, 96)
    check_frame_size(3840, 2144)
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_no_file(tmp_path) -> None:
    chunks = smooth_chunks()
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "clip.mp4", W, H) as writer:
            writer.write(chunks[0])
            writer.write(chunks[1])
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match="no frames"):
        write(tmp_path / "empty.mp4", [])
    with pytest.raises(ValueError, match="160x96"):
        write(tmp_path / "wrong.mp4", [torch.zeros(3, 1, H, W + 2)])
    assert list(tmp_path.iterdir()) == []


def test_contact_sheet(tmp_path) -> None:
    chunks = smooth_chunks()
    writer = write(tmp_path / "clip.mp4", chunks, total_frames=9)
    sheet_path = tmp_path / "sheet.png"
    writer.contact_sheet().save(sheet_path)
    sheet = np.asarray(Image.open(sheet_path))
    # 8 of 9 frames (0, 1, 2, 3, 5, 6, 7, 8), 4 columns, frames narrower than 256 px are kept at full size.
    assert sheet.shape == (2 * H, 4 * W, 3)
    frames = np.concatenate([to_uint8(c) for c in chunks])
    assert np.array_equal(sheet[:H, :W], frames[0])
    assert np.array_equal(sheet[H:, :W], frames[5])
    assert np.array_equal(sheet[H:, 3 * W:], frames[8])

    collector = ContactSheet(total_frames=121)
    assert sorted(collector.picks) == [0, 17, 34, 51, 69, 86, 103, 120]
    collector.add(np.zeros((121, 64, 512, 3), dtype=np.uint8))
    assert collector.image().size == (4 * 256, 2 * 32)


def test_readback_is_the_mp4(tmp_path) -> None:
    """The frames handed to `readback` (the encoder's packets decoded as they come out) are the MP4's frames."""
    seen, threads = [], set()

    def readback(frames: np.ndarray) -> None:
        seen.append(frames)
        threads.add(threading.current_thread())

    path = tmp_path / "clip.mp4"
    write(path, smooth_chunks(13), readback=readback)
    frames, _ = read_video(path)
    assert frames.shape == (13, H, W, 3)
    assert np.array_equal(np.concatenate(seen), frames)
    assert threading.main_thread() not in threads  # encoded and read back off the caller's thread
    assert not encoder_threads()


def test_encoder_thread_errors_reach_the_caller(tmp_path) -> None:
    # libx264 opens at the first frame, in the encoder thread, and rejects the preset there.
    with pytest.raises(av.error.FFmpegError):
        write(tmp_path / "clip.mp4", smooth_chunks(), preset="no-such-preset")

    def broken(frames: np.ndarray) -> None:
        raise RuntimeError("meter broke")

    with pytest.raises(RuntimeError, match="meter broke"):
        write(tmp_path / "clip.mp4", smooth_chunks(), readback=broken)
    assert list(tmp_path.iterdir()) == []
    assert not encoder_threads()


class StopRequested(Exception):
    pass


@pytest.mark.parametrize("stop", ["exception", "sigint"])
def test_render_stopped_from_on_step_leaves_nothing(tmp_path, stop) -> None:
    """A custom exception or a real SIGINT (KeyboardInterrupt) from `on_step` once the encoder thread has started
    the MP4 (x264 emits its first packet after ~40 frames): no MP4, no contact sheet, no temporary file, no
    encoder thread."""
    vae = randomize_(WanVAE(TINY_VAE), seed=1).eval()
    latent = torch.randn(48, 13, 2, 2, generator=torch.Generator().manual_seed(0))  # 49 frames of 32 x 32
    out = tmp_path / "videos"
    partial = []

    def on_step(step: int, total: int) -> None:
        if step < total:
            return
        for _ in range(600):  # the last chunk is queued; wait for the encoder to have written part of the MP4
            partial.extend(out.glob(".clip.mp4.tmp-*"))  # files.temp_sibling
            if partial:
                break
            time.sleep(0.1)
        if stop == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # Python raises KeyboardInterrupt here, in the main thread
            raise AssertionError("SIGINT was not delivered")
        raise StopRequested

    # Python's own SIGINT handler, also where pytest started with SIGINT ignored (a script's background job)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with torch.inference_mode(), pytest.raises(KeyboardInterrupt if stop == "sigint" else StopRequested):
            render_video(vae, latent, out / "clip.mp4", fps=24, sheet_path=out / "clip.png", on_step=on_step)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert partial  # the stop came while a partial MP4 existed
    assert list(out.iterdir()) == []
    assert not encoder_threads()
