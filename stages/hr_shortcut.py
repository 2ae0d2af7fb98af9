"""Stage: LR anchor + text embeddings -> HR latent in a few shortcut steps, one zarr store per prompt.
Launched through torchrun (the multi-GPU path on clusters); only rank 0 writes.

    torchrun --standalone --nproc_per_node 1 stages/hr_shortcut.py OUT/.specs/hr/00000.json
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from pixelwizard import weights
from pixelwizard.config import DiTConfig, config_from_json
from pixelwizard.latents import write_store
from pixelwizard.sampling import Conditioning, sample_hr
from pixelwizard.seeds import prompt_seed
from pixelwizard.stage import (
    checkpoint_identity, dit_dtype, pick_device, progress, read_array, run_prompts, setup_logging, store_is_current,
    upstream_digest,
)
from pixelwizard.trainer_checkpoint import load_hr_model, warn_if_resolution_mismatch
from pixelwizard.workflow import UNCOND, StageSpec, stage_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise SystemExit("hr_shortcut: multi-process HR runs are not supported yet; launch with --nproc_per_node 1")
    is_writer = int(os.environ.get("RANK", "0")) == 0
    spec = StageSpec.load(args.spec)
    run, layout, preset = spec.run, spec.layout, spec.preset
    ckpt_dir, hr_ckpt = Path(run.ckpt_dir), Path(run.hr_ckpt)
    device = pick_device(run.device)
    warn_if_resolution_mismatch(hr_ckpt, preset.name)
    identity = {f.name: checkpoint_identity(f) for f in (hr_ckpt, ckpt_dir / weights.DIT_CONFIG)}
    uncond_array = "negative" if preset.uncond_prompt == "negative" else "empty"

    @functools.cache
    def model():
        config = config_from_json(DiTConfig, ckpt_dir / weights.DIT_CONFIG)
        return load_hr_model(hr_ckpt, config, dtype=dit_dtype(run.dtype, device), device=device)

    def provenance(prompt):
        return {
            "stage": "hr", "id": prompt.id, "seed": prompt_seed(preset.seed, prompt.id, "hr"),
            "settings": stage_settings("hr", preset), "dit": identity,
            "text": upstream_digest(layout.text(prompt.id), "text"),
            "uncond": upstream_digest(layout.text(UNCOND), "text"),
            "lr": upstream_digest(layout.lr(prompt.id), "lr"),
        }

    def compute(prompt, attrs):
        context = read_array(layout.text(prompt.id), "context")
        uncond = read_array(layout.text(UNCOND), uncond_array)
        lr_latent = read_array(layout.lr(prompt.id), "latent")
        with progress(f"HR {prompt.id}", preset.hr_steps) as on_step:
            latent = sample_hr(model(), Conditioning(context, uncond), lr_latent, preset,
                               attrs["provenance"]["seed"], on_step=on_step)
        if is_writer:
            write_store(layout.hr(prompt.id), {"latent": latent.cpu()}, attrs)

    return run_prompts(
        spec, provenance=provenance, compute=compute, write_outputs=is_writer,
        is_done=lambda p, digest: store_is_current(layout.hr(p.id), digest),
    )


if __name__ == "__main__":
    sys.exit(main())
