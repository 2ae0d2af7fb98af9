"""Stage input: a video prompt's clip as the run takes it (its start, frames, rate and rotation) -> an H.264 MP4 at
the video's display size, a contact sheet and the clip's quality numbers, which the report shows beside the
upscaled result (any codec the input has, the page plays this copy).

    python -m pixelwizard.workflow.stages.input .pixelwizard/runs/<digest>.json 00000     # in OUT
"""

from __future__ import annotations

import sys

from pixelwizard.pipeline import steps
from pixelwizard.pipeline.job import Job


def main(argv: list[str] | None = None) -> int:
    with Job.start("input", argv) as job:
        for prompt in job.pending():
            with job.record(prompt) as out:
                clip = steps.clip_of(job.snapshot.sources[prompt.id])
                sheet = out.path.with_suffix(".png")
                metrics = steps.input_clip(job.source_file(prompt), clip, out.path, sheet, out.root,
                                             on_step=out.step)
                out.write_sidecar([out.path, sheet], metrics=metrics)
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
