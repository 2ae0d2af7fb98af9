"""Stage uncond: the run's unconditional texts (each distinct negative prompt, and the empty prompt) -> umT5
embeddings, one zarr store per text, named by its digest; the text stage's script does the work.

    python -m pixelwizard.workflow.stages.uncond .pixelwizard/runs/<digest>.json 00000    # in OUT
"""

from __future__ import annotations

import sys

from pixelwizard.workflow.stages import text


def main(argv: list[str] | None = None) -> int:
    return text.main(argv, stage="uncond")


if __name__ == "__main__":
    sys.exit(main())
