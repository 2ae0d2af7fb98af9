"""The error of every checkpoint check and loader, in a module of its own without torch: the CLI catches it (one line
for the user) without importing torch."""


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or does not match the model it is loaded into."""


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line, for one-line errors that wrap a library's."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
