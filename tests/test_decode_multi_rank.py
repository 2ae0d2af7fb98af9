"""Patched decode across processes (gloo on CPU): each rank decodes its patches, rank 0 gets the blend."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixelwizard.checkpoints.tiny import TINY_VAE, randomize_
from pixelwizard.io.patched_decode import decode_patched
from pixelwizard.models.vae import WanVAE

SETTINGS = dict(num_patches=3, patch_dim="w", overlap=2)


def latent() -> torch.Tensor:
    return torch.randn(48, 3, 6, 24, generator=torch.Generator().manual_seed(0))


def worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        vae = randomize_(WanVAE(TINY_VAE), 1).eval()
        chunks = list(decode_patched(vae, latent(), group=dist.group.WORLD, **SETTINGS))
        torch.save(chunks, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_blend_like_one(tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    vae = randomize_(WanVAE(TINY_VAE), 1).eval()
    expected = list(decode_patched(vae, latent(), **SETTINGS))
    got = torch.load(tmp_path / "rank0.pt")
    assert [c.shape for c in got] == [c.shape for c in expected] == [(3, 1, 96, 384)] + [(3, 4, 96, 384)] * 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # only the summation order differs (1.9e-6 seen)
    partial = torch.load(tmp_path / "rank1.pt")  # rank 1 holds only its own patch: not the video
    assert not torch.allclose(partial[1], expected[1])
