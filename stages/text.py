"""Stage text: each prompt -> its umT5 embedding [L, 4096] (bf16, L = its tokens up to the encoder's 512), one zarr
store per prompt. The encoder loads once per job, and only if some prompt needs it. A prompt longer than the encoder
reads is encoded truncated, with a warning that names the tokens dropped (also recorded in the store).

    python -m pixelwizard.workflow.stages.text .pixelwizard/runs/<digest>.json 00000      # in OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from pixelwizard.checkpoints import wan
from pixelwizard.pipeline import steps
from pixelwizard.pipeline.job import Job


def main(argv: list[str] | None = None, stage: str = "text") -> int:
    with Job.start(stage, argv) as job:
        encoder = job.lazy(wan.load_text_encoder, Path(job.config.ckpt_dir), device=job.device)
        for item in job.pending():
            with job.record(item) as out:
                embedding = steps.encode(encoder(), item.text)
                out.write_store({"context": embedding.context}, tokens=embedding.tokens,
                                dropped_tokens=embedding.dropped)
                if embedding.dropped:
                    out.warn(f"{embedding.tokens} tokens, the encoder reads {encoder().config.text_len}: the last "
                             f"{embedding.dropped} are dropped")
    return job.exit_code


if __name__ == "__main__":
    sys.exit(main())
