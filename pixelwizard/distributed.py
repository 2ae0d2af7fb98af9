"""Multi-process inference under torchrun: process-group setup, Ulysses sequence parallelism and FSDP2 sharding
of the DiT with the weights read once, on rank 0.

Ulysses with P ranks: each rank holds s = ceil(L/P) token rows (the last ranks padded). Self-attention needs every
row, so q/k/v go through an all-to-all that trades the sequence split for a head split,

    [B, s, N, D] per rank  --all-to-all-->  [B, P·s, N/P, D]  --attention, padded keys masked-->  --all-to-all back-->

while everything else in a block (adaLN, cross-attention, FFN) is per token and runs on the local rows.
Every rank runs every prompt in lockstep; decisions that read files are taken by rank 0 and broadcast.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor, nn

from pixelwizard.checkpoints.strict import check_state_dict, expected_shapes
from pixelwizard.models.attention import AttentionFn, attention

if TYPE_CHECKING:  # FSDP2 and DTensor imports are deferred to the multi-GPU paths that use them
    from torch.distributed.device_mesh import DeviceMesh

T = TypeVar("T")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_writer() -> bool:
    """Only rank 0 writes outputs, events and markers."""
    return rank() == 0


def init_from_env(device: torch.device | str = "cpu") -> torch.device:
    """Join torchrun's process group (RANK, WORLD_SIZE, LOCAL_RANK) and return the device this rank computes on:
    CUDA uses nccl and GPU LOCAL_RANK, the CPU uses gloo. Without torchrun, or with one process, nothing is set up
    and `device` comes back unchanged."""
    device = torch.device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or dist.is_initialized():
        return device
    cuda = device.type == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=int(os.environ["RANK"]), world_size=size,
                            device_id=device if cuda else None)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class Rank0Error(RuntimeError):
    """What the other ranks raise when rank 0 failed at something it decides for all."""


def _decide_on_rank0(fn: Callable[[], T], share: bool) -> T | None:
    """Run `fn` on rank 0 only and broadcast the outcome: when it raises, every rank raises (rank 0 the original
    exception, the others a Rank0Error with its text), so no rank carries on into a collective the others skip.
    With `share`, the value is broadcast too (pickled)."""
    value, error = None, None
    if rank() == 0:
        try:
            value = fn()
        except Exception as err:  # re-raised below, on every rank
            error = err
    if world_size() > 1:
        failure = None if error is None else f"rank 0: {type(error).__name__}: {error}"
        message = [(value if share and error is None else None, failure)]
        dist.broadcast_object_list(message, src=0)
        if rank() != 0:
            value, failure = message[0]
            if failure is not None:
                raise Rank0Error(failure)
    if error is not None:
        raise error
    return value


def from_rank0(fn: Callable[[], T]) -> T:
    """`fn()` as rank 0 computes it, on every rank (small values only: it travels pickled)."""
    return _decide_on_rank0(fn, share=True)


def on_rank0(fn: Callable[[], T]) -> T | None:
    """`fn()` on rank 0, None elsewhere; an exception on rank 0 is raised on every rank."""
    return _decide_on_rank0(fn, share=False)


def broadcast_tensor(read: Callable[[], Tensor], device: torch.device) -> Tensor:
    """`read()` on rank 0 (a file read, say), the tensor on every rank: its shape and dtype travel pickled, the data
    as a tensor (over nccl from the GPU). One process: `read()` as it is."""
    if world_size() == 1:
        return read()
    tensor = on_rank0(read)
    meta = from_rank0(lambda: (tuple(tensor.shape), tensor.dtype))
    buffer = tensor.to(device) if rank() == 0 else torch.empty(meta[0], dtype=meta[1], device=device)
    dist.broadcast(buffer, src=0)
    return buffer


def check_ulysses_size(num_heads: int, processes: int) -> None:
    """Ulysses gives each rank num_heads / processes whole heads."""
    if num_heads % processes:
        valid = [p for p in range(1, num_heads + 1) if num_heads % p == 0]
        raise ValueError(f"Ulysses over {processes} processes needs num_heads ({num_heads}) divisible by the "
                         f"process count; valid counts: {', '.join(map(str, valid))}")


class SequenceParallel:
    """Ulysses sequence parallelism over `group` (default: all ranks): rank r holds token rows
    [r·s, (r+1)·s), s = ceil(L / P); rows past L are padding, masked as keys and dropped by `gather`."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group or dist.group.WORLD
        self.size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)

    def check_heads(self, num_heads: int) -> None:
        check_ulysses_size(num_heads, self.size)

    def shard_length(self, length: int) -> int:
        return -(-length // self.size)

    def split(self, x: Tensor, dim: int = 1, pad_value: float | complex = 0) -> Tensor:
        """This rank's s rows of x along `dim`, padded with `pad_value` past the end; a new tensor, so the
        full x can be freed."""
        length = x.shape[dim]
        s = self.shard_length(length)
        start = min(self.rank * s, length)
        stop = min(start + s, length)
        pad_shape = list(x.shape)
        pad_shape[dim] = s - (stop - start)
        return torch.cat([x.narrow(dim, start, stop - start), x.new_full(pad_shape, pad_value)], dim=dim)

    def gather(self, x: Tensor, length: int, dim: int = 1) -> Tensor:
        """Every rank's rows of x along `dim`, in rank order, padding dropped: [.., s, ..] -> [.., length, ..]."""
        local = x.movedim(dim, 0).contiguous()
        full = local.new_empty((self.size * local.shape[0], *local.shape[1:]))
        dist.all_gather_into_tensor(full, local, group=self.group)
        return full[:length].movedim(0, dim)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, true_len: int, attend: AttentionFn = attention) -> Tensor:
        """Self-attention of this rank's rows over the whole sequence: q/k/v [B, s, N, D] -> [B, s, N, D], with
        the kernel `attend`. Keys at positions >= true_len (the padding) are masked."""
        q, k, v = (self._sequence_to_heads(u) for u in (q, k, v))  # [B, P·s, N/P, D]
        padded = k.shape[1] != true_len
        k_lens = torch.full((k.shape[0],), true_len, dtype=torch.int32, device=k.device) if padded else None
        return self._heads_to_sequence(attend(q, k, v, k_lens))

    def _exchange(self, blocks: Tensor) -> Tensor:
        """blocks [P, ...]: block p goes to rank p; returns [P, ...] with block p received from rank p."""
        blocks = blocks.contiguous()
        received = torch.empty_like(blocks)
        dist.all_to_all_single(received, blocks, group=self.group)
        return received

    def _sequence_to_heads(self, x: Tensor) -> Tensor:
        blocks = rearrange(x, "b s (p n) d -> p b s n d", p=self.size)
        return rearrange(self._exchange(blocks), "p b s n d -> b (p s) n d")

    def _heads_to_sequence(self, x: Tensor) -> Tensor:
        blocks = rearrange(x, "b (p s) n d -> p b s n d", p=self.size)
        return rearrange(self._exchange(blocks), "p b s n d -> b s (p n) d")


def device_mesh(device: torch.device) -> DeviceMesh:
    """A 1-D mesh over all ranks, for FSDP2."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world_size(),))


def shard_dit(model: nn.Module, mesh: DeviceMesh, replicated: Iterable[nn.Module] = ()) -> None:
    """FSDP2: each of `model.blocks` is one unit, the root unit holds the rest (embeddings, time path, head);
    parameters of `replicated` modules stay whole on every rank. Every unit is gathered for its forward and
    freed after it, the root too (FSDP2's default keeps the root gathered, which only pays off in training).

    Parameters keep their own dtypes (bf16 matmul weights beside float32 islands: FSDP2 shards mixed dtypes per
    unit), and block inputs are not cast, so the float32 residual stream stays float32, as without FSDP."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    keep_dtypes = MixedPrecisionPolicy(cast_forward_inputs=False)
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=keep_dtypes, reshard_after_forward=True)
    ignored = {p for module in replicated for p in module.parameters()}
    fully_shard(model, mesh=mesh, mp_policy=keep_dtypes, reshard_after_forward=True, ignored_params=ignored or None)


def load_sharded(
    model: nn.Module,
    read_state: Callable[[], Mapping[str, Tensor]],
    *,
    source: Path | str,
    layout: str,
    fix: str,
    device: torch.device,
    mesh: DeviceMesh,
    replicated: Iterable[nn.Module] = (),
) -> nn.Module:
    """Fill `model`, built on meta in its target dtypes, sharded by `shard_dit`: only rank 0 calls `read_state`
    (memory-mapped) and checks it strictly; each tensor is then broadcast in turn and every rank keeps its shard
    (cast to its parameter's dtype), so no rank other than 0 ever holds a full copy. Parameters only: the model
    has no buffers."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    shard_dit(model, mesh, replicated)
    model.to_empty(device=device)
    shapes = expected_shapes(model)  # global shapes, also for DTensor shards

    def read_checked() -> Mapping[str, Tensor]:
        state = read_state()
        check_state_dict(shapes, {k: v.shape for k, v in state.items()}, source=source, layout=layout, fix=fix)
        return state

    state = on_rank0(read_checked)
    with warnings.catch_warnings():  # torch's own deprecation notes about how it picks the broadcast device
        warnings.filterwarnings("ignore", message=".*_get_pg_default_device.*|.*Multiple backends are registered.*")
        set_model_state_dict(model, state or {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True))
    return model


def no_autograd(model: nn.Module) -> AbstractContextManager:
    """Where `model` runs without autograd: inference mode, or no_grad when it is FSDP2-sharded (its unshard fails
    under inference mode on the torch that GPU images ship; pixelwizard/gpu_traps.py)."""
    sharded = any(hasattr(p, "to_local") for p in model.parameters())  # DTensor shards
    return torch.no_grad() if sharded else torch.inference_mode()


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank stores: its shards of FSDP-sharded parameters, replicated ones whole."""
    total = 0
    for param in model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        total += local.numel() * local.element_size()
    return total
