"""bench/gpu.py as it must run on a bare GPU image, checked on the CPU: a venv with only that image's packages (torch,
einops, safetensors, transformers, numpy, pyyaml, rich, typer, pillow: no zarr, av, snakemake, ftfy) and the project
on PYTHONPATH runs every section at tiny size (--smoke) to the end; a SIGTERM mid-run leaves every finished section
in the JSON. And the FLOPs per HR forward that the bench derives from the shapes, against torch's own counter."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixelwizard.models.config import DiTConfig
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import gpu  # noqa: E402

BARE_IMAGE = ("einops", "safetensors", "transformers", "numpy", "pyyaml", "rich", "typer", "pillow")
ABSENT = ("zarr", "av", "ftfy", "snakemake", "numcodecs", "google_crc32c")


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> Path:
    """A venv with the bare GPU image's packages only (the CPU build of torch for its CUDA one), built once per
    test session: both bench tests of a CI run share it."""
    venv = tmp_path_factory.mktemp("bare-image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1200)  # the local CPU wheel, as `make setup`
    subprocess.run([*pip, *BARE_IMAGE], check=True, timeout=1200)
    present = subprocess.run([str(python), "-c", f"import importlib.util as u; print([m for m in {ABSENT!r} "
                              "if u.find_spec(m)])"], capture_output=True, text=True, check=True).stdout.strip()
    assert present == "[]", f"the bare venv has {present}"
    return python


def bench(python: Path, out: Path, *args: str) -> list[str]:
    return [str(python), str(REPO / "bench" / "gpu.py"), "--smoke", "--out", str(out), *args]


def bare_env() -> dict[str, str]:
    return {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": "/tmp"}


@pytest.mark.slow
def test_smoke_runs_every_section_on_a_bare_image(bare_python, tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run(bench(bare_python, out), capture_output=True, text=True, timeout=1500, env=bare_env(),
                         cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {name: s["status"] for name, s in results["sections"].items()} == dict.fromkeys(gpu.SECTIONS, "done")
    assert [row["section"] for row in results["plan"]] == list(gpu.SECTIONS)
    assert results["doctor"]["gpus"] == [] and results["attention_backends"] == ["sdpa"]
    assert {(r["preset"], r["attention"]) for r in results["hr_forward"]} == {("2k", "sdpa"), ("4k", "sdpa")}
    assert all(r["forward_s"] > 0 and r["flop"] > 0 for r in results["hr_forward"])
    assert {(r["stage"], r["preset"]) for r in results["stages"]} == {
        (s, p) for s in ("text", "lr", "hr", "decode") for p in ("2k", "4k")}
    assert [(r["preset"], r["layout"], r["patches"]) for r in results["decode"]] == [  # NCDHW: the CPU stage's layout
        ("2k", "ncdhw", 2), ("4k", "ncdhw", 3), ("4k", "channels_last", 3), ("4k", "ncdhw", 5)]
    assert all(r["clip_s"] > 0 and r["clip_frames"] == 9 for r in results["decode"])
    assert [(r["preset"], r["cudnn_benchmark"]) for r in results["autotune"]] == [("2k", True), ("4k", True)]
    assert set(results["lr"]) >= {"sequential_step_s", "batched_step_s", "batched_prompt_s"}  # no CUDA graph here
    fidelity = results["fidelity"]
    assert 0 < fidelity["latent_rel_rms"]["sdpa"] < 0.1 and 0 < fidelity["pixel_mean_abs"] < 0.05
    assert results["load"]["dit_s"] > 0 and results["offload"][0]["forward_s"] > 0
    assert {"2k_video_s", "4k_video_s", "native_2k_50_steps_s"} <= set(results["summary"])
    assert "section hr (~" in run.stdout and "  hr_forward: {" in run.stdout  # figures printed as they come


@pytest.mark.slow
def test_sigterm_mid_run_keeps_the_finished_sections(bare_python, tmp_path):
    out = tmp_path / "gpu.json"
    process = subprocess.Popen(bench(bare_python, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=bare_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:  # until section hr is done and a later one under way
            done = json.loads(out.read_text())["sections"] if out.exists() else {}
            if done.get("hr", {}).get("status") == "done" and "stages" in done:
                break
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    results = json.loads(out.read_text())
    statuses = {name: s["status"] for name, s in results["sections"].items()}
    assert statuses["doctor"] == statuses["matmul"] == statuses["hr"] == "done"
    assert statuses["stages"] == "interrupted" and results["sections"]["stages"]["reason"] == "stopped by SIGTERM"
    assert all(statuses[name] == "not run" for name in gpu.SECTIONS[gpu.SECTIONS.index("stages") + 1:])
    assert len(results["hr_forward"]) == 2 and results["doctor"]["disk"]["free_gib"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name != "gpu.json"]  # no half-written temporary left


@pytest.mark.slow
def test_a_budget_skips_what_cannot_finish(bare_python, tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run(bench(bare_python, out, "--budget-s", "0.5", "--sections", "doctor", "matmul", "hr"),
                         capture_output=True, text=True, timeout=600, env=bare_env(), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    sections = json.loads(out.read_text())["sections"]
    assert all(s["status"] == "skipped" and "of the budget left" in s["reason"] for s in sections.values())


CONFIG = DiTConfig(dim=64, ffn_dim=128, freq_dim=32, in_dim=8, out_dim=8, num_heads=4, num_layers=2, text_dim=32,
                   text_len=16)


def counted(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # attention as its two matmuls
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def test_forward_flops_from_the_shapes_match_torchs_counter():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 3, 4, 6)  # token grid 3 x 2 x 3
    lr = torch.randn(1, 8, 3, 2, 2)
    tokens = gpu.tokens_of(CONFIG, x.shape)
    hr = HRDiT(CONFIG).eval()
    features = hr.anchor_features(lr, x.shape)
    t, dt = torch.tensor([900.0]), torch.tensor([250.0])
    assert counted(lambda: hr(x, t, dt, [torch.randn(5, 32)], features)) == gpu.forward_flops(CONFIG, tokens, hr=True)
    assert counted(lambda: hr.anchor_features(lr, x.shape)) == gpu.anchor_flops(CONFIG, tokens)
    base = WanDiT(CONFIG).eval()  # the LR stage's CFG batch
    assert counted(lambda: base(torch.cat([x, x]), torch.cat([t, t]), [torch.randn(5, 32), torch.randn(7, 32)])) \
        == gpu.forward_flops(CONFIG, tokens, hr=False, batch=2)
    assert gpu.attention_flops(CONFIG, tokens) < gpu.forward_flops(CONFIG, tokens, hr=True)
