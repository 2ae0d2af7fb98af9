"""The two PixelWizard samplers: the 50-step LR anchor and the 4-step HR shortcut, both with CFG.

    v = v_uncond + g * (v_cond - v_uncond)                      (classifier-free guidance)
    x <- solver.step(v, x)                                      (UniPC by default, DPM++ or Euler)

They take plain parameters and the starting noise; the product's presets are mapped onto them by the stages.

Image to video (Wan2.2-TI2V's i2v rule, both samplers): latent frame 0 is held at the image's latent, set before the
first step and after every step, and its tokens see timestep 0 while the others see the step's t.
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
            on_step: StepCallback | None = None, first_frame: Tensor | None = None) -> Tensor:
    """Integrate from pure noise (sigma at the schedule's start) to the data end of the solver's schedule;
    `on_step(k, steps)` is called before the first step (k = 0) and after each. `first_frame` [B, C, 1, h, w]:
    latent frame 0 is set to it before the first step and after each (the solver sees the pinned sample)."""
    kind = solver_kind(solver)
    schedule = kind.schedule(steps, shift)
    stepper = kind.make(schedule)
    x = noise if first_frame is None else pin_first_frame(noise, first_frame)
    if on_step is not None:
        on_step(0, schedule.steps)
    for i, (t, dt) in enumerate(zip(schedule.timesteps, shortcut_dt(schedule.timesteps))):
        t_, dt_ = (torch.tensor([float(v)], device=x.device) for v in (t, dt))
        x = stepper.step(velocity(x, t_, dt_), x)
        if first_frame is not None:
            x = pin_first_frame(x, first_frame)
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


def pin_first_frame(x: Tensor, first_frame: Tensor) -> Tensor:
    """x [B, C, T, h, w] with latent frame 0 replaced by first_frame [B, C, 1, h, w] (float32), as a new tensor."""
    return torch.cat([first_frame.to(x.dtype), x[:, :, 1:]], dim=2)


def first_frame_timesteps(t: Tensor, latent_shape: torch.Size, patch_size: tuple[int, int, int]) -> Tensor:
    """Per-token timesteps [B, L] for a latent [B, C, T, h, w] whose frame 0 is clean: 0 on that frame's tokens
    (the first h*w / (p_h*p_w) in the DiT's (t, h, w) order), t [B] on the rest."""
    pt, ph, pw = patch_size
    if pt != 1:
        raise ValueError(f"first-frame conditioning needs a temporal patch of 1, the model has {pt}")
    frames, h, w = latent_shape[2:]
    noisy = torch.ones(frames, h // ph, w // pw, device=t.device)
    noisy[0] = 0.0
    return noisy.flatten()[None] * t[:, None]


def _first_frame(first_frame: Tensor | None, noise: Tensor, device: torch.device) -> Tensor | None:
    """The image latent [C, 1, h, w] as [1, C, 1, h, w] float32 on `device`, checked against the noise [C, T, h, w]."""
    if first_frame is None:
        return None
    c, _, h, w = noise.shape
    if tuple(first_frame.shape) != (c, 1, h, w):
        raise ValueError(f"first_frame {tuple(first_frame.shape)} does not fit the noise {tuple(noise.shape)}: "
                         f"expected the image's latent [{c}, 1, {h}, {w}]; encode the image at the video's size")
    return first_frame[None].to(device=device, dtype=torch.float32)


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
    first_frame: Tensor | None = None,
) -> Tensor:
    """Stage I: noise [C, T, h, w] -> the LR anchor latent [C, T, h, w] (float32).

    `batch_cfg` runs the two CFG branches as one forward of batch 2 (the same maths as two forwards of batch 1).
    `first_frame` [C, 1, h, w], the VAE latent of an image, makes it image to video (see the module's docstring);
    the result's frame 0 is that latent.
    """
    device = next(model.parameters()).device
    prompt, uncond = cond.prompt.to(device), cond.uncond.to(device)
    first = _first_frame(first_frame, noise, device)

    def guided(x: Tensor, t: Tensor, _dt: Tensor) -> Tensor:
        if first is not None:
            t = first_frame_timesteps(t, x.shape, model.config.patch_size)
        if batch_cfg:
            v_c, v_u = model(torch.cat([x, x]), torch.cat([t, t]), [prompt, uncond]).chunk(2)
        else:
            v_c, v_u = model(x, t, [prompt]), model(x, t, [uncond])
        return v_u + guidance * (v_c - v_u)

    return denoise(guided, noise[None].to(device), steps=steps, shift=shift, solver=solver, on_step=on_step,
                   first_frame=first)[0]


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
    first_frame: Tensor | None = None,
) -> Tensor:
    """Stage II: noise [C, T, H, W] -> the HR latent [C, T, H, W] (float32), the LR anchor [C, T, h, w] entering
    through the adapter. The unconditional branch sees `cond.uncond` and the same anchor, or a zero anchor with
    `zero_uncond_anchor` (the training-time anchor dropout).

    Experimental: `first_frame` [C, 1, H, W], an image's latent at the HR size, holds frame 0 by the i2v rule (the
    HR model was fine-tuned from the TI2V model; no original runs it so). Only the DiT's modulation sees the
    per-token timesteps; the adapter's gain and the dt embedding keep the step's t and dt (the original adapter,
    given per-token t, would read the first token's: 0 here).
    """
    device = next(model.parameters()).device
    first = _first_frame(first_frame, noise, device)
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
        token_t = None if first is None else first_frame_timesteps(t, x.shape, model.config.patch_size)
        v_c = model(x, t, dt, prompt, features(anchor), token_t=token_t)
        v_u = model(x, t, dt, uncond, features(uncond_anchor), token_t=token_t)
        return v_u + guidance * (v_c - v_u)

    return denoise(guided, noise[None].to(device), steps=steps, shift=shift, solver=solver, on_step=on_step,
                   first_frame=first)[0]
