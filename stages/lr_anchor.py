"""Stage: text embeddings -> LR anchor latent (448x256 by default, 50 UniPC steps, CFG against the negative
prompt), one zarr store per prompt. The DiT (base, or the fine-tuned `lr/model.pt`) loads once per job.

    python stages/lr_anchor.py OUT/.specs/lr/00000.json
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from pixelwizard.checkpoints import wan as weights
from pixelwizard.checkpoints.trainer import load_lr_model
from pixelwizard.io.latent_store import write_store
from pixelwizard.models.config import DiTConfig, config_from_json
from pixelwizard.pipeline.job import (
    checkpoint_identity,
    dit_dtype,
    parse_spec,
    pick_device,
    progress,
    read_array,
    run_prompts,
    store_is_current,
    upstream_digest,
)
from pixelwizard.pipeline.plan import UNCOND, stage_settings
from pixelwizard.sampling.samplers import Conditioning, sample_lr
from pixelwizard.sampling.seeds import prompt_seed


def main(argv: list[str] | None = None) -> int:
    spec = parse_spec(__doc__, argv)
    run, layout, preset = spec.run, spec.layout, spec.preset
    ckpt_dir = Path(run.ckpt_dir)
    device = pick_device(run.device)
    files = [Path(run.lr_ckpt)] if run.lr_ckpt else weights.dit_files(ckpt_dir)
    identity = {f.name: checkpoint_identity(f) for f in files}

    @functools.cache
    def model():
        dtype = dit_dtype(run.dtype, device)
        if run.lr_ckpt:
            config = config_from_json(DiTConfig, ckpt_dir / weights.DIT_CONFIG)
            return load_lr_model(Path(run.lr_ckpt), config, dtype=dtype, device=device)
        return weights.load_dit(ckpt_dir, dtype=dtype, device=device)

    def provenance(prompt):
        return {
            "stage": "lr", "id": prompt.id, "seed": prompt_seed(preset.seed, prompt.id, "lr"),
            "settings": stage_settings("lr", preset), "dit": identity,
            "text": upstream_digest(layout.text(prompt.id), "text"), "uncond": upstream_digest(layout.text(UNCOND), "text"),
        }

    def compute(prompt, attrs):
        context = read_array(layout.text(prompt.id), "context")
        negative = read_array(layout.text(UNCOND), "negative")
        with progress(f"LR {prompt.id}", preset.lr_steps) as on_step:
            latent = sample_lr(model(), Conditioning(context, negative), preset, attrs["provenance"]["seed"],
                               on_step=on_step)
        write_store(layout.lr(prompt.id), {"latent": latent.cpu()}, attrs)

    return run_prompts(
        spec, store_dir=layout.out / "lr", provenance=provenance, compute=compute,
        is_done=lambda p, digest: store_is_current(layout.lr(p.id), digest),
    )


if __name__ == "__main__":
    sys.exit(main())
