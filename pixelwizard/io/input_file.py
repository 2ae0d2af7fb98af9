"""Files a user brings as a video's source (an image, a video, a saved latent): the one error they all raise."""

from __future__ import annotations

from pathlib import Path


class InputFileError(ValueError):
    """An input file that is missing or cannot be used: `path: problem; fix`, one line."""

    def __init__(self, path: Path | str, problem: str, fix: str):
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = Path(path)


def existing_file(path: Path | str, kind: str) -> Path:
    """`path` as a Path, or InputFileError if it is not a regular file (`kind`: "image", "video", ...)."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(path, "is a directory", f"give the {kind} file inside it")
    if not path.is_file():
        raise InputFileError(path, "no such file", f"check the {kind} path")
    return path
