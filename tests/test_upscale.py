"""Bring your own anchor, end to end on the tiny weights: a JSONL batch mixing a text prompt, videos of every kind
(landscape, portrait at 30 fps, an odd-sized MKV, a phone's rotated one, a variable-rate one) and a saved latent runs
through encode, HR and decode as one run, and every output names its source; `pixelwizard upscale` killed in the
encode stage resumes, makes the Python API's video, and reruns exactly the outputs of a video replaced by other
content; every unusable input is refused up front with one line per file and nothing in OUT changes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VIDEOS, computed, copy_run, events, generate, pixelwizard, write_sources
from media import marker_corner, shown, write_image, write_video
from test_video_input import bad_videos
from test_workflow import kill_when

from pixelwizard import Pipeline
from pixelwizard.checkpoints import wan
from pixelwizard.io.image import load_image
from pixelwizard.io.latent_store import read_store
from pixelwizard.io.sidecar import read_sidecar
from pixelwizard.io.video import read_video
from pixelwizard.pipeline import steps
from pixelwizard.pipeline.prompts import read_prompts
from pixelwizard.pipeline.run_config import RunConfig

TAG = "p2w-ov1-24fps"


def weights_of(out: Path) -> Path:
    """The Wan2.2 checkpoint directory a run used."""
    return Path(RunConfig.load(out / "pixelwizard.yaml").ckpt_dir)


def tree(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under OUT with its size and mtime."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_every_unusable_input_is_one_line_naming_it_and_the_fix_and_out_is_unchanged(finished_run, weights, tmp_path):
    out = copy_run(finished_run, tmp_path / "out")
    before = tree(out)
    folder = tmp_path / "in"
    folder.mkdir()
    bad = bad_videos(folder)  # a missing file, a text file, no frames, 4 frames, a truncated MP4, 8x8 pixels
    (folder / "text.png").write_text("not an image\n")
    write_image(folder / "dot.png", 1, 1)
    bad += [(folder / "text.png", "not an image PIL can read"), (folder / "dot.png", "image is 1x1 pixels, too small")]
    kind = {".png": "image", ".mp4": "video"}
    lines = [{"video": "good.mp4"}, *({kind[path.suffix]: path.name, "text": "x"} for path, _ in bad)]
    batch = folder / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = generate(weights, batch, out, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    said = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.strip()]
    assert len(said) == len(bad)  # one line per unusable file, the good one not among them
    for line, (path, problem) in zip(said, bad):
        assert line.startswith(f"{path}: ") and problem in line and "; " in line, line  # the file, what, the fix
    result = generate(weights, None, out, "--image", folder / "dot.png", check=False)  # --image without --prompt
    assert result.returncode == 2 and result.stderr.startswith("error: --image needs --prompt TEXT")
    assert tree(out) == before  # nothing in OUT changed, not even the digest cache


@pytest.mark.slow
def test_a_mixed_batch_keeps_each_clip_and_names_its_source(upscaled_run):
    out = upscaled_run
    assert {k for k, n in computed(out).items() if n != 1} == set()  # everything made once
    for prompt_id, (name, frames, width, height, options) in VIDEOS.items():
        source = read_sidecar(out / "decode" / TAG / f"{prompt_id}.json")
        facts = source["provenance"]["source"]
        assert source["prompt"]["video"] == str(out.parent / name) and facts["kind"] == "video"
        assert facts["sha256"] == hashlib.sha256((out.parent / name).read_bytes()).hexdigest() and facts["start"] == 0.0
        shown_w, shown_h = (height, width) if options.get("rotation") else (width, height)
        portrait = shown_h > shown_w
        video, fps = read_video(out / "decode" / TAG / f"{prompt_id}.mp4")
        clip = 13 if prompt_id == "land" else 9  # --frames 13: the largest 4n+1 each video has, at most 13
        assert facts["frames"] == clip and video.shape == (clip, *((256, 160) if portrait else (160, 256)), 3)
        assert fps == pytest.approx(float(Fraction(facts["rate"])))
        assert source["provenance"]["settings"]["patch_dim"] == ("h" if portrait else "w")  # the long side
        latent, attrs = read_store(out / "lr" / f"{prompt_id}.zarr")
        assert latent["latent"].shape == (48, (clip - 1) // 4 + 1, *((8, 4) if portrait else (4, 8)))
        assert set(attrs["provenance"]["checkpoints"]) == {"vae"} and "text" not in attrs["provenance"]
        frames_in, rate_in = read_video(out / "input" / f"{prompt_id}.mp4")
        assert frames_in.shape == (clip, shown_h - shown_h % 2, shown_w - shown_w % 2, 3) and rate_in == fps
        assert read_sidecar(out / "input" / f"{prompt_id}.json")["metrics"]["frames"] == clip
    assert read_video(out / "decode" / TAG / "port.mp4")[1] == 30  # the video's own rate
    phone = read_video(out / "input" / "phone.mp4")[0]
    assert marker_corner(phone[0]) == "top-right" and shown(phone) == list(range(9))  # turned upright, in order
    vfr = read_sidecar(out / "input" / "vfr.json")["provenance"]["source"]
    assert Fraction(vfr["rate"]) != 24 and vfr["frames"] == 9
    saved = read_sidecar(out / "decode" / TAG / "saved.json")
    assert saved["provenance"]["source"]["kind"] == "latent" and saved["prompt"]["text"] == "waves"
    assert not (out / "input" / "saved.mp4").exists() and not (out / "input" / "fox.mp4").exists()
    assert read_video(out / "decode" / TAG / "fox.mp4")[0].shape == (13, 160, 256, 3)  # the text prompt, as before
    # The image prompt: upright by its EXIF orientation, so portrait; its first frame pinned into the LR anchor.
    still = read_sidecar(out / "decode" / TAG / "still.json")
    assert still["prompt"]["image"] == str(out.parent / "still.jpg")
    assert still["provenance"]["source"]["kind"] == "image"
    assert read_video(out / "decode" / TAG / "still.mp4")[0].shape == (13, 256, 160, 3)
    anchor, attrs = read_store(out / "lr" / "still.zarr")
    assert set(attrs["provenance"]["checkpoints"]) == {"lr_dit", "vae"}
    first = steps.encode_first_frame(wan.load_vae(weights_of(out)), load_image(out.parent / "still.jpg"), 64, 128)
    assert anchor["latent"].shape == (48, 4, 8, 4) and torch.allclose(anchor["latent"][:, :1], first, atol=1e-5)
    assert [e for e in events(out) if e.get("action") in ("warning", "failed")] == []


@pytest.mark.slow
def test_upscale_resumes_after_a_kill_in_encode_matches_the_api_and_reruns_exactly_what_a_new_video_feeds(
        upscaled_run, weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # videos named as a user types them: their ids derive from that
    write_sources(tmp_path)
    args = ["upscale", "land.mp4", "port.mp4", "odd.mkv", "--prompt", "a tower", "--out", "out", "--preset", "tiny",
            "--frames", "13", "--no-previews", "--shard-size", "lr=1", "--ckpt-dir", weights["ckpt_dir"],
            "--hr-ckpt", weights["hr_ckpt"], "--cores", "2", "--quiet"]
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "pixelwizard.workflow.cli", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    kill_when(process, out, "lr")
    assert 0 < len({p for (s, p) in computed(out) if s == "lr"}) < 3, "the kill came too late to interrupt encoding"
    pixelwizard(*args)  # the same command again
    ids = {Path(p.video).stem: p.id for p in read_prompts(out / "prompts.jsonl")}
    assert {k: n for k, n in computed(out).items() if k[0] == "lr"} == {("lr", i): 1 for i in ids.values()}
    for name, prompt_id in ids.items():  # encoding depends on the video's content alone
        ours, theirs = (read_store(o / "lr" / f"{i}.zarr")[0]["latent"] for o, i in ((out, prompt_id),
                                                                                   (upscaled_run, name)))
        assert torch.equal(ours, theirs), name

    pipe = Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], preset="tiny", frames=13)
    cli, rate = read_video(out / "decode" / TAG / f"{ids['port']}.mp4")
    written = pipe.upscale("port.mp4", prompt="a tower", path=tmp_path / "api.mp4")
    assert np.array_equal(read_video(written)[0], cli) and read_video(written)[1] == rate == 30  # frame for frame

    write_video(tmp_path / "land.mp4", 14, 200, 120, rate=25)  # other content under the same name
    assert f"lr: 1 stale ({ids['land']}): its video's content changed" in pixelwizard("status", out).stdout
    before = len(events(out))
    pixelwizard(*args)
    assert computed(out, before) == Counter({(stage, ids["land"]): 1 for stage in ("input", "lr", "hr", "decode")})


@pytest.mark.slow
def test_an_image_with_the_experimental_hr_pin_holds_its_first_frame_at_the_hr_size(weights, tmp_path):
    image = write_image(tmp_path / "still.png", 96, 64)
    out = tmp_path / "out"
    generate(weights, None, out, "--prompt", "a lighthouse", "--image", image, "--set", "hr_first_frame=true",
             "--until", "hr", "--no-previews")
    (prompt,) = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    latent, attrs = read_store(out / "hr" / f"{prompt['id']}.zarr")
    assert attrs["provenance"]["settings"]["hr_first_frame"] is True and attrs["prompt"]["image"] == str(image)
    first = steps.encode_first_frame(wan.load_vae(weights["ckpt_dir"]), load_image(image), 256, 160)
    assert torch.allclose(latent["latent"][:, :1], first, atol=1e-5)
