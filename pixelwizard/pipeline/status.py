"""A run's state, per stage and per prompt, from its outputs and their provenance (pipeline/provenance.py): what is
done, stale (and why), missing, blocked behind an input, failed (and with what error) or corrupt. `pixelwizard
status`, the summary at the end of `generate` and the report all read it from here.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.pipeline import inflight
from pixelwizard.pipeline.events import read_events
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.plan import Plan
from pixelwizard.pipeline.provenance import DONE, OutputState, Provenance
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.snapshot import RunSnapshot

STATES = ("done", "stale", "missing", "blocked", "failed", "corrupt")


@dataclass
class StageStatus:
    stage: str
    label: str  # the stage, with its tag where it has one (decode p3w-ov3-24fps)
    counts: Counter = field(default_factory=Counter)
    problems: list[OutputState] = field(default_factory=list)  # every output not done

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def last_snapshot(out: Path) -> RunSnapshot:
    """The run as the last `generate` in OUT configured it (its pixelwizard.yaml, prompts.jsonl, only.txt)."""
    layout = Layout(out)
    config = RunConfig.load(layout.config)
    return RunSnapshot.from_files(config, out, DigestCache(layout.digests))


def collect(snapshot: RunSnapshot, layout: Layout, stages: list[str] | None = None) -> list[StageStatus]:
    provenance = Provenance(snapshot, layout, read_events(layout.events)[0])
    plan = Plan(snapshot, layout, provenance)
    rows = []
    for stage in plan.stages:
        if stages is not None and stage.name not in stages:
            continue
        tag = provenance.tag(stage.name)
        row = StageStatus(stage.name, f"{stage.name} {tag}" if tag else stage.name)
        for item in snapshot.items(stage.name):
            state = provenance.state(stage.name, item.id)
            row.counts[state.state] += 1
            if state.state != DONE:
                row.problems.append(state)
        rows.append(row)
    return rows


def table(rows: list[StageStatus], title: str) -> Table:
    grid = Table(title=title, title_justify="left")
    grid.add_column("stage")
    for state in STATES:
        grid.add_column(state, justify="right")
    for row in rows:
        grid.add_row(row.label, *(str(row.counts[s]) if row.counts[s] else "·" for s in STATES))
    return grid


def print_problems(console: Console, rows: list[StageStatus], limit: int = 10) -> None:
    """Why outputs are not done: stale ones grouped by reason, each failure with its error, blocked ones by input."""
    for row in rows:
        grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        for problem in row.problems:
            grouped.setdefault((problem.state, problem.reasons), []).append(problem.id)
        for (state, reasons), ids in grouped.items():
            if state == "missing":
                continue
            shown = ", ".join(ids[:limit]) + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")
            why = "; ".join(reasons)
            console.print(f"  {row.label}: {state} {shown}" + (f": {why}" if why else ""), highlight=False,
                          markup=False)


def print_at_work(console: Console, layout: Layout) -> None:
    """Whether a run holds OUT, and the stage jobs in flight: stage, shard, prompts, what each does, for how long."""
    holder, jobs = inflight.run_holder(layout), inflight.live_jobs(layout)
    if holder is not None:
        since = inflight.duration(time.time() - holder.get("started", time.time()))
        console.print(f"a run holds this directory: {holder.get('command', 'pixelwizard')} (pid {holder.get('pid')} "
                      f"on {holder.get('host')}, for {since}){'; stopping' if holder.get('stopping') else ''}",
                      highlight=False, markup=False)
    elif jobs:
        console.print(f"no run holds this directory, but stage jobs work in it (Snakemake run directly, or jobs "
                      f"left by a run that was killed; `pixelwizard stop {layout.out}` ends them):", highlight=False,
                      markup=False)
    for job in jobs:
        console.print(f"  {job.describe()}", highlight=False, markup=False)
