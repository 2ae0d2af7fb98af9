"""Attention over [B, L, N, D] tensors (softmax scale 1/sqrt(D), no causal mask) with one kernel per backend:

    sdpa    torch's scaled_dot_product_attention: any device and dtype; on CUDA torch picks flash/cuDNN/mem-efficient
    flash2  FlashAttention 2 (`flash_attn`), CUDA, half precision
    flash3  FlashAttention 3 (`flash_attn_interface`, Hopper), CUDA, half precision
    sage    SageAttention (`sageattention`): int8 q·k^T, fp8/fp16 p·v; approximate, so never the default

`select_backend(name)` returns the kernel of a backend ("auto": flash3, else flash2, else sdpa, as installed and
as the device allows); an unavailable one is a one-line error naming how to install it. The flash and sage kernels
take q, k, v in bf16 (float32 inputs are cast) and return the result in q's dtype.

Padded keys (`k_lens`, the Ulysses padding) are always at the end of a sample, so each kernel runs on the first
k_lens[i] keys of sample i (one call when the lengths agree, as they do for B = 1): no mask, which would keep
SDPA off its flash kernel, and no varlen packing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

Kernel = Callable[[Tensor, Tensor, Tensor], Tensor]  # dense q [B, Lq, N, D], k/v [B, Lk, N, D] -> [B, Lq, N, D]
AttentionFn = Callable[..., Tensor]  # (q, k, v, k_lens=None) -> [B, Lq, N, D]

BACKENDS = ("sdpa", "flash2", "flash3", "sage")
AUTO_ORDER = ("flash3", "flash2", "sdpa")  # exact kernels only: sage quantises q and k
MODULES = {"flash2": "flash_attn", "flash3": "flash_attn_interface", "sage": "sageattention"}
INSTALL = {
    "flash2": "pip install flash-attn --no-build-isolation",
    "flash3": "build flash-attention's hopper/ directory: cd flash-attention/hopper && python setup.py install",
    "sage": "pip install sageattention (needs triton and an Ampere or newer GPU)",
}
HALF_DTYPES = (torch.float16, torch.bfloat16)


class AttentionBackendError(ValueError):
    """An attention backend that is unknown or cannot run here."""


def _sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    q, k, v = (rearrange(u.to(q.dtype), "b l n d -> b n l d") for u in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5)
    return rearrange(out, "b n l d -> b l n d")


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


KERNELS: dict[str, Kernel] = {"sdpa": _sdpa, "flash2": _half(_flash2), "flash3": _half(_flash3), "sage": _half(_sage)}


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


def available_backends(device: torch.device | str = "cuda") -> list[str]:
    """The backends that can run on `device` here: sdpa always; the others on CUDA when their package imports."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    return [name for name in BACKENDS if name == "sdpa" or (cuda and _installed(MODULES[name]))]


@cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def select_backend(name: str = "auto", device: torch.device | str = "cuda") -> AttentionFn:
    """The attention of backend `name` ("auto": the best exact one available on `device`)."""
    available = available_backends(device)
    if name == "auto":
        name = next(n for n in AUTO_ORDER if n in available)
    if name not in BACKENDS:
        raise AttentionBackendError(f"attention={name!r} is unknown; choose one of auto, {', '.join(BACKENDS)}")
    if name not in available:
        raise AttentionBackendError(f"attention={name!r} is not available on {torch.device(device)}: it needs a CUDA "
                                    f"GPU and the {MODULES[name]} package ({INSTALL[name]}); or choose attention=sdpa")
    return masked(KERNELS[name])


@cache
def _auto(device_type: str) -> AttentionFn:
    return select_backend("auto", device_type)


def attention(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None = None) -> Tensor:
    """q [B, Lq, N, D], k/v [B, Lk, N, D], k_lens [B] valid keys per sample -> [B, Lq, N, D] in q's dtype, with
    the best backend for q's device (chosen once per device type, not per call)."""
    return _auto(q.device.type)(q, k, v, k_lens)
