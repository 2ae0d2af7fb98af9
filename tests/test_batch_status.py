import json
import subprocess
import sys
from pathlib import Path

import torch

from pixelwizard.batch_status import stage_status
from pixelwizard.latents import write_store
from pixelwizard.run_config import RunConfig
from pixelwizard.stage import append_event
from pixelwizard.workflow import RUN_CONFIG, Layout

REPO = Path(__file__).resolve().parents[1]


def test_status_counts_done_missing_and_failed(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "text": f"prompt {i}"}) + "\n" for i in ("a", "b", "c")))
    out = tmp_path / "out"
    run = RunConfig(prompts=str(prompts), out=str(out), ckpt_dir="unused", hr_ckpt="unused", preset="tiny",
                    lr_preview=False)
    out.mkdir()
    run.save(out / RUN_CONFIG)
    layout = Layout(out)
    for prompt_id in ("a", "b", "c"):
        write_store(layout.text(prompt_id), {"context": torch.zeros(2, 4)}, {"digest": prompt_id})
    write_store(layout.lr("a"), {"latent": torch.zeros(48, 1, 2, 2)}, {"digest": "lr-a"})
    append_event(layout.events, stage="lr", id="b", shard="00000", action="failed", error="boom")
    append_event(layout.events, stage="lr", id="c", shard="00000", action="failed", error="boom")
    append_event(layout.events, stage="lr", id="c", shard="00000", action="computed")  # retried: not failed now
    with layout.events.open("a") as events:
        events.write('{"stage": "hr", "id": "a", "act')  # a line torn by a kill is ignored

    rows = {row.stage: row for row in stage_status(run)}
    assert list(rows) == ["text", "lr", "hr", "decode p2w-ov1-24fps"]
    assert (rows["text"].done, rows["text"].missing, rows["text"].failed_ids) == (3, 0, [])
    assert (rows["lr"].done, rows["lr"].missing, rows["lr"].failed_ids) == (1, 1, ["b"])
    assert (rows["hr"].done, rows["hr"].missing) == (0, 3)

    shown = subprocess.run([sys.executable, str(REPO / "cli.py"), "status", str(out)], capture_output=True,
                           text=True, check=True).stdout
    lr_line = next(line for line in shown.splitlines() if line.startswith("│ lr "))
    assert [cell.strip() for cell in lr_line.strip("│").split("│")] == ["lr", "1", "1", "1", "b"]
