"""Stage preview: LR anchor latent -> a small MP4 of it (448x256 by default), to review a batch cheaply before
spending the HR stage on it (`pixelwizard generate ... --until lr`, then `--only`).

    python -m pixelwizard.workflow.stages.preview .pixelwizard/runs/<digest>.json 00000   # in OUT
"""

from __future__ import annotations

import sys

from pixelwizard.io.render import render_video
from pixelwizard.pipeline import steps
from pixelwizard.pipeline.job import Job


def main(argv: list[str] | None = None) -> int:
    with Job.start("preview", argv) as job:
        vae = job.lazy(steps.load_vae, job.config, job.device)
        for prompt in job.pending():
            with job.record(prompt) as out:
                metrics = render_video(vae(), job.read("lr", prompt, "latent"), out.path, fps=job.preset.fps,
                                       root=out.root, on_step=out.step)
                out.write_sidecar([out.path], metrics=metrics)
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
