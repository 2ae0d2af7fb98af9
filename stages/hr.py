"""Stage hr: LR anchor + text embeddings -> the 2K/4K HR latent in a few shortcut steps, one zarr store per prompt.

    python -m pixelwizard.workflow.stages.hr .pixelwizard/runs/<digest>.json 00000        # in OUT
    torchrun --standalone --nproc_per_node 4 -m pixelwizard.workflow.stages.hr SNAPSHOT 00000

With N > 1 processes (hr_gpus) the DiT is FSDP2-sharded over them and runs Ulysses sequence-parallel over all N
(the head count must be divisible by N); every rank runs every prompt in lockstep with the same noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pixelwizard import distributed
from pixelwizard.checkpoints import wan
from pixelwizard.checkpoints.trainer import load_hr_model
from pixelwizard.models.config import DiTConfig, config_from_json
from pixelwizard.pipeline.job import Job
from pixelwizard.sampling.samplers import Conditioning, sample_hr
from pixelwizard.sampling.seeds import gaussian_noise


def load_model(job: Job):
    config = config_from_json(DiTConfig, Path(job.config.ckpt_dir) / wan.DIT_CONFIG)
    if distributed.world_size() == 1:
        return load_hr_model(Path(job.config.hr_ckpt), config, dtype=job.dit_dtype, device=job.device)
    sp = distributed.SequenceParallel()
    sp.check_heads(config.num_heads)
    model = load_hr_model(Path(job.config.hr_ckpt), config, dtype=job.dit_dtype, device=job.device,
                          mesh=distributed.device_mesh(job.device))
    return model.use_sequence_parallel(sp)


def main(argv: list[str] | None = None) -> int:
    with Job.start("hr", argv) as job:
        p = job.preset
        model = job.lazy(load_model, job)
        shape = wan.vae_config(Path(job.config.ckpt_dir)).latent_shape(p.frames, p.height, p.width)
        for prompt in job.pending():
            with job.record(prompt) as out:
                cond = Conditioning(job.read("text", prompt, "context"), job.read("uncond", prompt, "context"))
                anchor = job.read("lr", prompt, "latent")
                latent = sample_hr(model(), cond, anchor, gaussian_noise(shape, out.seed), **p.hr_sampling(),
                                   on_step=out.step)
                out.write_store({"latent": latent.cpu()})
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
