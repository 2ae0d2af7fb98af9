"""Stage hr: LR anchor + text embeddings -> the 2K/4K HR latent in a few shortcut steps, one zarr store per prompt.
With `hr_first_frame` (experimental), an image prompt's HR latent keeps its first frame pinned to the image,
encoded at the HR size.

    python -m pixelwizard.workflow.stages.hr .pixelwizard/runs/<digest>.json 00000        # in OUT
    torchrun --standalone --nproc_per_node 4 -m pixelwizard.workflow.stages.hr SNAPSHOT 00000

With N > 1 processes (hr_gpus) the DiT is FSDP2-sharded over them and runs Ulysses sequence-parallel over all N
(the head count must be divisible by N); every rank runs every prompt in lockstep with the same noise.
"""

from __future__ import annotations

import sys

from pixelwizard.io.image import load_image
from pixelwizard.pipeline import steps
from pixelwizard.pipeline.job import Job
from pixelwizard.sampling.samplers import Conditioning


def main(argv: list[str] | None = None) -> int:
    with Job.start("hr", argv) as job:
        model = job.lazy(steps.load_hr_dit, job.config, job.device)
        vae = job.lazy(steps.load_vae, job.config, job.device)
        for prompt in job.pending():
            with job.record(prompt) as out:
                preset = job.preset_for(prompt)
                first = None
                if prompt.source == "image" and preset.hr_first_frame:
                    first = steps.encode_first_frame(vae(), load_image(job.source_file(prompt)), preset.width,
                                                     preset.height)
                cond = Conditioning(job.read("text", prompt, "context"), job.read("uncond", prompt, "context"))
                anchor = job.read("lr", prompt, "latent")
                latent = steps.hr_latent(model(), cond, anchor, preset, out.seed, job.config, on_step=out.step,
                                         first_frame=first)
                out.write_store({"latent": latent})
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
