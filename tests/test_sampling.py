import pytest
import torch

from pixelwizard.checkpoints import wan as weights
from pixelwizard.checkpoints.tiny import TINY_DIT, randomize_
from pixelwizard.models.config import VAEConfig
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline.presets import PresetError, get_preset
from pixelwizard.sampling.samplers import Conditioning, denoise, sample_hr, sample_lr
from pixelwizard.sampling.schedules import shortcut_dt
from pixelwizard.sampling.seeds import gaussian_noise, prompt_seed
from pixelwizard.sampling.solvers import solver_kind


@pytest.mark.parametrize("preset, t, dt", [
    ("2k", [999, 942, 845, 646], [56, 96, 198, 646]),
    ("4k", [999, 945, 852, 658], [54, 92, 194, 658]),
])
def test_hr_tables_come_from_the_presets(preset, t, dt):
    p = get_preset(preset)
    schedule = solver_kind(p.hr_solver).schedule(p.hr_steps, p.hr_shift)
    assert list(schedule.timesteps) == t
    assert shortcut_dt(schedule.timesteps) == dt


def test_presets_validate_and_override():
    assert get_preset("4k", hr_steps=5).hr_steps == 5
    assert get_preset("2k", hr_steps=None).hr_steps == 4
    with pytest.raises(PresetError, match="frames=120: must be 4n\\+1"):
        get_preset("2k", frames=120)
    with pytest.raises(PresetError, match="width=2500: must be a positive multiple of 32"):
        get_preset("2k", width=2500)
    with pytest.raises(PresetError, match="hr_solver='heun'"):
        get_preset("tiny", hr_solver="heun")
    with pytest.raises(PresetError, match="unknown setting"):
        get_preset("tiny", steps=3)


def test_seeds_depend_on_prompt_id_not_position():
    assert prompt_seed(0, "fox", "hr") == prompt_seed(0, "fox", "hr")
    assert len({prompt_seed(0, "fox", "hr"), prompt_seed(0, "fox", "lr"), prompt_seed(1, "fox", "hr"),
                prompt_seed(0, "cat", "hr")}) == 4


@pytest.fixture(scope="module")
def models(tiny_ckpt):
    encoder = weights.load_text_encoder(tiny_ckpt, dtype=torch.float32)
    lr_model = weights.load_dit(tiny_ckpt)
    hr_model = randomize_(HRDiT(TINY_DIT), seed=7).eval()
    return encoder, lr_model, hr_model


def generate(models, prompt_id, text, preset):
    encoder, lr_model, hr_model = models
    prompt, negative = encoder.encode([text, preset.negative_prompt])
    cond = Conditioning(prompt=prompt, uncond=negative)
    lr = sample_lr(lr_model, cond, noise(preset, "lr", prompt_seed(preset.seed, prompt_id, "lr")),
                   **preset.lr_sampling())
    hr = sample_hr(hr_model, cond, lr, noise(preset, "hr", prompt_seed(preset.seed, prompt_id, "hr")),
                   **preset.hr_sampling())
    return lr, hr


def noise(preset, stage, seed=0):
    size = (preset.lr_height, preset.lr_width) if stage == "lr" else (preset.height, preset.width)
    return gaussian_noise(VAEConfig().latent_shape(preset.frames, *size), seed)


def test_end_to_end_is_deterministic_and_independent_of_the_batch(models):
    preset = get_preset("tiny")
    lr_alone, hr_alone = generate(models, "fox", "a fox in the snow", preset)
    assert lr_alone.shape == (48, 3, 4, 8) and hr_alone.shape == (48, 3, 10, 16)
    assert torch.isfinite(hr_alone).all() and hr_alone.std() > 0
    generate(models, "cat", "a cat on a roof", preset)  # another prompt first: no state may leak
    lr_again, hr_again = generate(models, "fox", "a fox in the snow", preset)
    assert torch.equal(lr_alone, lr_again) and torch.equal(hr_alone, hr_again)
    _, hr_other_seed = generate(models, "fox", "a fox in the snow", preset.override(seed=1))
    assert not torch.equal(hr_alone, hr_other_seed)


def test_adapter_backbone_runs_once_per_video(models):
    _, _, hr_model = models
    calls = []
    handle = hr_model.spatial_adapter.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        preset = get_preset("tiny")
        cond = Conditioning(prompt=torch.randn(6, TINY_DIT.text_dim), uncond=torch.randn(9, TINY_DIT.text_dim))
        lr = torch.randn(48, 3, 4, 8)
        sample_hr(hr_model, cond, lr, noise(preset, "hr"), **preset.hr_sampling())
        assert len(calls) == 1  # 4 steps x 2 CFG branches = 8 model calls, one backbone pass
    finally:
        handle.remove()


def test_a_zero_uncond_anchor_builds_each_forwards_feature_with_the_same_result(models):
    """With `uncond_anchor: zero` the two branches' anchor features are not held at once (4K: 2 x 2.85 GiB); each
    forward builds its own, which gives exactly what features built once before sampling give."""
    _, _, hr_model = models
    preset = get_preset("tiny").override(uncond_anchor="zero")
    cond = Conditioning(prompt=torch.randn(6, TINY_DIT.text_dim), uncond=torch.randn(9, TINY_DIT.text_dim))
    lr, x = torch.randn(48, 3, 4, 8), noise(preset, "hr")
    calls = []
    handle = hr_model.spatial_adapter.backbone.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = sample_hr(hr_model, cond, lr, x, **preset.hr_sampling())
    finally:
        handle.remove()
    assert len(calls) == 2 * preset.hr_steps  # one backbone pass per forward

    hr_shape = (1, *x.shape)
    features = hr_model.anchor_features(lr[None], hr_shape)
    zero_features = hr_model.anchor_features(torch.zeros_like(lr[None]), hr_shape)

    def guided(x, t, dt):
        v_c = hr_model(x, t, dt, [cond.prompt], features)
        v_u = hr_model(x, t, dt, [cond.uncond], zero_features)
        return v_u + preset.hr_guidance * (v_c - v_u)

    with torch.inference_mode():
        expected = denoise(guided, x[None], steps=preset.hr_steps, shift=preset.hr_shift, solver=preset.hr_solver)[0]
    assert torch.equal(result, expected)


@pytest.mark.parametrize("solver", ["euler", "dpm++"])
def test_alternative_solvers_and_uncond_options_change_the_result(models, solver):
    _, _, hr_model = models
    preset = get_preset("tiny")
    cond = Conditioning(prompt=torch.randn(6, TINY_DIT.text_dim), uncond=torch.randn(9, TINY_DIT.text_dim))
    lr = torch.randn(48, 3, 4, 8)
    x = noise(preset, "hr")
    reference = sample_hr(hr_model, cond, lr, x, **preset.hr_sampling())
    other = sample_hr(hr_model, cond, lr, x, **preset.override(hr_solver=solver).hr_sampling())
    zero_anchor = sample_hr(hr_model, cond, lr, x, **preset.override(uncond_anchor="zero").hr_sampling())
    assert other.shape == reference.shape and not torch.allclose(other, reference)
    assert not torch.allclose(zero_anchor, reference)


def test_batched_cfg_is_two_forwards_in_one(models):
    """The LR sampler's B = 2 forward (cond and uncond together) gives the two batch-1 forwards' result."""
    _, lr_model, _ = models
    preset = get_preset("tiny")
    cond = Conditioning(prompt=torch.randn(6, TINY_DIT.text_dim), uncond=torch.randn(9, TINY_DIT.text_dim))
    x = noise(preset, "lr", seed=3)
    batched = sample_lr(lr_model, cond, x, **preset.lr_sampling(), batch_cfg=True)
    sequential = sample_lr(lr_model, cond, x, **preset.lr_sampling(), batch_cfg=False)
    torch.testing.assert_close(batched, sequential, atol=1e-5, rtol=1e-5)


def test_samplers_take_given_noise_and_report_every_step(models):
    _, lr_model, _ = models
    preset = get_preset("tiny")
    cond = Conditioning(prompt=torch.randn(6, TINY_DIT.text_dim), uncond=torch.randn(9, TINY_DIT.text_dim))
    steps = []
    x = noise(preset, "lr", seed=5)
    out = sample_lr(lr_model, cond, x, **preset.lr_sampling(), on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(k, preset.lr_steps) for k in range(preset.lr_steps + 1)]
    assert torch.equal(out, sample_lr(lr_model, cond, x.clone(), **preset.lr_sampling()))
    assert not torch.equal(out, sample_lr(lr_model, cond, noise(preset, "lr", seed=6), **preset.lr_sampling()))
