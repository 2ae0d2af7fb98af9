"""What stage jobs tell the rest: the event log, one JSON line per prompt and stage: started, computed (the job's
first with its start-up times), skipped, failed, blocked, interrupted, recomputing a corrupt output, warnings. (What a
running job is doing right now is in its record: pipeline/inflight.py.)
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pixelwizard.io.files import open_output
from pixelwizard.io.lines import json_line, parse_json

FAILED = "failed"
_ID = re.compile(rb'"id": "((?:[^"\\]|\\.)*)"')  # an event's id, as append_event writes it


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
    return _parse(_lines(whole)), offset + len(whole)


def events_of(path: Path, action: str) -> list[dict[str, Any]]:
    """The events of one action, parsing only their lines (a run of 100,000 prompts logs millions of events)."""
    mark = json.dumps({"action": action})[1:-1].encode()
    return _parse(line for line in _whole_lines(path, mark) if mark in line)


def failure_events(path: Path) -> list[dict[str, Any]]:
    """The events `last_failures` needs: every failure, and every event of an output that failed."""
    lines = _whole_lines(path, json.dumps({"action": FAILED})[1:-1].encode())
    failed = {e.get("id") for e in _parse(line for line in lines if b'"failed"' in line)}
    return _parse(line for line in lines if (found := _ID.search(line)) and found.group(1).decode() in failed)


def _whole_lines(path: Path, needed: bytes) -> list[bytes]:
    """The log's whole lines (a torn last one waits for the next read); none if `needed` is nowhere in it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return _lines(data[: data.rfind(b"\n") + 1]) if needed in data else []


def _lines(whole: bytes) -> list[bytes]:
    """Whole lines, split at "\\n" only, as io/lines.py reads every line file."""
    return whole.split(b"\n")[:-1]


def _parse(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        try:
            events.append(parse_json(line.decode("utf-8")))
        except ValueError:  # UnicodeDecodeError too
            continue
    return events


def last_failures(events: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(stage, id, output digest) -> the failure of its last attempt, unless the output was computed after it. An
    attempt's first failure is its cause: the other ranks of a multi-GPU job, in a collective with the one that
    failed, then fail too ("Connection closed by peer"), and the launcher may add how the job ended."""
    failures: dict[tuple[str, str, str], dict[str, Any]] = {}
    attempted = set()  # outputs started again since their last failure
    for event in events:
        key, action = (event.get("stage"), event.get("id"), event.get("digest")), event.get("action")
        if action == FAILED and (key not in failures or key in attempted):
            failures[key] = event
            attempted.discard(key)
        elif action == "started":
            attempted.add(key)
        elif action in ("computed", "skipped"):
            failures.pop(key, None)
    return failures
