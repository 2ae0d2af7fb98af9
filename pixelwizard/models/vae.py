"""The Wan2.2 video VAE: 48 latent channels, 4x16x16 compression, causal in time.

Video is processed in temporal chunks (pixel frames 1, 4, 4, ...; latent frames one at a time). Every causal
temporal convolution keeps the last frames of its input in a `FeatureCache`, which belongs to one stream, never to
the module: several streams (e.g. spatial patches of one video) can be advanced through one `WanVAE` in lockstep.
Chunked processing is exactly a causal pass over the whole clip, so activations scale with one chunk.

Everything runs in the parameters' dtype (float32 for the released weights) with autocast disabled, and in the
memory format chosen by `WanVAE.use_memory_format`: NCDHW by default, channels-last-3d (NDHWC) on CUDA, where cuDNN's
convolutions are channels-last natively and half-precision NCDHW Conv3d is refused cuDNN on some versions
(pixelwizard/gpu_traps.py; a stream checks that before it starts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from pixelwizard.gpu_traps import check_conv3d
from pixelwizard.models.config import PIXEL_PATCH, VAEConfig

# Per-channel statistics of the z_dim-48 posterior mean; other widths (tiny test models) use mean 0, std 1.
LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

NORM_EPS = 1e-12  # F.normalize's default

Prologue = Callable[[Tensor, Tensor], None]  # (x, out): writes a conv's input, computed from x, into out


class FeatureCache:
    """Temporal history of one stream: for each causal conv, the last input frames it saw in earlier chunks."""

    def __init__(self) -> None:
        self.frames: dict[nn.Module, Tensor] = {}
        self.first_chunk = True


class CausalConv3d(nn.Conv3d):
    """Conv3d padded in time only at the front (2*p_t frames), so output frame t sees input frames <= t.

    Spatial padding is symmetric. With a temporal kernel, the `cache` supplies the previous chunk's last 2*p_t
    input frames in place of the zero frames (zeros on the first chunk) and receives this chunk's.
    """

    memory_format = torch.contiguous_format  # of the padded input buffer; set by WanVAE.use_memory_format

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int],
                 padding: int | tuple[int, int, int] = 0) -> None:
        super().__init__(in_dim, out_dim, kernel)
        self.pad_t, self.pad_h, self.pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        self.history = 2 * self.pad_t

    def forward(self, x: Tensor, cache: FeatureCache | None = None, prologue: Prologue | None = None) -> Tensor:
        """`prologue(x, out)`, when given, writes the conv's actual input (e.g. norm + SiLU of x) into `out`, the
        padded buffer's inner region, so that input never exists as a tensor of its own."""
        if self.history == 0 and self.pad_h == 0 and self.pad_w == 0:
            if prologue is not None:
                inner = torch.empty_like(x, dtype=self.weight.dtype)
                prologue(x, inner)
                x = inner
            return super().forward(x)
        # One zero buffer [b, c, history + t, h + 2 p_h, w + 2 p_w] holding (cached frames, x): no cat + pad copies.
        b, c, t, h, w = x.shape
        ph, pw, n = self.pad_h, self.pad_w, self.history
        padded = torch.empty(b, c, n + t, h + 2 * ph, w + 2 * pw, dtype=x.dtype, device=x.device,
                             memory_format=self.memory_format).zero_()
        inner = padded[:, :, :, ph:ph + h, pw:pw + w]
        if prologue is None:
            inner[:, :, n:] = x
        else:
            prologue(x, inner[:, :, n:])
        if n:
            assert cache is not None, "a temporal causal conv needs its stream's FeatureCache"
            previous = cache.frames.get(self)
            if previous is not None:
                inner[:, :, :n] = previous
            cache.frames[self] = inner[:, :, -n:].clone()
        return super().forward(padded)


class RMSNorm(nn.Module):
    """L2-normalise over channels (dim 1), times sqrt(C) and a learned per-channel gain."""

    def __init__(self, dim: int, broadcast_dims: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * broadcast_dims))  # [C, 1, 1(, 1)]

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma

    def silu_into(self, x: Tensor, out: Tensor) -> None:
        """out = SiLU(self(x)), computed in `out` (F.normalize's arithmetic, then the same products in place)."""
        torch.div(x, x.norm(2, dim=1, keepdim=True).clamp_min(NORM_EPS).expand_as(x), out=out)
        F.silu(out.mul_(self.scale).mul_(self.gamma), inplace=True)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # Indices follow the checkpoint: norm 0, conv 2, norm 3, conv 6 (1, 4 are SiLU, 5 was a p=0 dropout).
        self.residual = nn.ModuleList([
            RMSNorm(in_dim, 3), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, 3), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1),
        ])  # fmt: skip
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: FeatureCache) -> Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual  # each SiLU runs inside its norm's `silu_into`
        h = conv1(x, cache, prologue=norm1.silu_into)
        h = conv2(h, cache, prologue=norm2.silu_into)
        return h.add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of each frame (no temporal mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(rearrange(x, "b c t h w -> (b t) c h w"))
        # SDPA wants channels innermost; q, k, v are the thirds of the qkv channels.
        qkv = rearrange(self.to_qkv(y), "n c h w -> n 1 (h w) c").contiguous()
        y = F.scaled_dot_product_attention(*qkv.chunk(3, dim=-1))
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=h))
        return rearrange(y, "(b t) c h w -> b c t h w", b=b) + x


class Resample(nn.Module):
    """Spatial x2 up/down per frame, optionally with a x2 temporal step (skipped on a stream's first chunk).

    Temporal up: a causal conv C -> 2C whose channel halves become two consecutive frames; it runs over latent
    frames 1, 2, ... only (frame 0 stays single). Temporal down: a stride-2 conv over (last frame of the previous
    chunk, this chunk); the first chunk's single frame passes through.
    """

    def __init__(self, dim: int, up: bool, temporal: bool) -> None:
        super().__init__()
        self.up, self.temporal = up, temporal
        if up:
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim, 3, padding=1))
        else:  # pad right/bottom by one, then a stride-2 3x3 conv
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if temporal and up:
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif temporal:
            self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: FeatureCache) -> Tensor:
        if self.temporal and self.up and not cache.first_chunk:
            x = rearrange(self.time_conv(x, cache), "b (two c) t h w -> b c (t two) h w", two=2)
        t = x.shape[2]
        x = self.resample(rearrange(x, "b c t h w -> (b t) c h w"))
        x = rearrange(x, "(b t) c h w -> b c t h w", t=t)
        if self.temporal and not self.up:
            previous = cache.frames.get(self)
            cache.frames[self] = x[:, :, -1:].clone()
            if not cache.first_chunk:
                x = self.time_conv(torch.cat([previous, x], dim=2))
        return x


def avg_down(x: Tensor, out_dim: int, factor_t: int, factor_s: int) -> Tensor:
    """Parameter-free shortcut: fold each t x s x s neighbourhood into channels, average channel groups to out_dim.

    Time is zero-padded at the front to a multiple of factor_t (the 1-frame first chunk).
    """
    if x.shape[2] % factor_t:
        x = F.pad(x, (0, 0, 0, 0, factor_t - x.shape[2] % factor_t, 0))
    x = rearrange(x, "b c (t a) (h p) (w q) -> b (c a p q) t h w", a=factor_t, p=factor_s, q=factor_s)
    return rearrange(x, "b (o g) t h w -> b o g t h w", o=out_dim).mean(dim=2)


def dup_up(x: Tensor, out_dim: int, factor_t: int, factor_s: int, first_chunk: bool) -> Tensor:
    """Parameter-free shortcut, the inverse layout of `avg_down`: repeat channels, unfold them into t x s x s.

    On the first chunk the first factor_t - 1 frames are dropped (latent frame 0 stays a single frame).
    """
    repeats = out_dim * factor_t * factor_s * factor_s // x.shape[1]
    x = rearrange(x.repeat_interleave(repeats, dim=1), "b (c a p q) t h w -> b c (t a) (h p) (w q)",
                  a=factor_t, p=factor_s, q=factor_s)
    return x[:, :, factor_t - 1:] if first_chunk else x


class DownBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, down: bool, temporal: bool) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.factor_t, self.factor_s = (2 if temporal else 1), (2 if down else 1)
        layers: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks)]
        if down:
            layers.append(Resample(out_dim, up=False, temporal=temporal))
        self.downsamples = nn.ModuleList(layers)

    def forward(self, x: Tensor, cache: FeatureCache) -> Tensor:
        h = x
        for layer in self.downsamples:
            h = layer(h, cache)
        return h + avg_down(x, self.out_dim, self.factor_t, self.factor_s)


class UpBlock(nn.Module):
    """Residual blocks (+ Resample); the shortcut exists only when resampling (the last block has none)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, up: bool, temporal: bool) -> None:
        super().__init__()
        self.out_dim, self.up = out_dim, up
        self.factor_t = 2 if temporal else 1
        layers: list[nn.Module] = [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks)]
        if up:
            layers.append(Resample(out_dim, up=True, temporal=temporal))
        self.upsamples = nn.ModuleList(layers)

    def forward(self, x: Tensor, cache: FeatureCache) -> Tensor:
        h = x
        for layer in self.upsamples:
            h = layer(h, cache)
        if not self.up:
            return h
        return h + dup_up(x, self.out_dim, self.factor_t, 2, cache.first_chunk)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(3 * PIXEL_PATCH**2, dims[0], 3, padding=1)
        self.downsamples = nn.ModuleList([
            DownBlock(dims[i], dims[i + 1], cfg.num_res_blocks, down=i != last,
                      temporal=i != last and cfg.temperal_downsample[i])
            for i in range(len(cfg.dim_mult))
        ])  # fmt: skip
        self.middle = nn.ModuleList([ResidualBlock(dims[-1], dims[-1]), AttentionBlock(dims[-1]),
                                     ResidualBlock(dims[-1], dims[-1])])
        self.head = nn.ModuleList([RMSNorm(dims[-1], 3), nn.SiLU(),
                                   CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1)])

    def forward(self, x: Tensor, cache: FeatureCache) -> Tensor:
        x = self.conv1(x, cache)
        for block in self.downsamples:
            x = block(x, cache)
        res1, attn, res2 = self.middle
        x = res2(attn(res1(x, cache)), cache)
        norm, _, conv = self.head
        return conv(x, cache, prologue=norm.silu_into)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dec_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_up = cfg.temperal_downsample[::-1]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.ModuleList([ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                     ResidualBlock(dims[0], dims[0])])
        self.upsamples = nn.ModuleList([
            UpBlock(dims[i], dims[i + 1], cfg.num_res_blocks + 1, up=i != last,
                    temporal=i != last and temporal_up[i])
            for i in range(len(cfg.dim_mult))
        ])  # fmt: skip
        self.head = nn.ModuleList([RMSNorm(dims[-1], 3), nn.SiLU(),
                                   CausalConv3d(dims[-1], 3 * PIXEL_PATCH**2, 3, padding=1)])

    def forward(self, x: Tensor, cache: FeatureCache) -> Tensor:
        x = self.conv1(x, cache)
        res1, attn, res2 = self.middle
        x = res2(attn(res1(x, cache)), cache)
        for block in self.upsamples:
            x = block(x, cache)
        norm, _, conv = self.head
        return conv(x, cache, prologue=norm.silu_into)


@contextmanager
def _inference(device: torch.device) -> Iterator[None]:
    """No autograd, and no outer autocast: the VAE runs in its parameters' dtype like the original (fp32)."""
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        yield


class WanVAE(nn.Module):
    """Video [B, 3, F, H, W] in [-1, 1] (F = 4n+1, H, W multiples of 16) <-> normalised latent [B, z, T, H/16, W/16].

    state_dict keys and shapes are those of the original `WanVAE_`; the module holds no buffers and no stream
    state. Public methods run without autograd.
    """

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.memory_format = torch.contiguous_format
        self.time_factor, self.space_factor = config.time_factor, config.space_factor
        self.encoder = Encoder(config)
        self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)  # -> (mu, log_var); log_var unused
        self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder(config)

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def channels_last(self) -> bool:
        return self.memory_format == torch.channels_last_3d

    def use_memory_format(self, memory_format: torch.memory_format) -> WanVAE:
        """Run in torch.channels_last_3d (NDHWC) or torch.contiguous_format (NCDHW): the conv weights are converted
        here (2-D convs to the matching 2-D format), the activations follow the inputs and the padded buffers."""
        if memory_format not in (torch.channels_last_3d, torch.contiguous_format):
            raise ValueError(f"memory_format must be torch.channels_last_3d or torch.contiguous_format, got "
                             f"{memory_format}")
        flat = torch.channels_last if memory_format == torch.channels_last_3d else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv3d | nn.Conv2d):
                layout = memory_format if module.weight.dim() == 5 else flat
                module.weight.data = module.weight.data.contiguous(memory_format=layout)
            if isinstance(module, CausalConv3d):
                module.memory_format = memory_format
        self.memory_format = memory_format
        return self

    def check_conv3d(self) -> None:
        """Stop before a stream starts if this VAE's half-precision Conv3d would fall back off cuDNN
        (pixelwizard/gpu_traps.py)."""
        w = self.conv2.weight
        if w.device.type == "cuda":
            check_conv3d(torch.backends.cudnn.version(), w.dtype, self.channels_last)

    def _layout(self, x: Tensor) -> Tensor:
        """An input chunk on the VAE's device, in its dtype and memory format."""
        w = self.conv2.weight
        return x.to(device=w.device, dtype=w.dtype).contiguous(memory_format=self.memory_format)

    def _latent_stats(self) -> tuple[Tensor, Tensor]:
        """(mean, 1/std) as [1, z, 1, 1, 1]; the reciprocal is taken in float32 as the original does."""
        if self.z_dim == len(LATENT_MEAN):
            mean, std = LATENT_MEAN, LATENT_STD
        else:
            mean, std = (0.0,) * self.z_dim, (1.0,) * self.z_dim
        w = self.conv2.weight
        mean = torch.tensor(mean, dtype=torch.float32, device=w.device).to(w.dtype)
        inv_std = (1.0 / torch.tensor(std, dtype=torch.float32, device=w.device)).to(w.dtype)
        return rearrange(mean, "c -> 1 c 1 1 1"), rearrange(inv_std, "c -> 1 c 1 1 1")

    def _check_video(self, video: Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, F, H, W], got {tuple(video.shape)}")
        f, h, w = video.shape[2:]
        if (f - 1) % self.time_factor:
            raise ValueError(f"frame count {f} must be {self.time_factor}n+1 (1, {1 + self.time_factor}, ...)")
        if h % self.space_factor or w % self.space_factor:
            raise ValueError(f"height and width {h}x{w} must be multiples of {self.space_factor}")

    def _check_latent(self, z: Tensor, frames: int | None = None) -> None:
        if z.ndim != 5 or z.shape[1] != self.z_dim or (frames is not None and z.shape[2] != frames):
            t = "1" if frames == 1 else "T"
            raise ValueError(f"latent must be [B, {self.z_dim}, {t}, h, w], got {tuple(z.shape)}")

    def encode(self, video: Tensor) -> Tensor:
        """Posterior mean, normalised: [B, z, (F-1)/4 + 1, H/16, W/16]."""
        self._check_video(video)
        w = self.conv1.weight
        b, _, f, h, width = video.shape
        t = (f - 1) // self.time_factor + 1
        out = w.new_empty(b, self.z_dim, t, h // self.space_factor, width // self.space_factor)
        mean, inv_std = self._latent_stats()
        cache = FeatureCache()
        self.check_conv3d()
        with _inference(w.device):
            for i in range(t):
                start = 0 if i == 0 else 1 + (i - 1) * self.time_factor
                chunk = rearrange(video[:, :, start:1 + i * self.time_factor], "b c f (h q) (w r) -> b (c r q) f h w",
                                  q=PIXEL_PATCH, r=PIXEL_PATCH)
                chunk = self._layout(chunk)
                mu = self.conv1(self.encoder(chunk, cache)).chunk(2, dim=1)[0]
                out[:, :, i:i + 1] = (mu - mean) * inv_std
                cache.first_chunk = False
        return out

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def decode_stream(self, z: Tensor) -> Iterator[Tensor]:
        """Decoded frames chunk by chunk: [B, 3, 1, H, W] for latent frame 0, then [B, 3, 4, H, W] per frame."""
        self._check_latent(z)
        stream = StreamDecoder(self)
        for i in range(z.shape[2]):
            yield stream.push(z[:, :, i:i + 1])

    def decode(self, z: Tensor) -> Tensor:
        """Normalised latent [B, z, T, h, w] -> video [B, 3, 1 + 4(T-1), 16h, 16w] clamped to [-1, 1]."""
        self._check_latent(z)
        b, _, t, h, w = z.shape
        s = self.space_factor
        out = self.conv2.weight.new_empty(b, 3, 1 + self.time_factor * (t - 1), s * h, s * w)
        start = 0
        for frames in self.decode_stream(z):
            out[:, :, start:start + frames.shape[2]] = frames
            start += frames.shape[2]
        return out

    def _decode_chunk(self, z: Tensor, cache: FeatureCache) -> Tensor:
        w = self.conv2.weight
        mean, inv_std = self._latent_stats()
        with _inference(w.device):
            x = self.conv2(self._layout(z) / inv_std + mean)
            x = self.decoder(x, cache)
            cache.first_chunk = False
            x = rearrange(x, "b (c r q) f h w -> b c f (h q) (w r)", q=PIXEL_PATCH, r=PIXEL_PATCH)
            return x.clamp_(-1.0, 1.0)


class StreamDecoder:
    """One decoding stream: push latent frames in order, get their pixel frames; the cache lives here.

    Several streams may share one `WanVAE` and be advanced in any interleaving.
    """

    def __init__(self, vae: WanVAE) -> None:
        vae.check_conv3d()
        self.vae = vae
        self.cache = FeatureCache()

    def push(self, z_frame: Tensor) -> Tensor:
        """[B, z, 1, h, w] normalised latent frame -> [B, 3, f, 16h, 16w] in [-1, 1]; f = 1 first, then 4."""
        self.vae._check_latent(z_frame, frames=1)
        return self.vae._decode_chunk(z_frame, self.cache)
