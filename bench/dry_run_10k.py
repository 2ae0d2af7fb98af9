"""Planning a 10,000-prompt run: `pixelwizard generate --dry-run` (the run snapshot, every output's expected
provenance and state) and Snakemake's own dry run of the same run (`snakemake -n`: the rules of the stage table,
one job per shard), on a fresh output directory.

    python bench/dry_run_10k.py [--prompts 10000] [--shard-size N]   # default: the stage table's shard sizes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from report import report

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], **kwargs) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        sys.exit(result.stdout[-2000:] + result.stderr[-2000:])
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append the result line to this JSONL file")
    args = parser.parse_args()
    from pixelwizard.checkpoints.tiny import write_tiny_weights
    from pixelwizard.pipeline.stages import STAGES

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = write_tiny_weights(tmp / "weights")
        prompts = tmp / "prompts.txt"
        prompts.write_text("".join(f"Prompt number {i}: a scene with {i % 97} birds over a lake.\n"
                                   for i in range(args.prompts)))
        sizes = ["--shard-size", str(args.shard_size)] if args.shard_size else []
        cli_s, _ = timed([sys.executable, "-m", "pixelwizard.workflow.cli", "generate", str(prompts), "--out",
                          str(tmp / "out"), "--preset", "tiny", "--ckpt-dir", str(weights["ckpt_dir"]),
                          "--hr-ckpt", str(weights["hr_ckpt"]), *sizes, "--dry-run"])
        run = {"prompts": str(prompts), "ckpt_dir": str(weights["ckpt_dir"]), "hr_ckpt": str(weights["hr_ckpt"]),
               "preset": "tiny", **({"shard_sizes": dict.fromkeys(STAGES, args.shard_size)} if args.shard_size else {})}
        (tmp / "run.yaml").write_text(yaml.safe_dump(run))
        (tmp / "sm").mkdir()
        snakemake_s, listing = timed([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                                      "--directory", str(tmp / "sm"), "--configfile", str(tmp / "run.yaml"),
                                      "--cores", "1", "--dry-run", "--scheduler", "greedy"], cwd=tmp)
        jobs = next((int(line.split()[1]) for line in listing.splitlines() if line.startswith("total ")), None)
        report(json.dumps({"prompts": args.prompts, "shard_size": args.shard_size or "stage table",
                           "cli_dry_run_s": round(cli_s, 1), "snakemake_dry_run_s": round(snakemake_s, 1),
                           "jobs": jobs}), args.out)


if __name__ == "__main__":
    main()
