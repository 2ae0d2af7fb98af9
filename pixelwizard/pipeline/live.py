"""What `generate` and `decode` show while they run: one rich live view, redrawn every tick, that never looks
frozen: the command and the run's clock with an ETA; per stage the prompts done of the total, failures and an ETA
from the measured seconds per prompt; per running job what it is doing right now (starting, loading which model,
encoding, sampling or decoding which prompt at which step) and for how long. Failures, killed jobs and warnings
print as one line each as they happen. With `--quiet`, or when the output is not a terminal: one line per finished
prompt. It reads what the jobs write (the event log and their records, pipeline/inflight.py), never their terminals.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixelwizard.pipeline import inflight
from pixelwizard.pipeline.events import read_events
from pixelwizard.pipeline.inflight import duration
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.status import StageStatus

DOING_WIDTH = 40  # columns kept for what a job does, so that the table does not jump as prompt ids change


class LiveView:
    def __init__(self, layout: Layout, before: list[StageStatus], console: Console, *, title: str, quiet: bool):
        self.layout, self.console, self.title = layout, console, title
        self.quiet = quiet or not console.is_terminal
        self.labels = {row.stage: row.label for row in before}
        self.totals = {row.stage: row.total for row in before}
        self.done = {row.stage: row.counts["done"] for row in before}
        self.failed: Counter = Counter()
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.offset = layout.events.stat().st_size if layout.events.exists() else 0
        self.start = time.monotonic()
        self.jobs: list[inflight.JobRecord] = []
        self.stopping = False
        self.ended: float | None = None
        self.live = Live(console=console, auto_refresh=False, transient=False) if not self.quiet else None

    def __enter__(self) -> LiveView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.ended = time.monotonic()
        self.jobs = []
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()

    def tick(self, stopping: bool = False) -> None:
        self.stopping = stopping
        events, self.offset = read_events(self.layout.events, self.offset)
        for event in events:
            self.consume(event)
        if self.live is not None:
            self.jobs = inflight.live_jobs(self.layout)
            self.live.update(self.render(), refresh=True)

    def consume(self, event: dict) -> None:
        stage, action, item = event.get("stage"), event.get("action"), event.get("id")
        if stage not in self.totals:
            return
        if action == "computed":
            self.done[stage] += 1
            self.seconds[stage].append(event.get("seconds", 0.0))
            if self.quiet:
                self.line(f"{self.labels[stage]} {item} done in {event.get('seconds', 0):.1f} s")
        elif action in ("failed", "warning"):
            self.failed[stage] += action == "failed"
            said = f"{self.labels[stage]} {item}: {event.get('error' if action == 'failed' else 'warning', '')}"
            self.line(f"{'[red]failed' if action == 'failed' else '[yellow]warning'}[/] {escape(said)}",
                      markup=True)  # an error's text may hold [brackets]: gloo's file names, say

    def line(self, text: str, markup: bool = False) -> None:
        self.console.print(text, markup=markup, highlight=False)

    def stage_eta(self, stage: str, jobs: int) -> float | None:
        """Seconds left for the stage at its measured seconds per prompt; None while none is measured."""
        left = self.totals[stage] - self.done[stage] - self.failed[stage]
        timings = self.seconds[stage]
        if not left:
            return 0.0
        return left * sum(timings) / len(timings) / max(1, jobs) if timings else None

    def render(self) -> Group:
        running = Counter(job.stage for job in self.jobs)
        etas = {stage: self.stage_eta(stage, running[stage]) for stage in self.totals}
        elapsed = (self.ended or time.monotonic()) - self.start
        header = f"{self.title}   elapsed {duration(elapsed)}"
        if self.ended is None and self.stopping:
            header += f"   stopping: {len(self.jobs)} job(s) finishing their step"
        elif self.ended is None and any(etas.values()):
            unknown = any(eta is None for eta in etas.values())
            header += f"   about {duration(sum(e for e in etas.values() if e))}{'+' if unknown else ''} left"
        width = max(len(label) for label in self.labels.values())
        counts = max(len(f"{total}/{total}") for total in self.totals.values())
        grid = Table(box=None, padding=(0, 2), show_edge=False)
        grid.add_column("stage", min_width=width)
        grid.add_column("done", justify="right", min_width=max(4, counts))
        grid.add_column("failed", justify="right", min_width=6)
        grid.add_column("eta", justify="right", min_width=7)
        for stage, total in self.totals.items():
            eta = etas[stage] if self.ended is None and not self.stopping else None
            grid.add_row(self.labels[stage], f"{self.done[stage]}/{total}", str(self.failed[stage] or ""),
                         duration(eta) if eta else "")
        shown: list = [Text(header, style="bold"), grid]
        if self.jobs:
            jobs = Table(box=None, padding=(0, 2), show_edge=False)
            jobs.add_column("running", min_width=width + 6)
            jobs.add_column("doing", min_width=DOING_WIDTH, no_wrap=True, overflow="ellipsis")
            jobs.add_column("for", justify="right", min_width=7)
            now = time.time()
            for job in self.jobs:
                jobs.add_row(f"{self.labels.get(job.stage, job.stage)} {job.shard}", job.doing,
                             duration(now - job.started))
            shown.append(jobs)
        return Group(*shown)
