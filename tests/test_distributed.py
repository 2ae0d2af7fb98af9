"""Multi-process HR inference on the CPU (gloo, torchrun): Ulysses and FSDP2 against one process, and the HR
stage run by two processes in lockstep with rank 0 alone writing."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS, events, generate, write_prompts
from distributed_worker import SETTINGS, load, outputs, write_run

from pixelwizard.distributed import check_ulysses_size, local_parameter_bytes
from pixelwizard.io.latent_store import read_store
from pixelwizard.models.config import VAEConfig

REPO = Path(__file__).parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}  # one process vs several: only summation order differs


def torchrun(processes: int, script: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(script), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """The worker's results for 2 and 3 processes, and the single-process reference."""
    run_dir = tmp_path_factory.mktemp("distributed")
    write_run(run_dir)
    check(torchrun(2, WORKER, str(run_dir), "ulysses", "fsdp", "both"))
    check(torchrun(3, WORKER, str(run_dir), "ulysses"))
    torch.manual_seed(0)
    model = load(run_dir)
    return {
        "reference": outputs(model, torch.load(run_dir / "inputs.pt")),
        "full_bytes": local_parameter_bytes(model),
        "adapter_bytes": local_parameter_bytes(model.spatial_adapter),
        2: torch.load(run_dir / "result-2.pt"),
        3: torch.load(run_dir / "result-3.pt"),
    }


def test_token_count_is_divisible_by_neither_process_count(model_run):
    _, t, h, w = VAEConfig().latent_shape(SETTINGS["frames"], SETTINGS["height"], SETTINGS["width"])
    tokens = t * (h // 2) * (w // 2)
    assert tokens % 2 and tokens % 3
    assert model_run["reference"]["velocity"].shape[2:] == (t, h, w)


@pytest.mark.parametrize("processes", [2, 3])
def test_ulysses_matches_one_process(model_run, processes):
    got, want = model_run[processes]["ulysses"], model_run["reference"]
    for name in ("velocity", "per_token", "latent"):
        assert got[name].shape == want[name].shape
        torch.testing.assert_close(got[name], want[name], **TOLERANCE)


@pytest.mark.parametrize("mode", ["fsdp", "both"])
def test_fsdp_matches_unsharded(model_run, mode):
    got, want = model_run[2][mode], model_run["reference"]
    for name in ("velocity", "latent"):
        torch.testing.assert_close(got[name], want[name], **TOLERANCE)


def test_fsdp_ranks_hold_half_the_dit_and_the_whole_adapter(model_run):
    full, adapter = model_run["full_bytes"], model_run["adapter_bytes"]
    sharded = [b - adapter for b in model_run[2]["fsdp"]["parameter_bytes"]]
    assert sum(sharded) == full - adapter  # every sharded byte on exactly one rank
    for part in sharded:
        assert abs(part - (full - adapter) / 2) < 0.01 * full
    assert model_run[2]["ulysses"]["parameter_bytes"] == [full, full]  # Ulysses alone replicates


def test_ulysses_size_must_divide_the_heads():
    check_ulysses_size(24, 8)
    with pytest.raises(ValueError, match="valid counts: 1, 2, 3, 4, 6, 8, 12, 24"):
        check_ulysses_size(24, 5)


@pytest.mark.slow
def test_hr_stage_on_two_processes_matches_one_and_only_rank0_writes(weights, tmp_path):
    """The HR stage through the pipeline as one torchrun job of two processes (FSDP + Ulysses, gloo) against the
    same stage in one plain process, from the same LR anchors."""
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS[:3])
    solo, duo = tmp_path / "solo", tmp_path / "duo"
    generate(weights, prompts, solo, "--until", "lr", "--no-previews")
    shutil.copytree(solo, duo, symlinks=True)
    generate(weights, prompts, solo, "--until", "hr", "--no-previews")
    before = len(events(duo))
    generate(weights, prompts, duo, "--until", "hr", "--no-previews", "--hr-gpus", "2")
    hr_events = [e for e in events(duo)[before:] if e["stage"] == "hr"]
    assert [(e["id"], e["action"]) for e in hr_events if e["action"] == "computed"] == \
        [(p, "computed") for p, _ in PROMPTS[:3]]
    assert len({e["pid"] for e in hr_events}) == 1  # one process records events
    for prompt_id, _ in PROMPTS[:3]:
        got = read_store(duo / "hr" / f"{prompt_id}.zarr", ["latent"])[0]["latent"]
        want = read_store(solo / "hr" / f"{prompt_id}.zarr", ["latent"])[0]["latent"]
        torch.testing.assert_close(got, want, **TOLERANCE)
    leftovers = [p.name for p in (duo / "hr").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no second writer's temporary stores
