"""Peak GPU memory of every stage at 2K and 4K, full size (Wan2.2-TI2V-5B, 121 frames, bf16), on the CPU.

    python bench/memory.py                   # the table: text, LR, HR (4 steps x CFG), decode; 2K and 4K
    python bench/memory.py --validate        # the method against real CPU allocations at a reduced size
    python bench/memory.py --stages hr --presets 4k --out FILE.jsonl

Method: the real modules and the stages' real code paths (`sample_lr`, `sample_hr`, `decode_patched`, the umT5
encoder) run on fake CUDA tensors (FakeTensorMode: shapes, dtypes, strides and lifetimes, no data), the
weights allocated in their inference dtypes. `LiveBytes` counts every tensor storage once, from the op that
creates it until it is freed, rounded up to the CUDA caching allocator's 512-byte blocks: its peak is what
`torch.cuda.max_memory_allocated` reports (allocated, not reserved: fragmentation and the CUDA context, ~0.5-1
GiB, come on top). Attention is counted as a flash kernel allocates (output + float32 log-sum-exp, never an
Lq x Lk matrix): `FlashAllocations` stands in for `F.scaled_dot_product_attention`, which every backend's
memory matches (sdpa's flash/mem-efficient/cuDNN kernels, flash-attn 2/3, SageAttention). The same holds for the
VAE's single-head attention (head dim 1024, which torch runs with its mem-efficient kernel on CUDA).

Each stage's peak includes its resident weights. The VAE runs in bf16 (the decode stage's GPU setting); the
host canvas of the patched decode is reported beside (host memory). The sampler loops run the presets' step
counts except LR, capped at `LR_STEPS` (each step repeats the same allocations once the solver's history is full).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout: no install needed

from report import report  # noqa: E402

from pixelwizard.io.patched_decode import decode_patched  # noqa: E402
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig  # noqa: E402
from pixelwizard.models.dit import WanDiT, rope_for_grid  # noqa: E402
from pixelwizard.models.hr_model import HRDiT  # noqa: E402
from pixelwizard.models.vae import WanVAE  # noqa: E402
from pixelwizard.pipeline.presets import get_preset  # noqa: E402
from pixelwizard.sampling.samplers import Conditioning, sample_hr, sample_lr  # noqa: E402
from pixelwizard.sampling.seeds import gaussian_noise  # noqa: E402

latent_shape = VAEConfig().latent_shape  # [48, T, H/16, W/16]: the tiny VAEs share the geometry

GIB = 2**30
CUDA_BLOCK = 512  # the caching allocator's smallest block
LR_STEPS = 4
PROMPT_TOKENS = 64  # text embedding rows of the prompt (the negative prompt is about 100)
BUDGETS_GIB = {"2k": 16.0, "4k": 22.0}  # issue 10: every stage on a 24 GB card at 4K, within 16 GiB at 2K
STAGES = ("text", "lr", "hr", "decode")
# From issue 10 (the same method applied to the original Wan2.2 / PixelWizard code; not re-derived here).
ORIGINAL_GIB = {("hr", "2k"): 42.7, ("hr", "4k"): 83.2, ("decode", "2k"): 31.8, ("decode", "4k"): 51.2}


class LiveBytes(TorchDispatchMode):
    """Bytes of live tensor storages per device type and their peak; each storage counted once, from the op that
    creates it until it is freed, rounded up to `block` bytes."""

    def __init__(self, block: int = CUDA_BLOCK) -> None:
        super().__init__()
        self.block = block
        self.live: defaultdict[str, int] = defaultdict(int)
        self.peak: defaultdict[str, int] = defaultdict(int)
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self._paused:
            for t in tree_leaves(out):
                if isinstance(t, Tensor):
                    self.count(t)
        return out

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def count(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        size = -(-storage.nbytes() // self.block) * self.block
        device = t.device.type
        self._seen[storage] = size
        weakref.finalize(storage, self._release, device, size)
        self.live[device] += size
        self.peak[device] = max(self.peak[device], self.live[device])

    def _release(self, device: str, size: int) -> None:
        self.live[device] -= size

    def reset_peak(self) -> None:
        self.peak = defaultdict(int, self.live)


SCALAR_READ = 0.5
NO_CUDA = re.compile(r"not linked with support for cuda|from the 'CUDA' backend")
CUDA = torch.device("cuda", 0)
GUARDED = {Tensor.__getitem__, Tensor.__setitem__, Tensor.contiguous}  # always refused: skip the first try


def is_cuda_device(value: object) -> bool:
    return (isinstance(value, torch.device) and value.type == "cuda") or (isinstance(value, str)
                                                                          and value.startswith("cuda"))


class ScalarReads(TorchDispatchMode):
    """A scalar read of a fake tensor (`.item()`: the UniPC solver's node ratio) gets SCALAR_READ; no shape in
    the stages measured depends on one."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default):
            return SCALAR_READ
        return func(*args, **(kwargs or {}))


class FakeCuda(TorchFunctionMode):
    """Fake CUDA tensors on a CPU-only torch, and attention as a flash kernel allocates.

    F.scaled_dot_product_attention allocates the float32 log-sum-exp [B, N, Lq] and the output, no data. A call
    that a CPU-only torch refuses for CUDA tensors (its indexing and `.contiguous()` want a CUDA device guard,
    torch.tensor(data, device="cuda") a CUDA kernel) runs again with its fake CUDA tensors presented as CPU ones;
    its outputs are presented as CUDA tensors again and counted as such."""

    def __init__(self, tracker: LiveBytes) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, v = args[0], args[2]
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            del lse
            return out
        if func in GUARDED:
            return self._as_cpu(func, args, kwargs)
        try:
            return func(*args, **kwargs)
        except (RuntimeError, NotImplementedError) as err:
            if not NO_CUDA.search(str(err)):
                raise
        return self._as_cpu(func, args, kwargs)

    def _as_cpu(self, func, args, kwargs):
        from torch._subclasses.fake_tensor import FakeTensor

        cuda = [t for t in tree_leaves((args, kwargs)) if isinstance(t, FakeTensor) and t.device.type == "cuda"]
        to_cuda = any(is_cuda_device(a) for a in (*args, kwargs.get("device")))
        if not cuda and not to_cuda:
            return func(*args, **kwargs)
        if to_cuda:  # a copy to the CPU instead (`.to` would otherwise return a CPU tensor itself)
            args = tuple("cpu" if is_cuda_device(a) else a for a in args)
            kwargs = {**kwargs, **({"device": "cpu"} if "device" in kwargs else {}),
                      **({"copy": True} if func is Tensor.to else {})}
        for t in cuda:
            t.fake_device = torch.device("cpu")
        try:
            with self.tracker.paused():
                out = func(*args, **kwargs)
        finally:
            for t in cuda:
                t.fake_device = CUDA
        for t in tree_leaves(out):
            if isinstance(t, FakeTensor):
                t.fake_device = CUDA
                t.constant = None  # a CPU constant would send later ops back to the CPU
                self.tracker.count(t)
        return out


@contextlib.contextmanager
def counting(device: str, block: int = CUDA_BLOCK, fake: bool = True) -> Iterator[LiveBytes]:
    """Count allocations (see LiveBytes) with attention as a flash kernel; on fake tensors unless `fake` is off."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    tracker = LiveBytes(block)
    rope_for_grid.cache_clear()  # a cached table must not cross between fake and real tensors
    stack = contextlib.ExitStack()
    stack.callback(rope_for_grid.cache_clear)
    with stack:
        if fake:
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
            stack.enter_context(ScalarReads())
        stack.enter_context(FakeCuda(tracker))
        stack.enter_context(tracker)
        stack.enter_context(torch.inference_mode())
        yield tracker


def materialize(model: nn.Module, dtype: Callable[[str], torch.dtype], device: str, init: bool = False) -> nn.Module:
    """A model built on meta, its parameters allocated on `device` in their inference dtypes (tied ones once;
    random values when `init`, for real runs)."""
    made: dict[int, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        for name, p in module._parameters.items():
            if p is not None and id(p) not in made:
                key = f"{prefix}.{name}" if prefix else name
                data = torch.empty(p.shape, dtype=dtype(key), device=device)
                if init:
                    nn.init.normal_(data, std=0.02)
                made[id(p)] = nn.Parameter(data, requires_grad=False)
            if p is not None:
                module._parameters[name] = made[id(p)]
    return model.eval()


def dit_dtypes(model: WanDiT, dtype: torch.dtype = torch.bfloat16) -> Callable[[str], torch.dtype]:
    return lambda key: torch.float32 if model.keeps_float32(key) else dtype


def on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build a module's structure on the meta device, outside fake mode (constructors may read real tensors)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily(), torch.device("meta"):
        return factory()


def build(cls: type[nn.Module], config, device: str, init: bool = False,
          dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    model = on_meta(lambda: cls(config))
    dtypes = dit_dtypes(model, dtype) if isinstance(model, WanDiT) else (lambda _key: dtype)
    return materialize(model, dtypes, device, init)


def conditioning(config: DiTConfig, device: str) -> Conditioning:
    return Conditioning(torch.randn(PROMPT_TOKENS, config.text_dim, device=device, dtype=torch.bfloat16),
                        torch.randn(2 * PROMPT_TOKENS, config.text_dim, device=device, dtype=torch.bfloat16))


def stage_text(preset, device: str) -> None:
    from transformers import UMT5EncoderModel

    from pixelwizard.models.text_encoder import umt5_config

    config = T5Config()
    model = materialize(on_meta(lambda: UMT5EncoderModel(umt5_config(config))), lambda _key: torch.bfloat16, device)
    ids = torch.zeros(1, config.text_len, dtype=torch.long, device=device)
    model(input_ids=ids, attention_mask=torch.ones_like(ids))


def stage_lr(preset, device: str, config: DiTConfig = DiTConfig()) -> None:
    model = build(WanDiT, config, device)
    preset = preset.override(lr_steps=min(preset.lr_steps, LR_STEPS))
    noise = gaussian_noise(latent_shape(preset.frames, preset.lr_height, preset.lr_width), seed=0)
    sample_lr(model, conditioning(config, device), noise, **preset.lr_sampling())


def stage_hr(preset, device: str, config: DiTConfig = DiTConfig(), offload: bool = False) -> None:
    model = build(HRDiT, config, "cpu" if offload else device)
    if offload:
        from pixelwizard.models.offload import offload_blocks

        streamer = offload_blocks(model, device)  # noqa: F841 (keeps the hooks' owner alive)
        track_parameter_devices(model)
    lr_latent = torch.randn(latent_shape(preset.frames, preset.lr_height, preset.lr_width))
    noise = gaussian_noise(latent_shape(preset.frames, preset.height, preset.width), seed=0)
    sample_hr(model, conditioning(config, device), lr_latent, noise, **preset.hr_sampling())


def track_parameter_devices(model: nn.Module) -> None:
    """`p.data = t` does not update a fake parameter's device: after offload_blocks, and around each block as
    its weights arrive and leave, present the parameters on the device their data is on."""

    def present(module: nn.Module, device: torch.device) -> None:
        for p in module.parameters():
            p.fake_device = device

    blocks = {id(p) for p in model.blocks.parameters()}
    for p in model.parameters():
        if id(p) not in blocks:
            p.fake_device = CUDA
    for block in model.blocks:  # registered after the streamer's hooks, so they run after them
        block.register_forward_pre_hook(lambda m, _a: present(m, CUDA))
        block.register_forward_hook(lambda m, _a, _o: present(m, torch.device("cpu")))


def stage_decode(preset, device: str, config: VAEConfig = VAEConfig(), vae_dtype: str = "bfloat16") -> None:
    vae = build(WanVAE, config, device, dtype=getattr(torch, vae_dtype))
    z = torch.randn(latent_shape(preset.frames, preset.height, preset.width))
    for _ in decode_patched(vae, z, num_patches=preset.num_patches, patch_dim=preset.patch_dim,
                            overlap=preset.overlap):
        pass


STAGE_FNS = {"text": stage_text, "lr": stage_lr, "hr": stage_hr, "decode": stage_decode}


PCIE_BYTES_PER_S = 25e9  # PCIe 4 x16, pinned host memory (PCIe 5: ~50e9)
ASSUMED_TFLOPS = 600.0  # a 2K/4K HR forward on an H100/H200 at ~60-75% of the bf16 matmul peak


def offload_price(preset, config: DiTConfig = DiTConfig()) -> dict:
    """Seconds per HR step (2 forwards) that block streaming adds, estimated: each block's copy overlaps the
    previous block's compute, so only the first block's copy and any copy longer than a block's compute show."""
    from gpu import forward_flops

    with torch.device("meta"):
        model = HRDiT(config)
    block_bytes = sum(p.numel() * 2 for p in model.blocks.parameters()) / config.num_layers  # bf16
    _, t, h, w = latent_shape(preset.frames, preset.height, preset.width)
    tokens = t * (h // 2) * (w // 2)
    block_s = forward_flops(config, tokens, hr=True) / config.num_layers / (ASSUMED_TFLOPS * 1e12)
    copy_s = block_bytes / PCIE_BYTES_PER_S
    exposed = copy_s + (config.num_layers - 1) * max(0.0, copy_s - block_s)
    return {"copy_s_per_forward": round(copy_s * config.num_layers, 2), "block_compute_s": round(block_s, 3),
            "offload_s_per_step": round(2 * exposed, 3)}


def measure(stage: str, preset_name: str, uncond_anchor: str = "same", num_patches: int | None = None,
            **kw) -> dict:
    preset = get_preset(preset_name, uncond_anchor=uncond_anchor, num_patches=num_patches)
    start = time.perf_counter()
    with counting("cuda") as tracker:
        STAGE_FNS[stage](preset, "cuda", **kw)
    return {"stage": stage, "preset": preset_name, "peak_gib": round(tracker.peak["cuda"] / GIB, 2),
            "host_peak_gib": round(tracker.peak["cpu"] / GIB, 2), "estimate_s": round(time.perf_counter() - start, 1),
            **({"uncond_anchor": uncond_anchor} if uncond_anchor != "same" else {}),
            **({"num_patches": num_patches} if num_patches else {}), **kw}


# Reduced size for --validate: real widths per head (128), 2 thin layers, a real token count; tiny VAE.
VALIDATE_DIT = DiTConfig(dim=768, ffn_dim=3072, num_heads=6, num_layers=2, text_dim=512)
VALIDATE_VAE = VAEConfig(dim=16, dec_dim=32)
VALIDATE_PRESET = dict(width=1280, height=704, frames=9, lr_width=448, lr_height=256, hr_steps=2, num_patches=2)
# The decode is validated smaller and in float32 only: on CPUs without AVX512-BF16, torch's bf16 Conv3d falls back to a
# kernel ~100x slower than float32 (365 s against 3.4 s for this decode on a 2-core AVX2 EPYC).
VALIDATE_DECODE_PRESET = dict(VALIDATE_PRESET, width=512, height=288, frames=5)
VALIDATE_CHUNK = 1024


def cpu_allocated_peak(fn: Callable[[], None]) -> int:
    """Peak bytes held from the CPU allocator while `fn` runs (the profiler's memory events, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    total = peak = 0
    for e in events:
        total += e.nbytes()
        peak = max(peak, total)
    return peak


def validate() -> list[dict]:
    """Reduced-size runs counted three ways on the CPU: `estimate`, LiveBytes on fake tensors (the method);
    `visible`, LiveBytes on the real run with data (what the method can see); `allocated`, the CPU allocator's own
    events during the real run (also buffers that kernels allocate internally). Attention is a flash kernel in all."""
    torch.manual_seed(0)
    results = []
    for name, dtype in (("hr", torch.bfloat16), ("hr", torch.float32), ("decode", torch.float32)):
        run = validate_hr if name == "hr" else validate_decode
        preset = get_preset("tiny", **(VALIDATE_PRESET if name == "hr" else VALIDATE_DECODE_PRESET))
        with counting("cpu", block=1) as tracker:
            run(preset, "cpu", False, dtype)
        estimate = tracker.peak["cpu"]
        with counting("cpu", block=1, fake=False) as tracker:
            run(preset, "cpu", True, dtype)
        visible = tracker.peak["cpu"]

        def real(run=run, dtype=dtype) -> None:
            with FakeCuda(LiveBytes()), torch.inference_mode():
                run(preset, "cpu", True, dtype)

        allocated = cpu_allocated_peak(real)
        results.append({"validate": name, "dtype": str(dtype).removeprefix("torch."),
                        "estimate_mib": round(estimate / 2**20, 1), "visible_mib": round(visible / 2**20, 1),
                        "allocated_mib": round(allocated / 2**20, 1),
                        "error_vs_visible": round(estimate / visible - 1, 4),
                        "error_vs_allocated": round(estimate / allocated - 1, 4)})
    return results


def validate_hr(preset, device: str, init: bool, dtype: torch.dtype) -> None:
    model = build(HRDiT, VALIDATE_DIT, device, init, dtype)
    model.chunk_tokens = VALIDATE_CHUNK
    lr = torch.randn(latent_shape(preset.frames, preset.lr_height, preset.lr_width))
    noise = gaussian_noise(latent_shape(preset.frames, preset.height, preset.width), seed=0)
    sample_hr(model, conditioning(VALIDATE_DIT, device), lr, noise, **preset.hr_sampling())


def validate_decode(preset, device: str, init: bool, dtype: torch.dtype) -> None:
    vae = build(WanVAE, VALIDATE_VAE, device, init, dtype)
    z = torch.randn(latent_shape(preset.frames, preset.height, preset.width))
    for _ in decode_patched(vae, z, num_patches=preset.num_patches, patch_dim=preset.patch_dim,
                            overlap=preset.overlap):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--presets", nargs="+", choices=("2k", "4k"), default=["2k", "4k"])
    parser.add_argument("--offload", action="store_true", help="also the HR stage with block streaming")
    parser.add_argument("--uncond-anchor", choices=("same", "zero"), default="same", help="the preset setting")
    parser.add_argument("--num-patches", type=int, help="decode patches (default: the preset's)")
    parser.add_argument("--vae-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--validate", action="store_true", help="the method against real CPU allocations")
    parser.add_argument("--out", help="append json lines here")
    args = parser.parse_args()
    if args.validate:
        rows: Iterator[dict] = iter(validate())
    else:
        vae = {"vae_dtype": args.vae_dtype} if args.vae_dtype != "bfloat16" else {}
        jobs = [(stage, preset, vae if stage == "decode" else {}) for preset in args.presets for stage in args.stages]
        jobs += [("hr", preset, {"offload": True}) for preset in args.presets] if args.offload else []
        rows = ({**measure(stage, preset, args.uncond_anchor, args.num_patches, **kw),
                 **(offload_price(get_preset(preset)) if kw.get("offload") else {})} for stage, preset, kw in jobs)
    for row in rows:
        if "stage" in row:
            row["original_gib"] = ORIGINAL_GIB.get((row["stage"], row["preset"]))
            row["budget_gib"] = BUDGETS_GIB[row["preset"]]
        report(json.dumps(row), args.out)


if __name__ == "__main__":
    main()
