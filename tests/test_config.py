import dataclasses
import json
import re
from pathlib import Path

import pytest
import typer
import yaml

from pixelwizard.models.config import ConfigError, DiTConfig, T5Config, VAEConfig, config_from_json, config_to_json
from pixelwizard.pipeline.presets import PresetError, _field_types, setting_help
from pixelwizard.pipeline.run_config import RunConfig, RunConfigError, defaults, option_help
from pixelwizard.workflow import cli

REPO = Path(__file__).resolve().parents[1]


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


def test_config_yaml_is_the_run_configuration_schema_with_its_defaults():
    values = yaml.safe_load((REPO / "config.yaml").read_text())
    assert list(values) == list(defaults()) and values == defaults()
    assert RunConfig.from_mapping({**values, "ckpt_dir": "w", "hr_ckpt": "m.pt"}).resolved_preset().name == "2k"


def test_cli_options_take_defaults_and_help_from_the_schemas():
    commands = {c.name: c for c in typer.main.get_command(cli.app).commands.values()}
    checked = set()
    for command, keeps_the_runs in (("generate", ()), ("decode", ("decode_gpus",))):
        for param in commands[command].params:
            if param.name in keeps_the_runs:  # decode: None keeps what the run used
                assert param.default is None and param.help == option_help(param.name)
            elif param.name in defaults():
                assert param.help == option_help(param.name), param.name
                assert param.default == defaults()[param.name] or param.required, param.name
                checked.add(param.name)
            elif param.name in _field_types():
                assert param.default is None and param.help.startswith(setting_help(param.name)), param.name
                checked.add(param.name)
    assert {"shard_sizes", "settings"} | checked == set(defaults()) | checked
    assert {"hr_steps", "num_patches", "overlap", "fps", "negative_prompt"} <= checked


@pytest.mark.parametrize("values, fragment", [
    ({"preset": "8k"}, "unknown preset '8k'"),
    ({"hr_gpus": 0}, "hr_gpus=0: must be at least 1"),
    ({"hr_gpus": "2"}, "hr_gpus='2': must be int"),
    ({"previews": "yes"}, "previews='yes': must be bool"),
    ({"shard_sizes": {"hr": 0}}, "shard_sizes: hr=0"),
    ({"settings": {"hr_steps": "abc"}}, "hr_steps='abc': must be an integer"),
    ({"stage_count": 3}, "unknown key(s) stage_count; known: prompts, "),
])
def test_run_configuration_errors_name_the_key(values, fragment):
    with pytest.raises(RunConfigError, match=re.escape(fragment)):
        RunConfig.from_mapping({"ckpt_dir": "w", "hr_ckpt": "m.pt", **values}, source="my-run.yaml")


def test_set_values_are_typed_by_their_setting():
    assert cli.parse_sets(["hr_steps=5", "hr-shift=5.8", "uncond_prompt=empty"]) == \
        {"hr_steps": 5, "hr_shift": 5.8, "uncond_prompt": "empty"}
    with pytest.raises(PresetError, match=r"--set hr_steps=abc: hr_steps must be an integer, e.g. --set hr_steps=4"):
        cli.parse_sets(["hr_steps=abc"])
    with pytest.raises(PresetError, match="--set steps: unknown setting"):
        cli.parse_sets(["steps=3"])
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
