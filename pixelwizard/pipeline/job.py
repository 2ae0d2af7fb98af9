"""The loop every stage job runs: for each prompt of its shard, skip what is already done (same provenance
digest), compute the rest, isolate failures, record events, and mark the shard done only when all succeeded."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pixelwizard import __version__
from pixelwizard.checkpoints.trainer import fingerprint
from pixelwizard.io.latent_store import provenance_digest, read_store, remove_stale_temps, store_attrs
from pixelwizard.pipeline.plan import StageSpec
from pixelwizard.pipeline.prompts import Prompt

log = logging.getLogger("pixelwizard")


class MissingUpstreamError(RuntimeError):
    """An input of this stage is absent or incomplete."""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device; use device: auto or cpu")
    return torch.device(requested)


def dit_dtype(requested: str, device: torch.device) -> torch.dtype:
    """bf16 matmuls on a GPU; float32 on the CPU, where bf16 is slow and not what parity is checked in."""
    return torch.float32 if device.type == "cpu" else getattr(torch, requested)


def checkpoint_identity(path: Path) -> dict[str, Any]:
    """The part of a checkpoint's fingerprint that enters provenance digests: content, not location."""
    fp = fingerprint(path)
    return {"size": fp["size"], "sha256_ends": fp["sha256_ends"]}


def output_attrs(provenance: dict[str, Any]) -> dict[str, Any]:
    """Metadata stored with every output: what it was made from, that record's digest, the library version."""
    return {"provenance": provenance, "digest": provenance_digest(provenance), "version": __version__}


def store_is_current(path: Path, digest: str) -> bool:
    attrs = store_attrs(path)
    return attrs is not None and attrs.get("digest") == digest


def read_array(path: Path, name: str) -> torch.Tensor:
    return read_store(path, [name])[0][name]


def sidecar_is_current(sidecar: Path, media: Path, digest: str) -> bool:
    """For outputs that are not zarr stores (videos): a json written after the media file carries the digest."""
    try:
        return media.exists() and json.loads(sidecar.read_text()).get("digest") == digest
    except (OSError, ValueError):
        return False


def upstream_digest(path: Path, stage: str) -> str:
    attrs = store_attrs(path)
    if attrs is None:
        raise MissingUpstreamError(f"{path} is missing or incomplete: run the {stage} stage for it first")
    return attrs["digest"]


def append_event(path: Path, **event: Any) -> None:
    """One json line per prompt and stage; lines this short are written whole by O_APPEND."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.time(), "pid": os.getpid(), **event}, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def write_json_atomic(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1))
    tmp.replace(path)


def run_prompts(
    spec: StageSpec,
    *,
    provenance: Callable[[Prompt], dict[str, Any]],
    is_done: Callable[[Prompt, str], bool],
    compute: Callable[[Prompt, dict[str, Any]], None],
    write_outputs: bool = True,
    store_dir: Path | None = None,
) -> int:
    """Process the shard; returns the process exit code (1 when any prompt failed).

    `compute(prompt, attrs)` writes the prompt's outputs atomically; `attrs` carries the provenance, its
    digest and the library version for the output's metadata. Ranks other than 0 pass write_outputs=False:
    they take part in the computation but record nothing. `store_dir`: where the stage's zarr stores live;
    temp stores that killed writers left there (over an hour old, writer gone) are removed first.
    """
    layout = spec.layout
    if write_outputs and store_dir is not None:
        removed = remove_stale_temps(store_dir)
        if removed:
            log.info("removed %d temp store(s) left in %s by killed writers", removed, store_dir)
    failed = []
    for prompt in spec.prompts:
        event = {"stage": spec.stage, "id": prompt.id, "shard": spec.shard}
        start = time.perf_counter()
        try:
            attrs = output_attrs(provenance(prompt))
            if is_done(prompt, attrs["digest"]):
                action = "skipped"
            else:
                compute(prompt, attrs)
                action = "computed"
        except Exception as err:  # one bad prompt must not cost the shard: record it, go on
            log.exception("%s %s failed", spec.stage, prompt.id)
            failed.append(prompt.id)
            if write_outputs:
                append_event(layout.events, **event, action="failed", error=f"{type(err).__name__}: {err}")
            continue
        seconds = time.perf_counter() - start
        log.info("%s %s %s in %.1f s", spec.stage, prompt.id, action, seconds)
        if write_outputs:
            append_event(layout.events, **event, action=action, seconds=round(seconds, 3))
    if failed:
        log.error("%s shard %s: %d prompt(s) failed: %s", spec.stage, spec.shard, len(failed), ", ".join(failed))
        return 1
    if write_outputs:
        write_json_atomic(layout.done(spec.marker, spec.shard), {"ids": [p.id for p in spec.prompts]})
    return 0


def parse_spec(description: str, argv: list[str] | None = None) -> StageSpec:
    """The command line of every stage script: one argument, the job spec the Snakefile wrote."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path, help="a job spec: OUT/.specs/<stage>/<shard>.json")
    args = parser.parse_args(argv)
    setup_logging()
    return StageSpec.load(args.spec)


def run_on_ranks(spec: StageSpec, run_shard: Callable[[StageSpec, torch.device], int]) -> int:
    """Run a stage that may be launched by torchrun: join the process group (if any) on the right device."""
    from pixelwizard import distributed

    device = distributed.init_from_env(pick_device(spec.run.device))
    try:
        return run_shard(spec, device)
    finally:
        distributed.shutdown()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@contextmanager
def progress(description: str, total: int) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields the `(done, total)` callback the samplers and decoders call."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, n: bar.update(task, completed=done, total=n)
