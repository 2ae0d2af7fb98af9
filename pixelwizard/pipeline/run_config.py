"""The run configuration: one schema behind `config.yaml`, the Snakefile, the stage scripts and the CLI.

A run is: a prompt file, an output directory, checkpoints, a preset name and optional overrides of the preset's
settings (`settings:` in config.yaml, `--hr-steps` etc. on the CLI). Everything is validated here, once, with
errors that name the setting and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixelwizard.pipeline.presets import Preset, PresetError, get_preset

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("bfloat16", "float32")


class RunConfigError(ValueError):
    """A run configuration that cannot run; the message names the key and the fix."""


@dataclass(frozen=True)
class RunConfig:
    prompts: str
    out: str
    ckpt_dir: str
    hr_ckpt: str
    preset: str = "2k"
    lr_ckpt: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # overrides of Preset fields
    shard_size: int = 8  # prompts per stage job: models load once per job
    lr_preview: bool = True
    device: str = "auto"
    dtype: str = "bfloat16"  # DiT weights on a GPU; the CPU always runs float32
    hr_gpus: int = 1  # processes (GPUs) of each HR torchrun job: FSDP + Ulysses when > 1
    decode_gpus: int = 1  # processes (GPUs) of each decode job: the spatial patches spread over them

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise RunConfigError(f"shard_size={self.shard_size}: must be at least 1")
        for name in ("hr_gpus", "decode_gpus"):
            if getattr(self, name) < 1:
                raise RunConfigError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.device not in DEVICES:
            raise RunConfigError(f"device={self.device!r}: choose one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise RunConfigError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        try:
            self.resolved_preset()
        except PresetError as err:
            raise RunConfigError(f"settings: {err}") from None

    def resolved_preset(self) -> Preset:
        return get_preset(self.preset, **self.settings)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise RunConfigError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and not values.get(f.name))
        if missing:
            raise RunConfigError(f"missing config key(s) {', '.join(missing)} (set them in config.yaml or on the CLI)")
        try:
            return cls(**{k: v for k, v in values.items() if v is not None or k == "lr_ckpt"})
        except TypeError as err:
            raise RunConfigError(str(err)) from None

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.to_mapping(), sort_keys=False, allow_unicode=True))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise RunConfigError(f"{path}: no run configuration here (was `pixelwizard generate` run?)") from None
        return cls.from_mapping(values)
