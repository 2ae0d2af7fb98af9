"""GPU figures for issue 10 in one command (~6 minutes on one H100/H200): prints a table, writes JSON.

    PYTHONPATH=. python bench/gpu.py --out bench/results/gpu.json     # needs torch, einops, safetensors
    python bench/gpu.py --smoke                                        # the same code paths, tiny, on the CPU
    python bench/gpu.py --sections hr decode                           # a subset (see SECTIONS)

Weights are random (speed and memory do not depend on them), full size: Wan2.2-TI2V-5B DiT/HR DiT, VAE, umT5.
Every section runs on its own and records its error instead of stopping the run. Timings are CUDA-synchronised
medians after a warm-up; memory is torch.cuda.max_memory_allocated per stage (reset before each), beside
bench/memory.py's CPU estimate (bench/results/memory_estimate.jsonl).

Where a full run would not fit the time, a figure is measured on a part and scaled, and says so: an HR forward
runs 2 and then 2 + `BLOCKS_TIMED` of the 30 identical blocks with all 30 resident (peak memory is the real
one; time = the 2-block forward + 28 x the per-block difference); a decode runs `DECODE_FRAMES` latent frames
(memory is the real one: the caches do not grow with the clip; time is scaled to 31 frames). The
whole-pipeline seconds per video and the native 2K 50-step time (100 forwards at 2K) are composed from these
measured parts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout: no install needed

from pixelwizard.io.patched_decode import decode_patched  # noqa: E402
from pixelwizard.models.attention import available_backends  # noqa: E402
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig  # noqa: E402
from pixelwizard.models.dit import WanDiT  # noqa: E402
from pixelwizard.models.hr_model import HRDiT  # noqa: E402
from pixelwizard.models.vae import WanVAE  # noqa: E402
from pixelwizard.pipeline.presets import Preset, get_preset  # noqa: E402
from pixelwizard.sampling.samplers import Conditioning, sample_hr, sample_lr  # noqa: E402
from pixelwizard.sampling.seeds import gaussian_noise  # noqa: E402

latent_shape = VAEConfig().latent_shape  # [48, T, H/16, W/16]: the tiny VAEs share the geometry

SECTIONS = ("matmul", "hr", "fidelity", "stages", "lr", "decode", "load", "offload")
BLOCKS_TIMED = 3
DECODE_FRAMES = 5
PROMPT_TOKENS = 64
ESTIMATES = Path(__file__).with_name("results") / "memory_estimate.jsonl"
HR_STEPS = 4  # both presets
PATCHES = {"2k": 3, "4k": 4}  # the presets' decode patch counts


@dataclass(frozen=True)
class Scale:
    """Model sizes and presets of a run: the real ones on a GPU, tiny ones for --smoke."""

    device: str
    dit: DiTConfig
    vae: VAEConfig
    t5: T5Config
    presets: dict[str, Preset]
    matmul: int
    decode_patches: tuple[int, ...]


def full_scale() -> Scale:
    return Scale("cuda", DiTConfig(), VAEConfig(), T5Config(), {n: get_preset(n) for n in ("2k", "4k")}, 8192,
                 (2, 4, 6))


def smoke_scale() -> Scale:
    from pixelwizard.checkpoints.tiny import TINY_T5, TINY_VAE

    tiny = dict(frames=9, lr_width=128, lr_height=64, lr_steps=3)
    presets = {"2k": get_preset("2k", width=256, height=128, **tiny),
               "4k": get_preset("4k", width=384, height=192, **tiny)}
    dit = DiTConfig(dim=256, ffn_dim=512, freq_dim=32, num_heads=2, num_layers=4, text_dim=TINY_T5.dim, text_len=32)
    return Scale("cpu", dit, TINY_VAE, replace(TINY_T5, text_len=32), presets, 128, (2, 4))


# ---------------------------------------------------------------------------------------------------- helpers


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int = 3) -> float:
    """Median wall time of `fn` after one warm-up call, CUDA-synchronised."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict]:
    """{'peak_gib': max_memory_allocated while the block runs} (CUDA; 0 on the CPU)."""
    out: dict = {}
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield out
    out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else 0.0


def random_model(cls: type[nn.Module], config, device: str, dtype: torch.dtype = torch.bfloat16,
                 init: bool = True) -> nn.Module:
    """Built on meta, allocated on `device` in its inference dtypes (DiT: float32 islands), random N(0, 0.02)
    (left uninitialised without `init`: for timing file reads, where values do not matter)."""
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters() if init else ():
            p.normal_(0.0, 0.02)
    if isinstance(model, WanDiT):
        model.cast_for_inference(dtype)
    else:
        model.to(dtype)
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def first_blocks(model: WanDiT, count: int) -> Iterator[None]:
    """Run only the first `count` blocks; the others stay resident (their weights count in memory)."""
    blocks = model.blocks
    model.blocks = blocks[:count]
    try:
        yield
    finally:
        model.blocks = blocks


def conditioning(config: DiTConfig, device: str) -> Conditioning:
    gen = torch.Generator().manual_seed(0)
    rows = min(PROMPT_TOKENS, config.text_len // 2)
    return Conditioning(torch.randn(rows, config.text_dim, generator=gen).to(device, torch.bfloat16),
                        torch.randn(2 * rows, config.text_dim, generator=gen).to(device, torch.bfloat16))


def hr_inputs(config: DiTConfig, preset: Preset, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    hr = latent_shape(preset.frames, preset.height, preset.width)
    lr = latent_shape(preset.frames, preset.lr_height, preset.lr_width)
    return torch.randn(1, *hr, generator=gen).to(device), torch.randn(1, *lr, generator=gen).to(device)


def tokens_of(config: DiTConfig, latent: tuple[int, ...]) -> int:
    return math.prod(n // p for n, p in zip(latent[-3:], config.patch_size))


def forward_flops(config: DiTConfig, tokens: int, hr: bool) -> float:
    """Matmul FLOPs of one DiT forward from the shapes (2 per multiply-add); self-attention 4 L^2 D."""
    d, f, lc, length = config.dim, config.ffn_dim, config.text_len, tokens
    block = (8 * length * d * d + 4 * length * length * d  # q, k, v, o; q k^T and p v
             + 4 * length * d * d + 4 * lc * d * d + 4 * length * lc * d  # cross-attention
             + 4 * length * d * f)  # FFN
    embed = 2 * length * config.in_dim * math.prod(config.patch_size) * d + 2 * lc * (config.text_dim + d) * d
    head = 2 * length * d * config.out_dim * math.prod(config.patch_size)
    adapter = 2 * length * (config.in_dim * d // 4 + 27 * d // 4 * d + d * d) if hr else 0
    return config.num_layers * block + embed + head + adapter


# ---------------------------------------------------------------------------------------------------- sections


def section_matmul(scale: Scale, results: dict) -> None:
    n = scale.matmul
    a, b = (torch.randn(n, n, device=scale.device, dtype=torch.bfloat16) for _ in range(2))
    seconds = timed(lambda: [a @ b for _ in range(10)], scale.device) / 10
    results["matmul_peak_tflops"] = round(2 * n**3 / seconds / 1e12, 1)


def hr_forward_time(model: HRDiT, preset: Preset, device: str) -> dict:
    """One HR forward (batch 1) timed with the first 2 blocks (block 1 takes the anchor) and with BLOCKS_TIMED
    more; scaled to all blocks."""
    config = model.config
    x, lr = hr_inputs(config, preset, device)
    cond = conditioning(config, device)
    fewer, more = 2, min(config.num_layers, 2 + BLOCKS_TIMED)
    with torch.inference_mode():
        features = model.anchor_features(lr, x.shape)
        t, dt = torch.tensor([900.0], device=device), torch.tensor([250.0], device=device)

        def forward() -> None:
            model(x, t, dt, [cond.prompt], features)

        with first_blocks(model, fewer):  # seconds per call at 2K/4K: one timed call after the warm-up
            base = timed(forward, device, repeats=1)
        with first_blocks(model, more):
            some = timed(forward, device, repeats=1)
    per_block = (some - base) / (more - fewer)
    seconds = base + (config.num_layers - fewer) * per_block
    tokens = tokens_of(config, x.shape)
    flops = forward_flops(config, tokens, hr=True)
    return {"tokens": tokens, "forward_s": round(seconds, 3), "per_block_s": round(per_block, 4),
            "tflop": round(flops / 1e12, 1), "tflops": round(flops / seconds / 1e12, 1)}


def section_hr(scale: Scale, results: dict) -> None:
    model = random_model(HRDiT, scale.dit, scale.device)
    rows = results.setdefault("hr_forward", [])
    for backend in available_backends(scale.device):
        model.use_attention(backend)
        for name, preset in scale.presets.items():
            row = {"preset": name, "attention": backend, **hr_forward_time(model, preset, scale.device)}
            if "matmul_peak_tflops" in results:
                row["of_peak"] = round(row["tflops"] / results["matmul_peak_tflops"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)


def section_fidelity(scale: Scale, results: dict) -> None:
    """One block's residual update at the 2K token count: each backend in bf16 against the float32 block with
    float32 SDPA; max |bf16 - f32| / max |f32|."""
    config = replace(scale.dit, num_layers=1)
    model = random_model(WanDiT, config, scale.device, dtype=torch.float32)
    block = model.blocks[0]
    preset = scale.presets["2k"]
    x_latent, _ = hr_inputs(config, preset, scale.device)
    cond = conditioning(config, scale.device)
    with torch.inference_mode():
        tokens, grid = model.patchify(x_latent)
        _, e0 = model.condition_time(torch.tensor([900.0], device=scale.device), tokens.shape[1])
        context = model.embed_text([cond.prompt.float()])
        from pixelwizard.models.dit import rope_for_grid

        rope = rope_for_grid(grid, config.head_dim, tokens.device)
        reference = block(tokens.clone(), e0, context, rope, model.chunk_tokens) - tokens
        low = random_model(WanDiT, config, scale.device)
        low.load_state_dict(model.state_dict())
        low.cast_for_inference(torch.bfloat16)
        rows = results.setdefault("fidelity", [])
        for backend in available_backends(scale.device):
            low.use_attention(backend)
            update = low.blocks[0](tokens.clone(), e0, context, rope, low.chunk_tokens, low.attend, low.attend) - tokens
            rows.append({"attention": backend, "tokens": tokens.shape[1],
                         "max_rel_dev_vs_fp32": float((update - reference).abs().max() / reference.abs().max())})


def section_stages(scale: Scale, results: dict) -> None:
    """Peak memory of each stage at each preset, as the stages run them; times of the LR and HR samplings."""
    estimates = {}
    if ESTIMATES.exists():
        for line in ESTIMATES.read_text().splitlines():
            row = json.loads(line)
            if not ({"offload", "uncond_anchor", "num_patches", "vae_dtype"} & set(row)):
                estimates[(row["stage"], row["preset"])] = row["peak_gib"]
    rows = results.setdefault("stages", [])
    device = scale.device
    for name, preset in scale.presets.items():
        measured = {}
        text = random_text_encoder(scale.t5, device)
        with peak_memory(device) as measured["text"], torch.inference_mode():
            ids = torch.ones(1, scale.t5.text_len, dtype=torch.long, device=device)
            text(input_ids=ids, attention_mask=torch.ones_like(ids))
        del text
        lr_model = random_model(WanDiT, scale.dit, device)
        cond = conditioning(scale.dit, device)
        with peak_memory(device) as measured["lr"]:
            start = time.perf_counter()
            noise = gaussian_noise(latent_shape(preset.frames, preset.lr_height, preset.lr_width), seed=0)
            lr_latent = sample_lr(lr_model, cond, noise, **preset.lr_sampling())
            sync(device)
            measured["lr"]["seconds"] = round(time.perf_counter() - start, 2)
        del lr_model
        hr_model = random_model(HRDiT, scale.dit, device)
        with peak_memory(device) as measured["hr"], first_blocks(hr_model, BLOCKS_TIMED):
            noise = gaussian_noise(latent_shape(preset.frames, preset.height, preset.width), seed=0)
            sample_hr(hr_model, cond, lr_latent, noise, **preset.hr_sampling())
        del hr_model
        vae = random_model(WanVAE, scale.vae, device)
        z = torch.randn(latent_shape(1 + 4 * (DECODE_FRAMES - 1), preset.height, preset.width))
        with peak_memory(device) as measured["decode"]:
            for _ in decode_patched(vae, z.to(device), num_patches=preset.num_patches, patch_dim=preset.patch_dim,
                                    overlap=preset.overlap):
                pass
        del vae
        for stage, row in measured.items():
            rows.append({"stage": stage, "preset": name, **row, "estimate_gib": estimates.get((stage, name))})


def random_text_encoder(config: T5Config, device: str) -> nn.Module:
    from transformers import UMT5EncoderModel

    from pixelwizard.models.text_encoder import umt5_config

    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(config))
    model = model.to_empty(device=device).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model.eval().requires_grad_(False)


def section_lr(scale: Scale, results: dict) -> None:
    """LR forward pairs (cond + uncond) per step: sequential, batched B = 2, batched B = 2 as a CUDA graph."""
    device, config = scale.device, scale.dit
    preset = scale.presets["2k"]
    model = random_model(WanDiT, config, device)
    cond = conditioning(config, device)
    shape = latent_shape(preset.frames, preset.lr_height, preset.lr_width)
    x = torch.randn(1, *shape, device=device)
    t = torch.tensor([900.0], device=device)
    contexts = [cond.prompt, cond.uncond]
    x2, t2 = x.expand(2, *shape).contiguous(), t.expand(2).contiguous()
    steps = results["lr_step_s"] = {}
    prompt = results["lr_prompt_s"] = {}

    def record(name: str, fn: Callable[[], object]) -> None:
        seconds = timed(fn, device)
        steps[name], prompt[name] = round(seconds, 4), round(seconds * preset.lr_steps, 2)

    with torch.inference_mode():
        record("sequential", lambda: [model(x, t, [c]) for c in contexts])
        record("batched", lambda: model(x2, t2, contexts))
        if device == "cuda":
            graph = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                model(x2, t2, contexts)  # warm-up on the capture stream
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph):
                model(x2, t2, contexts)
            record("batched_cuda_graph", graph.replay)


def section_decode(scale: Scale, results: dict) -> None:
    """Decode time and peak memory per patch count at 4K, bf16 VAE; the 2K preset in bf16 against float32;
    cudnn.benchmark off and on."""
    device = scale.device
    rows = results.setdefault("decode", [])

    def run(vae: WanVAE, preset: Preset, patches: int) -> dict:
        z = torch.randn(latent_shape(1 + 4 * (DECODE_FRAMES - 1), preset.height, preset.width),
                        generator=torch.Generator().manual_seed(2)).to(device)
        with peak_memory(device) as row:
            sync(device)
            start = time.perf_counter()
            video = torch.cat([c.cpu() for c in decode_patched(vae, z, num_patches=patches,
                                                                 patch_dim=preset.patch_dim, overlap=preset.overlap)],
                              dim=1)
            sync(device)
            row["seconds_31_frames"] = round((time.perf_counter() - start) * 31 / DECODE_FRAMES, 1)
        row["video"] = video
        return row

    vae = random_model(WanVAE, scale.vae, device)
    for patches in scale.decode_patches:
        row = run(vae, scale.presets["4k"], patches)
        row.pop("video")
        rows.append({"preset": "4k", "patches": patches, "dtype": "bf16", **row})
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
        row = run(vae, scale.presets["4k"], scale.presets["4k"].num_patches)
        row.pop("video")
        rows.append({"preset": "4k", "patches": scale.presets["4k"].num_patches, "dtype": "bf16",
                     "cudnn_benchmark": True, **row})
        torch.backends.cudnn.benchmark = False
    preset = scale.presets["2k"]
    low = run(vae, preset, preset.num_patches)
    vae.float()
    high = run(vae, preset, preset.num_patches)
    deviation = float((low.pop("video") - high.pop("video")).abs().max())
    rows.append({"preset": "2k", "patches": preset.num_patches, "dtype": "bf16", **low})
    rows.append({"preset": "2k", "patches": preset.num_patches, "dtype": "float32", **high,
                 "max_abs_dev_bf16_vs_fp32": round(deviation, 4)})


def section_load(scale: Scale, results: dict) -> None:
    """Seconds to load the DiT (float32 safetensors on disk, cast to bf16 on the GPU) and the VAE through the
    project's loaders; the files are freshly written, so the page cache is warm."""
    from pixelwizard.checkpoints import wan

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        wan.save_dit(random_model(WanDiT, scale.dit, "cpu", dtype=torch.float32, init=False), ckpt)
        wan.save_vae(random_model(WanVAE, scale.vae, "cpu", dtype=torch.float32, init=False), ckpt)
        rows = {}
        for name, load in (("dit", lambda: wan.load_dit(ckpt, dtype=torch.bfloat16, device=scale.device)),
                           ("vae", lambda: wan.load_vae(ckpt, dtype=torch.bfloat16, device=scale.device))):
            sync(scale.device)
            start = time.perf_counter()
            model = load()
            sync(scale.device)
            rows[name] = round(time.perf_counter() - start, 2)
            del model
    results["load_s"] = rows


def section_offload(scale: Scale, results: dict) -> None:
    """HR forward at 4K with the blocks streamed from the host (`offload_blocks`) against resident blocks."""
    from pixelwizard.models.offload import offload_blocks

    preset = scale.presets["4k"]
    model = random_model(HRDiT, scale.dit, scale.device).cpu()  # random values drawn on the GPU: faster
    streamer = offload_blocks(model, scale.device)  # noqa: F841 (owns the hooks)
    with peak_memory(scale.device) as row:
        row.update(hr_forward_time(model, preset, scale.device))
    results["offload"] = {"preset": "4k", **row}


SECTION_FNS = {"matmul": section_matmul, "hr": section_hr, "fidelity": section_fidelity, "stages": section_stages,
               "lr": section_lr, "decode": section_decode, "load": section_load, "offload": section_offload}


def summary(results: dict) -> dict:
    """Seconds per video (text embeddings -> MP4 frames) composed from the measured parts, and the native 2K
    estimate: 50 steps x CFG of the DiT at the 2K token count (an HR forward minus the adapter's 0.1%)."""
    out = {}
    hr = {r["preset"]: r for r in results.get("hr_forward", []) if r["attention"] == results["best_attention"]}
    lr = results.get("lr_prompt_s", {})
    decode = {r["preset"]: r["seconds_31_frames"] for r in results.get("decode", [])
              if r["dtype"] == "bf16" and not r.get("cudnn_benchmark") and r["patches"] == PATCHES[r["preset"]]}
    for name in ("2k", "4k"):
        if name in hr and lr and name in decode:
            parts = {"lr": min(lr.values()), "hr": 2 * HR_STEPS * hr[name]["forward_s"], "decode": decode[name]}
            out[f"{name}_video_s"] = {**{k: round(v, 1) for k, v in parts.items()},
                                      "total": round(sum(parts.values()), 1)}
    if "2k_video_s" in out:
        native = 2 * 50 * hr["2k"]["forward_s"] + decode["2k"]
        out["native_2k_50_steps_s"] = round(native, 1)
        out["speedup_vs_native_2k"] = round(native / out["2k_video_s"]["total"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the same code paths")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--out", help="write the JSON here")
    args = parser.parse_args()
    scale = smoke_scale() if args.smoke else full_scale()
    if scale.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device; run on a GPU machine, or pass --smoke for the CPU check")
    results: dict = {
        "machine": torch.cuda.get_device_name() if scale.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "smoke": args.smoke, "attention_backends": available_backends(scale.device),
        "errors": {}, "section_s": {},
    }
    results["best_attention"] = next(b for b in ("flash3", "flash2", "sdpa") if b in results["attention_backends"])
    torch.manual_seed(0)
    for name in args.sections:
        start = time.perf_counter()
        try:
            SECTION_FNS[name](scale, results)
        except Exception:  # recorded and reported; the other sections still run
            results["errors"][name] = traceback.format_exc(limit=6)
            print(f"section {name} failed:\n{results['errors'][name]}", file=sys.stderr, flush=True)
        results["section_s"][name] = round(time.perf_counter() - start, 1)
        print(f"section {name}: {results['section_s'][name]} s", flush=True)
        if scale.device == "cuda":
            torch.cuda.empty_cache()
    results["summary"] = summary(results)
    print(json.dumps({k: v for k, v in results.items() if k != "errors"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if results["errors"]:
        sys.exit(f"bench/gpu.py: sections failed: {', '.join(results['errors'])}")


if __name__ == "__main__":
    main()
