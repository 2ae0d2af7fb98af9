"""Everything that can be known before a run starts, checked in seconds before any job is submitted: the output
directory and the paths the run writes, the checkpoints (headers, not tensor data), GPU counts, patch settings and
free disk. Each problem is one line naming the file or setting and the fix.

Only the checkpoint check needs torch and transformers (seconds to import); the CLI runs it in a process beside
the plan (parallel.beside), so this module imports them where they are used.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from pixelwizard.checkpoints import wan_files
from pixelwizard.checkpoints.errors import CheckpointError
from pixelwizard.io.contact_sheet import ContactSheet
from pixelwizard.io.files import check_folder, check_outputs
from pixelwizard.io.patch_geometry import DecodeSettingsError, check_decode_settings
from pixelwizard.pipeline import inflight
from pixelwizard.pipeline.layout import Layout
from pixelwizard.pipeline.plan import Plan
from pixelwizard.pipeline.presets import PRESETS, Preset
from pixelwizard.pipeline.prompts import prompts_jsonl
from pixelwizard.pipeline.provenance import OutputState
from pixelwizard.pipeline.run_config import RunConfig, RunConfigError
from pixelwizard.pipeline.snapshot import RunSnapshot
from pixelwizard.pipeline.stages import STAGES
from pixelwizard.pipeline.stamp_index import ShardIndex

DISK_MARGIN = 1.1
# The disk estimate. H.264 at crf 18 spends fewer bits per pixel as frames grow: 4 at 256x160 covers the tiny
# weights' noise-like videos (3.4-3.8 measured), falling as the fourth root of the pixels (1.3 at 2K, 1.1 at 4K,
# where natural footage takes 0.3-0.5). The rest are measured sizes of what a run writes, rounded up.
VIDEO_BITS_PER_PIXEL, PIXELS_AT_4_BPP = 4.0, 256 * 160
STORE_META, ARRAY_META, CHUNK_OVERHEAD = 3000, 1000, 64  # a store's zarr.json (provenance, stamps), an array's
VIDEO_OVERHEAD, SIDECAR = 4096, 4096  # container headers; a video's JSON with provenance and quality numbers
JOB_LOG, MARKER, EVENT = 4096, 2048, 400
SNAKEMAKE_LOG_PER_JOB, RUN_FILES = 1024, 16384
FOLDERS_PER_STAGE, RUN_FOLDERS = 4, 16  # OUT/<stage>/[<tag>/], OUT/logs/<stage>/, OUT/.done/<stage>/; OUT's own


def check_out(out: Path) -> None:
    """OUT must be a directory this process can write, or creatable as one, on a file system that stores files."""
    if out.exists() and not out.is_dir():
        raise RunConfigError(f"--out {out}: is a file; give a directory (it is created if missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if os.statvfs(existing).f_blocks == 0:  # proc, sysfs: the kernel's state, not storage
        raise RunConfigError(f"--out {out}: {existing} is on a special file system ({_file_system(existing)}) that "
                             "stores no files; choose a directory on a disk")
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunConfigError(f"--out {out}: {existing} is not writable (read-only file system or permissions); "
                             "choose a directory you can write")


def check_paths(plan: Plan, stages: list[str], record: bool) -> None:
    """Nothing the run writes (its record when `record`, the CLI's and Snakemake's files, the folders, markers, logs,
    job records and stamp indexes of `stages`) would land outside OUT through a link or replace what pixelwizard did
    not make (io/files.py). A prompt's own outputs are checked as they are written: one in the way fails that prompt
    alone."""
    layout: Layout = plan.layout
    files = [layout.snapshot(plan.snapshot.digest), layout.digests, layout.run_lock, layout.jobs_lock, layout.events,
             *([layout.prompts, layout.only, layout.config] if record else [])]
    folders = [layout.snakemake_logs, layout.out / ".snakemake"]
    for stage in stages:
        tag = plan.provenance.tag(stage)
        for shard in plan.shards[stage]:
            files += [plan.marker(stage, shard), plan.log(stage, shard), inflight.record_path(layout, stage, shard),
                      *ShardIndex(layout, stage, tag, shard).paths]
        folders.append(layout.folder(stage, tag))
    check_outputs(files, layout.out)
    for folder in folders:
        check_folder(folder, layout.out)


def check_checkpoints(config: RunConfig) -> None:
    """Every checkpoint file present, readable, complete and of the right role and shapes (headers only), and the
    HR checkpoint trained for the size the run makes; every problem at once."""
    from pixelwizard.checkpoints import preflight

    problems = []
    try:
        preflight.check_checkpoints(Path(config.ckpt_dir), lr_ckpt=config.lr_ckpt and Path(config.lr_ckpt),
                                    hr_ckpt=Path(config.hr_ckpt))
    except preflight.CheckpointProblems as err:
        problems += err.problems
    preset = config.resolved_preset()
    model = PRESETS[preset.hr_checkpoint]  # the size the preset's HR model was trained at (portrait, 1080p: 2k's)
    size = f"{model.width}x{model.height}"
    fitting = {(model.width, model.height), (preset.width, preset.height), (preset.height, preset.width)}
    for (width, height), sources in trained_sizes(Path(config.hr_ckpt)).items():
        if (width, height) not in fitting:  # the preset's model, or one trained for the run's own size
            fits = [n for n, p in PRESETS.items() if (p.width, p.height) == (width, height)]
            use = f"use --preset {fits[0]} with this checkpoint, or " if fits else ""
            problems.append(f"{config.hr_ckpt}: trained for {width}x{height} ({'; '.join(sources)}) but preset "
                            f"'{preset.name}' takes the model trained for {size}; {use}give --hr-ckpt that one")
    if problems:
        raise preflight.CheckpointProblems(list(dict.fromkeys(problems)))


def trained_sizes(hr_ckpt: Path) -> dict[tuple[int, int], list[str]]:
    """The size (width, height) the HR checkpoint was trained for -> how that is known: the `resolution` the file
    records (the tiny weights do; the published files do not), and the folder it sits in when that folder is named
    like a preset (2k/, 4k/: how PixelWizard publishes them; tiny/). The HR model itself runs at any size, so this
    is the only way a checkpoint of the wrong size is found before the LR stage has run."""
    from pixelwizard.checkpoints.strict import read_torch_file

    known: dict[tuple[int, int], list[str]] = {}
    try:
        recorded = read_torch_file(hr_ckpt).get("resolution")
    except CheckpointError:  # the checkpoint check says what is wrong with the file
        recorded = None
    if isinstance(recorded, list) and len(recorded) == 2 and all(isinstance(v, int) for v in recorded):
        known.setdefault((recorded[0], recorded[1]), []).append("recorded in the file")
    folder = hr_ckpt.parent.name.lower()
    if folder in PRESETS:
        known.setdefault((PRESETS[folder].width, PRESETS[folder].height), []).append(f"its '{folder}' folder")
    return known


def check_parallelism(snapshot: RunSnapshot, visible_gpus: int) -> None:
    """GPU counts the model and the patches can use, and no more GPUs per job than the machine has."""
    config, preset = snapshot.config, snapshot.preset
    dit = wan_files.read_dit_config(Path(config.ckpt_dir))
    if dit.num_heads % config.hr_gpus:
        valid = ", ".join(str(n) for n in range(1, dit.num_heads + 1) if dit.num_heads % n == 0)
        raise RunConfigError(f"--hr-gpus {config.hr_gpus}: the {dit.num_heads} attention heads are split evenly "
                             f"over the HR job's GPUs; use one of {valid}")
    if config.decode_gpus > preset.num_patches:
        raise RunConfigError(f"--decode-gpus {config.decode_gpus}: more GPUs than decode patches "
                             f"({preset.num_patches}); use at most {preset.num_patches} or more --num-patches")
    for name in ("hr_gpus", "decode_gpus"):
        wanted = getattr(config, name)
        if visible_gpus and wanted > visible_gpus:
            raise RunConfigError(f"--{name.replace('_', '-')} {wanted}: only {visible_gpus} GPUs are visible here")


def check_kernels(config: RunConfig, visible_gpus: int) -> None:
    """The attention kernel asked for is installed (checked where this machine has the GPU the jobs will use), and
    block streaming is for one-process HR jobs."""
    if config.offload and config.hr_gpus > 1:
        raise RunConfigError(f"--offload streams the DiT's blocks to one GPU; with --hr-gpus {config.hr_gpus} the "
                             "weights are already split over the GPUs: use one or the other")
    if config.device != "cpu" and visible_gpus:  # torch is imported where the jobs' GPUs are
        import torch

        from pixelwizard.models.attention import select_backend

        if torch.cuda.is_available():
            select_backend(config.attention, "cuda")


def check_patches(config: RunConfig) -> None:
    """The decode patch settings decode this latent and have their seams measured: the geometry's own check
    (io/patch_geometry.py), the one the decode stage runs before it decodes. A clip that turns the preset (a
    portrait video) keeps its patches along the same latent side, so one check holds for every clip."""
    preset = config.resolved_preset()
    vae = wan_files.vae_config(Path(config.ckpt_dir))
    _, _, height, width = vae.latent_shape(preset.frames, preset.height, preset.width)
    try:
        check_decode_settings(width if preset.patch_dim == "w" else height, preset.num_patches, preset.overlap,
                              vae.space_factor, preset.patch_dim)
    except DecodeSettingsError as err:
        raise RunConfigError(str(err)) from None


def output_files(snapshot: RunSnapshot, stage: str, characters: int, source: str | None) -> list[int]:
    """The sizes of the files one output of `stage` leaves, from the preset's sizes (those of the clip of the video
    or image prompt `source`, where one is given), its folders as files of 0 bytes: a latent as stored (float32, a
    shard of a chunk per latent frame), an embedding (bf16, at most two tokens a character of its text), a video
    (VIDEO_BITS_PER_PIXEL), the contact sheet of a decode or an input clip (raw RGB: PNG stores noise-like frames no
    smaller), the JSON beside each."""
    spec, ckpt_dir = STAGES[stage], Path(snapshot.config.ckpt_dir)
    preset = snapshot.preset_for(snapshot.prompt(source)) if source is not None else snapshot.preset
    if spec.output == "zarr" and spec.seeded:  # a latent [C, T, H, W]: one shard (c/0/0/0/0) of a chunk per frame
        width, height = _frame_size(preset, stage)
        c, t, h, w = wan_files.vae_config(ckpt_dir).latent_shape(preset.frames, height, width)
        return [STORE_META, ARRAY_META, (4 * c * h * w + CHUNK_OVERHEAD) * t, *[0] * 6]
    if spec.output == "zarr":  # an embedding [L, dim]
        t5 = wan_files.t5_config(ckpt_dir)
        tokens = min(t5.text_len, 2 * characters + 2)
        return [STORE_META, ARRAY_META, 2 * tokens * t5.dim + CHUNK_OVERHEAD, *[0] * 4]
    if stage == "input":  # the clip at the source's display size
        width, height = snapshot.sources[source]["width"], snapshot.sources[source]["height"]
    else:
        width, height = _frame_size(preset, stage)
    bits = VIDEO_BITS_PER_PIXEL * (PIXELS_AT_4_BPP / (width * height)) ** 0.25
    files = [int(width * height * preset.frames * bits / 8) + VIDEO_OVERHEAD, SIDECAR]
    if stage in ("decode", "input"):  # the contact sheet
        sheet = ContactSheet(preset.frames)
        picked, thumb = len(sheet.picks), min(sheet.thumb_width, width)
        rows = math.ceil(picked / sheet.columns)
        files.append(min(picked, sheet.columns) * thumb * rows * round(height * thumb / width) * 3 + VIDEO_OVERHEAD)
    return files


def _frame_size(preset: Preset, stage: str) -> tuple[int, int]:
    """The (width, height) of what a stage makes: from its own settings, or from the latent it reads."""
    settings = STAGES[stage].settings
    if "width" in settings:
        return preset.width, preset.height
    if "lr_width" in settings:
        return preset.lr_width, preset.lr_height
    return _frame_size(preset, STAGES[stage].reads[0])


def disk_needed(plan: Plan, todo: list[OutputState], block: int) -> int:
    """Bytes (whole blocks of `block` bytes, as a file system gives them) the outputs still to make take, with what
    their jobs leave beside them: a log, a marker and Snakemake's record of it per job, three events per output, the
    run's snapshot and copies of its prompts, Snakemake's logs, every folder."""
    snapshot = plan.snapshot
    needed, of_output = 0, {}  # (stage, characters of an embedding's text) -> blocks of one output
    for state in todo:
        spec = STAGES[state.stage]
        embeds = spec.output == "zarr" and not spec.seeded
        key = (state.stage, len(plan.provenance.item(state.stage, state.id).text) if embeds else 0,
               state.id if state.id in snapshot.sources else None)  # a video or image prompt: its own clip
        if key not in of_output:
            of_output[key] = _blocks(output_files(snapshot, *key), block)
        needed += of_output[key]
    jobs = {(state.stage, plan.shard_of(state.stage, state.id)) for state in todo}
    files = [JOB_LOG, MARKER, MARKER] * len(jobs)  # a log, the marker and Snakemake's metadata of it
    files += [0] * FOLDERS_PER_STAGE * len({stage for stage, _ in jobs})
    snakemake_log = SNAKEMAKE_LOG_PER_JOB * len(jobs) + RUN_FILES  # in OUT/logs/snakemake/ and .snakemake/log/
    prompts = len(prompts_jsonl(snapshot.prompts).encode())  # the snapshot and OUT/prompts.jsonl hold them
    files += [EVENT * 3 * len(todo), prompts + RUN_FILES, prompts, snakemake_log, snakemake_log, *[0] * RUN_FOLDERS]
    return needed + _blocks(files, block)


def _blocks(sizes: list[int], block: int) -> int:
    return sum(max(1, math.ceil(size / block)) * block for size in sizes)


def check_disk(plan: Plan, out: Path, todo: list[OutputState]) -> None:
    """Enough free space in OUT's file system for the outputs still to make (with a margin)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    stats = os.statvfs(existing)
    needed = disk_needed(plan, todo, stats.f_frsize or 4096)
    free = stats.f_bavail * stats.f_frsize
    if needed * DISK_MARGIN > free:
        counts = ", ".join(f"{n} {stage}" for stage, n in _count(todo).items())
        raise RunConfigError(f"--out {out}: about {_size(needed)} are needed for the outputs still to make "
                             f"({counts}) and what their jobs write beside them, but {_size(free)} are free there; "
                             "free space or choose another --out")


def _file_system(path: Path) -> str:
    """The type of the file system `path` is on (proc, sysfs, ...), from the kernel's table of mounts."""
    path, found = path.resolve(), ("", "unknown")
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found[1]
    for line in mounts:  # "<id> <parent> <dev> <root> <mount point> <options> ... - <type> <source> <options>"
        fields, kind = line.split(" - ", 1)[0].split(), line.split(" - ", 1)[1].split()[0]
        point = fields[4].encode().decode("unicode_escape")
        if path.is_relative_to(point) and len(point) >= len(found[0]):
            found = (point, kind)
    return found[1]


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _count(states: list[OutputState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state.stage] = counts.get(state.stage, 0) + 1
    return counts
