"""The checkpoint error, importable without torch (the CLI's status and report never load a model)."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or does not match the model it is loaded into."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line, for one-line errors that wrap a library's."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
