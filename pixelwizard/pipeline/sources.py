"""A prompt's source file, known before anything runs: the sha256 of its content (which enters the provenance of
everything made from it) and what the run takes from it: a video's clip (start, rate, frames, display size), a
latent's frames and size, an image's upright size. Every file is checked here, up front, each problem one line
naming the file and the fix.

The facts are kept in the run's digest cache under the content's digest, so `status` on a batch of videos reads
no video again; a file replaced by other content has another digest, and is read again.

A source also fixes the prompt's clip: a video's frames (the largest 4n+1 it has, at most the preset's) and rate,
and the orientation of the video, latent or image (landscape sources take the landscape anchor, portrait ones
the portrait anchor, `Preset.for_clip`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from pixelwizard.checkpoints.identity import DigestCache, file_digest, files_digest
from pixelwizard.io.input_file import InputFileError, existing_file
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt

FACTS_VERSION = 1  # of what the facts hold and how they are read: a change reads every source again


class InputProblems(ValueError):
    """Every unusable input file of a run, one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ClipShape:
    """What a prompt's video is: frames, rate and orientation (the preset's, unless its source says otherwise)."""

    frames: int
    fps: Fraction
    portrait: bool


def content_digest(path: Path, cache: DigestCache) -> str:
    """sha256 of a file, or of every file of a zarr store (their names and contents)."""
    if path.is_dir():
        return files_digest(sorted(p for p in path.rglob("*") if p.is_file()), path, cache)
    return file_digest(path, cache)


def read_facts(prompt: Prompt, preset: Preset, channels: int) -> dict[str, Any]:
    """What the run takes from the prompt's source file, read from the file (slow: a video's packets, a latent's
    values). Raises InputFileError."""
    path = Path(prompt.source_file)
    if prompt.source == "video":
        from pixelwizard.io.video_input import probe_clip

        clip = probe_clip(path, max_frames=preset.frames, start=prompt.start or 0.0, fps=prompt.fps)
        return clip.to_json()
    if prompt.source == "latent":
        from pixelwizard.io.latent_input import load_latent

        latent = load_latent(path, channels=channels, max_frames=preset.frames)
        _, t, h, w = latent.shape
        return {"frames": 4 * (t - 1) + 1, "latent_height": h, "latent_width": w}
    if prompt.source == "image":
        from pixelwizard.io.image import load_image

        image = load_image(path)  # upright by its EXIF orientation
        return {"width": image.width, "height": image.height}
    raise ValueError(f"{prompt.id}: no source file to read")


def source_facts(prompt: Prompt, preset: Preset, channels: int, cache: DigestCache) -> dict[str, Any]:
    """The prompt's source file as its provenance names it: kind, content digest and the facts of what is taken."""
    path = Path(prompt.source_file)
    if not path.is_dir():
        existing_file(path, prompt.source)
    digest = content_digest(path, cache)
    request = f"{prompt.source}/{FACTS_VERSION} start={prompt.start} fps={prompt.fps} frames<={preset.frames} " \
              f"channels={channels}"
    facts = cache.fact(digest, request)
    if facts is None:
        facts = read_facts(prompt, preset, channels)
        cache.note(digest, request, facts)
    return {"kind": prompt.source, "sha256": digest, **facts}


def check_sources(prompts: Sequence[Prompt], preset: Preset, channels: int,
                  cache: DigestCache) -> dict[str, dict[str, Any]]:
    """prompt id -> its source's facts, for the prompts with a source file; every unusable file is reported at
    once (InputProblems), before anything runs."""
    facts, problems = {}, []
    for prompt in prompts:
        if prompt.source_file is None:
            continue
        try:
            facts[prompt.id] = source_facts(prompt, preset, channels, cache)
        except InputFileError as err:
            problems.append(str(err))
    if problems:
        raise InputProblems(list(dict.fromkeys(problems)))
    return facts


def clip_shape(prompt: Prompt, facts: Mapping[str, Any] | None, preset: Preset) -> ClipShape:
    if facts is None:
        return ClipShape(preset.frames, Fraction(preset.fps), preset.portrait)
    if facts["kind"] == "video":
        return ClipShape(facts["frames"], Fraction(facts["rate"]), facts["height"] > facts["width"])
    if facts["kind"] == "latent":
        return ClipShape(facts["frames"], Fraction(preset.fps), facts["latent_height"] > facts["latent_width"])
    return ClipShape(preset.frames, Fraction(preset.fps), facts["height"] > facts["width"])


def notes(prompts: Sequence[Prompt], sources: Mapping[str, Mapping[str, Any]], preset: Preset) -> list[str]:
    """What the run does with its sources that the user may not expect, in a few lines."""
    lines = []
    silent = [p for p in prompts if p.source in ("video", "latent") and not p.text]
    if silent:
        lines.append(f"{_counted(len(silent), 'video')} without a prompt text {'runs' if len(silent) == 1 else 'run'} "
                     "with the empty prompt (give one with --prompt or \"text\" in the JSONL line)")
    short = [p for p in prompts if sources.get(p.id, {}).get("frames", preset.frames) < preset.frames]
    if short:
        first = sources[short[0].id]
        lines.append(f"{_counted(len(short), 'source')} shorter than {preset.frames} frames: each runs at the largest "
                     f"4n+1 it has ({short[0].source_file}: {first['frames']} frames)")
    return lines


def _counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
