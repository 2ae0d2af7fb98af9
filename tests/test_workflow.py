"""The product end to end on the tiny preset: real Snakemake runs through the CLI, real zarr stores, real MP4s
read back with PyAV. Slow-ish (each stage job is a Python process): the whole file takes a few minutes."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwizard.checkpoints.tiny import write_tiny_weights
from pixelwizard.io.latent_store import read_store
from pixelwizard.io.video import read_video

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [("fox", "A red fox trots through fresh snow at dawn."), ("waves", "Waves roll onto a black sand beach."),
           ("market", "A street market in the rain at night."), ("owl", "An owl blinks on a mossy branch.")]
STAGES = ("text", "lr", "lr_preview", "hr", "decode")
TAG = "p2w-ov1-24fps"  # the tiny preset's decode settings


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return write_tiny_weights(tmp_path_factory.mktemp("weights"), seed=0)


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in prompts))
    return path


def command(weights, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "cli.py"), "generate", str(prompts), "--out", str(out), "--preset", "tiny",
            "--ckpt-dir", str(weights["ckpt_dir"]), "--hr-ckpt", str(weights["hr_ckpt"]),
            "--lr-ckpt", str(weights["lr_ckpt"]), "--cores", "2", "--shard-size", "2", "--quiet", *extra]


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def events(out: Path) -> list[dict]:
    path = out / "logs" / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by SIGKILL
            pass
    return parsed


def computed(out: Path, since: int = 0) -> Counter:
    return Counter((e["stage"], e["id"]) for e in events(out)[since:] if e["action"] == "computed")


def frames_of(out: Path, prompt_id: str, tag: str = TAG) -> np.ndarray:
    frames, fps = read_video(out / "videos" / tag / f"{prompt_id}.mp4")
    assert fps == 24
    return frames


@pytest.fixture(scope="module")
def reference(weights_dir, tmp_path_factory):
    """An uninterrupted run of all four prompts."""
    root = tmp_path_factory.mktemp("reference")
    out = root / "out"
    run_cli(command(weights_dir, write_prompts(root / "prompts.jsonl"), out))
    return out


def test_full_pipeline_writes_decodable_videos(reference, weights_dir):
    for prompt_id, _ in PROMPTS:
        frames = frames_of(reference, prompt_id)
        assert frames.shape == (9, 160, 256, 3)  # tiny preset: 9 frames of 256x160
        assert frames.std() > 1  # not a flat image
        preview, fps = read_video(reference / "lr" / f"{prompt_id}.mp4")
        assert preview.shape == (9, 64, 128, 3) and fps == 24
        sheet = Image.open(reference / "videos" / TAG / f"{prompt_id}.png")
        assert sheet.size[0] >= 256 and sheet.size[1] >= 160
        latent, attrs = read_store(reference / "hr" / f"{prompt_id}.zarr")
        assert latent["latent"].shape == (48, 3, 10, 16)
        provenance = attrs["provenance"]
        assert provenance["id"] == prompt_id and provenance["settings"]["hr_steps"] == 4
        assert provenance["dit"]["model.pt"]["size"] == weights_dir["hr_ckpt"].stat().st_size
    assert computed(reference) == Counter({(s, p): 1 for s in STAGES for p, _ in PROMPTS})


def test_rerun_recomputes_nothing(reference, weights_dir):
    before = len(events(reference))
    run_cli(command(weights_dir, reference.parent / "prompts.jsonl", reference))
    assert computed(reference, before) == Counter()


def kill_when(process: subprocess.Popen, out: Path, stage: str, timeout: float = 300) -> None:
    """SIGKILL the whole run (Snakemake and its jobs) once the first prompt of `stage` is computed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["stage"] == stage and e["action"] == "computed" for e in events(out)):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            pytest.fail(f"the run ended before stage {stage} computed anything")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"stage {stage} computed nothing within {timeout} s")


@pytest.mark.parametrize("stage", ["text", "lr", "hr", "decode"])
def test_sigkill_mid_stage_then_resume_is_bit_identical(reference, weights_dir, tmp_path, stage):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    process = subprocess.Popen(command(weights_dir, prompts, out), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(process, out, stage)
    done_before = {p for (s, p) in computed(out) if s == stage}
    assert len(done_before) < len(PROMPTS), "the kill came too late to interrupt the stage"
    run_cli(command(weights_dir, prompts, out))
    # Every prompt computed exactly once per stage across the killed run and the resumed one.
    assert computed(out) == Counter({(s, p): 1 for s in STAGES for p, _ in PROMPTS})
    for prompt_id, _ in PROMPTS:
        assert np.array_equal(frames_of(out, prompt_id), frames_of(reference, prompt_id))
        ours, theirs = (read_store(o / "hr" / f"{prompt_id}.zarr")[0]["latent"] for o in (out, reference))
        assert ours.equal(theirs)


def test_review_lr_then_edits_additions_and_settings_rerun_exactly_what_changed(weights_dir, tmp_path):
    prompts_path = tmp_path / "prompts.jsonl"
    out = tmp_path / "out"
    write_prompts(prompts_path, PROMPTS[:3])

    # --until lr: text, LR anchors and their previews only.
    run_cli(command(weights_dir, prompts_path, out, "--until", "lr"))
    assert computed(out) == Counter({(s, p): 1 for s in ("text", "lr", "lr_preview") for p, _ in PROMPTS[:3]})
    assert read_video(out / "lr" / "market.mp4")[0].shape == (9, 64, 128, 3)
    assert not (out / "hr").exists() and not (out / "videos").exists()

    # After the review: drop one prompt, edit one, add one. HR and decode run for what is left; text and LR
    # only for the edited and the new prompt.
    edited = [PROMPTS[0], ("waves", "Waves crash onto a rocky shore at sunset."), PROMPTS[3]]
    write_prompts(prompts_path, edited)
    before = len(events(out))
    run_cli(command(weights_dir, prompts_path, out))
    expected = {(s, p): 1 for s in ("text", "lr", "lr_preview") for p in ("waves", "owl")}
    expected.update({(s, p): 1 for s in ("hr", "decode") for p, _ in edited})
    assert computed(out, before) == Counter(expected)
    assert not (out / "hr" / "market.zarr").exists()

    # An HR setting re-runs HR and decode for everyone, and nothing upstream.
    before = len(events(out))
    run_cli(command(weights_dir, prompts_path, out, "--hr-steps", "3"))
    assert computed(out, before) == Counter({(s, p): 1 for s in ("hr", "decode") for p, _ in edited})
    _, attrs = read_store(out / "hr" / "fox.zarr")
    assert attrs["provenance"]["settings"]["hr_steps"] == 3


def test_user_errors_are_one_line(weights_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "../escape", "text": "x"}\n')
    result = subprocess.run(command(weights_dir, bad, tmp_path / "out"), capture_output=True, text=True)
    assert result.returncode == 2
    assert "bad.jsonl:1:" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run(command(weights_dir, write_prompts(tmp_path / "p.jsonl"), tmp_path / "out",
                                    "--set", "frames=10"), capture_output=True, text=True)
    assert result.returncode == 2 and "frames=10: must be 4n+1" in result.stderr


def test_redecode_touches_only_decode(reference):
    """Last in the file: it records other decode settings in the reference run's configuration."""
    old = {p: (reference / "videos" / TAG / f"{p}.mp4").stat().st_mtime_ns for p, _ in PROMPTS}
    before = len(events(reference))
    run_cli([sys.executable, str(REPO / "cli.py"), "decode", str(reference), "--num-patches", "3", "--overlap", "2"])
    assert computed(reference, before) == Counter({("decode", p): 1 for p, _ in PROMPTS})
    for prompt_id, _ in PROMPTS:
        assert (reference / "videos" / TAG / f"{prompt_id}.mp4").stat().st_mtime_ns == old[prompt_id]
        new = frames_of(reference, prompt_id, "p3w-ov2-24fps")
        assert new.shape == (9, 160, 256, 3)
        assert not np.array_equal(new, frames_of(reference, prompt_id))  # other patches: another blend
