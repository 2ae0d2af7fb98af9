"""`pixelwizard`: generate 2K/4K videos from prompts, re-decode saved latents, see a batch's state and report.

Every module imported here is free of torch, so `--help` and every argument or configuration error answer at once
(tests/test_startup.py checks it in a fresh process); what needs torch (the up-front checks, the tiny weights) is
imported inside the command that uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import shutil
import signal
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from pixelwizard.checkpoints.errors import CheckpointError
from pixelwizard.checkpoints.identity import CHUNK_BYTES, DigestCache
from pixelwizard.io.files import remove_output
from pixelwizard.io.input_file import LATENT_SUFFIXES
from pixelwizard.models.config import ConfigError
from pixelwizard.pipeline import inflight, runner, status
from pixelwizard.pipeline.gpu_lease import visible_gpus
from pixelwizard.pipeline.layout import ONLY, PROMPTS, Layout
from pixelwizard.pipeline.live import LiveView
from pixelwizard.pipeline.parallel import beside
from pixelwizard.pipeline.plan import Plan, collect_garbage_rarely
from pixelwizard.pipeline.presets import PRESETS, PresetError, parse_setting, setting_help, setting_type
from pixelwizard.pipeline.prompts import read_ids, read_prompts, single_prompt, source_prompts
from pixelwizard.pipeline.report import write_report
from pixelwizard.pipeline.run_config import RunConfig, RunConfigError, defaults, option_help
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES, lineage

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True, soft_wrap=True)  # one line stays one line in logs and pipes
USER_ERRORS = (RunConfigError, PresetError, CheckpointError, ConfigError, inflight.RunBusyError, FileNotFoundError,
               ValueError)  # ValueError: the prompt files' and settings' errors, OutputPathError


def config_option(name: str, *flags: str) -> typer.models.OptionInfo:
    """An option whose default and help come from the run configuration's schema."""
    return typer.Option(defaults()[name], *flags, help=option_help(name))


def setting_option(name: str) -> typer.models.OptionInfo:
    """An option overriding one preset setting; its help comes from the preset's schema."""
    values = {p: getattr(preset, name) for p, preset in PRESETS.items() if p != "tiny"}
    shown = ", ".join(f"{p}: {v}" for p, v in values.items()) if all(len(str(v)) < 16 for v in values.values()) else ""
    return typer.Option(None, help=setting_help(name) + (f" (preset {shown})" if shown else ""), show_default=False)


OUT = typer.Option(..., "--out", "-o", help="Output directory (resumable: run the same command again to go on)")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Snakemake's own output and full tracebacks")
QUIET = typer.Option(False, "--quiet", "-q", help="One line per finished prompt instead of the live view")
NUM_PATCHES, PATCH_DIM, OVERLAP, FPS = (setting_option(n) for n in ("num_patches", "patch_dim", "overlap", "fps"))


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a command that runs stage jobs runs them."""

    profile: str = "local"
    cores: Optional[int] = None
    jobs: Optional[int] = None
    dry_run: bool = False
    verbose: bool = False
    quiet: bool = False


RUN_OPTIONS = {
    "profile": (str, typer.Option("local", help="Snakemake profile: local (this machine) or slurm")),
    "cores": (Optional[int], typer.Option(None, help="Jobs at once on this machine (default: one per visible GPU, "
                                                     "at least 1)", show_default=False)),
    "jobs": (Optional[int], typer.Option(None, help="Jobs submitted at once (cluster profiles)", show_default=False)),
    "dry_run": (bool, typer.Option(False, "--dry-run", "-n", help="Show what would run; change nothing")),
    "verbose": (bool, VERBOSE),
    "quiet": (bool, QUIET),
}


def with_options(name: str, options: dict[str, tuple[Any, typer.models.OptionInfo]],
                 pack: Callable[..., Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the options of `options`, passed to it as one argument `name`: `pack(**their values)`; a
    value `pack` refuses is one line, as in the command (`run`, the run options, packed first, says how verbose)."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command)
        extra = [inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind)
                 for option, (kind, info) in options.items()]

        @functools.wraps(command)
        def wrapper(**values: object) -> None:
            try:
                packed = pack(**{option: values.pop(option) for option in options})
            except USER_ERRORS as err:
                fail(err, getattr(values.get("run"), "verbose", False))
            command(**values, **{name: packed})

        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
               if p.name != name]
        wrapper.__signature__ = signature.replace(parameters=[*own, *extra])
        wrapper.__annotations__ = {}
        return wrapper

    return decorate


with_run_options = with_options("run", RUN_OPTIONS, RunOptions)

# The run configuration of a command that starts a run (generate, upscale), as RunConfig keyword arguments.
SETUP_OPTIONS = {
    "ckpt_dir": (Path, typer.Option(..., help=option_help("ckpt_dir"))),
    "hr_ckpt": (Path, typer.Option(..., help=option_help("hr_ckpt"))),
    "preset": (str, config_option("preset")),
    "shard_size": (list[str], typer.Option([], help="Prompts per job: N for every stage, or STAGE=N (repeatable)")),
    **{name: (type(defaults()[name]), config_option(name))
       for name in ("previews", "device", "dtype", "attention", "offload", "hr_gpus", "decode_gpus")},
}
# The preset settings that every run's HR shortcut and decode take, as overrides (None: the preset's).
HR_SETTINGS = ("seed", "frames", "hr_steps", "hr_shift", "hr_guidance", "hr_solver", "negative_prompt", "num_patches",
               "patch_dim", "overlap")
SETTING_OPTIONS = {
    **{name: (Optional[setting_type(name)], setting_option(name)) for name in HR_SETTINGS},
    "set_": (list[str], typer.Option([], "--set", help="Any other preset setting, KEY=VALUE (repeatable)")),
}


def setup(ckpt_dir: Path, hr_ckpt: Path, shard_size: list[str], **values: Any) -> dict[str, Any]:
    return dict(ckpt_dir=str(ckpt_dir.resolve()), hr_ckpt=str(hr_ckpt.resolve()),
                shard_sizes=parse_shard_sizes(shard_size), **values)


def settings(set_: list[str], **values: Any) -> dict[str, Any]:
    """The overrides given (`--set KEY=VALUE` pairs converted to their settings' types)."""
    return {**{k: v for k, v in values.items() if v is not None}, **parse_sets(set_)}


def counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def fail(err: BaseException, verbose: bool) -> None:
    """Users get one line naming the problem and the fix; tracebacks are for --verbose."""
    if verbose:
        console.print_exception()
    console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
    raise typer.Exit(2)


def parse_sets(pairs: list[str]) -> dict:
    """`--set KEY=VALUE` pairs, each converted to its setting's type."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PresetError(f"--set {pair!r}: expected KEY=VALUE with KEY a preset setting")
        key = key.strip().replace("-", "_")
        settings[key] = parse_setting(key, value.strip())
    return settings


def parse_shard_sizes(values: list[str]) -> dict[str, int]:
    """`--shard-size N` (every stage) or `--shard-size STAGE=N`, repeatable."""
    sizes: dict[str, int] = {}
    for value in values:
        stage, sep, number = value.rpartition("=")
        names = [stage] if sep else list(STAGES)
        if sep and stage not in STAGES:
            raise RunConfigError(f"--shard-size {value}: unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        if not number.isdigit() or int(number) < 1:
            raise RunConfigError(f"--shard-size {value}: give a whole number >= 1, or STAGE=N")
        sizes.update(dict.fromkeys(names, int(number)))
    return sizes


@app.command()
@with_run_options
@with_options("settings", SETTING_OPTIONS, settings)
@with_options("setup", SETUP_OPTIONS, setup)
def generate(
    prompts: Optional[Path] = typer.Argument(None, help=option_help("prompts"), show_default=False),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="One prompt's text instead of a prompt file"),
    image: Optional[Path] = typer.Option(None, "--image", help="With --prompt: the video's first frame (image to "
                                         "video; a portrait image makes a portrait video)", show_default=False),
    out: Path = OUT,
    lr_ckpt: Optional[Path] = config_option("lr_ckpt"),
    only: Optional[Path] = config_option("only"),
    until: Optional[str] = config_option("until"),
    lr_steps: Optional[int] = setting_option("lr_steps"),
    lr_shift: Optional[float] = setting_option("lr_shift"),
    lr_guidance: Optional[float] = setting_option("lr_guidance"),
    fps: Optional[int] = FPS,
    *,
    setup: dict,
    settings: dict,
    run: RunOptions,
) -> None:
    """Generate a video for every prompt (text -> LR anchor -> HR shortcut -> decode) into OUT."""
    try:
        if image is not None and prompt is None:
            raise RunConfigError("--image needs --prompt TEXT: what the video shows (a prompt file names its images "
                                 "in its \"image\" fields)")
        if (prompts is None) == (prompt is None):
            raise RunConfigError("give a prompt file or --prompt TEXT (one of them)")
        items = single_prompt(prompt, image) if prompt is not None else read_prompts(prompts)
        chosen = read_ids(only, items) if only is not None else None
        overrides = {k: v for k, v in dict(lr_steps=lr_steps, lr_shift=lr_shift, lr_guidance=lr_guidance,
                                           fps=fps).items() if v is not None}
        config = RunConfig(prompts=PROMPTS, only=ONLY if chosen is not None else None,
                           lr_ckpt=str(lr_ckpt.resolve()) if lr_ckpt else None, until=until,
                           settings={**overrides, **settings}, **setup)
    except USER_ERRORS as err:
        fail(err, run.verbose)
    raise typer.Exit(execute("generate", out.resolve(), config, items, chosen, run, record=True))


@app.command()
@with_run_options
@with_options("settings", SETTING_OPTIONS, settings)
@with_options("setup", SETUP_OPTIONS, setup)
def upscale(
    videos: list[Path] = typer.Argument(..., help="Videos (any container PyAV reads), or saved anchor latents "
                                        f"({', '.join(LATENT_SUFFIXES)})", show_default=False),
    out: Path = OUT,
    prompt: Optional[str] = typer.Option(None, "--prompt", help="What the videos show (default: the empty prompt)"),
    start: Optional[float] = typer.Option(None, help="Seconds into each video where its clip starts (default: its "
                                          "first frame)", show_default=False),
    fps: Optional[int] = typer.Option(None, help="Take each video at this rate (default: its own)",
                                      show_default=False),
    *,
    setup: dict,
    settings: dict,
    run: RunOptions,
) -> None:
    """Upscale videos to the preset's size: each clip (at most --frames frames, 4n+1) is fitted to the LR anchor and
    VAE-encoded, then the HR shortcut and the patched decode run on it, into OUT; a saved anchor latent skips the
    encoding. A portrait video takes the preset turned (2k: 1440x2560)."""
    try:
        items = source_prompts(videos, prompt or "", start=start, fps=fps)
        config = RunConfig(prompts=PROMPTS, settings=settings, **setup)
    except USER_ERRORS as err:
        fail(err, run.verbose)
    raise typer.Exit(execute("upscale", out.resolve(), config, items, None, run, record=True))


@app.command()
@with_run_options
def decode(
    out: Path = typer.Argument(..., help="Output directory of a generate run"),
    num_patches: Optional[int] = NUM_PATCHES,
    patch_dim: Optional[str] = PATCH_DIM,
    overlap: Optional[int] = OVERLAP,
    fps: Optional[int] = FPS,
    decode_gpus: Optional[int] = typer.Option(None, help=option_help("decode_gpus"), show_default=False),
    *,
    run: RunOptions,
) -> None:
    """Decode OUT's HR latents again with other patch settings; the videos go beside the old ones
    (OUT/decode/<tag>/), and nothing else of the run changes."""
    out = out.resolve()
    try:
        config = status.recorded_config(out)
        config = config.with_settings(num_patches=num_patches, patch_dim=patch_dim, overlap=overlap, fps=fps)
        config = dataclasses.replace(config, until=None)  # the run's own stop does not hold back a re-decode
        if decode_gpus is not None:
            config = dataclasses.replace(config, decode_gpus=decode_gpus)
        items = read_prompts(out / config.prompts)
        chosen = read_ids(out / config.only, items) if config.only else None
    except USER_ERRORS as err:
        fail(err, run.verbose)
    raise typer.Exit(execute("decode", out, config, items, chosen, run, record=False, stages=["decode"]))


def execute(command: str, out: Path, config: RunConfig, items: list, chosen: tuple[str, ...] | None,
            run: RunOptions, *, record: bool, stages: list[str] | None = None) -> int:
    """Check everything up front, take OUT's lock, record the run, plan it and run it; returns the exit code.
    `record`: the run becomes OUT's configuration (generate); `stages`: only these stages run (decode). Nothing in
    OUT changes before the lock is held, and nothing at all in a dry run or a refused one."""
    from pixelwizard.pipeline import checks, sources

    layout = Layout(out)
    waiting = console.status("checking the checkpoints and settings, planning the run")  # on a terminal: not frozen
    try:
        checks.check_out(out)
        # The checkpoint check imports torch and transformers (seconds): it runs beside the plan.
        with beside(checks.check_checkpoints, config) as checkpoints_checked:
            if console.is_terminal and not run.quiet:
                waiting.start()
            try:
                gpus = len(visible_gpus())
                checks.check_kernels(config, gpus)
                cache = DigestCache(layout.digests, persist=False, root=out)  # written once OUT's lock is held
                snapshot = RunSnapshot.build(config, items, chosen, cache, on_progress=announce_hashing)
                for line in sources.notes(items, snapshot.sources, snapshot.preset):
                    console.print(f"note: {line}", highlight=False)
                checks.check_parallelism(snapshot, gpus)
                checks.check_patches(config)
                plan = Plan(snapshot, layout)
                wanted = [s for s in plan.final_stages() if s in plan.shards and (stages is None or s in stages)]
                shown = wanted if stages is not None else [s for s in STAGES if s in _with_lineage(wanted)]
                plan.provenance.compute_digests(shown, os.cpu_count())
                checks.check_paths(plan, shown, record)
                rows = status.collect(snapshot, layout, shown, processes=os.cpu_count())
                targets = plan.targets() if stages is None else ready_markers(plan, wanted)  # a dry run refuses alike
            except USER_ERRORS:
                checkpoints_checked()  # a checkpoint's problem first: it explains what failed after it
                raise
            checkpoints_checked()
        if run.dry_run:
            return dry_run_report(plan, rows, run.verbose)
        checks.check_disk(plan, out, [p for row in rows for p in row.todo])
        with inflight.run_lock(layout, f"pixelwizard {command}") as lock:
            cache.save()
            if record:
                snapshot.record(layout)
            snapshot_path = snapshot.save(layout).relative_to(out)
            before = prepare(plan, shown, stages)
            snakemake = runner.snakemake_command(layout, snapshot_path, targets, profile=run.profile,
                                                 cores=run.cores or max(1, gpus), jobs=run.jobs,
                                                 allowed_rules=stages or ())
            start = time.monotonic()
            waiting.stop()
            with LiveView(layout, before, console, title=f"pixelwizard {command} {out}", quiet=run.quiet) as view:
                outcome = runner.run_snakemake(layout, snakemake, lock, verbose=run.verbose, on_tick=view.tick)
    except USER_ERRORS as err:
        fail(err, run.verbose)
    finally:
        waiting.stop()
    return summary(snapshot, layout, shown, outcome, time.monotonic() - start)


def announce_hashing(path: Path, done: int, size: int) -> None:
    """A line when a big checkpoint file starts being hashed (once; its digest is cached in OUT)."""
    if done <= CHUNK_BYTES and size > 2**30:
        console.print(f"hashing {path} ({size / 1e9:.1f} GB; once, the digest is kept in OUT)", highlight=False,
                      markup=False)


def ready_markers(plan: Plan, stages: list[str]) -> list[Path]:
    """The markers of the shards of `stages` whose inputs are made (`decode` runs no other stage)."""
    ready = [plan.marker(stage, shard) for stage in stages for shard in plan.shards[stage]
             if all(m.exists() for m in plan.input_markers(stage, shard))]
    if not ready:
        raise RunConfigError(f"{plan.layout.out}: no HR latents for these prompts and settings yet; run "
                             "`pixelwizard generate` first")
    return ready


def _with_lineage(stages: list[str]) -> set[str]:
    return {s for stage in stages for s in lineage(stage)}


def prepare(plan: Plan, shown: list[str], stages: list[str] | None) -> list[status.StageStatus]:
    """Every output's state as the run starts (under OUT's lock); the markers of shards holding an output that is
    not done go, so that Snakemake runs those jobs again (a failed, missing, stale or corrupt output)."""
    rows = status.collect(plan.snapshot, plan.layout, shown, processes=os.cpu_count(), renew=True)
    for row in rows:
        if stages is None or row.stage in stages:
            for shard in {plan.shard_of(row.stage, p.id) for p in row.todo}:
                remove_output(plan.marker(row.stage, shard), plan.layout.out)
    return rows


def dry_run_report(plan: Plan, rows: list[status.StageStatus], verbose: bool) -> int:
    try:
        inflight.check_free(plan.layout)
    except inflight.RunBusyError as busy:
        console.print(f"note: {busy}", highlight=False, markup=False)
    status.print_table(console, rows, f"{plan.layout.out} (dry run: nothing was changed)")
    for row in rows:
        shards = {plan.shard_of(row.stage, p.id) for p in row.todo}
        if shards:
            console.print(f"  {row.label}: {counted(len(row.todo), 'output')} to make in "
                          f"{counted(len(shards), 'job')}", highlight=False, markup=False)
    status.print_problems(console, rows, plan.layout.out, verbose)
    return 0


def summary(snapshot: RunSnapshot, layout: Layout, shown: list[str], outcome: runner.Outcome, seconds: float) -> int:
    """The outcome in a line (or the table of what was not made, with why) and the exit code."""
    rows = status.collect(snapshot, layout, shown, processes=os.cpu_count())
    left = sum(len(row.todo) for row in rows)
    if outcome.stop_signal is not None:
        name = signal.Signals(outcome.stop_signal).name
        console.print(f"[yellow]stopped[/] by {name} after {seconds:.0f} s: nothing half-written was kept; "
                      f"{left} outputs still to make; run the same command again to go on", highlight=False)
        return 128 + outcome.stop_signal
    if left == 0 and outcome.code == 0:
        console.print(f"[green]done:[/] {escape(str(layout.out))} in {seconds:.0f} s  (pixelwizard status "
                      f"{escape(str(layout.out))})",
                      highlight=False)
        return 0
    status.print_table(console, rows, f"{layout.out}: not everything was made")
    status.print_problems(console, rows, layout.out)
    for line in advice(rows, layout, outcome):
        console.print(line, highlight=False, markup=False)
    return 1


def advice(rows: list[status.StageStatus], layout: Layout, outcome: runner.Outcome) -> list[str]:
    """What happened to the run as a whole, and what to do first: free space before a retry when the disk filled up,
    memory when a job was killed, otherwise just the retry."""
    lines = []
    if outcome.orphaned:
        names = ", ".join(job.name for job in outcome.orphaned)
        lines.append(f"Snakemake ended ({inflight.how_it_ended(outcome.code)}) while jobs still ran ({names}); they "
                     f"were stopped. Its log: {outcome.log}")
    elif outcome.code != 0:
        lines.append(f"Snakemake stopped with {inflight.how_it_ended(outcome.code)}; its log: {outcome.log}")
    errors = [p.reasons[0] for row in rows for p in row.problems if p.state == "failed" and p.reasons]
    if any("No space left on device" in e for e in errors):
        free = shutil.disk_usage(layout.out).free
        lines.append(f"The disk holding {layout.out} is full ({free / 1e6:,.1f} MB free now): free space there first, "
                     "then run the same command again.")
    elif any("killed by signal 9" in e for e in errors):
        lines.append("A job was killed by SIGKILL (the kernel's OOM killer, or kill -9): if memory ran out, run fewer "
                     "jobs at once (--cores) or give each more room (--offload, --hr-gpus), then run the same command "
                     "again to retry what failed.")
    else:
        lines.append("Run the same command again to retry what failed.")
    return lines


@app.command("status")
def show_status(out: Path = typer.Argument(..., help="Output directory of a generate run"),
                verbose: bool = typer.Option(False, "--verbose", "-v", help="Every id of every reason, and full "
                                             "tracebacks")) -> None:
    """Per stage (and decode setting): done, stale (with what changed), held back by --until or --only, missing,
    blocked, failed (with the error) and corrupt outputs; a line per reason with a few of its ids."""
    out = out.resolve()
    try:
        snapshot = status.last_snapshot(out)
        rows = status.collect(snapshot, Layout(out), every_tag=True, processes=os.cpu_count())
    except USER_ERRORS as err:
        fail(err, verbose)
    title = f"{out}  ({snapshot.config.preset}, {counted(len(snapshot.prompts), 'prompt')})"
    shown = Console(soft_wrap=True)
    status.print_table(shown, rows, title)
    status.print_problems(shown, rows, out, verbose)
    status.print_at_work(shown, Layout(out))


@app.command()
def stop(out: Path = typer.Argument(..., help="Output directory of a run"), verbose: bool = VERBOSE) -> None:
    """Stop the run working in OUT, from another terminal, as Ctrl-C would: every job finishes its current step
    (nothing half-written is kept; a job still running a minute later is killed). Also ends stage jobs that an
    earlier run left working there."""
    out = out.resolve()
    layout = Layout(out)
    if not out.is_dir():
        fail(RunConfigError(f"{out}: no such directory"), verbose)
    if inflight.run_holder(layout) is None and not inflight.live_jobs(layout):
        console.print(f"nothing runs in {out}", highlight=False, markup=False)
        return
    status.print_at_work(console, layout)
    result = inflight.stop(layout)
    ended = [job.name for job in result.jobs if job.pid not in {j.pid for j in result.left}]
    what = ", ".join(filter(None, [result.run and result.run.get("command"), *ended]))
    console.print(f"[yellow]stopped[/] in {result.seconds:.0f} s: {escape(what)}", highlight=False)
    if result.killed:
        console.print(f"killed after {inflight.STOP_GRACE_S:.0f} s: {', '.join(j.name for j in result.killed)}",
                      highlight=False, markup=False)
    if result.left:
        fail(RuntimeError(f"still running: {'; '.join(j.describe() for j in result.left)}; end them where they run"),
             verbose)


@app.command("report")
def show_report(out: Path = typer.Argument(..., help="Output directory of a generate run"),
                verbose: bool = VERBOSE) -> None:
    """Write OUT/report/index.html: every prompt's videos, previews, quality numbers, times and state, the batch's
    counts and throughput, and the preview gate; a static page that opens from the file system."""
    out = out.resolve()
    try:
        page, data = write_report(out, processes=os.cpu_count())
    except USER_ERRORS as err:
        fail(err, verbose)
    except OSError as err:  # a read-only or full file system, OUT/report not a folder
        fail(OSError(f"cannot write {out / 'report'}: {err.strerror} ({err.filename}); make it a writable folder, "
                     "or copy the run somewhere writable and report there"), verbose)
    Console().print(f"report: {page}  ({counted(len(data['prompts']), 'prompt')}, decode settings "
                    f"{', '.join(data['tags'])}); open it in a browser", highlight=False, markup=False, soft_wrap=True)


@app.command("make-tiny-weights")
def make_tiny_weights(directory: Path = typer.Argument(..., help="Where to write the tiny checkpoints"),
                      seed: int = typer.Option(0)) -> None:
    """Tiny random-weight checkpoints in the real layouts (Wan2.2 directory, PixelWizard lr/ and tiny/ model.pt)."""
    from pixelwizard.checkpoints.tiny import write_tiny_weights

    try:
        paths = write_tiny_weights(directory.resolve(), seed=seed)
    except USER_ERRORS as err:
        fail(err, False)
    for name, path in paths.items():
        console.print(f"{name}: {path}", highlight=False, markup=False)


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Output directory"),
         cores: int = typer.Option(2, help="Jobs at once"), verbose: bool = VERBOSE, quiet: bool = QUIET) -> None:
    """The whole pipeline on tiny random weights (CPU: about a minute on 2 cores): videos in OUT/decode/, the weights in
    OUT/weights/ (use them with `generate --preset tiny`)."""
    from pixelwizard.checkpoints.tiny import write_tiny_weights
    from pixelwizard.pipeline import checks

    out = out.resolve()
    try:
        checks.check_out(out)
        with console.status("writing tiny random weights"):
            paths = write_tiny_weights(out / "weights", seed=0, root=out)
    except USER_ERRORS as err:
        fail(err, verbose)
    items = read_prompts(runner.workflow_files() / "prompts" / "demo.txt")
    config = RunConfig(prompts=PROMPTS, preset="tiny", shard_sizes=dict.fromkeys(STAGES, 2),
                       **{k: str(v) for k, v in paths.items()})
    run = RunOptions(cores=cores, verbose=verbose, quiet=quiet)
    raise typer.Exit(execute("demo", out, config, items, None, run, record=True))


@app.command()
def doctor(out: Path = typer.Option(Path("."), "--out", "-o", help="Where outputs would go: its free disk is shown"),
           as_json: bool = typer.Option(False, "--json", help="The report as JSON")) -> None:
    """What to run first on a new GPU machine: GPUs, driver, torch/CUDA/cuDNN, attention backends, known GPU traps, free
    disk, and per preset the stage that needs most GPU memory and whether it fits."""
    import json

    from pixelwizard import doctor as checkup  # torch and the models: imported only for this command

    data = checkup.report(out)
    Console().print(json.dumps(data, indent=1) if as_json else "\n".join(checkup.render(data)), highlight=False,
                    soft_wrap=True)


def main() -> None:
    collect_garbage_rarely()
    app()


if __name__ == "__main__":
    main()
