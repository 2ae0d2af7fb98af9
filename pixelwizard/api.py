"""PixelWizard from Python (a notebook, a script): the models load once, each call makes one video, to an array or
to an MP4, with the same presets, seeds and per-stage computation as `pixelwizard generate` (pipeline/steps.py),
so a prompt gives the same video either way.

    from pixelwizard import Pipeline
    pipe = Pipeline("weights/Wan2.2-TI2V-5B", "weights/PixelWizard/2k/model.pt", preset="2k")
    video = pipe.generate("a red fox trots through fresh snow")      # Video: frames [F, H, W, 3] uint8, fps
    pipe.generate("waves on a black sand beach", path="waves.mp4")   # streamed into the file
    pipe.generate("the cat turns its head", image="cat.jpg")          # image to video: the image is frame 0
    pipe.upscale("pier.mov", prompt="a pier at dusk", path="pier-2k.mp4")   # a video of yours, upscaled
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwizard.checkpoints import wan
from pixelwizard.io.files import check_output
from pixelwizard.io.image import load_image
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.io.render import render_video
from pixelwizard.io.video import to_uint8
from pixelwizard.io.video_input import probe_clip
from pixelwizard.pipeline import checks, steps
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt, make_prompt
from pixelwizard.pipeline.provenance import stage_seed
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.sampling.samplers import Conditioning


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: int | Fraction  # an upscaled video's own rate may be a fraction (30000/1001)


class Pipeline:
    """Text -> LR anchor -> HR shortcut -> patched decode in this process. Each model loads on first use and stays
    (`keep_models=False` frees each after its stage: less GPU memory, a reload per video)."""

    def __init__(self, ckpt_dir: str | Path, hr_ckpt: str | Path, *, lr_ckpt: str | Path | None = None,
                 preset: str = "2k", device: str = "auto", dtype: str = "bfloat16", attention: str = "auto",
                 offload: bool = False, keep_models: bool = True, **settings: Any):
        self.config = RunConfig(ckpt_dir=str(Path(ckpt_dir).resolve()), hr_ckpt=str(Path(hr_ckpt).resolve()),
                                lr_ckpt=str(Path(lr_ckpt).resolve()) if lr_ckpt else None, preset=preset,
                                settings=settings, device=device, dtype=dtype, attention=attention, offload=offload)
        self.preset = self.config.resolved_preset()
        checks.check_checkpoints(self.config)
        checks.check_patches(self.config)
        self.device = steps.pick_device(device)
        self.keep_models = keep_models
        ckpt = Path(self.config.ckpt_dir)
        self._loaders = {
            "text": functools.partial(wan.load_text_encoder, ckpt, device=self.device),
            "lr": functools.partial(steps.load_lr_dit, self.config, self.device),
            "hr": functools.partial(steps.load_hr_dit, self.config, self.device),
            "decode": functools.partial(steps.load_vae, self.config, self.device),
        }
        self._models: dict[str, Any] = {}

    def _model(self, stage: str) -> Any:
        if stage not in self._models:
            self._models[stage] = self._loaders[stage]()
        return self._models[stage]

    def _done_with(self, *stages: str) -> None:
        if not self.keep_models:
            for stage in stages:
                self._models.pop(stage, None)

    def generate(self, prompt: str, *, image: str | Path | None = None, seed: int | None = None,
                 negative_prompt: str | None = None, path: str | Path | None = None) -> Video | Path:
        """One video of `prompt` (its id, hence its seeds, as `generate --prompt` derives them), from `image` as
        its first frame if given (a portrait image makes a portrait video): the frames, or an MP4 at `path`
        (written whole or not at all, replacing a file or a link there but never a folder). The prompt's settings
        follow the rules of a prompt file's (pipeline/prompts.py: PromptError names the one to fix), checked with
        `path` before anything is computed."""
        item = make_prompt(text=prompt, image=None if image is None else str(image), seed=seed,
                           negative_prompt=negative_prompt)
        if path is not None:
            check_output(Path(path))
        preset, picture, first = self.preset, None, None
        if item.image is not None:
            picture = load_image(item.image)
            preset = preset.for_clip(preset.frames, picture.height > picture.width)
            first = steps.encode_first_frame(self._model("decode"), picture, preset.lr_width, preset.lr_height)
        context, uncond = self._encode(item, ("lr", "hr"))
        anchor = steps.lr_anchor(self._model("lr"), Conditioning(context, uncond["lr"]), preset,
                                 stage_seed(item, preset, "lr"), self.config, first_frame=first)
        self._done_with("lr")
        first = (steps.encode_first_frame(self._model("decode"), picture, preset.width, preset.height)
                 if picture is not None and preset.hr_first_frame else None)  # experimental: frame 0 at the HR size
        return self._upscale(item, Conditioning(context, uncond["hr"]), anchor, preset, preset.fps, path,
                             first_frame=first)

    def upscale(self, video: str | Path, *, prompt: str = "", start: float | None = None, fps: int | None = None,
                seed: int | None = None, negative_prompt: str | None = None,
                path: str | Path | None = None) -> Video | Path:
        """One video upscaled to the preset's size, as `pixelwizard upscale VIDEO` does it (the same clip, id and
        seeds): its clip fitted to the anchor and VAE-encoded, then HR and decode; the frames, or an MP4 at `path`.
        A portrait video takes the preset turned. Settings and `path` are checked as `generate` checks them."""
        item = make_prompt(text=prompt, video=str(video), start=start, fps=fps, seed=seed,
                           negative_prompt=negative_prompt)
        if path is not None:
            check_output(Path(path))
        clip = probe_clip(Path(item.video), max_frames=self.preset.frames, start=item.start or 0.0, fps=item.fps)
        preset = self.preset.for_clip(clip.frames, clip.portrait)
        anchor = steps.video_anchor(self._model("decode"), Path(item.video), clip, preset)
        context, uncond = self._encode(item, ("hr",))
        return self._upscale(item, Conditioning(context, uncond["hr"]), anchor, preset, clip.fps, path)

    def _encode(self, item: Prompt, stages: tuple[str, ...]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The prompt's embedding and each stage's unconditional one (the same text is encoded once)."""
        encoder = self._model("text")
        context = steps.encode(encoder, item.text).context
        uncond_texts = {s: STAGES[s].uncond_text(item, self.preset) for s in stages}
        encoded = {text: steps.encode(encoder, text).context for text in set(uncond_texts.values())}  # often one
        self._done_with("text")
        return context, {s: encoded[text] for s, text in uncond_texts.items()}

    def _upscale(self, item: Prompt, cond: Conditioning, anchor: torch.Tensor, preset: Preset,
                 fps: int | Fraction, path: str | Path | None, first_frame: torch.Tensor | None = None) -> Video | Path:
        """The HR shortcut on `anchor` (an image's first frame pinned with `first_frame`), then the patched decode:
        the frames, or an MP4 at `path`."""
        latent = steps.hr_latent(self._model("hr"), cond, anchor, preset, stage_seed(item, preset, "hr"),
                                 self.config, first_frame=first_frame)
        self._done_with("hr")
        vae = self._model("decode")
        try:
            if path is not None:
                render_video(vae, latent, Path(path), fps=fps, **steps.patches(preset))
                return Path(path)
            chunks = [to_uint8(chunk) for chunk in decode_patched(vae, latent, **steps.patches(preset))]
            return Video(np.concatenate(chunks), fps)
        finally:
            self._done_with("decode")
