"""Attention over [B, L, N, D] tensors (softmax scale 1/sqrt(D), no causal mask) with one kernel per backend:

    sdpa        torch's scaled_dot_product_attention as torch dispatches it: any device and dtype; on CUDA in bf16
                its own FlashAttention-2 kernel first (then mem-efficient, then math)
    sdpa-cudnn  the same call held to torch's cuDNN attention kernel (CUDA, half precision; no extra package)
    flash2      FlashAttention 2 (`flash_attn`), CUDA, half precision
    flash3      FlashAttention 3 (`flash_attn_interface`, Hopper), CUDA, half precision
    sage        SageAttention (`sageattention`): int8 q·k^T, fp8/fp16 p·v; approximate, so never the default

A backend is available only after a probe on the device passes: its package imports and one tiny call agrees with
float32 attention. A package that is installed but broken (wrong CUDA or ABI, no kernel for this GPU) costs one
warning line and is skipped; an absent one is skipped silently. The probe runs once per backend and device.

`auto` takes the first available of the exact kernels in `auto_order(device)`. On Hopper (sm90+): flash3, sdpa-cudnn,
flash2, sdpa. Public bf16 forward figures at head dim 128 on an H100: FlashAttention 3 ~600-740 TFLOP/s (its
paper), cuDNN 9 attention about as fast (NVIDIA's cuDNN 9 figures; PyTorch 2.5's notes: up to 75% over the FA2-class
kernel) and FlashAttention 2 ~330-350 TFLOP/s, which is also what torch's default SDPA dispatch runs. flash3 comes
first because it is the one measured most widely; bench/gpu.py times every available backend on the real shapes,
and this order is to be revised by what it measures. Elsewhere: flash2, then sdpa (torch ranks its own cuDNN
kernel last off Hopper).

`select_backend(name)` returns the kernel of a backend; an unavailable one is a one-line error naming how to install
it. The half-precision kernels take q, k, v in bf16 (float32 inputs are cast) and return the result in q's dtype.

Padded keys (`k_lens`, the Ulysses padding) are always at the end of a sample, so each kernel runs on the first
k_lens[i] keys of sample i (one call when the lengths agree, as they do for B = 1): no mask, which would keep
SDPA off its fast kernels, and no varlen packing.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

Kernel = Callable[[Tensor, Tensor, Tensor], Tensor]  # dense q [B, Lq, N, D], k/v [B, Lk, N, D] -> [B, Lq, N, D]
AttentionFn = Callable[..., Tensor]  # (q, k, v, k_lens=None) -> [B, Lq, N, D]

log = logging.getLogger("pixelwizard")

BACKENDS = ("sdpa", "sdpa-cudnn", "flash2", "flash3", "sage")
MODULES = {"flash2": "flash_attn", "flash3": "flash_attn_interface", "sage": "sageattention"}
CUDA_ONLY = ("sdpa-cudnn",)  # torch's own kernels that exist on CUDA only (the packages' kernels are probed)
INSTALL = {
    "sdpa-cudnn": "torch's cuDNN attention: a CUDA GPU (sm80+) and a torch built with cuDNN 9",
    "flash2": "the flash_attn package: pip install flash-attn --no-build-isolation",
    "flash3": "the flash_attn_interface package: cd flash-attention/hopper && python setup.py install",
    "sage": "the sageattention package: pip install sageattention (needs triton and an Ampere or newer GPU)",
}
HALF_DTYPES = (torch.float16, torch.bfloat16)
PROBE_SHAPE = (1, 64, 2, 128)  # [B, L, N, D]: the real head width
PROBE_TOLERANCE = {"sage": 0.1}  # max |out - ref| / max |ref|; the exact kernels: bf16 rounding
EXACT_TOLERANCE = 0.02


class AttentionBackendError(ValueError):
    """An attention backend that is unknown or cannot run here."""


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    q, k, v = (rearrange(u.to(q.dtype), "b l n d -> b n l d") for u in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5)
    return rearrange(out, "b n l d -> b l n d")


def _sdpa_cudnn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return _sdpa(q, k, v)


def _half(kernel: Callable[..., Tensor | tuple[Tensor, ...]]) -> Kernel:
    """A [B, L, N, D] half-precision CUDA kernel as a Kernel: bf16 inputs, result in q's dtype."""

    def run(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        dtype = q.dtype if q.dtype in HALF_DTYPES else torch.bfloat16
        out = kernel(q.to(dtype), k.to(dtype), v.to(dtype))
        if isinstance(out, tuple):  # some FA3 releases also return the softmax log-sum-exp
            out = out[0]
        return out.to(q.dtype)

    return run


def _flash2(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False)


def _flash3(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from flash_attn_interface import flash_attn_func

    return flash_attn_func(q, k, v, softmax_scale=q.shape[-1] ** -0.5, causal=False)


def _sage(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False, sm_scale=q.shape[-1] ** -0.5)


KERNELS: dict[str, Kernel] = {"sdpa": _sdpa, "sdpa-cudnn": _half(_sdpa_cudnn), "flash2": _half(_flash2),
                              "flash3": _half(_flash3), "sage": _half(_sage)}


def masked(kernel: Kernel) -> AttentionFn:
    """`kernel` with key lengths: keys at positions >= k_lens[i] of sample i are ignored."""

    def attend(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None = None) -> Tensor:
        if k_lens is None:
            return kernel(q, k, v)
        lengths = [int(n) for n in k_lens.tolist()]
        if len(set(lengths)) == 1:
            return kernel(q, k[:, :lengths[0]], v[:, :lengths[0]])
        return torch.cat([kernel(q[i:i + 1], k[i:i + 1, :n], v[i:i + 1, :n]) for i, n in enumerate(lengths)])

    return attend


def probe(name: str, device: torch.device | str) -> str | None:
    """Why backend `name` cannot run on `device` (None: it can). Packages that are not installed are not tried."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return _probe(name, str(device))


@cache
def _probe(name: str, device: str) -> str | None:
    if name == "sdpa":
        return None
    where = torch.device(device)
    if name in CUDA_ONLY and (where.type != "cuda" or not torch.cuda.is_available()):
        return f"it needs a CUDA GPU ({INSTALL[name]})"
    module = MODULES.get(name)
    if module is not None and importlib.util.find_spec(module) is None:
        return f"it needs {INSTALL[name]}"
    try:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(PROBE_SHAPE, generator=gen).to(where, torch.bfloat16) for _ in range(3))
        out = KERNELS[name](q, k, v).float()
        scores = torch.einsum("blnd,bmnd->bnlm", q.float(), k.float()) * PROBE_SHAPE[-1] ** -0.5
        want = torch.einsum("bnlm,bmnd->blnd", scores.softmax(-1), v.float())
        error = float((out - want).abs().max() / want.abs().max())
        if out.shape != want.shape or not error <= PROBE_TOLERANCE.get(name, EXACT_TOLERANCE):
            raise RuntimeError(f"its result is off by {error:.3g} (relative) on a test input")
    except Exception as err:  # any failure of a third-party kernel: report it, use another
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = f"{module or 'its kernel'} is installed but failed a test call on {where}: {type(err).__name__}: " \
                 f"{first}"[:300]
        log.warning("attention backend %s is not used: %s", name, reason)
        return reason
    return None


def auto_order(device: torch.device | str) -> tuple[str, ...]:
    """The exact kernels `auto` tries on `device`, fastest first (see the module note)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return ("sdpa",)
    if torch.cuda.get_device_capability(device) >= (9, 0):
        return ("flash3", "sdpa-cudnn", "flash2", "sdpa")
    return ("flash2", "sdpa")


def available_backends(device: torch.device | str = "cuda") -> list[str]:
    """The backends that pass their probe on `device` (sdpa always)."""
    return [name for name in BACKENDS if probe(name, device) is None]


def first_available(order: tuple[str, ...], device: torch.device | str) -> str:
    """The first backend of `order` that passes its probe on `device` (sdpa when none does)."""
    return next((n for n in order if probe(n, device) is None), "sdpa")


def select_backend(name: str = "auto", device: torch.device | str = "cuda") -> AttentionFn:
    """The attention of backend `name` ("auto": the first exact one of `auto_order(device)` that passes its probe)."""
    if name == "auto":
        name = first_available(auto_order(device), device)
    if name not in BACKENDS:
        raise AttentionBackendError(f"attention={name!r} is unknown; choose one of auto, {', '.join(BACKENDS)}")
    reason = probe(name, device)
    if reason is not None:
        raise AttentionBackendError(f"attention={name!r} is not available on {torch.device(device)}: {reason}; "
                                    "or choose attention=sdpa")
    return masked(KERNELS[name])


@cache
def _auto(device_type: str) -> AttentionFn:
    return select_backend("auto", device_type)


def attention(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None = None) -> Tensor:
    """q [B, Lq, N, D], k/v [B, Lk, N, D], k_lens [B] valid keys per sample -> [B, Lq, N, D] in q's dtype, with
    the best backend for q's device (chosen once per device type, not per call)."""
    return _auto(q.device.type)(q, k, v, k_lens)
