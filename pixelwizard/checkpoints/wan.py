"""Load the three Wan2.2-TI2V-5B networks from a checkpoint directory laid out as
`hf download Wan-AI/Wan2.2-TI2V-5B` leaves it (the layout: checkpoints/wan_files.py), and write that layout back
(tiny checkpoints).

Every loader takes `device="meta"`: it then checks every file, key and shape exactly as the real load does,
from headers and zip directories only, and returns a model without weights (the up-front check).
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pixelwizard.checkpoints.strict import (
    CheckpointError,
    assign_state_dict,
    listed_keys,
    read_safetensors_header,
    read_torch_file,
)
from pixelwizard.checkpoints.wan_files import (
    DIT_CONFIG,
    DIT_INDEX,
    DIT_SINGLE,
    REDOWNLOAD,
    T5_FILE,
    TOKENIZER_DIR,
    VAE_CONFIG,
    VAE_FILE,
    dit_weight_map,
    dit_weights_file,
    read_dit_config,
    require_file,
    t5_config,
    vae_config,
)
from pixelwizard.models.config import DiTConfig, VAEConfig, config_to_json
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.vae import WanVAE

if TYPE_CHECKING:  # transformers takes ~2 s to import: only the text stage pays for it
    from pixelwizard.models.text_encoder import TextEncoder

DIT_LAYOUT = f"the WanModel DiT of {DIT_CONFIG}"


def _dit_shards(ckpt_dir: Path) -> dict[str, Path]:
    """key -> shard file, from the index json (sharded layout) or a single safetensors file's header."""
    weights_file = dit_weights_file(ckpt_dir)
    if weights_file.name == DIT_SINGLE:
        return dict.fromkeys(read_safetensors_header(weights_file), weights_file)
    return dit_weight_map(weights_file)


def dit_tensors(ckpt_dir: Path) -> tuple[dict[str, Path], dict[str, torch.Size]]:
    """(key -> shard, key -> shape) of the DiT, from the index and the shard headers; every shard's header is
    checked against its file's size, and the index against the shards. No tensor data is read."""
    key_to_file = _dit_shards(ckpt_dir)
    headers = {path: read_safetensors_header(path) for path in sorted(set(key_to_file.values()))}
    shapes = {}
    for key, path in key_to_file.items():
        if key not in headers[path]:
            raise CheckpointError(f"{path}: the index {DIT_INDEX} maps {key} to this shard, which lacks it; "
                                  f"{REDOWNLOAD}")
        shapes[key] = headers[path][key]
    for path, header in headers.items():
        unmapped = [k for k in header if key_to_file.get(k) != path]
        if unmapped:
            raise CheckpointError(f"{path}: holds tensors that the index {DIT_INDEX} does not map to it "
                                  f"({listed_keys(unmapped)}); {REDOWNLOAD}")
    return key_to_file, shapes


def load_dit(ckpt_dir: Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> WanDiT:
    """The DiT, built on meta in its inference dtypes (`dtype`, float32 for the time path, modulations, norms
    and head) and filled shard by shard, each tensor read once, straight onto `device`, and cast there."""
    ckpt_dir, device = Path(ckpt_dir), torch.device(device)
    if device.type == "cuda" and device.index is None:  # torch's "cuda" is the current device, not safetensors' 0
        device = torch.device("cuda", torch.cuda.current_device())
    config = read_dit_config(ckpt_dir)
    key_to_file, shapes = dit_tensors(ckpt_dir)
    with torch.device("meta"):
        model = WanDiT(config).cast_for_inference(dtype)
    source = dit_weights_file(ckpt_dir)
    with ExitStack() as stack:
        if device.type == "meta":  # the up-front check: the headers are all there is to read
            tensors = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
        else:
            handles = {p: stack.enter_context(safe_open(p, framework="pt", device=str(device)))
                       for p in set(key_to_file.values())}
            tensors = lambda key: handles[key_to_file[key]].get_tensor(key)  # noqa: E731
        assign_state_dict(model, tensors, shapes=shapes, source=source, layout=DIT_LAYOUT, fix=REDOWNLOAD,
                          device=device)
    return model.eval().requires_grad_(False)


def dit_shard_keys(keys: list[str], num_shards: int) -> dict[str, list[str]]:
    """Shard file name -> the keys it holds, in the published naming, `keys` in order over `num_shards` files."""
    per_shard = -(-len(keys) // num_shards)
    names = (f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards))
    return {name: keys[i * per_shard:(i + 1) * per_shard] for i, name in enumerate(names)}


def write_dit_index(ckpt_dir: Path, config: DiTConfig, shards: dict[str, list[str]], total_size: int) -> None:
    """`config.json` and the index json of a DiT written as `shards` (file name -> keys)."""
    weight_map = {key: name for name, keys in shards.items() for key in keys}
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (ckpt_dir / DIT_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    config_to_json(config, ckpt_dir / DIT_CONFIG, _class_name="WanModel")


def save_dit(model: WanDiT, ckpt_dir: Path, *, num_shards: int = 3) -> None:
    """Write `config.json`, the index and `num_shards` safetensors shards in the published naming."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    shards = dit_shard_keys(list(state), num_shards)
    for name, keys in shards.items():
        save_file({k: state[k] for k in keys}, ckpt_dir / name, metadata={"format": "pt"})
    write_dit_index(ckpt_dir, model.config, shards, sum(t.numel() * t.element_size() for t in state.values()))


def load_vae(ckpt_dir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> WanVAE:
    ckpt_dir = Path(ckpt_dir)
    path = require_file(ckpt_dir / VAE_FILE)
    config = vae_config(ckpt_dir)
    with torch.device("meta"):
        model = WanVAE(config).to(dtype)
    assign_state_dict(model, read_torch_file(path), source=path, layout=f"the Wan2.2 VAE ({config})", fix=REDOWNLOAD,
                      device=device)
    return model.eval().requires_grad_(False)


def save_vae(model: WanVAE, ckpt_dir: Path) -> None:
    torch.save(model.state_dict(), Path(ckpt_dir) / VAE_FILE)
    if model.config != VAEConfig():
        config_to_json(model.config, Path(ckpt_dir) / VAE_CONFIG)


def load_text_encoder(
    ckpt_dir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16
) -> TextEncoder:
    from pixelwizard.models.text_encoder import TextEncoder

    ckpt_dir = Path(ckpt_dir)
    return TextEncoder.load(require_file(ckpt_dir / T5_FILE), require_file(ckpt_dir / TOKENIZER_DIR),
                            t5_config(ckpt_dir), device=device, dtype=dtype)
