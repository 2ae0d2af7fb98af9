import multiprocessing
import os
import subprocess
import sys

import pytest

from pixelwizard.pipeline import gpu_lease as gpus


@pytest.fixture
def four_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(gpus, "LOCK_DIR", tmp_path)
    monkeypatch.setattr(gpus, "POLL_S", 0.01)


def hold(count, ready, release, lock_dir):
    gpus.LOCK_DIR = lock_dir
    with gpus.gpu_lease(count) as env:
        ready.put(env["CUDA_VISIBLE_DEVICES"])
        release.wait(10)


def test_leases_are_disjoint_and_released_by_a_dead_holder(four_gpus, tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Queue(), ctx.Event()
    holder = ctx.Process(target=hold, args=(3, ready, release, tmp_path))
    holder.start()
    held = ready.get(timeout=10).split(",")
    assert held == ["0", "1", "2"]
    with gpus.gpu_lease(1) as env:
        assert env == {"CUDA_VISIBLE_DEVICES": "3"}
    with pytest.raises(TimeoutError):
        with gpus.gpu_lease(2, timeout_s=0.1):
            pass
    holder.kill()  # SIGKILL: the kernel drops its locks
    holder.join()
    with gpus.gpu_lease(4) as env:
        assert env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_no_gpus_means_no_environment_change(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with gpus.gpu_lease(2) as env:
        assert env == {}


def test_asking_for_more_than_visible(four_gpus):
    with pytest.raises(RuntimeError, match="needs 5 GPUs but only 4 are visible"):
        with gpus.gpu_lease(5):
            pass


def test_jobs_in_one_slurm_allocation_share_its_gpus_without_overlap(four_gpus, monkeypatch):
    """`salloc` + the local profile: every job runs inside allocation 42 and must get GPUs of its own."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with gpus.gpu_lease(2) as first, gpus.gpu_lease(2) as second:
        assert first == {"CUDA_VISIBLE_DEVICES": "0,1"} and second == {"CUDA_VISIBLE_DEVICES": "2,3"}
        monkeypatch.setenv("SLURM_JOB_ID", "43")  # another allocation numbers its own GPUs from 0
        with gpus.gpu_lease(2) as other:
            assert other == {"CUDA_VISIBLE_DEVICES": "0,1"}


def test_the_launcher_runs_the_job_on_its_lease_and_passes_its_exit_code(four_gpus, tmp_path):
    script = "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(3)"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "pixelwizard.pipeline.launch", "text", "00000", "2",
                             "logs/text/00000.log", "--", sys.executable, "-c", script], capture_output=True,
                            text=True, env=env, cwd=out)
    assert result.returncode == 3, result.stderr
    assert (out / "logs" / "text" / "00000.log").read_text().strip() == "0,1"
    assert not list((out / ".pixelwizard" / "jobs").iterdir())  # its record went with it
