"""Stage: LR anchor + text embeddings -> HR latent in a few shortcut steps, one zarr store per prompt.
Launched through torchrun with `hr_gpus` processes; only rank 0 writes.

    torchrun --standalone --nproc_per_node 1 stages/hr_shortcut.py OUT/.specs/hr/00000.json

With N > 1 processes the DiT is FSDP2-sharded over them and runs Ulysses sequence-parallel over all N (the
head count must be divisible by N). Every rank runs every prompt in lockstep with the same seed; what reads
files (provenance, skip decisions, inputs) is decided on rank 0 and broadcast, so no rank can diverge.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import torch

from pixelwizard import distributed
from pixelwizard.checkpoints import wan as weights
from pixelwizard.checkpoints.trainer import check_resolution_folder, load_hr_model
from pixelwizard.io.latent_store import write_store
from pixelwizard.models.config import DiTConfig, config_from_json
from pixelwizard.pipeline.job import (
    checkpoint_identity,
    dit_dtype,
    parse_spec,
    progress,
    read_array,
    run_on_ranks,
    run_prompts,
    store_is_current,
    upstream_digest,
)
from pixelwizard.pipeline.plan import UNCOND, StageSpec, stage_settings
from pixelwizard.sampling.samplers import Conditioning, sample_hr
from pixelwizard.sampling.seeds import prompt_seed


def main(argv: list[str] | None = None) -> int:
    spec = parse_spec(__doc__, argv)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and processes != spec.run.hr_gpus:
        raise SystemExit(f"hr_shortcut: launched with {processes} processes but hr_gpus is {spec.run.hr_gpus}; "
                         f"launch with --nproc_per_node {spec.run.hr_gpus}")
    return run_on_ranks(spec, run_shard)


def run_shard(spec: StageSpec, device: torch.device) -> int:
    run, layout, preset = spec.run, spec.layout, spec.preset
    ckpt_dir, hr_ckpt = Path(run.ckpt_dir), Path(run.hr_ckpt)
    is_writer = distributed.is_writer()
    parallel = distributed.world_size() > 1
    check_resolution_folder(hr_ckpt, preset.name)  # on every rank: all fail together
    config = distributed.from_rank0(lambda: config_from_json(DiTConfig, ckpt_dir / weights.DIT_CONFIG))
    sp = distributed.SequenceParallel() if parallel else None
    if sp is not None:
        sp.check_heads(config.num_heads)  # before loading anything
    identity = distributed.from_rank0(
        lambda: {f.name: checkpoint_identity(f) for f in (hr_ckpt, ckpt_dir / weights.DIT_CONFIG)})
    uncond_array = "negative" if preset.uncond_prompt == "negative" else "empty"

    @functools.cache
    def model():
        mesh = distributed.device_mesh(device) if parallel else None
        hr = load_hr_model(hr_ckpt, config, dtype=dit_dtype(run.dtype, device), device=device, mesh=mesh)
        return hr.use_sequence_parallel(sp)

    def provenance(prompt):
        return distributed.from_rank0(lambda: {
            "stage": "hr", "id": prompt.id, "seed": prompt_seed(preset.seed, prompt.id, "hr"),
            "settings": stage_settings("hr", preset), "dit": identity,
            "text": upstream_digest(layout.text(prompt.id), "text"),
            "uncond": upstream_digest(layout.text(UNCOND), "text"),
            "lr": upstream_digest(layout.lr(prompt.id), "lr"),
        })

    def is_done(prompt, digest):
        return distributed.from_rank0(lambda: store_is_current(layout.hr(prompt.id), digest))

    def compute(prompt, attrs):
        context, uncond, lr_latent = distributed.from_rank0(lambda: (
            read_array(layout.text(prompt.id), "context"),
            read_array(layout.text(UNCOND), uncond_array),
            read_array(layout.lr(prompt.id), "latent"),
        ))
        bar = progress(f"HR {prompt.id}", preset.hr_steps) if is_writer else contextlib.nullcontext()
        with bar as on_step:
            latent = sample_hr(model(), Conditioning(context, uncond), lr_latent, preset,
                               attrs["provenance"]["seed"], on_step=on_step)
        if is_writer:
            write_store(layout.hr(prompt.id), {"latent": latent.cpu()}, attrs)

    return run_prompts(spec, provenance=provenance, compute=compute, write_outputs=is_writer, is_done=is_done,
                       store_dir=layout.out / "hr")


if __name__ == "__main__":
    sys.exit(main())
