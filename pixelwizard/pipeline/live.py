"""What `generate` shows while it runs: one rich live view (per stage: prompts done of the total, the prompt and
step of each running job, elapsed time and an ETA from the measured seconds per prompt), failures and warnings as
one line each as they happen; or, with `--quiet` or when the output is not a terminal, one line per finished
prompt. It reads what the stage jobs write (the event log and their progress files), never their terminals.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pixelwizard.pipeline.events import read_events, read_progress
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.status import StageStatus


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


class LiveView:
    def __init__(self, layout: Layout, before: list[StageStatus], console: Console, *, quiet: bool):
        self.layout, self.console = layout, console
        self.quiet = quiet or not console.is_terminal
        self.labels = {row.stage: row.label for row in before}
        self.totals = {row.stage: row.total for row in before}
        self.done = {row.stage: row.counts["done"] for row in before}
        self.failed: Counter = Counter()
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.offset = layout.events.stat().st_size if layout.events.exists() else 0
        self.start = time.monotonic()
        self.live = Live(console=console, auto_refresh=False, transient=False) if not self.quiet else None

    def __enter__(self) -> LiveView:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()

    def tick(self) -> None:
        events, self.offset = read_events(self.layout.events, self.offset)
        for event in events:
            self.consume(event)
        if self.live is not None:
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
        elif action == "failed":
            self.failed[stage] += 1
            self.line(f"[red]failed[/] {self.labels[stage]} {item}: {event.get('error', '')}", markup=True)
        elif action == "warning":
            self.line(f"[yellow]warning[/] {self.labels[stage]} {item}: {event.get('warning', '')}", markup=True)

    def line(self, text: str, markup: bool = False) -> None:
        self.console.print(text, markup=markup, highlight=False)

    def render(self) -> Group:
        running = defaultdict(list)
        for job in read_progress(self.layout.state / "progress"):
            running[job.get("stage")].append(job)
        grid = Table(box=None, padding=(0, 2))
        for column in ("stage", "done", "failed", "running", "elapsed", "eta"):
            grid.add_column(column, justify="left" if column in ("stage", "running") else "right")
        elapsed = time.monotonic() - self.start
        for stage, total in self.totals.items():
            jobs = running.get(stage, [])
            now = "  ".join(f"{j.get('id')} {j.get('done')}/{j.get('total')}" for j in jobs[:3])
            left = total - self.done[stage] - self.failed[stage]
            timings = self.seconds[stage]
            eta = _duration(left * sum(timings) / len(timings) / max(1, len(jobs))) if timings and left else ""
            grid.add_row(self.labels[stage], f"{self.done[stage]}/{total}", str(self.failed[stage] or ""), now,
                         _duration(elapsed) if jobs else "", eta)
        return Group(Text("pixelwizard generate", style="bold"), grid)
