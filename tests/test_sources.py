"""Source files in the provenance: a video's or latent's content (not its path) is the identity of everything made
from it, so replacing it with other content reruns exactly that prompt's outputs and moving it reruns nothing; a
video prompt's text counts only where the text is read; what is taken from a file (its clip) is read once per
content and kept in the run's digest cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest
import torch
from conftest import make_outputs
from media import write_image, write_video
from test_provenance import digests, in_memory, snapshot

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.sources import InputProblems, notes

PER_PROMPT = {"text", "input", "lr", "preview", "hr", "decode"}


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    torch.save(torch.zeros(48, 3, 4, 8), folder / "anchor.pt")
    return {"land": write_video(folder / "land.mp4", 14, 96, 64), "port": write_video(folder / "port.mp4", 9, 64, 96),
            "anchor": folder / "anchor.pt", "still": write_image(folder / "still.png", 64, 48)}


def prompts(inputs, **changes):
    base = {"fox": Prompt("fox", "a fox"), "land": Prompt("land", "", video=str(inputs["land"])),
            "port": Prompt("port", "a tower", video=str(inputs["port"])),
            "saved": Prompt("saved", "waves", latent=str(inputs["anchor"])),
            "still": Prompt("still", "a cat", image=str(inputs["still"]))}
    return tuple(dataclasses.replace(base[k], **changes.get(k, {})) for k in base)


def by_prompt(diff: set[tuple[str, str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for stage, item_id in diff:
        found.setdefault(item_id, set()).add(stage)
    return found


def changed_outputs(a: dict, b: dict) -> dict[str, set[str]]:
    return by_prompt({key for key in a if b.get(key) != a[key]} | {key for key in b if key not in a})


def test_a_source_s_content_is_the_identity_of_what_is_made_from_it(weights, inputs, tmp_path):
    base = digests(snapshot(weights, prompts=prompts(inputs)), tmp_path)
    write_video(inputs["port"], 9, 64, 96, rate=25)  # other content under the same name
    assert changed_outputs(base, digests(snapshot(weights, prompts=prompts(inputs)), tmp_path)) == \
        {"port": PER_PROMPT - {"text"}}
    write_video(inputs["port"], 9, 64, 96)  # the old content back
    moved = inputs["land"].with_name("elsewhere.mp4")
    shutil.copy(inputs["land"], moved)
    assert digests(snapshot(weights, prompts=prompts(inputs, land={"video": str(moved)})), tmp_path) == base
    torch.save(torch.ones(48, 3, 4, 8), inputs["anchor"])
    write_image(inputs["still"], 64, 50)
    assert changed_outputs(base, digests(snapshot(weights, prompts=prompts(inputs)), tmp_path)) == \
        {p: {"lr", "preview", "hr", "decode"} for p in ("saved", "still")}  # no input clip for these


def test_a_video_prompt_s_text_and_start_count_where_they_are_read(weights, inputs, tmp_path):
    base = digests(snapshot(weights, prompts=prompts(inputs)), tmp_path)
    retitled = digests(snapshot(weights, prompts=prompts(inputs, port={"text": "a lighthouse"})), tmp_path)
    assert changed_outputs(base, retitled) == {"port": {"text", "hr", "decode"}}  # not its clip, anchor, preview
    later = digests(snapshot(weights, prompts=prompts(inputs, land={"start": 0.1})), tmp_path)
    assert changed_outputs(base, later) == {"land": PER_PROMPT - {"text"}}


def test_every_output_names_its_source_and_a_stale_one_says_what_changed(weights, inputs, tmp_path):
    layout = Layout(tmp_path / "out")
    make_outputs(Provenance(snapshot(weights, prompts=prompts(inputs)), layout))
    provenance = Provenance(snapshot(weights, prompts=prompts(inputs)), layout)
    record = provenance.record("decode", "port")
    assert record["source"]["kind"] == "video" and record["source"]["frames"] == 9
    assert record["source"]["sha256"] == hashlib.sha256(inputs["port"].read_bytes()).hexdigest()
    assert "text" not in provenance.record("lr", "port") and "text" in provenance.record("hr", "port")
    assert set(provenance.inputs("lr", "port")) == set() and provenance.spec("lr", "port").checkpoints == ("vae",)
    write_video(inputs["port"], 13, 64, 96)
    stale = Provenance(snapshot(weights, prompts=prompts(inputs)), layout)
    assert stale.state("lr", "port").reasons == ("its video's content changed",)
    assert stale.state("decode", "port").reasons[0] == "its video's content changed"
    assert stale.state("lr", "land").done and stale.state("decode", "fox").done


def test_a_batch_of_videos_alone_is_planned_and_judged_beside_a_re_decode(weights, inputs, tmp_path):
    """No prompt of it samples an anchor, so the LR DiT is not hashed: nothing may need its identity (the plan's
    digests, a re-decode's outputs judged against the run's: the upload failed here with KeyError 'lr_dit')."""
    run = snapshot(weights, prompts=tuple(p for p in prompts(inputs) if p.source == "video"))
    assert "lr_dit" not in run.identities
    layout = Layout(tmp_path)
    main = Provenance(run, layout)
    main.compute_digests(["decode"])
    assert set(main.digests("lr")) == {"land", "port"}
    redecode = Provenance(dataclasses.replace(run, config=run.config.with_settings(overlap=0)), layout, base=main)
    assert redecode.digest("hr", "port") == main.digest("hr", "port")
    assert redecode.state("decode", "port").state == "blocked"


def test_a_clip_is_read_once_per_content(weights, inputs, tmp_path):
    cache_path = tmp_path / "digests.json"
    first = snapshot(weights, cache=DigestCache(cache_path), prompts=prompts(inputs))
    assert first.sources["land"]["available"] == 14 and first.clip(first.prompt("land")).frames == 9  # tiny: 9
    entries = json.loads(cache_path.read_text())
    facts = [key for key in entries if key.startswith("sha256:")]
    assert len(facts) == 4  # one content per source file
    for key in facts:  # what is kept is what is used: a doctored fact proves the file was not read again
        entries[key] = {name: {**value, "frames": 5} for name, value in entries[key].items()}
    cache_path.write_text(json.dumps(entries))
    again = snapshot(weights, cache=DigestCache(cache_path), prompts=prompts(inputs))
    assert again.sources["land"]["frames"] == 5
    assert snapshot(weights, prompts=prompts(inputs)).sources["land"]["frames"] == 9  # a fresh cache reads it


def test_every_unusable_source_is_reported_at_once(weights, inputs, tmp_path):
    (tmp_path / "in" / "text.mp4").write_text("no video\n")
    bad = (Prompt("a", "", video=str(tmp_path / "in" / "text.mp4")),
           Prompt("b", "", video=str(tmp_path / "in" / "gone.mp4")), *prompts(inputs))
    with pytest.raises(InputProblems) as caught:
        RunSnapshot.build(snapshot(weights).config, bad, None, in_memory())
    assert [line.split(": ")[0] for line in caught.value.problems] == [bad[0].video, bad[1].video]


def test_the_hr_first_frame_pin_counts_for_image_prompts_only(weights, inputs, tmp_path):
    base = digests(snapshot(weights, prompts=prompts(inputs)), tmp_path)
    pinned = digests(snapshot(weights, prompts=prompts(inputs), settings={"hr_first_frame": True}), tmp_path)
    assert changed_outputs(base, pinned) == {"still": {"hr", "decode"}}


def test_the_run_says_what_it_does_with_its_sources(weights, inputs):
    snap = snapshot(weights, prompts=prompts(inputs), settings={"frames": 13})
    assert notes(snap.prompts, snap.sources, snap.preset) == [
        "1 video without a prompt text runs with the empty prompt (give one with --prompt or \"text\" in the JSONL "
        "line)",
        f"2 sources shorter than 13 frames: each runs at the largest 4n+1 it has ({inputs['port']}: 9 frames)"]
    assert snap.preset_for(snap.prompt("port")).frames == 9 and snap.preset_for(snap.prompt("still")).frames == 13
