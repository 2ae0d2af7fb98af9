"""Where every output of a run lives, and what each stage job is given: the single description of the
on-disk layout that the Snakefile, the stage scripts, `pixelwizard status` and the tests share.

    OUT/pixelwizard.yaml                      the run configuration
    OUT/text/<id>.zarr, OUT/text/_uncond.zarr  umT5 embeddings (prompt; negative and empty prompts)
    OUT/lr/<id>.zarr, OUT/lr/<id>.mp4         LR anchor latent and its 448x256 preview
    OUT/hr/<id>.zarr                          HR latent
    OUT/videos/<decode tag>/<id>.{mp4,png,json}   video, contact sheet, provenance
    OUT/.done/<stage>/<shard>.json            shard markers (the Snakemake outputs)
    OUT/.specs/<stage>/<shard>.json           what a stage job processes (ids, texts, run configuration)
    OUT/logs/<stage>/<shard>.log, OUT/logs/events.jsonl
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt, read_prompts, shard
from pixelwizard.pipeline.run_config import RunConfig

RUN_CONFIG = "pixelwizard.yaml"
UNCOND = "_uncond"  # not a valid prompt id (ids start with a letter or digit), so it cannot collide

# The preset fields each stage's output depends on: a change re-runs that stage and what follows, nothing else.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "uncond": ("negative_prompt",),
    "text": (),
    "lr": ("frames", "seed", "lr_width", "lr_height", "lr_steps", "lr_shift", "lr_guidance", "lr_solver"),
    "lr_preview": ("fps",),
    "hr": ("frames", "seed", "width", "height", "hr_steps", "hr_shift", "hr_guidance", "hr_solver",
           "uncond_prompt", "uncond_anchor"),
    "decode": ("num_patches", "patch_dim", "overlap", "fps"),
}
# Each stage with the stages its outputs are made from (itself included).
LINEAGE: dict[str, tuple[str, ...]] = {
    "uncond": ("uncond",),
    "text": ("text",),
    "lr": ("uncond", "text", "lr"),
    "lr_preview": ("uncond", "text", "lr", "lr_preview"),
    "hr": ("uncond", "text", "lr", "hr"),
    "decode": ("uncond", "text", "lr", "hr", "decode"),
}


def decode_tag(preset: Preset) -> str:
    """Decode settings as a folder name: re-decoding with other settings writes beside, never over."""
    return f"p{preset.num_patches}{preset.patch_dim}-ov{preset.overlap}-{preset.fps}fps"


def stage_settings(stage: str, preset: Preset) -> dict[str, Any]:
    return {name: getattr(preset, name) for name in STAGE_SETTINGS[stage]}


@dataclass(frozen=True)
class Layout:
    out: Path

    def text(self, prompt_id: str) -> Path:
        return self.out / "text" / f"{prompt_id}.zarr"

    def lr(self, prompt_id: str) -> Path:
        return self.out / "lr" / f"{prompt_id}.zarr"

    def lr_preview(self, prompt_id: str) -> Path:
        return self.out / "lr" / f"{prompt_id}.mp4"

    def hr(self, prompt_id: str) -> Path:
        return self.out / "hr" / f"{prompt_id}.zarr"

    def video(self, tag: str, prompt_id: str, suffix: str = ".mp4") -> Path:
        return self.out / "videos" / tag / f"{prompt_id}{suffix}"

    def done(self, stage: str, shard_name: str) -> Path:
        return self.out / ".done" / stage / f"{shard_name}.json"

    def spec(self, stage: str, shard_name: str) -> Path:
        return self.out / ".specs" / stage / f"{shard_name}.json"

    def log(self, stage: str, shard_name: str) -> Path:
        return self.out / "logs" / stage / f"{shard_name}.log"

    @property
    def events(self) -> Path:
        return self.out / "logs" / "events.jsonl"


@dataclass(frozen=True)
class StageSpec:
    """One stage job: a shard of prompts and everything needed to process them, as plain json."""

    stage: str
    shard: str
    run: RunConfig
    prompts: tuple[Prompt, ...]

    @property
    def preset(self) -> Preset:
        return self.run.resolved_preset()

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.run.out))

    @property
    def marker(self) -> str:
        """The stage's folder under .done/, .specs/ and logs/: decodes with other settings keep their own."""
        return f"decode-{decode_tag(self.preset)}" if self.stage == "decode" else self.stage

    def to_json(self) -> str:
        return json.dumps({
            "stage": self.stage, "shard": self.shard, "run": self.run.to_mapping(),
            "prompts": [{"id": p.id, "text": p.text} for p in self.prompts],
        }, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StageSpec:
        values = json.loads(text)
        return cls(stage=values["stage"], shard=values["shard"], run=RunConfig.from_mapping(values["run"]),
                   prompts=tuple(Prompt(**p) for p in values["prompts"]))

    def save(self) -> Path:
        path = self.layout.spec(self.marker, self.shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> StageSpec:
        return cls.from_json(Path(path).read_text())


@dataclass(frozen=True)
class Plan:
    """A run's prompts cut into shards, as the Snakefile sees them."""

    run: RunConfig
    shards: dict[str, tuple[Prompt, ...]]

    @classmethod
    def from_run(cls, run: RunConfig) -> Plan:
        prompts = read_prompts(Path(run.prompts))
        return cls(run, {f"{i:05d}": tuple(s) for i, s in enumerate(shard(prompts, run.shard_size))})

    @property
    def layout(self) -> Layout:
        return Layout(Path(self.run.out))

    def markers(self, marker: str) -> list[str]:
        """The shard markers of a stage (or of a decode's `decode-<tag>`) for every shard: Snakemake targets."""
        return [str(self.layout.done(marker, shard)) for shard in self.shards]

    def spec(self, stage: str, shard_name: str) -> StageSpec:
        prompts = () if stage == "uncond" else self.shards[shard_name]
        return StageSpec(stage=stage, shard=shard_name, run=self.run, prompts=prompts)

    def params(self, stage: str, shard_name: str) -> str:
        """What Snakemake compares between runs: the settings of the stage and of every stage upstream of it,
        and the shard's prompts. Upstream settings matter even though an upstream change also re-runs this
        stage through its inputs: if the upstream job fails, Snakemake deletes only the upstream marker, and
        this stage's own marker must still read as outdated on the next run. Settings of unrelated stages
        (decode settings for the HR job) are left out, so changing them does not re-launch this stage."""
        spec = self.spec(stage, shard_name)
        preset = spec.preset
        own = {
            "settings": {name: stage_settings(name, preset) for name in LINEAGE[stage]},
            "prompts": [[p.id, p.text] for p in spec.prompts],
            "checkpoints": {k: getattr(self.run, k) for k in ("ckpt_dir", "lr_ckpt", "hr_ckpt")},
        }
        return json.dumps(own, ensure_ascii=False, sort_keys=True)
