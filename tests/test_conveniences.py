"""What users ask for, on the tiny weights: one prompt without a file, per-prompt seeds and negative prompts, HR and
decode for chosen ids only, and the Python API making the same video as the CLI."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conftest import PROMPTS, computed, events, frames_of, generate, pixelwizard, write_prompts

from pixelwizard import Pipeline
from pixelwizard.checkpoints import wan
from pixelwizard.io.latent_store import read_store
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.io.video import read_video, to_uint8
from pixelwizard.pipeline.prompts import derived_id
from pixelwizard.sampling.seeds import prompt_seed

FOX = "A red fox trots through fresh snow at dawn."


@pytest.mark.slow
def test_the_python_api_makes_the_cli_video_of_a_single_prompt(weights, tmp_path):
    out = tmp_path / "out"
    generate(weights, None, out, "--prompt", FOX, "--no-previews")
    prompt_id = derived_id(FOX)
    assert (out / "prompts.jsonl").read_text().count("\n") == 1
    pipe = Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], lr_ckpt=weights["lr_ckpt"], preset="tiny")
    written = pipe.generate(FOX, path=tmp_path / "api.mp4")
    assert np.array_equal(read_video(written)[0], frames_of(out, prompt_id))  # the same video, frame for frame
    video = pipe.generate(FOX)  # models already loaded: the frames as an array, before any encoding
    assert video.frames.shape == (9, 160, 256, 3) and video.frames.dtype == np.uint8 and video.fps == 24
    latent = read_store(out / "hr" / f"{prompt_id}.zarr")[0]["latent"]  # the CLI's HR latent, decoded here
    chunks = decode_patched(wan.load_vae(weights["ckpt_dir"]), latent, num_patches=2, patch_dim="w", overlap=1)
    assert np.array_equal(video.frames, np.concatenate([to_uint8(chunk) for chunk in chunks]))
    other = pipe.generate(FOX, seed=1)
    assert not np.array_equal(other.frames, video.frames)


@pytest.mark.slow
def test_per_prompt_seed_and_negative_prompt_enter_the_run(weights, tmp_path):
    out = tmp_path / "out"
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, PROMPTS[:3], fox={"seed": 7}, waves={"negative_prompt": "blurry, static"})
    generate(weights, prompts, out, "--until", "lr", "--no-previews")
    fox = read_store(out / "lr" / "fox.zarr")[1]["provenance"]
    market = read_store(out / "lr" / "market.zarr")[1]["provenance"]
    assert fox["seed"] == prompt_seed(7, "fox", "lr") and market["seed"] == prompt_seed(0, "market", "lr")
    assert len([k for k in computed(out) if k[0] == "uncond"]) == 2  # the run's negative prompt and waves' own
    waves = read_store(out / "lr" / "waves.zarr")[1]["provenance"]
    assert waves["inputs"]["uncond"] != market["inputs"]["uncond"]

    write_prompts(prompts, PROMPTS[:3], fox={"seed": 7}, waves={"negative_prompt": "dark"})
    before = len(events(out))
    generate(weights, prompts, out, "--until", "lr", "--no-previews")
    assert {k for k in computed(out, before) if k[0] != "uncond"} == {("lr", "waves")}


@pytest.mark.slow
def test_only_runs_hr_and_decode_for_the_chosen_ids(weights, tmp_path):
    out = tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.jsonl")
    generate(weights, prompts, out, "--until", "lr")
    chosen = tmp_path / "selection.txt"
    chosen.write_text("owl\nfox\n")
    before = len(events(out))
    generate(weights, prompts, out, "--only", chosen)
    assert computed(out, before) == Counter({(s, p): 1 for s in ("hr", "decode") for p in ("fox", "owl")})
    assert sorted(p.stem for p in (out / "lr").glob("*.zarr")) == sorted(p for p, _ in PROMPTS)  # all kept
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:5]]
            for line in pixelwizard("status", out).stdout.splitlines() if line.startswith("│")}
    # done, stale, held: the prompts not chosen are held back by --only, not missing
    assert rows["lr"] == ["4", "·", "·"] and rows["hr"] == rows["decode p2w-ov1-24fps"] == ["2", "·", "2"]
