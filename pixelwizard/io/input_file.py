"""The one error for an input file a user gives (a video, an image, a saved latent) that cannot be used."""

from __future__ import annotations

from pathlib import Path

LATENT_SUFFIXES = (".pt", ".pth", ".safetensors", ".npy", ".zarr")  # saved anchor latents (io/latent_input.py)


class InputFileError(ValueError):
    """An input file that is missing, unreadable or unusable: one line naming the file, what is wrong and the fix."""

    def __init__(self, path: Path | str, problem: str, fix: str):
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = Path(path)


def check_readable(path: Path, what: str) -> None:
    """Raise InputFileError unless `path` is a file this process can open."""
    if not path.exists():
        raise InputFileError(path, "no such file", f"check the path of the {what}")
    if not path.is_file():
        raise InputFileError(path, "is not a file", f"give the {what} file itself")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise InputFileError(path, f"cannot be read ({err.strerror})", "check its permissions") from None
