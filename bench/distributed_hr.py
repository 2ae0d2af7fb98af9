"""Per-rank peak memory and HR step time of multi-process HR inference on the CPU (gloo), 1, 2 and 4 processes.

    python bench/distributed_hr.py [--out FILE.jsonl]

One process runs as the HR stage does alone (whole model, whole sequence); N > 1 processes as it does under
torchrun: FSDP2 over all N and Ulysses over all N. Each rank gets max(1, cores / N) threads and glibc's
fixed mmap threshold (see MALLOC). Weights are random (seeded), written once to a temporary trainer
checkpoint that only rank 0 reads (memory-mapped: its pages count in rank 0's RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from report import report

from pixelwizard import distributed
from pixelwizard.checkpoints.tiny import randomize_
from pixelwizard.checkpoints.trainer import load_hr_model, save_trainer_checkpoint
from pixelwizard.models.config import DiTConfig, VAEConfig, config_from_json, config_to_json
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline.presets import get_preset
from pixelwizard.sampling.samplers import Conditioning, sample_hr
from pixelwizard.sampling.seeds import gaussian_noise

# head_dim 128 as in the real model; 4 heads divide over 1, 2 and 4 ranks; 16 thin blocks so that one gathered
# block is a small part of the model, as one of the real 30 is.
SMALL = dict(dim=512, ffn_dim=2048, num_heads=4, num_layers=16, text_dim=512)
# 1280x704, 5 frames: 2 x 22 x 40 = 1,760 HR tokens (121 frames at 2K is 111,600: hours on 2 cores).
SETTINGS = dict(width=1280, height=704, frames=5, lr_width=448, lr_height=256, hr_steps=3)
PROCESSES = (1, 2, 4)
# glibc raises its mmap threshold each time a large block is freed, after which the freed memory of every
# gathered FSDP unit stays in the heap and in RSS; a fixed threshold returns it (CUDA's allocator reuses it).
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def worker(ckpt_dir: Path) -> None:
    """Under torchrun: load, run one HR sampling, and let rank 0 print every rank's numbers as a json line."""
    device = distributed.init_from_env("cpu")
    processes = distributed.world_size()
    config = config_from_json(DiTConfig, ckpt_dir / "config.json")
    mesh = distributed.device_mesh(device) if processes > 1 else None
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # torch, gloo: before any weight
    start = time.perf_counter()
    model = load_hr_model(ckpt_dir / "model.pt", config, mesh=mesh)
    load_s = time.perf_counter() - start
    if processes > 1:
        model.use_sequence_parallel(distributed.SequenceParallel())
    preset = get_preset("tiny", **SETTINGS)
    gen = torch.Generator().manual_seed(0)
    cond = Conditioning(torch.randn(64, config.text_dim, generator=gen),
                        torch.randn(32, config.text_dim, generator=gen))
    geometry = VAEConfig()
    lr_latent = torch.randn(geometry.latent_shape(preset.frames, preset.lr_height, preset.lr_width), generator=gen)
    noise = gaussian_noise(geometry.latent_shape(preset.frames, preset.height, preset.width), seed=0)
    stamps = []
    start = time.perf_counter()
    sample_hr(model, cond, lr_latent, noise, **preset.hr_sampling(),
              on_step=lambda done, total: done and stamps.append(time.perf_counter()))
    steps = [b - a for a, b in zip([start, *stamps], stamps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    mine = (baseline, peak, distributed.local_parameter_bytes(model) / 2**20)
    per_rank = [mine] * processes
    if processes > 1:
        dist.all_gather_object(per_rank, mine)
    if distributed.is_writer():
        _, t, h, w = noise.shape
        print(json.dumps({
            "processes": processes, "threads_per_rank": torch.get_num_threads(), "device": "cpu (gloo)",
            "config": "small " + json.dumps(SMALL), "tokens": t * (h // 2) * (w // 2), "hr_steps": preset.hr_steps,
            "fsdp": processes > 1, "ulysses": processes,
            "load_s": round(load_s, 3),
            "step_s": round(statistics.mean(steps[1:]), 3),  # the first step also builds the anchor feature
            "rss_before_load_gib_per_rank": [round(b, 3) for b, _, _ in per_rank],
            "peak_rss_gib_per_rank": [round(r, 3) for _, r, _ in per_rank],
            "parameter_mib_per_rank": [round(p, 1) for _, _, p in per_rank],
        }), flush=True)
    distributed.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="append json lines here")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(tmp)
        config = DiTConfig(**SMALL)
        config_to_json(config, ckpt_dir / "config.json")
        save_trainer_checkpoint(randomize_(HRDiT(config), seed=0), ckpt_dir / "model.pt")
        for processes in PROCESSES:
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes)), **MALLOC}
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   __file__, "--worker", str(ckpt_dir)]
            stdout = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            report(next(s for s in stdout.splitlines() if s.startswith("{")), args.out)


if __name__ == "__main__":
    main()
