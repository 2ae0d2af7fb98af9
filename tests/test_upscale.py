"""Bring your own anchor, end to end on the tiny weights: a JSONL batch mixing a text prompt, videos of every kind
(landscape, portrait at 30 fps, an odd-sized MKV, a phone's rotated one, a variable-rate one) and a saved latent runs
through encode, HR and decode as one run; every output names its source; a video replaced by other content reruns
exactly its outputs; a run killed in the encode stage resumes; every unusable input is refused up front with one
line per file and nothing in OUT changes."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VIDEOS, computed, copy_run, events, generate, pixelwizard, popen_generate, write_sources
from media import marker_corner, shown, write_video
from test_workflow import kill_when

from pixelwizard import Pipeline
from pixelwizard.io.latent_store import read_store
from pixelwizard.io.sidecar import read_sidecar
from pixelwizard.io.video import read_video

TAG = "p2w-ov1-24fps"
PER_VIDEO = ("input", "lr", "preview", "hr", "decode")


def tree(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under OUT with its size and mtime."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_every_unusable_input_is_one_line_naming_it_and_the_fix_and_out_is_unchanged(finished_run, weights, tmp_path):
    out = copy_run(finished_run, tmp_path / "out")
    before = tree(out)
    folder = tmp_path / "in"
    folder.mkdir()
    write_video(folder / "good.mp4", 30)
    data = (folder / "good.mp4").read_bytes()
    (folder / "corrupt.mp4").write_bytes(data[: len(data) // 2])
    (folder / "text.mp4").write_text("not a video\n")
    write_video(folder / "empty.mp4", 0)
    write_video(folder / "four.mp4", 4)
    bad = {"missing.mp4": "no such file", "text.mp4": "not a video PyAV can read", "empty.mp4": "holds no video frames",
           "four.mp4": "has 4 frames at 24 fps, fewer than the 9 a clip needs",
           "corrupt.mp4": "not a video PyAV can read"}
    result = pixelwizard("upscale", *(folder / name for name in ["good.mp4", *bad]), "--out", out, "--preset", "tiny",
                         "--ckpt-dir", weights["ckpt_dir"], "--hr-ckpt", weights["hr_ckpt"], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == len(bad)  # one line per unusable file, the good one not among them
    for line, (name, problem) in zip(lines, bad.items()):
        assert line.startswith(f"{folder / name}: {problem}") and "; " in line, line  # the file, what, the fix
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
    assert [e for e in events(out) if e.get("action") in ("warning", "failed")] == []


@pytest.mark.slow
def test_replacing_a_video_with_other_content_reruns_exactly_its_outputs(upscaled_run, weights, tmp_path):
    root = tmp_path / "run"
    subprocess.run(["cp", "-a", str(upscaled_run.parent), str(root)], check=True)  # the sources and OUT, moved
    out = root / "out"
    before = len(events(out))
    generate(weights, root / "batch.jsonl", out, "--shard-size", "4", "--frames", "13")
    assert computed(out, before) == Counter()  # the same contents elsewhere: nothing to make again
    write_video(root / "land.mp4", 14, 200, 120, rate=25)  # other content under the same name
    status = pixelwizard("status", out).stdout
    assert "lr: stale land: its video's content changed" in status
    before = len(events(out))
    generate(weights, root / "batch.jsonl", out, "--shard-size", "4", "--frames", "13")
    assert computed(out, before) == Counter({(stage, "land"): 1 for stage in PER_VIDEO})


@pytest.mark.slow
def test_a_run_killed_in_the_encode_stage_resumes_and_gives_the_same_anchors(upscaled_run, weights, tmp_path):
    lines = write_sources(tmp_path)
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    process = popen_generate(weights, tmp_path / "batch.jsonl", out, "--until", "lr", "--frames", "13",
                             "--shard-size", "lr=1", start_new_session=True)
    kill_when(process, out, "lr")
    killed = {p for (s, p) in computed(out) if s == "lr"}
    assert 0 < len(killed) < len(lines), "the kill came too late to interrupt the stage"
    generate(weights, tmp_path / "batch.jsonl", out, "--until", "lr", "--frames", "13", "--shard-size", "lr=1")
    assert {p: n for (s, p), n in computed(out).items() if s == "lr"} == {line["id"]: 1 for line in lines}
    for line in lines:
        ours, theirs = (read_store(o / "lr" / f"{line['id']}.zarr")[0]["latent"] for o in (out, upscaled_run))
        assert torch.equal(ours, theirs), line["id"]


@pytest.mark.slow
def test_upscale_and_the_python_api_make_the_same_video(weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the video named as a user types it: its id derives from that
    write_video(Path("upright.mp4"), 10, 64, 96, rate=30)
    out = tmp_path / "out"
    pixelwizard("upscale", "upright.mp4", "--prompt", "a tower", "--out", out, "--preset", "tiny", "--no-previews",
                "--ckpt-dir", weights["ckpt_dir"], "--hr-ckpt", weights["hr_ckpt"], "--cores", "2", "--quiet")
    (prompt,) = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert prompt["video"] == str(tmp_path / "upright.mp4") and prompt["text"] == "a tower"
    cli, rate = read_video(out / "decode" / TAG / f"{prompt['id']}.mp4")
    assert cli.shape == (9, 256, 160, 3) and rate == 30  # upright: the tiny preset turned; the video's own rate
    pipe = Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], preset="tiny")
    written = pipe.upscale("upright.mp4", prompt="a tower", path=tmp_path / "api.mp4")
    assert np.array_equal(read_video(written)[0], cli)  # the same video, frame for frame
    video = pipe.upscale("upright.mp4", prompt="a tower")
    assert video.frames.shape == (9, 256, 160, 3) and video.fps == 30
