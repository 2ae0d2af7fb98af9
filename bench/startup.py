"""Start-up: how long `pixelwizard` takes to answer, and where the fixed cost of a run goes on the tiny weights.

    python bench/startup.py [--repeat 3] [--python PYTHON] [--out bench/results/startup_cpu.jsonl]

1. The CLI in fresh processes (best of --repeat): `pixelwizard --help`, every subcommand's `--help`, an argument
   error (a missing option) and a configuration error (`--set frames=10`); for scale `python -c pass`, `import
   torch` and `import snakemake`.
2. `pixelwizard demo` end to end (3 prompts, 2 jobs at once), and from what it leaves in OUT (the run record in the
   run lock, each job's first `computed` event, the shard markers), per stage job, in seconds:
     wait      the job could have started (its inputs made and a core free) -> Snakemake started it: Snakemake's
               own latency, with the exit of the job before it (for the first jobs: Snakemake's start-up)
     launch    Snakemake started it -> its stage script's process started (the launcher: GPU lease, record)
     imports   the interpreter and the stage script's imports
     setup     the job's snapshot, plan and provenance
     inputs    deciding what to compute and reading the first prompt's inputs
     load      loading the model
     step      the first step (the text stages: the first prompt)
   and the run's totals: the CLI before Snakemake (weights, checks, hashing, plan), Snakemake's start to the first
   job, the jobs, Snakemake's end to the CLI's.

`--python` runs another installation's interpreter (an older checkout, for before/after figures); an installation
whose jobs record no start-up phases gets part 1 and the demo's wall time only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import report

PHASES = [("launch", "launched", "process"), ("imports", "process", "imported"), ("setup", "imported", "ready"),
          ("inputs", "ready", "loading"), ("load", "loading", "loaded"), ("step", "loaded", "first_step")]


def best_of(command: list[str], repeat: int, expect: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if result.returncode != expect:
            sys.exit(f"{' '.join(command)}: exit {result.returncode}, expected {expect}\n{result.stderr[-2000:]}")
    return min(times)


def cli_times(python: str, repeat: int) -> dict[str, float]:
    cli = [python, "-m", "pixelwizard.workflow.cli"]
    listed = subprocess.run([python, "-c", "import typer; from pixelwizard.workflow.cli import app; "
                             "print(' '.join(typer.main.get_command(app).commands))"],
                            capture_output=True, text=True, check=True).stdout.split()
    times = {"python -c pass": best_of([python, "-c", "pass"], repeat, 0),
             "import torch": best_of([python, "-c", "import torch"], repeat, 0),
             "import snakemake": best_of([python, "-c", "import snakemake.api"], repeat, 0),
             "--help": best_of([*cli, "--help"], repeat, 0)}
    for command in listed:
        times[f"{command} --help"] = best_of([*cli, command, "--help"], repeat, 0)
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp, "p.txt")
        prompts.write_text("a red fox\n")
        times["argument error"] = best_of([*cli, "generate", str(prompts), "--out", tmp, "--ckpt-dir", tmp], repeat, 2)
        times["config error"] = best_of([*cli, "generate", str(prompts), "--out", tmp, "--ckpt-dir", tmp,
                                         "--hr-ckpt", tmp, "--set", "frames=10"], repeat, 2)
    return {k: round(v, 2) for k, v in times.items()}


def could_start(job: dict, jobs: list[dict], cores: int, ready: float) -> float:
    """The first moment from `ready` on when fewer than `cores` other jobs were running."""
    others = [j for j in jobs if j is not job]
    for t in sorted({ready, *(j["end"] for j in others if j["end"] > ready)}):
        if sum(1 for j in others if j["launched"] <= t < j["end"]) < cores:
            return t
    return ready


def demo_figures(python: str, out: Path, cores: int) -> dict:
    start = time.time()
    result = subprocess.run([python, "-m", "pixelwizard.workflow.cli", "demo", "--out", str(out), "--quiet",
                             "--cores", str(cores)], capture_output=True, text=True)
    wall = time.time() - start
    if result.returncode != 0:
        sys.exit(result.stderr[-3000:])
    from pixelwizard.pipeline.stages import STAGES

    figures: dict = {"demo_s": round(wall, 1)}
    events = [json.loads(line) for line in (out / "logs" / "events.jsonl").read_text().splitlines()]
    firsts = {(e["stage"], e["shard"]): e for e in events if e.get("action") == "computed" and "startup" in e}
    try:
        run = json.loads((out / ".pixelwizard" / "run.lock").read_text())
    except (OSError, ValueError):
        run = {}
    if not firsts or "snakemake_started" not in run:
        return figures  # an installation whose jobs record no start-up phases
    markers = {(p.parent.name if p.parent.parent.name == ".done" else p.parent.parent.name, p.name[:5]): p
               for p in (out / ".done").rglob("*.json")}
    computed = [e for e in events if e.get("action") == "computed"]
    shard_of = {(e["stage"], e["id"]): e["shard"] for e in computed}
    jobs = []
    for (stage, shard), event in firsts.items():
        phases = event["startup"]
        spans = {name: round(phases[b] - phases[a], 2) for name, a, b in PHASES if a in phases and b in phases}
        ids = {e["id"] for e in computed if (e["stage"], e["shard"]) == (stage, shard)}
        jobs.append({"stage": stage, "shard": shard, "ids": ids, "launched": phases["launched"],
                     "end": markers[(stage, shard)].stat().st_mtime, **spans})
    reads = {s.name: s.reads for s in STAGES.values()}
    for job in jobs:
        inputs = {(up, shard_of[(up, i)]) for up in reads[job["stage"]] if up != "uncond" for i in job["ids"]}
        inputs |= {(j["stage"], j["shard"]) for j in jobs if j["stage"] == "uncond" and "uncond" in reads[job["stage"]]}
        ends = [j["end"] for j in jobs if (j["stage"], j["shard"]) in inputs]
        ready = max(ends) if ends else run["snakemake_started"]
        job["wait"] = round(job["launched"] - could_start(job, jobs, cores, ready), 2)
    first, last = min(j["launched"] for j in jobs), max(j["end"] for j in jobs)
    figures.update(cli_before_snakemake_s=round(run["snakemake_started"] - start, 1),
                   snakemake_to_first_job_s=round(first - run["snakemake_started"], 1),
                   jobs_s=round(last - first, 1), after_last_job_s=round(start + wall - last, 1),
                   jobs=[{k: v for k, v in j.items() if k not in ("launched", "end", "ids")}
                         for j in sorted(jobs, key=lambda j: j["launched"])])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2, help="the demo's jobs at once")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the installation to measure")
    parser.add_argument("--out", default=None, help="append the result line to this JSONL file")
    args = parser.parse_args()
    figures = {"machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the start",
               "python": args.python, "cli": cli_times(args.python, args.repeat)}
    with tempfile.TemporaryDirectory() as tmp:
        figures["demo"] = demo_figures(args.python, Path(tmp) / "demo", args.cores)
    figures["load_after"] = round(os.getloadavg()[0], 1)
    report(json.dumps(figures), args.out)


if __name__ == "__main__":
    main()
