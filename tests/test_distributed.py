"""Multi-process HR inference on the CPU (gloo, torchrun): Ulysses and FSDP2 against one process, and the HR
stage run by two processes in lockstep with rank 0 alone writing."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import CONFIG, SETTINGS, load, outputs, write_run

from pixelwizard.distributed import check_ulysses_size, local_parameter_bytes
from pixelwizard.io.latent_store import read_store, write_store
from pixelwizard.pipeline.plan import UNCOND, Layout, StageSpec
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.sampling.samplers import latent_shape

REPO = Path(__file__).parents[1]
WORKER = REPO / "tests" / "distributed_worker.py"
STAGE = REPO / "stages" / "hr_shortcut.py"
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
    _, t, h, w = latent_shape(CONFIG.out_dim, SETTINGS["frames"], SETTINGS["width"], SETTINGS["height"])
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


def write_stage_inputs(out: Path, weights: Path, ids: list[str], hr_gpus: int) -> Path:
    """A run directory with text, uncond and LR stores for `ids`, and the HR stage spec; returns the spec."""
    layout = Layout(out)
    gen = torch.Generator().manual_seed(5)
    run = RunConfig(prompts=str(out / "prompts.txt"), out=str(out), ckpt_dir=str(weights),
                    hr_ckpt=str(weights / "model.pt"), preset="tiny", settings=SETTINGS, device="cpu",
                    hr_gpus=hr_gpus)
    preset = run.resolved_preset()
    lr_shape = latent_shape(CONFIG.out_dim, preset.frames, preset.lr_width, preset.lr_height)
    write_store(layout.text(UNCOND), {"negative": torch.randn(4, CONFIG.text_dim, generator=gen),
                                      "empty": torch.randn(2, CONFIG.text_dim, generator=gen)}, {"digest": "u"})
    for prompt_id in ids:
        write_store(layout.text(prompt_id), {"context": torch.randn(6, CONFIG.text_dim, generator=gen)},
                    {"digest": f"text-{prompt_id}"})
        write_store(layout.lr(prompt_id), {"latent": torch.randn(lr_shape, generator=gen)},
                    {"digest": f"lr-{prompt_id}"})
    spec = StageSpec(stage="hr", shard="00000", run=run, prompts=tuple(Prompt(i, f"prompt {i}") for i in ids))
    return spec.save()


def events(out: Path) -> list[dict]:
    return [json.loads(line) for line in Layout(out).events.read_text().splitlines()]


def test_hr_stage_on_two_processes_matches_one_and_only_rank0_writes(tmp_path):
    weights = tmp_path / "weights"
    write_run(weights)
    ids = ["a", "b", "c"]
    solo_spec = write_stage_inputs(tmp_path / "solo", weights, ids, hr_gpus=1)
    duo_spec = write_stage_inputs(tmp_path / "duo", weights, ids, hr_gpus=2)
    module_spec = importlib.util.spec_from_file_location("hr_shortcut", STAGE)
    stage = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(stage)
    assert stage.main([str(solo_spec)]) == 0

    duo = Layout(tmp_path / "duo")
    lr_c = duo.lr("c").rename(tmp_path / "lr-c.zarr")  # rank 0 finds c's anchor missing: all ranks must agree
    result = torchrun(2, STAGE, str(duo_spec))
    assert result.returncode != 0
    first = events(duo.out)
    assert [(e["id"], e["action"]) for e in first] == [("a", "computed"), ("b", "computed"), ("c", "failed")]
    assert "lr stage" in first[2]["error"]
    assert len({e["pid"] for e in first}) == 1  # one process records events
    assert not duo.done("hr", "00000").exists()

    lr_c.rename(duo.lr("c"))
    check(torchrun(2, STAGE, str(duo_spec)))
    assert [(e["id"], e["action"]) for e in events(duo.out)[3:]] == [("a", "skipped"), ("b", "skipped"),
                                                                    ("c", "computed")]
    assert duo.done("hr", "00000").exists()
    for prompt_id in ids:
        got = read_store(duo.hr(prompt_id), ["latent"])[0]["latent"]
        want = read_store(Layout(tmp_path / "solo").hr(prompt_id), ["latent"])[0]["latent"]
        torch.testing.assert_close(got, want, **TOLERANCE)
    leftovers = [p.name for p in (duo.out / "hr").iterdir() if p.name.startswith(".")]
    assert leftovers == []  # no second writer's temporary stores
