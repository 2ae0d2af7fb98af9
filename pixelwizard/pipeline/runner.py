"""Drive the Snakefile for the CLI: one run per output directory at a time, stale locks cleared safely."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pixelwizard.pipeline.gpu_lease import visible_gpus
from pixelwizard.pipeline.plan import RUN_CONFIG

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
PROFILES = REPO / "profiles"


class RunBusyError(RuntimeError):
    """Another pixelwizard process is working on this output directory."""


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold OUT/.pixelwizard.lock. The kernel drops it when the holder dies (SIGKILL included), so holding it
    proves that no other run is alive here and that a leftover Snakemake lock is stale."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".pixelwizard.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(f"{out}: another pixelwizard run is using this directory; wait for it or "
                               "choose another --out") from None
        yield


def snakemake_command(out: Path, profile: str) -> list[str]:
    profile_dir = PROFILES / profile
    if not profile_dir.is_dir():
        known = ", ".join(sorted(p.name for p in PROFILES.iterdir() if p.is_dir()))
        raise ValueError(f"unknown profile {profile!r}; choose one of {known}")
    return [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(out),
            "--configfile", str(out / RUN_CONFIG), "--profile", str(profile_dir)]


def run_workflow(
    out: Path,
    *,
    profile: str = "local",
    cores: int = 1,
    jobs: int | None = None,
    dry_run: bool = False,
    targets: Sequence[str] = (),
    allowed_rules: Sequence[str] = (),
    quiet: bool = False,
) -> int:
    """Run (or dry-run) the workflow for `out`; returns Snakemake's exit code."""
    out = Path(out).resolve()
    base = snakemake_command(out, profile)
    cmd = [*base, *targets, "--cores", str(cores)]  # targets first: several options below take lists
    gpus = visible_gpus()
    if profile == "local" and gpus:
        cmd += ["--resources", f"gpu={len(gpus)}"]  # jobs lease whole GPUs; this bounds how many at once
    if jobs:
        cmd += ["--jobs", str(jobs)]
    if dry_run:
        cmd.append("--dry-run")
    if allowed_rules:
        cmd += ["--allowed-rules", *allowed_rules]
    if quiet:
        cmd += ["--quiet", "progress"]
    with exclusive(out):
        if not dry_run and any((out / ".snakemake" / "locks").glob("*")):
            # After a SIGKILL Snakemake leaves its lock behind; ours being free proves nobody holds it.
            subprocess.run([*base, "--unlock"], capture_output=True, check=False)
        return run_forwarding_signals(cmd)


def run_forwarding_signals(cmd: list[str]) -> int:
    """Run Snakemake, passing SIGTERM/SIGHUP on to it and waiting for it to stop: the run lock must not be
    released while Snakemake (and its jobs) still work in the directory. Snakemake then stops its jobs; their
    outputs are atomic, so a rerun resumes. Ctrl-C already reaches Snakemake (same process group): the CLI
    only waits for it."""
    child = subprocess.Popen(cmd)
    handlers = {signal.SIGTERM: lambda number, _frame: child.send_signal(number), signal.SIGINT: signal.SIG_IGN}
    handlers[signal.SIGHUP] = handlers[signal.SIGTERM]
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        return child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
