"""Flow-matching sampling schedules: which noise levels a sampler visits, as plain data.

Convention: x_sigma = (1 - sigma) * x0 + sigma * eps, sigma in [0, 1]. The network sees the integer timestep
int(sigma * 1000) (truncated), the solvers use the exact float32 sigma. The numbers reproduce Wan2.2's two
schedulers bit for bit, which is why they are built in float64 numpy and only then rounded to float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import numpy as np

S = TypeVar("S", float, np.ndarray)


def shift_sigmas(sigmas: S, shift: float) -> S:
    """Resolution shift sigma' = s*sigma / (1 + (s-1)*sigma): s > 1 spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


@dataclass(frozen=True)
class Schedule:
    """N sampling steps: sigmas has N+1 float32 values ending in 0.0, timesteps the N integer model timesteps."""

    sigmas: tuple[float, ...]
    timesteps: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.timesteps) + 1 or self.sigmas[-1] != 0.0:
            raise ValueError(f"need N+1 sigmas ending in 0.0 for N timesteps, got {self.sigmas} / {self.timesteps}")

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def _from_shifted(sigmas: np.ndarray, num_train_timesteps: int) -> Schedule:
    # float64 sigmas -> truncated integer timesteps, float32 sigmas with the final 0
    timesteps = (sigmas * num_train_timesteps).astype(np.int64)
    sigmas32 = np.append(sigmas, 0.0).astype(np.float32)
    return Schedule(sigmas=tuple(sigmas32.tolist()), timesteps=tuple(timesteps.tolist()))


def unipc_schedule(steps: int, shift: float, num_train_timesteps: int = 1000) -> Schedule:
    """The UniPC path: N+1 points from the largest training sigma down to 0, the last one dropped, then shifted."""
    # Largest sigma of the float32 training grid 1 - linspace(1, 1/T, T): 1 - 1/T = 0.9990000128746033 for T = 1000.
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))
    base = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
    return _from_shifted(shift_sigmas(base, shift), num_train_timesteps)


def flow_schedule(steps: int, shift: float, num_train_timesteps: int = 1000) -> Schedule:
    """The flow-matching training grid's path, which DPM++ samples and the shortcut Euler rule was trained on:
    starts at sigma = 1 exactly (timestep 1000)."""
    base = np.linspace(1.0, 0.0, steps + 1)[:steps]
    return _from_shifted(shift_sigmas(base, shift), num_train_timesteps)


def shortcut_dt(timesteps: Sequence[int]) -> list[int]:
    """PixelWizard's step-size input: the gap to the next timestep (0 after the last), made even and at least 2."""
    nxt = [*timesteps[1:], 0]
    dts = [round(abs(t - n)) for t, n in zip(timesteps, nxt)]
    return [max(dt - dt % 2, 2) for dt in dts]
