"""The stage table: every stage of the pipeline, declared once.

A stage's name is its Snakemake rule, its script (`stages/<name>.py`), its output folder (`OUT/<name>/`), its log
folder (`OUT/logs/<name>/`) and its row in `pixelwizard status`. The graph (which stage waits for which), the
provenance of every output (which settings, checkpoints and inputs it was made from) and what "current" means are all
derived from this table; nothing restates it.

    text     prompt -> umT5 embedding                          per prompt
    uncond   negative (and empty) prompt -> umT5 embedding     per distinct text of the run
    input    video -> its clip as an MP4 + quality numbers      per prompt with a video (shown beside the result)
    lr       text + uncond -> 448x256 LR anchor latent          per prompt (from an image: its first frame);
                                                                from a video: its clip VAE-encoded;
                                                                from a saved latent: that latent
    preview  lr -> small MP4 of the anchor                      per prompt (optional)
    hr       text + uncond + lr -> 2K/4K HR latent              per prompt (or the --only ids)
    decode   hr -> MP4 + contact sheet + quality numbers        per prompt (or the --only ids), per decode setting

A stage may make the output of a prompt with a source file (prompts.SOURCE_KEYS) another way: its `sources` entry
for that kind replaces the fields that differ (the lr stage encodes a video instead of sampling), and the graph,
the provenance and "current" of that prompt's output follow the replaced fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelwizard.checkpoints import wan_files
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.run_config import RunConfig


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # the stages whose outputs its jobs read
    settings: tuple[str, ...]  # the preset fields its outputs depend on
    checkpoints: tuple[str, ...]  # the checkpoint roles it loads (CHECKPOINT_FILES)
    output: str  # "zarr": a store per item; "mp4": a video per item with a JSON sidecar
    items: str  # "prompts"; "selected": the prompts, or the --only ids; "uncond": the run's unconditional texts;
    #             "videos": the prompts with a video
    shard_size: int  # items per job by default: models load once per job
    gpus: str | None = None  # the RunConfig field with its GPUs per job (torchrun processes); None: one
    seeded: bool = False  # draws noise: a per-prompt seed enters its provenance
    uncond_text: Callable[[Prompt, Preset], str] | None = None  # the unconditional text a prompt's job reads
    tag: Callable[[Preset], str] | None = None  # outputs of other settings go to OUT/<name>/<tag>/, beside
    verb: str = "computing"  # what its job does to a prompt, for people: "sampling fox 3/4"
    # Its GPU memory is large activations of changing sizes: CUDA's caching allocator runs with expandable segments
    # (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless the user set one), so freed blocks do not fragment.
    expandable_segments: bool = False
    sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # source kind -> the fields that differ

    def recipe(self, source: str) -> Stage:
        """The stage as it makes the output of a prompt whose anchor comes from `source` (text, image, video,
        latent)."""
        changes = self.sources.get(source)
        return dataclasses.replace(self, sources={}, **changes) if changes else self


def negative_text(prompt: Prompt, preset: Preset) -> str:
    return preset.negative_prompt if prompt.negative_prompt is None else prompt.negative_prompt


def decode_tag(preset: Preset) -> str:
    """Decode settings as a folder name: re-decoding with other settings writes beside, never over."""
    return f"p{preset.num_patches}{preset.patch_dim}-ov{preset.overlap}-{preset.fps}fps"


FROM_FILE = dict(reads=(), seeded=False, uncond_text=None)  # an anchor read from a file: no text, no noise
HR_SETTINGS = ("frames", "width", "height", "hr_steps", "hr_shift", "hr_guidance", "hr_solver", "uncond_prompt",
               "uncond_anchor")
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("text", reads=(), settings=(), checkpoints=("t5",), output="zarr", items="prompts", shard_size=256,
          verb="encoding"),
    Stage("uncond", reads=(), settings=(), checkpoints=("t5",), output="zarr", items="uncond", shard_size=256,
          verb="encoding"),
    Stage("input", reads=(), settings=(), checkpoints=(), output="mp4", items="videos", shard_size=32,
          verb="encoding"),
    Stage("lr", reads=("text", "uncond"),
          settings=("frames", "lr_width", "lr_height", "lr_steps", "lr_shift", "lr_guidance", "lr_solver"),
          checkpoints=("lr_dit",), output="zarr", items="prompts", shard_size=16, seeded=True,
          uncond_text=negative_text, verb="sampling",
          sources={"image": dict(checkpoints=("lr_dit", "vae")),  # its first frame, VAE-encoded
                   "video": dict(FROM_FILE, settings=("lr_width", "lr_height"), checkpoints=("vae",),
                                 verb="encoding"),
                   "latent": dict(FROM_FILE, settings=(), checkpoints=(), verb="reading")}),
    Stage("preview", reads=("lr",), settings=("fps",), checkpoints=("vae",), output="mp4", items="prompts",
          shard_size=32, verb="decoding", sources={"video": dict(settings=())}),  # at the video's rate
    Stage("hr", reads=("text", "uncond", "lr"), settings=HR_SETTINGS, checkpoints=("hr_dit",), output="zarr",
          items="selected", shard_size=8, gpus="hr_gpus", seeded=True, verb="sampling",
          expandable_segments=True,
          uncond_text=lambda p, preset: negative_text(p, preset) if preset.uncond_prompt == "negative" else "",
          sources={"image": dict(settings=(*HR_SETTINGS, "hr_first_frame"), checkpoints=("hr_dit", "vae"))}),
    Stage("decode", reads=("hr",), settings=("num_patches", "patch_dim", "overlap", "fps"), checkpoints=("vae",),
          output="mp4", items="selected", shard_size=8, gpus="decode_gpus", tag=decode_tag, verb="decoding",
          expandable_segments=True,
          sources={"video": dict(settings=("num_patches", "patch_dim", "overlap"))}),  # at the video's rate
)}


def enabled_stages(config: RunConfig) -> list[Stage]:
    return [s for s in STAGES.values() if s.name != "preview" or config.previews]


def lineage(name: str) -> list[str]:
    """The stage and every stage upstream of it, upstream first."""
    seen: list[str] = []
    for upstream in STAGES[name].reads:
        seen += [s for s in lineage(upstream) if s not in seen]
    return [*seen, name]


# The files each checkpoint role is read from: their contents are the role's identity in every provenance record.
CHECKPOINT_FILES: dict[str, Callable[[RunConfig], list[Path]]] = {
    "t5": lambda c: wan_files.text_encoder_files(Path(c.ckpt_dir)),
    "lr_dit": lambda c: ([Path(c.lr_ckpt), Path(c.ckpt_dir) / wan_files.DIT_CONFIG] if c.lr_ckpt
                         else wan_files.dit_files(Path(c.ckpt_dir))),
    "hr_dit": lambda c: [Path(c.hr_ckpt), Path(c.ckpt_dir) / wan_files.DIT_CONFIG],
    "vae": lambda c: wan_files.vae_files(Path(c.ckpt_dir)),
}
