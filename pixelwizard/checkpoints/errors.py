"""The error of every checkpoint check and loader, in a module of its own without torch: the CLI catches it (one line
for the user) without importing torch."""


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, unreadable or does not match the model it is loaded into."""
