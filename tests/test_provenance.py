"""What "current" means: every output's expected provenance follows from the run snapshot alone (settings, the
content of the checkpoints the stage reads, its inputs' digests), and its state on disk is judged against it.
Outputs here are real zarr stores and sidecars written with the attributes a stage job gives them."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_outputs

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.pipeline.events import append_event, read_events
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.plan import Plan
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.provenance import Provenance, provenance_digest
from pixelwizard.pipeline.run_config import MAX_JOBS, RunConfig
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES

PROMPTS = (Prompt("fox", "a fox"), Prompt("owl", "an owl", seed=7), Prompt("cat", "a cat", negative_prompt="dogs"))


def in_memory() -> DigestCache:
    return DigestCache(Path(os.devnull), persist=False)


def snapshot(weights, cache=None, prompts=PROMPTS, **changes) -> RunSnapshot:
    settings = changes.pop("settings", {})
    config = RunConfig(ckpt_dir=str(weights["ckpt_dir"]), hr_ckpt=str(weights["hr_ckpt"]), preset="tiny",
                       settings=settings, **changes)
    return RunSnapshot.build(config, prompts, None, cache or in_memory())


def digests(snap: RunSnapshot, tmp_path) -> dict[tuple[str, str], str]:
    provenance = Provenance(snap, Layout(tmp_path))
    return {(s, i.id): provenance.digest(s, i.id) for s in STAGES for i in snap.items(s)}


def changed(a: dict, b: dict) -> set[str]:
    return {stage for (stage, _), digest in a.items() if b[(stage, _)] != digest}


def test_a_setting_changes_its_stage_and_what_follows(weights, tmp_path):
    base = digests(snapshot(weights), tmp_path)
    assert digests(snapshot(weights), tmp_path) == base  # a pure function of the snapshot
    assert changed(base, digests(snapshot(weights, settings={"hr_steps": 5}), tmp_path)) == {"hr", "decode"}
    assert changed(base, digests(snapshot(weights, settings={"overlap": 0}), tmp_path)) == {"decode"}
    assert changed(base, digests(snapshot(weights, settings={"lr_steps": 3}), tmp_path)) == \
        {"lr", "preview", "hr", "decode"}
    assert changed(base, digests(snapshot(weights, settings={"fps": 12}), tmp_path)) == {"preview", "decode"}


def test_checkpoints_count_by_content_and_only_where_read(weights, tmp_path):
    base = digests(snapshot(weights), tmp_path)
    other_hr = tmp_path / "elsewhere" / "model.pt"
    other_hr.parent.mkdir()
    shutil.copy(weights["hr_ckpt"], other_hr)
    moved = snapshot(weights)
    moved = RunSnapshot.build(dataclasses.replace(moved.config, hr_ckpt=str(other_hr)), PROMPTS, None, in_memory())
    assert digests(moved, tmp_path) == base  # the same bytes elsewhere: the same outputs
    data = bytearray(other_hr.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle of the file
    other_hr.write_bytes(bytes(data))
    edited = RunSnapshot.build(moved.config, PROMPTS, None, in_memory())
    assert changed(base, digests(edited, tmp_path)) == {"hr", "decode"}  # not text, uncond, lr or preview
    with_lr = digests(snapshot(weights, lr_ckpt=str(weights["lr_ckpt"])), tmp_path)
    assert changed(base, with_lr) == {"lr", "preview", "hr", "decode"}


def test_per_prompt_seed_and_negative_prompt_enter_the_provenance(weights, tmp_path):
    snap = snapshot(weights)
    provenance = Provenance(snap, Layout(tmp_path))
    assert len(snap.items("uncond")) == 2  # the run's negative prompt and the cat's own
    assert provenance.inputs("lr", "cat")["uncond"] != provenance.inputs("lr", "fox")["uncond"]
    base = digests(snap, tmp_path)
    reseeded = (PROMPTS[0], dataclasses.replace(PROMPTS[1], seed=8), PROMPTS[2])
    assert {k for k, v in digests(snapshot(weights, prompts=reseeded), tmp_path).items() if base[k] != v} == \
        {(s, "owl") for s in ("lr", "preview", "hr", "decode")}


def test_states_and_the_reasons_they_give(weights, tmp_path):
    layout = Layout(tmp_path)
    old = Provenance(snapshot(weights), layout)
    make_outputs(old)
    assert {old.state(s, i.id).state for s in STAGES for i in old.snapshot.items(s)} == {"done"}

    new = Provenance(snapshot(weights, settings={"hr_steps": 5}), layout)
    assert new.state("lr", "fox").state == "done"
    assert new.state("hr", "fox").state == "stale" and new.state("hr", "fox").reasons == ("hr_steps 4 -> 5",)
    assert new.state("decode", "fox").reasons == ("its hr input is stale (hr_steps 4 -> 5)",)

    (tmp_path / "lr" / "owl.zarr" / "zarr.json").unlink()  # damaged: no longer complete
    shutil.rmtree(tmp_path / "text" / "cat.zarr")
    append_event(layout.events, stage="hr", id="fox", digest=new.digest("hr", "fox"), action="failed",
                 error="OutOfMemoryError: CUDA out of memory")
    again = Provenance(new.snapshot, layout, read_events(layout.events)[0])
    assert again.state("lr", "owl").state == "corrupt"
    assert again.state("text", "cat").state == "missing"
    assert again.state("hr", "fox").state == "failed"
    assert again.state("hr", "fox").reasons == ("OutOfMemoryError: CUDA out of memory",)
    shutil.rmtree(tmp_path / "hr" / "cat.zarr")
    assert Provenance(new.snapshot, layout).state("hr", "cat").reasons == ("text missing",)  # blocked by its input


def test_markers_are_named_by_what_their_shard_must_produce(weights, tmp_path):
    layout = Layout(tmp_path)
    plan = Plan(snapshot(weights, shard_sizes={"hr": 2, "decode": 1}), layout)
    assert list(plan.shards["hr"]) == ["00000", "00001"] and len(plan.shards["text"]) == 1
    other = Plan(snapshot(weights, shard_sizes={"hr": 2, "decode": 1}, settings={"overlap": 0}), layout)
    assert other.markers("hr") == plan.markers("hr") and other.markers("decode") != plan.markers("decode")
    assert [plan.input_markers("decode", s) for s in ("00000", "00001", "00002")] == \
        [[plan.marker("hr", "00000")], [plan.marker("hr", "00000")], [plan.marker("hr", "00001")]]
    assert set(plan.input_markers("hr", "00001")) == {plan.marker("text", "00000"), plan.marker("lr", "00000"),
                                                      plan.marker("uncond", "00000")}


@pytest.mark.parametrize("damage", ["edit", "truncate", "delete"])
def test_a_damaged_video_is_not_done(weights, tmp_path, damage):
    provenance = Provenance(snapshot(weights), Layout(tmp_path))
    make_outputs(provenance, ("decode",))
    video = provenance.output("decode", "fox")
    {"edit": lambda: video.write_bytes(b"VIDEO"), "truncate": lambda: video.write_bytes(b"vid"),
     "delete": video.unlink}[damage]()
    assert Provenance(provenance.snapshot, Layout(tmp_path)).state("decode", "fox").state == "corrupt"


def test_the_digest_is_the_record_s_canonical_json(weights, tmp_path):
    prompts = (*PROMPTS, Prompt("u-1.x_y", "ünïcode \u2028 \"quoted\" text", seed=2**63 - 1, negative_prompt="é"))
    for changes in ({}, {"settings": {"hr_shift": 5, "uncond_prompt": "empty", "negative_prompt": "ñ \\ /"}}):
        provenance = Provenance(snapshot(weights, prompts=prompts, **changes), Layout(tmp_path))
        for stage in STAGES:
            for item in provenance.snapshot.items(stage):
                assert provenance.digest(stage, item.id) == provenance_digest(provenance.record(stage, item.id))


def test_a_large_batch_keeps_at_most_max_jobs_per_stage_unless_the_run_sets_its_shard_sizes(weights, tmp_path):
    many = [Prompt(f"p{i:05d}", f"prompt {i}") for i in range(5000)]
    plan = Plan(snapshot(weights, prompts=many), Layout(tmp_path))
    jobs = {stage: len(shards) for stage, shards in plan.shards.items()}  # no videos: no input stage
    assert jobs == {"text": 20, "uncond": 1, "lr": 157, "preview": 157, "hr": 157, "decode": 157}  # 256, 32, 32, ...
    assert all(len(shards) <= MAX_JOBS for shards in plan.shards.values())
    assert len(Plan(snapshot(weights, prompts=many, shard_sizes={"hr": 8}), Layout(tmp_path)).shards["hr"]) == 625
