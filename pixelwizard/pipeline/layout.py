"""Where everything of a run lives under its output directory OUT; every path is relative to OUT, so a run
directory that is copied or moved works where it lands.

    OUT/pixelwizard.yaml                     the last `generate`'s run configuration (prompts: prompts.jsonl)
    OUT/prompts.jsonl, OUT/only.txt          the prompts (and --only ids) of the last `generate`, as run
    OUT/<stage>/<id>.zarr                    text, uncond, lr, hr: latents and embeddings (zarr, checksummed)
    OUT/preview/<id>.mp4 .json               LR anchor previews
    OUT/decode/<tag>/<id>.mp4 .png .json     videos, contact sheets, provenance and quality numbers
    OUT/logs/<stage>/<shard>.log             one log per stage job; OUT/logs/events.jsonl, OUT/logs/snakemake/
    OUT/.done/<stage>/<shard>-<digest>.json  Snakemake's shard markers
    OUT/.pixelwizard/                        run snapshots, the checkpoint digest cache, locks, job records,
                                             each job's stamp index of its outputs (index/, pipeline/stamp_index.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pixelwizard.pipeline.stages import STAGES

RUN_CONFIG = "pixelwizard.yaml"
PROMPTS = "prompts.jsonl"
ONLY = "only.txt"
SUFFIXES = {"zarr": ".zarr", "mp4": ".mp4"}
SHEET = ".png"  # a video's contact sheet, beside it


@dataclass(frozen=True)
class Layout:
    out: Path

    def folder(self, stage: str, tag: str | None = None) -> Path:
        return self.out / stage / tag if tag else self.out / stage

    def output(self, stage: str, item_id: str, tag: str | None = None) -> Path:
        """The zarr store or the MP4 of `item_id` at `stage`."""
        return self.folder(stage, tag) / f"{item_id}{SUFFIXES[STAGES[stage].output]}"

    def sidecar(self, stage: str, item_id: str, tag: str | None = None) -> Path:
        """The JSON that completes an MP4 output: provenance, file digests, quality numbers."""
        return self.folder(stage, tag) / f"{item_id}.json"

    def sheet(self, stage: str, item_id: str, tag: str | None = None) -> Path:
        return self.folder(stage, tag) / f"{item_id}{SHEET}"

    def marker(self, stage: str, shard: str, digest: str, tag: str | None = None) -> Path:
        return self.out / ".done" / (f"{stage}/{tag}" if tag else stage) / f"{shard}-{digest[:16]}.json"

    def log(self, stage: str, shard: str, tag: str | None = None) -> Path:
        return self.out / "logs" / (f"{stage}/{tag}" if tag else stage) / f"{shard}.log"

    @property
    def events(self) -> Path:
        return self.out / "logs" / "events.jsonl"

    @property
    def snakemake_logs(self) -> Path:
        return self.out / "logs" / "snakemake"

    @property
    def state(self) -> Path:
        return self.out / ".pixelwizard"

    def snapshot(self, digest: str) -> Path:
        return self.state / "runs" / f"{digest[:16]}.json"

    @property
    def digests(self) -> Path:
        return self.state / "file-digests.json"

    @property
    def run_lock(self) -> Path:
        return self.state / "run.lock"

    @property
    def jobs_lock(self) -> Path:
        return self.state / "jobs.lock"

    @property
    def config(self) -> Path:
        return self.out / RUN_CONFIG

    @property
    def prompts(self) -> Path:
        return self.out / PROMPTS

    @property
    def only(self) -> Path:
        return self.out / ONLY
