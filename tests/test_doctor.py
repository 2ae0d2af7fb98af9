"""`pixelwizard doctor` on the CPU (no GPU: it says so and still reports the rest), its trap decisions with the
versions as parameters, and the preset memory verdicts for GPUs of a given size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import tomllib
from conftest import pixelwizard

from pixelwizard.doctor import render
from pixelwizard.gpu_traps import MIN_TORCH, known_traps
from pixelwizard.pipeline.gpu_memory import Models, decode_gib, fit, hr_gib
from pixelwizard.pipeline.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]


def test_doctor_without_a_gpu_reports_the_rest(tmp_path):
    out = tmp_path / "not" / "made"
    data = json.loads(pixelwizard("doctor", "--out", out, "--json").stdout)
    assert data["gpus"] == [] and data["cuda"] is None
    assert data["attention"]["sdpa"] == "ok" and data["attention_auto"] == "sdpa"
    assert data["attention"]["sdpa-cudnn"].startswith("it needs a CUDA GPU")
    assert data["attention"]["flash3"].startswith("it needs the flash_attn_interface package")
    assert [t["name"] for t in data["traps"]][:2] == ["torch below 2.11",
                                                      "half-precision Conv3d off cuDNN 9.8.0 to below 9.15.0"]
    assert data["disk"]["path"] == str(tmp_path.resolve()) and data["disk"]["free_gib"] > 0
    presets = {p["preset"]: p for p in data["presets"]}
    assert set(presets) == set(PRESETS) - {"tiny"}
    assert presets["4k"]["largest"] == "hr" and presets["4k"]["fits"] is None
    text = "\n".join(render(data))  # what `pixelwizard doctor` prints without --json
    assert "GPUs       none: torch sees no CUDA device" in text
    assert re.search(r"preset     4k: largest stage hr 20\.\d GiB .*: no GPU to check against", text)


def test_traps_follow_the_versions():
    def applies(torch_version, cudnn, capability):  # torch floor, Conv3d gate, FSDP2 + inference mode, Hopper SDPA
        return [t.applies for t in known_traps(torch_version, cudnn, capability)]

    assert applies("2.9.1+cu128", 91002, (9, 0)) == [True, True, True, True]
    assert applies("2.11.0+cu130", 91900, (8, 0)) == [False, False, True, False]
    assert applies("2.14.0", None, None) == [False, False, False, False]


def test_the_torch_floor_is_pyprojects():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}" in dependencies


def test_presets_on_gpus_of_each_size():
    models = Models.of()
    four_k = PRESETS["4k"]
    roomy, small = fit(four_k, models, 80.0), fit(four_k, models, 16.0, max_gpus=4)
    assert roomy.fits and roomy.remedies == {} and roomy.largest == "hr"
    assert small.fits is False and set(small.remedies) == {"hr", "decode"}
    assert small.remedies["hr"][0].startswith("--offload") and small.remedies["hr"][1].startswith("--hr-gpus 3")
    patches = int(small.remedies["decode"][0].split()[1])
    assert decode_gib(four_k, models, patches) <= 15.0 < decode_gib(four_k, models, patches - 1)
    assert hr_gib(four_k, models, gpus=4) < hr_gib(four_k, models, gpus=2) < hr_gib(four_k, models)
    assert fit(four_k, models, 8.0).remedies["text"] == []  # the umT5 weights alone are 10.6 GiB: nothing helps
