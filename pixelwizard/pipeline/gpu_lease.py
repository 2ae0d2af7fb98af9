"""GPU leases for stage jobs on one machine: each job takes whole GPUs, marked by flock'ed files, and runs with
CUDA_VISIBLE_DEVICES naming them. Locks vanish with their holder, so a killed job never strands a GPU.

Snakemake's `gpu` resource bounds how many GPUs the running jobs hold together; the lease decides which. The locks
of a SLURM allocation are its own (the allocation's GPUs are numbered from 0 in every allocation): jobs that share
one allocation (`salloc` + the local profile) share its GPUs without overlap, and a job that is an allocation of its
own (the slurm profile) finds every lock free. Every stage job's launcher takes its lease (pipeline/launch.py).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pixelwizard.io.files import open_output

LOCK_DIR = Path(tempfile.gettempdir()) / "pixelwizard-gpu-locks"
POLL_S = 0.5


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists, else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def lock_dir() -> Path:
    return LOCK_DIR / os.environ.get("SLURM_JOB_ID", "host")


@contextmanager
def gpu_lease(count: int, timeout_s: float = 24 * 3600) -> Iterator[dict[str, str]]:
    """Hold `count` free GPUs; yields the environment additions for the job (empty on a machine without GPUs)."""
    gpus = visible_gpus()
    if not gpus or count == 0:
        yield {}
        return
    if count > len(gpus):
        raise RuntimeError(f"a job needs {count} GPUs but only {len(gpus)} are visible ({','.join(gpus)})")
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        with ExitStack() as held:
            taken: list[str] = []
            for gpu in gpus:
                if len(taken) < count and _try_lock(held, directory / f"{gpu}.lock"):
                    taken.append(gpu)
            if len(taken) == count:
                yield {"CUDA_VISIBLE_DEVICES": ",".join(taken)}
                return
        # All or nothing: what a partial attempt took is released above, so two jobs never deadlock.
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {count} free GPUs among {','.join(gpus)} within {timeout_s} s")
        time.sleep(POLL_S)


def _try_lock(held: ExitStack, path: Path) -> bool:
    handle = open_output(path, path.parent, append=True)  # a shared /tmp: never truncate or follow a planted link
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return False
    held.enter_context(handle)
    return True
