"""Stage decode: HR latent -> MP4 through the patched VAE decode (overlapping spatial patches, cosine-ramp blend),
streamed chunk by chunk into the encoder, plus a PNG contact sheet and the video's quality numbers in its JSON.
Outputs go to decode/<tag>/ (the tag names the decode settings), so other settings write beside, never over.

    python -m pixelwizard.workflow.stages.decode .pixelwizard/runs/<digest>.json 00000    # in OUT
    torchrun --standalone --nproc_per_node 4 -m pixelwizard.workflow.stages.decode SNAPSHOT 00000

With several processes (decode_gpus) each rank decodes its share of the patches and rank 0 blends and writes.
"""

from __future__ import annotations

import sys

import torch.distributed as dist

from pixelwizard import distributed
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.io.render import render_video
from pixelwizard.pipeline import steps
from pixelwizard.pipeline.job import Job


def main(argv: list[str] | None = None) -> int:
    with Job.start("decode", argv) as job:
        p = job.preset
        vae = job.lazy(steps.load_vae, job.config, job.device)
        group = dist.group.WORLD if distributed.world_size() > 1 else None
        patches = steps.patches(p)
        for prompt in job.pending():
            with job.record(prompt) as out:
                latent = job.read("hr", prompt, "latent")
                if not job.is_writer:  # this rank's patches; rank 0 receives them blended
                    out.step(0, latent.shape[1])
                    for i, _ in enumerate(decode_patched(vae(), latent, group=group, **patches)):
                        out.step(i + 1, latent.shape[1])
                    continue
                sheet = out.path.with_suffix(".png")
                metrics = render_video(vae(), latent, out.path, fps=p.fps, sheet_path=sheet, root=out.root,
                                       on_step=out.step, group=group, **patches)
                out.write_sidecar([out.path, sheet], metrics=metrics)
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
