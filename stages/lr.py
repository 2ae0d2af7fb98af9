"""Stage lr: the LR anchor latent of each prompt, one zarr store per prompt. From text embeddings it is sampled
(448x256 by default, 50 UniPC steps, CFG against the prompt's negative prompt) by the DiT (the base one, or the
fine-tuned `lr/model.pt`), with an image prompt's first frame pinned (image to video); from a video, the clip is
fitted to the anchor size and VAE-encoded; a saved latent is taken as it is. Each model loads once per job, if some
prompt needs it.

    python -m pixelwizard.workflow.stages.lr .pixelwizard/runs/<digest>.json 00000        # in OUT
"""

from __future__ import annotations

import sys

from pixelwizard.io.image import load_image
from pixelwizard.pipeline import steps
from pixelwizard.pipeline.job import Job
from pixelwizard.sampling.samplers import Conditioning


def main(argv: list[str] | None = None) -> int:
    with Job.start("lr", argv) as job:
        dit = job.lazy(steps.load_lr_dit, job.config, job.device)
        vae = job.lazy(steps.load_vae, job.config, job.device)
        for prompt in job.pending():
            with job.record(prompt) as out:
                preset = job.preset_for(prompt)
                if prompt.source == "video":
                    clip = steps.clip_of(job.snapshot.sources[prompt.id])
                    latent = steps.video_anchor(vae(), job.source_file(prompt), clip, preset, on_step=out.step)
                elif prompt.source == "latent":
                    latent = steps.saved_anchor(job.source_file(prompt), preset, job.config)
                else:
                    first = None
                    if prompt.source == "image":
                        first = steps.encode_first_frame(vae(), load_image(job.source_file(prompt)), preset.lr_width,
                                                         preset.lr_height)
                    cond = Conditioning(job.read("text", prompt, "context"), job.read("uncond", prompt, "context"))
                    latent = steps.lr_anchor(dit(), cond, preset, out.seed, job.config, on_step=out.step,
                                             first_frame=first)
                out.write_store({"latent": latent})
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
