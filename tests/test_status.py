"""`pixelwizard status`: per stage done / stale / missing / blocked / failed / corrupt, from the outputs' provenance
against the run's configuration, with what changed, the errors, and torn event lines ignored."""

from __future__ import annotations

import subprocess
import sys

import yaml
from conftest import make_outputs
from test_provenance import PROMPTS, snapshot

from pixelwizard.pipeline.events import append_event
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.prompts import prompts_jsonl
from pixelwizard.pipeline.provenance import Provenance


def status_rows(out) -> dict[str, list[str]]:
    shown = subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", "status", str(out)],
                           capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in shown.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 7:
            rows[cells[0]] = cells[1:]
    return rows, shown


def test_status_reads_states_and_reasons_from_the_outputs(weights, tmp_path):
    out = tmp_path / "out"
    layout = Layout(out)
    old = Provenance(snapshot(weights), layout)
    make_outputs(old)
    # The run's configuration as `generate` records it, then with one HR setting changed.
    (out / "prompts.jsonl").write_text(prompts_jsonl(PROMPTS))
    config = {**old.snapshot.config.to_mapping(), "prompts": "prompts.jsonl"}
    (out / "pixelwizard.yaml").write_text(yaml.safe_dump(config))
    rows, _ = status_rows(out)
    assert rows["hr"] == ["3", "·", "·", "·", "·", "·"] and rows["decode p2w-ov1-24fps"][0] == "3"

    config["settings"] = {"hr_steps": 5}
    (out / "pixelwizard.yaml").write_text(yaml.safe_dump(config))
    new = Provenance(snapshot(weights, settings={"hr_steps": 5}), layout)
    append_event(layout.events, stage="hr", id="owl", digest=new.digest("hr", "owl"), action="failed",
                 error="OSError: [Errno 28] No space left on device")
    with layout.events.open("a") as events:
        events.write('{"stage": "hr", "id": "fox", "act')  # a line torn by a kill is ignored
    rows, shown = status_rows(out)
    assert rows["lr"] == ["3", "·", "·", "·", "·", "·"]
    assert rows["hr"] == ["·", "2", "·", "·", "1", "·"]
    assert rows["decode p2w-ov1-24fps"] == ["·", "3", "·", "·", "·", "·"]
    assert "hr: stale fox, cat: hr_steps 4 -> 5" in shown
    assert "hr: failed owl: OSError: [Errno 28] No space left on device" in shown
    assert "its hr input is stale (hr_steps 4 -> 5)" in shown
    assert not layout.digests.exists()  # status writes nothing in OUT: runs cache the checkpoint digests
