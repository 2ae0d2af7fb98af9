"""Generation presets: every sampling and decode setting in one place, each overridable, each with its help text
(the CLI's options and the docs take theirs from here).

`2k` and `4k` are the PixelWizard defaults (newest original `generate.py`, RESOLUTION_CONFIGS); `tiny` is the
random-weight demo at a few hundred pixels and a few frames.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from pixelwizard.pipeline.prompts import check_seed, check_text, shown

# The Wan2.x default negative prompt (wan/configs/shared_config.py), used verbatim.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

SOLVERS = ("unipc", "dpm++", "euler")
CHOICES = {
    "lr_solver": SOLVERS,
    "hr_solver": SOLVERS,
    "uncond_prompt": ("negative", "empty"),
    "uncond_anchor": ("same", "zero"),
    "patch_dim": ("w", "h"),
}
PIXELS_PER_TOKEN = 32  # VAE stride 16 x DiT patch 2
KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class PresetError(ValueError):
    """A setting that cannot produce a video; the message names the setting and the fix."""


def setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Preset:
    name: str
    width: int = setting(2560, "Video width in pixels (a multiple of 32)")
    height: int = setting(1440, "Video height in pixels (a multiple of 32)")
    frames: int = setting(121, "Frames, 4n+1")
    fps: int = setting(24, "Frames per second of the MP4s")
    seed: int = setting(0, "Base seed: each prompt's seeds derive from it and the prompt id")
    negative_prompt: str = setting(WAN_NEGATIVE_PROMPT, "Negative prompt (Wan2.2's default; per prompt in JSONL)")
    # Stage I: LR anchor.
    lr_width: int = setting(448, "LR anchor width in pixels")
    lr_height: int = setting(256, "LR anchor height in pixels")
    lr_steps: int = setting(50, "LR anchor sampling steps")
    lr_shift: float = setting(5.0, "LR anchor noise-schedule shift")
    lr_guidance: float = setting(5.0, "LR anchor classifier-free guidance scale")
    lr_solver: str = setting("unipc", "LR anchor solver: unipc, dpm++ or euler")
    # Stage II: HR shortcut.
    hr_steps: int = setting(4, "HR shortcut sampling steps")
    hr_shift: float = setting(5.5, "HR shortcut noise-schedule shift")
    hr_guidance: float = setting(5.0, "HR shortcut classifier-free guidance scale")
    hr_solver: str = setting("unipc", "HR shortcut solver: unipc, dpm++ or euler (the rule it was trained with)")
    uncond_prompt: str = setting("negative", "HR unconditional text: negative, or empty (the training-time dropout)")
    uncond_anchor: str = setting("same", "HR unconditional anchor: same, or zero (the training-time dropout)")
    # Decode.
    num_patches: int = setting(3, "Decode patches")
    patch_dim: str = setting("w", "Split the decode patches along w or h")
    overlap: int = setting(3, "Decode patch overlap in latent units (16 px)")

    def __post_init__(self) -> None:
        for name, rule in (("seed", check_seed), ("negative_prompt", check_text)):  # a prompt's own follow them too
            try:
                rule(getattr(self, name))
            except ValueError as err:
                raise PresetError(f"{name}={shown(getattr(self, name))}: {err}") from None
        for name, kind in _field_types().items():
            value = getattr(self, name)
            if not _is(value, kind):
                raise PresetError(f"{name}={value!r}: must be {KIND_NAMES[kind]}")
            if kind is float:  # 5 and 5.0 must give the same provenance digest
                object.__setattr__(self, name, float(value))
        for name in ("width", "height", "lr_width", "lr_height"):
            value = getattr(self, name)
            if value <= 0 or value % PIXELS_PER_TOKEN:
                raise PresetError(f"{name}={value}: must be a positive multiple of {PIXELS_PER_TOKEN} pixels")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise PresetError(f"frames={self.frames}: must be 4n+1 (1, 5, 9, ..., 121)")
        for name in ("lr_steps", "hr_steps", "fps", "num_patches"):
            if getattr(self, name) < 1:
                raise PresetError(f"{name}={getattr(self, name)}: must be at least 1")
        if self.overlap < 0:
            raise PresetError(f"overlap={self.overlap}: must be >= 0 latent units")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise PresetError(f"{name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")

    def lr_sampling(self) -> dict[str, Any]:
        """The LR sampler's parameters (sampling/samplers.py sample_lr)."""
        return dict(steps=self.lr_steps, shift=self.lr_shift, guidance=self.lr_guidance, solver=self.lr_solver)

    def hr_sampling(self) -> dict[str, Any]:
        """The HR sampler's parameters (sampling/samplers.py sample_hr)."""
        return dict(steps=self.hr_steps, shift=self.hr_shift, guidance=self.hr_guidance, solver=self.hr_solver,
                    zero_uncond_anchor=self.uncond_anchor == "zero")

    def override(self, **changes: Any) -> Preset:
        """A copy with `changes` applied; `None` values mean "keep the preset's"."""
        unknown = sorted(set(changes) - set(_field_types()))
        if unknown:
            raise PresetError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_field_types()))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _field_types() -> dict[str, type]:
    """The overridable settings and their types (everything but the name)."""
    hints = typing.get_type_hints(Preset)
    return {f.name: hints[f.name] for f in dataclasses.fields(Preset) if f.name != "name"}


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def setting_type(name: str) -> type:
    return _field_types()[name]


def setting_help(name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(Preset) if f.name == name)


def parse_setting(name: str, text: str) -> Any:
    """`--set NAME=TEXT`: TEXT converted to the setting's type, or a PresetError naming both."""
    if name not in _field_types():
        raise PresetError(f"--set {name}: unknown setting; known: {', '.join(sorted(_field_types()))}")
    kind = setting_type(name)
    try:
        return text if kind is str else kind(text)
    except ValueError:
        raise PresetError(f"--set {name}={text}: {name} must be {KIND_NAMES[kind]}, e.g. "
                          f"--set {name}={getattr(PRESETS['2k'], name)}") from None


PRESETS: dict[str, Preset] = {
    "2k": Preset(name="2k", width=2560, height=1440, hr_steps=4, hr_shift=5.5, num_patches=3),
    "4k": Preset(name="4k", width=3840, height=2144, hr_steps=4, hr_shift=5.8, num_patches=4),
    "tiny": Preset(name="tiny", width=256, height=160, frames=9, lr_width=128, lr_height=64, lr_steps=6,
                   hr_steps=4, hr_shift=5.5, num_patches=2, overlap=1),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].override(**overrides)
