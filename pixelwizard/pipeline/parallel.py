"""Work over a run's prompts on every core: `status` and the report judge every output of a run (a stat per file,
a digest per output), which at 100,000 prompts is seconds of CPU per core. The prompts are cut into contiguous
parts, each judged in a forked process that inherits the run's snapshot instead of receiving it; only the results
travel back (pickled), in order. Used by read-only commands only: a forked process must not share a CUDA context.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
MIN_PER_PROCESS = 5000  # fewer prompts are judged in this process: a fork costs more than it saves

_work: Callable[[Sequence[str]], Any] | None = None  # what the forked processes run, set before they fork
_parts: list[Sequence[str]] = []


def in_parts(work: Callable[[Sequence[str]], T], ids: Sequence[str], processes: int | None = None) -> list[T]:
    """[work(part) for part in contiguous parts of `ids`], one part per process (at most one per core)."""
    global _work, _parts
    count = max(1, min(processes or os.cpu_count() or 1, len(ids) // MIN_PER_PROCESS))
    size = -(-len(ids) // count) if ids else 0
    parts = [ids[i * size:(i + 1) * size] for i in range(count)]
    if count == 1:
        return [work(ids)]
    _work, _parts = work, parts
    try:
        with multiprocessing.get_context("fork").Pool(count - 1) as pool:
            others = pool.map_async(_run, range(1, count))
            first = work(parts[0])  # this process takes the first part meanwhile
            return [first, *others.get()]
    finally:
        _work, _parts = None, []


def _run(index: int) -> Any:
    return _work(_parts[index])
