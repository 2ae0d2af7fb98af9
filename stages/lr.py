"""Stage lr: text embeddings -> the LR anchor latent (448x256 by default, 50 UniPC steps, CFG against the
prompt's negative prompt), one zarr store per prompt. The DiT (the base one, or the fine-tuned `lr/model.pt`)
loads once per job.

    python -m pixelwizard.workflow.stages.lr .pixelwizard/runs/<digest>.json 00000        # in OUT
"""

from __future__ import annotations

import sys

from pixelwizard.pipeline import steps
from pixelwizard.pipeline.job import Job
from pixelwizard.sampling.samplers import Conditioning


def main(argv: list[str] | None = None) -> int:
    with Job.start("lr", argv) as job:
        dit = job.lazy(steps.load_lr_dit, job.config, job.device)
        for prompt in job.pending():
            with job.record(prompt) as out:
                cond = Conditioning(job.read("text", prompt, "context"), job.read("uncond", prompt, "context"))
                latent = steps.lr_anchor(dit(), cond, job.preset, out.seed, job.config, on_step=out.step)
                out.write_store({"latent": latent})
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
