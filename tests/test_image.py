"""First-frame images as users bring them: any format PIL reads, upright by EXIF, and one clear line for a file
that cannot serve. (Wan2.2's exact fit is checked against the original in test_i2v.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwizard.io.image import MIN_IMAGE_SIDE, fit_image, load_image
from pixelwizard.io.input_file import InputFileError

RED, BLUE = (220, 20, 20), (20, 20, 220)


def two_colour_image(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2 :] = RED, BLUE
    return Image.fromarray(pixels)


def assert_one_line(err: pytest.ExceptionInfo, path, *parts: str) -> None:
    message = str(err.value)
    assert isinstance(err.value, ValueError)  # the CLI prints ValueErrors as one line (cli.USER_ERRORS)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("fmt, mode", [("PNG", "RGBA"), ("PNG", "L"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "CMYK"),
                                       ("WEBP", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB"), ("GIF", "P")])
def test_any_image_pil_reads_comes_back_rgb(tmp_path, fmt, mode):
    path = tmp_path / f"image.{fmt.lower()}"
    two_colour_image().convert(mode).save(path, format=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 32)


def test_exif_orientation_is_honoured(tmp_path):
    """A phone photo stored sideways with orientation 6 (rotate 90 degrees clockwise to view) comes back upright."""
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    two_colour_image().save(path, exif=exif, quality=95)
    image = load_image(path)
    assert image.size == (32, 64)  # portrait now
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[4, 16] - RED).max() < 30 and np.abs(pixels[60, 16] - BLUE).max() < 30  # red on top


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputFileError) as err:
        load_image(tmp_path / "nope.png")
    assert_one_line(err, tmp_path / "nope.png", "no such file", "check the image path")
    with pytest.raises(InputFileError) as err:
        load_image(tmp_path)
    assert_one_line(err, tmp_path, "is a directory", "give the image file inside it")


def test_a_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "cat.png"
    path.write_text("a cat on a sofa\n")
    with pytest.raises(InputFileError) as err:
        load_image(path)
    assert_one_line(err, path, "not an image PIL can read", "give a PNG, JPEG, WebP or other image file")


def test_a_damaged_image(tmp_path):
    path = tmp_path / "cut.jpg"
    two_colour_image(640, 480).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputFileError) as err:
        load_image(path)
    assert_one_line(err, path, "cannot decode the image", "the file may be damaged")


@pytest.mark.parametrize("size", [(1, 1), (MIN_IMAGE_SIDE - 1, 400), (400, MIN_IMAGE_SIDE - 1)])
def test_a_tiny_image(tmp_path, size):
    path = tmp_path / "dot.png"
    Image.new("RGB", size, RED).save(path)
    with pytest.raises(InputFileError) as err:
        load_image(path)
    assert_one_line(err, path, f"image is {size[0]}x{size[1]} pixels, too small",
                    f"give an image at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels")
    Image.new("RGB", (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE), RED).save(path)
    assert load_image(path).size == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)


def test_fit_covers_and_crops_the_centre():
    """A 64x32 red|blue image fitted to a portrait 16x32 frame: scaled x1 to cover the height, the centre 16
    columns kept, half red and half blue; a landscape target keeps both halves side by side."""
    portrait = fit_image(two_colour_image(), 16, 32)
    assert portrait.shape == (3, 1, 32, 16) and portrait.dtype == torch.float32
    assert portrait.min() >= -1 and portrait.max() <= 1
    red = torch.tensor(RED).float().div(255).sub(0.5).div(0.5)
    assert torch.allclose(portrait[:, 0, 16, 2], red, atol=0.05)
    assert torch.allclose(portrait[:, 0, 16, 13], torch.tensor(BLUE).float().div(255).sub(0.5).div(0.5), atol=0.05)
    landscape = fit_image(two_colour_image(), 128, 64)
    assert landscape.shape == (3, 1, 64, 128) and torch.allclose(landscape[:, 0, 32, 10], red, atol=0.05)
