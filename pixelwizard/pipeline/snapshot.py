"""A run snapshot: everything a run's jobs are given, frozen at the start of the run and stored by content digest
(OUT/.pixelwizard/runs/<digest>.json), so a job never sees another run's settings or prompts, whatever happens to
the prompt file or OUT/pixelwizard.yaml meanwhile: the run configuration, the prompts, the --only ids, the
content identity of each checkpoint role and of each prompt's source file, with what is taken from it (a video's
clip, say: pipeline/sources.py). A prompt's clip (frames, rate, orientation) follows from these, and with it the
preset as that prompt runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any

from pixelwizard.checkpoints import wan_files
from pixelwizard.checkpoints.identity import DigestCache, Progress, files_digest
from pixelwizard.io.files import write_atomic
from pixelwizard.pipeline.layout import ONLY, PROMPTS, Layout
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt, ids_file, prompts_jsonl, read_ids, read_prompts
from pixelwizard.pipeline.run_config import STOP_AFTER, RunConfig, RunConfigError
from pixelwizard.pipeline.sources import ClipShape, check_sources, clip_shape
from pixelwizard.pipeline.stages import CHECKPOINT_FILES, STAGES, Stage, enabled_stages, lineage


@dataclass(frozen=True)
class RunSnapshot:
    config: RunConfig
    prompts: tuple[Prompt, ...]
    only: tuple[str, ...] | None
    identities: dict[str, str]  # checkpoint role -> content digest
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # prompt id -> its source file's facts
    _index: dict[str, Prompt] = field(default_factory=dict, init=False, compare=False, repr=False)
    _items: dict[str, list[Prompt]] = field(default_factory=dict, init=False, compare=False, repr=False)  # by stage

    def __post_init__(self) -> None:
        self._index.update({p.id: p for p in self.prompts})

    @classmethod
    def build(cls, config: RunConfig, prompts: Sequence[Prompt], only: Sequence[str] | None, cache: DigestCache,
              on_progress: Progress | None = None) -> RunSnapshot:
        """The snapshot of a run of `prompts` (the --only ids among them) with `config`; every checkpoint file the
        run's stages read, and every prompt's source file, is hashed through `cache` (once per file); an unusable
        source file raises InputProblems."""
        kinds = {p.source for p in prompts}  # a batch of videos samples no anchor: the LR DiT is not read
        roles = sorted({role for s in enabled_stages(config) for kind in kinds for role in s.recipe(kind).checkpoints})
        identities = {role: files_digest(CHECKPOINT_FILES[role](config), Path(config.ckpt_dir), cache, on_progress)
                      for role in roles}
        z_dim = wan_files.vae_config(Path(config.ckpt_dir)).z_dim
        sources = check_sources(prompts, config.resolved_preset(), z_dim, cache)
        return cls(config, tuple(prompts), tuple(only) if only is not None else None, identities, sources)

    @classmethod
    def from_files(cls, config: RunConfig, base: Path, cache: DigestCache) -> RunSnapshot:
        """The snapshot of a run configuration whose prompt (and --only) files are named relative to `base`."""
        if config.prompts is None:
            raise RunConfigError("prompts: no prompt file given")
        prompts = read_prompts(base / config.prompts)
        only = read_ids(base / config.only, prompts) if config.only else None
        return cls.build(config, prompts, only, cache)

    @cached_property
    def preset(self) -> Preset:
        return self.config.resolved_preset()

    @cached_property
    def stages(self) -> list[Stage]:
        """The stages of this run: the enabled ones (previews are optional), the input stage where it has videos."""
        videos = any(p.source == "video" for p in self.prompts)
        return [s for s in enabled_stages(self.config) if s.items != "videos" or videos]

    def prompt(self, prompt_id: str) -> Prompt:
        return self._index[prompt_id]

    def clip(self, prompt: Prompt) -> ClipShape:
        return clip_shape(prompt, self.sources.get(prompt.id), self.preset)

    def preset_for(self, prompt: Prompt) -> Preset:
        """The preset as this prompt's clip runs it: its frames, in its orientation (Preset.for_clip)."""
        if prompt.id not in self.sources:  # the preset's own clip
            return self.preset
        clip = self.clip(prompt)
        return self.preset.for_clip(clip.frames, clip.portrait)

    def fps_for(self, prompt: Prompt) -> Fraction:
        """The rate of the prompt's videos: a video source's clip rate, else the preset's fps."""
        return self.clip(prompt).fps

    def items(self, stage: str) -> list[Prompt]:
        """What a stage's jobs work through: the prompts, the --only ones, or the distinct unconditional texts."""
        if stage not in self._items:
            self._items[stage] = self._find_items(STAGES[stage].items)
        return self._items[stage]

    def _find_items(self, kind: str) -> list[Prompt]:
        if kind == "uncond":  # a prompt's unconditional texts follow from its source and negative prompt
            alike = {(p.source, p.negative_prompt): p for p in self.prompts}.values()
            texts = {s.recipe(p.source).uncond_text(p, self.preset) for p in alike for s in STAGES.values()
                     if s.recipe(p.source).uncond_text}
            return [uncond_item(text) for text in sorted(texts)]
        if kind == "videos":
            return [p for p in self.prompts if p.source == "video"]
        if kind == "selected" and self.only is not None:
            chosen = set(self.only)
            return [p for p in self.prompts if p.id in chosen]
        return list(self.prompts)

    def in_part(self, stage: str, items: list[Prompt], part: Collection[str] | None) -> list[Prompt]:
        """Those of a stage's `items` that go with a part of the prompts' ids (None: every prompt), as work is cut
        over processes (parallel.in_parts): a prompt's own, and the unconditional texts, which are no prompt's, with
        the part holding the first prompt."""
        if part is None:
            return items
        if STAGES[stage].items == "uncond":
            return items if self.prompts[0].id in part else []
        return [item for item in items if item.id in part]

    def outputs(self, stage: str) -> list[Prompt]:
        """Every output of a stage that `status` and the report show: its items, and the prompts that --only
        holds back from it."""
        if STAGES[stage].items == "selected":
            return list(self.prompts)
        return self.items(stage)

    def held(self, stage: str) -> dict[str, str]:
        """id -> why the run does not make that output of `stage`, by choice: the stage follows the run's `until`
        stop, or the prompt is not among the --only ids. Held outputs are no error; `status` shows them apart."""
        until = self.config.until
        if until is not None and stage not in {s for last in STOP_AFTER[until] for s in lineage(last)}:
            return {item.id: f"--until {until}" for item in self.outputs(stage)}
        if STAGES[stage].items == "selected" and self.only is not None:
            chosen = set(self.only)
            return {p.id: "--only: not among its ids" for p in self.prompts if p.id not in chosen}
        return {}

    def as_recorded(self) -> RunSnapshot:
        """This run as OUT records it: its prompts (and --only ids) read from OUT's own copies."""
        config = dataclasses.replace(self.config, prompts=PROMPTS, only=ONLY if self.only is not None else None)
        return dataclasses.replace(self, config=config)

    def record(self, layout: Layout, source: Path | None = None) -> None:
        """Make this run OUT's: its snapshot, and what `status`, `report` and `decode` read (OUT/pixelwizard.yaml,
        OUT's copies of the prompts and the --only ids). A prompt file `source` that is itself OUT's copy (a run
        configuration naming prompts.jsonl) is left as the user wrote it."""
        self.save(layout)
        if source is None or not _same_file(source, layout.prompts):
            write_atomic(layout.prompts, prompts_jsonl(self.prompts), layout.out)
        if self.only is not None:
            write_atomic(layout.only, ids_file(self.only), layout.out)
        self.as_recorded().config.save(layout.config, layout.out)

    def to_json(self) -> str:
        return json.dumps({
            "config": self.config.to_mapping(), "prompts": [p.to_record() for p in self.prompts],
            "only": list(self.only) if self.only is not None else None, "identities": self.identities,
            **({"sources": self.sources} if self.sources else {}),
        }, ensure_ascii=False, sort_keys=True)

    @cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, layout: Layout) -> Path:
        """Write the snapshot under its digest (nothing to do when it is already there); returns its path."""
        path = layout.snapshot(self.digest)
        if not path.exists():
            write_atomic(path, self.to_json(), layout.out)
        return path

    @classmethod
    def load(cls, path: Path) -> RunSnapshot:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        only = values["only"]
        return cls(RunConfig.from_mapping(values["config"], source=str(path)),
                   tuple(Prompt(**p) for p in values["prompts"]), tuple(only) if only is not None else None,
                   values["identities"], values.get("sources", {}))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def uncond_item(text: str) -> Prompt:
    """An unconditional text as an item of the uncond stage: its id is a digest of the text."""
    return Prompt(f"u-{hashlib.sha256(text.encode()).hexdigest()[:16]}", text)
