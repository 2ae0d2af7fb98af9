"""Shared fixtures and helpers: tiny checkpoints in the real layouts, prompt files, and `pixelwizard` runs as real
processes reading back what they wrote."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from pixelwizard.checkpoints.tiny import TINY_DIT, randomize_, write_tiny_checkpoint, write_tiny_weights
from pixelwizard.checkpoints.trainer import save_trainer_checkpoint
from pixelwizard.io.latent_store import write_store
from pixelwizard.io.sidecar import write_sidecar
from pixelwizard.io.video import read_video
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline.events import read_events
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.stages import STAGES as STAGE_TABLE
from pixelwizard.pipeline.stamp_index import ShardIndex, store_files

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [("fox", "A red fox trots through fresh snow at dawn."), ("waves", "Waves roll onto a black sand beach."),
           ("market", "A street market in the rain at night."), ("owl", "An owl blinks on a mossy branch.")]
STAGES = ("text", "lr", "preview", "hr", "decode")  # the per-prompt stages (uncond is per distinct text)
TAG = "p2w-ov1-24fps"  # the tiny preset's decode settings


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A complete tiny Wan2.2-TI2V-5B checkpoint directory (shared, read-only for tests)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "Wan2.2-TI2V-5B", seed=0)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """The tiny Wan2.2 directory and the PixelWizard lr/ and tiny/ model.pt (shared, read-only for tests)."""
    return write_tiny_weights(tmp_path_factory.mktemp("weights"), seed=0)


@pytest.fixture(scope="session")
def slow_hr(tmp_path_factory) -> tuple[str, ...]:
    """generate's options for HR steps long enough to stop a job in one: 1536x960, with a tiny HR checkpoint that
    records that size as its own (the tiny/ one is refused there up front)."""
    width, height = 1536, 960
    path = tmp_path_factory.mktemp("weights-slow-hr") / "model.pt"
    save_trainer_checkpoint(randomize_(HRDiT(TINY_DIT), 4), path, resolution=(width, height))
    return "--hr-ckpt", str(path), "--set", f"width={width}", "--set", f"height={height}"


def write_prompts(path: Path, prompts=PROMPTS, **extra) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": t, **extra.get(i, {})}) + "\n" for i, t in prompts))
    return path


def pixelwizard(*args: str, check: bool = True, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """`pixelwizard ARGS` as a user runs it (a fresh process), output captured."""
    result = subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, **popen)
    if check:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def generate_args(weights, prompts: Path | None, out: Path, *extra: str) -> list[str]:
    source = [str(prompts)] if prompts is not None else []
    return ["generate", *source, "--out", str(out), "--preset", "tiny", "--ckpt-dir", str(weights["ckpt_dir"]),
            "--hr-ckpt", str(weights["hr_ckpt"]), "--lr-ckpt", str(weights["lr_ckpt"]), "--cores", "2",
            "--quiet", *extra]


def generate(weights, prompts: Path | None, out: Path, *extra: str, check: bool = True,
             timeout: float = 600) -> subprocess.CompletedProcess:
    return pixelwizard(*generate_args(weights, prompts, out, *extra), check=check, timeout=timeout)


def popen_generate(weights, prompts: Path, out: Path, *extra: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "pixelwizard.workflow.cli", *generate_args(weights, prompts, out, *extra)]
    return subprocess.Popen(command, **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen})


@pytest.fixture(scope="session")
def finished_run(weights, tmp_path_factory):
    """An uninterrupted run of all four prompts, two per job. Shared and read-only: a test that changes a run works
    on `copy_run` of it."""
    root = tmp_path_factory.mktemp("finished")
    out = root / "out"
    generate(weights, write_prompts(root / "prompts.jsonl"), out, "--shard-size", "2")
    return out


# The sources of the upscaling tests: every kind of video the lr stage takes (and a saved latent and an image).
VIDEOS = {  # id: (file, frames, width, height, write_video options)
    "land": ("land.mp4", 14, 200, 120, {}),
    "port": ("port.mp4", 12, 120, 200, {"rate": 30}),
    "odd": ("odd.mkv", 10, 65, 47, {"codec": "ffv1", "pix_fmt": "yuv444p"}),
    "phone": ("phone.mp4", 9, 96, 64, {"rotation": -90}),  # stored landscape, shown upright
    "vfr": ("vfr.mp4", 11, 96, 64, {"times_ms": [0, 40, 60, 130, 170, 200, 300, 310, 330, 400, 420]}),
}


def write_sources(folder: Path) -> list[dict]:
    """The upscaling tests' videos, saved latent and image in `folder`, and their JSONL lines (paths relative)."""
    from media import write_image, write_video

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for prompt_id, (name, frames, width, height, options) in VIDEOS.items():
        write_video(folder / name, frames, width, height, **options)
        lines.append({"id": prompt_id, "video": name, **({"text": "a tower"} if prompt_id == "port" else {})})
    torch.save({"latent": torch.randn(48, 3, 4, 8, generator=torch.Generator().manual_seed(1))}, folder / "saved.pt")
    write_image(folder / "still.jpg", 96, 64, orientation=6)  # shown upright: 64 wide, 96 high
    return [*lines, {"id": "saved", "latent": "saved.pt", "text": "waves"},
            {"id": "still", "image": "still.jpg", "text": "a lighthouse in the rain"}]


@pytest.fixture(scope="session")
def upscaled_run(weights, tmp_path_factory):
    """One uninterrupted run of a JSONL batch mixing a text prompt, videos of every kind, a saved latent and an
    image prompt, four per job, 13 frames (a video with fewer runs at the largest 4n+1 it has). Shared and
    read-only (tests that change it work on a copy)."""
    root = tmp_path_factory.mktemp("upscaled")
    lines = [{"id": "fox", "text": PROMPTS[0][1]}, *write_sources(root)]
    (root / "batch.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    generate(weights, root / "batch.jsonl", root / "out", "--shard-size", "4", "--frames", "13", timeout=1200)
    return root / "out"


def copy_run(out: Path, dest: Path) -> Path:
    """A copy of a whole run directory, as a move to another file system would make it."""
    subprocess.run(["cp", "-a", str(out), str(dest)], check=True)
    return dest


def events(out: Path) -> list[dict]:
    return read_events(out / "logs" / "events.jsonl")[0]


def computed(out: Path, since: int = 0) -> Counter:
    """(stage, id) -> how often it was computed, from event `since` on."""
    return Counter((e["stage"], e["id"]) for e in events(out)[since:] if e["action"] == "computed")


def frames_of(out: Path, prompt_id: str, tag: str = TAG) -> np.ndarray:
    frames, fps = read_video(out / "decode" / tag / f"{prompt_id}.mp4")
    assert fps == 24
    return frames


def wait_for_job(process: subprocess.Popen, out: Path, stage: str, doing: str, timeout: float = 300) -> dict:
    """Wait until a job of `stage` is in a step of `doing` (its record in OUT: "sampling fox 1/4", not "sampling fox"
    of a prompt begun, which loads the model first); returns the record."""
    deadline = time.monotonic() + timeout
    while True:
        for path in (out / ".pixelwizard" / "jobs").glob(f"{stage}-*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if re.fullmatch(rf"{re.escape(doing)} \S+ \d+/\d+", record["doing"]):
                return record
        assert process.poll() is None, process.stderr.read()[-3000:] if process.stderr else "the run ended"
        assert time.monotonic() < deadline, f"no {stage} job was {doing!r} within {timeout} s"
        time.sleep(0.1)


def pixelwizard_processes(out: Path) -> list[psutil.Process]:
    """Every process working for the run in OUT: its command line names OUT, or it runs in OUT."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if str(out) in " ".join(process.info["cmdline"] or []) or process.info["cwd"] == str(out):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def python_env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def make_outputs(provenance: Provenance, stages=tuple(STAGE_TABLE), index: bool = False) -> None:
    """Every output of `stages` as a finished job leaves it (zarr stores, or an MP4 stand-in with its sidecar), and
    with `index` the stamp index its job writes (one job per stage)."""
    for stage in stages:
        shard = ShardIndex(provenance.layout, stage, provenance.tag(stage), "00000")
        for item in provenance.snapshot.items(stage):
            path, digest = provenance.output(stage, item.id), provenance.digest(stage, item.id)
            if STAGE_TABLE[stage].output == "zarr":
                write_store(path, {"x": torch.zeros(2)}, provenance.attrs(stage, item.id))
                shard.add(item.id, store_files(path), digest)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"video")
                sidecar = provenance.layout.sidecar(stage, item.id, provenance.tag(stage))
                write_sidecar(sidecar, provenance.attrs(stage, item.id), [path])
                shard.add(item.id, [path, sidecar], digest, seconds=1.0, time=1e9)
        if index:
            shard.save()
