"""Prompt files (.txt: one prompt per line; .jsonl: one object per line) and sharding.

Prompt ids name output files, so they are validated, and a prompt without an id gets one derived from its text alone:
inserting or deleting other lines never renames an existing output.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_KEYS = ("id", "prompt_id")
TEXT_KEYS = ("text", "prompt", "caption")
SLUG_WORDS = 4


class PromptFileError(ValueError):
    def __init__(self, path: Path, line: int, problem: str, fix: str):
        super().__init__(f"{path}:{line}: {problem}; {fix}")


def check_id(prompt_id: str) -> None:
    """Raise ValueError unless `prompt_id` is safe as a file name."""
    if not _ID_RE.match(prompt_id) or ".." in prompt_id:
        raise ValueError(f"invalid prompt id {prompt_id!r}")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str

    def __post_init__(self) -> None:
        check_id(self.id)

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


def derived_id(text: str) -> str:
    """`<first words slugged>-<8 hex of sha256(text)>`, e.g. 'a-red-fox-runs-3f2a9c1b'."""
    slug = "-".join(re.findall(r"[a-z0-9]+", text.lower())[:SLUG_WORDS])[:48].strip("-") or "prompt"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def _parse_jsonl_line(path: Path, lineno: int, line: str) -> tuple[str | None, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise PromptFileError(path, lineno, f"invalid JSON ({err.msg})", "write one JSON object per line") from None
    if not isinstance(record, dict):
        raise PromptFileError(path, lineno, "not a JSON object", 'write objects like {"id": "...", "text": "..."}')
    raw_id = _first(record, ID_KEYS)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, float, type(None))):
        raise PromptFileError(path, lineno, f"id {raw_id!r} is not a string or number", "use a string id")
    return (None if raw_id is None else str(raw_id)), _first(record, TEXT_KEYS)


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a .txt or .jsonl file; the format is taken from the first non-empty line ('{' means JSONL).

    JSONL keys: id from `id`, else `prompt_id`; text from `text`, else `prompt`, else `caption`. Texts are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise PromptFileError(path, line, "not valid UTF-8", "save the file as UTF-8") from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise PromptFileError(path, 1, "no prompts in file", "add one prompt per line")
    jsonl = numbered[0][1].startswith("{")

    prompts: list[Prompt] = []
    first_line: dict[str, int] = {}
    for lineno, line in numbered:
        prompt_id, text = _parse_jsonl_line(path, lineno, line) if jsonl else (None, line)
        if not isinstance(text, str) or not text.strip():
            raise PromptFileError(path, lineno, "empty or missing prompt text",
                                  f"give each line a non-empty string under one of {', '.join(TEXT_KEYS)}")
        text = text.strip()
        prompt_id = derived_id(text) if prompt_id is None else prompt_id
        try:
            check_id(prompt_id)
        except ValueError as err:
            raise PromptFileError(path, lineno, str(err), "ids name files: use 1-128 letters, digits, '.', '_', '-', "
                                  "starting with a letter or digit, without '..'") from None
        if prompt_id in first_line:
            raise PromptFileError(path, lineno, f"duplicate prompt id {prompt_id!r} (first on line "
                                  f"{first_line[prompt_id]})", "remove the repeated prompt or give it a distinct id")
        first_line[prompt_id] = lineno
        prompts.append(Prompt(prompt_id, text))
    return prompts


def shard(prompts: Sequence[Prompt], size: int) -> list[list[Prompt]]:
    """Consecutive shards of `size` prompts; the last may be shorter."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [list(prompts[i : i + size]) for i in range(0, len(prompts), size)]
