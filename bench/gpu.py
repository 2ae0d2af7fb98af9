"""GPU figures in one command, built to survive a bare GPU machine lent for minutes: prints a plan, then each
section's figures as it finishes them, and rewrites its JSON (atomically) after every one.

    bench/run_gpu.sh OUT_DIR                                      # on the GPU machine: wheels, then this, timed
    PYTHONPATH=. python bench/gpu.py --budget-s 480 --out gpu.json   # the bench itself
    python bench/gpu.py --plan                                    # the plan and expected seconds on an H100; no GPU
    python bench/gpu.py --smoke --out smoke.json                  # every section at tiny size on the CPU
    python bench/gpu.py --sections hr decode                      # a subset, in the plan's order
    python bench/gpu.py --presets 2k 4k ...                       # the presets measured (default: 2k 4k)

Needs torch, einops, safetensors and transformers (what a bare GPU image ships); nothing of zarr, av, snakemake or
ftfy. Weights are random at full size (Wan2.2-TI2V-5B DiT / HR DiT, VAE, umT5) with realistic statistics (see
`realistic_`); speed and memory do not depend on their values, fidelity does.

Sections, the most valuable first: doctor (the environment, `pixelwizard doctor`'s report), matmul (the bf16 peak),
hr (HR forward seconds and TFLOP/s per attention backend and preset), stages (max allocated and reserved memory of
every stage per preset), decode (steady-state seconds and memory; channels-last-3d against NCDHW; more patches),
lr (seconds per prompt: CFG as two forwards, as one batch of 2, as a CUDA graph), fidelity (bf16 against a float32
reference through math SDPA: the HR latent after all steps and the decoded pixels), autotune (the decode with
cudnn.benchmark, in a fresh process), load (DiT and VAE through the loaders), offload (the HR forward with
streamed blocks); then seconds per video composed from them.

Method. Every timed piece runs once at its exact shapes first (cuDNN/cuBLAS plans, allocator growth, Triton
compiles) and is then timed with CUDA events. An HR forward runs its first `BLOCKS_TIMED` of 30 identical blocks
(all resident: the memory is the real one) with an event pair around each block: forward = the non-block part +
30 x the median block. A decode runs 2 latent frames to warm up (every patch's shapes, the first and the steady
chunk), then 3 and 5: the steady seconds per latent frame are the difference / 2, and a clip of F pixel frames takes
the 3-frame time + ((F - 1) / 4 - 2) steady latent frames (4 pixel frames each), not a scale by latent frames.
Memory is max_memory_allocated and max_memory_reserved per stage, the cache emptied and the peaks reset before each.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a plain checkout: no install needed

from pixelwizard import doctor  # noqa: E402
from pixelwizard.gpu_traps import GpuTrapError, use_expandable_segments  # noqa: E402
from pixelwizard.io.files import write_atomic  # noqa: E402
from pixelwizard.io.patched_decode import decode_patched  # noqa: E402
from pixelwizard.models.attention import auto_order, available_backends, first_available  # noqa: E402
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig  # noqa: E402
from pixelwizard.models.dit import WanDiT  # noqa: E402
from pixelwizard.models.hr_model import HRDiT  # noqa: E402
from pixelwizard.models.vae import WanVAE  # noqa: E402
from pixelwizard.pipeline.gpu_memory import Models, stage_gib  # noqa: E402
from pixelwizard.pipeline.presets import PRESETS, Preset  # noqa: E402
from pixelwizard.sampling.samplers import Conditioning, sample_hr, sample_lr  # noqa: E402

SECTIONS = ("doctor", "matmul", "hr", "stages", "decode", "lr", "fidelity", "autotune", "load", "offload")
BLOCKS_TIMED = 3
PROMPT_TOKENS = 64  # rows of the prompt's text embedding (the negative prompt has about 100)
QK_GAIN = 3**0.5  # q/k RMSNorm gains: attention logits ~ N(0, 3^2), see realistic_
FIDELITY_FRAMES = 5  # 2 latent frames: the float32 math-SDPA reference then fits and takes seconds
LR_STAGE_STEPS = 4  # the stages section's LR sampling: the solver's history is full by then, memory is steady
# The README's bound on bf16 against the float32 reference (section fidelity).
FIDELITY_BOUNDS = {"latent_rel_rms": 0.02, "pixel_mean_abs": 0.01, "pixel_p999_abs": 0.1}


# ------------------------------------------------------------------------------------------------ scale and plan


@dataclass(frozen=True)
class Scale:
    """Model sizes and presets of a run: the real ones on a GPU, tiny ones for --smoke."""

    device: str
    dit: DiTConfig
    vae: VAEConfig
    t5: T5Config
    presets: dict[str, Preset]
    matmul: int
    chunk_tokens: int | None = None  # the DiT's row chunk (None: its default)


def full_scale(presets: list[str]) -> Scale:
    return Scale("cuda", DiTConfig(), VAEConfig(), T5Config(), {name: PRESETS[name] for name in presets}, 8192)


def smoke_scale() -> Scale:
    from pixelwizard.checkpoints.tiny import TINY_T5, TINY_VAE

    tiny = dict(frames=9, lr_width=128, lr_height=64, lr_steps=3, overlap=1)
    presets = {"2k": PRESETS["2k"].override(width=64, height=32, num_patches=2, **tiny),
               "4k": PRESETS["4k"].override(width=96, height=32, num_patches=3, **tiny)}
    dit = DiTConfig(dim=256, ffn_dim=512, freq_dim=32, num_heads=2, num_layers=4, text_dim=TINY_T5.dim, text_len=32)
    vae = replace(TINY_VAE, dec_dim=8)  # the CPU's Conv3d is slow: the decode sections run 10 latent frames a setting
    return Scale("cpu", dit, vae, replace(TINY_T5, text_len=32), presets, 128, chunk_tokens=64)


@dataclass(frozen=True)
class Machine:
    """What the expected seconds assume: peaks of the part, and the share of them each kind of work reaches."""

    name: str
    bf16_tflops: float  # dense tensor-core peak
    fp32_tflops: float  # without tensor cores: the float32 reference runs with TF32 off
    pcie_gbps: float  # pinned host <-> device
    disk_gbps: float  # writing the load section's checkpoints
    startup_s: float  # a fresh Python: torch, transformers, the CUDA context, cuBLAS/cuDNN handles
    op_s: float  # host time per dispatched op: what bounds the small LR forward
    linear: float = 0.65  # share of the bf16 peak a projection or FFN matmul reaches at these sizes
    conv: float = 0.30  # share the VAE's bf16 convolutions reach (cuDNN implicit GEMM), elementwise work included
    fp32: float = 0.7  # share of the fp32 peak the float32 reference reaches
    # Attention in TFLOP/s at head dim 128 (public H100 figures: FlashAttention 3 ~600-740, cuDNN 9 about the same,
    # FlashAttention 2 and torch's own SDPA kernel ~330-350; SageAttention 1 ~1.4x FA2): see docs/performance.md.
    attention: tuple[tuple[str, float], ...] = (("flash3", 600.0), ("sdpa-cudnn", 550.0), ("flash2", 350.0),
                                                ("sdpa", 350.0), ("sage", 480.0))
    triton_compile_s: float = 30.0  # SageAttention's kernels, compiled at their first use

    def attention_tflops(self, backend: str) -> float:
        return dict(self.attention)[backend]


H100 = Machine("H100 SXM (989 TFLOP/s bf16 dense, 67 fp32)", 989.0, 67.0, 25.0, 1.5, 15.0, 10e-6)
H200 = replace(H100, name="H200 (989 TFLOP/s bf16 dense, 67 fp32)")
SMOKE = Machine("the CPU (smoke)", 0.2, 0.1, 10.0, 1.0, 5.0, 10e-6, linear=1.0, conv=1.0, fp32=1.0,
                attention=tuple((b, 0.2) for b in ("flash3", "sdpa-cudnn", "flash2", "sdpa", "sage")),
                triton_compile_s=0.0)


def machine_for(device_name: str, smoke: bool) -> Machine:
    if smoke:
        return SMOKE
    return H200 if "H200" in device_name else H100  # other GPUs are planned as an H100


# ------------------------------------------------------------------------------------------------ FLOPs


def tokens_of(config: DiTConfig, latent: tuple[int, ...]) -> int:
    return math.prod(n // p for n, p in zip(latent[-3:], config.patch_size))


def forward_flops(config: DiTConfig, tokens: int, hr: bool, batch: int = 1) -> float:
    """Matmul and attention FLOPs (2 per multiply-add) of one DiT forward from its shapes, as
    torch.utils.flop_counter counts them (tests/test_bench_gpu.py): per block self-attention 8 L D^2 + 4 L^2 D,
    cross-attention 4 L D^2 + 4 Lc D^2 + 4 L Lc D over the text_len padded context, FFN 4 L D F; the patch and
    text embeddings, the time path, the head; HR: the dt embedding, the adapter's gain and its zero layer (its
    backbone runs once per video: `anchor_flops`)."""
    d, f, lc, length = config.dim, config.ffn_dim, config.text_len, tokens
    block = 12 * length * d * d + 4 * length * length * d + 4 * lc * d * d + 4 * length * lc * d + 4 * length * d * f
    patch = math.prod(config.patch_size)
    time_mlp = 2 * (config.freq_dim * d + d * d)
    embed = 2 * length * config.in_dim * patch * d + 2 * lc * (config.text_dim + d) * d + time_mlp + 2 * d * 6 * d
    head = 2 * length * d * config.out_dim * patch
    adapter = 3 * time_mlp + 2 * length * d * d if hr else 0  # dt embedding, adapter t/dt projections, zero layer
    return batch * (config.num_layers * block + embed + head + adapter)


def attention_flops(config: DiTConfig, tokens: int, batch: int = 1) -> float:
    """The self- and cross-attention kernels' share of `forward_flops`."""
    return batch * config.num_layers * (4 * tokens * tokens * config.dim + 4 * tokens * config.text_len * config.dim)


def anchor_flops(config: DiTConfig, tokens: int) -> float:
    """The HR adapter's backbone on the upsampled anchor: a 1x1x1 conv to D/4, a 3x3x3 conv to D (once per video)."""
    return 2 * tokens * config.dim // 4 * (config.in_dim + 27 * config.dim)


@functools.cache
def decode_flops(vae_config: VAEConfig, side: int = 32) -> tuple[float, float]:
    """Convolution FLOPs of decoding one latent frame, per latent position: (the first chunk, a steady chunk of 4
    pixel frames), counted by torch.utils.flop_counter on fake tensors (no memory, no compute) at side x side latent
    units. Convolutions scale with the area; the per-frame attention, 4 (hw)^2 C, is < 0.1% at a 4K patch."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counts = []
    with FakeTensorMode(), sdpa_kernel(SDPBackend.MATH):  # the VAE's attention counted as its two matmuls
        stream = WanVAE(vae_config).stream_decoder()
        for _ in range(2):
            with FlopCounterMode(display=False) as counter:
                stream.push(torch.empty(1, vae_config.z_dim, 1, side, side))
            counts.append(float(counter.get_total_flops()) / side**2)
    return counts[0], counts[1]


# ------------------------------------------------------------------------------------------------ timing and memory


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Seconds of GPU work (CUDA events) or wall time (the CPU) between `start` and `stop`."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.begin: torch.cuda.Event | float = 0.0
        self.end: torch.cuda.Event | float = 0.0

    def _mark(self) -> torch.cuda.Event | float:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> Clock:
        self.begin = self._mark()
        return self

    def stop(self) -> Clock:
        self.end = self._mark()
        return self

    @property
    def seconds(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.begin.elapsed_time(self.end) / 1000
        return self.end - self.begin


def timed(fn: Callable[[], object], device: str, repeats: int = 3) -> float:
    """Median seconds of `fn` after one untimed call at the same shapes."""
    fn()
    clocks = []
    for _ in range(repeats):
        clock = Clock(device).start()
        fn()
        clocks.append(clock.stop())
    return statistics.median(c.seconds for c in clocks)


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict]:
    """{'allocated_gib', 'reserved_gib'}: the peaks while the block runs (the cache emptied first; 0 on the CPU)."""
    out: dict = {}
    if device == "cuda":
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield out
    if device == "cuda":
        out["allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    else:
        out["allocated_gib"] = out["reserved_gib"] = 0.0


@contextlib.contextmanager
def first_blocks(model: WanDiT, count: int) -> Iterator[None]:
    """Run only the first `count` blocks; the others stay resident (their weights count in memory)."""
    blocks = model.blocks
    model.blocks = blocks[:count]
    try:
        yield
    finally:
        model.blocks = blocks


@contextlib.contextmanager
def block_clocks(blocks: nn.ModuleList, device: str) -> Iterator[list[Clock]]:
    """A Clock around every forward of each of `blocks` (appended in order), through forward hooks."""
    clocks: list[Clock] = []
    handles = [h for block in blocks for h in (
        block.register_forward_pre_hook(lambda *_: clocks.append(Clock(device).start())),
        block.register_forward_hook(lambda *_: clocks[-1].stop()))]
    try:
        yield clocks
    finally:
        for handle in handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------ models and inputs


def realistic_(model: nn.Module, qk_gain: float = QK_GAIN) -> nn.Module:
    """Random weights with the statistics of a trained network where they matter for precision: linear and conv
    weights N(0, 1/fan_in) (activations keep their scale through the stack), biases 0, every norm gain 1 except the
    DiT's q/k RMSNorm gains, `qk_gain`: q and k rows then have RMS `qk_gain` per channel and the attention logits
    q.k/sqrt(d) spread as N(0, qk_gain^4) = N(0, 9), so the largest of 249k keys is ~15 and the softmax is peaked, as
    in trained DiTs (N(0, 0.02) everywhere gives logits ~0 and a near-uniform softmax, which hides bf16 error).
    The adaLN modulation tables keep N(0, 1/D) (the constructor's)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rpartition(".")[2]
            if name.endswith(("norm_q.weight", "norm_k.weight")):
                p.fill_(qk_gain)
            elif leaf in ("bias", "beta"):
                p.zero_()
            elif leaf == "modulation":
                p.normal_(0.0, p.shape[-1] ** -0.5)
            elif p.dim() == 1 or leaf == "gamma":  # LayerNorm / RMSNorm / GroupNorm gains
                p.fill_(1.0)
            else:
                p.normal_(0.0, math.prod(p.shape[1:]) ** -0.5)
    return model


def build(cls: type[nn.Module], config, device: str, dtype: torch.dtype = torch.bfloat16,
          init: bool = True) -> nn.Module:
    """Built on meta, allocated on `device`, `realistic_` values drawn there (left uninitialised without `init`:
    for timing file reads), then in its inference dtypes (the DiT: float32 islands)."""
    with torch.device("meta"):
        model = cls(config)
    model = model.to_empty(device=device)
    if init:
        realistic_(model)
    if isinstance(model, WanDiT):
        model.cast_for_inference(dtype)
    else:
        model.to(dtype)
    return model.eval().requires_grad_(False)


def dit(cls: type[WanDiT], scale: Scale, device: str | None = None, dtype: torch.dtype | None = None) -> WanDiT:
    """A DiT as the stages run it: bf16 on CUDA, float32 on the CPU (bf16 matmuls crawl there), or in `dtype`."""
    dtype = dtype or (torch.bfloat16 if scale.device == "cuda" else torch.float32)
    model = build(cls, scale.dit, device or scale.device, dtype)
    if scale.chunk_tokens:
        model.chunk_tokens = scale.chunk_tokens
    return model


LAYOUTS = {"channels_last": torch.channels_last_3d, "ncdhw": torch.contiguous_format}


def stage_layout(scale: Scale) -> str:
    """The decode stage's VAE layout (pipeline/steps.py vae_memory_format): channels-last-3d on CUDA, NCDHW on the
    CPU."""
    return "channels_last" if scale.device == "cuda" else "ncdhw"


def vae_model(scale: Scale, dtype: torch.dtype | None = None, layout: str | None = None) -> WanVAE:
    """The VAE as the decode stage runs it (bf16 on CUDA, float32 on the CPU; `stage_layout`), or in the `dtype` and
    `layout` given."""
    dtype = dtype or (torch.bfloat16 if scale.device == "cuda" else torch.float32)
    memory_format = LAYOUTS[layout or stage_layout(scale)]
    return build(WanVAE, scale.vae, scale.device, dtype).use_memory_format(memory_format)


def conditioning(config: DiTConfig, device: str, dtype: torch.dtype = torch.bfloat16) -> Conditioning:
    gen = torch.Generator().manual_seed(0)
    rows = min(PROMPT_TOKENS, config.text_len // 2)
    return Conditioning(torch.randn(rows, config.text_dim, generator=gen).to(device, dtype),
                        torch.randn(2 * rows, config.text_dim, generator=gen).to(device, dtype))


def latents(scale: Scale, preset: Preset, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR noise-shaped latent, LR anchor) [C, T, h, w] on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    hr = scale.vae.latent_shape(preset.frames, preset.height, preset.width)
    lr = scale.vae.latent_shape(preset.frames, preset.lr_height, preset.lr_width)
    return torch.randn(hr, generator=gen), torch.randn(lr, generator=gen)


def hr_forward(model: HRDiT, scale: Scale, preset: Preset) -> Callable[[], torch.Tensor]:
    x, lr = latents(scale, preset)
    x, lr = x[None].to(scale.device), lr[None].to(scale.device)
    cond = conditioning(scale.dit, scale.device)
    with torch.inference_mode():
        features = model.anchor_features(lr, x.shape)
    t, dt = torch.tensor([900.0], device=scale.device), torch.tensor([250.0], device=scale.device)

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x, t, dt, [cond.prompt], features)

    return forward


def hr_forward_time(model: HRDiT, scale: Scale, preset: Preset) -> dict:
    """One HR forward (batch 1): its first BLOCKS_TIMED blocks with a clock on each, after a warm-up forward at the
    same shapes; scaled to all blocks by the median block."""
    forward = hr_forward(model, scale, preset)
    config = model.config
    count = min(BLOCKS_TIMED, config.num_layers)
    with first_blocks(model, count):
        forward()
        with block_clocks(model.blocks, scale.device) as clocks:
            whole = Clock(scale.device).start()
            forward()
            whole.stop()
    blocks = [c.seconds for c in clocks]
    per_block = statistics.median(blocks)
    seconds = whole.seconds - sum(blocks) + config.num_layers * per_block
    tokens = tokens_of(config, scale.vae.latent_shape(preset.frames, preset.height, preset.width))
    flops = forward_flops(config, tokens, hr=True)
    return {"tokens": tokens, "forward_s": round(seconds, 3), "per_block_s": round(per_block, 4), "flop": flops,
            "tflops": round(flops / seconds / 1e12, 1)}


# ------------------------------------------------------------------------------------------------ the run


class Results(dict):
    """The JSON of the run, rewritten whole (atomically) by `save` whenever a figure is added."""

    def __init__(self, path: Path | None, **fields) -> None:
        super().__init__(**fields)
        self.path = path

    def save(self) -> None:
        if self.path is None:
            return
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a stop waits for the rename
        try:
            write_atomic(self.path, json.dumps(self, indent=1, default=str) + "\n")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def add(self, key: str, row: dict) -> None:
        """Append a row to list `key`, print it, save."""
        self.setdefault(key, []).append(row)
        print(f"  {key}: {json.dumps(row)}", flush=True)
        self.save()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """SIGTERM or SIGINT: the section under way is recorded as interrupted, everything finished stays."""


def stop_on(signum: int, _frame) -> None:
    raise Stopped(signal.Signals(signum).name)


@dataclass
class Run:
    scale: Scale
    machine: Machine
    results: Results
    backends: list[str]
    best: str  # what `auto` picks on this device
    smoke: bool


# ------------------------------------------------------------------------------------------------ sections


def section_doctor(run: Run) -> None:
    report = doctor.report(run.results.path.parent if run.results.path else Path("."))
    run.results["doctor"] = report
    print("\n".join(f"  {line}" for line in doctor.render(report)), flush=True)


def section_matmul(run: Run) -> None:
    n, device = run.scale.matmul, run.scale.device
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    seconds = timed(lambda: [a @ b for _ in range(10)], device) / 10
    run.results["matmul_peak_tflops"] = round(2 * n**3 / seconds / 1e12, 3)
    print(f"  matmul_peak_tflops: {run.results['matmul_peak_tflops']}", flush=True)


def section_hr(run: Run) -> None:
    model = dit(HRDiT, run.scale)
    for name, preset in run.scale.presets.items():
        for backend in run.backends:
            model.use_attention(backend)
            row = {"preset": name, "attention": backend, **hr_forward_time(model, run.scale, preset)}
            if run.results.get("matmul_peak_tflops"):
                row["of_matmul_peak"] = round(row["tflops"] / run.results["matmul_peak_tflops"], 3)
            run.results.add("hr_forward", row)


def section_stages(run: Run) -> None:
    """Peak memory of each stage as its stage runs it, per preset: text (umT5 on 512 tokens), LR (LR_STAGE_STEPS
    steps), HR (all steps x CFG, the first BLOCKS_TIMED blocks run, all resident), decode (5 latent frames: the
    caches do not grow with the clip); the bench/memory.py estimate beside it."""
    scale, device = run.scale, run.scale.device
    models = Models.of(scale.dit, scale.vae, scale.t5)
    for name, preset in scale.presets.items():
        text = random_text_encoder(scale.t5, device)
        with peak_memory(device) as row, torch.inference_mode():
            ids = torch.ones(1, scale.t5.text_len, dtype=torch.long, device=device)
            text(input_ids=ids, attention_mask=torch.ones_like(ids))
        del text
        run.results.add("stages", {"stage": "text", "preset": name, **row,
                                   "estimate_gib": round(stage_gib("text", preset, models), 2)})
        lr_model = dit(WanDiT, scale)
        cond = conditioning(scale.dit, device)
        _, lr_noise = latents(scale, preset)
        with peak_memory(device) as row:
            anchor = sample_lr(lr_model, cond, lr_noise, **preset.override(lr_steps=LR_STAGE_STEPS).lr_sampling())
        del lr_model
        run.results.add("stages", {"stage": "lr", "preset": name, **row,
                                   "estimate_gib": round(stage_gib("lr", preset, models), 2)})
        hr_model = dit(HRDiT, scale)
        hr_noise, _ = latents(scale, preset, seed=2)
        with peak_memory(device) as row, first_blocks(hr_model, BLOCKS_TIMED):
            sample_hr(hr_model, cond, anchor, hr_noise, **preset.hr_sampling())
        del hr_model
        run.results.add("stages", {"stage": "hr", "preset": name, **row,
                                   "estimate_gib": round(stage_gib("hr", preset, models), 2)})
        vae = vae_model(scale)
        z = torch.randn(scale.vae.latent_shape(17, preset.height, preset.width))
        with peak_memory(device) as row:
            for _ in decode_patched(vae, z.to(device), num_patches=preset.num_patches, patch_dim=preset.patch_dim,
                                    overlap=preset.overlap):
                pass
        del vae
        run.results.add("stages", {"stage": "decode", "preset": name, **row,
                                   "estimate_gib": round(stage_gib("decode", preset, models), 2)})


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


def decode_time(vae: WanVAE, scale: Scale, preset: Preset, patches: int) -> dict:
    """Steady decode seconds per latent frame (4 pixel frames) and a whole clip's seconds, with peak memory; see the
    module note. The latent is random: the convolutions' cost does not depend on it."""
    device = scale.device

    def decode(latent_frames: int) -> float:
        z = torch.randn(scale.vae.latent_shape(1 + 4 * (latent_frames - 1), preset.height, preset.width),
                        generator=torch.Generator().manual_seed(2)).to(device)
        clock = Clock(device).start()
        for _ in decode_patched(vae, z, num_patches=patches, patch_dim=preset.patch_dim, overlap=preset.overlap):
            pass
        return clock.stop().seconds

    with peak_memory(device) as row:
        decode(2)  # every patch's shapes, the first and a steady chunk: cuDNN's plans are built here
        three, five = decode(3), decode(5)
    steady = max(five - three, 0.0) / 2
    clip_latent_frames = (preset.frames - 1) // 4 + 1
    return {"steady_s_per_latent_frame": round(steady, 3), "first_3_latent_frames_s": round(three, 2),
            "clip_s": round(three + (clip_latent_frames - 3) * steady, 1), "clip_frames": preset.frames, **row}


def decode_configs(scale: Scale) -> list[tuple[str, str, int]]:
    """(preset, layout, patches): every preset as the stage runs it; the largest also in the other layout and with
    two more patches (the setting for smaller cards)."""
    largest = max(scale.presets, key=lambda n: scale.presets[n].width * scale.presets[n].height)
    patches, ours = scale.presets[largest].num_patches, stage_layout(scale)
    other = next(layout for layout in LAYOUTS if layout != ours)
    return ([(name, ours, p.num_patches) for name, p in scale.presets.items()]
            + [(largest, other, patches), (largest, ours, patches + 2)])


def section_decode(run: Run) -> None:
    scale = run.scale
    vaes: dict[str, WanVAE] = {}
    configs = decode_configs(scale)
    if "cudnn_benchmark" in run.results:  # the fresh process of section autotune: the presets' own settings only
        configs = [c for c in configs if c[1] == stage_layout(scale) and c[2] == scale.presets[c[0]].num_patches]
    for name, layout, patches in configs:
        vae = vaes.get(layout) or vaes.setdefault(layout, vae_model(scale, layout=layout))
        row = {"preset": name, "layout": layout, "patches": patches}
        try:
            row.update(decode_time(vae, scale, scale.presets[name], patches))
        except GpuTrapError as err:  # NCDHW on a cuDNN in the broken range: measured as what it is
            row["skipped"] = str(err)
        run.results.add("decode", row)


def section_autotune(run: Run) -> None:
    """The decode with torch.backends.cudnn.benchmark on, in a fresh process: cuDNN's plan cache is keyed by the
    shapes, not the flag, so in this process it would only replay the plans already chosen."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "autotune.json"
        command = [sys.executable, __file__, "--sections", "decode", "--cudnn-benchmark", "--no-doctor", "--out",
                   str(out), *(["--smoke"] if run.smoke else ["--presets", *run.scale.presets])]
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"the autotuned decode failed (exit {result.returncode}): {result.stderr[-2000:]}")
        for row in json.loads(out.read_text()).get("decode", []):
            run.results.add("autotune", {**row, "cudnn_benchmark": True})


def section_lr(run: Run) -> None:
    """One LR step's forwards (cond + uncond): two forwards of batch 1, one of batch 2, that one as a CUDA graph."""
    scale, device = run.scale, run.scale.device
    preset = next(iter(scale.presets.values()))
    model = dit(WanDiT, scale)
    cond = conditioning(scale.dit, device)
    shape = scale.vae.latent_shape(preset.frames, preset.lr_height, preset.lr_width)
    x = torch.randn(1, *shape, device=device)
    t = torch.tensor([900.0], device=device)
    contexts = [cond.prompt, cond.uncond]
    x2, t2 = x.expand(2, *shape).contiguous(), t.expand(2).contiguous()
    row: dict = {"lr_steps": preset.lr_steps}

    def record(name: str, fn: Callable[[], object]) -> None:
        seconds = timed(fn, device)
        row[f"{name}_step_s"], row[f"{name}_prompt_s"] = round(seconds, 4), round(seconds * preset.lr_steps, 2)

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
            record("cuda_graph", graph.replay)
    run.results["lr"] = row
    print(f"  lr: {json.dumps(row)}", flush=True)


@contextlib.contextmanager
def float32_reference() -> Iterator[None]:
    """True float32: no TF32 in matmuls or convolutions, attention through PyTorch's math SDPA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(allow_tf32=False), sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def section_fidelity(run: Run) -> None:
    """bf16 against float32 on realistic random weights, 2K (the first preset) at FIDELITY_FRAMES frames, all HR
    steps with CFG: the HR latent per attention backend (relative RMS deviation) and the decoded pixels of the
    bf16 path (bf16 latent of `auto`'s backend, bf16 VAE) against the float32 path."""
    scale, device = run.scale, run.scale.device
    preset = next(iter(scale.presets.values())).override(frames=FIDELITY_FRAMES)
    torch.manual_seed(0)
    reference_model = dit(HRDiT, scale, dtype=torch.float32).use_attention("sdpa")
    low = dit(HRDiT, scale, dtype=torch.bfloat16)
    low.load_state_dict(reference_model.state_dict())  # the same values, rounded to each parameter's dtype
    noise, anchor = latents(scale, preset, seed=3)
    cond = conditioning(scale.dit, device, torch.float32)
    with float32_reference():
        reference = sample_hr(reference_model, cond, anchor, noise, **preset.hr_sampling()).cpu()
    del reference_model
    rows, ours = {}, None
    for backend in run.backends:
        low.use_attention(backend)
        latent = sample_hr(low, cond, anchor, noise, **preset.hr_sampling()).cpu()
        rows[backend] = round(float((latent - reference).norm() / reference.norm()), 5)
        if backend == run.best:
            ours = latent
    del low
    patches = dict(num_patches=preset.num_patches, patch_dim=preset.patch_dim, overlap=preset.overlap)
    vae32 = vae_model(scale, torch.float32)
    vae16 = vae_model(scale, torch.bfloat16)
    vae16.load_state_dict(vae32.state_dict())
    with float32_reference():
        pixels32 = torch.cat([c.cpu() for c in decode_patched(vae32, reference.to(device), **patches)], dim=1)
    del vae32
    pixels16 = torch.cat([c.cpu() for c in decode_patched(vae16, ours.to(device), **patches)], dim=1)
    deviation = (pixels16 - pixels32).abs().flatten()
    sample = deviation[torch.randperm(deviation.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    result = {"preset": preset.name, "frames": preset.frames, "qk_gain": QK_GAIN, "latent_rel_rms": rows,
              "pixel_mean_abs": round(float(deviation.mean()), 5),
              "pixel_p999_abs": round(float(sample.quantile(0.999)), 5),
              "pixel_max_abs": round(float(deviation.max()), 5), "bounds": FIDELITY_BOUNDS}
    result["within_bounds"] = (max(rows.values()) <= FIDELITY_BOUNDS["latent_rel_rms"]
                               and result["pixel_mean_abs"] <= FIDELITY_BOUNDS["pixel_mean_abs"]
                               and result["pixel_p999_abs"] <= FIDELITY_BOUNDS["pixel_p999_abs"])
    run.results["fidelity"] = result
    print(f"  fidelity: {json.dumps(result)}", flush=True)


def section_load(run: Run) -> None:
    """Seconds to load the DiT (float32 safetensors on disk, cast to bf16 on the device) and the VAE through the
    project's loaders; the files are freshly written, so the page cache is warm."""
    from pixelwizard.checkpoints import wan

    scale = run.scale
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        wan.save_dit(build(WanDiT, scale.dit, "cpu", torch.float32, init=False), ckpt)
        wan.save_vae(build(WanVAE, scale.vae, "cpu", torch.float32, init=False), ckpt)
        row = {}
        for name, load in (("dit_s", lambda: wan.load_dit(ckpt, dtype=torch.bfloat16, device=scale.device)),
                           ("vae_s", lambda: wan.load_vae(ckpt, dtype=torch.bfloat16, device=scale.device))):
            sync(scale.device)
            start = time.perf_counter()
            model = load()
            sync(scale.device)
            row[name] = round(time.perf_counter() - start, 2)
            del model
    run.results["load"] = row
    print(f"  load: {json.dumps(row)}", flush=True)


def section_offload(run: Run) -> None:
    """The HR forward at the largest preset with its blocks streamed from page-locked host memory
    (`offload_blocks`), against the resident figure of section hr."""
    from pixelwizard.models.offload import offload_blocks

    scale = run.scale
    name = max(scale.presets, key=lambda n: scale.presets[n].width * scale.presets[n].height)
    model = dit(HRDiT, scale).cpu()  # drawn on the device: faster
    streamer = offload_blocks(model, scale.device)
    model.use_attention(run.best)
    with peak_memory(scale.device) as row:
        row.update(hr_forward_time(model, scale, scale.presets[name]))
    row["locked_host_gib"] = round(streamer.pinned.locked_bytes / 2**30, 2)
    run.results.add("offload", {"preset": name, "attention": run.best, **row})


SECTION_FNS: dict[str, Callable[[Run], None]] = {
    "doctor": section_doctor, "matmul": section_matmul, "hr": section_hr, "stages": section_stages,
    "decode": section_decode, "lr": section_lr, "fidelity": section_fidelity, "autotune": section_autotune,
    "load": section_load, "offload": section_offload}


# ------------------------------------------------------------------------------------------------ expected seconds


def expected_seconds(section: str, scale: Scale, machine: Machine, backends: list[str], best: str) -> float:
    """What `section` should take on `machine` (docs/performance.md derives each term)."""
    peak = machine.bf16_tflops * 1e12
    vae, cfg = scale.vae, scale.dit

    def hr_block(preset: Preset, backend: str) -> float:
        tokens = tokens_of(cfg, vae.latent_shape(preset.frames, preset.height, preset.width))
        attention = attention_flops(cfg, tokens)
        rest = forward_flops(cfg, tokens, hr=True) - attention
        return (attention / (machine.attention_tflops(backend) * 1e12) + rest / (machine.linear * peak)) \
            / cfg.num_layers

    def decode(preset: Preset, latent_frames: int, patches: int | None = None) -> float:
        _, _, h, w = vae.latent_shape(preset.frames, preset.height, preset.width)
        patches = patches or preset.num_patches
        overlap_share = 1 + 2 * preset.overlap * (patches - 1) / (w if preset.patch_dim == "w" else h)
        return latent_frames * decode_flops(vae)[1] * h * w * overlap_share / (machine.conv * peak)

    build_s = 2.0  # drawing 5B random values and casting on the device
    presets = list(scale.presets.values())
    if section == "doctor":
        return 3.0
    if section == "matmul":
        return 2.0
    if section == "hr":
        sage = machine.triton_compile_s if "sage" in backends else 0.0
        return build_s + sage + sum(2 * BLOCKS_TIMED * hr_block(p, b) for p in presets for b in backends)
    if section == "stages":
        lr_step = lr_step_seconds(scale, machine)
        per = [3.0 + build_s + LR_STAGE_STEPS * lr_step + build_s
               + 2 * p.hr_steps * BLOCKS_TIMED * hr_block(p, best) + 1.0 + decode(p, 5) for p in presets]
        return sum(per)
    if section == "decode":
        return sum(decode(scale.presets[n], 2 + 3 + 5, patches) * (1.0 if layout == stage_layout(scale) else 1.2)
                   for n, layout, patches in decode_configs(scale)) + 2.0
    if section == "autotune":
        return machine.startup_s + 30.0 + sum(decode(p, 10) for p in presets)
    if section == "lr":
        return build_s + 12 * lr_step_seconds(scale, machine) + 2.0
    if section == "fidelity":
        preset = presets[0].override(frames=FIDELITY_FRAMES)
        tokens = tokens_of(cfg, vae.latent_shape(preset.frames, preset.height, preset.width))
        forwards = 2 * preset.hr_steps
        fp32 = forwards * forward_flops(cfg, tokens, hr=True) / (machine.fp32 * machine.fp32_tflops * 1e12)
        bf16 = sum(forwards * hr_block(preset, b) * cfg.num_layers for b in backends)
        vae_s = decode(preset, 2) * (1 + machine.bf16_tflops * machine.conv / (machine.fp32_tflops * machine.fp32))
        return 2 * build_s + fp32 + bf16 + vae_s
    if section == "load":
        dit_bytes = 4 * sum(p.numel() for p in _meta(WanDiT, cfg).parameters())
        vae_bytes = 4 * sum(p.numel() for p in _meta(WanVAE, vae).parameters())
        return 2 * (dit_bytes + vae_bytes) / (machine.disk_gbps * 1e9) + (dit_bytes + vae_bytes) / 5e9 + 2.0
    if section == "offload":
        largest = max(presets, key=lambda p: p.width * p.height)
        block_bytes = 2 * sum(p.numel() for p in _meta(HRDiT, cfg).blocks[0].parameters())
        copy_s = block_bytes / (machine.pcie_gbps * 1e9)
        return build_s + 10.0 + 2 * BLOCKS_TIMED * max(hr_block(largest, best), copy_s)
    raise ValueError(section)


def lr_step_seconds(scale: Scale, machine: Machine) -> float:
    """One LR step (a batch-2 forward): its FLOPs, or its ~3,300 dispatched ops' host time, whichever is longer."""
    preset = next(iter(scale.presets.values()))
    tokens = tokens_of(scale.dit, scale.vae.latent_shape(preset.frames, preset.lr_height, preset.lr_width))
    flops = forward_flops(scale.dit, tokens, hr=False, batch=2)
    return max(flops / (machine.linear * machine.bf16_tflops * 1e12), 3300 * machine.op_s)


def _meta(cls: type[nn.Module], config) -> nn.Module:
    with torch.device("meta"):
        return cls(config)


# ------------------------------------------------------------------------------------------------ main


def summary(results: dict) -> dict:
    """Seconds per video (text embeddings -> MP4 frames) composed from the measured parts per preset, and the
    native 2K estimate: 50 steps x CFG of the DiT at the 2K token count (an HR forward minus the adapter's 0.1%)."""
    out = {}
    best = results.get("attention_auto")
    hr = {r["preset"]: r for r in results.get("hr_forward", []) if r["attention"] == best}
    lr = results.get("lr", {})
    lr_s = min((v for k, v in lr.items() if k.endswith("_prompt_s")), default=None)
    decode = {r["preset"]: r["clip_s"] for r in results.get("decode", [])
              if r["layout"] == results["decode_layout"] and "clip_s" in r}
    steps = results.get("hr_steps", {})
    for name in hr:
        if lr_s is not None and name in decode:
            parts = {"lr": lr_s, "hr": 2 * steps.get(name, 4) * hr[name]["forward_s"], "decode": decode[name]}
            out[f"{name}_video_s"] = {**{k: round(v, 1) for k, v in parts.items()},
                                      "total": round(sum(parts.values()), 1)}
    if "2k_video_s" in out:
        native = 2 * 50 * hr["2k"]["forward_s"] + decode["2k"]
        out["native_2k_50_steps_s"] = round(native, 1)
        out["speedup_vs_native_2k"] = round(native / out["2k_video_s"]["total"], 2)
    return out


def machine_info(scale: Scale) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if scale.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", driver=doctor.nvidia_driver())
    else:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def plan(scale: Scale, machine: Machine, backends: list[str], best: str, sections: list[str]) -> list[dict]:
    return [{"section": s, "expected_s": round(expected_seconds(s, scale, machine, backends, best), 1)}
            for s in sections]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: the same code paths")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--presets", nargs="+", choices=[p for p in PRESETS if p != "tiny"], default=["2k", "4k"],
                        help="the presets measured (every section's time grows with them; the first is the one "
                             "fidelity and LR run at)")
    parser.add_argument("--out", type=Path, help="the JSON, rewritten after every section")
    parser.add_argument("--budget-s", type=float, help="skip each section that cannot finish in the seconds left")
    parser.add_argument("--plan", action="store_true",
                        help="print the plan and expected seconds for an H100 (this machine's attention backends "
                             "replaced by a bare image's: sdpa, sdpa-cudnn, sage) and stop; needs no GPU")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark on (autotune)")
    parser.add_argument("--no-doctor", action="store_true", help=argparse.SUPPRESS)  # the autotune child
    args = parser.parse_args()
    started = time.monotonic()
    scale = smoke_scale() if args.smoke else full_scale(args.presets)
    sections = [s for s in SECTIONS if s in args.sections and not (args.no_doctor and s == "doctor")]
    if args.plan:
        backends, best = ["sdpa", "sdpa-cudnn", "sage"], "sdpa-cudnn"
        for row in plan(scale, H100, backends, best, sections):
            print(f"{row['section']:<10} {row['expected_s']:>7.1f} s")
        return
    if scale.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device; run on a GPU machine, or pass --smoke for the CPU check or --plan")
    if scale.device == "cuda":
        print(f"CUDA caching allocator: {use_expandable_segments()}", flush=True)  # as the HR and decode stages
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    backends = available_backends(scale.device)
    best = first_available(auto_order(scale.device), scale.device)
    info = machine_info(scale)
    machine = machine_for(info.get("gpu", ""), args.smoke)
    results = Results(args.out, bench={"argv": sys.argv[1:], "smoke": args.smoke, "budget_s": args.budget_s,
                                       "planned_as": machine.name},
                      machine=info, attention_backends=backends, attention_auto=best, decode_layout=stage_layout(scale),
                      hr_steps={n: p.hr_steps for n, p in scale.presets.items()},
                      plan=plan(scale, machine, backends, best, sections), sections={})
    if args.cudnn_benchmark:
        results["cudnn_benchmark"] = True
    print(f"bench/gpu.py on {info.get('gpu', info.get('cpu'))}: attention {', '.join(backends)} (auto: {best})")
    for row in results["plan"]:
        print(f"  plan: {row['section']:<10} ~{row['expected_s']:.0f} s", flush=True)
    results.save()
    for signum in STOP_SIGNALS:
        signal.signal(signum, stop_on)
    run = Run(scale, machine, results, backends, best, args.smoke)
    expected = {row["section"]: row["expected_s"] for row in results["plan"]}
    torch.manual_seed(0)
    stopped = None
    for name in sections:
        record = results["sections"].setdefault(name, {"expected_s": expected[name]})
        left = None if args.budget_s is None else args.budget_s - (time.monotonic() - started)
        if stopped is not None or (left is not None and expected[name] > left):
            record["status"] = "not run" if stopped else "skipped"
            record["reason"] = stopped or f"needs ~{expected[name]:.0f} s, {max(left, 0):.0f} s of the budget left"
            print(f"section {name}: {record['status']} ({record['reason']})", flush=True)
            results.save()
            continue
        print(f"section {name} (~{expected[name]:.0f} s)", flush=True)
        start = time.perf_counter()
        try:
            SECTION_FNS[name](run)
            record["status"] = "done"
        except Stopped as signal_name:
            stopped = f"stopped by {signal_name}"
            record.update(status="interrupted", reason=stopped)
        except Exception:  # recorded and reported; the other sections still run
            record.update(status="failed", error=traceback.format_exc(limit=8))
            print(f"section {name} failed:\n{record['error']}", file=sys.stderr, flush=True)
        record["seconds"] = round(time.perf_counter() - start, 1)
        print(f"section {name}: {record['status']} in {record['seconds']} s", flush=True)
        results.save()
        gc.collect()
        if scale.device == "cuda":
            torch.cuda.empty_cache()
    results["summary"] = summary(results)
    results["total_s"] = round(time.monotonic() - started, 1)
    results.save()
    print(f"summary: {json.dumps(results['summary'])}", flush=True)
    if stopped:
        sys.exit(128 + signal.SIGTERM if "SIGTERM" in stopped else 128 + signal.SIGINT)
    failed = [n for n, r in results["sections"].items() if r.get("status") == "failed"]
    if failed:
        sys.exit(f"bench/gpu.py: sections failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
