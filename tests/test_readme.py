"""The README stays true: its tiny `generate` command and its Python API snippet work as pasted (from a directory
laid out as after `make demo`), and its table of status states is the one `status` uses."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pixelwizard.pipeline.status import STATES

README = (REPO / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


@pytest.fixture
def after_make_demo(weights, tmp_path) -> Path:
    """A directory as the README's commands expect it: demo-out/weights from `make demo`, the demo prompts."""
    shutil.copytree(weights["ckpt_dir"].parent, tmp_path / "demo-out" / "weights")
    (tmp_path / "prompts").mkdir()
    shutil.copy(REPO / "prompts" / "demo.txt", tmp_path / "prompts" / "demo.txt")
    return tmp_path


def test_the_tiny_generate_command_runs_as_pasted(after_make_demo):
    (command,) = [b for b in blocks("bash") if "--preset tiny" in b]
    args = shlex.split(command.replace("\\\n", " "))
    assert args[0] == ".venv/bin/pixelwizard"
    result = subprocess.run([sys.executable, "-m", "pixelwizard.workflow.cli", *args[1:], "--dry-run"],
                            cwd=after_make_demo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dry run: nothing was changed" in result.stderr and "3 outputs to make" in result.stderr


@pytest.mark.slow
def test_the_python_api_snippet_runs_as_pasted(after_make_demo):
    (snippet,) = [b for b in blocks("python") if "from pixelwizard import Pipeline" in b]
    result = subprocess.run([sys.executable, "-c", snippet + "\nprint(video.frames.shape, video.fps)"],
                            cwd=after_make_demo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["(9,", "160,", "256,", "3)", "24"]
    assert (after_make_demo / "waves.mp4").stat().st_size > 0


def test_the_status_states_are_the_ones_status_uses():
    table = README[README.index("| state | what it means |"):].split("\n\n")[0]
    rows = re.findall(r"^\| (\w+) \|", table.split("|---|---|")[1], re.M)
    assert rows == list(STATES)
