import json
import subprocess
import sys
from pathlib import Path

import torch

from pixelwizard.io.latent_store import write_store
from pixelwizard.pipeline.job import append_event
from pixelwizard.pipeline.plan import RUN_CONFIG, Layout
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.status import stage_status

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


def test_a_stage_job_clears_temp_stores_of_killed_writers(tmp_path):
    import os
    import time

    from pixelwizard.pipeline.job import run_prompts
    from pixelwizard.pipeline.plan import StageSpec
    from pixelwizard.pipeline.prompts import Prompt

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\n")
    run = RunConfig(prompts=str(prompts), out=str(tmp_path / "out"), ckpt_dir="unused", hr_ckpt="unused",
                    preset="tiny")
    spec = StageSpec(stage="lr", shard="00000", run=run, prompts=(Prompt("a", "a"),))
    store_dir = tmp_path / "out" / "lr"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = store_dir / f".a.zarr.tmp-{dead.pid}-0badc0de"
    fresh = store_dir / f".b.zarr.tmp-{dead.pid}-0badc0df"
    stale.mkdir(parents=True)
    fresh.mkdir()
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    code = run_prompts(spec, provenance=lambda p: {"id": p.id}, is_done=lambda p, d: True,
                       compute=lambda p, a: None, store_dir=store_dir)
    assert code == 0
    assert not stale.exists() and fresh.exists()  # young temps may belong to a writer on another node
