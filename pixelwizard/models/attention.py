"""Scaled dot-product attention over [B, L, N, D] tensors with an optional key-length mask.

On CUDA with FlashAttention installed (FA3's `flash_attn_interface` preferred, else FA2's `flash_attn`) the
batch is packed into the varlen layout and run in half precision; everywhere else torch SDPA is used. Both
apply softmax scale 1/sqrt(D), no causal mask, and ignore keys at positions >= k_lens[i] of sample i.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

try:
    from flash_attn_interface import flash_attn_varlen_func
except ImportError:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        flash_attn_varlen_func = None

HALF_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256


def attention(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None = None) -> Tensor:
    """q [B, Lq, N, D], k/v [B, Lk, N, D], k_lens [B] valid keys per sample -> [B, Lq, N, D] in q's dtype."""
    if flash_attn_varlen_func is not None and q.is_cuda and q.shape[-1] <= FLASH_MAX_HEAD_DIM:
        return _flash_varlen(q, k, v, k_lens)
    return _sdpa(q, k, v, k_lens)


def _flash_varlen(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None) -> Tensor:
    b, lq, _, d = q.shape
    lk = k.shape[1]
    dtype = q.dtype if q.dtype in HALF_DTYPES else torch.bfloat16
    q_packed = rearrange(q.to(dtype), "b l n d -> (b l) n d")
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=q.device)
    if k_lens is None:
        k_packed = rearrange(k.to(dtype), "b l n d -> (b l) n d")
        v_packed = rearrange(v.to(dtype), "b l n d -> (b l) n d")
        cu_k = torch.arange(0, (b + 1) * lk, lk, dtype=torch.int32, device=q.device)
    else:
        k_lens = k_lens.to(device=q.device, dtype=torch.int32)
        valid = torch.arange(lk, device=q.device) < k_lens[:, None]  # [B, Lk]
        k_packed, v_packed = k.to(dtype)[valid], v.to(dtype)[valid]  # [sum(k_lens), N, D]
        cu_k = F.pad(k_lens.cumsum(0, dtype=torch.int32), (1, 0))
    out = flash_attn_varlen_func(q_packed, k_packed, v_packed, cu_q, cu_k, lq, lk, softmax_scale=d**-0.5, causal=False)
    if isinstance(out, tuple):  # some FA3 releases also return the softmax log-sum-exp
        out = out[0]
    return rearrange(out, "(b l) n d -> b l n d", b=b).to(q.dtype)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, k_lens: Tensor | None) -> Tensor:
    lk = k.shape[1]
    mask = None
    if k_lens is not None:
        k_lens = k_lens.to(q.device)
        if bool((k_lens < lk).any()):
            mask = rearrange(torch.arange(lk, device=q.device) < k_lens[:, None], "b lk -> b 1 1 lk")
    q, k, v = (rearrange(u.to(q.dtype), "b l n d -> b n l d") for u in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.shape[-1] ** -0.5)
    return rearrange(out, "b n l d -> b l n d")
