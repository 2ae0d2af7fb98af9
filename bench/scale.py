"""A large batch on one machine: how long the plan (`pixelwizard generate --dry-run`), Snakemake's own dry run of
the same run configuration (`snakemake -n`), `pixelwizard status` and `pixelwizard report` take, and how long
`generate` takes to start its first stage job, at 10,000 and 100,000 prompts on the tiny weights.

    python bench/scale.py [--prompts 10000 100000] [--dir /tmp/pixelwizard-scale] [--out FILE.jsonl]
                          [--only plan snakemake status report startup]

`status` and `report` read a finished run, made here as its jobs leave one (make_run): a zarr store per latent and
embedding (copies of one store written by `write_store`, their files keeping its sizes and mtimes, so the stamps it
recorded still hold), an MP4 stand-in with its JSON per video, a second decode setting beside the run's, the events
of each output and each job's marker and stamp index. It is kept in --dir and reused: 100,000 prompts take many
minutes to write. Every figure is one fresh process: wall seconds, and the CPU seconds of it and its children.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from report import report

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.checkpoints.tiny import write_tiny_weights
from pixelwizard.io.latent_store import write_store
from pixelwizard.io.lines import json_line
from pixelwizard.io.sidecar import write_sidecar
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.plan import Plan
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.pipeline.stamp_index import ShardIndex, store_files

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pixelwizard.workflow.cli"]
LINKS_PER_TEMPLATE = 30_000  # outputs linked to one template's files (a video links it twice); ext4 allows 65,000
METRICS = {"frames": 9, "mhd_mse": 0.012, "sharpness": 41.0,
           "flicker": {"mean": 0.5, "worst": 2.5, "worst_pair": [3, 4]},
           "seam": {"overall": 1.1, "per_boundary": [1.1], "boundaries": [128], "axis": "w"}}


def prompts_file(root: Path, count: int) -> Path:
    path = root / f"prompts-{count}.txt"
    if not path.exists():
        path.write_text("".join(f"Prompt number {i}: a scene with {i % 97} birds over a lake at dawn.\n"
                                for i in range(count)))
    return path


def weights(root: Path) -> dict[str, Path]:
    if not (root / "weights" / "done").exists():
        shutil.rmtree(root / "weights", ignore_errors=True)
        write_tiny_weights(root / "weights", seed=0)
        (root / "weights" / "done").touch()
    return {"ckpt_dir": root / "weights" / "Wan2.2-TI2V-5B", "lr_ckpt": root / "weights" / "PixelWizard" / "lr" /
            "model.pt", "hr_ckpt": root / "weights" / "PixelWizard" / "tiny" / "model.pt"}


def make_run(root: Path, count: int) -> Path:
    """A finished run of `count` prompts in root/run-<count>/out, as its jobs would leave it."""
    out = root / f"run-{count}" / "out"
    if (out / "pixelwizard.yaml").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    paths = weights(root)
    prompts = [Prompt(f"p{i:06d}", f"synthetic prompt number {i}: a red fox trots through fresh snow")
               for i in range(count)]
    config = RunConfig(prompts="prompts.jsonl", preset="tiny", **{k: str(v) for k, v in paths.items()})
    layout = Layout(out)
    events, made = [], 0
    for overlap in (None, 0):  # the run, and a re-decode without overlap beside it
        run = RunSnapshot.build(config.with_settings(overlap=overlap), prompts, None, DigestCache(layout.digests))
        provenance, plan = Provenance(run, layout), Plan(run, layout)
        for stage in plan.shards if overlap is None else ("decode",):  # the stages a run of prompts has
            templates = root / "templates" / stage
            for shard, items in plan.shards[stage].items():
                index = ShardIndex(layout, stage, provenance.tag(stage), shard)
                for n, item in enumerate(items):
                    seconds, now = 0.5 + n % 7, 1e9 + len(events)
                    files = write_output(provenance, stage, item, templates / str(made // LINKS_PER_TEMPLATE))
                    made += 1
                    index.add(item.id, files, provenance.digest(stage, item.id), seconds=seconds, time=now,
                              **({"metrics": METRICS} if STAGES[stage].output == "mp4" else {}))
                    for action in ("started", "computed"):
                        events.append(json_line({"time": now, "stage": stage, "id": item.id, "shard": shard,
                                                 "digest": provenance.digest(stage, item.id), "action": action,
                                                 **({"seconds": seconds} if action == "computed" else {})}))
                index.save()
                marker = plan.marker(stage, shard)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"stage": stage, "shard": shard, "outcomes": {}}))
            print(f"{count} prompts: {stage} written", flush=True)
        if overlap is None:
            run.as_recorded().record(layout)
    layout.events.parent.mkdir(parents=True, exist_ok=True)
    layout.events.write_text("".join(events))
    return out


def write_output(provenance: Provenance, stage: str, item: Prompt, templates: Path) -> list[Path]:
    """One output of `stage` with the attributes its job gives it; its files. Its data files are hard links to those
    of one output written by the real writers (the same sizes and mtimes), so 100,000 prompts take minutes."""
    path, attrs = provenance.output(stage, item.id), provenance.attrs(stage, item.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if STAGES[stage].output == "mp4":
        if not templates.exists():
            templates.mkdir(parents=True)
            (templates / "video").write_bytes(os.urandom(4096))
        files = [path, *([path.with_suffix(".png")] if stage == "decode" else [])]
        for file in files:
            os.link(templates / "video", file)
        sidecar = provenance.layout.sidecar(stage, item.id, provenance.tag(stage))
        write_sidecar(sidecar, {**attrs, "metrics": METRICS}, files)
        return [*files, sidecar]
    store = templates / "store.zarr"
    if not store.exists():
        shapes = {"text": ("context", (45, 32), torch.bfloat16), "uncond": ("context", (45, 32), torch.bfloat16),
                  "lr": ("latent", (48, 3, 4, 8), torch.float32), "hr": ("latent", (48, 3, 10, 16), torch.float32)}
        name, shape, dtype = shapes[stage]
        write_store(store, {name: torch.randn(shape).to(dtype)}, {"digest": ""})
    meta = json.loads((store / "zarr.json").read_text())  # its stamps hold for the links: the same inodes
    for source in store_files(store):
        target = path / source.relative_to(store)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source != store / "zarr.json":
            os.link(source, target)
    meta["attributes"].update(attrs)
    (path / "zarr.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    return store_files(path)


def timed(command: list[str], **kwargs) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (the process and its children) of a command that must succeed."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return round(wall, 2), round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2), result


def generate_args(root: Path, count: int, out: Path) -> list[str]:
    paths = weights(root)
    return ["generate", str(prompts_file(root, count)), "--out", str(out), "--preset", "tiny", "--ckpt-dir",
            str(paths["ckpt_dir"]), "--hr-ckpt", str(paths["hr_ckpt"]), "--lr-ckpt", str(paths["lr_ckpt"])]


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    return path


def startup(root: Path, count: int) -> dict[str, float | str]:
    """Seconds from `pixelwizard generate` on a fresh directory to its first stage job's start (its log file
    appears when Snakemake starts the job); the run is then stopped. A run refused up front (too little free disk
    for the whole batch, say) gives its error instead."""
    out = fresh(root / f"startup-{count}")
    start = time.perf_counter()
    run = subprocess.Popen([*CLI, *generate_args(root, count, out), "--quiet"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    try:
        while not any((out / "logs").glob("*/*.log")) and run.poll() is None:
            time.sleep(0.05)
        seconds = round(time.perf_counter() - start, 2)
        if run.poll() is not None:
            return {"startup_refused_after_s": seconds, "startup_error": run.stderr.read().strip()[-300:]}
        return {"startup_s": seconds}
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=600)
        shutil.rmtree(out, ignore_errors=True)


def measure(root: Path, count: int, what: list[str], out_file: str | None) -> None:
    line = {"bench": "scale", "prompts": count, "cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 1)}
    if "plan" in what:
        wall, cpu, _ = timed([*CLI, *generate_args(root, count, fresh(root / f"plan-{count}")), "--dry-run"])
        line |= {"plan_s": wall, "plan_cpu_s": cpu}
    if "snakemake" in what:
        paths = weights(root)
        config = root / f"run-{count}.yaml"
        config.write_text(yaml.safe_dump({"prompts": str(prompts_file(root, count)), "preset": "tiny",
                                          **{k: str(v) for k, v in paths.items()}}))
        wall, cpu, result = timed([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                                   "--directory", str(fresh(root / f"sm-{count}")), "--configfile", str(config),
                                   "--cores", "1", "--dry-run", "--scheduler", "greedy"], cwd=root)
        jobs = next((int(w.split()[1]) for w in result.stdout.splitlines() if w.startswith("total ")), None)
        line |= {"snakemake_n_s": wall, "snakemake_n_cpu_s": cpu, "jobs": jobs}
    if "status" in what or "report" in what:
        run = make_run(root, count)
        for command in [c for c in ("status", "report") if c in what]:
            wall, cpu, _ = timed([*CLI, command, str(run)])
            line |= {f"{command}_s": wall, f"{command}_cpu_s": cpu}
    if "startup" in what:
        line |= startup(root, count)
    report(json.dumps(line), out_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/pixelwizard-scale"))
    parser.add_argument("--only", nargs="+", default=["plan", "snakemake", "status", "report", "startup"])
    parser.add_argument("--out", help="append the result lines to this json-lines file")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    for count in args.prompts:
        measure(args.dir, count, args.only, args.out)


if __name__ == "__main__":
    main()
