"""The product end to end on the tiny preset: real Snakemake runs through the CLI, real zarr stores, real MP4s read
back with PyAV. Each stage job is a Python process, so every run takes tens of seconds on 2 cores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import yaml
from conftest import (
    PROMPTS,
    REPO,
    STAGES,
    TAG,
    computed,
    copy_run,
    events,
    frames_of,
    generate,
    pixelwizard,
    popen_generate,
    write_prompts,
)
from PIL import Image

from pixelwizard.io.latent_store import read_store
from pixelwizard.io.video import read_video


def test_full_pipeline_writes_decodable_videos(finished_run, weights):
    for prompt_id, _ in PROMPTS:
        frames = frames_of(finished_run, prompt_id)
        assert frames.shape == (9, 160, 256, 3)  # tiny preset: 9 frames of 256x160
        assert frames.std() > 1  # not a flat image
        preview, fps = read_video(finished_run / "preview" / f"{prompt_id}.mp4")
        assert preview.shape == (9, 64, 128, 3) and fps == 24
        sheet = Image.open(finished_run / "decode" / TAG / f"{prompt_id}.png")
        assert sheet.size[0] >= 256 and sheet.size[1] >= 160
        assert_metrics(finished_run / "decode" / TAG / f"{prompt_id}.json", boundaries=[128])
        latent, attrs = read_store(finished_run / "hr" / f"{prompt_id}.zarr")
        assert latent["latent"].shape == (48, 3, 10, 16)
        provenance = attrs["provenance"]
        assert provenance["id"] == prompt_id and provenance["settings"]["hr_steps"] == 4
        assert set(provenance["checkpoints"]) == {"hr_dit"} and set(provenance["inputs"]) == {"text", "uncond", "lr"}
    expected = {(s, p): 1 for s in STAGES for p, _ in PROMPTS}
    assert {k: v for k, v in computed(finished_run).items() if k[0] != "uncond"} == expected
    assert [n for (s, _), n in computed(finished_run).items() if s == "uncond"] == [1]  # the one negative prompt


def assert_metrics(sidecar, boundaries):
    """The video's quality numbers, measured on the MP4 as written, are in its JSON."""
    metrics = json.loads(sidecar.read_text())["metrics"]
    assert metrics["frames"] == 9 and metrics["mhd_mse"] > 0 and metrics["sharpness"] > 0
    assert metrics["flicker"]["mean"] > 0 and metrics["seam"]["boundaries"] == boundaries


def test_rerun_recomputes_nothing(finished_run, weights, tmp_path):
    out = copy_run(finished_run, tmp_path / "out")
    before = len(events(out))
    generate(weights, finished_run.parent / "prompts.jsonl", out, "--shard-size", "2")
    assert computed(out, before) == Counter()


def kill_when(process, out, stage: str, timeout: float = 300) -> None:
    """SIGKILL the whole run (the CLI, Snakemake and its jobs) once the first prompt of `stage` is computed."""
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


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["text", "lr", "hr", "decode"])
def test_sigkill_mid_stage_then_resume_is_bit_identical(finished_run, weights, tmp_path, stage):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    process = popen_generate(weights, prompts, out, "--shard-size", "2", start_new_session=True)
    kill_when(process, out, stage)
    done_before = {p for (s, p) in computed(out) if s == stage}
    assert len(done_before) < len(PROMPTS), "the kill came too late to interrupt the stage"
    generate(weights, prompts, out, "--shard-size", "2")
    # Every prompt computed exactly once per stage across the killed run and the resumed one.
    assert {k: v for k, v in computed(out).items() if k[0] != "uncond"} == \
        {(s, p): 1 for s in STAGES for p, _ in PROMPTS}
    for prompt_id, _ in PROMPTS:
        assert np.array_equal(frames_of(out, prompt_id), frames_of(finished_run, prompt_id))
        ours, theirs = (read_store(o / "hr" / f"{prompt_id}.zarr")[0]["latent"] for o in (out, finished_run))
        assert ours.equal(theirs)


@pytest.mark.slow
def test_review_lr_then_edits_additions_and_settings_rerun_exactly_what_changed(weights, tmp_path):
    prompts_path = tmp_path / "prompts.jsonl"
    out = tmp_path / "out"
    write_prompts(prompts_path, PROMPTS[:3])

    # --until lr: text, LR anchors and their previews only.
    generate(weights, prompts_path, out, "--until", "lr")
    assert {k: v for k, v in computed(out).items() if k[0] != "uncond"} == \
        Counter({(s, p): 1 for s in ("text", "lr", "preview") for p, _ in PROMPTS[:3]})
    assert read_video(out / "preview" / "market.mp4")[0].shape == (9, 64, 128, 3)
    assert not (out / "hr").exists() and not (out / "decode").exists()

    # After the review: drop one prompt, edit one, add one. HR and decode run for what is left; text and LR
    # only for the edited and the new prompt.
    edited = [PROMPTS[0], ("waves", "Waves crash onto a rocky shore at sunset."), PROMPTS[3]]
    write_prompts(prompts_path, edited)
    before = len(events(out))
    generate(weights, prompts_path, out)
    expected = {(s, p): 1 for s in ("text", "lr", "preview") for p in ("waves", "owl")}
    expected.update({(s, p): 1 for s in ("hr", "decode") for p, _ in edited})
    assert computed(out, before) == Counter(expected)
    assert not (out / "hr" / "market.zarr").exists()

    # An HR setting re-runs HR and decode for everyone, and nothing upstream.
    before = len(events(out))
    generate(weights, prompts_path, out, "--hr-steps", "3")
    assert computed(out, before) == Counter({(s, p): 1 for s in ("hr", "decode") for p, _ in edited})
    _, attrs = read_store(out / "hr" / "fox.zarr")
    assert attrs["provenance"]["settings"]["hr_steps"] == 3


def test_user_errors_are_one_line(weights, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "../escape", "text": "x"}\n')
    result = generate(weights, bad, tmp_path / "out", check=False)
    assert result.returncode == 2
    assert "bad.jsonl:1:" in result.stderr and "Traceback" not in result.stderr
    result = generate(weights, write_prompts(tmp_path / "p.jsonl"), tmp_path / "out", "--set", "frames=10",
                      check=False)
    assert result.returncode == 2 and "frames=10: must be 4n+1" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was written for a refused run


def test_redecode_touches_only_decode(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "out")
    old = {p: (out / "decode" / TAG / f"{p}.mp4").stat().st_mtime_ns for p, _ in PROMPTS}
    config = (out / "pixelwizard.yaml").read_bytes()
    before = len(events(out))
    pixelwizard("decode", out, "--num-patches", "3", "--overlap", "2", "--quiet")
    assert computed(out, before) == Counter({("decode", p): 1 for p, _ in PROMPTS})
    assert (out / "pixelwizard.yaml").read_bytes() == config  # the run's configuration stays as it was
    for prompt_id, _ in PROMPTS:
        assert (out / "decode" / TAG / f"{prompt_id}.mp4").stat().st_mtime_ns == old[prompt_id]
        new = frames_of(out, prompt_id, "p3w-ov2-24fps")
        assert new.shape == (9, 160, 256, 3)
        assert_metrics(out / "decode" / "p3w-ov2-24fps" / f"{prompt_id}.json", boundaries=[80, 160])
        assert not np.array_equal(new, frames_of(out, prompt_id))  # other patches: another blend


@pytest.mark.slow
def test_a_run_made_by_snakemake_directly_works_with_status_report_and_decode(weights, tmp_path):
    """The README's `snakemake --directory OUT --configfile my-run.yaml`: OUT records the run when it starts (its dry
    run writes nothing), so `status`, `report` and `decode` read it as a run of `generate`."""
    out = tmp_path / "out"
    out.mkdir()
    run = {"prompts": str(write_prompts(tmp_path / "my-prompts.jsonl", PROMPTS[:2])), "preset": "tiny",
           "until": None, **{k: str(v) for k, v in weights.items()}, "shard_sizes": {"hr": 1}}
    (tmp_path / "my-run.yaml").write_text(yaml.safe_dump(run))
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(out),
                 "--configfile", str(tmp_path / "my-run.yaml"), "--cores", "2"]
    subprocess.run([*snakemake, "--dry-run"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert [p.name for p in out.iterdir()] == [".snakemake"]  # Snakemake's own metadata folder, nothing of ours
    subprocess.run(snakemake, capture_output=True, text=True, check=True, cwd=tmp_path)

    shown = pixelwizard("status", out).stdout
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in shown.splitlines()
            if line.startswith("│")}
    assert rows["hr"] == rows[f"decode {TAG}"] == "2"
    assert "2 prompts" in pixelwizard("report", out).stdout
    pixelwizard("decode", out, "--overlap", "0", "--quiet")
    assert frames_of(out, "fox", "p2w-ov0-24fps").shape == (9, 160, 256, 3)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in pixelwizard("status", out).stdout.splitlines() if line.startswith("│")}
    assert rows[f"decode {TAG}"] == rows["decode p2w-ov0-24fps"] == "2"
