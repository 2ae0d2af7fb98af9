"""Image to video against the original: tests/golden/i2v_wan22.safetensors holds what Wan2.2's own `WanTI2V.i2v`
(and `.t2v`) computed on a tiny DiT (made by tests/golden/make_i2v_golden.py); our preprocessing and LR sampler
must reproduce it. Then the experimental HR first-frame rule, which has no original to compare with.

Tolerance of the sampled latents: float32 rounding only, |ours - original| <= 2e-5 + 1e-5 |original| (observed
at most 6e-6 on values up to 8); per-token timesteps and the pinned frame are exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from pixelwizard.checkpoints import wan as weights
from pixelwizard.checkpoints.tiny import TINY_DIT, randomize_
from pixelwizard.io.image import fit_image
from pixelwizard.models.config import DiTConfig
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline import steps
from pixelwizard.pipeline.presets import get_preset
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.sampling.samplers import Conditioning, first_frame_timesteps, sample_hr, sample_lr
from pixelwizard.sampling.schedules import flow_schedule, unipc_schedule

GOLDEN = Path(__file__).parent / "golden" / "i2v_wan22.safetensors"
TOLERANCE = dict(atol=2e-5, rtol=1e-5)

with safe_open(GOLDEN, "pt") as _f:
    META = json.loads(_f.metadata()["golden"])
RUNS = META["runs"]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN)


@pytest.fixture(scope="module")
def dit(golden, tmp_path_factory) -> WanDiT:
    """The golden DiT through our checkpoint layout and strict loader."""
    config = DiTConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in META["config"].items()})
    model = WanDiT(config)
    model.load_state_dict({k.removeprefix("weights/"): v for k, v in golden.items() if k.startswith("weights/")})
    ckpt = tmp_path_factory.mktemp("golden_dit")
    weights.save_dit(model, ckpt)
    return weights.load_dit(ckpt).eval()


def fitted(golden, case: str) -> torch.Tensor:
    """What the original's i2v handed its VAE: to_tensor's u8 / 255, then (x - 0.5) / 0.5."""
    return golden[f"fitted/{case}"].float().div(255).sub(0.5).div(0.5)


@pytest.mark.parametrize("case", list(META["images"]))
def test_fit_image_is_wan22_i2v_preprocessing(golden, case):
    """Lanczos resize to cover, centre crop, [-1, 1]: bit for bit, for up- and downscaling, portrait and odd sizes."""
    expected = fitted(golden, case)
    image = Image.fromarray(golden[f"img/{case}"].numpy())
    out = fit_image(image, width=expected.shape[-1], height=expected.shape[-2])
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert torch.equal(out, expected)


def record_steps(model: torch.nn.Module) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], object]:
    """(latent, timesteps) of the conditional branch of every model call."""
    calls = []
    handle = model.register_forward_pre_hook(lambda _, args: calls.append((args[0][0].clone(), args[1][0].clone())))
    return calls, handle


def run_ours(dit, golden, name: str, *, batch_cfg: bool = True, first_frame: bool = True):
    run = RUNS[name]
    cond = Conditioning(prompt=golden["context/prompt"], uncond=golden["context/negative"])
    calls, handle = record_steps(dit)
    try:
        out = sample_lr(dit, cond, golden[f"{name}/noise"], steps=run["steps"], shift=run["shift"],
                        guidance=run["guidance"], solver=run["solver"], batch_cfg=batch_cfg,
                        first_frame=golden[f"{name}/z"] if first_frame else None)
    finally:
        handle.remove()
    return out, calls if batch_cfg else calls[::2]


@pytest.mark.parametrize("batch_cfg", [True, False], ids=["batched-cfg", "two-forwards"])
@pytest.mark.parametrize("name", [n for n, r in RUNS.items() if r["mode"] == "i2v"])
def test_i2v_lr_sampler_matches_wan22(dit, golden, name, batch_cfg):
    run, z = RUNS[name], golden[f"{name}/z"]
    out, calls = run_ours(dit, golden, name, batch_cfg=batch_cfg)
    assert len(calls) == run["steps"]
    # per-token timesteps, exactly: 0 on the first latent frame's tokens, the schedule's t on the others
    torch.testing.assert_close(torch.stack([t for _, t in calls]), golden[f"{name}/t"], atol=0, rtol=0)
    schedule = (unipc_schedule if run["solver"] == "unipc" else flow_schedule)(run["steps"], run["shift"])
    frame_tokens = z.shape[-2] * z.shape[-1] // 4
    for (_, t), step_t in zip(calls, schedule.timesteps):
        assert t[:frame_tokens].eq(0).all() and t[frame_tokens:].eq(step_t).all()
    # the image latent is pinned before the first step: the first model input is [z, noise frames 1..]
    first_input = calls[0][0]
    assert torch.equal(first_input[:, :1], z) and torch.equal(first_input[:, 1:], golden[f"{name}/noise"][:, 1:])
    for step, (x, _) in enumerate(calls):
        assert torch.equal(x[:, :1], z), f"step {step}: frame 0 not pinned"
        torch.testing.assert_close(x, golden[f"{name}/inputs"][step], **TOLERANCE)
    assert torch.equal(out[:, :1], z)  # and after the last step
    torch.testing.assert_close(out, golden[f"{name}/result"], **TOLERANCE)


def test_t2v_lr_sampler_matches_wan22(dit, golden):
    """Without a first frame our LR sampler is Wan2.2's t2v loop: the i2v loop differs from it only by the pinned
    frame and its timesteps (same schedule, noise shape, seq_len and guidance)."""
    out, calls = run_ours(dit, golden, "t2v", first_frame=False)
    for (_, t), original_t in zip(calls, golden["t2v/t"], strict=True):
        assert t.ndim == 0 and original_t.eq(t).all()  # one timestep per sample, the original's
    torch.testing.assert_close(out, golden["t2v/result"], **TOLERANCE)
    with_image, _ = run_ours(dit, golden, "unipc")
    assert (with_image - out)[:, 1:].abs().max() > 0.1  # the image steers the other frames


def test_first_frame_must_fit_the_noise(dit, golden):
    cond = Conditioning(prompt=golden["context/prompt"], uncond=golden["context/negative"])
    noise = golden["unipc/noise"]
    with pytest.raises(ValueError, match=r"first_frame \(48, 1, 6, 4\) does not fit the noise \(48, 3, 4, 6\)"):
        sample_lr(dit, cond, noise, steps=2, shift=5.0, guidance=5.0, first_frame=golden["dpmpp/z"])


def test_first_frame_timesteps_layout():
    t = first_frame_timesteps(torch.tensor([700.0, 300.0]), torch.Size([2, 48, 3, 4, 6]), (1, 2, 2))
    assert t.shape == (2, 18) and t.dtype == torch.float32
    assert t[:, :6].eq(0).all() and t[0, 6:].eq(700).all() and t[1, 6:].eq(300).all()
    with pytest.raises(ValueError, match="temporal patch of 1"):
        first_frame_timesteps(torch.tensor([700.0]), torch.Size([1, 48, 4, 4, 6]), (2, 2, 2))


@pytest.fixture(scope="module")
def hr_model() -> HRDiT:
    return randomize_(HRDiT(TINY_DIT), seed=3).eval()


def test_hr_first_frame_is_pinned_and_the_rest_follows_the_model(hr_model):
    gen = torch.Generator().manual_seed(0)
    cond = Conditioning(prompt=torch.randn(6, TINY_DIT.text_dim, generator=gen),
                        uncond=torch.randn(4, TINY_DIT.text_dim, generator=gen))
    lr, noise = torch.randn(48, 3, 4, 8, generator=gen), torch.randn(48, 3, 10, 16, generator=gen)
    z = torch.randn(48, 1, 10, 16, generator=gen)
    kwargs = dict(steps=4, shift=5.0, guidance=5.0, solver="euler")
    seen = []
    handle = hr_model.register_forward_pre_hook(
        lambda _, args, kw: seen.append((args[0].clone(), args[1].clone(), kw["token_t"])), with_kwargs=True)
    try:
        pinned = sample_hr(hr_model, cond, lr, noise, first_frame=z, **kwargs)
    finally:
        handle.remove()
    plain = sample_hr(hr_model, cond, lr, noise, **kwargs)

    assert torch.equal(pinned[:, :1], z)
    assert len(seen) == 2 * kwargs["steps"]
    frame_tokens = 5 * 8
    for x, t, token_t in seen:
        assert torch.equal(x[0, :, :1], z)  # the model always sees the image's latent in frame 0
        assert t.shape == (1,) and token_t.shape == (1, 3 * frame_tokens)  # the adapter keeps the step's t
        assert token_t[0, :frame_tokens].eq(0).all() and token_t[0, frame_tokens:].eq(t).all()
    # frames 1.. are the model's: finite, and steered by the pinned frame (they differ from the unpinned run)
    assert pinned.isfinite().all() and (pinned[:, 1:] - plain[:, 1:]).abs().max() > 1e-2


def test_hr_without_first_frame_sees_one_timestep_per_sample(hr_model):
    seen = []
    handle = hr_model.register_forward_pre_hook(lambda _, args, kw: seen.append(kw.get("token_t")), with_kwargs=True)
    cond = Conditioning(prompt=torch.randn(6, TINY_DIT.text_dim), uncond=torch.randn(4, TINY_DIT.text_dim))
    try:
        sample_hr(hr_model, cond, torch.randn(48, 3, 4, 8), torch.randn(48, 3, 10, 16), steps=2, shift=5.0,
                  guidance=5.0)
    finally:
        handle.remove()
    assert seen == [None] * 4


def test_an_image_becomes_frame_0_of_the_lr_anchor_and_optionally_of_the_hr_latent(weights):
    """The library path the stage and the API take: fit + VAE-encode the image at each size, sample with it."""
    config = RunConfig(ckpt_dir=str(weights["ckpt_dir"]), hr_ckpt=str(weights["hr_ckpt"]), preset="tiny",
                       device="cpu")
    preset, device = get_preset("tiny"), torch.device("cpu")
    vae, dit, hr = steps.load_vae(config, device), steps.load_lr_dit(config, device), steps.load_hr_dit(config, device)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8))  # portrait
    lr_frame = steps.encode_first_frame(vae, image, preset.lr_width, preset.lr_height)
    hr_frame = steps.encode_first_frame(vae, image, preset.width, preset.height)
    assert lr_frame.shape == (48, 1, 4, 8) and hr_frame.shape == (48, 1, 10, 16) and lr_frame.dtype == torch.float32
    cond = Conditioning(prompt=torch.randn(5, TINY_DIT.text_dim), uncond=torch.randn(3, TINY_DIT.text_dim))
    anchor = steps.lr_anchor(dit, cond, preset, 1, config, first_frame=lr_frame)
    assert torch.equal(anchor[:, :1], lr_frame)
    assert not torch.equal(anchor[:, 1:], steps.lr_anchor(dit, cond, preset, 1, config)[:, 1:])
    assert torch.equal(steps.hr_latent(hr, cond, anchor, preset, 2, config, first_frame=hr_frame)[:, :1], hr_frame)
