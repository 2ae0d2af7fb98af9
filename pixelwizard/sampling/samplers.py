"""The two PixelWizard samplers: the 50-step LR anchor and the 4-step HR shortcut, both with CFG.

    v = v_uncond + g * (v_cond - v_uncond)                      (classifier-free guidance)
    x <- solver.step(v, x)                                      (UniPC by default, DPM++ or Euler)

They take plain parameters and the starting noise; the product's presets are mapped onto them by the stages.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from pixelwizard.distributed import no_autograd
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.sampling.schedules import shortcut_dt
from pixelwizard.sampling.solvers import solver_kind

StepCallback = Callable[[int, int], None]  # (steps done, steps in all)
Velocity = Callable[[Tensor, Tensor, Tensor], Tensor]  # (x, t [1], dt [1]) -> v


@dataclass(frozen=True)
class Conditioning:
    """Text embeddings of one prompt and of its unconditional branch, each [L_i, text_dim]."""

    prompt: Tensor
    uncond: Tensor


def denoise(velocity: Velocity, noise: Tensor, *, steps: int, shift: float, solver: str,
            on_step: StepCallback | None = None) -> Tensor:
    """Integrate from pure noise (sigma at the schedule's start) to the data end of the solver's schedule;
    `on_step(k, steps)` is called before the first step (k = 0) and after each."""
    kind = solver_kind(solver)
    schedule = kind.schedule(steps, shift)
    stepper = kind.make(schedule)
    x = noise
    if on_step is not None:
        on_step(0, schedule.steps)
    for i, (t, dt) in enumerate(zip(schedule.timesteps, shortcut_dt(schedule.timesteps))):
        t_, dt_ = (torch.tensor([float(v)], device=x.device) for v in (t, dt))
        x = stepper.step(velocity(x, t_, dt_), x)
        if on_step is not None:
            on_step(i + 1, schedule.steps)
    return x


def _without_autograd(sampler: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run `sampler(model, ...)` under `no_autograd(model)`: inference mode, no_grad for an FSDP2-sharded model."""

    @functools.wraps(sampler)
    def run(model: WanDiT, *args, **kwargs) -> Tensor:
        with no_autograd(model):
            return sampler(model, *args, **kwargs)

    return run


@_without_autograd
def sample_lr(
    model: WanDiT,
    cond: Conditioning,
    noise: Tensor,
    *,
    steps: int,
    shift: float,
    guidance: float,
    solver: str = "unipc",
    batch_cfg: bool = True,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Stage I: noise [C, T, h, w] -> the LR anchor latent [C, T, h, w] (float32).

    `batch_cfg` runs the two CFG branches as one forward of batch 2 (the same maths as two forwards of batch 1).
    """
    device = next(model.parameters()).device
    prompt, uncond = cond.prompt.to(device), cond.uncond.to(device)

    def guided(x: Tensor, t: Tensor, _dt: Tensor) -> Tensor:
        if batch_cfg:
            v_c, v_u = model(torch.cat([x, x]), torch.cat([t, t]), [prompt, uncond]).chunk(2)
        else:
            v_c, v_u = model(x, t, [prompt]), model(x, t, [uncond])
        return v_u + guidance * (v_c - v_u)

    return denoise(guided, noise[None].to(device), steps=steps, shift=shift, solver=solver, on_step=on_step)[0]


@_without_autograd
def sample_hr(
    model: HRDiT,
    cond: Conditioning,
    lr_latent: Tensor,
    noise: Tensor,
    *,
    steps: int,
    shift: float,
    guidance: float,
    solver: str = "unipc",
    zero_uncond_anchor: bool = False,
    on_step: StepCallback | None = None,
) -> Tensor:
    """Stage II: noise [C, T, H, W] -> the HR latent [C, T, H, W] (float32), the LR anchor [C, T, h, w] entering
    through the adapter. The unconditional branch sees `cond.uncond` and the same anchor, or a zero anchor with
    `zero_uncond_anchor` (the training-time anchor dropout)."""
    device = next(model.parameters()).device
    anchor = lr_latent[None].to(device)
    hr_shape = (1, *noise.shape)
    prompt, uncond = [cond.prompt.to(device)], [cond.uncond.to(device)]
    uncond_anchor = torch.zeros_like(anchor) if zero_uncond_anchor else anchor
    # One anchor feature serves both branches; two (float32 [L, dim], 2.85 GiB each at 4K) held at once would not fit
    # a 24 GB card, so with a zero anchor each forward builds its own (0.1% of its FLOPs) and drops it on return.
    shared = None if zero_uncond_anchor else model.anchor_features(anchor, hr_shape)

    def features(lr_anchor: Tensor) -> Tensor:
        return model.anchor_features(lr_anchor, hr_shape) if shared is None else shared

    def guided(x: Tensor, t: Tensor, dt: Tensor) -> Tensor:
        v_c = model(x, t, dt, prompt, features(anchor))
        v_u = model(x, t, dt, uncond, features(uncond_anchor))
        return v_u + guidance * (v_c - v_u)

    return denoise(guided, noise[None].to(device), steps=steps, shift=shift, solver=solver, on_step=on_step)[0]
