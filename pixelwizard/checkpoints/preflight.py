"""Up-front checks of every checkpoint a run reads, in a few seconds whatever their size.

Each loader runs on the meta device: files, safetensors headers against file sizes, zip directories, configs,
key sets and shapes are checked exactly as the real load will check them, and no tensor data is read. Every
problem found is one line (the file, what is wrong, what to do), all of them reported together.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pixelwizard.checkpoints import wan, wan_files
from pixelwizard.checkpoints.strict import CheckpointError
from pixelwizard.checkpoints.trainer import generator_state_dict, load_hr_model, load_lr_model
from pixelwizard.models.config import ConfigError

T = TypeVar("T")


class CheckpointProblems(CheckpointError):
    """Every problem the up-front check found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:  # pickled back from the check beside the plan
        return type(self), (self.problems,)


def check_checkpoints(ckpt_dir: Path, *, lr_ckpt: Path | None = None, hr_ckpt: Path | None = None) -> None:
    """Check the Wan2.2 directory (DiT config and shards, VAE, umT5, tokenizer) and the optional LR and HR trainer
    files against the DiT of `config.json` and their roles; raise `CheckpointProblems` listing everything wrong.
    (Whether the HR file was trained for the run's size is the run's check: pipeline/checks.py.)"""
    problems: list[str] = []

    def attempt(check: Callable[..., T], *args, **kwargs) -> T | None:
        try:
            return check(*args, **kwargs)
        except (CheckpointError, ConfigError) as err:
            problems.append(str(err))
            return None

    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        problems.append(f"{ckpt_dir}: not a directory; expected {wan_files.LAYOUT}")
        config = None
    else:
        config = attempt(wan_files.read_dit_config, ckpt_dir)
        if config is None:
            attempt(wan.dit_tensors, ckpt_dir)  # the shards can still be checked, not their shapes
        else:
            attempt(wan.load_dit, ckpt_dir, device="meta")
        attempt(wan.load_vae, ckpt_dir, device="meta")
        attempt(wan.load_text_encoder, ckpt_dir, device="meta")
    for path, load in ((lr_ckpt, load_lr_model), (hr_ckpt, load_hr_model)):
        if path is None:
            continue
        if config is None:
            attempt(generator_state_dict, Path(path))
        else:
            attempt(load, Path(path), config, device="meta")
    if problems:
        raise CheckpointProblems(list(dict.fromkeys(problems)))  # one file given for two roles: said once
