"""Work cut over processes for runs of 100,000 prompts: a check run beside the plan, every output's digest computed
in parts, and the stamp index read by shard, each giving what the one-process way gives."""

from __future__ import annotations

import pytest
import torch
from test_provenance import snapshot

from pixelwizard.checkpoints.preflight import CheckpointProblems
from pixelwizard.io.latent_store import write_store
from pixelwizard.pipeline import parallel
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.pipeline.stamp_index import ShardIndex, StampIndex, store_files


def broken_checkpoints(*problems: str) -> None:
    raise CheckpointProblems(list(problems))


def test_work_beside_gives_its_result_or_its_error_with_what_it_carries():
    with parallel.beside(pow, 2, 10) as result:
        assert result() == 1024
    with parallel.beside(broken_checkpoints, "a.pt: truncated", "b.pt: missing") as result:
        with pytest.raises(CheckpointProblems) as raised:
            result()
    assert raised.value.problems == ["a.pt: truncated", "b.pt: missing"]
    assert str(raised.value) == "a.pt: truncated\nb.pt: missing"


def test_digests_computed_in_parts_are_those_asked_one_by_one(weights, tmp_path, monkeypatch):
    prompts = [Prompt(f"p{i}", f"prompt {i % 3}", seed=i if i % 2 else None,
                      negative_prompt="blur" if i % 4 == 1 else None) for i in range(7)]
    run = snapshot(weights, prompts=prompts)
    run = type(run)(run.config, run.prompts, ("p1", "p4", "p5"), run.identities)  # --only: hr and decode of three
    monkeypatch.setattr(parallel, "MIN_PER_PROCESS", 1)  # a part per prompt, each in its own process
    parted, one = Provenance(run, Layout(tmp_path)), Provenance(run, Layout(tmp_path))
    parted.compute_digests(["decode", "preview"], processes=3)
    for stage in STAGES:
        assert parted.digests(stage) == {item.id: one.digest(stage, item.id) for item in run.items(stage)}, stage
    assert len(parted.digests("uncond")) == 2 and len(parted.digests("hr")) == 3


def test_an_output_indexed_by_two_jobs_counts_while_either_entry_holds(tmp_path):
    layout = Layout(tmp_path)
    store = layout.output("lr", "fox")
    write_store(store, {"x": torch.zeros(2)}, {"digest": "old"})
    first = ShardIndex(layout, "lr", None, "00000")
    first.add("fox", store_files(store), "old")
    first.save()
    write_store(store, {"x": torch.ones(2)}, {"digest": "new"})  # written again by a later job of another shard
    second = ShardIndex(layout, "lr", None, "00001")
    second.add("fox", store_files(store), "new")
    second.save()
    assert StampIndex(layout, "lr", None).lookup("fox")["digest"] == "new"
    first.add("fox", store_files(store), "new")  # the first shard's job ran again over the same store
    first.save()
    second.outputs["fox"][2] = "0" * 24  # and the second's entry no longer holds
    second.save()
    assert StampIndex(layout, "lr", None).lookup("fox")["digest"] == "new"
    (store / "x" / "c" / "0").write_bytes(b"changed")
    assert StampIndex(layout, "lr", None).lookup("fox") is None  # a changed file: no entry holds
