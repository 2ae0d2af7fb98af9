"""The presets' sizes: each HR size with its anchor, the HR checkpoint it takes and its decode patches along the
long side; for every preset, in either orientation a source may turn it to, the anchor lines up with the HR token
grid token for token, at the real VAE's geometry."""

from __future__ import annotations

import pytest
import torch

from pixelwizard.checkpoints.tiny import TINY_DIT
from pixelwizard.io.patched_decode import patch_ranges
from pixelwizard.models.config import VAEConfig
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline.presets import PRESETS

SIZES = {  # preset: (width, height), the HR model it takes (the original's 2k/ and 4k/ checkpoints)
    "2k": ((2560, 1440), "2k"), "4k": ((3840, 2144), "4k"), "2k-portrait": ((1440, 2560), "2k"),
    "4k-portrait": ((2144, 3840), "4k"), "1080p": ((1920, 1056), "2k"), "1080p-portrait": ((1056, 1920), "2k"),
}


def geometry(preset):
    return preset.width, preset.height, preset.lr_width, preset.lr_height, preset.patch_dim


@pytest.fixture(scope="module")
def hr_model():
    return HRDiT(TINY_DIT).eval()


def test_each_size_takes_its_anchor_its_hr_model_and_decodes_along_its_long_side():
    assert set(SIZES) <= set(PRESETS)
    for name, (size, model) in SIZES.items():
        preset = PRESETS[name]
        assert (preset.width, preset.height) == size and preset.hr_checkpoint == model, name
        assert (preset.lr_width, preset.lr_height) == ((256, 448) if preset.portrait else (448, 256)), name
        assert preset.patch_dim == ("h" if preset.portrait else "w"), name
    for landscape, portrait in (("2k", "2k-portrait"), ("4k", "4k-portrait"), ("1080p", "1080p-portrait")):
        # A portrait video in a landscape preset runs as the portrait preset does, and the other way round.
        assert geometry(PRESETS[landscape].for_clip(121, True)) == geometry(PRESETS[portrait])
        assert geometry(PRESETS[portrait].for_clip(121, False)) == geometry(PRESETS[landscape])


@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_the_anchor_lines_up_with_the_hr_token_grid(hr_model, name, portrait):
    preset = PRESETS[name].for_clip(9, portrait)
    vae = VAEConfig()  # 48 channels, 16x in space, 4x in time
    lr = vae.latent_shape(preset.frames, preset.lr_height, preset.lr_width)
    hr = vae.latent_shape(preset.frames, preset.height, preset.width)
    pt, ph, pw = TINY_DIT.patch_size
    with torch.no_grad():
        features = hr_model.anchor_features(torch.randn(1, *lr), (1, *hr))
    assert features.shape == (1, hr[1] // pt * (hr[2] // ph) * (hr[3] // pw), TINY_DIT.dim)  # one per HR token
    assert preset.portrait == portrait and (preset.lr_height > preset.lr_width) == portrait
    if name != "tiny":  # the anchor shows the picture the HR frame shows: the same shape within 5%
        assert abs(preset.lr_width / preset.lr_height * preset.height / preset.width - 1) < 0.05
    size = hr[3] if preset.patch_dim == "w" else hr[2]
    widest = max(end - start for start, end in patch_ranges(size, preset.num_patches, preset.overlap))
    assert (preset.width if preset.patch_dim == "w" else preset.height) == max(preset.width, preset.height)
    assert widest < size
