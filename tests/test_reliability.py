"""A run's state can never be corrupted, silently stale or hidden, and every failure is one clear line, found up
front where it can be. Each test reproduces one way this used to go wrong, with real files, real processes and
real signals (the numbers in the names are the items of the reliability issue)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import (
    PROMPTS,
    computed,
    copy_run,
    events,
    frames_of,
    generate,
    generate_args,
    pixelwizard,
    pixelwizard_processes,
    popen_generate,
    wait_for_job,
    write_prompts,
)

from pixelwizard.checkpoints import wan
from pixelwizard.checkpoints.tiny import TINY_DIT, randomize_
from pixelwizard.checkpoints.trainer import save_trainer_checkpoint
from pixelwizard.io.latent_store import read_store
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline import checks
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.plan import Plan
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.status import collect, last_snapshot

IDS = [p for p, _ in PROMPTS]


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run was refused with exit code 2 and one line that says why."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    message = " ".join(lines)  # rich wraps long lines at the terminal width
    assert message.startswith("error: "), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def copy_weights(weights, root: Path) -> dict[str, Path]:
    base = weights["ckpt_dir"].parent
    shutil.copytree(base, root)
    return {name: root / path.relative_to(base) for name, path in weights.items()}


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (root only, as in CI) at tmp_path/mnt; yields a function mounting it with options."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    mounted = []

    def mount_with(options: str) -> Path:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
        mounted.append(mount)
        return mount

    yield mount_with
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


# ---- found up front (items 9, 10, 11, 15): refused in seconds, nothing in OUT --------------------------------------

@pytest.mark.parametrize("damage, fragments", [
    ("truncated shard", ["diffusion_pytorch_model-00002-of-00003.safetensors", "truncated"]),
    ("base DiT as HR", ["a base Wan2.2 DiT, not a PixelWizard HR checkpoint"]),
    ("HR file in a 4k folder", ["trained for 3840x2144 (its '4k' folder) but preset 'tiny' takes the model trained "
                                "for 256x160"]),
    ("tiny HR file with --preset 2k", ["trained for 256x160 (recorded in the file; its 'tiny' folder) but preset "
                                       "'2k' takes the model trained for 2560x1440; use --preset tiny"]),
])
def test_checkpoint_problems_are_found_before_anything_runs(weights, tmp_path, damage, fragments):
    paths = copy_weights(weights, tmp_path / "w")
    if damage == "truncated shard":
        shard = paths["ckpt_dir"] / "diffusion_pytorch_model-00002-of-00003.safetensors"
        shard.write_bytes(shard.read_bytes()[:-100])
    elif damage == "base DiT as HR":
        save_trainer_checkpoint(randomize_(wan.load_dit(paths["ckpt_dir"]), 1), paths["hr_ckpt"])
    elif damage == "HR file in a 4k folder":
        moved = paths["hr_ckpt"].parent.parent / "4k" / "model.pt"
        moved.parent.mkdir()
        paths["hr_ckpt"].rename(moved)
        paths["hr_ckpt"] = moved
    out = tmp_path / "out"
    start = time.monotonic()
    preset = ["--preset", "2k"] if damage == "tiny HR file with --preset 2k" else []
    result = generate(paths, write_prompts(tmp_path / "p.jsonl"), out, *preset, check=False)
    one_line_error(result, *fragments)
    assert time.monotonic() - start < 60 and not out.exists()


@pytest.mark.parametrize("extra, fragments", [
    (["--hr-gpus", "3"], ["--hr-gpus 3", "use one of 1, 2, 4"]),
    (["--overlap", "20"], ["--overlap 20", "patching does nothing", "use an overlap of at most 7"]),
    (["--set", "hr_steps=abc"], ["--set hr_steps=abc: hr_steps must be an integer"]),
    (["--shard-size", "hr=0"], ["--shard-size hr=0"]),
])
def test_impossible_settings_are_refused_up_front(weights, tmp_path, extra, fragments):
    out = tmp_path / "out"
    one_line_error(generate(weights, write_prompts(tmp_path / "p.jsonl"), out, *extra, check=False), *fragments)
    assert not out.exists()


def test_an_unusable_out_is_refused(weights, tmp_path, tmpfs):
    prompts = write_prompts(tmp_path / "p.jsonl")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(generate(weights, prompts, a_file, check=False), f"--out {a_file}: is a file")
    read_only = tmpfs("ro,size=1m")
    one_line_error(generate(weights, prompts, read_only / "out", check=False), "is not writable")
    for special, kind in (("/proc", "proc"), ("/sys/kernel", "sysfs")):  # not "0 bytes free"
        one_line_error(generate(weights, prompts, Path(special) / "pixelwizard-out", check=False),
                       f"{special} is on a special file system ({kind}) that stores no files")


def test_not_enough_disk_is_refused_with_the_figures(weights, tmp_path, tmpfs):
    small = tmpfs("size=256k")
    result = generate(weights, write_prompts(tmp_path / "p.jsonl"), small / "out", "--set", "frames=41", check=False)
    one_line_error(result, "are needed for the outputs still to make (4 text, 1 uncond, 4 lr", "are free there")
    assert not (small / "out").exists()


def disk_usage(folder: Path) -> int:
    """Bytes of the blocks every file and folder under `folder` holds (what `du -s -B1` says)."""
    return sum(os.lstat(path).st_blocks * 512 for path in (folder, *folder.rglob("*")))


@pytest.mark.slow
def test_the_disk_estimate_covers_what_a_run_writes_within_2x(finished_run, tmp_path):
    def estimate(run: RunSnapshot, out: Path, stages: list[str] | None = None) -> int:
        todo = [p for row in collect(run, Layout(out), stages) for p in row.todo]
        return checks.disk_needed(Plan(run, Layout(out)), todo, os.statvfs(tmp_path).f_frsize)

    run = last_snapshot(finished_run)
    written, estimated = disk_usage(finished_run), estimate(run, tmp_path / "fresh")  # every output, every log
    assert written <= estimated <= 2 * written, (written, estimated)
    out = copy_run(finished_run, tmp_path / "copy")
    redecode = dataclasses.replace(run, config=run.config.with_settings(overlap=0))
    estimated, before = estimate(redecode, out, ["decode"]), disk_usage(out)
    pixelwizard("decode", out, "--overlap", "0", "--quiet")
    written = disk_usage(out) - before
    assert written <= estimated <= 2 * written, (written, estimated)


def test_a_dry_run_changes_nothing(weights, tmp_path):
    out = tmp_path / "out"
    result = generate(weights, write_prompts(tmp_path / "p.jsonl"), out, "--dry-run")
    assert "dry run: nothing was changed" in result.stderr and not out.exists()


def test_decode_before_any_hr_latent_says_so(weights, tmp_path):
    out = tmp_path / "out"
    generate(weights, write_prompts(tmp_path / "p.jsonl"), out, "--dry-run")
    out.mkdir()
    (out / "prompts.jsonl").write_text((tmp_path / "p.jsonl").read_text())
    config = {"prompts": "prompts.jsonl", "ckpt_dir": str(weights["ckpt_dir"]), "hr_ckpt": str(weights["hr_ckpt"]),
              "preset": "tiny"}
    (out / "pixelwizard.yaml").write_text(json.dumps(config))
    one_line_error(pixelwizard("decode", out, "--overlap", "0", check=False), "no HR latents", "pixelwizard generate")


# ---- state that is never wrong or stale (items 1-5) -----------------------------------------------------------------

def stages_run(out: Path, since: int) -> set[str]:
    """The stages whose jobs ran (any event at all) since event `since`."""
    return {e["stage"] for e in events(out)[since:]}


@pytest.mark.slow
def test_a_refused_run_changes_nothing_and_the_first_run_finishes_its_own_prompts(weights, tmp_path):
    first = write_prompts(tmp_path / "a.jsonl")
    out = tmp_path / "out"
    run_a = popen_generate(weights, first, out, "--hr-steps", "40", "--shard-size", "1")
    deadline = time.monotonic() + 300
    while not any(e["stage"] == "hr" and e["action"] == "started" for e in events(out)):
        assert time.monotonic() < deadline and run_a.poll() is None, "run A never reached the HR stage"
        time.sleep(0.2)
    config, prompts = (out / "pixelwizard.yaml").read_bytes(), (out / "prompts.jsonl").read_bytes()
    other = write_prompts(tmp_path / "b.jsonl", [("cat", "A cat sleeps on a warm windowsill.")])
    for extra in ([], ["--dry-run"], ["--shard-size", "3"]):
        result = generate(weights, other, out, *extra, check=False)
        if extra == ["--dry-run"]:
            assert result.returncode == 0 and "another pixelwizard run (pixelwizard generate, pid" in result.stderr
        else:
            one_line_error(result, "another pixelwizard run (pixelwizard generate, pid", "is using this directory")
    assert (out / "pixelwizard.yaml").read_bytes() == config and (out / "prompts.jsonl").read_bytes() == prompts
    one_line_error(pixelwizard("decode", out, "--overlap", "0", check=False), "another pixelwizard run")
    assert run_a.wait(timeout=600) == 0, run_a.stderr.read()[-3000:]
    assert sorted(p.stem for p in (out / "decode" / "p2w-ov1-24fps").glob("*.mp4")) == sorted(IDS)
    assert "cat" not in {e["id"] for e in events(out)}


@pytest.mark.slow
def test_other_checkpoint_contents_rerun_exactly_what_reads_them(finished_run, weights, tmp_path):
    paths = copy_weights(weights, tmp_path / "w")
    copy = copy_run(finished_run, tmp_path / "copy")
    hr_before = read_store(copy / "hr" / "fox.zarr")[0]["latent"]
    save_trainer_checkpoint(randomize_(HRDiT(TINY_DIT), seed=99), paths["hr_ckpt"])  # other weights, same path
    before = len(events(copy))
    generate(paths, write_prompts(tmp_path / "p.jsonl"), copy, "--shard-size", "2")
    assert computed(copy, before) == Counter({(s, p): 1 for s in ("hr", "decode") for p in IDS})
    assert stages_run(copy, before) == {"hr", "decode"}  # no text, uncond, LR or preview job was even started
    assert not torch.equal(read_store(copy / "hr" / "fox.zarr")[0]["latent"], hr_before)

    data = bytearray(paths["hr_ckpt"].read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the file, mtime put back
    stat = paths["hr_ckpt"].stat()
    paths["hr_ckpt"].write_bytes(bytes(data))
    os.utime(paths["hr_ckpt"], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = len(events(copy))
    generate(paths, tmp_path / "p.jsonl", copy, "--shard-size", "2")
    assert computed(copy, before) == Counter({(s, p): 1 for s in ("hr", "decode") for p in IDS})


@pytest.mark.slow
def test_damaged_outputs_are_found_and_recomputed(finished_run, weights, tmp_path):
    out = copy_run(finished_run, tmp_path / "copy")
    chunk = out / "hr" / "fox.zarr" / "latent" / "c" / "0" / "0" / "0" / "0"  # its one shard
    data = bytearray(chunk.read_bytes())
    data[10:74] = bytes(b ^ 0xFF for b in data[10:74])  # 64 bytes flipped inside a chunk of the shard
    chunk.write_bytes(bytes(data))
    truncated = out / "hr" / "waves.zarr" / "latent" / "c" / "0" / "0" / "0" / "0"
    truncated.write_bytes(truncated.read_bytes()[:20])
    meta = json.loads((out / "hr" / "market.zarr" / "zarr.json").read_text())
    del meta["attributes"]["complete"]
    (out / "hr" / "market.zarr" / "zarr.json").write_text(json.dumps(meta))
    lr_chunk = out / "lr" / "owl.zarr" / "latent" / "c" / "0" / "0" / "0" / "0"
    lr_chunk.write_bytes(lr_chunk.read_bytes()[::-1])

    status = pixelwizard("status", out).stdout
    for damaged, problem in (("hr: 1 corrupt (fox)", "fails its checksum"), ("hr: 1 corrupt (waves)", "cut short"),
                             ("hr: 1 corrupt (market)", "incomplete"), ("lr: 1 corrupt (owl)", "fails its checksum")):
        assert any(line.strip().startswith(damaged) and problem in line for line in status.splitlines()), status
    decode = pixelwizard("decode", out, "--overlap", "0", check=False)  # never a video from a damaged latent
    assert decode.returncode == 1 and "3 blocked (fox, waves, market): hr corrupt" in decode.stderr
    assert [p.stem for p in (out / "decode" / "p2w-ov0-24fps").glob("*.mp4")] == ["owl"]
    before = len(events(out))
    generate(weights, write_prompts(tmp_path / "p.jsonl"), out, "--shard-size", "2")
    assert computed(out, before) == Counter({("hr", "fox"): 1, ("hr", "waves"): 1, ("hr", "market"): 1,
                                             ("lr", "owl"): 1})
    assert {e["id"] for e in events(out)[before:] if e["action"] == "corrupt"} == {"fox", "waves", "market", "owl"}
    for prompt_id in IDS:  # recomputed bit for bit: the videos made before still match their latents
        ours, theirs = (read_store(o / "hr" / f"{prompt_id}.zarr")[0]["latent"] for o in (out, finished_run))
        assert torch.equal(ours, theirs)


@pytest.mark.slow
def test_a_failing_prompt_does_not_hold_up_its_shard_mates(finished_run, weights, tmp_path):
    out = tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.jsonl")
    generate(weights, prompts, out, "--until", "lr", "--shard-size", "4")
    (out / "hr").mkdir()
    (out / "hr" / "owl.zarr").write_text("not a store")  # the HR latent of owl cannot be written: a real error
    result = generate(weights, prompts, out, "--shard-size", "4", check=False)
    assert result.returncode == 1
    assert "failed hr owl: OutputPathError" in " ".join(result.stderr.split())  # the file is not ours: kept
    assert "hr: 1 failed (owl): OutputPathError" in " ".join(result.stderr.split())  # the summary at the end
    assert sorted(p.stem for p in (out / "decode" / "p2w-ov1-24fps").glob("*.mp4")) == ["fox", "market", "waves"]
    assert "hr: 1 failed (owl): OutputPathError" in " ".join(pixelwizard("status", out).stdout.split())
    assert (out / "hr" / "owl.zarr").read_text() == "not a store"
    (out / "hr" / "owl.zarr").unlink()
    before = len(events(out))
    generate(weights, prompts, out, "--shard-size", "4")
    assert computed(out, before) == Counter({("hr", "owl"): 1, ("decode", "owl"): 1})


# ---- signals (items 6, 7, 8) ----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, False),
                                              (signal.SIGINT, True)], ids=["sigterm", "sigint", "ctrl-c"])
def test_a_stop_signal_ends_the_run_within_seconds_and_it_resumes(weights, tmp_path, signum, to_group):
    """SIGTERM (what SLURM sends) or SIGINT to the pixelwizard process alone, or to its whole process group as
    Ctrl-C in a terminal does: the job in a denoising step finishes it, publishes nothing, starts no new prompt."""
    out = tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.jsonl")
    process = popen_generate(weights, prompts, out, "--hr-steps", "400", start_new_session=True)
    wait_for_job(process, out, "hr", "sampling")
    sent = time.time()
    os.killpg(process.pid, signum) if to_group else process.send_signal(signum)
    code = process.wait(timeout=120)
    seconds = time.time() - sent
    print(f"{signal.Signals(signum).name} {'group' if to_group else 'cli'}: exit after {seconds:.1f} s")
    stderr = process.stderr.read()
    assert code == 128 + signum and seconds < 30
    assert "Traceback" not in stderr and f"stopped by {signal.Signals(signum).name}" in stderr
    late = [e for e in events(out) if e["time"] > sent + 1 and e["action"] in ("started", "computed")]
    assert late == []  # nothing started or finished_run after the signal
    assert not [p for p in (out / "hr").iterdir() if p.name.startswith(".")] if (out / "hr").exists() else True
    assert pixelwizard_processes(out) == []
    if signum == signal.SIGTERM:
        generate(weights, prompts, out, "--hr-steps", "400")
        assert sorted(p.stem for p in (out / "decode" / "p2w-ov1-24fps").glob("*.mp4")) == sorted(IDS)


@pytest.mark.slow
def test_sigkill_of_the_process_group_leaves_no_worker_behind(weights, tmp_path):
    """torchrun starts its workers in a session of their own; they must still die with the run."""
    out = tmp_path / "out"
    process = popen_generate(weights, write_prompts(tmp_path / "p.jsonl"), out, "--hr-steps", "400",
                             "--hr-gpus", "2", start_new_session=True)
    wait_for_job(process, out, "hr", "sampling")
    workers = [p for p in pixelwizard_processes(out) if "pixelwizard.workflow.stages.hr" in " ".join(p.cmdline())]
    assert len(workers) >= 2  # torchrun and its two workers
    os.killpg(process.pid, signal.SIGKILL)
    killed = time.time()
    process.wait()
    time.sleep(3)
    assert pixelwizard_processes(out) == []
    assert [e for e in events(out) if e["time"] > killed] == []


# ---- found late no more (items 12, 13, 16, 17) ---------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_mid_decode_on_two_ranks_is_one_line_and_nothing_waits(weights, tmp_path, tmpfs):
    """The disk fills up (another writer) while the two ranks write their videos: both end at once, the console
    says what happened, nothing half-written stays, and with space again the run completes."""
    disk = tmpfs("size=24m")
    out = disk / "out"
    prompts = write_prompts(tmp_path / "p.jsonl")
    generate(weights, prompts, out, "--until", "hr", "--set", "frames=41")
    start = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "pixelwizard.workflow.cli", "decode", str(out), "--decode-gpus",
                                "2", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_job(process, out, "decode", "decoding")  # past the free-space check, and writing a video
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until the disk is full
    stdout, stderr = process.communicate(timeout=300)
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    seconds = time.monotonic() - start
    print(f"decode on a full disk: exit {result.returncode} after {seconds:.1f} s")
    message = " ".join(result.stderr.split())
    assert result.returncode == 1 and seconds < 120 and "Traceback" not in result.stderr
    assert "No space left on device" in message and "failed decode" in message
    assert "is full" in message and "free space there first, then run the same command again" in message
    assert not [p for p in (out / "decode").rglob("*") if p.name.startswith(".")]  # no partial video
    assert pixelwizard_processes(out) == []
    assert "No space left on device" in " ".join(pixelwizard("status", out).stdout.split())
    filler.unlink()
    pixelwizard("decode", out, "--decode-gpus", "2", "--quiet")
    assert len(list((out / "decode" / "p2w-ov1-24fps").glob("*.mp4"))) == len(IDS)


@pytest.mark.slow
def test_a_prompt_longer_than_the_encoder_reads_is_named_with_the_tokens_dropped(weights, tmp_path):
    out = tmp_path / "out"
    long = " ".join(["a red fox runs through the snow"] * 100)  # ~700 tokens, the encoder reads 512
    prompts = write_prompts(tmp_path / "p.jsonl", [("long", long), PROMPTS[1]])
    result = generate(weights, prompts, out, "--until", "lr", "--no-previews")
    _, attrs = read_store(out / "text" / "long.zarr")
    assert attrs["dropped_tokens"] == attrs["tokens"] - 512 > 0
    warning = f"warning text long: {attrs['tokens']} tokens, the encoder reads 512: the last " \
              f"{attrs['dropped_tokens']} are dropped"
    assert warning in " ".join(result.stderr.split())
    assert read_store(out / "text" / "waves.zarr")[1]["dropped_tokens"] == 0


@pytest.mark.slow
def test_a_moved_or_copied_run_works_where_it_lands(finished_run, tmp_path):
    moved = copy_run(finished_run, tmp_path / "copy")
    moved = moved.rename(tmp_path / "moved")
    assert "stale" not in pixelwizard("status", moved).stdout.replace("stale ┃", "")
    rows = [line for line in pixelwizard("status", moved).stdout.splitlines() if line.startswith("│ hr ")]
    assert rows and rows[0].split("│")[2].strip() == "4"
    before = {p: p.stat().st_mtime_ns for p in (finished_run / "decode").rglob("*")}
    pixelwizard("decode", moved, "--overlap", "0", "--quiet")
    assert len(list((moved / "decode" / "p2w-ov0-24fps").glob("*.mp4"))) == len(IDS)
    assert not (finished_run / "decode" / "p2w-ov0-24fps").exists()
    assert {p: p.stat().st_mtime_ns for p in (finished_run / "decode").rglob("*")} == before


@pytest.mark.slow
def test_a_run_needs_no_network_at_all(weights, tmp_path):
    """In a network namespace of its own (not even loopback up): one-process jobs need no torchrun rendezvous."""
    out = tmp_path / "out"
    args = generate_args(weights, write_prompts(tmp_path / "p.jsonl", PROMPTS[:2]), out)
    start = time.monotonic()
    result = subprocess.run(["unshare", "--net", sys.executable, "-m", "pixelwizard.workflow.cli", *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - start < 300
    assert frames_of(out, "fox").shape == (9, 160, 256, 3)


def test_offload_with_several_hr_gpus_is_refused(weights, tmp_path):
    result = generate(weights, write_prompts(tmp_path / "p.jsonl"), tmp_path / "out", "--offload", "--hr-gpus", "2",
                      check=False)
    one_line_error(result, "--offload streams the DiT's blocks to one GPU")
