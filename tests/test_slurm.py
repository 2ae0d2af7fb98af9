"""The tiny pipeline on a real single-node SLURM cluster (tests/slurm_local.py) through `pixelwizard generate
--profile slurm`: every stage an sbatch job, the HR stage one multi-GPU torchrun job on fake GPUs; then an HR job
cancelled with scancel mid-shard and a rerun that resumes it. Needs root (the cluster's daemons; apt-get installs
slurm-wlm and munge when missing); skipped otherwise, or failed when PIXELWIZARD_REQUIRE_SLURM is set (CI).

    .venv/bin/python -m pytest -m slurm tests/test_slurm.py      # 3-5 minutes on 2 cores
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import PROMPTS, STAGES, computed, events, frames_of, generate_args, write_prompts
from slurm_local import ACTIVE_STATES, LocalSlurm, SlurmUnavailable

from pixelwizard.checkpoints.tiny import write_tiny_weights
from pixelwizard.io.latent_store import read_store
from pixelwizard.io.video import read_video

pytestmark = pytest.mark.slurm

HR_GPUS = 2  # one torchrun job of 2 processes (gloo on the CPU) holding 2 fake GPUs
SLOW_HR_STEPS = 60  # seconds per prompt on 2 cores: room to cancel a job between two prompts
# Seconds per `pixelwizard generate`: a hung poll must fail the test, not hang CI. The first run takes 171 s on 2
# idle cores (its ~12 jobs' start-up is most of it): 2.1x margin.
RUN_TIMEOUT = 360


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    slurm = LocalSlurm(prefix=tmp_path_factory.mktemp("slurm"), gpus=4)
    request.addfinalizer(slurm.down)  # also after a half-finished bring-up
    try:
        env = slurm.up()
    except SlurmUnavailable as err:
        if os.environ.get("PIXELWIZARD_REQUIRE_SLURM"):
            pytest.fail(f"PIXELWIZARD_REQUIRE_SLURM is set but no local SLURM: {err}")
        pytest.skip(f"no local SLURM cluster: {err}")
    return slurm, env


def per_prompt(counts: Counter) -> Counter:
    return Counter({k: v for k, v in counts.items() if k[0] != "uncond"})


def generate(weights: dict, out: Path, *extra: str) -> list[str]:
    prompts = write_prompts(out.parent / "prompts.jsonl")
    return [sys.executable, "-m", "pixelwizard.workflow.cli", *generate_args(
        weights, prompts, out, "--shard-size", "2", "--hr-gpus", str(HR_GPUS), "--profile", "slurm", *extra)]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as sink:  # in its own session, so a timeout can kill Snakemake along with the CLI
        return subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process: subprocess.Popen, slurm: LocalSlurm, log: Path, timeout: float = RUN_TIMEOUT) -> int:
    """Wait for the run; past `timeout`, kill it and its SLURM jobs and fail with the end of its log."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        subprocess.run(["scancel", "--user", "root"], env=slurm.env(), check=False)
        pytest.fail(f"pixelwizard generate ran past its time limit:\n{log.read_text()[-4000:]}")


def run(args: list[str], slurm: LocalSlurm, env: dict[str, str], log: Path) -> None:
    code = finish(start(args, env, log), slurm, log)
    assert code == 0, log.read_text()[-4000:]


def rule_jobs(slurm: LocalSlurm, rule: str) -> list[dict[str, str]]:
    return [j for j in slurm.jobs() if j.get("Comment", "").startswith(f"rule_{rule}_")]


@pytest.fixture(scope="module")
def first_run(cluster, tmp_path_factory):
    slurm, env = cluster
    root = tmp_path_factory.mktemp("run")
    weights = write_tiny_weights(root / "weights", seed=0)
    out = root / "out"
    start_time = time.monotonic()
    run(generate(weights, out), slurm, env, root / "first.log")
    print(f"first run on SLURM: {time.monotonic() - start_time:.0f} s")
    return weights, out


def test_pipeline_runs_as_slurm_jobs(cluster, first_run):
    slurm, _ = cluster
    _, out = first_run
    assert per_prompt(computed(out)) == Counter({(s, p): 1 for s in STAGES for p, _ in PROMPTS})
    for prompt_id, _ in PROMPTS:
        frames = frames_of(out, prompt_id)
        assert frames.shape == (9, 160, 256, 3)  # tiny preset: 9 frames of 256x160
        assert frames.std() > 1  # not a flat image
        preview, fps = read_video(out / "preview" / f"{prompt_id}.mp4")
        assert preview.shape == (9, 64, 128, 3) and fps == 24

    # Every stage job went through sbatch with the profile's resources; HR as one task holding all its GPUs.
    per_rule = Counter(j["Comment"].split("_wildcards")[0].removeprefix("rule_") for j in slurm.jobs()
                       if j.get("Comment", "").startswith("rule_"))
    assert per_rule == {"uncond": 1, "text": 2, "lr": 2, "preview": 2, "hr": 2, "decode": 2}
    for job in rule_jobs(slurm, "hr"):
        assert job["JobState"] == "COMPLETED" and job["Partition"] == slurm.partition
        assert job["TresPerJob"] == f"gres:gpu:{HR_GPUS}" and job["NumTasks"] == "1"
        assert job["NumCPUs"] == str(8 * HR_GPUS) and job["MinMemoryNode"] == "96000M"
        assert job["TimeLimit"] == "08:00:00"


def test_cancelled_hr_job_resumes_without_recomputing(cluster, first_run, tmp_path):
    """More HR steps re-run HR and decode only; cancel the HR jobs once a first prompt is done, run again."""
    slurm, env = cluster
    weights, out = first_run
    args = generate(weights, out, "--hr-steps", str(SLOW_HR_STEPS))
    before = len(events(out))
    log = tmp_path / "killed.log"
    process = start(args, env, log)
    deadline = time.monotonic() + RUN_TIMEOUT
    while not any(stage == "hr" for stage, _ in computed(out, before)):
        if process.poll() is not None:
            pytest.fail(f"the run ended before HR computed a prompt:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            finish(process, slurm, log, timeout=0)  # kills the run and fails
        time.sleep(0.05)
    running = [j["JobId"] for j in rule_jobs(slurm, "hr") if j["JobState"] == "RUNNING"]
    assert running, "no HR job running to cancel"
    subprocess.run(["scancel", *running], env=env, check=True)
    assert finish(process, slurm, log) != 0  # Snakemake saw the job fail
    hr_done = {p for (stage, p) in computed(out, before) if stage == "hr"}
    assert 0 < len(hr_done) < len(PROMPTS), "the cancel did not land mid-shard"
    assert {j["JobState"] for j in rule_jobs(slurm, "hr") if j["JobId"] in running} == {"CANCELLED"}

    run(args, slurm, env, tmp_path / "resumed.log")
    # Across the cancelled run and the rerun: every prompt's HR and decode computed exactly once, nothing upstream.
    assert computed(out, before) == Counter({(s, p): 1 for s in ("hr", "decode") for p, _ in PROMPTS})
    for prompt_id, _ in PROMPTS:
        assert frames_of(out, prompt_id).shape == (9, 160, 256, 3)
        assert read_store(out / "hr" / f"{prompt_id}.zarr")[1]["provenance"]["settings"]["hr_steps"] == SLOW_HR_STEPS
    assert not [j for j in slurm.jobs() if j["JobState"] in ACTIVE_STATES]
