"""Work on every core: `status`, the report and the plan judge every output of a run (a stat per file, a digest per
output), which at 100,000 prompts is seconds of CPU per core. The prompts are cut into contiguous parts, each
judged in a forked process that inherits the run's snapshot instead of receiving it; only the results travel back
(pickled), in order. And a check that imports torch and transformers (seconds) runs beside the plan (`beside`).
A forked process must not use the CUDA context of its parent: none of this work touches a GPU.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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


@contextmanager
def beside(work: Callable[..., T], *args: Any) -> Iterator[Callable[[], T]]:
    """Run work(*args) in a forked process from now on; yields the function that waits for it and returns its result
    or raises its exception (each pickled back). The process is ended on leaving, finished or not. Fork before
    starting threads of your own (a spinner, say): only the forking thread lives on in the child."""
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(work, args)
        yield result.get
