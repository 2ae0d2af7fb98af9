"""Stage: HR latent -> MP4 through the patched VAE decode (overlapping spatial patches, cosine-ramp blend),
streamed chunk by chunk into the encoder, plus a PNG contact sheet. Outputs go under videos/<decode tag>/, so
other decode settings write beside, never over. The VAE loads once per job.

    python stages/decode.py OUT/.specs/decode-p3w-ov3-24fps/00000.json
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from pixelwizard import weights
from pixelwizard.render import render_video
from pixelwizard.stage import (
    checkpoint_identity, pick_device, progress, read_array, run_prompts, setup_logging, sidecar_is_current,
    upstream_digest, write_json_atomic,
)
from pixelwizard.workflow import StageSpec, decode_tag, stage_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    spec = StageSpec.load(args.spec)
    run, layout, preset = spec.run, spec.layout, spec.preset
    ckpt_dir = Path(run.ckpt_dir)
    tag = decode_tag(preset)
    identity = checkpoint_identity(ckpt_dir / weights.VAE_FILE)

    @functools.cache
    def vae():
        return weights.load_vae(ckpt_dir, device=pick_device(run.device))

    def provenance(prompt):
        return {"stage": "decode", "id": prompt.id, "settings": stage_settings("decode", preset), "vae": identity,
                "hr": upstream_digest(layout.hr(prompt.id), "hr")}

    def compute(prompt, attrs):
        latent = read_array(layout.hr(prompt.id), "latent")
        with progress(f"decode {prompt.id}", latent.shape[1]) as on_step:
            render_video(vae(), latent, layout.video(tag, prompt.id), fps=preset.fps, num_patches=preset.num_patches,
                         patch_dim=preset.patch_dim, overlap=preset.overlap,
                         sheet_path=layout.video(tag, prompt.id, ".png"), on_step=on_step)
        write_json_atomic(layout.video(tag, prompt.id, ".json"), attrs)

    return run_prompts(
        spec, provenance=provenance, compute=compute,
        is_done=lambda p, digest: sidecar_is_current(layout.video(tag, p.id, ".json"), layout.video(tag, p.id), digest),
    )


if __name__ == "__main__":
    sys.exit(main())
