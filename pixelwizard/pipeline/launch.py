"""The process every stage job of the Snakefile runs, in OUT: it leases the job's GPUs, records the job
(pipeline/inflight.py), runs the stage script with its output in the job's log (LOG, a file inside OUT: io/files.py),
passes stop signals on, and says how the job ended when the script cannot:

    python -m pixelwizard.pipeline.launch STAGE SHARD GPUS LOG -- COMMAND...

A script killed by a signal (SIGKILL from the OOM killer or a user, SIGSEGV) records nothing itself: the launcher
records the prompt it was computing as failed ("killed by signal 9 (SIGKILL)"), so status and the run's summary
count it. The script dies with its launcher: if the launcher is killed, the kernel sends the script SIGTERM, a clean
stop after its current step. The launcher imports no torch, so a job shows as started at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pixelwizard.io.files import open_output, remove_output
from pixelwizard.pipeline import inflight
from pixelwizard.pipeline.events import append_event
from pixelwizard.pipeline.gpu_lease import gpu_lease
from pixelwizard.pipeline.layout import Layout

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1
OOM_HINT = "out of memory? the kernel's OOM killer sends SIGKILL (dmesg names it)"


def die_with_parent(signum: int = signal.SIGKILL, parent: int | None = None) -> None:
    """Have the kernel send this process `signum` when its parent dies (Linux; elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid() if parent is None else parent
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signum)


def record_end(layout: Layout, record: inflight.JobRecord | None, code: int, stopping: bool) -> None:
    """The prompt in flight when the script died of a signal is recorded as failed, with how the job ended (as
    interrupted when the job was being stopped): the script had no chance to record it."""
    if record is None or record.item is None or code >= 0:
        return
    ended = f"its job (shard {record.shard}: {', '.join(record.prompts)}) was {inflight.how_it_ended(code)}"
    if -code == signal.SIGKILL and not stopping:
        ended += f": {OOM_HINT}"
    append_event(layout.events, root=layout.out, stage=record.stage, id=record.item, shard=record.shard,
                 digest=record.digest, action="interrupted" if stopping else "failed", error=ended)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 6 or argv[4] != "--" or not argv[2].isdigit():
        print("usage: python -m pixelwizard.pipeline.launch STAGE SHARD GPUS LOG -- COMMAND...", file=sys.stderr)
        return 2
    stage, shard, gpus, log, command = argv[0], argv[1], int(argv[2]), Path(argv[3]), argv[5:]
    layout = Layout(Path("."))
    child: subprocess.Popen | None = None
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)
        if child is None:
            raise SystemExit(128 + signum)  # nothing started yet: end here, the record goes below
        child.send_signal(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    if (inflight.run_holder(layout) or {}).get("stopping"):  # started after its run was stopped (a queued job)
        return 128 + signal.SIGTERM
    record = inflight.JobRecord(stage, shard, os.getpid(), os.getpgid(0), socket.gethostname(),
                                inflight.process_start(os.getpid()), os.environ.get("SLURM_JOB_ID"),
                                parent=(os.getppid(), inflight.process_start(os.getppid())))
    path = inflight.record_path(layout, stage, shard)
    code = 1
    try:
        inflight.write_job(layout, record)
        with inflight.jobs_lock(layout) as lock, gpu_lease(gpus) as env:
            with open_output(log, layout.out, append=False) as sink:
                me = os.getpid()
                child = subprocess.Popen(command, env={**os.environ, **env}, stdout=sink, stderr=subprocess.STDOUT,
                                         pass_fds=(lock.fileno(),), preexec_fn=lambda: die_with_parent(
                                             signal.SIGTERM, me))
            record.script = (child.pid, inflight.process_start(child.pid))
            inflight.write_job(layout, record)
            code = child.wait()
    finally:
        record_end(layout, inflight.read_job(path), code, bool(stopping))
        remove_output(path, layout.out)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
