"""Page-locked host buffers of exactly the bytes asked for, for the copies that overlap GPU work.

torch's own pinned memory (`pin_memory=True`, `Tensor.pin_memory()`) comes from a caching allocator that rounds every
request up to a power of two: a 312 MiB DiT block takes 512 MiB, a 4.5 GiB decode canvas 8 GiB. Here a plain host
tensor is page-locked where it lies (cudaHostRegister, its exact size) and unlocked (cudaHostUnregister) before its
memory can go. Copies between such a buffer and the GPU with `non_blocking=True` are asynchronous on the current
stream: work queued after them on that stream sees their result, and the host side must not read a buffer a copy
is still writing, nor free one a copy still reads (`release` waits for the device first). Without CUDA nothing is
locked and the buffers are plain host tensors.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger("pixelwizard")


class PinnedHost:
    """Host buffers page-locked for `device` (on CUDA), unlocked by `release`."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.enabled = self.device.type == "cuda" and torch.cuda.is_available()
        self.locked: list[tuple[int, int]] = []  # (address, bytes)

    @property
    def locked_bytes(self) -> int:
        return sum(size for _, size in self.locked)

    def empty(self, *shape: int, dtype: torch.dtype) -> Tensor:
        """A new host tensor, page-locked where pinning is available."""
        t = torch.empty(shape, dtype=dtype)
        self.lock(t)
        return t

    def lock(self, t: Tensor) -> None:
        """Page-lock the memory of host tensor `t` (the caller keeps `t` alive until `release`)."""
        if not self.enabled or t.numel() == 0:
            return
        address, size = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
        status = torch.cuda.cudart().cudaHostRegister(address, size, 0)
        if int(status) != 0:  # e.g. a container that forbids locking this much memory: correct, only slower
            log.warning("could not page-lock %.2f GiB of host memory (cudaHostRegister error %d); its copies to and "
                        "from the GPU run synchronously", size / 2**30, int(status))
            return
        self.locked.append((address, size))

    def release(self) -> None:
        """Unlock every buffer, once the device is done with them."""
        if not self.locked:
            return
        torch.cuda.synchronize(self.device)
        for address, _ in self.locked:
            torch.cuda.cudart().cudaHostUnregister(address)
        self.locked.clear()
