"""What `generate` and `decode` show while they run, in a real pseudo-terminal: the command and its clock, what each
running job is doing (starting, loading a model, the prompt and step it is at) as it changes, nothing stale after a
Ctrl-C; `--quiet` prints one line per finished prompt."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import PROMPTS, computed, copy_run, generate, generate_args, write_prompts
from rich.console import Console

from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.live import LiveView
from pixelwizard.pipeline.status import StageStatus

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args: list[str], timeout: float = 600, interrupt_on: str | None = None
                    ) -> tuple[int, list[tuple[float, str]]]:
    """Run `pixelwizard ARGS` with a terminal as its stdout and stderr; returns the exit code and what it printed,
    as (seconds since start, text) pieces. With `interrupt_on`, SIGINT goes to its process group (Ctrl-C) once
    that text has been shown."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color"}
    process = subprocess.Popen([sys.executable, "-m", "pixelwizard.workflow.cli", *args], stdin=terminal,
                               stdout=terminal, stderr=terminal, env=env, close_fds=True, start_new_session=True)
    os.close(terminal)
    start, pieces = time.monotonic(), []
    while True:
        if interrupt_on and interrupt_on in ESCAPES.sub("", "".join(t for _, t in pieces)):
            os.killpg(process.pid, signal.SIGINT)
            interrupt_on = None
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not data:
                break
            pieces.append((time.monotonic() - start, data.decode(errors="replace")))
        elif process.poll() is not None:
            break
        assert time.monotonic() - start < timeout
    os.close(controller)
    return process.wait(), pieces


@pytest.mark.slow
def test_the_live_view_shows_steps_rising_while_a_stage_runs(weights, tmp_path):
    out = tmp_path / "out"
    args = [a for a in generate_args(weights, write_prompts(tmp_path / "p.jsonl", PROMPTS[:1]), out, "--hr-steps",
                                     "300", "--no-previews") if a != "--quiet"]
    code, pieces = run_in_terminal(args)
    text = "".join(t for _, t in pieces)
    assert code == 0, text[-3000:]
    # The running column shows `<id> <step>/<steps>` for the HR job: seen rising, at different times.
    seen = [(at, int(m.group(1))) for at, piece in pieces for m in re.finditer(r"fox (\d+)/300", piece)]
    steps = [step for _, step in seen]
    assert len(set(steps)) >= 3 and steps == sorted(steps) and max(steps) < 300  # shown before the stage ended
    assert seen[-1][0] - seen[0][0] > 0.5  # updates over time, not one burst at the end
    assert "Traceback" not in text and "done:" in text
    shown = ESCAPES.sub("", text)
    assert f"pixelwizard generate {out}" in shown and "elapsed" in shown
    # Each job's row says what it does before its first step too, and for how long.
    assert re.search(r"hr 00000 +(starting|reading its inputs|loading hr_dit) +0:\d\d", shown), shown[-3000:]
    assert re.search(r"hr 00000 +sampling fox \d+/300 +0:\d\d", shown)


def frames(text: str) -> list[str]:
    """The live view's successive frames (each starts with its title line)."""
    return ["pixelwizard" + frame for frame in ESCAPES.sub("", text).split("pixelwizard")[1:]]


@pytest.mark.slow
def test_after_ctrl_c_nothing_stale_stays_on_screen(finished_run, weights, slow_hr, tmp_path):
    out = copy_run(finished_run, tmp_path / "out")
    # steps long enough to see the stop wait for them
    args = [a for a in generate_args(weights, finished_run.parent / "prompts.jsonl", out, *slow_hr, "--hr-steps", "50",
                                     "--until", "hr", "--shard-size", "2") if a != "--quiet"]
    code, pieces = run_in_terminal(args, interrupt_on="sampling")
    text = ESCAPES.sub("", "".join(t for _, t in pieces))
    assert code == 128 + signal.SIGINT and "stopped by SIGINT" in text, text[-3000:]
    view = [f for f in frames(text) if f.startswith(f"pixelwizard generate {out}")]
    assert any("stopping:" in f for f in view)  # the stop is shown while the jobs finish their step
    last = view[-1]
    assert not [word for word in ("left", "stopping", "sampling", "running") if word in last], last  # nothing stale


@pytest.mark.slow
def test_a_redecode_is_titled_decode(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path / "out")
    code, pieces = run_in_terminal(["decode", str(out), "--overlap", "0"])
    text = ESCAPES.sub("", "".join(t for _, t in pieces))
    assert code == 0, text[-3000:]
    assert f"pixelwizard decode {out}" in text and "pixelwizard generate" not in text
    assert re.search(r"decode p2w-ov0-24fps 0000\d +decoding \w+ \d/3", text)


@pytest.mark.slow
def test_quiet_prints_one_line_per_finished_prompt(weights, tmp_path):
    out = tmp_path / "out"
    result = generate(weights, write_prompts(tmp_path / "p.jsonl", PROMPTS[:2]), out)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    finished = [line for line in lines if " done in " in line]
    assert len(finished) == sum(computed(out).values())  # one line per prompt and stage, no job blocks
    assert len(lines) == len(finished) + 1 and lines[-1].startswith("done:")


def test_a_failure_s_text_is_printed_as_it_is(tmp_path):
    """Errors hold brackets (gloo's "[/pytorch/third_party/gloo/...cc:553]"), which rich would read as markup."""
    console = Console(record=True, width=200)
    before = [StageStatus("decode", "decode p2w-ov1-24fps", Counter(missing=1))]
    view = LiveView(Layout(tmp_path), before, console, title="pixelwizard decode", quiet=True)
    error = "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    view.consume({"stage": "decode", "action": "failed", "id": "fox", "error": error})
    assert console.export_text().strip() == f"failed decode p2w-ov1-24fps fox: {error}"
    assert view.failed["decode"] == 1
