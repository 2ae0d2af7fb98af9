"""DiT forward time and peak memory at the LR, 2K and 4K token counts.

    python bench/dit_forward.py                       # CPU: scaled-down DiT, 5 frames (121 is hours on 2 cores)
    python bench/dit_forward.py --device cuda --full  # GPU: the real 5B config in bf16, 121 frames

Each resolution runs in its own process so that peak memory is that run's own (ru_maxrss on CPU,
torch.cuda.max_memory_allocated on GPU). Weights are random: speed and memory do not depend on them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from report import report

RESOLUTIONS = {"lr": (448, 256), "2k": (2560, 1440), "4k": (3840, 2144)}
SMALL = dict(dim=256, ffn_dim=1024, num_heads=2, num_layers=2, text_dim=256)  # head_dim 128 as the real model


def run_one(args: argparse.Namespace) -> dict:
    from pixelwizard.models.config import DiTConfig
    from pixelwizard.models.dit import WanDiT

    config = DiTConfig() if args.full else DiTConfig(**SMALL)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        model = WanDiT(config)
    model = model.to_empty(device=device)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.cast_for_inference(dtype)
    model.eval().requires_grad_(False)
    width, height = RESOLUTIONS[args.resolution]
    latent = (1, config.in_dim, (args.frames - 1) // 4 + 1, height // 16, width // 16)
    x = torch.randn(latent, device=device)
    t = torch.full((1,), 999.0, device=device)
    context = torch.randn(1, config.text_len, config.text_dim, device=device)
    tokens = latent[2] * (latent[3] // 2) * (latent[4] // 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    with torch.inference_mode():
        for _ in range(args.repeats + 1):  # the first call warms up kernels and caches
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x, t, context)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    result = {
        "resolution": args.resolution, "pixels": f"{width}x{height}", "frames": args.frames, "tokens": tokens,
        "config": "5B" if args.full else "small " + json.dumps(SMALL), "device": str(device), "dtype": str(dtype),
        "forward_s": min(times[1:]),
    }
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["gpu"] = torch.cuda.get_device_name()
    else:
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["rss_before_forward_gib"] = base_rss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="the real 5B config (GPU)")
    parser.add_argument("--frames", type=int, default=None, help="default: 121 on GPU, 5 on CPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resolution", choices=RESOLUTIONS, help="run one resolution in this process")
    parser.add_argument("--out", help="append json lines here")
    args = parser.parse_args()
    args.frames = args.frames or (121 if args.device.startswith("cuda") else 5)
    if args.resolution:
        print(json.dumps(run_one(args)))
        return
    for name in RESOLUTIONS:
        cmd = [sys.executable, __file__, "--resolution", name, "--device", args.device, "--frames", str(args.frames),
               "--repeats", str(args.repeats)] + (["--full"] if args.full else [])
        stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        report(stdout.strip().splitlines()[-1], args.out)


if __name__ == "__main__":
    main()
