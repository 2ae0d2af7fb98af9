"""The bookkeeping around a stage script's loop, so the script itself reads top to bottom:

    with Job.start("hr") as job:                       # leaves the shard's marker when the loop ran through
        model = job.lazy(load_hr_model, ...)           # loaded once, on first use; a load error is kept
        for prompt in job.pending():                   # not current yet and every input ready; rank 0 decides
            with job.record(prompt) as out:            # times it, records the event, isolates a failure
                context = job.read("text", prompt, "context")
                latent = sample_hr(model(), ..., on_step=out.step)
                out.write_store({"latent": latent})

The script ends with `return job.exit_code`.

A job is one shard of one stage of one run snapshot: `python -m pixelwizard.workflow.stages.<stage> SNAPSHOT SHARD`,
run in OUT (Snakemake's working directory). Under torchrun every rank runs the same loop in lockstep: rank 0 decides
what to compute and reads the inputs, which reach the other ranks as tensors; only rank 0 writes.

SIGTERM, SIGINT and SIGHUP stop a job cleanly: a denoising step or decode chunk under way is finished, nothing
half-written is published (every output is written under a temporary name and renamed when complete), no new prompt
is started, and the job exits with 128 + the signal number. Outside a step (loading weights, say) it stops at once.

The job keeps its record in OUT up to date (pipeline/inflight.py: its prompts, what it is doing, the prompt in flight,
when it got through its start-up), which the live view, `status` and `stop` read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from pixelwizard import __version__, distributed
from pixelwizard.checkpoints.identity import DigestCache
from pixelwizard.gpu_traps import use_expandable_segments
from pixelwizard.io.files import remove_output, remove_stale_temps, write_atomic
from pixelwizard.io.latent_store import read_store, write_store
from pixelwizard.io.sidecar import write_sidecar
from pixelwizard.pipeline import inflight, steps
from pixelwizard.pipeline.events import append_event, failure_events
from pixelwizard.pipeline.launch import die_with_parent
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.plan import Plan
from pixelwizard.pipeline.presets import Preset
from pixelwizard.pipeline.prompts import Prompt
from pixelwizard.pipeline.provenance import CORRUPT, DONE, FAILED, Provenance, stage_seed
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.sources import content_digest
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.pipeline.stamp_index import ShardIndex, store_files

log = logging.getLogger("pixelwizard")
T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PROGRESS_EVERY_S = 0.5


class Stopped(BaseException):
    """A stop signal arrived: the job ends without publishing what it was computing (not an Exception, so no
    handler meant for failures catches it)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class Output:
    """One prompt's output being made: its path, its provenance attributes, the progress callback."""

    def __init__(self, job: Job, item: Prompt):
        self.job, self.item = job, item
        self.stage = job.stage
        self.path = job.provenance.output(job.stage, item.id)
        # The prompt as given (its text, its source file): every output names what it was made from.
        self.attrs = {**job.provenance.attrs(job.stage, item.id), "version": __version__,
                      "prompt": item.to_record()}
        self.stepping = False
        self._last_progress = 0.0

    def step(self, done: int, total: int) -> None:
        """The samplers' and decoders' callback: progress for the live view; a requested stop ends the prompt
        here, between two steps."""
        self.stepping = done < total
        if self.job.stop_requested():
            raise Stopped(self.job.stop_signal or signal.SIGTERM)
        if done > 0 and "first_step" not in self.job.startup:
            self.job.startup["first_step"] = time.time()
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY_S or done == total:
            self._last_progress = now
            self.job.doing(f"{STAGES[self.stage].verb} {self.item.id} {done}/{total}")

    def warn(self, message: str) -> None:
        """A warning about this prompt, for the console (the live view prints it) and the event log."""
        log.warning("%s %s: %s", self.stage, self.item.id, message)
        self.job.event(self.item.id, "warning", warning=message)

    @property
    def seed(self) -> int:
        return stage_seed(self.item, self.job.preset, self.stage)

    @property
    def root(self) -> Path:
        """The run's folder, OUT: every output is written inside it (io/files.py)."""
        return self.job.layout.out

    def write_store(self, arrays: dict[str, torch.Tensor], **attrs: Any) -> None:
        if self.job.is_writer:
            write_store(self.path, arrays, {**self.attrs, **attrs}, self.root)
            self.job.index.add(self.item.id, store_files(self.path), self.attrs["digest"], **attrs)

    def write_sidecar(self, files: list[Path], **attrs: Any) -> None:
        """Complete an MP4 output: the JSON beside it, written last."""
        if self.job.is_writer:
            sidecar = self.job.layout.sidecar(self.stage, self.item.id, self.job.provenance.tag(self.stage))
            write_sidecar(sidecar, {**self.attrs, **attrs}, files, self.root)
            self.job.index.add(self.item.id, [*files, sidecar], self.attrs["digest"], **attrs)


class Job:
    def __init__(self, stage: str, snapshot: RunSnapshot, shard: str, layout: Layout, device: torch.device):
        self.stage, self.snapshot, self.shard, self.layout, self.device = stage, snapshot, shard, layout, device
        self.config, self.preset = snapshot.config, snapshot.preset
        self.events = layout.events
        self.provenance = Provenance(snapshot, layout, failure_events(layout.events) if distributed.rank() == 0 else [],
                                     renew=True)
        self.plan = Plan(snapshot, layout, self.provenance)
        self.items = self.plan.shards[stage][shard]
        self.index = ShardIndex(layout, stage, self.provenance.tag(stage), shard)  # saved with the marker
        self.is_writer = distributed.is_writer()
        self.stop_signal: int | None = None
        self.current: Output | None = None
        self.outcomes: dict[str, str] = {}
        self.exit_code = 0
        # The launcher's record of this job (a new one when the script runs by hand) and its start-up, in epochs:
        # launched (Snakemake ran the job), process (this script), imported, ready (set up), loading (the model,
        # once the first prompt's inputs are read), loaded, first_step.
        self.in_flight = inflight.read_job(inflight.record_path(layout, stage, shard)) or inflight.JobRecord(
            stage, shard, os.getpid(), os.getpgid(0), socket.gethostname(), inflight.process_start(os.getpid()))
        self.startup: dict[str, float] = {"launched": self.in_flight.started,
                                          "process": inflight.process_start(os.getpid())}
        self.in_flight.script = self.in_flight.script or (os.getpid(), self.startup["process"])
        self._computed = 0

    @classmethod
    def start(cls, stage: str, argv: list[str] | None = None) -> Job:
        """Parse `SNAPSHOT SHARD`, set up logging, signals and the process group; the working directory is OUT."""
        parser = argparse.ArgumentParser(prog=f"stages/{stage}.py", description=f"The {stage} stage of a run.")
        parser.add_argument("snapshot", type=Path, help="a run snapshot: OUT/.pixelwizard/runs/<digest>.json")
        parser.add_argument("shard", help="which shard of the stage's items, e.g. 00003")
        args = parser.parse_args(argv)
        imported = time.time()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if STAGES[stage].expandable_segments:
            log.info("CUDA caching allocator: %s", use_expandable_segments())
        if "LOCAL_RANK" in os.environ:
            die_with_parent()
        snapshot = RunSnapshot.load(args.snapshot)
        layout = Layout(Path("."))
        device = distributed.init_from_env(steps.pick_device(snapshot.config.device))
        job = cls(stage, snapshot, args.shard, layout, device)
        job.startup["imported"] = imported
        for signum in STOP_SIGNALS:
            signal.signal(signum, job._on_signal)
        job.note(prompts=[item.id for item in job.items], doing="reading its inputs", startup=job.startup)
        if job.is_writer and STAGES[stage].output == "zarr":
            removed = remove_stale_temps(job.provenance.output(stage, job.items[0].id).parent, layout.out)
            if removed:
                log.info("removed %d temporary store(s) left by killed writers", removed)
        job.startup["ready"] = time.time()
        return job

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is not None:  # already stopping (Ctrl-C reaches a job twice: terminal and launcher)
            return
        self.stop_signal = signum
        log.warning("%s: stopping after the current step", signal.Signals(signum).name)
        if self.current is None or not self.current.stepping:
            raise Stopped(signum)

    def stop_requested(self) -> bool:
        """Whether any rank was asked to stop (every rank agrees, so none is left waiting in a collective)."""
        if distributed.world_size() == 1:
            return self.stop_signal is not None
        flag = torch.tensor([float(self.stop_signal or 0)], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() and self.stop_signal is None:
            self.stop_signal = int(flag.item())
        return bool(flag.item())

    def lazy(self, load: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[], T]:
        """`load(*args, **kwargs)` on first use, once: later prompts reuse the model, or fail at once with the
        same error instead of reading a broken file again."""
        outcome: list[Any] = []

        def get() -> T:
            if not outcome:
                doing = self.in_flight.doing
                self.startup.setdefault("loading", time.time())
                self.doing(f"loading {'+'.join(STAGES[self.stage].checkpoints)}")
                try:
                    outcome.append((True, load(*args, **kwargs)))
                except Exception as err:
                    outcome.append((False, err))
                self.startup["loaded"] = time.time()
                self.doing(doing)
            ok, value = outcome[0]
            if not ok:
                raise value
            return value

        return get

    def event(self, item_id: str, action: str, **fields: Any) -> None:
        if self.is_writer:
            append_event(self.events, root=self.layout.out, stage=self.stage, id=item_id, shard=self.shard,
                         digest=self.provenance.digest(self.stage, item_id), action=action, **fields)

    def note(self, **fields: Any) -> None:
        """Update the job's record in OUT (rank 0)."""
        for name, value in fields.items():
            setattr(self.in_flight, name, value)
        if self.is_writer:
            inflight.write_job(self.layout, self.in_flight)

    def doing(self, what: str) -> None:
        self.note(doing=what)

    def pending(self) -> Iterator[Prompt]:
        """The shard's items that are not current and whose inputs are: rank 0 decides, every rank follows.
        Items that failed before come last, so one that fails every time does not hold up the others."""
        ids = distributed.from_rank0(self._decide)
        by_id = {item.id: item for item in self.items}
        for item_id in ids:
            if self.stop_requested():
                return
            yield by_id[item_id]

    def _decide(self) -> list[str]:
        todo, retry = [], []
        for item in self.items:
            state = self.provenance.state(self.stage, item.id)
            waiting = [f"{up} {self.provenance.state(up, up_id).state}"
                       for up, up_id in self.provenance.inputs(self.stage, item.id).items()
                       if not self.provenance.state(up, up_id).done]
            if state.state == DONE:
                self.event(item.id, "skipped")
                self.outcomes[item.id] = "skipped"
                self._index_done(item.id)
            elif waiting:
                self.event(item.id, "blocked", error=f"input not ready: {', '.join(waiting)}")
                self.outcomes[item.id] = "blocked"
            else:
                if state.state == CORRUPT:
                    self.event(item.id, "corrupt", error=state.reasons[0])
                (retry if state.state == FAILED else todo).append(item.id)
        return todo + retry

    def _index_done(self, item_id: str) -> None:
        """Keep a current output of an earlier job in this job's index (with what its entry there said)."""
        if not self.is_writer:
            return
        attrs = self.provenance.recorded(self.stage, item_id) or {}
        path = self.provenance.output(self.stage, item_id)
        if isinstance(attrs.get("files"), list):  # from an earlier job's index: its files and extras
            files = [self.index.folder / name for name in attrs["files"]]
        elif STAGES[self.stage].output == "zarr":
            files = store_files(path)
        else:  # read from its JSON, which lists its media files
            files = [path.parent / name for name in attrs.get("files", {})]
            files.append(self.layout.sidecar(self.stage, item_id, self.provenance.tag(self.stage)))
        extras = {k: v for k, v in attrs.items() if k not in ("digest", "files", "provenance", "version", "complete",
                                                              "format_version")}
        self.index.add(item_id, files, attrs.get("digest", ""), **extras)

    @contextmanager
    def record(self, item: Prompt) -> Iterator[Output]:
        """Around one prompt's computation: events, timing, failure isolation. A failure is recorded (its first line
        in the event log, the traceback in the job's log) and the loop goes on with the next prompt; with several
        processes, where the others may be waiting in a collective, the job ends instead."""
        out = Output(self, item)
        self.current = out
        start = time.perf_counter()
        self.event(item.id, "started")
        self.note(item=item.id, digest=self.provenance.digest(self.stage, item.id),
                  doing=f"{STAGES[self.stage].verb} {item.id}")
        try:
            yield out
        except Stopped as stop:
            self.event(item.id, "interrupted", error=str(stop))
            self.outcomes[item.id] = "interrupted"
            raise
        except Exception as err:
            log.error("%s %s failed:\n%s", self.stage, item.id, traceback.format_exc())
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            append_event(self.events, root=self.layout.out, stage=self.stage, id=item.id, shard=self.shard,
                         digest=self.provenance.digest(self.stage, item.id), action="failed", error=message)
            self.outcomes[item.id] = "failed"
            self.note(item=None, digest=None)  # recorded: the launcher must not record it again
            if distributed.world_size() > 1:
                logging.shutdown()
                os._exit(1)  # torchrun then ends the other ranks at once
        else:
            seconds = round(time.perf_counter() - start, 3)
            startup = {"startup": {k: round(v, 3) for k, v in self.startup.items()}} if not self._computed else {}
            self.event(item.id, "computed", seconds=seconds, **startup)
            self.index.update(item.id, seconds=seconds, time=round(time.time(), 3))
            self._computed += 1
            self.outcomes[item.id] = "computed"
            log.info("%s %s computed in %.1f s", self.stage, item.id, seconds)
        finally:
            self.current = None
            self.note(item=None, digest=None, doing=f"{STAGES[self.stage].verb} done: {len(self.outcomes)} of "
                                                    f"{len(self.items)}")

    def preset_for(self, item: Prompt) -> Preset:
        """The preset as this prompt's clip runs it (its frames, its orientation)."""
        return self.snapshot.preset_for(item)

    def source_file(self, item: Prompt) -> Path:
        """The prompt's source file, checked to hold the content the run was planned with."""
        path, expected = Path(item.source_file), self.snapshot.sources[item.id]["sha256"]
        if content_digest(path, DigestCache(self.layout.digests, persist=False)) != expected:
            raise RuntimeError(f"{path} changed since the run started; run again")
        return path

    def read(self, stage: str, item: Prompt, name: str) -> torch.Tensor:
        """Array `name` of the output of upstream `stage` that this job's `item` reads, checked against the digest
        this run expects; read on rank 0 and broadcast to the others as a tensor."""
        up_id = self.provenance.inputs(self.stage, item.id)[stage]

        def load() -> torch.Tensor:
            path = self.provenance.output(stage, up_id)
            tensors, attrs = read_store(path, [name])
            if attrs.get("digest") != self.provenance.digest(stage, up_id):
                raise RuntimeError(f"{path} changed while this job ran; run again")
            return tensors[name]

        return distributed.broadcast_tensor(load, self.device)

    def __enter__(self) -> Job:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        """A loop that ran through leaves the shard's marker (exit code 0, whatever single prompts did); a stop
        leaves no marker (exit code 128 + the signal number); a crash propagates."""
        if isinstance(exc, Stopped):
            log.warning("%s shard %s %s", self.stage, self.shard, exc)
            self.exit_code = 128 + exc.signum
            return True
        if exc is None and self.is_writer:
            marker = self.plan.marker(self.stage, self.shard)
            for old in marker.parent.glob(f"{self.shard}-*.json"):
                remove_output(old, self.layout.out)
            self.index.save()
            write_atomic(marker, json.dumps({"stage": self.stage, "shard": self.shard, "outcomes": self.outcomes}),
                         self.layout.out)
        distributed.shutdown()
        return False
