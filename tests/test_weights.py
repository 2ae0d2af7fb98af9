import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pixelwizard.checkpoints import wan as weights
from pixelwizard.checkpoints import wan_files
from pixelwizard.checkpoints.strict import CheckpointError
from pixelwizard.checkpoints.tiny import TINY_DIT, TINY_VAE, write_tiny_checkpoint


def test_tiny_checkpoint_has_the_published_layout(tiny_ckpt):
    names = {p.relative_to(tiny_ckpt).as_posix() for p in tiny_ckpt.rglob("*") if p.is_file()}
    assert {
        "config.json", weights.DIT_INDEX, weights.VAE_FILE, weights.T5_FILE, "vae_config.json", "t5_config.json",
        *(f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)),
        f"{weights.TOKENIZER_DIR}/tokenizer.json",
    } <= names
    index = json.loads((tiny_ckpt / weights.DIT_INDEX).read_text())
    assert len(index["weight_map"]) == len(weights.WanDiT(TINY_DIT).state_dict())


def test_tiny_checkpoint_is_deterministic_per_seed(tmp_path):
    a = write_tiny_checkpoint(tmp_path / "a", seed=3)
    b = write_tiny_checkpoint(tmp_path / "b", seed=3)
    for name in ("diffusion_pytorch_model-00001-of-00003.safetensors",):
        sa, sb = load_file(a / name), load_file(b / name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    vae_a, vae_b = torch.load(a / weights.VAE_FILE), torch.load(b / weights.VAE_FILE)
    assert torch.equal(vae_a["conv1.weight"], vae_b["conv1.weight"])


def test_dit_round_trip_and_dtype(tiny_ckpt):
    model = weights.load_dit(tiny_ckpt, dtype=torch.bfloat16)
    assert model.config == TINY_DIT
    saved = {}
    for shard in sorted(tiny_ckpt.glob("diffusion_pytorch_model-*.safetensors")):
        saved.update(load_file(shard))
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    for k, v in saved.items():
        expected = torch.float32 if model.keeps_float32(k) else torch.bfloat16
        assert loaded[k].dtype == expected, k
        torch.testing.assert_close(loaded[k], v.to(expected), rtol=0, atol=0)
    assert loaded["blocks.0.ffn.0.weight"].dtype == torch.bfloat16
    assert loaded["time_projection.1.weight"].dtype == torch.float32


def test_vae_and_text_encoder_load(tiny_ckpt):
    vae = weights.load_vae(tiny_ckpt)
    assert vae.config == TINY_VAE
    assert all(p.dtype == torch.float32 and not p.is_meta for p in vae.parameters())
    encoder = weights.load_text_encoder(tiny_ckpt)
    (embedding,) = encoder.encode(["a red fox runs through snow"])
    assert embedding.ndim == 2 and embedding.shape[1] == 32 and torch.isfinite(embedding.float()).all()


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    return shutil.copytree(tiny_ckpt, tmp_path / "ckpt")


def _rewrite_shard(ckpt, edit):
    shard = ckpt / "diffusion_pytorch_model-00001-of-00003.safetensors"
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard)
    return shard


def test_dit_missing_key_names_shard_and_key(ckpt_copy):
    shard = _rewrite_shard(ckpt_copy, lambda t: t.pop("patch_embedding.weight"))
    with pytest.raises(CheckpointError, match="patch_embedding.weight") as err:
        weights.load_dit(ckpt_copy)
    assert str(shard) in str(err.value)


def test_dit_unexpected_and_wrong_shape(ckpt_copy):
    index_path = ckpt_copy / weights.DIT_INDEX
    index = json.loads(index_path.read_text())

    def add_extra(t):
        t["blocks.0.extra.weight"] = torch.zeros(2)
        t["patch_embedding.bias"] = torch.zeros(3)

    shard = _rewrite_shard(ckpt_copy, add_extra)
    index["weight_map"]["blocks.0.extra.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as err:
        weights.load_dit(ckpt_copy)
    message = str(err.value)
    assert "unexpected keys: blocks.0.extra.weight" in message
    assert "patch_embedding.bias (3,) (expected (64,))" in message
    assert str(ckpt_copy / weights.DIT_INDEX) in message


@pytest.mark.parametrize("name", [
    "diffusion_pytorch_model-00002-of-00003.safetensors", weights.DIT_CONFIG, weights.DIT_INDEX,
])
def test_dit_missing_files(ckpt_copy, name):
    (ckpt_copy / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing; expected the Wan2.2-TI2V-5B checkpoint layout"):
        weights.load_dit(ckpt_copy)


def test_vae_and_t5_missing_or_malformed(ckpt_copy):
    state = torch.load(ckpt_copy / weights.VAE_FILE)
    state.pop("decoder.head.2.bias")
    torch.save(state, ckpt_copy / weights.VAE_FILE)
    with pytest.raises(CheckpointError, match="Wan2.2_VAE.pth: does not match the Wan2.2 VAE.*decoder.head.2.bias"):
        weights.load_vae(ckpt_copy)
    (ckpt_copy / weights.T5_FILE).unlink()
    with pytest.raises(CheckpointError, match="models_t5_umt5-xxl-enc-bf16.pth: missing"):
        weights.load_text_encoder(ckpt_copy)


def test_truncated_shard_is_named_by_the_loader(ckpt_copy):
    shard = ckpt_copy / "diffusion_pytorch_model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as err:
        weights.load_dit(ckpt_copy)
    assert str(err.value).startswith(f"{shard}: truncated: the header lists ")


def test_shard_with_tensors_the_index_does_not_list(ckpt_copy):
    shard = _rewrite_shard(ckpt_copy, lambda t: t.__setitem__("stray.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match="holds tensors that the index .* does not map to it .stray.weight.; "
                                              "download the checkpoint again") as err:
        weights.load_dit(ckpt_copy)
    assert str(err.value).startswith(f"{shard}: ")


def test_dit_files_are_config_index_and_shards(tiny_ckpt):
    assert [p.name for p in wan_files.dit_files(tiny_ckpt)] == [
        wan_files.DIT_CONFIG, wan_files.DIT_INDEX, *(f"diffusion_pytorch_model-0000{i}-of-00003.safetensors"
                                                 for i in (1, 2, 3))]
