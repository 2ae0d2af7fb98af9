"""`pixelwizard`: generate 2K/4K videos from prompt files, re-decode saved latents, check a batch's status."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from pixelwizard.checkpoints.strict import CheckpointError
from pixelwizard.pipeline.plan import RUN_CONFIG, Plan, decode_tag
from pixelwizard.pipeline.presets import PRESETS
from pixelwizard.pipeline.prompts import PromptFileError, read_prompts
from pixelwizard.pipeline.run_config import RunConfig, RunConfigError
from pixelwizard.pipeline.runner import REPO, RunBusyError, run_workflow

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
USER_ERRORS = (RunConfigError, PromptFileError, CheckpointError, RunBusyError, FileNotFoundError, ValueError)
DEMO_PROMPTS = REPO / "prompts" / "demo.txt"


def fail(err: Exception, verbose: bool) -> None:
    """Users get one line naming the problem and the fix; tracebacks are for --verbose."""
    if verbose:
        console.print_exception()
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(2)


def parse_sets(pairs: list[str]) -> dict:
    """`--set key=value` pairs; values are YAML (numbers, booleans, strings)."""
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RunConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY a preset setting")
        settings[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return settings


def decode_settings(num_patches, patch_dim, overlap, fps) -> dict:
    return {"num_patches": num_patches, "patch_dim": patch_dim, "overlap": overlap, "fps": fps}


@app.command()
def generate(
    prompts: Path = typer.Argument(..., help="Prompt file: .txt (one per line) or .jsonl (id, text)"),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (resumable: run again to continue)"),
    ckpt_dir: Path = typer.Option(..., help="Wan2.2-TI2V-5B checkpoint directory"),
    hr_ckpt: Path = typer.Option(..., help="PixelWizard HR model.pt (2k/ or 4k/)"),
    lr_ckpt: Optional[Path] = typer.Option(None, help="Fine-tuned LR model.pt (default: the base DiT)"),
    preset: str = typer.Option("2k", help=f"One of {', '.join(PRESETS)}"),
    profile: str = typer.Option("local", help="Snakemake profile under profiles/ (local, slurm)"),
    cores: int = typer.Option(1, help="Local cores for Snakemake"),
    jobs: Optional[int] = typer.Option(None, help="Concurrent jobs (cluster profiles)"),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Show what would run"),
    until: Optional[str] = typer.Option(None, help="Stop after a stage: 'lr' = text + LR anchors + previews"),
    shard_size: int = typer.Option(8, help="Prompts per stage job (models load once per job)"),
    device: str = typer.Option("auto", help="auto, cuda or cpu"),
    dtype: str = typer.Option("bfloat16", help="DiT weights on GPU: bfloat16 or float32"),
    lr_preview: bool = typer.Option(True, help="Write a 448x256 MP4 preview of each LR anchor"),
    hr_gpus: int = typer.Option(1, help="GPUs (torchrun processes) per HR job: Ulysses + FSDP when > 1"),
    decode_gpus: int = typer.Option(1, help="GPUs (torchrun processes) per decode job: patches spread over them"),
    seed: Optional[int] = typer.Option(None, help="Base seed (per-prompt seeds derive from it and the id)"),
    frames: Optional[int] = typer.Option(None, help="Frames, 4n+1"),
    fps: Optional[int] = typer.Option(None),
    lr_steps: Optional[int] = typer.Option(None),
    lr_shift: Optional[float] = typer.Option(None),
    lr_guidance: Optional[float] = typer.Option(None),
    hr_steps: Optional[int] = typer.Option(None),
    hr_shift: Optional[float] = typer.Option(None),
    hr_guidance: Optional[float] = typer.Option(None),
    hr_solver: Optional[str] = typer.Option(None, help="unipc, dpm++ or euler"),
    negative_prompt: Optional[str] = typer.Option(None),
    num_patches: Optional[int] = typer.Option(None, help="Decode patches"),
    patch_dim: Optional[str] = typer.Option(None, help="Split decode patches along w or h"),
    overlap: Optional[int] = typer.Option(None, help="Decode patch overlap, latent units (16 px)"),
    set_: list[str] = typer.Option([], "--set", help="Any other preset setting, KEY=VALUE (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Generate videos for every prompt in PROMPTS into OUT (text -> LR -> HR -> decode)."""
    try:
        settings = {
            "seed": seed, "frames": frames, "lr_steps": lr_steps, "lr_shift": lr_shift, "lr_guidance": lr_guidance,
            "hr_steps": hr_steps, "hr_shift": hr_shift, "hr_guidance": hr_guidance, "hr_solver": hr_solver,
            "negative_prompt": negative_prompt, **decode_settings(num_patches, patch_dim, overlap, fps),
            **parse_sets(set_),
        }
        run = RunConfig(
            prompts=str(prompts.resolve()), out=str(out.resolve()), ckpt_dir=str(ckpt_dir.resolve()),
            hr_ckpt=str(hr_ckpt.resolve()), lr_ckpt=str(lr_ckpt.resolve()) if lr_ckpt else None, preset=preset,
            settings={k: v for k, v in settings.items() if v is not None}, shard_size=shard_size,
            lr_preview=lr_preview, device=device, dtype=dtype, hr_gpus=hr_gpus,
            decode_gpus=decode_gpus,
        )
    except USER_ERRORS as err:
        fail(err, verbose)
    launch(run, profile=profile, cores=cores, jobs=jobs, dry_run=dry_run, until=until, quiet=quiet, verbose=verbose)


STOP_AFTER = {"lr": ("lr", "lr_preview")}  # --until: the stages whose shard markers become the targets


def launch(run: RunConfig, *, profile: str, cores: int, jobs: int | None, dry_run: bool, until: str | None,
           quiet: bool, verbose: bool) -> None:
    """Check the inputs, record the run configuration in OUT and drive the workflow; exits with its code."""
    out = Path(run.out)
    try:
        if until is not None and until not in STOP_AFTER:
            raise RunConfigError(f"--until {until!r}: choose one of {', '.join(STOP_AFTER)}")
        check_inputs(run)
        out.mkdir(parents=True, exist_ok=True)
        run.save(out / RUN_CONFIG)
        targets = []
        if until is not None:
            plan = Plan.from_run(run)
            stages = [s for s in STOP_AFTER[until] if s != "lr_preview" or run.lr_preview]
            targets = [marker for stage in stages for marker in plan.markers(stage)]
        code = run_workflow(out, profile=profile, cores=cores, jobs=jobs, dry_run=dry_run, targets=targets,
                            quiet=quiet)
    except USER_ERRORS as err:
        fail(err, verbose)
    if code == 0 and not dry_run:
        console.print(f"[green]done:[/] {out}  (pixelwizard status {out})")
    raise typer.Exit(code)


def check_inputs(run: RunConfig) -> None:
    """Everything that can be checked in a second, checked before hours of sampling."""
    from pixelwizard.checkpoints.wan import check_checkpoint_dir

    read_prompts(Path(run.prompts))
    check_checkpoint_dir(Path(run.ckpt_dir))
    for name in ("hr_ckpt", "lr_ckpt"):
        path = getattr(run, name)
        if path is not None and not Path(path).is_file():
            raise CheckpointError(f"{path}: --{name.replace('_', '-')} file not found")


@app.command()
def decode(
    out: Path = typer.Argument(..., help="Output directory of a generate run"),
    num_patches: Optional[int] = typer.Option(None),
    patch_dim: Optional[str] = typer.Option(None),
    overlap: Optional[int] = typer.Option(None),
    fps: Optional[int] = typer.Option(None),
    cores: int = typer.Option(1),
    profile: str = typer.Option("local"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Re-decode saved HR latents with other patch settings; the videos go beside the old ones."""
    try:
        out = out.resolve()
        run = RunConfig.load(out / RUN_CONFIG)
        changes = {k: v for k, v in decode_settings(num_patches, patch_dim, overlap, fps).items() if v is not None}
        run = RunConfig.from_mapping({**run.to_mapping(), "settings": {**run.settings, **changes}})
        run.save(out / RUN_CONFIG)
        plan = Plan.from_run(run)
        marker = f"decode-{decode_tag(run.resolved_preset())}"
        targets = plan.markers(marker)
        code = run_workflow(out, profile=profile, cores=cores, targets=targets, allowed_rules=["decode"])
    except USER_ERRORS as err:
        fail(err, verbose)
    raise typer.Exit(code)


@app.command()
def status(out: Path = typer.Argument(..., help="Output directory of a generate run"),
           verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Per stage: done / missing / failed prompts, and the ids that failed."""
    from pixelwizard.pipeline.status import stage_status

    try:
        run = RunConfig.load(out.resolve() / RUN_CONFIG)
        rows = stage_status(run)
    except USER_ERRORS as err:
        fail(err, verbose)
    table = Table(title=f"{out}  ({run.preset}, {sum(len(s) for s in Plan.from_run(run).shards.values())} prompts)")
    for column in ("stage", "done", "missing", "failed", "failed ids"):
        table.add_column(column)
    for row in rows:
        ids = ", ".join(row.failed_ids[:10]) + (" ..." if len(row.failed_ids) > 10 else "")
        table.add_row(row.stage, str(row.done), str(row.missing), str(len(row.failed_ids)), ids)
    Console().print(table)


@app.command("make-tiny-weights")
def make_tiny_weights(directory: Path = typer.Argument(..., help="Where to write the tiny checkpoints"),
                      seed: int = typer.Option(0)) -> None:
    """Tiny random-weight checkpoints in the real layouts (Wan2.2 directory, PixelWizard lr/ and tiny/ model.pt)."""
    from pixelwizard.checkpoints.tiny import write_tiny_weights

    paths = write_tiny_weights(directory, seed=seed)
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), "--out", "-o"), cores: int = typer.Option(2),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """The whole pipeline on tiny random weights (CPU, a few minutes): MP4s and contact sheets in OUT/videos."""
    from pixelwizard.checkpoints.tiny import write_tiny_weights

    out = out.resolve()
    paths = write_tiny_weights(out / "weights", seed=0)
    run = RunConfig(prompts=str(DEMO_PROMPTS), out=str(out), preset="tiny", shard_size=2,
                    **{k: str(v) for k, v in paths.items()})
    launch(run, profile="local", cores=cores, jobs=None, dry_run=False, until=None, quiet=False, verbose=verbose)


if __name__ == "__main__":
    app()
