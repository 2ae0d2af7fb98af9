"""GPU software traps that no CPU test can reach, each decided from version numbers alone (the tests pass any
versions in), used where the code path is chosen and listed by `pixelwizard doctor` with its fix.

Conv3d on cuDNN 9.8-9.14. PyTorch's `ConvParams::use_cudnn` (aten/src/ATen/native/Convolution.cpp, torch >= 2.9)
refuses cuDNN for a Conv3d whose kernel is larger than 1 when the input is float16/bfloat16, the runtime cuDNN is in
[9.8.0, 9.15.0) and `cudnn_conv_suggest_memory_format(input, weight)` is the contiguous (NCDHW) one; the call falls
back to `slow_conv_dilated3d`, whose vol2col buffer for one 4K patch chunk of the VAE's last up-block is ~60 GB. Older
torch runs cuDNN there and gets wrong results on large inputs (pytorch#163539). Channels-last-3d input or weight
makes the suggested format channels-last, which passes the gate. torch 2.9 ships cuDNN 9.10.2.

Fragmentation. The HR and decode stages allocate large activations of changing sizes; with CUDA's caching allocator in
fixed segments, freed blocks fragment and reserved memory outgrows allocated memory (on a 24 GB card what fails is
the reserved figure). Those stages, and bench/gpu.py, run with expandable segments (`use_expandable_segments`).

FSDP2 under inference mode. FSDP2's unshard crashed in `torch.inference_mode()` ("Inference tensors do not track
version counter", fixed by pytorch#197327, after torch 2.11), so the samplers run a sharded model under no_grad
(`pixelwizard.distributed.no_autograd`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

MIN_TORCH = (2, 11)  # pyproject.toml's floor, the torch GPU images ship (the CI runs the model tests on it)
FSDP_INFERENCE_FIXED = (2, 14)  # pytorch#197327 merged in September 2026; 2.13 and older count as affected
CUDNN_CONV3D_BROKEN = (90800, 91500)  # [first bad, first good) runtime cuDNN, as torch.backends.cudnn.version()
HALF_DTYPES = (torch.float16, torch.bfloat16)
ALLOC_CONF_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch >= 2.9 also reads the second


class GpuTrapError(RuntimeError):
    """A combination of GPU software that would run silently slow or wrong; the message names the versions and fix."""


def use_expandable_segments() -> str:
    """PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True in this process unless the user set an allocator configuration;
    returns the one in force. CUDA's caching allocator reads it when it starts, at the process's first CUDA
    allocation: call this before any (Job.start does, first thing)."""
    for name in ALLOC_CONF_VARS:
        if name in os.environ:
            return f"{name}={os.environ[name]} (set by the user)"
    os.environ[ALLOC_CONF_VARS[0]] = "expandable_segments:True"
    return f"{ALLOC_CONF_VARS[0]}=expandable_segments:True"


def cudnn_name(version: int) -> str:
    """torch.backends.cudnn.version() as people write it: 91002 -> '9.10.2' (cuDNN 9 encodes major*10000 +
    minor*100 + patch, cuDNN 8 major*1000 + minor*100 + patch)."""
    if version >= 90000:
        return f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    return f"{version // 1000}.{version // 100 % 10}.{version % 100}"


def conv3d_skips_cudnn(cudnn_version: int | None, dtype: torch.dtype, channels_last: bool) -> bool:
    """Whether a Conv3d (kernel > 1) of `dtype` in NCDHW (`channels_last` False) or channels-last-3d misses cuDNN on
    this runtime cuDNN (None: no cuDNN, as on the CPU)."""
    low, high = CUDNN_CONV3D_BROKEN
    return (cudnn_version is not None and low <= cudnn_version < high and dtype in HALF_DTYPES
            and not channels_last)


def check_conv3d(cudnn_version: int | None, dtype: torch.dtype, channels_last: bool) -> None:
    """Stop, in one line, before a VAE decode that would fall back to the slow Conv3d kernel."""
    if conv3d_skips_cudnn(cudnn_version, dtype, channels_last):
        low, high = (cudnn_name(v) for v in CUDNN_CONV3D_BROKEN)
        raise GpuTrapError(
            f"a {str(dtype).removeprefix('torch.')} VAE in NCDHW on cuDNN {cudnn_name(cudnn_version)}: PyTorch turns "
            f"cuDNN off for half-precision Conv3d on cuDNN {low} to below {high} (slow_conv_dilated3d: tens of GB "
            f"and minutes per chunk); run the VAE channels-last-3d (the CUDA default: "
            f"vae.use_memory_format(torch.channels_last_3d)), or install a torch with cuDNN >= {high}")


@dataclass(frozen=True)
class Trap:
    """One known-bad combination as it stands here: whether it applies, what happens, what to do, and whether
    PixelWizard already does it itself."""

    name: str
    applies: bool
    detail: str
    fix: str
    handled: bool = False


def torch_release(version: str) -> tuple[int, int]:
    """'2.11.0+cu130' -> (2, 11)."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def known_traps(torch_version: str, cudnn_version: int | None, capability: tuple[int, int] | None) -> list[Trap]:
    """Every trap above for this torch, runtime cuDNN (None: none) and GPU compute capability (None: no GPU)."""
    release = torch_release(torch_version)
    low, high = (cudnn_name(v) for v in CUDNN_CONV3D_BROKEN)
    conv3d = conv3d_skips_cudnn(cudnn_version, torch.bfloat16, channels_last=False)
    cudnn = "no cuDNN here" if cudnn_version is None else \
        f"cuDNN {cudnn_name(cudnn_version)}: an NCDHW bf16 Conv3d {'falls back to' if conv3d else 'stays off'} " \
        "slow_conv_dilated3d"
    hopper = capability is not None and capability >= (9, 0)
    floor = ".".join(map(str, MIN_TORCH))
    return [
        Trap(f"torch below {floor}", release < MIN_TORCH, f"torch {torch_version}",
             f"pip install 'torch>={floor}' (the oldest torch the tests run on)"),
        Trap(f"half-precision Conv3d off cuDNN {low} to below {high}", conv3d, cudnn,
             "the VAE runs channels-last-3d on CUDA, which passes the gate (an NCDHW one stops with an error); "
             f"for other code: channels-last-3d, or cuDNN >= {high}", handled=True),
        Trap("FSDP2 unshard under inference mode", release < FSDP_INFERENCE_FIXED,
             f"torch {torch_version}: multi-GPU HR could fail with 'Inference tensors do not track version counter'",
             "the samplers run an FSDP2-sharded model under no_grad", handled=True),
        Trap("torch's default SDPA kernel on Hopper", hopper,
             "torch's own dispatch runs its FlashAttention-2 kernel here" if hopper else "not a Hopper GPU",
             "attention=auto prefers flash3, then sdpa-cudnn (torch's cuDNN kernel, no package needed)", handled=True),
    ]
