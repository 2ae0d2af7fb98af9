"""The run configuration: one schema behind `config.yaml`, `OUT/pixelwizard.yaml`, the Snakefile and the CLI, whose
options take their defaults and help from the fields here.

A run is: a prompt file, checkpoints, a preset name with optional overrides of its settings (`settings:`), and how
the stages are run (shard sizes, device, GPUs). Everything is validated here, once, with errors that name the key and
the fix. Paths are kept as given; relative ones are relative to the directory of the file they were read from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pixelwizard.io.lines import BOM
from pixelwizard.pipeline.presets import PRESETS, Preset, PresetError, get_preset

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("bfloat16", "float32")
ATTENTION = ("auto", "sdpa", "sdpa-cudnn", "flash2", "flash3", "sage")  # models/attention.py BACKENDS
STOP_AFTER = {"lr": ("input", "lr", "preview"), "hr": ("hr",)}  # `until`: the last stages of a shortened run
MAX_JOBS = 256  # per stage: without shard_sizes, the stage table's sizes double until a stage has no more jobs


class RunConfigError(ValueError):
    """A run configuration that cannot run; the message names the key and the fix."""


def option(default: Any, help: str) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RunConfig:
    prompts: str | None = option(None, "Prompt file: .txt (one prompt a line) or .jsonl (id, text, seed, "
                                       "negative_prompt)")
    ckpt_dir: str | None = option(None, "Wan2.2-TI2V-5B checkpoint directory (as `hf download` writes it)")
    hr_ckpt: str | None = option(None, "PixelWizard HR model.pt (its 2k/ or 4k/ folder)")
    lr_ckpt: str | None = option(None, "Fine-tuned LR model.pt (default: the base Wan2.2 DiT)")
    preset: str = option("2k", f"Preset: {', '.join(PRESETS)}")
    settings: dict[str, Any] = option({}, "Overrides of the preset's settings")
    only: str | None = option(None, "File of prompt ids (one a line): HR and decode run for these only")
    until: str | None = option(None, "Stop after a stage: lr (text, input clips, LR anchors, previews) or hr; what "
                                     "follows is held")
    shard_sizes: dict[str, int] = option({}, "Prompts per job of a stage, e.g. {hr: 2} (default: the stage table's, "
                                             f"doubled until a stage has at most {MAX_JOBS} jobs)")
    previews: bool = option(True, "Write a small MP4 preview of each LR anchor")
    device: str = option("auto", "auto, cuda or cpu")
    dtype: str = option("bfloat16", "DiT weights on a GPU: bfloat16 or float32 (the CPU runs float32)")
    attention: str = option("auto", "Attention kernel: auto, sdpa, sdpa-cudnn, flash2, flash3 or sage")
    offload: bool = option(False, "Stream the DiT's blocks from host memory, one ahead of use (small GPUs)")
    hr_gpus: int = option(1, "GPUs (torchrun processes) per HR job: FSDP + Ulysses when > 1")
    decode_gpus: int = option(1, "GPUs (torchrun processes) per decode job: the patches spread over them")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(RunConfig)
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            union = typing.get_origin(kind) in (typing.Union, types.UnionType)
            allowed = tuple(typing.get_origin(a) or a for a in (typing.get_args(kind) if union else (kind,)))
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                names = " or ".join("null" if a is type(None) else a.__name__ for a in allowed)
                raise RunConfigError(f"{f.name}={value!r}: must be {names}")
        for name in ("hr_gpus", "decode_gpus"):
            if getattr(self, name) < 1:
                raise RunConfigError(f"{name}={getattr(self, name)}: must be at least 1")
        for name, allowed in (("device", DEVICES), ("dtype", DTYPES), ("attention", ATTENTION)):
            if getattr(self, name) not in allowed:
                raise RunConfigError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        if self.until is not None and self.until not in STOP_AFTER:
            raise RunConfigError(f"until={self.until!r}: choose one of {', '.join(STOP_AFTER)}")
        for stage, size in self.shard_sizes.items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise RunConfigError(f"shard_sizes: {stage}={size!r}: must be a whole number >= 1")
        try:
            self.resolved_preset()
        except PresetError as err:
            raise RunConfigError(f"settings: {err}") from None

    def resolved_preset(self) -> Preset:
        return get_preset(self.preset, **self.settings)

    def with_settings(self, **changes: Any) -> RunConfig:
        """A copy whose preset overrides also carry `changes` (None values ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, settings={**self.settings, **changes})

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise RunConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(names)}")
        try:
            return cls(**values)
        except RunConfigError as err:
            raise RunConfigError(f"{source}: {err}") from None

    def to_mapping(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path, root: Path) -> None:
        """Write the configuration as YAML at `path` inside `root` (OUT)."""
        from pixelwizard.io.files import write_atomic

        write_atomic(Path(path), yaml.safe_dump(self.to_mapping(), sort_keys=False, allow_unicode=True), root)

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8").removeprefix(BOM)) or {}
        except FileNotFoundError:
            raise RunConfigError(f"{path}: no run configuration here; run `pixelwizard generate` first") from None
        except yaml.YAMLError as err:
            raise RunConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise RunConfigError(f"{path}: expected a mapping of run settings")
        return cls.from_mapping(values, source=str(path))


def defaults() -> dict[str, Any]:
    """Every key of the schema with its default (None where a value is required)."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(RunConfig)}


def option_help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(RunConfig) if f.name == name)
