"""Stage: HR latent -> MP4 through the patched VAE decode (overlapping spatial patches, cosine-ramp blend),
streamed chunk by chunk into the encoder, plus a PNG contact sheet. Outputs go under videos/<decode tag>/, so
other decode settings write beside, never over. The VAE loads once per job.

    python stages/decode.py OUT/.specs/decode-p3w-ov3-24fps/00000.json
    torchrun --standalone --nproc_per_node 4 stages/decode.py SPEC    # patches spread over 4 GPUs

With several processes each rank decodes its share of the patches and rank 0 blends and writes; what reads
files (provenance, skip decisions, the latent) is decided on rank 0 and broadcast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch.distributed as dist

from pixelwizard import distributed
from pixelwizard.checkpoints import wan as weights
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.io.render import render_video
from pixelwizard.pipeline.job import (
    checkpoint_identity,
    parse_spec,
    progress,
    read_array,
    run_on_ranks,
    run_prompts,
    sidecar_is_current,
    upstream_digest,
    write_json_atomic,
)
from pixelwizard.pipeline.plan import StageSpec, decode_tag, stage_settings


def main(argv: list[str] | None = None) -> int:
    spec = parse_spec(__doc__, argv)
    return run_on_ranks(spec, run_shard)


def run_shard(spec: StageSpec, device) -> int:
    run, layout, preset = spec.run, spec.layout, spec.preset
    ckpt_dir = Path(run.ckpt_dir)
    tag = decode_tag(preset)
    is_writer = distributed.is_writer()
    group = dist.group.WORLD if distributed.world_size() > 1 else None
    identity = distributed.from_rank0(lambda: checkpoint_identity(ckpt_dir / weights.VAE_FILE))
    patches = dict(num_patches=preset.num_patches, patch_dim=preset.patch_dim, overlap=preset.overlap)

    @functools.cache
    def vae():
        return weights.load_vae(ckpt_dir, device=device)

    def provenance(prompt):
        return distributed.from_rank0(lambda: {
            "stage": "decode", "id": prompt.id, "settings": stage_settings("decode", preset), "vae": identity,
            "hr": upstream_digest(layout.hr(prompt.id), "hr"),
        })

    def is_done(prompt, digest):
        return distributed.from_rank0(
            lambda: sidecar_is_current(layout.video(tag, prompt.id, ".json"), layout.video(tag, prompt.id), digest))

    def compute(prompt, attrs):
        latent = distributed.from_rank0(lambda: read_array(layout.hr(prompt.id), "latent"))
        if not is_writer:  # decode this rank's patches; rank 0 receives them blended
            for _ in decode_patched(vae(), latent, group=group, **patches):
                pass
            return
        with progress(f"decode {prompt.id}", latent.shape[1]) as on_step:
            render_video(vae(), latent, layout.video(tag, prompt.id), fps=preset.fps, group=group,
                         sheet_path=layout.video(tag, prompt.id, ".png"), on_step=on_step, **patches)
        write_json_atomic(layout.video(tag, prompt.id, ".json"), attrs)

    return run_prompts(spec, provenance=provenance, compute=compute, is_done=is_done, write_outputs=is_writer)


if __name__ == "__main__":
    sys.exit(main())
