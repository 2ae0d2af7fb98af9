"""Who is at work in an output directory: the run holding it and the stage jobs in flight. `generate` and `decode`
take it, `pixelwizard stop` ends it, `status` and the live view show it, and a run that finds jobs of an earlier one
still working names them.

    OUT/.pixelwizard/run.lock                  exclusive, held by a run (the CLI and the Snakemake it starts);
                                               while held it holds the run's record: pid, host, command, Snakemake
    OUT/.pixelwizard/jobs.lock                 shared, held by every stage job (its launcher and the stage script):
                                               no run starts while jobs of an earlier one still work in OUT
    OUT/.pixelwizard/jobs/<stage>-<shard>.json the record of a live stage job: written by its launcher as it starts
                                               (pipeline/launch.py), updated by the job (its prompts, what it is
                                               doing, the prompt in flight), removed by the launcher when it ends

The kernel drops the locks with their holders (SIGKILL included), so the locks say whether anyone is at work; the
records say who. A record names the launcher's process (pid, process group, host, start time): a record whose
process is gone (a killed launcher) reads as gone, and the run holding OUT (or `stop`) removes it. Every file here
is written inside OUT (io/files.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from pixelwizard.io.files import open_output, remove_output, write_atomic
from pixelwizard.pipeline.layout import Layout

STOP_GRACE_S = 60.0  # after a stop signal: time for jobs to finish their step before they are killed
POLL_S = 0.2


class RunBusyError(RuntimeError):
    """Another pixelwizard run, or jobs of an earlier one, work in this output directory."""


def process_start(pid: int) -> float | None:
    """The start time (epoch) of process `pid`, or None when there is none."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _alive(host: str, pid: int, started: float) -> bool:
    """Whether the process recorded (on this host) still runs; one on another host is taken as running."""
    if host != socket.gethostname():
        return True
    now = process_start(pid)
    if now is None or abs(now - started) > 0.01:  # gone, or its pid reused
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- stage jobs ----------------------------------------------------------------------------------------------------

@dataclass
class JobRecord:
    stage: str
    shard: str
    pid: int  # the launcher: signals to it reach the stage script
    pgid: int
    host: str
    started: float  # the launcher's start (epoch): when Snakemake ran the job
    slurm_job: str | None = None
    script: tuple[int, float] | None = None  # the stage script's pid and start: it may outlive a killed launcher
    parent: tuple[int, float] | None = None  # the launcher's parent (Snakemake) and its start
    prompts: list[str] = field(default_factory=list)  # the shard's ids, once the job has read its shard
    doing: str = "starting"  # for people: starting, loading hr_dit, sampling fox 3/4, ...
    item: str | None = None  # the prompt in flight and the digest of the output it makes
    digest: str | None = None
    startup: dict[str, float] = field(default_factory=dict)  # epochs: process, imported, loaded, first_step

    @property
    def name(self) -> str:
        return f"{self.stage} shard {self.shard}"

    @property
    def alive(self) -> bool:
        launcher = _alive(self.host, self.pid, self.started)
        return launcher or (self.script is not None and _alive(self.host, *self.script))

    def describe(self) -> str:
        """hr shard 00001 (pid 4242, 2 prompts: fox, owl; sampling fox 3/4; 1:05)"""
        where = f"pid {self.pid}" if self.host == socket.gethostname() else f"pid {self.pid} on {self.host}"
        if self.slurm_job:
            where += f", SLURM job {self.slurm_job}"
        shown = ", ".join(self.prompts[:3]) + (f" +{len(self.prompts) - 3}" if len(self.prompts) > 3 else "")
        count = f"{len(self.prompts)} prompt{'s' if len(self.prompts) != 1 else ''}"
        prompts = f"{count}: {shown}; " if self.prompts else ""
        return f"{self.name} ({where}, {prompts}{self.doing}; {duration(time.time() - self.started)})"


def how_it_ended(code: int) -> str:
    """A process's return code in words: "exit code 1", "killed by signal 9 (SIGKILL)"."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "?"
    return f"killed by signal {-code} ({name})"


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def record_path(layout: Layout, stage: str, shard: str) -> Path:
    return layout.state / "jobs" / f"{stage}-{shard}.json"


def write_job(layout: Layout, record: JobRecord) -> None:
    write_atomic(record_path(layout, record.stage, record.shard), json.dumps(asdict(record)), layout.out)


def read_job(path: Path) -> JobRecord | None:
    try:
        return JobRecord(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):  # gone, or replaced while read
        return None


def live_jobs(layout: Layout, *, prune: bool = False) -> list[JobRecord]:
    """The records of the stage jobs alive in OUT. A record left by a process that is gone (a killed launcher) is
    passed over, and with `prune` removed: a run holding OUT and `stop` prune, `status` writes nothing."""
    folder, alive = layout.state / "jobs", []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        record = read_job(path)
        if record is not None and record.alive:
            alive.append(record)
        elif record is not None and prune:
            remove_output(path, layout.out)
    return alive


@contextmanager
def jobs_lock(layout: Layout) -> Iterator[IO[str]]:
    """OUT's jobs lock, shared, for a stage job's lifetime (its launcher holds it and hands it to the script)."""
    with open_output(layout.jobs_lock, layout.out, append=True) as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield handle


# ---- the run -------------------------------------------------------------------------------------------------------

def _try_lock(handle: IO) -> IO | None:
    """`handle`, locked exclusively, or None (closed) when someone holds its lock."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _held(path: Path, mode: int) -> bool:
    """Whether someone holds the lock on the file `path` that `mode` (shared or exclusive) conflicts with; opens
    the file only to read (a read-only OUT, say) and creates nothing."""
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def _busy(layout: Layout) -> RunBusyError:
    holder = run_holder(layout)
    who = f" ({holder['command']}, pid {holder['pid']} on {holder['host']})" if holder else ""
    return RunBusyError(f"{layout.out}: another pixelwizard run{who} is using this directory; wait for it to finish "
                        f"(pixelwizard status shows its progress), stop it (pixelwizard stop {layout.out}) or choose "
                        "another --out")


def _outliving(layout: Layout) -> RunBusyError:
    jobs = live_jobs(layout)
    named = "; ".join(job.describe() for job in jobs) if jobs else "not named: started outside pixelwizard's launcher"
    return RunBusyError(f"{layout.out}: stage jobs of an earlier run are still working here ({named}); wait for "
                        f"them, or end them with `pixelwizard stop {layout.out}`, then run again")


def check_free(layout: Layout) -> None:
    """Raise RunBusyError if a run or its jobs are at work in OUT; creates nothing."""
    if _held(layout.run_lock, fcntl.LOCK_SH):
        raise _busy(layout)
    if _held(layout.jobs_lock, fcntl.LOCK_EX):
        raise _outliving(layout)


@contextmanager
def run_lock(layout: Layout, command: str) -> Iterator[IO]:
    """Hold OUT's run lock for a run (taken before anything in OUT changes), with the run's record in it; yields the
    lock's file, whose descriptor Snakemake inherits so that the lock lives as long as the run does."""
    layout.out.mkdir(parents=True, exist_ok=True)
    # the run lock holds the run's record: read and written
    handle = _try_lock(open_output(layout.run_lock, layout.out, append=True, read=True))
    if handle is None:
        raise _busy(layout)
    with handle:
        jobs = _try_lock(open_output(layout.jobs_lock, layout.out, append=True))
        if jobs is None:
            raise _outliving(layout)
        live_jobs(layout, prune=True)  # records left by killed launchers
        jobs.close()
        note_run(handle, command=command, pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                 snakemake=None, stopping=False)
        yield handle


def note_run(handle: IO, **fields: Any) -> None:
    """Add `fields` to the record of the run holding `handle` (the run lock)."""
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except ValueError:  # an earlier run's record, torn by a crash mid-write
        record = {}
    os.ftruncate(handle.fileno(), 0)
    handle.write(json.dumps({**record, **fields}))
    handle.flush()


def run_holder(layout: Layout) -> dict[str, Any] | None:
    """The record of the run holding OUT, or None when no run holds it."""
    if not _held(layout.run_lock, fcntl.LOCK_SH):
        return None
    try:
        return json.loads(layout.run_lock.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError):
        return {}


# ---- stopping ------------------------------------------------------------------------------------------------------

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


def signal_job(job: JobRecord, signum: int) -> None:
    """SIGTERM (a clean stop after the current step) goes to the job's launcher, which passes it on; SIGKILL to its
    whole process tree. A SLURM job on another host is cancelled through SLURM (SIGTERM, then SIGKILL after the
    cluster's KillWait)."""
    if job.host != socket.gethostname():
        if job.slurm_job and signum != signal.SIGKILL:
            subprocess.run(["scancel", job.slurm_job], capture_output=True, check=False)
        return
    pids = [job.pid] if _alive(job.host, job.pid, job.started) else []
    if job.script is not None and _alive(job.host, *job.script) and (signum == signal.SIGKILL or not pids):
        pids.append(job.script[0])
    for pid in pids:
        if signum == signal.SIGKILL:
            signal_tree(pid, signum)
        else:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


@dataclass
class Stopped:
    run: dict[str, Any] | None  # the record of the run that held OUT, if one did
    jobs: list[JobRecord]  # the jobs that were at work
    killed: list[JobRecord]  # those still at work after the grace time: killed
    left: list[JobRecord]  # those still at work at the end (on another host, or unkillable)
    seconds: float


def stop(layout: Layout, grace_s: float = STOP_GRACE_S) -> Stopped:
    """End what works in OUT as a stop signal to its run would: the run (its CLI, or its Snakemake once the CLI is
    gone; the Snakemake of jobs started by Snakemake directly) and every job get SIGTERM, finish their current step
    and publish nothing half-written; what still runs after `grace_s` is killed. Returns once all of it has ended
    (or 10 s after the kill)."""
    start = time.monotonic()
    run, jobs = run_holder(layout), live_jobs(layout, prune=True)
    here = socket.gethostname()
    drivers = [run.get("pid"), run.get("snakemake")] if run and run.get("host") == here else []
    if not run:  # Snakemake run directly: its jobs' launchers are its children
        drivers += [job.parent[0] for job in jobs if job.parent and _alive(job.host, *job.parent)]
    for pid in dict.fromkeys(p for p in drivers if p and process_start(p) is not None):
        os.kill(pid, signal.SIGTERM)
        if run:
            break  # the CLI stops its Snakemake itself
    signalled: dict[int, JobRecord] = {}
    killed: list[JobRecord] = []
    while True:
        left = live_jobs(layout, prune=True)
        for job in left:
            if job.pid not in signalled:  # those running now and any started before the stop reached Snakemake
                signalled[job.pid] = job
                signal_job(job, signal.SIGTERM)
        holder = run_holder(layout)
        if not left and (holder is None or holder.get("host") != here):
            break
        waited = time.monotonic() - start
        if waited > grace_s and not killed:
            killed = [job for job in left if job.host == here]
            for job in killed:
                signal_job(job, signal.SIGKILL)
        if waited > grace_s + 10:
            break
        time.sleep(POLL_S)
    return Stopped(run, list(signalled.values()), killed, left, time.monotonic() - start)
