"""Per-stage counts of a run for `pixelwizard status`: done, missing, failed (with ids), read from the outputs
themselves and the events log, never from Snakemake's state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pixelwizard.io.latent_store import store_attrs
from pixelwizard.pipeline.plan import Layout, Plan, decode_tag
from pixelwizard.pipeline.run_config import RunConfig


@dataclass(frozen=True)
class StageStatus:
    stage: str
    done: int
    missing: int
    failed_ids: list[str]


def last_actions(events: Path) -> dict[tuple[str, str], str]:
    """(stage, id) -> the last recorded action; a torn last line (a writer killed mid-line) is ignored."""
    actions = {}
    if events.exists():
        for line in events.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            actions[event["stage"], event["id"]] = event["action"]
    return actions


def stage_status(run: RunConfig) -> list[StageStatus]:
    layout = Layout(Path(run.out))
    ids = [p.id for shard in Plan.from_run(run).shards.values() for p in shard]
    tag = decode_tag(run.resolved_preset())
    outputs = {
        "text": lambda i: store_attrs(layout.text(i)) is not None,
        "lr": lambda i: store_attrs(layout.lr(i)) is not None,
        "lr_preview": lambda i: layout.lr_preview(i).exists(),
        "hr": lambda i: store_attrs(layout.hr(i)) is not None,
        "decode": lambda i: layout.video(tag, i, ".json").exists() and layout.video(tag, i).exists(),
    }
    if not run.lr_preview:
        del outputs["lr_preview"]
    actions = last_actions(layout.events)
    rows = []
    for stage, exists in outputs.items():
        done = {i for i in ids if exists(i)}
        failed = [i for i in ids if i not in done and actions.get((stage, i)) == "failed"]
        label = f"decode {tag}" if stage == "decode" else stage
        rows.append(StageStatus(label, len(done), len(ids) - len(done) - len(failed), failed))
    return rows
