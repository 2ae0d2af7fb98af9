"""`pixelwizard report`: the data the page shows, gathered from real outputs (zarr stores, videos with their JSON)
and the event log: states with their reasons, seconds of the current outputs, every decode setting side by side with
its quality numbers, the --only selection, batch counts and throughput; and the page files it writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import yaml
from conftest import make_outputs
from test_provenance import PROMPTS, in_memory, snapshot

from pixelwizard.io.sidecar import read_sidecar, write_sidecar
from pixelwizard.pipeline.events import append_event
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.prompts import prompts_jsonl
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.report import DATA_GLOBAL, ReportData
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.status import last_snapshot

TAG, OV0 = "p2w-ov1-24fps", "p2w-ov0-24fps"  # the tiny preset's decode settings, and a re-decode without overlap
IDS = [p.id for p in PROMPTS]  # fox, owl, cat


def quality(i: int) -> dict:
    """Quality numbers as the decode stage writes them: nested, with lists, strings and nulls among the numbers."""
    return {"frames": 9, "mhd_mse": 0.01 + i / 1000, "sharpness": 40.0 - i,
            "flicker": {"mean": 0.5 + i, "worst": 2.0 + i, "worst_pair": [3, 4]},
            "seam": {"overall": 1.25 - i / 10, "per_boundary": [1.25], "boundaries": [128], "axis": "w"},
            "note": None}


def shown_quality(i: int) -> dict:  # what the page sorts by: the numbers above by dotted name, lists left out
    return {"frames": 9, "mhd_mse": 0.01 + i / 1000, "sharpness": 40.0 - i, "flicker.mean": 0.5 + i,
            "flicker.worst": 2.0 + i, "seam.overall": 1.25 - i / 10}


def add_quality(provenance: Provenance, offset: int) -> None:
    for i, prompt_id in enumerate(IDS):
        sidecar = provenance.layout.sidecar("decode", prompt_id, provenance.tag("decode"))
        attrs = {k: v for k, v in read_sidecar(sidecar).items() if k != "files"}
        write_sidecar(sidecar, {**attrs, "metrics": quality(i + offset)}, [provenance.output("decode", prompt_id)])


SECONDS = {"text": 0.5, "uncond": 0.25, "lr": 3.0, "preview": 1.0, "hr": 10.0, "decode": 4.0}


def record_computed(provenance: Provenance, stages, start: float) -> None:
    """A computed event per output, the prompts one after another from `start` (owl's hr takes 5 s longer)."""
    now = start
    for stage in stages:
        for item in provenance.snapshot.items(stage):
            seconds = SECONDS[stage] + (5.0 if (stage, item.id) == ("hr", "owl") else 0.0)
            now += seconds
            append_event(provenance.layout.events, stage=stage, id=item.id, action="computed", seconds=seconds,
                         time=now, digest=provenance.digest(stage, item.id))


def make_run(weights, out) -> tuple[Provenance, Provenance]:
    """A finished run (outputs and events), re-decoded without overlap; OUT configured as `generate` leaves it."""
    layout = Layout(out)
    run = Provenance(snapshot(weights), layout)
    make_outputs(run)
    record_computed(run, ("text", "uncond", "lr", "preview", "hr", "decode"), start=1000.0)
    redo = Provenance(snapshot(weights, settings={"overlap": 0}), layout)
    make_outputs(redo, ("decode",))
    record_computed(redo, ("decode",), start=5000.0)
    add_quality(run, 0)
    add_quality(redo, 10)
    (out / "prompts.jsonl").write_text(prompts_jsonl(PROMPTS))
    (out / "pixelwizard.yaml").write_text(yaml.safe_dump({**run.snapshot.config.to_mapping(),
                                                          "prompts": "prompts.jsonl"}))
    return run, redo


def test_report_data_of_a_finished_run(weights, tmp_path):
    out = tmp_path / "out"
    run, _ = make_run(weights, out)
    data = ReportData(run.snapshot, Layout(out)).to_dict()
    assert data["tags"] == [TAG, OV0] and data["main_tag"] == TAG
    assert data["stages"] == ["text", "lr", "preview", "hr"]
    assert data["metrics"] == sorted(shown_quality(0))
    assert data["run"]["decodes"] == {TAG: {"num_patches": 2, "patch_dim": "w", "overlap": 1, "fps": 24},
                                      OV0: {"num_patches": 2, "patch_dim": "w", "overlap": 0, "fps": 24}}
    assert data["run"]["checkpoints"] == run.snapshot.identities
    prompts = {p["id"]: p for p in data["prompts"]}
    assert list(prompts) == IDS
    assert prompts["owl"]["seed"] == "7" and prompts["fox"]["seed"] == "0"  # the run's base seed
    assert prompts["cat"]["negative_prompt"] == "dogs" and "negative_prompt" not in prompts["fox"]
    for i, prompt_id in enumerate(IDS):
        row = prompts[prompt_id]
        assert {s: o["state"] for s, o in row["stages"].items()} == dict.fromkeys(data["stages"], "done")
        assert row["stages"]["lr"]["seed"] == str(run.record("lr", prompt_id)["seed"])  # as the noise was drawn
        hr = SECONDS["hr"] + (5.0 if prompt_id == "owl" else 0.0)
        assert {s: o["seconds"] for s, o in row["stages"].items()} == {"text": 0.5, "lr": 3.0, "preview": 1.0, "hr": hr}
        assert row["stages"]["preview"]["video"] == f"../preview/{prompt_id}.mp4"
        assert (out / "report" / row["stages"]["preview"]["video"]).resolve() == out / "preview" / f"{prompt_id}.mp4"
        assert row["seconds"] == 0.5 + 3.0 + 1.0 + hr + 4.0  # its stages and the run's decode
        for tag, offset in ((TAG, 0), (OV0, 10)):
            decoded = row["decodes"][tag]
            assert decoded["state"] == "done" and decoded["seconds"] == 4.0
            assert decoded["video"] == f"../decode/{tag}/{prompt_id}.mp4" and "sheet" not in decoded  # no PNG here
            assert decoded["metrics"] == shown_quality(i + offset)

    batch = data["batch"]
    counts = {s["label"]: (s["total"], s["counts"]["done"], s["timed"], s["seconds"]) for s in batch["stages"]}
    assert counts == {"text": (3, 3, 3, 1.5), "uncond": (2, 2, 2, 0.5), "lr": (3, 3, 3, 9.0),
                      "preview": (3, 3, 3, 3.0), "hr": (3, 3, 3, 35.0), f"decode {TAG}": (3, 3, 3, 12.0),
                      f"decode {OV0}": (3, 3, 3, 12.0)}
    assert [(s["id"], s["seconds"]) for s in batch["slowest"]] == [("owl", 23.5), ("fox", 18.5), ("cat", 18.5)]
    # The run's outputs were computed back to back for 61 s; the re-decode (other settings) does not count.
    assert batch["busy_s"] == 61.0 and batch["span_s"] == 61.0
    assert batch["videos"] == 3 and batch["videos_per_hour"] == round(3 * 3600 / 61, 2)
    assert batch["failed"] == []


def test_report_data_says_what_is_not_done_and_why(weights, tmp_path):
    out = tmp_path / "out"
    run, _ = make_run(weights, out)
    layout = Layout(out)
    changed = Provenance(snapshot(weights, settings={"hr_steps": 5}), layout)
    append_event(layout.events, stage="hr", id="cat", digest=changed.digest("hr", "cat"), action="failed",
                 error="OutOfMemoryError: CUDA out of memory")
    data = ReportData(changed.snapshot, layout).to_dict()
    stages = {s["label"]: (s["counts"]["done"], s["counts"]["stale"], s["counts"]["failed"], s["seconds"])
              for s in data["batch"]["stages"]}
    assert stages["lr"] == (3, 0, 0, 9.0) and stages["hr"] == (0, 2, 1, None)
    assert stages[f"decode {TAG}"] == stages[f"decode {OV0}"] == (0, 3, 0, None)
    assert data["batch"]["failed"] == [{"label": "hr", "id": "cat", "why": "OutOfMemoryError: CUDA out of memory"}]
    assert data["batch"]["videos"] == 0 and data["batch"]["videos_per_hour"] == 0
    prompts = {p["id"]: p for p in data["prompts"]}
    fox, cat = prompts["fox"], prompts["cat"]
    assert fox["stages"]["lr"] == {"state": "done", "seed": str(run.record("lr", "fox")["seed"]), "seconds": 3.0}
    assert fox["stages"]["hr"]["state"] == "stale" and fox["stages"]["hr"]["why"] == "hr_steps 4 -> 5"
    assert "seconds" not in fox["stages"]["hr"]  # the time was spent on an output of other settings
    assert cat["stages"]["hr"]["state"] == "failed"
    assert cat["stages"]["hr"]["why"] == "OutOfMemoryError: CUDA out of memory"
    for tag in (TAG, OV0):  # the re-decode of the old HR latents is stale too, and says why
        assert fox["decodes"][tag]["state"] == "stale"
        assert fox["decodes"][tag]["why"] == "its hr input is stale (hr_steps 4 -> 5)"
        assert fox["decodes"][tag]["video"] == f"../decode/{tag}/fox.mp4"  # still there to look at
    assert fox["seconds"] == 0.5 + 3.0 + 1.0  # the current outputs only

    only = RunSnapshot.build(run.snapshot.config, PROMPTS, ("owl",), in_memory())
    shutil.rmtree(out / "hr" / "cat.zarr")
    for tag in (TAG, OV0):
        (out / "decode" / tag / "cat.json").unlink()
    data = ReportData(only, layout).to_dict()
    prompts = {p["id"]: p for p in data["prompts"]}
    assert prompts["owl"]["stages"]["hr"]["state"] == prompts["fox"]["stages"]["hr"]["state"] == "done"  # made before
    held = {"state": "held", "why": "--only: not among its ids"}
    assert {k: v for k, v in prompts["cat"]["stages"]["hr"].items() if k != "seed"} == held
    assert prompts["cat"]["decodes"][TAG] == prompts["cat"]["decodes"][OV0] == held  # not blocked: held back
    counts = {s["label"]: s["counts"] for s in data["batch"]["stages"]}
    assert (counts["hr"]["done"], counts["hr"]["held"]) == (2, 1) and data["states"][2] == "held"


def test_report_command_writes_a_page_that_needs_no_network(weights, tmp_path):
    out = tmp_path / "out"
    make_run(weights, out)
    shown = subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", "report", str(out)],
                           capture_output=True, text=True, check=True).stdout
    assert f"report: {out / 'report' / 'index.html'}" in shown and "3 prompts" in shown
    script = (out / "report" / "data.js").read_text()
    prefix = f"window.{DATA_GLOBAL} = "
    assert script.startswith(prefix) and script.endswith(";\n")
    written = json.loads(script[len(prefix):-2])
    expected = ReportData(last_snapshot(out), Layout(out)).to_dict()
    assert {**written, "made": None} == {**expected, "made": None}
    page = (out / "report" / "index.html").read_text()
    assert '<script src="data.js"></script>' in page and '<script src="report.js"></script>' in page
    for name in ("index.html", "report.js", "report.css"):
        text = (out / "report" / name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text

    missing = subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", "report", str(tmp_path / "none")],
                             capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})  # one line
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: {tmp_path / 'none'}: no such directory; give the output directory " \
                                     "of a run (its --out)"

    shutil.rmtree(out / "report")
    (out / "report").write_text("not a folder")
    unwritable = subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", "report", str(out)],
                                capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr
    assert unwritable.stderr.startswith(f"error: {out / 'report'}: not a folder, but pixelwizard writes into a "
                                        "folder there")
    assert len(unwritable.stderr.strip().splitlines()) == 1
