"""The two PixelWizard samplers: the 50-step LR anchor and the 4-step HR shortcut, both with CFG.

    v = v_uncond + g * (v_cond - v_uncond)                      (classifier-free guidance)
    x <- solver.step(v, x)                                      (UniPC by default, DPM++ or Euler)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline.presets import Preset
from pixelwizard.sampling.schedules import Schedule, dpmpp_schedule, shortcut_dt, unipc_schedule
from pixelwizard.sampling.seeds import gaussian_noise
from pixelwizard.sampling.solvers import make_solver

VAE_STRIDE = (4, 16, 16)  # (T, H, W) compression of the Wan2.2 VAE

StepCallback = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class Conditioning:
    """Text embeddings of one prompt and of its unconditional branch, each [L_i, text_dim]."""

    prompt: torch.Tensor
    uncond: torch.Tensor


def latent_shape(channels: int, frames: int, width: int, height: int) -> tuple[int, int, int, int]:
    st, sh, sw = VAE_STRIDE
    return channels, (frames - 1) // st + 1, height // sh, width // sw


def make_schedule(solver: str, steps: int, shift: float) -> Schedule:
    return dpmpp_schedule(steps, shift) if solver == "dpm++" else unipc_schedule(steps, shift)


def _denoise(
    velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    noise: torch.Tensor,
    schedule: Schedule,
    solver_name: str,
    on_step: StepCallback | None,
) -> torch.Tensor:
    """Integrate from pure noise to the data end of `schedule`; `velocity(x, t, dt)` gets [1]-shaped t and dt."""
    solver = make_solver(solver_name, schedule)
    dts = shortcut_dt(schedule.timesteps)
    x = noise
    n = len(schedule.timesteps)
    for i, (t, dt) in enumerate(zip(schedule.timesteps, dts)):
        t_, dt_ = (torch.tensor([float(v)], device=x.device) for v in (t, dt))
        x = solver.step(velocity(x, t_, dt_), x)
        if on_step is not None:
            on_step(i + 1, n)
    return x


@torch.inference_mode()
def sample_lr(
    model: WanDiT, cond: Conditioning, preset: Preset, seed: int, *, on_step: StepCallback | None = None
) -> torch.Tensor:
    """Stage I: the LR anchor latent [C, T, h, w] (float32) at preset.lr_width x preset.lr_height."""
    device = next(model.parameters()).device
    shape = latent_shape(model.config.out_dim, preset.frames, preset.lr_width, preset.lr_height)
    prompt, uncond = [cond.prompt.to(device)], [cond.uncond.to(device)]

    def guided(x: torch.Tensor, t: torch.Tensor, _dt: torch.Tensor) -> torch.Tensor:
        v_c = model(x, t, prompt)
        v_u = model(x, t, uncond)
        return v_u + preset.lr_guidance * (v_c - v_u)

    schedule = make_schedule(preset.lr_solver, preset.lr_steps, preset.lr_shift)
    noise = gaussian_noise((1, *shape), seed, device)
    return _denoise(guided, noise, schedule, preset.lr_solver, on_step)[0]


@torch.inference_mode()
def sample_hr(
    model: HRDiT,
    cond: Conditioning,
    lr_latent: torch.Tensor,
    preset: Preset,
    seed: int,
    *,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Stage II: the HR latent [C, T, H, W] from pure noise, the LR anchor entering through the adapter.

    The unconditional branch sees `cond.uncond` (the negative prompt by default, the empty prompt when the
    caller encoded that) and the same anchor, or a zero anchor with `preset.uncond_anchor == "zero"`.
    """
    device = next(model.parameters()).device
    shape = latent_shape(model.config.out_dim, preset.frames, preset.width, preset.height)
    anchor = lr_latent[None].to(device)
    features = model.anchor_features(anchor, (1, *shape))
    uncond_features = (
        model.anchor_features(torch.zeros_like(anchor), (1, *shape)) if preset.uncond_anchor == "zero" else features
    )
    prompt, uncond = [cond.prompt.to(device)], [cond.uncond.to(device)]

    def guided(x: torch.Tensor, t: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
        v_c = model(x, t, dt, prompt, features)
        v_u = model(x, t, dt, uncond, uncond_features)
        return v_u + preset.hr_guidance * (v_c - v_u)

    schedule = make_schedule(preset.hr_solver, preset.hr_steps, preset.hr_shift)
    noise = gaussian_noise((1, *shape), seed, device)
    return _denoise(guided, noise, schedule, preset.hr_solver, on_step)[0]
