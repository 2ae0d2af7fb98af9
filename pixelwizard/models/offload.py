"""Block-wise weight streaming for GPUs smaller than the DiT (opt-in, `--offload`).

The transformer blocks (95% of the weights) live on the host; everything else (embeddings, time path, head, the HR
adapter) moves to the GPU. Each block's parameters are packed into one host buffer, page-locked at its exact size
(pixelwizard/host_memory.py: 30 requests of 312 MiB, not 30 power-of-two blocks of 512 MiB), and the GPU holds two
slots of one block's size. When block i starts, block i + 1 is copied into the other slot on a side stream, as one
copy, so it overlaps block i's compute; after the last block, block 0 is fetched for the next forward. The copy
waits for the compute queued before it (the slot's previous block), the compute waits for the copy: two events per
block, no allocation and no `record_stream`, so nothing is left reserved behind. At full size 2 x 0.30 GiB on the GPU
instead of 9.14 GiB.

Cost: the whole block stack crosses PCIe once per forward (9.14 GiB in bf16: ~0.4 s at 25 GB/s, PCIe 4 x16
pinned). A 2K/4K HR block computes for far longer than its copy takes, so there only the first block's copy shows;
the LR stage (3,472 tokens) is copy-bound. bench/memory.py prices it per step; bench/gpu.py measures it.

Single process only (not with FSDP or sequence parallelism); results are bit-identical to the resident model.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from pixelwizard.host_memory import PinnedHost

ALIGN = 256  # bytes: every parameter of a packed block starts on a boundary the GPU kernels like


def _packing(block: nn.Module) -> tuple[list[tuple[int, torch.dtype, torch.Size]], int]:
    """Byte offset, dtype and shape of each parameter of `block` in its packed buffer, and the buffer's size."""
    layout, size = [], 0
    for p in block.parameters():
        layout.append((size, p.dtype, p.shape))
        size += -(-p.numel() * p.element_size() // ALIGN) * ALIGN
    return layout, size


def _views(buffer: Tensor, layout: list[tuple[int, torch.dtype, torch.Size]]) -> list[Tensor]:
    """The parameters' tensors inside a packed uint8 `buffer`."""
    return [buffer[offset:offset + shape.numel() * dtype.itemsize].view(dtype).view(shape)
            for offset, dtype, shape in layout]


class BlockStreamer:
    """Streams `blocks` (all of one layout) between host and `device` around their forwards; see the module note."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device) -> None:
        self.blocks, self.device = blocks, device
        self.pinned = PinnedHost(device)  # not on fake CUDA tensors (bench/memory.py)
        self.copy_stream = torch.cuda.Stream(device) if self.pinned.enabled else None
        self.layout, size = _packing(blocks[0])
        # One packed host buffer per block; the parameters point at it whenever the block is not resident.
        self.host: list[Tensor] = []
        self.host_views: list[list[Tensor]] = []
        for block in blocks:
            buffer = torch.empty(size, dtype=torch.uint8)
            views = _views(buffer, self.layout)
            for p, view in zip(block.parameters(), views, strict=True):
                view.copy_(p.data)
                p.data = view
            self.pinned.lock(buffer)
            self.host.append(buffer)
            self.host_views.append(views)
        self.slots = [torch.empty(size, dtype=torch.uint8, device=device) for _ in range(2)]
        self.slot_views = [_views(slot, self.layout) for slot in self.slots]
        self.loaded: dict[int, tuple[int, torch.cuda.Event | None]] = {}  # block -> (slot, copy done)
        weakref.finalize(self, self.pinned.release)  # unlocked with the streamer, before the buffers can go
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda _m, _a, i=i: self._enter(i))
            block.register_forward_hook(lambda _m, _a, _o, i=i: self._leave(i))

    def resident(self) -> list[int]:
        """Indices of the blocks whose weights are on the device now (loaded or being loaded)."""
        return sorted(self.loaded)

    def _fetch(self, i: int) -> None:
        """Start copying block i into the free slot (on the side stream when there is one)."""
        if i in self.loaded:
            return
        slot = ({0, 1} - {s for s, _ in self.loaded.values()}).pop()
        if self.copy_stream is None:
            self.slots[slot].copy_(self.host[i])
            self.loaded[i] = (slot, None)
            return
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))  # the slot's last user is done
        with torch.cuda.stream(self.copy_stream):
            self.slots[slot].copy_(self.host[i], non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        self.loaded[i] = (slot, done)

    def _enter(self, i: int) -> None:
        following = (i + 1) % len(self.blocks)
        for stale in [j for j in self.loaded if j not in (i, following)]:  # a forward that stopped early
            del self.loaded[stale]
        self._fetch(i)
        slot, done = self.loaded[i]
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)
        for p, t in zip(self.blocks[i].parameters(), self.slot_views[slot]):
            p.data = t
        self._fetch(following)

    def _leave(self, i: int) -> None:
        for p, host in zip(self.blocks[i].parameters(), self.host_views[i]):
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
