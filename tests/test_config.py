import json

import pytest

from pixelwizard.models.config import ConfigError, DiTConfig, config_from_json, config_to_json


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
