"""PixelWizard from Python (a notebook, a script): the models load once, each call makes one video, to an array or
to an MP4, with the same presets, seeds and per-stage computation as `pixelwizard generate` (pipeline/steps.py),
so a prompt gives the same video either way.

    from pixelwizard import Pipeline
    pipe = Pipeline("weights/Wan2.2-TI2V-5B", "weights/PixelWizard/2k/model.pt", preset="2k")
    video = pipe.generate("a red fox trots through fresh snow")      # Video: frames [F, H, W, 3] uint8, fps
    pipe.generate("waves on a black sand beach", path="waves.mp4")   # streamed into the file
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pixelwizard.checkpoints import wan
from pixelwizard.io.files import check_output
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.io.render import render_video
from pixelwizard.io.video import to_uint8
from pixelwizard.pipeline import checks, steps
from pixelwizard.pipeline.prompts import make_prompt
from pixelwizard.pipeline.provenance import stage_seed
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.sampling.samplers import Conditioning


@dataclass(frozen=True)
class Video:
    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: int


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

    def generate(self, prompt: str, *, seed: int | None = None, negative_prompt: str | None = None,
                 path: str | Path | None = None) -> Video | Path:
        """One video of `prompt` (its id, hence its seeds, as `generate --prompt` derives them): the frames, or
        an MP4 at `path` (written whole or not at all, replacing a file or a link there but never a folder).
        The prompt's settings follow the rules of a prompt file's (pipeline/prompts.py: PromptError names the one
        to fix), checked with `path` before anything is computed."""
        item = make_prompt(text=prompt, seed=seed, negative_prompt=negative_prompt)
        if path is not None:
            check_output(Path(path))
        preset = self.preset
        encoder = self._model("text")
        context = steps.encode(encoder, item.text).context
        uncond_texts = {s: STAGES[s].uncond_text(item, preset) for s in ("lr", "hr")}
        encoded = {text: steps.encode(encoder, text).context for text in set(uncond_texts.values())}  # often one
        uncond = {s: encoded[text] for s, text in uncond_texts.items()}
        self._done_with("text")
        anchor = steps.lr_anchor(self._model("lr"), Conditioning(context, uncond["lr"]), preset,
                                 stage_seed(item, preset, "lr"), self.config)
        self._done_with("lr")
        latent = steps.hr_latent(self._model("hr"), Conditioning(context, uncond["hr"]), anchor, preset,
                                 stage_seed(item, preset, "hr"), self.config)
        self._done_with("hr")
        vae = self._model("decode")
        try:
            if path is not None:
                render_video(vae, latent, Path(path), fps=preset.fps, **steps.patches(preset))
                return Path(path)
            chunks = [to_uint8(chunk) for chunk in decode_patched(vae, latent, **steps.patches(preset))]
            return Video(np.concatenate(chunks), preset.fps)
        finally:
            self._done_with("decode")
