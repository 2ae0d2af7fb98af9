from __future__ import annotations

import hashlib

import pytest
import torch

from pixelwizard.models.config import VAEConfig
from pixelwizard.models.vae import CausalConv3d, FeatureCache, WanVAE

TINY = VAEConfig(dim=8, dec_dim=16, z_dim=48)
H, W = 32, 48

# From the published checkpoint's manifest (Wan2.2_VAE.pth, the keys that Wan-Video/Wan2.2@42bf4cf
# wan/modules/vae2_2.py WanVAE_ loads strictly): sha256 of its sorted "key (shape)" lines; 196 tensors,
# 704,688,668 parameters.
FULL_LAYOUT_SHA256 = "df1561c09771a39f08562c1d9f6e0a566c5bd37b0a8cc953ba0ae809f3417f56"


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    model = WanVAE(TINY).eval()
    with torch.no_grad():  # non-trivial norms and attention output (proj would be zero-initialised in training)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def video(frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, H, W, generator=g) * 2 - 1


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_decode_shapes(vae: WanVAE, frames: int) -> None:
    z = vae.encode(video(frames))
    t = (frames - 1) // 4 + 1
    assert z.shape == (1, 48, t, H // 16, W // 16)
    assert torch.isfinite(z).all()
    x = vae.decode(z)
    assert x.shape == (1, 3, frames, H, W)


def test_encode_is_causal(vae: WanVAE) -> None:
    a = video(9, seed=1)
    b = a.clone()
    b[:, :, 5:] = -b[:, :, 5:]
    za, zb = vae.encode(a), vae.encode(b)
    assert torch.equal(za[:, :, :2], zb[:, :, :2])  # latent 0 <- pixel 0, latent 1 <- pixels 0..4
    assert not torch.allclose(za[:, :, 2], zb[:, :, 2])
    b[:, :, 1:] = 0.0
    assert torch.equal(vae.encode(b)[:, :, 0], za[:, :, 0])


def test_decode_is_causal(vae: WanVAE) -> None:
    z = torch.randn(1, 48, 3, 2, 3)
    z2 = z.clone()
    z2[:, :, 2] += 1.0
    xa, xb = vae.decode(z), vae.decode(z2)
    assert torch.equal(xa[:, :, :5], xb[:, :, :5])
    assert not torch.equal(xa[:, :, 5:], xb[:, :, 5:])


def test_streamed_decode_equals_decode(vae: WanVAE) -> None:
    z = torch.randn(1, 48, 4, 2, 3)
    chunks = list(vae.decode_stream(z))
    assert [c.shape[2] for c in chunks] == [1, 4, 4, 4]
    assert torch.equal(torch.cat(chunks, dim=2), vae.decode(z))


def test_interleaved_streams_match_separate_ones(vae: WanVAE) -> None:
    z = torch.randn(1, 48, 3, 2, 6)
    left, right = z[..., :3], z[..., 3:]
    s_left, s_right = vae.stream_decoder(), vae.stream_decoder()
    got_left, got_right = [], []
    for i in range(z.shape[2]):  # lockstep: left, right, left, right, ...
        got_left.append(s_left.push(left[:, :, i:i + 1]))
        got_right.append(s_right.push(right[:, :, i:i + 1]))
    assert torch.equal(torch.cat(got_left, dim=2), vae.decode(left))
    assert torch.equal(torch.cat(got_right, dim=2), vae.decode(right))


def test_causal_conv_chunks_equal_whole_sequence() -> None:
    torch.manual_seed(0)
    conv = CausalConv3d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 9, 6, 7)
    with torch.no_grad():
        whole = conv(x, FeatureCache())
        cache = FeatureCache()
        chunked = torch.cat([conv(x[:, :, a:b], cache) for a, b in [(0, 1), (1, 5), (5, 6), (6, 9)]], dim=2)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert whole.shape == (2, 5, 9, 6, 7)


def test_decode_clamps_to_unit_range() -> None:
    torch.manual_seed(0)
    model = WanVAE(TINY)
    with torch.no_grad():
        model.decoder.head[2].weight.mul_(100.0)
    x = model.decode(torch.randn(1, 48, 2, 2, 3))
    assert x.min() == -1.0 and x.max() == 1.0
    assert ((x > -1) & (x < 1)).any()


def test_deterministic(vae: WanVAE) -> None:
    v = video(5, seed=3)
    z = vae.encode(v)
    assert torch.equal(z, vae.encode(v))
    assert torch.equal(vae.decode(z), vae.decode(z))


def test_meta_build_then_assign(vae: WanVAE) -> None:
    with torch.device("meta"):
        model = WanVAE(TINY)
    assert list(model.buffers()) == []
    model.load_state_dict(vae.state_dict(), assign=True)
    v = video(5, seed=4)
    assert torch.equal(model.encode(v), vae.encode(v))


def test_full_config_layout_matches_original() -> None:
    with torch.device("meta"):
        model = WanVAE(VAEConfig())
    sd = model.state_dict()
    assert len(sd) == 196
    assert sum(t.numel() for t in sd.values()) == 704_688_668
    assert sd["encoder.conv1.weight"].shape == (160, 12, 3, 3, 3)
    assert sd["encoder.downsamples.1.downsamples.2.time_conv.weight"].shape == (320, 320, 3, 1, 1)
    assert sd["encoder.middle.1.norm.gamma"].shape == (640, 1, 1)
    assert sd["encoder.head.2.weight"].shape == (96, 640, 3, 3, 3)
    assert sd["conv1.weight"].shape == (96, 96, 1, 1, 1)
    assert sd["conv2.weight"].shape == (48, 48, 1, 1, 1)
    assert sd["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape == (2048, 1024, 3, 1, 1)
    assert sd["decoder.upsamples.2.upsamples.0.shortcut.weight"].shape == (512, 1024, 1, 1, 1)
    assert sd["decoder.head.2.weight"].shape == (12, 256, 3, 3, 3)
    listing = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(sd.items()))
    assert hashlib.sha256(listing.encode()).hexdigest() == FULL_LAYOUT_SHA256


def test_other_latent_width_uses_identity_statistics() -> None:
    torch.manual_seed(0)
    model = WanVAE(VAEConfig(dim=8, dec_dim=16, z_dim=4))
    z = model.encode(video(5))
    assert z.shape == (1, 4, 2, H // 16, W // 16)
    assert model.decode(z).shape == (1, 3, 5, H, W)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 4, 32, 48), "frame count 4 must be 4n\\+1"),
        ((1, 3, 5, 40, 48), "multiples of 16"),
        ((1, 3, 5, 32, 56), "multiples of 16"),
        ((1, 4, 5, 32, 48), "video must be \\[B, 3, F, H, W\\]"),
        ((3, 5, 32, 48), "video must be"),
    ],
)
def test_encode_rejects_bad_video(vae: WanVAE, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))


def test_decode_rejects_bad_latent(vae: WanVAE) -> None:
    with pytest.raises(ValueError, match="latent must be \\[B, 48, T, h, w\\]"):
        vae.decode(torch.zeros(1, 16, 2, 2, 3))
    with pytest.raises(ValueError, match="latent must be \\[B, 48, 1, h, w\\]"):
        vae.stream_decoder().push(torch.zeros(1, 48, 2, 2, 3))
