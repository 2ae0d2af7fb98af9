"""A run's state, per stage and per output, from its outputs and their provenance (pipeline/provenance.py): what is
done, stale (and why), held back by the run's own choice (`--until`, `--only`), missing, blocked behind an input,
failed (and with what error) or corrupt; with a row for every decode setting found under OUT/decode/ (re-decodes
beside the run's own). `pixelwizard status`, the summary at the end of `generate` and the report all read it here.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.io.sidecar import SidecarError, read_sidecar
from pixelwizard.pipeline import inflight
from pixelwizard.pipeline.events import failure_events
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.parallel import in_parts
from pixelwizard.pipeline.provenance import FAILED, HELD, MISSING, OutputState, Provenance
from pixelwizard.pipeline.run_config import RunConfig, RunConfigError
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import decode_tag

STATES = ("done", "stale", "held", "missing", "blocked", "failed", "corrupt")
EXAMPLES = 3  # ids shown per reason (all of them with --verbose)
MAX_LINES = 12  # reason lines shown (all of them with --verbose): a 10,000-prompt run's status fits a screen
_WORDS = re.compile(r"([^A-Za-z0-9._-]+)")  # what separates the words an id can be (prompts.check_id)


@dataclass
class StageStatus:
    stage: str
    label: str  # the stage, with its tag where it has one (decode p3w-ov3-24fps)
    counts: Counter = field(default_factory=Counter)
    problems: list[OutputState] = field(default_factory=list)  # every output not done

    @property
    def total(self) -> int:
        """The outputs the run makes (those it holds back apart)."""
        return sum(self.counts.values()) - self.counts[HELD]

    @property
    def todo(self) -> list[OutputState]:
        """The outputs a run of these settings makes: every one not done, but those it holds back."""
        return [p for p in self.problems if p.state != HELD]


def label(stage: str, tag: str | None) -> str:
    return f"{stage} {tag}" if tag else stage


def recorded_config(out: Path) -> RunConfig:
    """The run configuration OUT records (`generate`, or Snakemake given a run configuration, wrote it)."""
    if not out.exists():
        raise RunConfigError(f"{out}: no such directory; give the output directory of a run (its --out)")
    if not out.is_dir():
        raise RunConfigError(f"{out}: is a file, not a run's output directory; give the run's --out")
    return RunConfig.load(Layout(out).config)


def last_snapshot(out: Path) -> RunSnapshot:
    """The run as OUT last recorded it (its pixelwizard.yaml, prompts.jsonl, only.txt); writes nothing."""
    return RunSnapshot.from_files(recorded_config(out), out, DigestCache(Layout(out).digests, persist=False))


def decode_variants(snapshot: RunSnapshot, layout: Layout) -> dict[str, RunSnapshot]:
    """decode tag -> the run with that tag's decode settings: the run's own first, then every other folder of
    OUT/decode/ (re-decodes, `pixelwizard decode OUT --overlap 0`), its settings read from a video's JSON."""
    variants = {decode_tag(snapshot.preset): snapshot}
    folder = layout.folder("decode")
    for tag_folder in sorted(folder.iterdir()) if folder.is_dir() else ():
        if tag_folder.name in variants or not tag_folder.is_dir():
            continue
        for sidecar in tag_folder.glob("*.json"):
            try:
                settings = read_sidecar(sidecar).get("provenance", {}).get("settings", {})
                variant = dataclasses.replace(snapshot, config=snapshot.config.with_settings(**settings))
            except (SidecarError, RunConfigError, AttributeError, TypeError):
                continue
            if decode_tag(variant.preset) == tag_folder.name:
                variants[tag_folder.name] = variant
                break
    return variants


def output_states(provenance: Provenance, stage: str, prompts: Collection[str] | None = None) -> Iterator[OutputState]:
    """The state of every output of `stage` the run shows (of `prompts`' outputs only, if given: the unconditional
    texts are no prompts' and go with the part holding the first prompt); one the run holds back by choice is
    `held`, with the choice as its reason, unless it is done or was tried and failed (a re-decode, say)."""
    snapshot = provenance.snapshot
    held = snapshot.held(stage)
    for item in snapshot.in_part(stage, snapshot.outputs(stage), prompts):
        state = provenance.state(stage, item.id)
        why = held.get(item.id)
        yield state if state.done or state.state == FAILED or why is None else OutputState(stage, item.id, HELD, (why,))


def collect(snapshot: RunSnapshot, layout: Layout, stages: list[str] | None = None, *, every_tag: bool = False,
            processes: int = 1, renew: bool = False) -> list[StageStatus]:
    """A row per stage (of `stages`), and per decode setting found in OUT with `every_tag`; with `processes`, the
    prompts are judged in parts on as many cores; `renew`: see Provenance (only a run holding OUT's lock may)."""
    events = failure_events(layout.events)
    runs = decode_variants(snapshot, layout) if every_tag else {decode_tag(snapshot.preset): snapshot}
    own, *others = runs.values()
    provenances = [main := Provenance(own, layout, events, renew=renew),
                   *(Provenance(r, layout, events, main, renew=renew) for r in others)]
    names = [s.name for s in snapshot.stages if stages is None or s.name in stages]
    ids = [p.id for p in snapshot.prompts]
    for provenance in provenances:
        provenance.load(names)

    judged = [(name, provenance) for name in names for provenance in (provenances if name == "decode" else
                                                                      provenances[:1])]

    def judge(part: Sequence[str]) -> list[tuple[Counter, list[str], list[int], list[tuple[str, tuple[str, ...]]]]]:
        """Per row: the counts, and the outputs not done as their ids, each with the index of its (state, reasons)
        in a list of those: a new run's plan sends half a million of them between processes, and tuples of
        strings pickle many times faster than as many OutputStates."""
        chosen, rows = set(part) if len(part) < len(ids) else None, []
        for name, provenance in judged:
            counts, found, kinds, seen = Counter(), [], [], {}
            for state in output_states(provenance, name, chosen):
                counts[state.state] += 1
                if not state.done:
                    found.append(state.id)
                    kinds.append(seen.setdefault((state.state, state.reasons), len(seen)))
            rows.append((counts, found, kinds, list(seen)))
        return rows

    rows = [StageStatus(name, label(name, provenance.tag(name))) for name, provenance in judged]
    for part in in_parts(judge, ids, processes):  # in the prompts' order
        for row, (counts, found, kinds, groups) in zip(rows, part):
            row.counts.update(counts)
            row.problems += [OutputState(row.stage, item_id, *groups[kind]) for item_id, kind in zip(found, kinds)]
    return rows


def print_table(console: Console, rows: list[StageStatus], title: str) -> None:
    """The counts per stage and state; into a pipe or a file every row stays on one line, however wide."""
    grid = Table(title=title, title_justify="left")
    grid.add_column("stage")
    for state in STATES:
        grid.add_column(state, justify="right")
    for row in rows:
        grid.add_row(row.label, *(f"{row.counts[s]:,}" if row.counts[s] else "·" for s in STATES))
    if not console.is_terminal:
        console.width = max(console.width, console.measure(grid, options=console.options.update_width(1000)).maximum)
    console.print(grid)


def reason_lines(rows: list[StageStatus], out: Path, verbose: bool = False) -> list[str]:
    """Why outputs are not done: a line per stage, state and reason, with how many outputs and a few of their ids
    (every id with `verbose`), the most common first. Missing outputs are the table's."""
    lines = []
    for row in rows:
        grouped: dict[tuple[str, str], list[tuple[str, str]]] = {}  # (state, general reason) -> [(id, reason)]
        for problem in row.problems:
            if problem.state == MISSING:
                continue
            for reason in problem.reasons or ("",):
                reason = reason.replace(f"{out}/", "")
                grouped.setdefault((problem.state, _general(reason, problem.id)), []).append((problem.id, reason))
        for (state, why), found in sorted(grouped.items(), key=lambda kv: -len(kv[1])):
            ids = [item_id for item_id, _ in found]
            shown = ids if verbose else ids[:EXAMPLES]
            more = f", ... +{len(ids) - len(shown):,}" if len(ids) > len(shown) else ""
            why = found[0][1] if len(found) == 1 else why  # one output: its own words
            lines.append(f"  {row.label}: {len(ids):,} {state} ({', '.join(shown)}{more})" +
                         (f": {why}" if why else ""))
    return lines


def print_problems(console: Console, rows: list[StageStatus], out: Path, verbose: bool = False) -> None:
    lines = reason_lines(rows, out, verbose)
    if not verbose and len(lines) > MAX_LINES:
        lines = [*lines[: MAX_LINES - 1], f"  ... {len(lines) - MAX_LINES + 1:,} more reasons (--verbose shows all)"]
    for line in lines:
        console.print(line, highlight=False, markup=False)


def _general(reason: str, item_id: str) -> str:
    """A reason as it reads for every output it concerns: the output's own id (and its files) as <id>."""
    if item_id not in reason:
        return reason
    words = _WORDS.split(reason)
    return "".join("<id>" + w[len(item_id):] if w == item_id or w.startswith(f"{item_id}.") else w for w in words)


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
