"""PixelWizard's HR shortcut model: the Wan DiT plus step-size (dt) conditioning and the spatial adapter
("anchor-guided injector") that adds the upsampled LR anchor to the residual stream at the input of block 1.

    e        = time_embedding(sin t) + dt_embedding(sin dt)                  (shared 6-way adaLN projection)
    f        = LayerNorm(flatten(backbone(anchor)))                          [B, L, D], once per video
    control  = zero_layer(f * (1 + tanh(time_proj(sin t) + dt_proj(sin dt))))   added before block 1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from pixelwizard.models.config import DiTConfig
from pixelwizard.models.dit import RowFn, WanDiT, sinusoidal_embedding

INJECTION_BLOCKS = (1,)  # the original's `spatial_control_blocks` default; no released model sets another


class AnchorMismatchError(ValueError):
    """The anchor's token grid differs from the HR latent's (the original silently dropped the anchor)."""


def _embedding_mlp(freq_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))


def resize_anchor(lr_latent: torch.Tensor, token_grid: tuple[int, int]) -> torch.Tensor:
    """[B, C, T, h, w] LR latent -> [B, C, T, H/32, W/32] float32: bilinear per frame, to the DiT token grid."""
    b = lr_latent.shape[0]
    frames = rearrange(lr_latent.float(), "b c t h w -> (b t) c h w")
    frames = F.interpolate(frames, size=token_grid, mode="bilinear", align_corners=False)
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


class SpatialAdapter(nn.Module):
    def __init__(self, in_dim: int, dim: int, freq_dim: int, blocks: tuple[int, ...] = INJECTION_BLOCKS):
        super().__init__()
        mid = dim // 4
        self.backbone = nn.Sequential(
            nn.Conv3d(in_dim, mid, kernel_size=1),
            nn.GroupNorm(16, mid),
            nn.SiLU(),
            nn.Conv3d(mid, dim, kernel_size=3, padding=1),
            nn.SiLU(),
        )
        self.feature_norm = nn.LayerNorm(dim, eps=1e-6)
        self.adapter_time_proj = _embedding_mlp(freq_dim, dim)
        self.adapter_dt_proj = _embedding_mlp(freq_dim, dim)
        self.zero_layers = nn.ModuleDict({str(i): nn.Linear(dim, dim) for i in blocks})

    def anchor_features(self, anchor: torch.Tensor) -> torch.Tensor:
        """[B, C, T, h, w] resized anchor -> [B, T*h*w, D]. Independent of t and dt: run once per video."""
        f = self.backbone(anchor.to(self.feature_norm.weight.dtype))
        return self.feature_norm(rearrange(f, "b d t h w -> b (t h w) d"))

    def forward(self, features: torch.Tensor, t_freq: torch.Tensor, dt_freq: torch.Tensor) -> dict[int, RowFn]:
        """features [B, L, D], t_freq/dt_freq [B, freq_dim] -> {block index: rows -> residual [B, len(rows), D]}.

        The residuals are computed row chunk by row chunk when the DiT adds them, so no [B, L, D] control is held
        through the forward."""
        gain = 1 + torch.tanh(self.adapter_time_proj(t_freq) + self.adapter_dt_proj(dt_freq))[:, None]  # [B, 1, D]

        def control(layer: nn.Linear) -> RowFn:
            return lambda rows: layer(features[:, rows] * gain)

        return {int(i): control(layer) for i, layer in self.zero_layers.items()}


class HRDiT(WanDiT):
    """State-dict keys: the base DiT's, `dt_embedding.{0,2}.*` and `spatial_adapter.*`."""

    fp32_modules = (*WanDiT.fp32_modules, "dt_embedding", "spatial_adapter")

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        self.dt_embedding = _embedding_mlp(config.freq_dim, config.dim)
        self.spatial_adapter = SpatialAdapter(config.in_dim, config.dim, config.freq_dim)

    def anchor_features(self, lr_latent: torch.Tensor, hr_latent_shape: tuple[int, ...]) -> torch.Tensor:
        """The adapter's per-video feature for an LR latent [B, C, T, h, w] and an HR latent shape
        [B, C, T, H, W]; checks that it lines up with the HR token grid, token for token."""
        pt, ph, pw = self.config.patch_size
        t, h, w = hr_latent_shape[-3:]
        if lr_latent.shape[-3] != t or t % pt or h % ph or w % pw:
            raise AnchorMismatchError(
                f"LR anchor {tuple(lr_latent.shape)} cannot condition an HR latent {tuple(hr_latent_shape)}: "
                f"the frame counts must match and H, W be multiples of the patch {self.config.patch_size}"
            )
        return self.spatial_adapter.anchor_features(resize_anchor(lr_latent, (h // ph, w // pw)))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        dt: torch.Tensor,
        context: torch.Tensor | list[torch.Tensor],
        anchor_features: torch.Tensor,
        *,
        token_t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, C, T, H, W], t and dt [B] (timestep units), anchor_features [B, L, D] from `anchor_features`.
        Under sequence parallelism the adapter runs on this rank's rows of the feature, like the DiT's tokens.
        `token_t` [B, L], per-token timesteps (e.g. 0 on a clean first frame), replaces t in the DiT's modulation
        only; the adapter's gain keeps t."""
        pt, ph, pw = self.config.patch_size
        tokens = (x.shape[2] // pt) * (x.shape[3] // ph) * (x.shape[4] // pw)
        if anchor_features.shape[1] != tokens:
            raise AnchorMismatchError(
                f"anchor feature has {anchor_features.shape[1]} tokens but the HR latent {tuple(x.shape)} has "
                f"{tokens}; build it with HRDiT.anchor_features for this latent shape"
            )
        if self.sequence_parallel is not None:
            anchor_features = self.sequence_parallel.split(anchor_features)  # this rank's token rows
        t_freq = sinusoidal_embedding(t, self.config.freq_dim)
        dt_freq = sinusoidal_embedding(dt, self.config.freq_dim)
        controls = self.spatial_adapter(anchor_features, t_freq, dt_freq)
        e_dt = self.dt_embedding(dt_freq)[:, None]  # [B, 1, D]: one dt per sample, never per token
        return super().forward(x, t if token_t is None else token_t, context, e_extra=e_dt, block_residuals=controls)
