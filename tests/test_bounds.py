"""Nothing outside OUT is touched, nothing a user owns is deleted, and one rule per input everywhere: every command
that writes, with links and folders planted where its outputs go; the JSON-lines reader and the prompt rules against
awkward input; the one check of decode settings against the decode and the seam meter; read-only commands and dry
runs that leave OUT as it was. Each test reproduces one way this went wrong."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS, TAG, copy_run, generate, generate_args, pixelwizard, write_prompts
from test_reliability import one_line_error

from pixelwizard import Pipeline
from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.io.files import (
    OutputPathError,
    check_output,
    open_output,
    remove_output,
    remove_stale_temps,
    write_atomic,
)
from pixelwizard.io.latent_store import read_store, write_store
from pixelwizard.io.lines import json_line, parse_json, read_lines
from pixelwizard.io.patch_geometry import DecodeSettingsError, check_decode_settings, patch_ranges, seam_boundaries
from pixelwizard.io.patched_decode import blend_weights
from pixelwizard.io.quality import QualityMeter
from pixelwizard.pipeline import checks
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.plan import Plan
from pixelwizard.pipeline.presets import PresetError, get_preset
from pixelwizard.pipeline.prompts import (
    FIELDS,
    KNOWN_KEYS,
    Prompt,
    PromptError,
    PromptFileError,
    make_prompt,
    prompts_jsonl,
    read_ids,
    read_prompts,
)
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.snapshot import RunSnapshot

IDS = [i for i, _ in PROMPTS]


def user_folder(path: Path) -> Path:
    """A folder of the user's, with a file in it."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    return path


def untouched(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == ["notes.txt"] and (folder / "notes.txt").read_text() == "mine"


def listing(out: Path, skip: str | None = None) -> dict[str, tuple]:
    """Every entry under OUT (links not followed): its kind, size, mtime and, for files, a digest of the bytes."""
    found = {}
    for folder, dirs, files in os.walk(out):
        rel_folder = Path(folder).relative_to(out)
        if skip is not None and rel_folder.parts[:1] == (skip,):
            continue
        for name in dirs + files:
            path, rel = Path(folder) / name, (rel_folder / name).as_posix()
            st = os.lstat(path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            found[rel] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, digest)
    return found


# ---- one write boundary (io/files.py) -------------------------------------------------------------------------------

def test_a_link_among_the_folders_is_never_followed(tmp_path):
    root, elsewhere = tmp_path / "out", user_folder(tmp_path / "elsewhere")
    root.mkdir()
    (root / "logs").symlink_to(elsewhere)
    writers = [lambda p: write_atomic(p, "x", root), lambda p: open_output(p, root, append=True).close(),
               lambda p: write_store(p, {"x": torch.zeros(1)}, {}, root), lambda p: remove_output(p, root),
               lambda p: check_output(p, root), lambda p: remove_stale_temps(p.parent, root)]
    for write in writers:
        with pytest.raises(OutputPathError, match=rf"^{re.escape(str(root / 'logs'))}: a symbolic link \(to "):
            write(root / "logs" / "sub" / "notes.txt")
        with pytest.raises(OutputPathError, match="symbolic link"):
            write(root / "logs" / "notes.txt")
    assert untouched(elsewhere)
    (root / "file").write_text("a file, not a folder")
    with pytest.raises(OutputPathError, match="not a folder"):
        write_atomic(root / "file" / "x.json", "x", root)
    with pytest.raises(OutputPathError, match="outside"):
        write_atomic(tmp_path / "x.json", "x", root)


def test_what_pixelwizard_did_not_make_is_refused_and_kept(tmp_path):
    root = tmp_path / "out"
    folder = user_folder(root / "report" / "index.html")
    with pytest.raises(OutputPathError, match=rf"^{re.escape(str(folder))}: a directory that pixelwizard did not make"):
        write_atomic(folder, "<html>", root)
    with pytest.raises(OutputPathError, match="a directory"):
        open_output(folder, root, append=True)
    with pytest.raises(OutputPathError, match="a directory"):
        remove_output(folder, root)
    assert untouched(folder)
    not_a_store = user_folder(root / "hr" / "fox.zarr")
    with pytest.raises(OutputPathError, match="a directory that pixelwizard did not make"):
        write_store(not_a_store, {"x": torch.zeros(1)}, {}, root)
    assert untouched(not_a_store)
    (root / "hr" / "owl.zarr").write_text("a file where a store goes")
    with pytest.raises(OutputPathError, match="a file that pixelwizard did not make"):
        write_store(root / "hr" / "owl.zarr", {"x": torch.zeros(1)}, {}, root)
    assert (root / "hr" / "owl.zarr").read_text() == "a file where a store goes"
    write_store(root / "hr" / "cat.zarr", {"x": torch.zeros(1)}, {"run": 1}, root)  # a store of ours is replaced
    write_store(root / "hr" / "cat.zarr", {"x": torch.ones(1)}, {"run": 2}, root)
    assert read_store(root / "hr" / "cat.zarr")[1]["run"] == 2
    assert sorted(p.name for p in (root / "hr").iterdir()) == ["cat.zarr", "fox.zarr", "owl.zarr"]  # no temps left


def test_a_link_at_an_output_is_replaced_never_its_target(tmp_path):
    root, elsewhere = tmp_path / "out", user_folder(tmp_path / "elsewhere")
    root.mkdir()
    (root / "config.yaml").symlink_to(elsewhere / "notes.txt")
    write_atomic(root / "config.yaml", "ours", root)
    (root / "hr").mkdir()
    (root / "hr" / "fox.zarr").symlink_to(elsewhere)
    write_store(root / "hr" / "fox.zarr", {"x": torch.zeros(1)}, {}, root)
    assert (root / "config.yaml").read_text() == "ours" and not (root / "config.yaml").is_symlink()
    assert not (root / "hr" / "fox.zarr").is_symlink() and "x" in read_store(root / "hr" / "fox.zarr")[0]
    (root / "events.jsonl").symlink_to(elsewhere / "notes.txt")
    with pytest.raises(OutputPathError, match="a symbolic link; pixelwizard does not write through links"):
        open_output(root / "events.jsonl", root, append=True)  # a log is appended to: refused, not followed
    remove_output(root / "events.jsonl", root)  # the link goes, not what it points to
    assert untouched(elsewhere) and not (root / "events.jsonl").exists()
    stale = root / ".old.zarr.tmp-999999999-00ff00ff"  # looks like a killed writer's temporary
    stale.symlink_to(elsewhere)
    os.utime(stale, (0, 0), follow_symlinks=False)
    assert remove_stale_temps(root, root, min_age_s=0) == 1 and untouched(elsewhere)


# ---- every command that writes: links and folders where its outputs go ---------------------------------------------

def plan_of(weights, out: Path, prompts: Path) -> Plan:
    config = RunConfig(prompts="prompts.jsonl", ckpt_dir=str(weights["ckpt_dir"]), hr_ckpt=str(weights["hr_ckpt"]),
                       lr_ckpt=str(weights["lr_ckpt"]), preset="tiny")
    snapshot = RunSnapshot.build(config, read_prompts(prompts), IDS[:2], DigestCache(os.devnull, persist=False))
    return Plan(snapshot, Layout(out))


RUN_FOLDERS = ["logs", "logs/text", "logs/decode", f"logs/decode/{TAG}", "logs/snakemake", ".pixelwizard",
               ".pixelwizard/runs", ".pixelwizard/jobs", ".pixelwizard/index", ".pixelwizard/index/hr",
               f".pixelwizard/index/decode/{TAG}", ".done", ".done/hr", f".done/decode/{TAG}", ".snakemake",
               "text", "uncond", "lr", "preview", "hr", "decode", f"decode/{TAG}"]
RUN_FILES = ["pixelwizard.yaml", "prompts.jsonl", "only.txt", "logs/events.jsonl", ".pixelwizard/file-digests.json",
             ".pixelwizard/run.lock", ".pixelwizard/jobs.lock", "logs/hr/00000.log", ".pixelwizard/jobs/lr-00000.json",
             ".pixelwizard/index/lr/00000.stamps.json", f".pixelwizard/index/decode/{TAG}/00000.extras.json"]


@pytest.mark.parametrize("plant", ["link", "folder"])
def test_generate_checks_every_path_it_writes_before_anything_runs(weights, tmp_path, plant):
    """The up-front check `generate` and `decode` run (checks.check_paths), with a link at each folder the run
    writes into, or a folder at each file it writes: refused, naming it, the user's folder untouched."""
    prompts = write_prompts(tmp_path / "p.jsonl")
    plan = plan_of(weights, tmp_path / "probe", prompts)
    stages = [s.name for s in plan.stages]
    snapshot_file = plan.layout.snapshot(plan.snapshot.digest).relative_to(plan.layout.out).as_posix()
    markers = [m.relative_to(plan.layout.out).as_posix() for m in (plan.markers("text")[0], plan.markers("decode")[0])]
    for n, rel in enumerate(RUN_FOLDERS if plant == "link" else [*RUN_FILES, snapshot_file, *markers]):
        out = tmp_path / f"out{n}"
        elsewhere = user_folder(tmp_path / f"elsewhere{n}")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        if plant == "link":
            (out / rel).symlink_to(elsewhere)
        else:
            user_folder(out / rel)
        with pytest.raises(OutputPathError, match=rf"^{re.escape(str(out / rel))}: "):
            checks.check_paths(Plan(plan.snapshot, Layout(out)), stages, record=True)
        assert untouched(elsewhere if plant == "link" else out / rel)


def test_generate_and_decode_refuse_a_link_or_a_folder_in_the_way(weights, finished_run, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    out, elsewhere = tmp_path / "out", user_folder(tmp_path / "elsewhere")
    out.mkdir()
    (out / "logs").symlink_to(elsewhere)
    one_line_error(generate(weights, prompts, out, check=False), f"{out / 'logs'}: a symbolic link")
    assert untouched(elsewhere) and sorted(p.name for p in out.iterdir()) == ["logs"]
    (out / "logs").unlink()
    user_folder(out / "pixelwizard.yaml")
    one_line_error(generate(weights, prompts, out, check=False), f"{out / 'pixelwizard.yaml'}: a directory")
    assert untouched(out / "pixelwizard.yaml") and sorted(p.name for p in out.iterdir()) == ["pixelwizard.yaml"]

    copy = copy_run(finished_run, tmp_path / "copy")
    before = listing(copy)
    (copy / "decode" / "p2w-ov0-24fps").symlink_to(elsewhere)
    one_line_error(pixelwizard("decode", copy, "--overlap", "0", check=False), "p2w-ov0-24fps: a symbolic link")
    (copy / "decode" / "p2w-ov0-24fps").unlink()
    assert untouched(elsewhere) and set(listing(copy)) == set(before)


@pytest.mark.parametrize("plant", ["report link", "index.html"])
def test_report_never_writes_through_a_link_or_over_a_folder(finished_run, tmp_path, plant):
    out, elsewhere = copy_run(finished_run, tmp_path / "out"), user_folder(tmp_path / "elsewhere")
    if plant == "report link":
        (out / "report").symlink_to(elsewhere)
        (elsewhere / "index.html").write_text("the user's page")
    else:
        user_folder(out / "report" / plant)
    result = pixelwizard("report", out, check=False)
    if plant == "report link":
        one_line_error(result, f"{out / 'report'}: a symbolic link (to {elsewhere})", "make it a real folder")
        assert (elsewhere / "index.html").read_text() == "the user's page"
        assert sorted(p.name for p in elsewhere.iterdir()) == ["index.html", "notes.txt"]
    else:
        one_line_error(result, f"{out / 'report' / plant}: a directory that pixelwizard did not make")
        assert untouched(out / "report" / plant)
        assert sorted(p.name for p in (out / "report").iterdir()) == [plant]  # nothing written around it


def test_the_python_api_never_deletes_a_folder_at_its_output(weights, tmp_path):
    pipe = Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], lr_ckpt=weights["lr_ckpt"], preset="tiny")
    folder = user_folder(tmp_path / "video.mp4")
    with pytest.raises(OutputPathError, match=rf"^{re.escape(str(folder))}: a directory that pixelwizard did not"):
        pipe.generate("a red fox", path=folder)
    assert untouched(folder) and pipe._models == {}  # refused before any model was loaded


def test_tiny_weights_and_the_demo_refuse_before_writing(tmp_path):
    target = tmp_path / "weights"
    user_folder(target / "Wan2.2-TI2V-5B" / "config.json")
    one_line_error(pixelwizard("make-tiny-weights", target, check=False), "config.json: a directory")
    assert untouched(target / "Wan2.2-TI2V-5B" / "config.json")
    assert sorted(p.name for p in target.rglob("*")) == ["Wan2.2-TI2V-5B", "config.json", "notes.txt"]

    out, elsewhere = tmp_path / "demo", user_folder(tmp_path / "elsewhere")
    out.mkdir()
    (out / "weights").symlink_to(elsewhere)
    one_line_error(pixelwizard("demo", "--out", out, check=False), f"{out / 'weights'}: a symbolic link")
    assert untouched(elsewhere) and sorted(p.name for p in out.iterdir()) == ["weights"]


@pytest.mark.slow
def test_outputs_in_the_way_of_a_run_fail_their_prompt_alone_and_nothing_of_the_users_goes(weights, tmp_path):
    """A folder where a prompt's video or JSON goes fails that prompt with one line (the user's folder stays); a
    link where a store, a contact sheet or a video goes is replaced by the output, its target untouched; then the
    same command finishes once the folders are moved away. The Python API replaces a link the same way."""
    prompts, out = write_prompts(tmp_path / "p.jsonl"), tmp_path / "out"
    elsewhere = user_folder(tmp_path / "elsewhere")
    (elsewhere / "sheet.png").write_text("the user's picture")
    fox_video = user_folder(out / "decode" / TAG / "fox.mp4")
    waves_json = user_folder(out / "preview" / "waves.json")
    (out / "hr").mkdir()
    (out / "hr" / "market.zarr").symlink_to(elsewhere)
    (out / "decode" / TAG / "owl.png").symlink_to(elsewhere / "sheet.png")
    result = generate(weights, prompts, out, "--shard-size", "4", check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    shown = " ".join(result.stderr.split())
    assert f"failed decode {TAG} fox: OutputPathError: decode/{TAG}/fox.mp4: a directory that pixelwizard did not " \
        "make" in shown
    assert "failed preview waves: OutputPathError: preview/waves.json: a directory" in shown
    assert untouched(fox_video) and untouched(waves_json) and (elsewhere / "sheet.png").read_text() == "the user's " \
        "picture" and sorted(p.name for p in elsewhere.iterdir()) == ["notes.txt", "sheet.png"]
    assert not (out / "hr" / "market.zarr").is_symlink() and "latent" in read_store(out / "hr" / "market.zarr")[0]
    assert (out / "decode" / TAG / "owl.png").read_bytes().startswith(b"\x89PNG")
    shutil.rmtree(fox_video)
    shutil.rmtree(waves_json)
    generate(weights, prompts, out, "--shard-size", "4")
    assert all((out / "decode" / TAG / f"{i}.mp4").is_file() for i in IDS)
    assert (out / "preview" / "waves.json").is_file()

    link = tmp_path / "api.mp4"
    link.symlink_to(elsewhere / "sheet.png")
    pipe = Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], lr_ckpt=weights["lr_ckpt"], preset="tiny")
    assert pipe.generate(PROMPTS[0][1], path=link) == link and not link.is_symlink()
    assert (elsewhere / "sheet.png").read_text() == "the user's picture"


# ---- one reader for JSON lines --------------------------------------------------------------------------------------

AWKWARD = {
    "separators": "line\u2028separator, paragraph\u2029separator, next\u0085line, form\x0cfeed, vtab\x0b, fs\x1c.",
    "bom": "a zero width no-break space \ufeff inside",
    "rtl": "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u202eevil\u202c then ltr",
    "zero-width": "zero\u200bwidth\u200cnon\u200djoiner, family \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "cjk": "\u6d77\u8fb9\u7684\u65e5\u843d \u3072\u3089\u304c\u306a \ud55c\uad6d\uc5b4",
    "emoji": "a fox \U0001f98a in snow \u2744\ufe0f, flag \U0001f1ef\U0001f1f5, skin \U0001f44b\U0001f3fd",
}


@pytest.mark.parametrize("escaped", [True, False], ids=["escaped", "raw"])
def test_awkward_unicode_reads_back_byte_for_byte(tmp_path, escaped):
    """A user's JSONL (with a BOM, CRLF line ends, the characters escaped or raw) -> prompts -> the run's copy ->
    the same prompts, and the copy written again is the same bytes; any line reader sees one record a line."""
    lines = [json.dumps({"id": name, "text": text, "negative_prompt": text[::-1]}, ensure_ascii=escaped)
             for name, text in AWKWARD.items()]
    user = tmp_path / "p.jsonl"
    user.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    prompts = read_prompts(user)
    assert [(p.id, p.text, p.negative_prompt) for p in prompts] == [(n, t, t[::-1]) for n, t in AWKWARD.items()]
    copy = tmp_path / "copy.jsonl"
    copy.write_text(prompts_jsonl(prompts), encoding="utf-8")
    assert read_prompts(copy) == prompts and prompts_jsonl(read_prompts(copy)) == copy.read_text(encoding="utf-8")
    assert len(copy.read_text(encoding="utf-8").splitlines()) == len(AWKWARD)  # str.splitlines() too
    assert "\U0001f98a" in copy.read_text(encoding="utf-8")  # characters kept as they are, not \\u-escaped


def test_lines_end_at_newline_only(tmp_path):
    text = "one\u2028two\u2029three\x85four\x0bfive\x0csix\x1cseven\x1d\x1eeight"
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_prompts(path) == [Prompt("a", text)]
    assert read_lines(path) == [(1, json.dumps({"id": "a", "text": text}, ensure_ascii=False))]
    assert json_line({"t": text}).count("\n") == 1 and len(json_line({"t": text}).splitlines()) == 1


@pytest.mark.parametrize("line, problem", [
    ('{"id": NaN, "text": "x"}', "NaN is not JSON"),
    ('{"id": "a", "text": "x", "seed": Infinity}', "Infinity is not JSON"),
    ('{"id": "a", "text": "x", "score": -Infinity}', "-Infinity is not JSON"),  # even under a key of the user's
    ('{"id": "a", "text": "x", "id": "b"}', "key 'id' is given twice"),
])
def test_json_is_strict(tmp_path, line, problem):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(PromptFileError, match=rf"^{re.escape(str(path))}:1: {re.escape(problem)}; "):
        read_prompts(path)
    with pytest.raises(ValueError):
        parse_json(line)


def test_lone_surrogates_are_refused_up_front(tmp_path, weights):
    path = tmp_path / "p.jsonl"
    for record, field in (('{"text": "\\ud83e a fox"}', "text"), ('{"text": "x", "negative_prompt": "\\udc80"}',
                                                                    "negative_prompt")):
        path.write_text(record + "\n")
        with pytest.raises(PromptFileError, match=rf"^{re.escape(str(path))}:1: {field} .*: holds a lone surrogate U+"):
            read_prompts(path)
    with pytest.raises(PromptError, match="lone surrogate"):
        make_prompt(text="\ud83e a fox")
    with pytest.raises(PresetError, match="negative_prompt=.*lone surrogate"):
        get_preset("tiny", negative_prompt="\udc80")
    # undecodable bytes on a command line arrive as lone surrogates too
    result = subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli",
                             *generate_args(weights, None, tmp_path / "out", "--prompt", b"a fox \xff".decode(
                                 "utf-8", "surrogateescape"))], capture_output=True, text=True)
    one_line_error(result, "--prompt:1: text", "lone surrogate U+DCFF")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_prompt_with_line_separators_runs_and_its_run_reads_back(weights, tmp_path):
    """Written escaped in the user's file, U+2028/U+2029 end up in the run's copy; status, report and a re-decode's
    dry run read it for the rest of the run's life."""
    prompts = tmp_path / "p.jsonl"
    text = "A red fox\u2028trots through\u2029fresh snow"
    prompts.write_text(json.dumps({"id": "fox", "text": text}) + "\n")
    out = tmp_path / "out"
    generate(weights, prompts, out, "--until", "lr", "--no-previews")
    assert read_prompts(out / "prompts.jsonl") == [Prompt("fox", text)]
    assert "fox" in pixelwizard("status", out).stdout
    pixelwizard("report", out)
    assert json.dumps(text)[1:-1] in (out / "report" / "data.js").read_text()
    one_line_error(pixelwizard("decode", out, "--dry-run", check=False), "no HR latents")


# ---- one validation of a prompt's settings --------------------------------------------------------------------------

def test_every_prompt_field_has_its_rule():
    assert tuple(FIELDS) == tuple(Prompt.__dataclass_fields__)
    assert KNOWN_KEYS == ("id", "prompt_id", "text", "prompt", "caption", "seed", "negative_prompt", "image", "video",
                          "start", "fps", "latent")


@pytest.mark.parametrize("values, field, problem", [
    ({"seed": -1}, "seed", "seed -1: must be a whole number from 0 to 2^63-1"),
    ({"seed": 2**63}, "seed", "seed 9223372036854775808: must be a whole number"),
    ({"seed": 1.0}, "seed", "seed 1.0: must be a whole number"),
    ({"seed": True}, "seed", "seed True: must be a whole number"),
    ({"negative_prompt": 5}, "negative_prompt", "negative_prompt 5: must be a string"),
    ({"text": 5}, "text", "text 5: must be a string"),
    ({"text": "  "}, "text", "text '  ': empty"),
    ({"id": "../x"}, "id", "id '../x': not usable as a file name"),
])
def test_one_rule_per_setting_for_jsonl_and_the_api(weights, tmp_path, values, field, problem):
    """The same value is refused with the same words from a JSONL line and from the Python API, before anything
    runs; the run's own seed (--seed, Pipeline(seed=...)) follows the same rule."""
    values = {"text": "a red fox", **values}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(values) + "\n")
    with pytest.raises(PromptFileError) as from_file:
        read_prompts(path)
    assert str(from_file.value).startswith(f"{path}:1: {problem}")
    pipe = Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], lr_ckpt=weights["lr_ckpt"], preset="tiny")
    if "id" not in values:
        with pytest.raises(PromptError) as from_api:
            pipe.generate(values["text"], seed=values.get("seed"), negative_prompt=values.get("negative_prompt"))
        assert from_api.value.field == field and str(from_api.value).startswith(problem)
        assert str(from_api.value).endswith(str(from_file.value).split("; ", 1)[1])  # the same fix
    assert pipe._models == {}  # nothing was loaded
    if field == "seed":  # the run's seed: --seed, `seed:` in a run configuration, Pipeline(seed=...)
        with pytest.raises(ValueError, match=rf"seed={re.escape(repr(values['seed']))}: must be a whole number from "
                                             r"0 to 2\^63-1$"):
            Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], preset="tiny", seed=values["seed"])


@pytest.mark.parametrize("key, known", [("negative_promt", "negative_prompt"), ("Seed", "seed"), ("TEXT", "text"),
                                        ("Negative-Prompt", "negative_prompt"), ("promptId", "prompt_id"),
                                        ("seeds", "seed"), ("captoin", "caption"), ("ID", "id")])
def test_a_near_miss_of_a_known_key_is_refused_with_the_key_it_meant(tmp_path, key, known):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "x", key: 7}) + "\n")
    with pytest.raises(PromptFileError, match=rf"^{re.escape(str(path))}:1: unknown key '{key}'; did you mean "
                                              rf"'{known}'\?"):
        read_prompts(path)


def test_keys_of_the_users_own_are_kept_out_of_the_way(tmp_path):
    path = tmp_path / "p.jsonl"
    own = {"category": "animals", "uid": 17, "ids": [1], "meta": {"Seed": 3}, "source": "web", "tags": ["snow"],
           "width": 3, "score": 0.5}
    path.write_text(json.dumps({"id": "a", "text": "x", **own}) + "\n")
    assert read_prompts(path) == [Prompt("a", "x")]


def test_a_bom_is_read_alike_in_every_file_the_user_gives(tmp_path):
    prompts = [Prompt("fox", "a fox"), Prompt("owl", "an owl")]
    for name, content in (("p.jsonl", prompts_jsonl(prompts)), ("p.txt", "a fox\nan owl\n")):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + content.encode())
        assert [p.text for p in read_prompts(tmp_path / name)] == ["a fox", "an owl"]
    only = tmp_path / "only.txt"
    only.write_bytes(b"\xef\xbb\xbfowl\r\nfox\r\n")
    assert read_ids(only, prompts) == ("owl", "fox")
    only.write_bytes(b"owl\n\xef\xbb\xbffox\n")  # not at the start: part of the id, which is no id of the run's
    with pytest.raises(PromptFileError, match=r"only.txt:2: '\\ufefffox' is not an id"):
        read_ids(only, prompts)


# ---- one validation of decode settings ------------------------------------------------------------------------------

SCALE = 16


def geometry_works(size: int, num_patches: int, overlap: int) -> None:
    """What the decode and the seam meter do with these settings: patches inside the axis, blend weights that sum to
    1 at every pixel with no pixel left to the weight floor, a meter with reference lines for every seam."""
    ranges = patch_ranges(size, num_patches, overlap)
    assert all(0 <= start < end <= size for start, end in ranges) and ranges[0][0] == 0 and ranges[-1][1] == size
    total = torch.zeros(size * SCALE)
    for (start, _), weight in zip(ranges, blend_weights(ranges, size, overlap, SCALE)):
        total[start * SCALE:start * SCALE + weight.numel()] += weight
    assert total.min() >= 0.5
    QualityMeter(size * SCALE, 32, seam_boundaries(size, num_patches, overlap, SCALE), axis="w", cell=SCALE)


def test_decode_settings_the_check_accepts_decode_and_its_advice_names_the_real_limit():
    """Every size up to 24 latent units, every patch count up to one past it, every overlap up to it."""
    for size in range(1, 25):
        for num_patches in range(1, size + 2):
            for overlap in range(0, size + 1):
                try:
                    check_decode_settings(size, num_patches, overlap, SCALE)
                except DecodeSettingsError as err:
                    setting, limit = re.search(r"^--(overlap|num-patches) \d+: .*; .* at most (\d+)", str(err)).groups()
                    limit = int(limit)
                    if setting == "overlap":
                        assert limit < overlap
                        for ok in range(limit + 1):
                            check_decode_settings(size, num_patches, ok, SCALE)
                        with pytest.raises(DecodeSettingsError):
                            check_decode_settings(size, num_patches, limit + 1, SCALE)
                    else:
                        assert limit < num_patches
                        for ok in range(1, limit + 1):
                            check_decode_settings(size, ok, overlap, SCALE)
                        with pytest.raises(DecodeSettingsError):
                            check_decode_settings(size, limit + 1, overlap, SCALE)
                else:
                    geometry_works(size, num_patches, overlap)


def test_decode_refuses_up_front_what_the_job_cannot_do(weights, finished_run, tmp_path):
    """The tiny latent is 16 units wide: 16 patches passed the old check and failed every video in the job; an
    overlap of 8 was refused advising "below 4" though 4 to 7 work. The Python API checks the same way."""
    with pytest.raises(ValueError, match="--num-patches 16: .* use at most 8 patches"):
        Pipeline(weights["ckpt_dir"], weights["hr_ckpt"], preset="tiny", num_patches=16)
    out = copy_run(finished_run, tmp_path / "out")
    one_line_error(pixelwizard("decode", out, "--num-patches", "16", "--dry-run", check=False),
                   "--num-patches 16:", "use at most 8 patches")
    one_line_error(pixelwizard("decode", out, "--overlap", "8", "--dry-run", check=False),
                   "--overlap 8: a patch then spans the whole latent", "use an overlap of at most 7")


@pytest.mark.slow
def test_the_limits_the_check_names_decode_in_the_job(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "out")
    for patches, overlap in (("8", "0"), ("2", "7")):
        pixelwizard("decode", out, "--num-patches", patches, "--overlap", overlap, "--quiet")
        for prompt_id in IDS:
            assert (out / "decode" / f"p{patches}w-ov{overlap}-24fps" / f"{prompt_id}.mp4").is_file()


# ---- dry runs and read-only commands write nothing ------------------------------------------------------------------

def test_dry_runs_status_and_report_leave_out_as_it_was(weights, finished_run, tmp_path):
    """On a copy (new inodes: every stamp differs, so every output is checked in full), each command leaves every
    entry of OUT as it was: bytes, sizes, mtimes; `report` writes OUT/report/ and nothing else."""
    out = copy_run(finished_run, tmp_path / "out")
    prompts = write_prompts(tmp_path / "p.jsonl")
    before = listing(out)
    for command in (generate_args(weights, prompts, out, "--hr-steps", "5", "--dry-run"),
                    ["decode", out, "--overlap", "0", "--dry-run"], ["status", out]):
        pixelwizard(*command)
        assert listing(out) == before, command
    pixelwizard("report", out)
    after = listing(out, skip="report")
    assert after.pop("report")[0] == stat.S_IFDIR and after == before
