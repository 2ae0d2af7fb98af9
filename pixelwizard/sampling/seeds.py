"""Per-prompt seeds that depend only on (base seed, prompt id, stage), never on batch position or sharding."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SEED_BITS = 63


def prompt_seed(base_seed: int, prompt_id: str, stage: str) -> int:
    digest = hashlib.sha256(f"{base_seed}\x00{prompt_id}\x00{stage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << SEED_BITS) - 1)


def gaussian_noise(shape: tuple[int, ...], seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 N(0, 1) drawn on the CPU generator, then moved: the same numbers on every device and GPU count.

    (The original draws with a CUDA Philox generator, so its noise for a given seed differs from ours.)
    """
    import torch  # here, not above: seeds are derived without torch (the run's plan, the CLI)

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device)
