"""`pixelwizard report OUT`: a run as a static page, OUT/report/index.html, that opens from the file system (no
server, no network). Per prompt: its text and source file, seeds, state per stage (with why when not done), seconds
per stage, an upscaled video's input clip and the LR preview, and the video, contact sheet and quality numbers of
every decode setting found under OUT/decode/, side by side. For the batch: outputs per stage and state, time per
stage, throughput, the slowest and the failed prompts, the run's settings and checkpoint identities. The preview
gate's checkboxes save a selection file for `pixelwizard generate ... --only FILE`.

The page (pixelwizard/pipeline/report_page/, copied beside) reads its data from OUT/report/data.js, a script that
defines one object (a file:// page cannot fetch JSON). It shows one page of prompts at a time, so its DOM stays
small at 10,000 prompts, and its videos load their metadata only when shown.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

from pixelwizard import __version__
from pixelwizard.io.files import check_outputs, write_atomic
from pixelwizard.pipeline.events import events_of, failure_events
from pixelwizard.pipeline.layout import SHEET, SUFFIXES, Layout
from pixelwizard.pipeline.parallel import in_parts
from pixelwizard.pipeline.provenance import DONE, STALE, OutputState, Provenance, stage_seed
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.pipeline.status import STATES, decode_variants, label, last_snapshot, output_states

PAGE_FILES = ("report.css", "report.js", "index.html")
DATA_FILE = "data.js"
DATA_GLOBAL = "PIXELWIZARD_REPORT"
SLOWEST = 10


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested mapping by dotted name: {"flicker": {"mean": 0.1}} -> {"flicker.mean": 0.1}.
    Lists, strings, nulls and booleans are left out."""
    found: dict[str, float] = {}
    for key, value in values.items():
        kind = type(value)  # not isinstance: a bool is no number here, and ABC checks cost at 100,000 videos
        if kind is dict:
            found.update(numbers(value, f"{prefix}{key}."))
        elif (kind is float or kind is int) and math.isfinite(value):
            found[f"{prefix}{key}"] = value
    return found


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals: wall time in which some output was being computed."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class ReportData:
    """What the page shows, gathered from OUT: every output's state (pipeline/provenance.py), the computed events'
    seconds of the current outputs, the videos' JSON sidecars."""

    def __init__(self, snapshot: RunSnapshot, layout: Layout, processes: int = 1):
        self.snapshot, self.layout = snapshot, layout
        failures = failure_events(layout.events)
        (own_tag, own), *others = decode_variants(snapshot, layout).items()
        self.main = Provenance(own, layout, failures)
        self.variants = {own_tag: self.main, **{t: Provenance(r, layout, failures, self.main) for t, r in others}}
        self._computed: dict[tuple[str, str, str], dict[str, Any]] | None = None
        self.intervals: list[tuple[float, float]] = []  # (start, end) of the run's current outputs' computation
        # label ("lr", "decode p2w-ov1-24fps") -> output id -> what the page shows of it
        self.outputs: dict[str, dict[str, dict[str, Any]]] = {}
        for provenance in self.variants.values():
            provenance.load(s.name for s in snapshot.stages)
        for outputs, intervals in in_parts(self.gather, [p.id for p in snapshot.prompts], processes):
            for name, entries in outputs.items():
                self.outputs.setdefault(name, {}).update(entries)
            self.intervals += intervals

    def gather(self, prompts: Sequence[str]) -> tuple[dict[str, dict[str, dict[str, Any]]], list[tuple[float, float]]]:
        """What the page shows of the outputs of `prompts` (and the seconds of the run's own computation)."""
        chosen = set(prompts) if len(prompts) < len(self.snapshot.prompts) else None
        outputs, intervals = {}, []
        for stage in self.snapshot.stages:
            for tag, provenance in self.variants.items() if stage.name == "decode" else [(None, self.main)]:
                outputs[label(stage.name, tag)] = entries = {}
                for state in output_states(provenance, stage.name, chosen):
                    entries[state.id], timing = self.output(provenance, state)
                    if provenance is self.main and "seconds" in entries[state.id]:  # the run, not a re-decode
                        intervals.append((timing["time"] - timing["seconds"], timing["time"]))
        return outputs, intervals

    def output(self, provenance: Provenance, state: OutputState) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the page shows of an output, and the seconds and time of its computation (from its job's index,
        else from its computed event)."""
        stage, item_id = state.stage, state.id
        attrs = provenance.recorded(stage, item_id) or {}
        timing = attrs if "seconds" in attrs else self.computed(stage, item_id, provenance.digest(stage, item_id))
        entry: dict[str, Any] = {"state": state.state}
        if state.reasons:
            entry["why"] = "; ".join(state.reasons)
        spec = provenance.spec(stage, item_id)
        if spec.seeded:  # up to 2^63: beyond a JS number's exact integers
            entry["seed"] = str(stage_seed(provenance.item(stage, item_id), provenance.snapshot.preset, stage))
        if item_id in provenance.snapshot.sources:  # made another way than the stage table's, or at another size:
            record = provenance.record(stage, item_id)  # its own settings and checkpoints
            entry["settings"] = record["settings"]
            entry["checkpoints"] = list(record["checkpoints"])
        if state.done and isinstance(timing.get("seconds"), (int, float)):
            entry["seconds"] = timing["seconds"]
        if STAGES[stage].output == "mp4" and state.state in (DONE, STALE):  # its files are intact
            entry.update(self.media(provenance, stage, item_id, attrs))
        return entry, timing

    def computed(self, stage: str, item_id: str, digest: str) -> dict[str, Any]:
        """The event of the output's computation (read once, and only for outputs whose job's index has none)."""
        if self._computed is None:
            self._computed = {(e.get("stage"), e.get("id"), e.get("digest")): e
                              for e in events_of(self.layout.events, "computed")}
        return self._computed.get((stage, item_id, digest), {})

    def media(self, provenance: Provenance, stage: str, item_id: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """The video and contact sheet that the output lists, and its quality numbers."""
        folder = self.link(stage, provenance.tag(stage))
        listed = attrs.get("files", ())
        found: dict[str, Any] = {key: f"{folder}/{name}" for key, name in (
            ("video", item_id + SUFFIXES["mp4"]), ("sheet", item_id + SHEET)) if name in listed}
        if isinstance(attrs.get("metrics"), dict):
            found["metrics"] = numbers(attrs["metrics"])
        return found

    @functools.cache
    def link(self, stage: str, tag: str | None) -> str:
        """The stage's folder as the page links it: relative to OUT/report/, so the run folder can move."""
        return "../" + self.layout.folder(stage, tag).relative_to(self.layout.out).as_posix()

    def prompt_stages(self) -> list[str]:
        """The per-prompt stages shown in a prompt's row (decode has a column per decode setting instead)."""
        return [s.name for s in self.snapshot.stages if s.items != "uncond" and s.name != "decode"]

    def prompts(self) -> list[dict[str, Any]]:
        preset = self.snapshot.preset
        rows = []
        for prompt in self.snapshot.prompts:
            row: dict[str, Any] = {"id": prompt.id, "text": prompt.text,
                                   "seed": str(preset.seed if prompt.seed is None else prompt.seed)}
            if prompt.negative_prompt is not None:
                row["negative_prompt"] = prompt.negative_prompt
            if prompt.id in self.snapshot.sources:
                row["source"] = {"file": prompt.source_file, **self.snapshot.sources[prompt.id]}
            row["stages"] = {s: self.outputs[s][prompt.id] for s in self.prompt_stages()
                             if prompt.id in self.outputs[s]}
            row["decodes"] = {tag: self.outputs[label("decode", tag)][prompt.id] for tag in self.variants
                              if prompt.id in self.outputs[label("decode", tag)]}
            timed = [o["seconds"] for o in (*row["stages"].values(), row["decodes"].get(self.main_tag, {}))
                     if "seconds" in o]
            row["seconds"] = round(sum(timed), 3) if timed else None
            rows.append(row)
        return rows

    @property
    def main_tag(self) -> str:
        return self.main.tag("decode")

    def batch(self, prompts: list[dict[str, Any]]) -> dict[str, Any]:
        stages = []
        for name, outputs in self.outputs.items():
            timed = [o["seconds"] for o in outputs.values() if "seconds" in o]
            counts = Counter(o["state"] for o in outputs.values())
            stages.append({"label": name, "total": len(outputs), "counts": {s: counts[s] for s in STATES},
                           "timed": len(timed), "seconds": round(sum(timed), 3) if timed else None,
                           "mean_s": round(sum(timed) / len(timed), 3) if timed else None,
                           "max_s": max(timed) if timed else None})
        videos = sum(o["state"] == DONE for o in self.outputs[label("decode", self.main_tag)].values())
        busy = busy_seconds(self.intervals)
        span = max(e for _, e in self.intervals) - min(s for s, _ in self.intervals) if self.intervals else 0.0
        timed = sorted((p for p in prompts if p["seconds"] is not None), key=lambda p: -p["seconds"])
        failed = [{"label": name, "id": item_id, "why": o.get("why", "")}
                  for name, outputs in self.outputs.items() for item_id, o in outputs.items() if o["state"] == "failed"]
        return {"stages": stages, "videos": videos, "busy_s": round(busy, 3), "span_s": round(span, 3),
                "videos_per_hour": round(videos * 3600 / busy, 2) if busy > 0 else None,
                "videos_per_hour_span": round(videos * 3600 / span, 2) if span > 0 else None,
                "slowest": [{"id": p["id"], "seconds": p["seconds"]} for p in timed[:SLOWEST]], "failed": failed}

    def run(self) -> dict[str, Any]:
        config = self.snapshot.config
        return {"preset": config.preset, "settings": dataclasses.asdict(self.snapshot.preset),
                "config": config.to_mapping(), "checkpoints": self.snapshot.identities,
                "only": list(self.snapshot.only) if self.snapshot.only is not None else None,
                "stages": {s.name: {"settings": list(s.settings), "checkpoints": list(s.checkpoints)}
                           for s in self.snapshot.stages},
                "decodes": {tag: {name: getattr(p.snapshot.preset, name) for name in STAGES["decode"].settings}
                            for tag, p in self.variants.items()}}

    def to_dict(self) -> dict[str, Any]:
        prompts = self.prompts()
        metrics = sorted({k for p in prompts for d in p["decodes"].values() for k in d.get("metrics", {})})
        return {"out": str(self.layout.out), "made": time.strftime("%Y-%m-%d %H:%M:%S"), "version": __version__,
                "run": self.run(), "states": list(STATES), "stages": self.prompt_stages(), "tags": list(self.variants),
                "main_tag": self.main_tag, "metrics": metrics, "batch": self.batch(prompts), "prompts": prompts}


def write_report(out: Path, processes: int = 1) -> tuple[Path, dict[str, Any]]:
    """Write OUT/report/ (index.html, its script and style, data.js) for the run last configured in OUT, and nothing
    else there; returns the page and its data. Refused (OutputPathError) before anything is written when a file
    would land outside OUT (OUT/report a link) or replace what pixelwizard did not make (a folder at index.html)."""
    layout = Layout(out)
    folder = layout.out / "report"
    check_outputs([folder / name for name in (DATA_FILE, *PAGE_FILES)], layout.out)
    data = ReportData(last_snapshot(out), layout, processes).to_dict()
    script = f"window.{DATA_GLOBAL} = {json.dumps(data, allow_nan=False, separators=(',', ':'))};\n"
    write_atomic(folder / DATA_FILE, script, layout.out)
    page = files("pixelwizard.pipeline") / "report_page"
    for name in PAGE_FILES:  # index.html last
        write_atomic(folder / name, (page / name).read_bytes(), layout.out)
    return folder / "index.html", data
