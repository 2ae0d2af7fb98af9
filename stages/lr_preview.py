"""Stage: LR anchor latent -> a small MP4 beside it (448x256 by default), to review a batch cheaply before
spending the HR stage on it (`pixelwizard generate ... --until lr`).

    python stages/lr_preview.py OUT/.specs/lr_preview/00000.json
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from pixelwizard.checkpoints import wan as weights
from pixelwizard.io.render import render_video
from pixelwizard.pipeline.job import (
    checkpoint_identity,
    parse_spec,
    pick_device,
    read_array,
    run_prompts,
    sidecar_is_current,
    upstream_digest,
    write_json_atomic,
)
from pixelwizard.pipeline.plan import stage_settings


def main(argv: list[str] | None = None) -> int:
    spec = parse_spec(__doc__, argv)
    run, layout, preset = spec.run, spec.layout, spec.preset
    ckpt_dir = Path(run.ckpt_dir)
    identity = checkpoint_identity(ckpt_dir / weights.VAE_FILE)

    @functools.cache
    def vae():
        return weights.load_vae(ckpt_dir, device=pick_device(run.device))

    def sidecar(prompt_id):
        return layout.lr_preview(prompt_id).with_suffix(".json")

    def provenance(prompt):
        return {"stage": "lr_preview", "id": prompt.id, "settings": stage_settings("lr_preview", preset),
                "vae": identity, "lr": upstream_digest(layout.lr(prompt.id), "lr")}

    def compute(prompt, attrs):
        render_video(vae(), read_array(layout.lr(prompt.id), "latent"), layout.lr_preview(prompt.id), fps=preset.fps)
        write_json_atomic(sidecar(prompt.id), attrs)

    return run_prompts(
        spec, provenance=provenance, compute=compute,
        is_done=lambda p, digest: sidecar_is_current(sidecar(p.id), layout.lr_preview(p.id), digest),
    )


if __name__ == "__main__":
    sys.exit(main())
