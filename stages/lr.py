"""Stage lr: text embeddings -> the LR anchor latent (448x256 by default, 50 UniPC steps, CFG against the
prompt's negative prompt), one zarr store per prompt. The DiT (the base one, or the fine-tuned `lr/model.pt`)
loads once per job.

    python -m pixelwizard.workflow.stages.lr .pixelwizard/runs/<digest>.json 00000        # in OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from pixelwizard.checkpoints import wan
from pixelwizard.checkpoints.trainer import load_lr_model
from pixelwizard.models.config import DiTConfig, config_from_json
from pixelwizard.pipeline.job import Job
from pixelwizard.sampling.samplers import Conditioning, sample_lr
from pixelwizard.sampling.seeds import gaussian_noise


def load_dit(job: Job):
    ckpt_dir = Path(job.config.ckpt_dir)
    if job.config.lr_ckpt is None:
        return wan.load_dit(ckpt_dir, dtype=job.dit_dtype, device=job.device)
    config = config_from_json(DiTConfig, ckpt_dir / wan.DIT_CONFIG)
    return load_lr_model(Path(job.config.lr_ckpt), config, dtype=job.dit_dtype, device=job.device)


def main(argv: list[str] | None = None) -> int:
    with Job.start("lr", argv) as job:
        p = job.preset
        dit = job.lazy(load_dit, job)
        shape = wan.vae_config(Path(job.config.ckpt_dir)).latent_shape(p.frames, p.lr_height, p.lr_width)
        for prompt in job.pending():
            with job.record(prompt) as out:
                cond = Conditioning(job.read("text", prompt, "context"), job.read("uncond", prompt, "context"))
                latent = sample_lr(dit(), cond, gaussian_noise(shape, out.seed), **p.lr_sampling(), on_step=out.step)
                out.write_store({"latent": latent.cpu()})
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
