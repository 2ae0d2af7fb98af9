"""bench/gpu.py --smoke: every section of the GPU benchmark runs its code path at tiny size on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_smoke_runs_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench/gpu.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["errors"] == {} and results["smoke"] is True
    assert set(results["section_s"]) == {"matmul", "hr", "fidelity", "stages", "lr", "decode", "load", "offload"}
    assert {(r["preset"], r["attention"]) for r in results["hr_forward"]} == {("2k", "sdpa"), ("4k", "sdpa")}
    assert {(r["stage"], r["preset"]) for r in results["stages"]} == {
        (s, p) for s in ("text", "lr", "hr", "decode") for p in ("2k", "4k")}
    assert [r["patches"] for r in results["decode"] if r["preset"] == "4k"] == [2, 4]
    dev = next(r["max_abs_dev_bf16_vs_fp32"] for r in results["decode"] if r["dtype"] == "float32")
    assert 0 < dev < 0.05  # bf16 rounding is visible, and small
    assert 0 < results["fidelity"][0]["max_rel_dev_vs_fp32"] < 0.05
    assert set(results["lr_step_s"]) == {"sequential", "batched"}  # the CUDA graph needs a GPU
    assert {"2k_video_s", "4k_video_s", "native_2k_50_steps_s", "speedup_vs_native_2k"} <= set(results["summary"])
