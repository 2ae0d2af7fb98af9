"""Launched by tests/test_distributed.py under torchrun (gloo, CPU): the tiny HR model FSDP2-sharded and/or
Ulysses sequence-parallel, one forward and one short HR sampling per mode; rank 0 alone writes the results.

    python -m torch.distributed.run --standalone --nproc_per_node N tests/distributed_worker.py RUN_DIR MODE...

MODE: "ulysses" (sequence parallel, full weights), "fsdp" (sharded weights, whole sequence) or "both".
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pixelwizard import distributed
from pixelwizard.checkpoints.tiny import randomize_
from pixelwizard.checkpoints.trainer import load_hr_model, save_trainer_checkpoint
from pixelwizard.models.config import DiTConfig, VAEConfig, config_from_json, config_to_json
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline.presets import get_preset
from pixelwizard.sampling.samplers import Conditioning, sample_hr
from pixelwizard.sampling.seeds import gaussian_noise

# 6 heads: Ulysses over 2 or 3 ranks; dim 192 keeps the adapter's GroupNorm(16, dim / 4) valid.
CONFIG = DiTConfig(dim=192, ffn_dim=384, freq_dim=32, num_heads=6, num_layers=2, text_dim=32, text_len=16)
# HR token grid 1 x 5 x 7 = 35 tokens: divisible by neither 2 nor 3, so the last shard is padded.
SETTINGS = {"width": 224, "height": 160, "frames": 1, "lr_width": 64, "lr_height": 32, "hr_steps": 2}
SEED = 7
SHARDED = ("fsdp", "both")
SEQUENCE_PARALLEL = ("ulysses", "both")


def write_run(run_dir: Path) -> None:
    """The tiny HR checkpoint, its config and fixed inputs under `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config_to_json(CONFIG, run_dir / "config.json")
    save_trainer_checkpoint(randomize_(HRDiT(CONFIG), seed=3), run_dir / "model.pt")
    preset = get_preset("tiny", **SETTINGS)
    gen = torch.Generator().manual_seed(11)
    hr_shape = VAEConfig().latent_shape(preset.frames, preset.height, preset.width)
    torch.save({
        "prompt": torch.randn(5, CONFIG.text_dim, generator=gen),
        "uncond": torch.randn(3, CONFIG.text_dim, generator=gen),
        "lr_latent": torch.randn(VAEConfig().latent_shape(preset.frames, preset.lr_height, preset.lr_width),
                                 generator=gen),
        "x": torch.randn(1, *hr_shape, generator=gen),
        "tokens": hr_shape[1] * (hr_shape[2] // 2) * (hr_shape[3] // 2),
    }, run_dir / "inputs.pt")


def outputs(model: HRDiT, inputs: dict[str, torch.Tensor], sharded: bool = False) -> dict[str, torch.Tensor]:
    """One velocity at a fixed (t, dt), a 2-step HR latent with CFG and, unless the weights are sharded (FSDP
    gathers them only through the model's own call), the base DiT's velocity for one timestep per token."""
    preset = get_preset("tiny", **SETTINGS)
    with distributed.no_autograd(model):  # as the samplers run it: no_grad for a sharded model
        x = inputs["x"]
        features = model.anchor_features(inputs["lr_latent"][None], x.shape)
        result = {"velocity": model(x, torch.tensor([900.0]), torch.tensor([250.0]), [inputs["prompt"]], features)}
        if not sharded:
            t = torch.linspace(0.0, 999.0, inputs["tokens"])[None]
            result["per_token"] = WanDiT.forward(model, x, t, [inputs["prompt"]])
    result["latent"] = sample_hr(model, Conditioning(inputs["prompt"], inputs["uncond"]), inputs["lr_latent"],
                                 gaussian_noise(inputs["x"].shape[1:], SEED), **preset.hr_sampling())
    return result


def load(run_dir: Path, mesh=None) -> HRDiT:
    return load_hr_model(run_dir / "model.pt", config_from_json(DiTConfig, run_dir / "config.json"), mesh=mesh)


def main(run_dir: Path, modes: list[str]) -> None:
    device = distributed.init_from_env("cpu")
    inputs = torch.load(run_dir / "inputs.pt")
    results = {}
    for mode in modes:
        model = load(run_dir, distributed.device_mesh(device) if mode in SHARDED else None)
        if mode in SEQUENCE_PARALLEL:
            model.use_sequence_parallel(distributed.SequenceParallel())
        results[mode] = outputs(model, inputs, sharded=mode in SHARDED)
        per_rank = [None] * distributed.world_size()
        dist.all_gather_object(per_rank, distributed.local_parameter_bytes(model))
        results[mode]["parameter_bytes"] = per_rank
    if distributed.is_writer():
        torch.save(results, run_dir / f"result-{distributed.world_size()}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
