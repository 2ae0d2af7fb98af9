"""A first-frame image: read as a person sees it, then fitted to a latent's pixel size as Wan2.2's i2v does.

    fit: scale to cover (width, height) with Lanczos, round the scaled size, crop the centre (offsets floored),
         then u8 / 255 mapped to [-1, 1]                                   (WanTI2V.i2v, wan/textimage2video.py)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pixelwizard.io.input_file import InputFileError, existing_file

# Smallest side accepted: one latent cell (the VAE's 16x16 pixels); a smaller image is blown up from next to nothing.
MIN_IMAGE_SIDE = 16
IMAGE_FIX = "give a PNG, JPEG, WebP or other image file that PIL reads"


def load_image(path: Path | str) -> Image.Image:
    """The image at `path` in RGB, turned upright by its EXIF orientation; InputFileError (one line naming the
    file and the fix) when it is missing, not an image, damaged or smaller than MIN_IMAGE_SIDE on a side."""
    path = existing_file(path, "image")
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")  # decodes it: damaged data fails here
    except UnidentifiedImageError:
        raise InputFileError(path, "not an image PIL can read", IMAGE_FIX) from None
    except PermissionError:
        raise InputFileError(path, "cannot be read (permission denied)", "check its permissions") from None
    except Image.DecompressionBombError as err:
        raise InputFileError(path, f"too many pixels ({err})", "give a smaller image") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputFileError(path, f"cannot decode the image ({err})",
                             f"the file may be damaged; {IMAGE_FIX}") from None
    if min(image.size) < MIN_IMAGE_SIDE:
        raise InputFileError(path, f"image is {image.width}x{image.height} pixels, too small",
                             f"give an image at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels")
    return image


def fit_image(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """`image` scaled to cover width x height (Lanczos) and centre-cropped to it, as a [3, 1, height, width]
    float32 frame in [-1, 1]: bit for bit the frame Wan2.2's i2v hands its VAE for that output size."""
    scale = max(width / image.width, height / image.height)
    resized = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    cropped = resized.crop((left, top, left + width, top + height))
    pixels = torch.from_numpy(np.array(cropped, dtype=np.uint8)).permute(2, 0, 1)
    return pixels.float().div(255).sub(0.5).div(0.5)[:, None]
