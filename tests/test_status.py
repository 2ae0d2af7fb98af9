"""`pixelwizard status`: per stage (and per decode setting found in OUT) done / stale / held / missing / blocked /
failed / corrupt, from the outputs' provenance against the run's configuration, with what changed and the errors
as one line per reason (a count and a few ids; every id with --verbose); torn event lines are ignored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import make_outputs
from test_provenance import PROMPTS, snapshot

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.pipeline import parallel
from pixelwizard.pipeline.events import append_event, last_failures
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.report import ReportData
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.status import MAX_LINES, STATES, collect

TAG, OV0 = "p2w-ov1-24fps", "p2w-ov0-24fps"


def record(run: RunSnapshot, out: Path) -> None:
    """OUT configured as `generate` leaves it for `run`."""
    run.as_recorded().record(Layout(out))


def status(out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", "status", str(out), *args],
                          capture_output=True, text=True, check=check, env={**os.environ, "COLUMNS": "200"})


def status_rows(out: Path, *args: str) -> tuple[dict[str, list[str]], str]:
    shown = status(out, *args).stdout
    rows = {}
    for line in shown.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 1 + len(STATES):
            rows[cells[0]] = cells[1:]
    return rows, shown


def row(**counts: int) -> list[str]:
    return [f"{counts[s]:,}" if counts.get(s) else "·" for s in STATES]


def test_status_reads_states_and_reasons_from_the_outputs(weights, tmp_path):
    out = tmp_path / "out"
    layout = Layout(out)
    old = Provenance(snapshot(weights), layout)
    make_outputs(old)
    record(old.snapshot, out)
    rows, _ = status_rows(out)
    assert rows["hr"] == row(done=3) and rows[f"decode {TAG}"] == row(done=3)

    new = Provenance(snapshot(weights, settings={"hr_steps": 5}), layout)
    record(new.snapshot, out)
    append_event(layout.events, stage="hr", id="owl", digest=new.digest("hr", "owl"), action="failed",
                 error="OSError: [Errno 28] No space left on device")
    with layout.events.open("a") as events:
        events.write('{"stage": "hr", "id": "fox", "act')  # a line torn by a kill is ignored
    rows, shown = status_rows(out)
    assert rows["lr"] == row(done=3)
    assert rows["hr"] == row(stale=2, failed=1)
    assert rows[f"decode {TAG}"] == row(stale=3)
    assert "  hr: 2 stale (fox, cat): hr_steps 4 -> 5\n" in shown
    assert "  hr: 1 failed (owl): OSError: [Errno 28] No space left on device\n" in shown
    assert f"  decode {TAG}: 2 stale (fox, cat): its hr input is stale (hr_steps 4 -> 5)\n" in shown
    assert f"  decode {TAG}: 1 stale (owl): its hr input is failed (OSError: [Errno 28] No space left on device)\n" \
        in shown
    assert not (layout.digests).exists()  # status writes nothing (the checkpoint digests are computed again)


def test_every_decode_setting_in_out_has_its_row(weights, tmp_path):
    out = tmp_path / "out"
    layout = Layout(out)
    run = Provenance(snapshot(weights), layout)
    make_outputs(run)
    redecode = Provenance(snapshot(weights, settings={"overlap": 0}), layout)  # `pixelwizard decode OUT --overlap 0`
    make_outputs(redecode, ("decode",))
    (out / "decode" / OV0 / "owl.json").unlink()  # one re-decoded video lost its JSON: that video is missing
    record(run.snapshot, out)
    rows, _ = status_rows(out)
    assert rows[f"decode {TAG}"] == row(done=3) and rows[f"decode {OV0}"] == row(done=2, missing=1)


def test_prompts_held_back_by_until_or_only_are_held_not_missing(weights, tmp_path):
    out = tmp_path / "until"
    lr_only = Provenance(snapshot(weights, until="lr"), Layout(out))  # `generate --until lr`
    make_outputs(lr_only, ("text", "uncond", "lr", "preview"))
    record(lr_only.snapshot, out)
    rows, shown = status_rows(out)
    assert rows["lr"] == row(done=3) and rows["hr"] == row(held=3) and rows[f"decode {TAG}"] == row(held=3)
    assert "  hr: 3 held (fox, owl, cat): --until lr\n" in shown

    out = tmp_path / "only"
    chosen = RunSnapshot.build(snapshot(weights).config, PROMPTS, ("owl",), DigestCache(os.devnull, persist=False))
    make_outputs(Provenance(chosen, Layout(out)))  # `generate --only` with owl alone
    record(chosen, out)
    rows, shown = status_rows(out)
    assert rows["lr"] == row(done=3) and rows["hr"] == row(done=1, held=2) and rows[f"decode {TAG}"] == row(done=1,
                                                                                                             held=2)
    assert "  hr: 2 held (fox, cat): --only: not among its ids\n" in shown


def test_reasons_are_grouped_and_a_large_run_fits_a_screen(weights, tmp_path):
    out = tmp_path / "out"
    layout = Layout(out)
    many = [Prompt(f"p{i:03d}", f"prompt number {i}") for i in range(120)]
    made = Provenance(snapshot(weights, prompts=many), layout)
    make_outputs(made)
    reseeded = snapshot(weights, prompts=many, settings={"seed": 1})  # each prompt's stage seeds change
    record(reseeded, out)
    changed = Provenance(reseeded, layout)
    for item in many[:40]:  # forty failures, each its own error
        append_event(layout.events, stage="hr", id=item.id, digest=changed.digest("hr", item.id), action="failed",
                     error=f"RuntimeError: case {item.id[1:]}")
    rows, shown = status_rows(out)
    assert rows["lr"] == row(stale=120) and rows["hr"] == row(stale=80, failed=40)
    reasons = [line for line in shown.splitlines() if line.startswith("  ")]
    assert "  lr: 120 stale (p000, p001, p002, ... +117): seed changed" in reasons
    assert "  preview: 120 stale (p000, p001, p002, ... +117): its lr input is stale (seed changed)" in reasons
    assert len(reasons) == MAX_LINES and reasons[-1].startswith("  ... ") and "--verbose" in reasons[-1]
    assert len(shown.splitlines()) < 40

    _, verbose = status_rows(out, "--verbose")
    every = ", ".join(f"p{i:03d}" for i in range(120))
    assert f"  lr: 120 stale ({every}): seed changed" in verbose.splitlines()
    assert "  hr: 1 failed (p007): RuntimeError: case 007" in verbose.splitlines()


def test_status_of_a_directory_that_is_not_a_run_says_which(tmp_path):
    for path, problem in ((tmp_path / "typo", "no such directory"), (tmp_path, "no run configuration here"),
                          (tmp_path / "[/x]", "[/x]: no such directory")):  # a name rich would read as markup
        result = status(path, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert problem in " ".join(result.stderr.split())


COUNT_READS = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    out = Path(sys.argv[1])
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
    from pixelwizard.pipeline import status

    rows = status.collect(status.last_snapshot(out), status.Layout(out), every_tag=True)
    outputs = [p for p in opened if p.startswith(str(out)) and "/.pixelwizard/" not in p and "/logs/" not in p
               and p not in (str(out / "pixelwizard.yaml"), str(out / "prompts.jsonl"))]
    read = [p for p in outputs if "/c/" in p or p.endswith((".mp4", ".png"))]
    print(json.dumps({"counts": {r.label: dict(r.counts) for r in rows}, "read": read, "opened": outputs}))
""")


def first_status(directory: Path) -> dict:
    """The states `status` finds in a fresh process, and the files of outputs it opened (read: data, hashed)."""
    probe = subprocess.run([sys.executable, "-c", COUNT_READS, str(directory)], capture_output=True, text=True,
                           check=True)
    return json.loads(probe.stdout)


def test_a_copied_run_is_not_read_again_but_a_changed_file_is_found(weights, tmp_path):
    out = tmp_path / "out"
    run = Provenance(snapshot(weights), Layout(out))
    make_outputs(run)
    record(run.snapshot, out)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(out), str(copy)], check=True)  # new inodes, the same sizes and mtimes

    seen = first_status(copy)
    assert seen["read"] == []  # no chunk and no video read (hashed) again
    assert all(counts == {"done": 3} or label == "uncond" for label, counts in seen["counts"].items()), seen["counts"]
    video = copy / "decode" / TAG / "fox.mp4"
    video.write_bytes(video.read_bytes()[::-1])  # same size, other content: the write moves the mtime
    seen = first_status(copy)
    assert seen["read"] == [str(video)]
    assert seen["counts"][f"decode {TAG}"] == {"done": 2, "corrupt": 1}


def test_prompts_judged_in_parts_on_several_cores_give_the_same_status_and_report(weights, tmp_path, monkeypatch):
    out = tmp_path / "out"
    layout = Layout(out)
    make_outputs(Provenance(snapshot(weights), layout))
    make_outputs(Provenance(snapshot(weights, settings={"overlap": 0}), layout), ("decode",))
    changed = Provenance(snapshot(weights, settings={"hr_steps": 5}), layout)
    append_event(layout.events, stage="hr", id="owl", digest=changed.digest("hr", "owl"), action="failed",
                 error="RuntimeError: boom")
    monkeypatch.setattr(parallel, "MIN_PER_PROCESS", 1)  # a part per prompt, each in its own process
    one, three = (collect(changed.snapshot, layout, every_tag=True, processes=n) for n in (1, 3))
    assert [(r.label, r.counts, r.problems) for r in one] == [(r.label, r.counts, r.problems) for r in three]
    assert one[2].counts == {"done": 3} and one[4].counts == {"stale": 2, "failed": 1}
    one, three = ({**ReportData(changed.snapshot, layout, n).to_dict(), "made": None} for n in (1, 3))
    assert one == three


def test_an_indexed_run_is_judged_from_stamps_and_a_changed_file_is_still_found(weights, tmp_path):
    out = tmp_path / "out"
    run = Provenance(snapshot(weights), Layout(out))
    make_outputs(run, index=True)  # with the stamp index its jobs write
    record(run.snapshot, out)
    seen = first_status(out)
    assert seen["opened"] == []  # no store, video or JSON of an output opened: a stat of each file
    assert all(counts == {"done": 3} or label == "uncond" for label, counts in seen["counts"].items()), seen["counts"]
    chunk = out / "hr" / "fox.zarr" / "x" / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[::-1])  # the same size; the write moves its mtime
    (out / "lr" / "owl.zarr" / "x" / "zarr.json").unlink()
    video = out / "decode" / TAG / "cat.mp4"
    video.write_bytes(b"VIDEO")
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns - 10**9))  # even an older mtime
    seen = first_status(out)
    assert seen["counts"]["hr"] == {"done": 2, "corrupt": 1} and seen["counts"]["lr"] == {"done": 2, "corrupt": 1}
    assert seen["counts"][f"decode {TAG}"] == {"done": 2, "corrupt": 1}
    assert sorted(seen["read"]) == sorted([str(chunk), str(video)])  # read again: the changed files only


def test_an_attempt_s_first_failure_is_its_cause():
    """Rank 0 runs out of space, then rank 1, in a collective with it, fails on the closed connection: the status
    says the first; a new attempt's failure replaces an old one's, and a computed output has none."""
    key = {"stage": "decode", "id": "fox", "digest": "d"}
    cause = {**key, "action": "failed", "error": "OSError: [Errno 28] No space left on device"}
    consequence = {**key, "action": "failed", "error": "RuntimeError: [gloo] Connection closed by peer"}
    attempt = [{**key, "action": "started"}, cause, consequence]
    assert last_failures(attempt)[("decode", "fox", "d")] is cause
    retried = {**key, "action": "failed", "error": "RuntimeError: out of memory"}
    assert last_failures([*attempt, {**key, "action": "started"}, retried])[("decode", "fox", "d")] is retried
    assert last_failures([*attempt, {**key, "action": "started"}, {**key, "action": "computed"}]) == {}
