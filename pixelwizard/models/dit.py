"""The Wan2.2 diffusion transformer (the original's `WanModel`), with its exact state-dict keys and shapes.

Data flow for a latent x [B, C, T, H, W] and timesteps t:

    tokens  = patchify(x)                                   [B, L, D], L = T'·H'·W' in (t, h, w) raster order
    e       = time_embedding(sinusoid(t)) (+ e_extra)       [B, 1|K, D]     one row per sample, or per distinct t
    e0      = time_projection(e)                            [B, 1|K, 6, D]  (shift, scale, gate) x (attn, ffn)
    context = text_embedding(context zero-padded to text_len rows)
    tokens  = blocks(tokens, e0, context, 3D RoPE)          adaLN self-attn, plain cross-attn, adaLN FFN
    out     = unpatchify(head(tokens, e))                   [B, C_out, T, H, W] float32

Precision: the residual stream and the time path are float32. `cast_for_inference(bf16)` lowers the big
Linear/Conv weights; every Linear casts its input to its own weight dtype, so their matmuls then run in bf16
while the float32 islands (see `WanDiT.keeps_float32`) keep the original's autocast(float32) regions exact.

Memory (inference): the residual stream is one contiguous float32 [B, L, D] tensor that the blocks update in
place, and every per-token step (adaLN, projections, RoPE, cross-attention, FFN, head) runs on `chunk_tokens`
rows at a time. Beside the weights, a block's peak is then x (float32) + self-attention's k and v (weights'
dtype) + a few chunk-sized temporaries, at 4K (L = 249,240) 2.85 + 2.85 GiB in bf16 instead of several
full-length float32 copies. `use_attention` picks the attention kernel (pixelwizard/models/attention.py).

Multi-process: with `use_sequence_parallel` the blocks and head run on one sequence shard per rank (Ulysses,
see pixelwizard/distributed.py); e/e0 stay one row per sample, computed on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from pixelwizard.models.attention import AttentionFn, attention, select_backend
from pixelwizard.models.config import DiTConfig

if TYPE_CHECKING:  # torch.distributed's FSDP imports cost half a second; single-process runs never need them
    from pixelwizard.distributed import SequenceParallel

SINUSOID_BASE = 10000.0
ROPE_THETA = 10000.0
NUM_MODULATIONS = 6  # shift, scale, gate for self-attention, then for the FFN
DEFAULT_CHUNK_TOKENS = 16384  # rows per chunk of every per-token step: 0.19 GiB per float32 [chunk, 3072]
FP32_NORMS = ("norm3", "norm_q", "norm_k")

RowFn = Callable[[slice], Tensor]  # token rows -> those rows of a [B, L, D] tensor


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """t [...] -> [..., dim] float32: cos(t·w_k) for k < dim/2, then sin(t·w_k); w_k = 10000^(-2k/dim), in float64."""
    half = dim // 2
    freqs = torch.pow(SINUSOID_BASE, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1).float()


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Real channels per head given to the (time, height, width) axes, in that order."""
    spatial = 2 * (head_dim // 6)
    return head_dim - 2 * spatial, spatial, spatial


def rope_factors(positions: Tensor, head_dim: int) -> Tensor:
    """Integer (t, h, w) positions [L, 3] -> unit rotations [L, head_dim // 2] (complex64).

    Each axis with n channels rotates its n/2 pairs by position · 10000^(-2j/n): the frequency denominator is
    the axis width, not head_dim. Angles are evaluated in float64.
    """
    parts = []
    for axis, n in enumerate(rope_split(head_dim)):
        inv_freq = 1.0 / torch.pow(ROPE_THETA, torch.arange(0, n, 2, dtype=torch.float64, device=positions.device) / n)
        angles = positions[:, axis, None].to(torch.float64) * inv_freq
        parts.append(torch.polar(torch.ones_like(angles), angles))
    return torch.cat(parts, dim=-1).to(torch.complex64)


def grid_positions(grid: tuple[int, int, int], device: torch.device | None = None) -> Tensor:
    """[T'·H'·W', 3] (t, h, w) indices of every token, in the patch tokens' raster order."""
    return torch.cartesian_prod(*(torch.arange(n, device=device) for n in grid))


@lru_cache(maxsize=8)
def rope_for_grid(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> Tensor:
    """RoPE rotations [L, head_dim // 2] for a whole token grid; a sequence shard can slice its rows."""
    return rope_factors(grid_positions(grid, device), head_dim)


def apply_rope(x: Tensor, rotations: Tensor) -> Tensor:
    """Rotate adjacent channel pairs (2j, 2j+1) of x [B, L, N, D] by rotations [L, D // 2]; float32 maths,
    result in x's dtype. (a, b) -> (a·cos - b·sin, a·sin + b·cos), the same for every head."""
    pairs = torch.view_as_complex(rearrange(x.to(torch.float32, memory_format=torch.contiguous_format, copy=True),
                                            "b l n (c two) -> b l n c two", two=2))
    rotated = torch.view_as_real(pairs.mul_(rotations[:, None]))  # in place on the float32 copy
    return rearrange(rotated, "b l n c two -> b l n (c two)").to(x.dtype)


def cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x in `dtype`, without dispatching a no-op `.to` when it already is (the LR stage is bound by per-op
    overhead, and most casts of a bf16 model's float32 islands are no-ops)."""
    return x if x.dtype == dtype else x.to(dtype)


class Linear(nn.Linear):
    """nn.Linear whose input is cast to the weight dtype, so the layer's weights pick the matmul precision."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(cast(x, self.weight.dtype))


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed and returned in float32, whatever the dtype of input and affine parameters."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else cast(self.weight, torch.float32)
        bias = None if self.bias is None else cast(self.bias, torch.float32)
        return F.layer_norm(cast(x, torch.float32), self.normalized_shape, weight, bias, self.eps)


class RMSNorm(nn.Module):
    """RMSNorm over the last dim (for q/k: all heads together), float32 statistics, result in x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        y = F.rms_norm(cast(x, torch.float32), self.weight.shape, cast(self.weight, torch.float32), self.eps)
        return cast(y, x.dtype)


class Attention(nn.Module):
    """Multi-head attention projections with q/k RMSNorm across heads; `Block` runs them row chunk by row chunk."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = Linear(dim, dim)
        self.k = Linear(dim, dim)
        self.v = Linear(dim, dim)
        self.o = Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def queries(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        """x [B, l, D] -> q [B, l, N, Dh], rotated by rope [l, Dh/2] when given."""
        q = rearrange(self.norm_q(self.q(x)), "b l (n d) -> b l n d", n=self.num_heads)
        return q if rope is None else apply_rope(q, rope)

    def keys_values(self, source: Tensor, rope: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """source [B, l, D] -> k, v [B, l, N, Dh]; k rotated by rope [l, Dh/2] when given."""
        source = cast(source, self.k.weight.dtype)  # cast once for both projections
        k = rearrange(self.norm_k(self.k(source)), "b l (n d) -> b l n d", n=self.num_heads)
        v = rearrange(self.v(source), "b l (n d) -> b l n d", n=self.num_heads)
        return (k if rope is None else apply_rope(k, rope)), v

    def project(self, x: Tensor, rope: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention's q, k, v [B, l, N, Dh] of x [B, l, D], rotated by rope [l, Dh/2]."""
        x = cast(x, self.q.weight.dtype)
        return (self.queries(x, rope), *self.keys_values(x, rope))

    def output(self, heads: Tensor) -> Tensor:
        """Attention result [B, l, N, Dh] -> [B, l, D]."""
        return self.o(rearrange(heads, "b l n d -> b l (n d)"))


def row_chunks(length: int, chunk: int) -> list[slice]:
    return [slice(start, start + chunk) for start in range(0, length, chunk)]


def fill_rows(fn: Callable[[slice], tuple[Tensor, ...]], length: int, chunk: int) -> tuple[Tensor, ...]:
    """Run `fn` on every `chunk` rows of a `length`-row sequence and join its [B, rows, ...] outputs along dim 1,
    written into preallocated tensors (no concatenation copy); one call when a chunk covers everything."""
    outs: tuple[Tensor, ...] = ()
    for rows in row_chunks(length, chunk):
        parts = fn(rows)
        if not outs:
            if parts[0].shape[1] == length:
                return parts
            outs = tuple(p.new_empty(p.shape[0], length, *p.shape[2:]) for p in parts)
        for out, part in zip(outs, parts):
            out[:, rows] = part
    return outs


@dataclass(frozen=True)
class TokenRows:
    """A per-token tensor [B, L, ...] kept as its distinct rows: `table` [B, K, ...] and `index` [B, L] into it.

    Per-token timesteps take a few values (image to video: 0 on the clean first frame, t on the rest), so e and
    e0 are K rows instead of L: a per-token float32 e0 [1, L, 6, 3072] would be 17.1 GiB at 4K (L = 249,240)."""

    table: Tensor
    index: Tensor

    def rows(self, rows: slice, *item: int) -> Tensor:
        """[B, len(rows), ...]: entry `item` of the table (e.g. one modulation) for the token rows `rows`."""
        table = self.table[(slice(None), slice(None), *item)]
        return table[torch.arange(table.shape[0], device=table.device)[:, None], self.index[:, rows]]


class Block(nn.Module):
    """x += gate·SelfAttn(adaLN(x)); x += CrossAttn(norm3(x), context); x += gate·FFN(adaLN(x)).

    The six adaLN vectors are `modulation + e0`; e0 is [B, 1, 6, D] (one timestep per sample) or
    TokenRows (per token), and each vector is formed only when used, for the rows being processed.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.modulation = nn.Parameter(torch.randn(1, NUM_MODULATIONS, dim).div_(dim**0.5))  # in place: on meta,
        # an out-of-place op imports torch._dynamo (seconds of every job that loads the model)
        self.norm1 = LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = Attention(dim, config.num_heads, config.qk_norm, eps)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(dim, config.num_heads, config.qk_norm, eps)
        self.norm2 = LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), Linear(config.ffn_dim, dim))

    def adaln(self, e0: Tensor | TokenRows, index: int, rows: slice) -> Tensor:
        """Modulation vector `index` for the token rows `rows`: [B, 1, D] or [B, len(rows), D], float32."""
        e = e0.rows(rows, index) if isinstance(e0, TokenRows) else e0[:, :, index]
        return self.modulation[:, index] + e

    def modulated(self, x: Tensor, e0: Tensor | TokenRows, first: int, rows: slice) -> Tensor:
        """adaLN input of the self-attention (first = 0) or the FFN (first = 3) for `rows`:
        norm·(1 + scale) + shift."""
        norm = self.norm1 if first == 0 else self.norm2
        shift, scale = self.adaln(e0, first, rows), self.adaln(e0, first + 1, rows)
        return norm(x[:, rows]) * (1 + scale) + shift

    def forward(
        self,
        x: Tensor,
        e0: Tensor | TokenRows,
        context: Tensor,
        rope: Tensor,
        chunk: int,
        attend: AttentionFn = attention,
        cross_attend: AttentionFn = attention,
        whole_queries: bool = False,
    ) -> Tensor:
        """x [B, L, D] float32 contiguous, the residual stream: updated in place and returned (inference only).

        Every per-token step runs on `chunk` rows at a time, so no full-length float32 temporary exists beside x.
        Self-attention takes k, v of all rows first, then its queries chunk by chunk (each chunk's rows of x are
        updated after their own attention, from k, v taken before any update): besides x only k and v are
        full length. `attend` is the self-attention (plain, or Ulysses over a sequence shard, which exchanges
        whole shards: `whole_queries`); `cross_attend` the cross-attention kernel.
        """
        length = x.shape[1]
        attn = self.self_attn
        if whole_queries or length <= chunk:  # one query chunk: q, k, v from one adaLN pass
            q, k, v = fill_rows(lambda r: attn.project(self.modulated(x, e0, 0, r), rope[r]), length, chunk)
            queries = iter([(slice(None), q)])
        else:  # the adaLN input is recomputed for the queries: cheap beside holding q whole
            k, v = fill_rows(lambda r: attn.keys_values(self.modulated(x, e0, 0, r), rope[r]), length, chunk)
            queries = ((r, attn.queries(self.modulated(x, e0, 0, r), rope[r])) for r in row_chunks(length, chunk))
        for rows, q in queries:
            x[:, rows] += attn.output(attend(q, k, v)) * self.adaln(e0, 2, rows)
        del q, k, v
        context_k, context_v = self.cross_attn.keys_values(context)
        for rows in row_chunks(length, chunk):
            q = self.cross_attn.queries(self.norm3(x[:, rows]))
            x[:, rows] += self.cross_attn.output(cross_attend(q, context_k, context_v))
        for rows in row_chunks(length, chunk):
            x[:, rows] += self.ffn(self.modulated(x, e0, 3, rows)) * self.adaln(e0, 5, rows)
        return x


class Head(nn.Module):
    """Final adaLN (shift, scale from `modulation + e`, no gate) and projection to patch pixels."""

    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 2, dim).div_(dim**0.5))
        self.norm = LayerNorm(dim, eps, elementwise_affine=False)
        self.head = Linear(dim, out_features)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        shift, scale = self.modulation[:, 0] + e, self.modulation[:, 1] + e
        return self.head(self.norm(x) * (1 + scale) + shift)


class WanDiT(nn.Module):
    """Wan2.2 DiT; `state_dict()` equals the original WanModel's key for key, shape for shape."""

    # Top-level modules kept float32 by `cast_for_inference` (subclasses append theirs).
    fp32_modules: tuple[str, ...] = ("time_embedding", "time_projection", "head")

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_dim, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.text_embedding = nn.Sequential(Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))
        self.time_embedding = nn.Sequential(Linear(config.freq_dim, dim), nn.SiLU(), Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, NUM_MODULATIONS * dim))
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.head = Head(dim, math.prod(config.patch_size) * config.out_dim, config.eps)
        self.chunk_tokens = DEFAULT_CHUNK_TOKENS
        self.attend: AttentionFn = attention
        self.sequence_parallel: SequenceParallel | None = None

    def use_attention(self, backend: str, device: torch.device | str | None = None) -> WanDiT:
        """Run attention with `backend` (see pixelwizard.models.attention.BACKENDS, or "auto"), checked against
        `device` (default: the parameters' device)."""
        device = device if device is not None else next(self.parameters()).device
        self.attend = select_backend(backend, device)
        return self

    def use_sequence_parallel(self, sp: SequenceParallel | None) -> WanDiT:
        """Run later forwards Ulysses-parallel over `sp`'s ranks (None: back to one process)."""
        if sp is not None:
            sp.check_heads(self.config.num_heads)
        self.sequence_parallel = sp
        return self

    def keeps_float32(self, key: str) -> bool:
        """Whether `cast_for_inference` keeps this state-dict entry in float32: the time path, the head, the
        adaLN modulations and the (tiny) norm weights. The original runs these under autocast(float32) or in
        float32 by construction; everything else (patch/text embeddings, attention, FFN) may go to bf16."""
        owner, _, name = key.rpartition(".")
        return (
            key.partition(".")[0] in self.fp32_modules
            or name == "modulation"
            or owner.rpartition(".")[2] in FP32_NORMS
        )

    def cast_for_inference(self, dtype: torch.dtype) -> WanDiT:
        """Cast every parameter to `dtype` except the float32 islands of `keeps_float32`. The one way the dtype
        policy is applied: the loaders call it on the model built on meta, then cast each tensor to its
        parameter's dtype as they assign it. Call it on float32 weights: a rounded island cannot be recovered."""
        for key, param in self.named_parameters():
            param.data = param.data.to(torch.float32 if self.keeps_float32(key) else dtype)
        return self

    def embed_time(self, t: Tensor) -> Tensor:
        """Timesteps [...] -> e = time_embedding(sinusoid(t)) [..., D], float32."""
        return cast(self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim)), torch.float32)

    def condition_time(self, t: Tensor, num_tokens: int,
                       e_extra: Tensor | None = None) -> tuple[Tensor | TokenRows, Tensor | TokenRows]:
        """t [B] or [B, L] -> (e [B, 1, D], e0 [B, 1, 6, D]) float32, or per token the same as TokenRows with
        one row per distinct timestep. e_extra [B, 1, D].

        A per-token t whose rows are each constant collapses to one timestep per sample.
        """
        index = None
        if t.ndim == 1:
            t = t[:, None]
        elif t.ndim != 2 or t.shape[1] != num_tokens:
            raise ValueError(f"t {tuple(t.shape)}: expected [B] or [B, {num_tokens}] (one timestep per token)")
        elif torch.equal(t, t[:, :1].expand_as(t)):
            t = t[:, :1]
        else:
            values, index = torch.unique(t, return_inverse=True)  # [K], [B, L]
            t = values.expand(t.shape[0], -1)
        e = self.embed_time(t)
        if e_extra is not None:
            e = e + e_extra
        e0 = rearrange(cast(self.time_projection(e), torch.float32), "b l (k d) -> b l k d", k=NUM_MODULATIONS)
        return (e, e0) if index is None else (TokenRows(e, index), TokenRows(e0, index))

    def embed_text(self, context: Tensor | Sequence[Tensor]) -> Tensor:
        """[B, Lc, text_dim] or a list of [L_i, text_dim] -> [B, text_len, D]. Rows are zero-padded to
        text_len before the projection (padding rows become a constant vector) and all are attended to."""
        text_len = self.config.text_len
        rows = [context.shape[1]] if isinstance(context, Tensor) else [c.shape[0] for c in context]
        if max(rows) > text_len:
            raise ValueError(f"context has {max(rows)} rows, more than text_len {text_len}")
        if isinstance(context, Tensor):
            padded = F.pad(context, (0, 0, 0, text_len - context.shape[1]))
        else:
            padded = torch.stack([F.pad(c, (0, 0, 0, text_len - c.shape[0])) for c in context])
        return self.text_embedding(padded)

    def patchify(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
        """[B, C, T, H, W] -> (tokens [B, L, D] float32, token grid (T', H', W'))."""
        if any(size % p for size, p in zip(x.shape[2:], self.config.patch_size)):
            raise ValueError(f"latent {tuple(x.shape)}: T, H, W must be multiples of patch {self.config.patch_size}")
        tokens = self.patch_embedding(cast(x, self.patch_embedding.weight.dtype))
        grid = tuple(tokens.shape[2:])
        # The residual stream must be contiguous: the blocks update its rows in place.
        tokens = rearrange(tokens, "b d t h w -> b (t h w) d")
        return tokens.to(torch.float32, memory_format=torch.contiguous_format).contiguous(), grid

    def unpatchify(self, tokens: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, L, p·q·r·C] -> [B, C, T'·p, H'·q, W'·r] float32; channels are the fastest index of a patch row."""
        (t, h, w), (p, q, r) = grid, self.config.patch_size
        pattern = "b (t h w) (p q r c) -> b c (t p) (h q) (w r)"
        return cast(rearrange(tokens, pattern, t=t, h=h, w=w, p=p, q=q, r=r), torch.float32)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | Sequence[Tensor],
        *,
        e_extra: Tensor | None = None,
        block_residuals: Mapping[int, Tensor | RowFn] | None = None,
    ) -> Tensor:
        """x [B, in_dim, T, H, W], t [B] or [B, L], context [B, Lc, text_dim] or B x [L_i, text_dim]
        -> velocity [B, out_dim, T, H, W] float32.

        e_extra [B, 1, D] is added to the time embedding e (before time_projection and the head);
        block_residuals[i] [B, L, D] is added to the residual stream at the input of block i; it may be a function
        of a row slice that gives those rows, computed chunk by chunk.

        With `sequence_parallel` set, every rank passes the same inputs and gets the same full output; the
        blocks and the head run on this rank's token rows only (RoPE padding rows rotate by 1), and
        block_residuals must already be this rank's rows, `sequence_parallel.split(residual)`.
        """
        residuals = dict(block_residuals or {})
        if not set(residuals) <= set(range(len(self.blocks))):
            raise ValueError(f"block_residuals keys {sorted(residuals)} must be block indices < {len(self.blocks)}")
        tokens, grid = self.patchify(x)
        length = tokens.shape[1]
        e, e0 = self.condition_time(t, length, e_extra)
        context = self.embed_text(context)
        rope = rope_for_grid(grid, self.config.head_dim, tokens.device)
        attend, chunk = self.attend, self.chunk_tokens
        sp = self.sequence_parallel
        if sp is not None:
            tokens, rope = sp.split(tokens), sp.split(rope, dim=0, pad_value=1)
            if isinstance(e, TokenRows):  # per-token timesteps: this rank's rows of the index
                index = sp.split(e.index)
                e, e0 = TokenRows(e.table, index), TokenRows(e0.table, index)
            attend = partial(sp.attention, true_len=length, attend=self.attend)
        rows = row_chunks(tokens.shape[1], chunk)
        for i, block in enumerate(self.blocks):
            if i in residuals:
                residual = residuals[i]
                for r in rows:
                    tokens[:, r] += residual(r) if callable(residual) else residual[:, r]
            block(tokens, e0, context, rope, chunk, attend, self.attend, whole_queries=sp is not None)
        (out,) = fill_rows(lambda r: (self.head(tokens[:, r], e.rows(r) if isinstance(e, TokenRows) else e),),
                           tokens.shape[1], chunk)
        if sp is not None:
            out = sp.gather(out, length)
        return self.unpatchify(out, grid)
