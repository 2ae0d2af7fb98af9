"""What answers at once must not wait for torch: `pixelwizard --help`, every subcommand's `--help` and every argument
or configuration error run in a fresh process that never imports torch; a stage job imports only what its stage
uses (transformers for the text encoder alone). The times are measured in bench/startup.py, not here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import write_prompts

from pixelwizard.workflow.cli import app

# The CLI's own entry point in a fresh interpreter, reporting at exit whether torch was imported.
PROBE = """
import atexit, sys
atexit.register(lambda: print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr))
sys.argv[0] = "pixelwizard"
from pixelwizard.workflow.cli import main
main()
"""
COMMANDS = sorted(typer.main.get_command(app).commands)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_no_torch(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.rstrip().endswith("torch not imported"), result.stderr[-2000:]
    shown = " ".join((result.stdout + result.stderr).split())
    for fragment in fragments:
        assert fragment in shown, shown


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_does_not_import_torch(command):
    assert_no_torch(run_cli(*([command] if command else []), "--help"), 0, "Usage:")


def test_argument_and_configuration_errors_do_not_import_torch(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text('{"id": "../escape", "text": "x"}\n')
    paths = ["--out", tmp_path / "out", "--ckpt-dir", tmp_path, "--hr-ckpt", tmp_path / "model.pt"]
    for args, fragments in [
        (["generate", prompts, "--out", tmp_path / "out", "--ckpt-dir", tmp_path], ["Missing option '--hr-ckpt'"]),
        (["generate", prompts, *paths, "--preset", "8k"], ["error:", "8k"]),
        (["generate", prompts, *paths, "--set", "frames=10"], ["error:", "frames=10: must be 4n+1"]),
        (["generate", prompts, *paths, "--until", "decode"], ["error: until='decode': choose one of lr, hr"]),
        (["generate", bad_prompts, *paths], ["error:", "bad.jsonl:1:"]),
        (["decode", tmp_path], ["error:"]),
        (["status", tmp_path / "typo"], ["error:"]),
        (["report", tmp_path / "typo"], ["error:"]),
    ]:
        assert_no_torch(run_cli(*args), 2, *fragments)
    assert not (tmp_path / "out").exists()


def test_a_stage_job_imports_only_what_its_stage_uses():
    """transformers (seconds to import) is for the text encoder: the other stages' jobs never load it."""
    stages = [p.stem for p in (Path(__file__).parents[1] / "stages").glob("*.py") if p.stem not in
              ("__init__", "text", "uncond")]
    probe = (f"import sys\nfor s in {stages!r}: __import__('pixelwizard.workflow.stages.' + s)\n"
             "print(sorted(m for m in ('transformers', 'tokenizers') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True)
    assert len(stages) >= 4 and shown.stdout.strip() == "[]"
