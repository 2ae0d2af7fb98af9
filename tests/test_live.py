"""What `generate` shows while it runs, in a real pseudo-terminal: the live view's step counts rise while a stage
runs; `--quiet` prints one line per finished prompt."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from conftest import PROMPTS, computed, generate, generate_args, write_prompts


def run_in_terminal(args: list[str], timeout: float = 600) -> tuple[int, list[tuple[float, str]]]:
    """Run `pixelwizard ARGS` with a terminal as its stdout and stderr; returns the exit code and what it printed,
    as (seconds since start, text) pieces."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "50", "TERM": "xterm-256color"}
    process = subprocess.Popen([sys.executable, "-m", "pixelwizard.workflow.cli", *args], stdin=terminal,
                               stdout=terminal, stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    start, pieces = time.monotonic(), []
    while True:
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
    args = [a for a in generate_args(weights, write_prompts(tmp_path / "p.jsonl", PROMPTS[:2]), out, "--hr-steps",
                                     "60") if a != "--quiet"]
    code, pieces = run_in_terminal(args)
    text = "".join(t for _, t in pieces)
    assert code == 0, text[-3000:]
    # The running column shows `<id> <step>/<steps>` for the HR job: seen rising, at different times.
    seen = [(at, int(m.group(1))) for at, piece in pieces for m in re.finditer(r"fox (\d+)/60", piece)]
    steps = [step for _, step in seen]
    assert len(set(steps)) >= 3 and steps == sorted(steps) and 0 < min(steps) and max(steps) < 60
    assert seen[-1][0] - seen[0][0] > 0.5  # updates over time, not one burst at the end
    assert "Traceback" not in text and "done:" in text


@pytest.mark.slow
def test_quiet_prints_one_line_per_finished_prompt(weights, tmp_path):
    out = tmp_path / "out"
    result = generate(weights, write_prompts(tmp_path / "p.jsonl", PROMPTS[:2]), out)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    finished = [line for line in lines if " done in " in line]
    assert len(finished) == sum(computed(out).values())  # one line per prompt and stage, no job blocks
    assert len(lines) == len(finished) + 1 and lines[-1].startswith("done:")
