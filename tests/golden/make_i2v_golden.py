"""Make tests/golden/i2v_wan22.safetensors: reference tensors from the original Wan2.2 image-to-video code.

Runs `WanTI2V.i2v` (and, for comparison, `WanTI2V.t2v`) of Wan-Video/Wan2.2 itself: its preprocessing, masks,
per-token timesteps, schedulers, CFG and `WanModel`, on the CPU in float32 at a tiny DiT config, and records what
tests/test_i2v.py compares against:

    img/<case>       the source image (uint8 [H, W, 3])
    fitted/<case>    the image as i2v hands it to the VAE, [3, 1, oh, ow] as the u8 that to_tensor maps to [-1, 1]
    <run>/z          i2v runs: the first-frame latent the VAE stand-in returns (random: the VAE is not under test)
    <run>/noise      the noise the run draws from its seed          [C, T, h, w]
    <run>/inputs     i2v runs: the latent entering each step's model call  [steps, C, T, h, w]
    <run>/t          the per-token timesteps of each step           [steps, L]
    <run>/result     the final latent
    weights/<key>    the tiny DiT: written by pixelwizard's `save_dit`, loaded strictly into the original WanModel

Only the parts the original needs a GPU or a full install for are stood in for, here: the umT5 encoder (fixed
random embeddings), the VAE (records its input, returns a fixed random latent) and flash-attn (plain float32
softmax attention honouring k_lens; the original would run it in bf16 on a GPU). torchvision's PyPI wheel is a
CUDA build whose operators do not load beside a CPU torch, so its pure-Python modules are imported from the
installed wheel without its package __init__ (which registers those operators); `to_tensor` is torchvision's own.

    git -C WAN22_GIT archive HEAD wan | tar -x -C /tmp/Wan2.2
    python -m venv /tmp/golden && /tmp/golden/bin/pip install torch==2.13.0 torchvision==0.28.0 diffusers \\
        easydict imageio tqdm -e .
    /tmp/golden/bin/python tests/golden/make_i2v_golden.py /tmp/Wan2.2
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import inspect
import json
import math
import sys
import tempfile
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file


def source_package(name: str, path: Path) -> None:
    """Make `import name.sub` load name/sub.py from `path` without running name/__init__.py."""
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(path / name)]
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package


# before anything imports torchvision (pixelwizard imports transformers, which does)
source_package("torchvision", Path(importlib.util.find_spec("torchvision").origin).parents[1])

from pixelwizard.checkpoints import wan as weights  # noqa: E402
from pixelwizard.checkpoints.tiny import randomize_  # noqa: E402
from pixelwizard.models.config import DiTConfig  # noqa: E402
from pixelwizard.models.dit import WanDiT  # noqa: E402

OUT = Path(__file__).with_name("i2v_wan22.safetensors")
CONFIG = DiTConfig(dim=32, ffn_dim=64, freq_dim=16, num_heads=2, num_layers=2, text_dim=16, text_len=16)
FRAMES = 9  # -> 3 latent frames
# Preprocessing cases: (name, image width, height, max_area); i2v picks the output size from the image's aspect.
IMAGES = [("landscape", 53, 37, 96 * 64), ("portrait", 41, 70, 64 * 96), ("wide_down", 150, 61, 128 * 32),
          ("square_odd", 33, 33, 64 * 64)]
# Sampling runs: (name, mode, image case (its fitted size for t2v), solver, steps, shift, guidance, seed)
RUNS = [("unipc", "i2v", "landscape", "unipc", 5, 5.0, 5.0, 11), ("dpmpp", "i2v", "portrait", "dpm++", 4, 3.0, 3.5, 12),
        ("t2v", "t2v", "landscape", "unipc", 5, 5.0, 5.0, 11)]


def import_wan(root: Path) -> types.ModuleType:
    """wan.textimage2video from a source tree, without wan/__init__.py (it imports every pipeline's extras)."""
    source_package("wan", root)
    current_device, torch.cuda.current_device = torch.cuda.current_device, lambda: 0  # a default argument in t5.py
    try:
        import wan.modules.model as model_module
        import wan.textimage2video as ti2v
    finally:
        torch.cuda.current_device = current_device

    model_module.flash_attention = cpu_attention
    return ti2v


def cpu_attention(q, k, v, q_lens=None, k_lens=None, dropout_p=0.0, softmax_scale=None, q_scale=None, causal=False,
                  window_size=(-1, -1), deterministic=False, dtype=None, version=None):
    """flash_attention's contract ([B, L, N, D] in and out, keys past k_lens masked) in float32 on the CPU."""
    assert q_lens is None and not causal and tuple(window_size) == (-1, -1) and softmax_scale is None
    mask = None
    if k_lens is not None:
        mask = (torch.arange(k.shape[1])[None, :] < k_lens[:, None])[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                         v.transpose(1, 2).float(), attn_mask=mask)
    return out.transpose(1, 2).contiguous().type_as(q)


class TextEncoderStandIn:
    def __init__(self, embeddings: dict[str, torch.Tensor]):
        self.embeddings = embeddings

    def __call__(self, texts, device):
        return [self.embeddings[t].to(device) for t in texts]


class VAEStandIn:
    """Records the image i2v encodes and returns `z`; `decode` returns the latent itself, so i2v returns it."""

    def __init__(self, z_dim: int, z: torch.Tensor | None = None):
        self.model = types.SimpleNamespace(z_dim=z_dim)
        self.z = z
        self.encoded: list[torch.Tensor] = []

    def encode(self, videos):
        self.encoded.append(videos[0].clone())
        return [self.z if self.z is not None else torch.zeros(self.model.z_dim, 1, 1, 1)]

    def decode(self, latents):
        return latents


class RecordingModel:
    """The original WanModel, recording the latent and per-token timesteps of each conditional call."""

    def __init__(self, model):
        self.model = model
        self.inputs: list[torch.Tensor] = []
        self.t: list[torch.Tensor] = []
        self.calls = 0

    def __call__(self, x, t, context, seq_len):
        if self.calls % 2 == 0:  # i2v calls the conditional branch first, then the unconditional one
            self.inputs.append(x[0].clone())
            self.t.append(t[0].clone())
        self.calls += 1
        return self.model(x, t=t, context=context, seq_len=seq_len)


def load_original(ti2v: types.ModuleType, ours: WanDiT):
    """The original WanModel with the weights of a checkpoint directory written by our `save_dit`, loaded
    strictly (every key and shape). Built from the directory's config.json by hand: `from_pretrained` ignores
    config.json's text_dim (it stays 4096), which only the published size has."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        weights.save_dit(ours, ckpt)
        config = json.loads((ckpt / "config.json").read_text())
        model = ti2v.WanModel(**{k: v for k, v in config.items() if k in inspect.signature(ti2v.WanModel).parameters})
        index = json.loads((ckpt / "diffusion_pytorch_model.safetensors.index.json").read_text())
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(ckpt / shard))
    model.load_state_dict(state, strict=True)
    assert model.text_dim == CONFIG.text_dim and model.model_type == "ti2v"
    return model.eval().requires_grad_(False)


def make_pipeline(ti2v: types.ModuleType, model, vae: VAEStandIn, text: TextEncoderStandIn):
    """A WanTI2V with what `i2v` reads set by hand (its __init__ loads full checkpoints onto a GPU)."""
    pipe = object.__new__(ti2v.WanTI2V)
    pipe.__dict__.update(device=torch.device("cpu"), rank=0, t5_cpu=True, init_on_cpu=False, num_train_timesteps=1000,
                         param_dtype=torch.float32, vae_stride=(4, 16, 16), patch_size=CONFIG.patch_size, vae=vae,
                         text_encoder=text, model=model, sp_size=1, sample_neg_prompt="negative")
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wan_root", type=Path, help="a Wan-Video/Wan2.2 source tree (the folder holding wan/)")
    args = parser.parse_args()
    ti2v = import_wan(args.wan_root.resolve())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2024)
    rng = np.random.default_rng(2024)

    ours = randomize_(WanDiT(CONFIG), seed=5).eval()
    original = load_original(ti2v, ours)
    tensors = {f"weights/{k}": v.contiguous() for k, v in ours.state_dict().items()}
    for key, value in original.state_dict().items():
        assert torch.equal(value, ours.state_dict()[key]), key

    embeddings = {"prompt": torch.randn(7, CONFIG.text_dim, generator=gen),
                  "negative": torch.randn(5, CONFIG.text_dim, generator=gen)}
    text = TextEncoderStandIn(embeddings)
    tensors.update({"context/prompt": embeddings["prompt"], "context/negative": embeddings["negative"]})

    images = {}
    for name, width, height, max_area in IMAGES:
        images[name] = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        vae = VAEStandIn(CONFIG.in_dim)
        pipe = make_pipeline(ti2v, RecordingModel(original), vae, text)
        pipe.i2v("prompt", images[name], max_area=max_area, frame_num=FRAMES, sampling_steps=1, seed=0,
                 offload_model=False)
        (fitted,) = vae.encoded
        # what i2v encodes is to_tensor's u8/255 of the resized, cropped image, mapped to [-1, 1]: kept as the u8
        fitted_u8 = torch.round((fitted + 1) * 127.5).to(torch.uint8)
        assert torch.equal(fitted_u8.float().div(255).sub(0.5).div(0.5), fitted)
        tensors[f"img/{name}"] = torch.from_numpy(np.asarray(images[name]).copy())
        tensors[f"fitted/{name}"] = fitted_u8

    runs = {}
    for name, mode, image, solver, steps, shift, guidance, seed in RUNS:
        max_area = next(area for case, *_, area in IMAGES if case == image)
        h, w = (n // 16 for n in tensors[f"fitted/{image}"].shape[-2:])
        z = torch.randn(CONFIG.in_dim, 1, h, w, generator=gen)
        model, vae = RecordingModel(original), VAEStandIn(CONFIG.in_dim, z)
        pipe = make_pipeline(ti2v, model, vae, text)
        common = dict(frame_num=FRAMES, shift=shift, sample_solver=solver, sampling_steps=steps, guide_scale=guidance,
                      seed=seed, offload_model=False)
        if mode == "i2v":
            result = pipe.i2v("prompt", images[image], max_area=max_area, **common)
        else:
            result = pipe.t2v("prompt", size=(w * 16, h * 16), **common)
        latent_frames = (FRAMES - 1) // 4 + 1
        noise = torch.randn(CONFIG.in_dim, latent_frames, h, w, generator=torch.Generator().manual_seed(seed))
        assert len(model.inputs) == steps and torch.equal(model.inputs[0][:, 1:], noise[:, 1:])
        if mode == "i2v":
            assert torch.equal(model.inputs[0][:, :1], z) and torch.equal(result[:, :1], z)
            tensors.update({f"{name}/z": z, f"{name}/inputs": torch.stack(model.inputs)})
        tensors.update({f"{name}/noise": noise, f"{name}/t": torch.stack(model.t), f"{name}/result": result})
        runs[name] = dict(mode=mode, solver=solver, steps=steps, shift=shift, guidance=guidance)

    meta = dict(config=asdict(CONFIG), frames=FRAMES, runs=runs,
                images={name: dict(max_area=area) for name, *_, area in IMAGES},
                source="Wan-Video/Wan2.2 wan/textimage2video.py WanTI2V.i2v and .t2v")
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT, metadata={"golden": json.dumps(meta)})
    size = OUT.stat().st_size
    print(f"wrote {OUT} ({math.ceil(size / 1024)} KiB, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
