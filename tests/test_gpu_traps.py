"""The GPU traps a CPU can still check: the Conv3d-on-cuDNN decision with the versions as parameters, the VAE's
channels-last-3d path against NCDHW, and the CUDA allocator setting the HR and decode stage processes start with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.checkpoints.tiny import TINY_VAE, randomize_
from pixelwizard.gpu_traps import GpuTrapError, check_conv3d, conv3d_skips_cudnn, cudnn_name
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.models.vae import WanVAE
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES


@pytest.mark.parametrize(("cudnn", "dtype", "channels_last", "skips"), [
    (91002, torch.bfloat16, False, True),  # torch 2.9's cuDNN 9.10.2, NCDHW: the slow fallback
    (91002, torch.float16, False, True),
    (90800, torch.bfloat16, False, True),  # the first broken version
    (91499, torch.bfloat16, False, True),  # the last one below 9.15
    (91500, torch.bfloat16, False, False),  # fixed
    (90701, torch.bfloat16, False, False),  # before the range
    (91002, torch.bfloat16, True, False),  # channels-last-3d passes the gate
    (91002, torch.float32, False, False),  # only half precision is gated
    (None, torch.bfloat16, False, False),  # no cuDNN (the CPU)
])
def test_conv3d_gate_follows_pytorchs_condition(cudnn, dtype, channels_last, skips):
    assert conv3d_skips_cudnn(cudnn, dtype, channels_last) is skips
    if skips:
        with pytest.raises(GpuTrapError) as err:
            check_conv3d(cudnn, dtype, channels_last)
        message = str(err.value)
        assert "\n" not in message and cudnn_name(cudnn) in message and "9.8.0 to below 9.15.0" in message
        assert "channels-last-3d" in message and "cuDNN >= 9.15.0" in message
    else:
        check_conv3d(cudnn, dtype, channels_last)


def test_cudnn_versions_read_as_people_write_them():
    assert [cudnn_name(v) for v in (91002, 90800, 91500, 91900, 8907)] == ["9.10.2", "9.8.0", "9.15.0", "9.19.0",
                                                                           "8.9.7"]


class Conv3dInputs(TorchFunctionMode):
    """Records, for every F.conv3d with a kernel larger than 1, whether its input is channels-last-3d."""

    def __init__(self) -> None:
        super().__init__()
        self.layouts: list[bool] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv3d and args[1].shape[2:] != (1, 1, 1):
            self.layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d))
        return func(*args, **(kwargs or {}))


def test_channels_last_vae_decodes_and_encodes_like_ncdhw():
    """The layout changes how the convolutions walk memory, not what they compute: the patched decode (2 patches,
    canvas and stream) and the encoder agree with NCDHW to float32 rounding, and stay channels-last inside."""
    vae = randomize_(WanVAE(TINY_VAE), seed=1).eval()
    z = torch.randn(48, 2, 2, 6, generator=torch.Generator().manual_seed(0))
    ncdhw = torch.cat(list(decode_patched(vae, z, num_patches=2, patch_dim="w", overlap=1)), dim=1)
    video = ncdhw[None].clamp(-1, 1)
    encoded = vae.encode(video)
    vae.use_memory_format(torch.channels_last_3d)
    assert vae.decoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert vae.decoder.upsamples[0].upsamples[-1].resample[1].weight.is_contiguous(memory_format=torch.channels_last)
    with Conv3dInputs() as seen:
        channels_last = torch.cat(list(decode_patched(vae, z, num_patches=2, patch_dim="w", overlap=1)), dim=1)
    assert seen.layouts and all(seen.layouts)  # every k > 1 conv reads an NDHWC buffer (the CPU's outputs are NCDHW)
    torch.testing.assert_close(channels_last, ncdhw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vae.encode(video), encoded, rtol=1e-4, atol=1e-5)
    vae.use_memory_format(torch.contiguous_format)
    assert torch.equal(torch.cat(list(decode_patched(vae, z, num_patches=2, patch_dim="w", overlap=1)), dim=1), ncdhw)


def stage_job(stage: str, out, weights, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One real job of `stage` over a run whose inputs do not exist yet: it starts, finds nothing ready, exits."""
    config = RunConfig(ckpt_dir=str(weights["ckpt_dir"]), hr_ckpt=str(weights["hr_ckpt"]), preset="tiny",
                       device="cpu")
    snapshot = RunSnapshot.build(config, [Prompt("fox", "a fox")], None, DigestCache(Layout(out).digests))
    path = snapshot.save(Layout(out))
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
    return subprocess.run([sys.executable, "-m", f"pixelwizard.workflow.stages.{stage}", str(path), "00000"],
                          cwd=out, env={**clean, **env}, capture_output=True, text=True, timeout=120)


def test_hr_and_decode_jobs_run_with_expandable_segments_unless_the_user_chose(weights, tmp_path):
    hr = stage_job("hr", tmp_path, weights, {})
    assert hr.returncode == 0, hr.stderr
    assert "CUDA caching allocator: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in hr.stderr
    decode = stage_job("decode", tmp_path, weights, {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"})
    assert decode.returncode == 0, decode.stderr
    assert "CUDA caching allocator: PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512 (set by the user)" in decode.stderr
    assert [name for name, stage in STAGES.items() if stage.expandable_segments] == ["hr", "decode"]
