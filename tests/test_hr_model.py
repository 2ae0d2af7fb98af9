from __future__ import annotations

import hashlib

import pytest
import torch

from pixelwizard.checkpoints.strict import CheckpointError
from pixelwizard.checkpoints.tiny import TINY_DIT, randomize_
from pixelwizard.checkpoints.trainer import (
    generator_state_dict,
    load_hr_model,
    load_lr_model,
    save_trainer_checkpoint,
)
from pixelwizard.models.config import DiTConfig
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import AnchorMismatchError, HRDiT, resize_anchor

# From the published checkpoint's manifest (PixelWizard model.pt "generator": VisionForge-arch/PixelWizard@6d2f630
# WanModel_HR(5B) with dt conditioning and the spatial adapter): sha256 of its sorted "key (shape)" lines, its tensor
# count and its parameter count.
FULL_LAYOUT_SHA256 = "8aca533c06f9c40ce244564ba53618e60643b43cf02b0696d92483c91de94243"
FULL_TENSORS, FULL_PARAMS = 847, 5_103_666_624


def tiny_hr(seed=0) -> HRDiT:
    return randomize_(HRDiT(TINY_DIT), seed).eval()


def test_full_size_keys_and_shapes_match_the_original_on_meta():
    with torch.device("meta"):
        state = HRDiT(DiTConfig()).state_dict()
        base_keys = set(WanDiT(DiTConfig()).state_dict())
    assert len(state) == FULL_TENSORS and sum(v.numel() for v in state.values()) == FULL_PARAMS
    extra = sorted({k.split(".")[0] for k in state.keys() - base_keys})
    assert base_keys <= state.keys() and extra == ["dt_embedding", "spatial_adapter"]
    assert state["spatial_adapter.backbone.0.weight"].shape == (768, 48, 1, 1, 1)  # mid_dim 3072 // 4
    assert state["spatial_adapter.zero_layers.1.weight"].shape == (3072, 3072)  # injected into block 1 only
    listing = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(listing.encode()).hexdigest() == FULL_LAYOUT_SHA256


def test_resize_anchor_is_bilinear_to_the_token_grid():
    lr = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 1, 2, 4, 6)
    out = resize_anchor(lr, (8, 12))
    assert out.shape == (1, 1, 2, 8, 12)
    expected = torch.nn.functional.interpolate(lr[:, :, 1], size=(8, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :, 1], expected)


def test_anchor_mismatch_is_an_error_not_a_silent_skip():
    model = tiny_hr()
    lr = torch.randn(1, 48, 2, 4, 8)
    with pytest.raises(AnchorMismatchError, match="frame counts must match"):
        model.anchor_features(lr, (1, 48, 3, 8, 16))
    features = model.anchor_features(lr, (1, 48, 2, 8, 16))
    assert features.shape == (1, 2 * 4 * 8, TINY_DIT.dim)
    x = torch.randn(1, 48, 2, 8, 12)
    with pytest.raises(AnchorMismatchError, match="64 tokens but the HR latent"):
        model(x, torch.tensor([999.0]), torch.tensor([56.0]), [torch.randn(5, TINY_DIT.text_dim)], features)


def test_dt_and_anchor_change_the_prediction():
    model = tiny_hr()
    x = torch.randn(1, 48, 2, 8, 16)
    ctx = [torch.randn(5, TINY_DIT.text_dim)]
    features = model.anchor_features(torch.randn(1, 48, 2, 4, 8), x.shape)
    t = torch.tensor([942.0])
    base = model(x, t, torch.tensor([96.0]), ctx, features)
    assert not torch.allclose(base, model(x, t, torch.tensor([198.0]), ctx, features))
    assert not torch.allclose(base, model(x, t, torch.tensor([96.0]), ctx, torch.zeros_like(features)))
    torch.testing.assert_close(base, model(x, t, torch.tensor([96.0]), ctx, features), rtol=0, atol=0)


def test_zero_dt_embedding_and_zero_control_reduce_to_the_base_dit():
    model = tiny_hr()
    with torch.no_grad():
        for layer in (model.dt_embedding[2], model.spatial_adapter.zero_layers["1"]):
            layer.weight.zero_()
            layer.bias.zero_()
    base = weights_only_dit(model)
    x = torch.randn(1, 48, 2, 8, 16)
    ctx = [torch.randn(5, TINY_DIT.text_dim)]
    t = torch.tensor([845.0])
    features = model.anchor_features(torch.randn(1, 48, 2, 4, 8), x.shape)
    torch.testing.assert_close(model(x, t, torch.tensor([198.0]), ctx, features), base(x, t, ctx))


def weights_only_dit(hr: HRDiT):
    dit = WanDiT(hr.config)
    dit.load_state_dict({k: v for k, v in hr.state_dict().items() if k in dit.state_dict()})
    return dit.eval()


@pytest.fixture
def hr_model_pt(tmp_path):
    model = tiny_hr(seed=5)
    path = tmp_path / "2k" / "model.pt"
    save_trainer_checkpoint(model, path)
    return model, path


def test_trainer_checkpoint_round_trip(hr_model_pt):
    model, path = hr_model_pt
    loaded = load_hr_model(path, TINY_DIT)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_fsdp_wrapper_substrings_removed_and_ema_ignored(tmp_path):
    model = tiny_hr(seed=1)
    wrapped = {}
    for k, v in model.state_dict().items():
        head, _, rest = k.partition(".")
        wrapped[f"model._fsdp_wrapped_module.{head}._checkpoint_wrapped_module.{rest}"] = v
    path = tmp_path / "model.pt"
    torch.save({"generator": wrapped, "generator_ema": {k: torch.zeros_like(v) for k, v in wrapped.items()}}, path)
    assert torch.equal(load_hr_model(path, TINY_DIT).dt_embedding[0].weight, model.dt_embedding[0].weight)
    torch.save({"generator": {k: torch.zeros_like(v) for k, v in wrapped.items()}, "generator_ema": wrapped}, path)
    assert load_hr_model(path, TINY_DIT).dt_embedding[0].weight.abs().sum() == 0


@pytest.mark.parametrize("edit, fragment", [
    (lambda sd: sd.pop("model.dt_embedding.2.bias"), "missing keys: dt_embedding.2.bias"),
    (lambda sd: sd.pop("model.spatial_adapter.zero_layers.1.weight"),
     "missing keys: spatial_adapter.zero_layers.1.weight"),
    (lambda sd: sd.__setitem__("model.spatial_adapter.zero_layers.5.weight", torch.zeros(2)), "unexpected keys"),
    (lambda sd: sd.__setitem__("model.dt_embedding.0.bias", torch.zeros(3)), "wrong shapes: dt_embedding.0.bias"),
])
def test_malformed_hr_checkpoints_fail_loudly(hr_model_pt, edit, fragment):
    _, path = hr_model_pt
    raw = torch.load(path)
    edit(raw["generator"])
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=fragment) as err:
        load_hr_model(path, TINY_DIT)
    assert str(path) in str(err.value) and "PixelWizard HR model" in str(err.value)


def test_hr_checkpoint_is_not_an_lr_checkpoint(hr_model_pt):
    _, path = hr_model_pt
    with pytest.raises(CheckpointError, match="unexpected keys: dt_embedding"):
        load_lr_model(path, TINY_DIT)


def test_checkpoint_without_generator(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"optimizer": {"step": torch.tensor(3)}, "step": 3}, path)
    with pytest.raises(CheckpointError, match="no 'generator' entry"):
        generator_state_dict(path)
