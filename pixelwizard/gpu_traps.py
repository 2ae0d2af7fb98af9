"""GPU software traps that no CPU test can reach, each decided from version numbers alone (the tests pass any
versions in), used where the code path is chosen and listed by `pixelwizard doctor` with its fix.

Conv3d on cuDNN 9.8-9.14. PyTorch's `ConvParams::use_cudnn` (aten/src/ATen/native/Convolution.cpp, torch >= 2.9)
refuses cuDNN for a Conv3d whose kernel is larger than 1 when the input is float16/bfloat16, the runtime cuDNN is in
[9.8.0, 9.15.0) and `cudnn_conv_suggest_memory_format(input, weight)` is the contiguous (NCDHW) one; the call falls
back to `slow_conv_dilated3d`, whose vol2col buffer for one 4K patch chunk of the VAE's last up-block is ~60 GB. Older
torch runs cuDNN there and gets wrong results on large inputs (pytorch#163539). Channels-last-3d input or weight
makes the suggested format channels-last, which passes the gate. torch 2.9 ships cuDNN 9.10.2.

FSDP2 under inference mode. FSDP2's unshard crashed in `torch.inference_mode()` ("Inference tensors do not track
version counter", fixed by pytorch#197327, after torch 2.11), so the samplers run a sharded model under no_grad
(`pixelwizard.distributed.no_autograd`).
"""

from __future__ import annotations

import torch

CUDNN_CONV3D_BROKEN = (90800, 91500)  # [first bad, first good) runtime cuDNN, as torch.backends.cudnn.version()
HALF_DTYPES = (torch.float16, torch.bfloat16)


class GpuTrapError(RuntimeError):
    """A combination of GPU software that would run silently slow or wrong; the message names the versions and fix."""


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
