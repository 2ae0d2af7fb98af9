"""The stage table is the one statement of the pipeline: Snakemake's rule graph, every output's provenance and
`pixelwizard status` all follow it. Changed in a scratch copy of the repository (one stage's `reads`), all three
change with it, and nothing else needed editing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, make_outputs, write_prompts
from media import write_video
from test_provenance import snapshot

from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.provenance import Provenance
from pixelwizard.pipeline.stages import STAGES


def run_config(weights, out: Path) -> Path:
    """A run configuration as config.yaml describes it, for Snakemake directly; its prompts and a video."""
    out.mkdir(parents=True, exist_ok=True)
    write_prompts(out / "prompts.jsonl")
    with open(out / "prompts.jsonl", "a") as prompts:
        prompts.write(json.dumps({"id": "clip", "video": str(write_video(out / "clip.mp4", 9))}) + "\n")
    config = {"prompts": "prompts.jsonl", "ckpt_dir": str(weights["ckpt_dir"]), "hr_ckpt": str(weights["hr_ckpt"]),
              "preset": "tiny"}
    (out / "run.yaml").write_text(yaml.safe_dump(config))
    return out / "run.yaml"


def rule_graph(repo: Path, out: Path, config: Path) -> set[tuple[str, str]]:
    """(upstream rule, rule) edges of `snakemake --rulegraph` for the Snakefile in `repo`."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    dot = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile"), "--directory",
                          str(out), "--configfile", str(config), "--cores", "1", "--rulegraph"],
                         capture_output=True, text=True, env=env, cwd=out, check=True).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)}


def table_edges(stages) -> set[tuple[str, str]]:
    return {(up, stage.name) for stage in stages.values() for up in stage.reads}


def test_the_snakefile_graph_is_the_stage_table(weights, tmp_path):
    config = run_config(weights, tmp_path / "out")
    edges = rule_graph(REPO, tmp_path / "out", config)
    assert {e for e in edges if e[1] != "all"} == table_edges(STAGES)
    assert {up for up, rule in edges if rule == "all"} == set(STAGES)  # every marker is a target


def test_changing_what_a_stage_reads_moves_the_graph_provenance_and_status(weights, tmp_path):
    scratch = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, scratch / name)
    table = scratch / "pixelwizard" / "pipeline" / "stages.py"
    source = table.read_text()
    edited = source.replace('Stage("decode", reads=("hr",)', 'Stage("decode", reads=("hr", "lr")')
    assert edited != source
    table.write_text(edited)

    out = tmp_path / "out"
    layout = Layout(out)
    make_outputs(Provenance(snapshot(weights), layout))  # a finished run under today's table
    config = run_config(weights, out)

    # The graph: decode now waits for lr as well.
    assert table_edges(STAGES) | {("lr", "decode")} == {e for e in rule_graph(scratch, out, config) if e[1] != "all"}

    # Provenance and status, seen through the scratch copy's package.
    probe = f"""
import sys
from pathlib import Path
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.provenance import Provenance
from test_provenance import snapshot
weights = {{k: Path(v) for k, v in {dict((k, str(v)) for k, v in weights.items())!r}.items()}}
provenance = Provenance(snapshot(weights), Layout(Path({str(out)!r})))
print(sorted(provenance.record("decode", "fox")["inputs"]))
print(provenance.state("decode", "fox").state, provenance.state("decode", "fox").reasons)
print(provenance.state("hr", "fox").state)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(scratch), str(REPO / "tests")])}
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                           check=True)
    assert shown.stdout.splitlines() == ["['hr', 'lr']", "stale ('now reads lr',)", "done"]
