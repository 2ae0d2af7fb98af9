"""`pixelwizard generate --dry-run` (snakemake -n) over a 10,000-prompt file: must finish in under a minute.

    python bench/dry_run_10k.py [--prompts 10000] [--shard-size 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=8)
    args = parser.parse_args()
    from pixelwizard.checkpoints.tiny import write_tiny_weights

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = write_tiny_weights(tmp / "weights")
        prompts = tmp / "prompts.txt"
        prompts.write_text("".join(f"Prompt number {i}: a scene with {i % 97} birds over a lake.\n"
                                   for i in range(args.prompts)))
        cmd = [sys.executable, str(REPO / "cli.py"), "generate", str(prompts), "--out", str(tmp / "out"),
               "--preset", "tiny", "--ckpt-dir", str(weights["ckpt_dir"]), "--hr-ckpt", str(weights["hr_ckpt"]),
               "--shard-size", str(args.shard_size), "--dry-run", "--quiet"]
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            sys.exit(result.stderr[-2000:])
        jobs = sum(1 for line in result.stdout.splitlines() if line.strip().startswith(("rule ", "localrule ")))
        print(json.dumps({"prompts": args.prompts, "shard_size": args.shard_size, "dry_run_s": round(seconds, 1),
                          "jobs_listed": jobs}))


if __name__ == "__main__":
    main()
