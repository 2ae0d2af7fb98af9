import dataclasses
import json
import re

import pytest

from pixelwizard.models.config import ConfigError, DiTConfig, T5Config, VAEConfig, config_from_json, config_to_json


def test_published_config_json_takes_original_defaults(tmp_path):
    published = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": "ti2v", "dim": 3072,
                 "ffn_dim": 14336, "freq_dim": 256, "in_dim": 48, "out_dim": 48, "num_heads": 24,
                 "num_layers": 30, "text_len": 512, "eps": 1e-06}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(published))
    cfg = config_from_json(DiTConfig, path)
    assert cfg == DiTConfig()
    assert cfg.patch_size == (1, 2, 2) and cfg.text_dim == 4096 and cfg.head_dim == 128


def test_present_fields_are_honoured_and_round_trip(tmp_path):
    cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, patch_size=(1, 2, 2))
    path = tmp_path / "config.json"
    config_to_json(cfg, path, _class_name="WanModel")
    assert config_from_json(DiTConfig, path) == cfg


@pytest.mark.parametrize("values, fragment", [
    ({"dim": 100, "num_heads": 3}, "not divisible"),
    ({"window_size": [4, 4]}, "window_size"),
    ({"model_type": "s2v"}, "model_type"),
    ({"dim": "big"}, "config.json"),
])
def test_invalid_configs_name_the_file(tmp_path, values, fragment):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=fragment):
        config_from_json(DiTConfig, path)


@pytest.mark.parametrize("cls, values, fragments", [
    (T5Config, {"vocab": 384, "dim": 32, "shared_pos": False},
     ["unknown key(s) 'vocab', 'shared_pos'", "'vocab' -> 'vocab_size'", "T5Config knows dim, dim_attn"]),
    (VAEConfig, {"z_dim": 48, "c_dim": 160}, ["unknown key(s) 'c_dim'", "VAEConfig knows dec_dim, dim, dim_mult"]),
    (DiTConfig, {"dim": 3072, "attention_head_dim": 128}, ["unknown key(s) 'attention_head_dim'",
                                                           "_class_name, _diffusers_version"]),
])
def test_unknown_keys_are_refused_with_file_key_and_known_keys(tmp_path, cls, values, fragments):
    path = tmp_path / "some_config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError) as err:
        config_from_json(cls, path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and message.endswith("rename or remove them")
    for fragment in fragments:
        assert fragment in message
    known = message.split(" knows ")[1].split(";")[0].split(", ")
    assert set(known) == {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "file_keys", {}))


def test_a_config_of_another_class_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.35.0"}))
    with pytest.raises(ConfigError, match="_class_name is 'WanTransformer3DModel', not 'WanModel'"):
        config_from_json(DiTConfig, path)


@pytest.mark.parametrize("values, fragment", [
    ({"num_layers": 2.5}, "num_layers: expected int, got 2.5"),
    ({"num_layers": "30"}, "num_layers: expected int, got '30'"),
    ({"qk_norm": 1}, "qk_norm: expected bool, got 1"),
    ({"patch_size": "122"}, "patch_size: expected a list like [1, 2, 2], got '122'"),
    ({"patch_size": [1, 2.0, 2]}, "patch_size: expected int, got 2.0"),
    ({"eps": True}, "eps: expected float, got True"),
])
def test_values_of_the_wrong_type_are_refused(tmp_path, values, fragment):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {fragment}")):
        config_from_json(DiTConfig, path)


def test_an_int_is_a_valid_float(tmp_path):
    path = tmp_path / "t5_config.json"
    path.write_text(json.dumps({"eps": 0}))
    assert config_from_json(T5Config, path).eps == 0
