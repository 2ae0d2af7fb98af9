"""A saved 48-channel anchor latent as an anchor source: every format it may come in reads to the same tensor, and
every latent that cannot condition the HR model is one line naming the file and the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import save_file

from pixelwizard.io.input_file import InputFileError
from pixelwizard.io.latent_input import load_latent
from pixelwizard.io.latent_store import write_store

LATENT = torch.randn(48, 4, 16, 28, generator=torch.Generator().manual_seed(0))  # 13 frames of a portrait anchor


def saved(tmp_path):
    """The latent in every form it is accepted in."""
    forms = {
        "tensor.pt": lambda p: torch.save(LATENT, p),
        "batched.pt": lambda p: torch.save(LATENT[None], p),
        "original.pt": lambda p: torch.save({"latent": LATENT, "prompt": "a fox", "seed": 1, "size": "448*256",
                                             "frame_num": 13}, p),  # as the original's scripts save them
        "listed.pth": lambda p: torch.save([LATENT], p),
        "named.safetensors": lambda p: save_file({"latent": LATENT}, p),
        "only.safetensors": lambda p: save_file({"x": LATENT.contiguous()}, p),
        "half.npy": lambda p: np.save(p, LATENT.half().numpy()),
        "array.zarr": lambda p: zarr.create_array(p, data=LATENT.numpy()),
        "store.zarr": lambda p: write_store(p, {"latent": LATENT.bfloat16()}, {}),  # a PixelWizard lr/<id>.zarr
    }
    for name, write in forms.items():
        write(tmp_path / name)
    return forms


def test_every_format_reads_to_the_same_latent(tmp_path):
    for name in saved(tmp_path):
        latent = load_latent(tmp_path / name, channels=48, max_frames=121)
        assert latent.dtype == torch.float32 and latent.shape == LATENT.shape, name
        exact = name not in ("half.npy", "store.zarr")
        assert torch.equal(latent, LATENT) if exact else torch.allclose(latent, LATENT, atol=2e-2), name


def test_at_most_the_preset_s_frames_are_taken(tmp_path):
    torch.save(LATENT, tmp_path / "a.pt")
    assert torch.equal(load_latent(tmp_path / "a.pt", channels=48, max_frames=9), LATENT[:, :3])


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("missing.pt", None, "no such file; check the latent path"),
    ("text.pt", "just text", "cannot be read as a latent"),
    ("channels.pt", torch.zeros(16, 4, 8, 8), "shape [16, 4, 8, 8], not a latent [48, T, h, w]"),
    ("ints.npy", np.zeros((48, 4, 8, 8), np.int32), "holds int32 values, not floating point"),
    ("short.pt", torch.zeros(48, 2, 8, 8), "holds 2 latent frames, fewer than the 3 (9 video frames)"),
    ("nan.pt", torch.full((48, 4, 8, 8), float("nan")), "holds NaN or infinite values"),
    ("two.safetensors", {"a": torch.zeros(1), "b": torch.zeros(1)}, "holds 2 tensors and none named latent"),
    ("missing.zarr", None, "no such zarr store"),
])
def test_an_unusable_latent_is_one_line_naming_it_and_the_fix(tmp_path, name, content, fragment):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    elif isinstance(content, dict):
        save_file(content, path)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(InputFileError) as caught:
        load_latent(path, channels=48, max_frames=121)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fragment in message and "\n" not in message and "; " in message
