"""A run cut into stage jobs, as the Snakefile and the CLI see it: each stage's items in shards of its shard size,
one Snakemake job per shard, whose output is a marker named by the digest of what the shard must produce. The
graph follows the stage table: a shard's inputs are the markers of the upstream shards holding what it reads.

A marker means "this shard's job ran through with these settings"; whether each output is current is the
provenance's to say. Settings or checkpoints that change an output change its digest and so the marker's name:
Snakemake runs the job again without any help. Before a run the CLI also removes the markers of shards holding an
output that is missing, failed, stale or corrupt, so that those jobs run again.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.prompts import Prompt, shard
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.run_config import MAX_JOBS, STOP_AFTER, RunConfig
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES, Stage, lineage


class Plan:
    def __init__(self, snapshot: RunSnapshot, layout: Layout, provenance: Provenance | None = None):
        self.snapshot = snapshot
        self.layout = layout
        self.provenance = provenance or Provenance(snapshot, layout)
        self.stages: list[Stage] = snapshot.stages
        self.shards: dict[str, dict[str, list[Prompt]]] = {}
        self._shard_of: dict[str, dict[str, str]] = {}
        for stage in self.stages:
            items = snapshot.items(stage.name)
            pieces = shard(items, self.shard_size(stage.name, len(items)))
            self.shards[stage.name] = {f"{i:05d}": piece for i, piece in enumerate(pieces)}
            self._shard_of[stage.name] = {item.id: name for name, piece in self.shards[stage.name].items()
                                          for item in piece}

    def shard_of(self, stage: str, item_id: str) -> str:
        return self._shard_of[stage][item_id]

    def shard_size(self, stage: str, items: int) -> int:
        """The run's own shard size for the stage, else the stage table's, doubled until the stage has at most
        MAX_JOBS jobs: Snakemake spends milliseconds per job on its graph, so a batch of 100,000 prompts keeps a
        graph of some thousand jobs (and a job's model load is shared by more prompts)."""
        size = self.snapshot.config.shard_sizes.get(stage)
        if size is not None:
            return size
        size = STAGES[stage].shard_size
        while items > size * MAX_JOBS:
            size *= 2
        return size

    def gpus(self, stage: str) -> int:
        field = STAGES[stage].gpus
        return getattr(self.snapshot.config, field) if field else 1

    @functools.cache
    def shard_digest(self, stage: str, shard_name: str) -> str:
        digests = self.provenance.digests(stage)
        lines = "".join([f"{p.id} {digests[p.id]}\n"
                         for p in self.shards[stage][shard_name]])
        return hashlib.sha256(f"{stage}\n{lines}".encode()).hexdigest()

    def marker(self, stage: str, shard_name: str) -> Path:
        return self.layout.marker(stage, shard_name, self.shard_digest(stage, shard_name),
                                  self.provenance.tag(stage))

    def markers(self, stage: str) -> list[Path]:
        return [self.marker(stage, name) for name in self.shards.get(stage, {})]

    def marker_pattern(self, stage: str) -> str:
        return str(self.layout.marker(stage, "{shard}", "{digest}", self.provenance.tag(stage)))

    def log(self, stage: str, shard_name: str) -> Path:
        return self.layout.log(stage, shard_name, self.provenance.tag(stage))

    def input_markers(self, stage: str, shard_name: str) -> list[Path]:
        """The markers of the upstream shards holding what this shard's items read."""
        needed = {(up, up_id) for item in self.shards[stage][shard_name]
                  for up, up_id in self.provenance.inputs(stage, item.id).items()}
        shards = sorted({(up, self._shard_of[up][up_id]) for up, up_id in needed})
        return [self.marker(up, name) for up, name in shards]

    def final_stages(self) -> list[str]:
        """The stages a run ends with: those no other stage reads, or its `until` stop."""
        until = self.snapshot.config.until
        return list(STOP_AFTER[until]) if until else [s.name for s in self.stages if not self._read_by_later(s.name)]

    def targets(self) -> list[Path]:
        """Every marker of the run (stopped after its `until` stages, if it has one). The upstream markers are
        listed too: a job whose marker went (it holds a failed or damaged output) then runs even where all that
        follows it is done."""
        final = self.final_stages()
        needed = {name for stage in final if stage in self.shards for name in lineage(stage)}
        return [marker for stage in self.stages if stage.name in needed for marker in self.markers(stage.name)]

    def _read_by_later(self, stage: str) -> bool:
        return any(stage in s.reads for s in self.stages)

    def command(self, stage: str, shard_name: str, snapshot_path: Path) -> str:
        """The shell command of a stage job: the launcher (GPU lease, the job's record, its log, opened inside OUT;
        pipeline/launch.py), then the stage script, through torchrun when the job spans several GPUs."""
        gpus = self.gpus(stage)
        python = shlex.quote(sys.executable)
        script = f"-m pixelwizard.workflow.stages.{stage} {shlex.quote(str(snapshot_path))} {shard_name}"
        run = f"{python} -m torch.distributed.run --standalone --nproc_per_node {gpus}" if gpus > 1 else python
        log = shlex.quote(str(self.log(stage, shard_name)))
        return f"exec {python} -m pixelwizard.pipeline.launch {stage} {shard_name} {gpus} {log} -- {run} {script}"


def collect_garbage_rarely() -> None:
    """For a process that plans or judges a run: a plan of 100,000 prompts makes millions of small objects (prompts,
    digests, states), none of them in reference cycles, and Python's default thresholds run the cyclic collector
    over them thousands of times: a third of the plan's time. Young cycles are still collected."""
    gc.set_threshold(100_000, 50, 1000)


def snakemake_plan(config: dict) -> tuple[Plan, Path, Callable[[], None]]:
    """The Snakefile's plan, run snapshot and what to write when the run starts (its `onstart`), in OUT (the
    working directory): the snapshot `pixelwizard generate` wrote and recorded (`--config snapshot=PATH`: nothing
    to write), or one made here from a run configuration (`--configfile my-run.yaml`), which OUT records as
    `generate` does, so that `status`, `report` and `decode` work on it. Nothing is written before the run
    starts: `snakemake -n` changes nothing."""
    collect_garbage_rarely()
    layout = Layout(Path("."))
    if set(config) == {"snapshot"}:
        path = Path(config["snapshot"])
        return _with_digests(Plan(RunSnapshot.load(path), layout)), path, lambda: None
    cache = DigestCache(layout.digests, persist=False, root=layout.out)
    run_config = RunConfig.from_mapping(dict(config))
    snapshot = RunSnapshot.from_files(run_config, Path("."), cache).as_recorded()

    def start() -> None:
        cache.save()
        snapshot.record(layout, source=Path(run_config.prompts))

    return _with_digests(Plan(snapshot, layout)), layout.snapshot(snapshot.digest), start


def _with_digests(plan: Plan) -> Plan:
    """The plan with every output's digest computed on every core: Snakemake asks for every marker at once."""
    plan.provenance.compute_digests([s.name for s in plan.stages], os.cpu_count())
    return plan
