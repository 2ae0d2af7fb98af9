"""Block-wise weight streaming for GPUs smaller than the DiT (opt-in, `--offload`).

The transformer blocks (95% of the weights) live on the host in pinned memory; everything else (embeddings,
time path, head, the HR adapter) moves to the GPU. When block i starts, block i + 1 is copied to the GPU on a
side stream, so each copy overlaps a block's compute; after the last block, block 0 is fetched for the next
forward. At most two blocks are on the GPU at once: at full size 2 x 0.30 GiB instead of 9.14 GiB.

Cost: the whole block stack crosses PCIe once per forward (9.14 GiB in bf16: ~0.4 s at 25 GB/s, PCIe 4 x16
pinned). A 2K/4K HR block computes for far longer than its copy takes, so there only the first block's copy shows;
the LR stage (3,472 tokens) is copy-bound. bench/memory.py prices it per step; bench/gpu.py measures it.

Single process only (not with FSDP or sequence parallelism); results are bit-identical to the resident model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BlockStreamer:
    """Streams `blocks` between host and `device` around their forwards; see the module note."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device) -> None:
        self.blocks, self.device = blocks, device
        cuda = device.type == "cuda" and torch.cuda.is_available()  # not on fake CUDA tensors (bench/memory.py)
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        # Host copies; the parameters point at them whenever a block is not resident.
        self.host: list[list[Tensor]] = []
        for block in blocks:
            tensors = []
            for p in block.parameters():
                host = p.data.to("cpu")
                p.data = host.pin_memory() if cuda else host
                tensors.append(p.data)
            self.host.append(tensors)
        self.loaded: dict[int, tuple[list[Tensor], torch.cuda.Event | None]] = {}
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda _m, _a, i=i: self._enter(i))
            block.register_forward_hook(lambda _m, _a, _o, i=i: self._leave(i))

    def resident(self) -> list[int]:
        """Indices of the blocks whose weights are on the device now (loaded or being loaded)."""
        return sorted(self.loaded)

    def _fetch(self, i: int) -> None:
        """Start copying block i to the device (on the side stream when there is one)."""
        if i in self.loaded:
            return
        if self.copy_stream is None:
            self.loaded[i] = ([t.to(self.device, copy=True) for t in self.host[i]], None)
            return
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.copy_stream):
            tensors = [t.to(self.device, non_blocking=True) for t in self.host[i]]
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        self.loaded[i] = (tensors, done)

    def _enter(self, i: int) -> None:
        self._fetch(i)
        tensors, done = self.loaded[i]
        if done is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)
            for t in tensors:  # freed after this block: the allocator must wait for its kernels, not the copies
                t.record_stream(compute)
        for p, t in zip(self.blocks[i].parameters(), tensors):
            p.data = t
        self._fetch((i + 1) % len(self.blocks))

    def _leave(self, i: int) -> None:
        for p, host in zip(self.blocks[i].parameters(), self.host[i]):
            p.data = host
        del self.loaded[i]


def offload_blocks(model: nn.Module, device: torch.device | str) -> BlockStreamer:
    """Stream `model.blocks` from the host (see the module note) and move every other parameter to `device`.
    Call it on a model whose weights are on the host in their inference dtypes; keep the returned streamer."""
    device = torch.device(device)
    streamer = BlockStreamer(model.blocks, device)
    in_blocks = {id(p) for p in model.blocks.parameters()}
    for p in model.parameters():
        if id(p) not in in_blocks:
            p.data = p.data.to(device)
    return streamer
