"""A user's video as an anchor source, on real files written with PyAV: which frames a run takes (at the source's
timing, the largest 4n+1, from --start, at --fps), as the display shows them (rotation), fitted to the anchor as
the original's data operator does, and one line naming the file and the fix for every video that cannot be used."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from media import PERIOD, level, marker_corner, shown, write_video
from PIL import Image

from pixelwizard.io.input_file import InputFileError
from pixelwizard.io.video_input import clip_frames, fit_frame, probe_clip


def take(path, **request):
    clip = probe_clip(path, max_frames=request.pop("max_frames", 121), **request)
    return clip, list(clip_frames(path, clip))


def test_a_clip_is_the_largest_4n1_frames_at_the_video_s_own_rate(tmp_path):
    clip, frames = take(write_video(tmp_path / "a.mp4", 14, 200, 120))
    assert (clip.frames, clip.available, clip.fps, clip.portrait) == (13, 14, 24, False)
    assert (clip.width, clip.height, clip.rotation) == (200, 120, 0)
    assert [f.shape for f in frames] == [(120, 200, 3)] * 13
    assert shown(frames) == [i % PERIOD for i in range(13)]  # every frame once, in order
    clip, frames = take(tmp_path / "a.mp4", max_frames=9)
    assert clip.frames == 9 and shown(frames) == list(range(9))


def test_start_and_fps_take_frames_at_those_times(tmp_path):
    path = write_video(tmp_path / "a.mp4", 30)  # 24 fps: frame i shows at i / 24 s
    clip, frames = take(path, start=0.25, max_frames=9)
    assert clip.available == 24 and shown(frames) == [(6 + i) % PERIOD for i in range(9)]
    clip, frames = take(path, fps=12, max_frames=9)  # half the rate: every other frame
    assert clip.fps == 12 and clip.available == 15 and shown(frames) == [(2 * i) % PERIOD for i in range(9)]
    clip, frames = take(path, fps=48, max_frames=9)  # twice the rate: each frame held for two
    assert shown(frames) == [i // 2 for i in range(9)]


def test_a_variable_frame_rate_video_is_taken_at_its_frames_times(tmp_path):
    times = [0, 40, 60, 130, 170, 200, 300, 310, 330, 400, 420, 500, 520]
    path = write_video(tmp_path / "vfr.mp4", len(times), times_ms=times)
    clip, frames = take(path)
    rate = clip.fps  # the stream's average rate
    assert 24 < rate < 26 and clip.frames == 13  # 13 frames in 13 / rate seconds
    nearest = [min(range(len(times)), key=lambda i: (abs(Fraction(times[i], 1000) - k / rate), i)) for k in range(13)]
    assert shown(frames) == nearest
    assert nearest != list(range(13))  # some frames held, some skipped: the source's timing, not its frame order


@pytest.mark.parametrize(("rotation", "size", "corner"), [
    (90, (48, 64), "bottom-left"),  # the display turns the stored frame 90 degrees counterclockwise
    (-90, (48, 64), "top-right"),  # a phone held upright records this
    (180, (64, 48), "bottom-right"),
])
def test_rotation_metadata_turns_the_frames_as_the_display_does(tmp_path, rotation, size, corner):
    clip, frames = take(write_video(tmp_path / "r.mp4", 9, 64, 48, rotation=rotation))
    assert (clip.width, clip.height) == size and clip.portrait == (size[1] > size[0])
    assert frames[0].shape == (size[1], size[0], 3) and marker_corner(frames[0]) == corner
    assert shown(frames) == list(range(9))


def test_an_odd_sized_video_in_another_container_and_codec(tmp_path):
    path = write_video(tmp_path / "odd.mkv", 9, 65, 47, codec="ffv1", pix_fmt="yuv444p")
    clip, frames = take(path)
    assert (clip.width, clip.height, clip.frames) == (65, 47, 9) and frames[0].shape == (47, 65, 3)
    assert frames[3][40, 60].tolist() == [level(3)] * 3  # lossless: the exact pixels


def test_fit_frame_covers_the_anchor_and_crops_the_centre():
    frame = np.zeros((100, 300, 3), np.uint8)
    frame[:, 100:200] = 255  # the middle third white
    pixels = fit_frame(frame, 32, 64)  # a portrait anchor from a landscape frame: scaled to 192x64, 32 kept
    assert pixels.shape == (3, 64, 32) and pixels.dtype == torch.float32
    assert torch.equal(pixels, torch.ones_like(pixels))  # only the centre is left, and white is exactly 1
    # The original's operator on a 131x77 frame for a 64x32 anchor: scale max(64/131, 32/77), PIL bilinear resize
    # to 64x38 (rounded), centre crop from row round(6 / 2) = 3; ToTensor, Normalize(0.5, 0.5).
    frame = np.random.default_rng(0).integers(0, 256, (77, 131, 3), dtype=np.uint8)
    expected = Image.fromarray(frame).resize((64, 38), Image.Resampling.BILINEAR).crop((0, 3, 64, 35))
    expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    assert torch.equal(fit_frame(frame, 64, 32), expected)


def bad_videos(tmp_path):
    """(path, what the line says) for each kind of unusable video."""
    write_video(tmp_path / "good.mp4", 30)
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.mp4").write_text("not a video at all\n")
    write_video(tmp_path / "empty.mp4", 0)
    write_video(tmp_path / "four.mp4", 4)
    write_video(tmp_path / "tiny.mp4", 9, 8, 8)
    return [
        (tmp_path / "missing.mp4", "no such file; check the video path"),
        (tmp_path / "text.mp4", "not a video PyAV can read"),
        (tmp_path / "empty.mp4", "holds no video frames"),
        (tmp_path / "four.mp4", "has 4 frames at 24 fps, fewer than the 9 a clip needs; give a longer video"),
        (tmp_path / "truncated.mp4", "not a video PyAV can read"),
        (tmp_path / "tiny.mp4", "is 8x8 pixels, too small to upscale"),
    ]


def test_every_unusable_video_is_one_line_naming_it_and_the_fix(tmp_path):
    for path, fragment in bad_videos(tmp_path):
        with pytest.raises(InputFileError) as caught:
            probe_clip(path, max_frames=121)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message
        assert "; " in message  # the problem, then the fix
    with pytest.raises(InputFileError, match="from 2 s on at 24 fps, fewer than the 9 a clip needs; give a longer "
                                             "video or an earlier --start"):
        probe_clip(tmp_path / "good.mp4", max_frames=121, start=2.0)
