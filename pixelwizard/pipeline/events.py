"""What stage jobs tell the rest: the event log (one JSON line per prompt and stage: started, computed, skipped,
failed, blocked, interrupted, recomputing a corrupt output, warnings) and a small progress file per running job
(the prompt and the denoising step or decode chunk it is at), which the CLI's live view and `status` read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pixelwizard.io.files import open_output, write_atomic
from pixelwizard.io.lines import json_line, parse_json

FAILED = "failed"


def append_event(path: Path, *, root: Path | None = None, **event: Any) -> None:
    """One JSON line, appended inside `root` (OUT; default: the log's own folder); lines this short are written
    whole by O_APPEND, so concurrent jobs never interleave."""
    line = json_line({"time": round(time.time(), 3), "host": socket.gethostname(), "pid": os.getpid(), **event})
    with open_output(path, root, append=True) as f:
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
    for line in whole.split(b"\n")[:-1]:
        try:
            events.append(parse_json(line.decode("utf-8")))
        except ValueError:  # UnicodeDecodeError too
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


def write_progress(path: Path, *, root: Path | None = None, **progress: Any) -> None:
    write_atomic(path, json.dumps({"time": round(time.time(), 3), "pid": os.getpid(), **progress}), root)


def read_progress(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            found.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):  # removed or replaced while listing
            continue
    return found
