"""The stage table: every stage of the pipeline, declared once.

A stage's name is its Snakemake rule, its script (`stages/<name>.py`), its output folder (`OUT/<name>/`), its log
folder (`OUT/logs/<name>/`) and its row in `pixelwizard status`. The graph (which stage waits for which), the
provenance of every output (which settings, checkpoints and inputs it was made from) and what "current" means are all
derived from this table; nothing restates it.

    text     prompt -> umT5 embedding                          per prompt
    uncond   negative (and empty) prompt -> umT5 embedding     per distinct text of the run
    lr       text + uncond -> 448x256 LR anchor latent          per prompt
    preview  lr -> small MP4 of the anchor                      per prompt (optional)
    hr       text + uncond + lr -> 2K/4K HR latent              per prompt (or the --only ids)
    decode   hr -> MP4 + contact sheet + quality numbers        per prompt (or the --only ids), per decode setting
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    items: str  # "prompts"; "selected": the prompts, or the --only ids; "uncond": the run's unconditional texts
    shard_size: int  # items per job by default: models load once per job
    gpus: str | None = None  # the RunConfig field with its GPUs per job (torchrun processes); None: one
    seeded: bool = False  # draws noise: a per-prompt seed enters its provenance
    uncond_text: Callable[[Prompt, Preset], str] | None = None  # the unconditional text a prompt's job reads
    tag: Callable[[Preset], str] | None = None  # outputs of other settings go to OUT/<name>/<tag>/, beside
    verb: str = "computing"  # what its job does to a prompt, for people: "sampling fox 3/4"
    # Its GPU memory is large activations of changing sizes: CUDA's caching allocator runs with expandable segments
    # (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless the user set one), so freed blocks do not fragment.
    expandable_segments: bool = False


def negative_text(prompt: Prompt, preset: Preset) -> str:
    return preset.negative_prompt if prompt.negative_prompt is None else prompt.negative_prompt


def decode_tag(preset: Preset) -> str:
    """Decode settings as a folder name: re-decoding with other settings writes beside, never over."""
    return f"p{preset.num_patches}{preset.patch_dim}-ov{preset.overlap}-{preset.fps}fps"


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("text", reads=(), settings=(), checkpoints=("t5",), output="zarr", items="prompts", shard_size=256,
          verb="encoding"),
    Stage("uncond", reads=(), settings=(), checkpoints=("t5",), output="zarr", items="uncond", shard_size=256,
          verb="encoding"),
    Stage("lr", reads=("text", "uncond"),
          settings=("frames", "lr_width", "lr_height", "lr_steps", "lr_shift", "lr_guidance", "lr_solver"),
          checkpoints=("lr_dit",), output="zarr", items="prompts", shard_size=16, seeded=True,
          uncond_text=negative_text, verb="sampling"),
    Stage("preview", reads=("lr",), settings=("fps",), checkpoints=("vae",), output="mp4", items="prompts",
          shard_size=32, verb="decoding"),
    Stage("hr", reads=("text", "uncond", "lr"),
          settings=("frames", "width", "height", "hr_steps", "hr_shift", "hr_guidance", "hr_solver", "uncond_prompt",
                    "uncond_anchor"),
          checkpoints=("hr_dit",), output="zarr", items="selected", shard_size=8, gpus="hr_gpus", seeded=True,
          uncond_text=lambda p, preset: negative_text(p, preset) if preset.uncond_prompt == "negative" else "",
          verb="sampling", expandable_segments=True),
    Stage("decode", reads=("hr",), settings=("num_patches", "patch_dim", "overlap", "fps"), checkpoints=("vae",),
          output="mp4", items="selected", shard_size=8, gpus="decode_gpus", tag=decode_tag, verb="decoding",
          expandable_segments=True),
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
