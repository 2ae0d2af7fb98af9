"""Drive Snakemake for the CLI: Snakemake's own output in a log file, and stop signals turned into a clean, quick
stop of every job. Who holds OUT and which jobs work in it: pipeline/inflight.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import IO

from pixelwizard.io.files import open_output
from pixelwizard.pipeline import inflight
from pixelwizard.pipeline.gpu_lease import visible_gpus
from pixelwizard.pipeline.layout import Layout

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TICK_S = 0.5


def workflow_files() -> Path:
    """The Snakefile, profiles/ and the stage scripts: the repository's top level, or the installed package's
    `pixelwizard.workflow`."""
    return Path(str(files("pixelwizard.workflow")))


def profiles() -> dict[str, Path]:
    root = workflow_files() / "profiles"
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.yaml").is_file()}


@dataclass
class Outcome:
    code: int  # Snakemake's exit code (negative: the signal that killed it)
    stop_signal: int | None  # the signal that stopped the run, if one did
    log: Path  # Snakemake's own output
    orphaned: list[inflight.JobRecord] = field(default_factory=list)  # jobs Snakemake ended without: stopped


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
                  on_tick: Callable[[bool], None] = lambda stopping: None) -> Outcome:
    """Run Snakemake with OUT's lock handed down; its output goes to OUT/logs/snakemake/<time>.log (and the terminal
    with `verbose`). Returns once Snakemake and every job it started have ended.

    A stop signal (SIGINT, SIGTERM, SIGHUP), to this process alone or to its whole group, stops Snakemake from
    starting jobs and every running job after its current step (their launchers pass it on), jobs started meanwhile
    included; what still runs after STOP_GRACE_S is killed. Jobs left running by a Snakemake that ended without
    them (killed, say) are stopped the same way: nothing this run started outlives it."""
    if any((layout.out / ".snakemake" / "locks").glob("*")):
        # A SIGKILLed Snakemake leaves its lock behind; holding OUT's run lock proves nobody else uses it.
        subprocess.run([*command, "--unlock"], capture_output=True, check=False)
    log_path = layout.snakemake_logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    stopped: list[tuple[int, float]] = []  # (signal, when)
    with open_output(log_path, layout.out, append=False) as log:
        output = None if verbose else log
        # Ctrl-C reaches the whole foreground process group: Snakemake must ignore it (a child keeps an ignored
        # disposition) and leave the stop to this process; the launchers pass it on to the stage scripts.
        previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None,
                                 pass_fds=(lock.fileno(),))
        inflight.note_run(lock, snakemake=child.pid, snakemake_started=time.time())

        def stop(signum: int, _frame: object) -> None:
            if not stopped:
                stopped.append((signum, time.monotonic()))
                inflight.note_run(lock, stopping=True)  # a job that starts now (a queued one) ends at once
                child.send_signal(signal.SIGTERM)  # Snakemake starts no more jobs and waits for the running ones

        previous |= {s: signal.signal(s, stop) for s in STOP_SIGNALS if s != signal.SIGINT}
        signal.signal(signal.SIGINT, stop)
        try:
            orphaned = _follow(layout, child, stopped, on_tick)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    return Outcome(child.returncode, stopped[0][0] if stopped else None, log_path, orphaned)


def _follow(layout: Layout, snakemake: subprocess.Popen, stopped: list[tuple[int, float]],
            on_tick: Callable[[bool], None]) -> list[inflight.JobRecord]:
    """Wait for Snakemake and every job of the run, ticking the live view; once stopping (a stop signal, or Snakemake
    gone while jobs still run), each job gets SIGTERM and, past the grace time, SIGKILL. Returns the jobs that were
    still at work when Snakemake ended without them."""
    signalled: set[int] = set()
    orphaned: list[inflight.JobRecord] = []
    alone_since: float | None = None
    while True:
        on_tick(bool(stopped) or alone_since is not None)
        running = snakemake.poll() is None
        jobs = inflight.live_jobs(layout, prune=True)  # this run holds OUT
        if not running and not jobs:
            return orphaned
        if not running and alone_since is None and not stopped:
            alone_since, orphaned = time.monotonic(), jobs
        since = stopped[0][1] if stopped else alone_since
        if since is not None:
            for job in jobs:
                if job.pid not in signalled:
                    signalled.add(job.pid)
                    inflight.signal_job(job, signal.SIGTERM)
            if time.monotonic() - since > inflight.STOP_GRACE_S:
                inflight.signal_tree(snakemake.pid, signal.SIGKILL)
                for job in jobs:
                    inflight.signal_job(job, signal.SIGKILL)
        time.sleep(TICK_S)
