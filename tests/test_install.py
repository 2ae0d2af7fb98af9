"""A plain install runs anywhere: the wheel built from this checkout, installed into a fresh virtual environment
(next to the torch this one has, no editable link to the checkout), runs `pixelwizard demo` from an unrelated
directory, with the Snakefile, stage scripts, profiles and demo prompts shipped inside the package."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from pixelwizard.io.video import read_video

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("pixelwizard/workflow/Snakefile", "pixelwizard/workflow/cli.py", "pixelwizard/workflow/config.yaml",
           "pixelwizard/workflow/stages/hr.py", "pixelwizard/workflow/profiles/local/config.yaml",
           "pixelwizard/workflow/profiles/slurm/config.yaml", "pixelwizard/workflow/prompts/demo.txt")


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_demo_from_anywhere(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
        REPO)
    (wheel,) = (tmp_path / "dist").glob("pixelwizard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert set(SHIPPED) <= set(names)
    assert not [n for n in names if n.startswith(("cli.py", "tests/", "bench/", "stages/"))]  # no top-level modules

    # A fresh environment that sees this one's packages (torch and the rest) but not its editable checkout.
    env_dir = tmp_path / "venv"
    run(sys.executable, "-m", "venv", env_dir)
    python = env_dir / "bin" / "python"
    site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "outer.pth").write_text(ours + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import pixelwizard.workflow as w, pixelwizard as p; print(w.__file__, p.__file__)",
                cwd=elsewhere).stdout
    assert str(REPO) not in where and str(env_dir) in where
    run(env_dir / "bin" / "pixelwizard", "demo", "--out", "demo", "--quiet", cwd=elsewhere, timeout=900)
    videos = sorted((elsewhere / "demo" / "decode").rglob("*.mp4"))
    assert len(videos) == 3
    frames, fps = read_video(videos[0])
    assert frames.shape == (9, 160, 256, 3) and fps == 24
