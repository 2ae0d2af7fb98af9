"""What stage jobs tell the rest: the event log, one JSON line per prompt and stage: started, computed (the job's
first with its start-up times), skipped, failed, blocked, interrupted, recomputing a corrupt output, warnings. (What a
running job is doing right now is in its record: pipeline/inflight.py.)
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any


FAILED = "failed"


def append_event(path: Path, **event: Any) -> None:
    """One JSON line; lines this short are written whole by O_APPEND, so concurrent jobs never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(), **event},
                      ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def read_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events from byte `offset` on, and the offset after the last whole line (a line torn by a kill, or still
    being written, is left for the next read)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    whole = data[: data.rfind(b"\n") + 1]
    events = []
    for line in whole.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events, offset + len(whole)


def last_failures(events: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(stage, id, output digest) -> the last failure event, unless the output was computed after it."""
    failures: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event in events:
        key = (event.get("stage"), event.get("id"), event.get("digest"))
        if event.get("action") == FAILED:
            failures[key] = event
        elif event.get("action") in ("computed", "skipped"):
            failures.pop(key, None)
    return failures
