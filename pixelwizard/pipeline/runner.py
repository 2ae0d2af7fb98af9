"""Drive Snakemake for the CLI: one run per output directory at a time, Snakemake's own output in a log file, and
stop signals turned into a clean, quick stop of every job.

Locks (the kernel drops them when their holders die, SIGKILL included):
    OUT/.pixelwizard/run.lock    exclusive, held by the CLI and the Snakemake it starts: one run at a time
    OUT/.pixelwizard/jobs.lock   shared, held by every stage job: no run starts while jobs of an earlier one (whose
                                 Snakemake was killed alone, say) still work in OUT
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import IO

import psutil

from pixelwizard.io.files import open_output
from pixelwizard.pipeline.gpu_lease import visible_gpus
from pixelwizard.pipeline.layout import Layout

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 60.0  # after a stop signal: time for jobs to finish their step before they are killed
TICK_S = 0.5


class RunBusyError(RuntimeError):
    """Another pixelwizard run, or jobs of an earlier one, work in this output directory."""


def workflow_files() -> Path:
    """The Snakefile, profiles/ and the stage scripts: the repository's top level, or the installed package's
    `pixelwizard.workflow`."""
    return Path(str(files("pixelwizard.workflow")))


def profiles() -> dict[str, Path]:
    root = workflow_files() / "profiles"
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.yaml").is_file()}


def _busy(layout: Layout) -> RunBusyError:
    return RunBusyError(f"{layout.out}: another pixelwizard run is using this directory; wait for it to finish "
                        "(pixelwizard status shows its progress) or choose another --out")


def _try_lock(layout: Layout, path: Path, mode: int) -> IO | None:
    handle = open_output(path, layout.out, append=True)
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def check_free(layout: Layout) -> None:
    """Raise RunBusyError if a run or its jobs are at work in OUT; creates nothing."""
    for path in (layout.run_lock, layout.jobs_lock):
        if path.exists():
            handle = _try_lock(layout, path, fcntl.LOCK_SH if path == layout.run_lock else fcntl.LOCK_EX)
            if handle is None:
                raise _busy(layout)
            handle.close()


@contextmanager
def run_lock(layout: Layout) -> Iterator[IO]:
    """Hold OUT's run lock for a run (taken before anything in OUT changes); yields the lock's file, whose
    descriptor Snakemake inherits so that the lock lives as long as the run does."""
    layout.out.mkdir(parents=True, exist_ok=True)
    handle = _try_lock(layout, layout.run_lock, fcntl.LOCK_EX)
    if handle is None:
        raise _busy(layout)
    with handle:
        jobs = _try_lock(layout, layout.jobs_lock, fcntl.LOCK_EX)
        if jobs is None:
            raise RunBusyError(f"{layout.out}: stage jobs of an earlier run are still working here (its Snakemake "
                               "was stopped alone); wait for them, or end them, then run again")
        jobs.close()
        yield handle


@dataclass
class Outcome:
    code: int  # Snakemake's exit code
    stop_signal: int | None  # the signal that stopped the run, if one did
    log: Path  # Snakemake's own output


def snakemake_command(layout: Layout, snapshot: Path, targets: Sequence[Path], *, profile: str, cores: int,
                      jobs: int | None, allowed_rules: Sequence[str] = ()) -> list[str]:
    known = profiles()
    if profile not in known:
        raise ValueError(f"--profile {profile}: unknown; choose one of {', '.join(known)}")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(workflow_files() / "Snakefile"),
               "--directory", str(layout.out), "--profile", str(known[profile]),
               *(str(t.relative_to(layout.out)) for t in targets),
               "--config", f"snapshot={snapshot}", "--cores", str(cores)]
    gpus = visible_gpus()
    if profile == "local" and gpus:
        command += ["--resources", f"gpu={len(gpus)}"]  # jobs lease whole GPUs; this bounds how many at once
    if jobs:
        command += ["--jobs", str(jobs)]
    if allowed_rules:
        command += ["--allowed-rules", *allowed_rules]
    return command


def run_snakemake(layout: Layout, command: list[str], lock: IO, *, verbose: bool,
                  on_tick: Callable[[], None] = lambda: None) -> Outcome:
    """Run Snakemake with OUT's lock handed down; its output goes to OUT/logs/snakemake/<time>.log (and the terminal
    with `verbose`). A stop signal (SIGINT, SIGTERM, SIGHUP) stops Snakemake from starting jobs and every running
    job after its current step; what is still alive after STOP_GRACE_S is killed."""
    if any((layout.out / ".snakemake" / "locks").glob("*")):
        # A SIGKILLed Snakemake leaves its lock behind; holding OUT's run lock proves nobody else uses it.
        subprocess.run([*command, "--unlock"], capture_output=True, check=False)
    log_path = layout.snakemake_logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    stopped: list[tuple[int, float]] = []  # (signal, when)
    with open_output(log_path, layout.out, append=False) as log:
        output = None if verbose else log
        # Ctrl-C reaches the whole foreground process group: Snakemake and its shells must ignore it (a child keeps
        # an ignored disposition) and leave the stop to this process; the stage jobs handle it themselves.
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None,
                                 pass_fds=(lock.fileno(),))

        def stop(signum: int, _frame: object) -> None:
            if not stopped:
                stopped.append((signum, time.monotonic()))
                signal_tree(child.pid, signal.SIGTERM)

        previous |= {s: signal.signal(s, stop) for s in STOP_SIGNALS if s != signal.SIGINT}
        signal.signal(signal.SIGINT, stop)
        try:
            while child.poll() is None:
                on_tick()
                if stopped and time.monotonic() - stopped[0][1] > STOP_GRACE_S:
                    signal_tree(child.pid, signal.SIGKILL)
                time.sleep(TICK_S)
            on_tick()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return Outcome(child.returncode, stopped[0][0] if stopped else None, log_path)


def signal_tree(pid: int, signum: int) -> None:
    """Send `signum` to a process and all its descendants (torchrun's workers too, though they run in a session of
    their own)."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            pass
