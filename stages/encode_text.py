"""Stage: prompts -> umT5 embeddings, one zarr store per prompt; or (stage "uncond") the negative and the empty
prompt, encoded once per run. The encoder loads once per job, and only if some prompt needs it.

    python stages/encode_text.py OUT/.specs/text/00000.json
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from pixelwizard.checkpoints import wan as weights
from pixelwizard.io.latent_store import write_store
from pixelwizard.pipeline.job import (
    checkpoint_identity,
    output_attrs,
    parse_spec,
    pick_device,
    run_prompts,
    store_is_current,
    write_json_atomic,
)
from pixelwizard.pipeline.plan import UNCOND, stage_settings


def main(argv: list[str] | None = None) -> int:
    spec = parse_spec(__doc__, argv)
    run, layout, preset = spec.run, spec.layout, spec.preset
    ckpt_dir = Path(run.ckpt_dir)
    identity = checkpoint_identity(ckpt_dir / weights.T5_FILE)

    @functools.cache
    def encoder():
        return weights.load_text_encoder(ckpt_dir, device=pick_device(run.device))

    if spec.stage == "uncond":
        attrs = output_attrs({"stage": "uncond", **stage_settings("uncond", preset), "t5": identity})
        if not store_is_current(layout.text(UNCOND), attrs["digest"]):
            negative, empty = encoder().encode([preset.negative_prompt, ""])
            write_store(layout.text(UNCOND), {"negative": negative, "empty": empty}, attrs)
        write_json_atomic(layout.done(spec.marker, spec.shard), {"ids": [UNCOND]})
        return 0

    def compute(prompt, attrs):
        (context,) = encoder().encode([prompt.text])
        write_store(layout.text(prompt.id), {"context": context}, attrs)

    return run_prompts(
        spec, store_dir=layout.out / "text",
        provenance=lambda p: {"stage": "text", "id": p.id, "text_hash": p.text_hash, "t5": identity},
        is_done=lambda p, digest: store_is_current(layout.text(p.id), digest),
        compute=compute,
    )


if __name__ == "__main__":
    sys.exit(main())
