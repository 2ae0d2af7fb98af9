"""Generation presets: every sampling and decode setting in one place, each overridable.

`2k` and `4k` are the PixelWizard defaults (newest original `generate.py`, RESOLUTION_CONFIGS); `tiny` is the
random-weight demo at a few hundred pixels and a few frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# The Wan2.x default negative prompt (wan/configs/shared_config.py), used verbatim.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

SOLVERS = ("unipc", "dpm++", "euler")
UNCOND_PROMPTS = ("negative", "empty")
UNCOND_ANCHORS = ("same", "zero")
PATCH_DIMS = ("w", "h")
PIXELS_PER_TOKEN = 32  # VAE stride 16 x DiT patch 2


class PresetError(ValueError):
    """A setting that cannot produce a video; the message names the setting and the fix."""


@dataclass(frozen=True)
class Preset:
    name: str
    width: int
    height: int
    frames: int = 121
    fps: int = 24
    seed: int = 0
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    # Stage I: LR anchor.
    lr_width: int = 448
    lr_height: int = 256
    lr_steps: int = 50
    lr_shift: float = 5.0
    lr_guidance: float = 5.0
    lr_solver: str = "unipc"
    # Stage II: HR shortcut.
    hr_steps: int = 4
    hr_shift: float = 5.5
    hr_guidance: float = 5.0
    hr_solver: str = "unipc"
    uncond_prompt: str = "negative"  # "empty": the training-time CFG dropout prompt
    uncond_anchor: str = "same"  # "zero": the training-time anchor dropout
    # Decode.
    num_patches: int = 3
    patch_dim: str = "w"
    overlap: int = 3  # latent units (16 px)

    def __post_init__(self) -> None:
        for field in ("width", "height", "lr_width", "lr_height"):
            value = getattr(self, field)
            if value <= 0 or value % PIXELS_PER_TOKEN:
                raise PresetError(f"{field}={value}: must be a positive multiple of {PIXELS_PER_TOKEN} pixels")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise PresetError(f"frames={self.frames}: must be 4n+1 (1, 5, 9, ..., 121)")
        for field in ("lr_steps", "hr_steps", "fps", "num_patches"):
            if getattr(self, field) < 1:
                raise PresetError(f"{field}={getattr(self, field)}: must be at least 1")
        if self.overlap < 0:
            raise PresetError(f"overlap={self.overlap}: must be >= 0 latent units")
        for field, allowed in (("lr_solver", SOLVERS), ("hr_solver", SOLVERS), ("uncond_prompt", UNCOND_PROMPTS),
                               ("uncond_anchor", UNCOND_ANCHORS), ("patch_dim", PATCH_DIMS)):
            if getattr(self, field) not in allowed:
                raise PresetError(f"{field}={getattr(self, field)!r}: choose one of {', '.join(allowed)}")

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // 4 + 1

    @property
    def hr_uncond_text(self) -> str:
        """What the HR stage's unconditional branch reads (the LR stage always reads the negative prompt)."""
        return self.negative_prompt if self.uncond_prompt == "negative" else ""

    def override(self, **changes: Any) -> Preset:
        """A copy with `changes` applied; `None` values mean "keep the preset's"."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise PresetError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


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
