"""Prompt files (.txt: one prompt per line; .jsonl: one object per line) and sharding.

Prompt ids name output files, so they are validated, and a prompt without an id gets one derived from its text alone:
inserting or deleting other lines never renames an existing output. A JSONL prompt may carry its own `seed` and
`negative_prompt`; both enter its provenance. Other keys are the user's and are ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ID_KEYS = ("id", "prompt_id")
TEXT_KEYS = ("text", "prompt", "caption")
SLUG_WORDS = 4
MAX_SEED = 2**63 - 1


class PromptFileError(ValueError):
    def __init__(self, path: Path | str, line: int, problem: str, fix: str):
        super().__init__(f"{path}:{line}: {problem}; {fix}")


def check_id(prompt_id: str) -> None:
    """Raise ValueError unless `prompt_id` is safe as a file name."""
    if not _ID_RE.fullmatch(prompt_id) or ".." in prompt_id:
        raise ValueError(f"invalid prompt id {prompt_id!r}")


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    seed: int | None = None  # None: the run's base seed
    negative_prompt: str | None = None  # None: the run's negative prompt

    def __post_init__(self) -> None:
        check_id(self.id)

    @property
    def text_hash(self) -> str:
        return text_hash(self.text)

    def fields(self) -> dict[str, Any]:
        """The prompt as its JSON line holds it: the fields that are set."""
        return {k: v for k, v in vars(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.fields(), ensure_ascii=False)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_id(text: str) -> str:
    """`<first words slugged>-<8 hex of sha256(text)>`, e.g. 'a-red-fox-runs-3f2a9c1b'."""
    slug = "-".join(re.findall(r"[a-z0-9]+", text.lower())[:SLUG_WORDS])[:48].strip("-") or "prompt"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    return next((record[k] for k in keys if record.get(k) not in (None, "")), None)


def _parse_jsonl_line(path: Path, lineno: int, line: str) -> Prompt:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise PromptFileError(path, lineno, f"invalid JSON ({err.msg})", "write one JSON object per line") from None
    if not isinstance(record, dict):
        raise PromptFileError(path, lineno, "not a JSON object", 'write objects like {"id": "...", "text": "..."}')
    raw_id = _first(record, ID_KEYS)
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int, float, type(None))):
        raise PromptFileError(path, lineno, f"id {raw_id!r} is not a string or number", "use a string id")
    text = _first(record, TEXT_KEYS)
    if not isinstance(text, str) or not text.strip():
        raise PromptFileError(path, lineno, "empty or missing prompt text",
                              f"give each line a non-empty string under one of {', '.join(TEXT_KEYS)}")
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise PromptFileError(path, lineno, f"seed {seed!r} is not a whole number in [0, 2^63)",
                              'write e.g. "seed": 42, or leave it out for the run\'s seed')
    negative = record.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise PromptFileError(path, lineno, f"negative_prompt {negative!r} is not a string",
                              'write e.g. "negative_prompt": "blurry", or leave it out for the run\'s')
    return _prompt(path, lineno, None if raw_id is None else str(raw_id), text.strip(), seed, negative)


def _prompt(path: Path | str, lineno: int, prompt_id: str | None, text: str, seed: int | None = None,
            negative: str | None = None) -> Prompt:
    prompt_id = derived_id(text) if prompt_id is None else prompt_id
    try:
        return Prompt(prompt_id, text, seed, negative)
    except ValueError as err:
        raise PromptFileError(path, lineno, str(err), "ids name files: use 1-128 letters, digits, '.', '_', '-', "
                              "starting with a letter or digit, without '..'") from None


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a .txt or .jsonl file; the format is taken from the first non-empty line ('{' means JSONL).

    JSONL keys: id from `id`, else `prompt_id`; text from `text`, else `prompt`, else `caption`; optional `seed`
    and `negative_prompt`. Texts are stripped.
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
    prompts = [_parse_jsonl_line(path, n, line) if jsonl else _prompt(path, n, None, line) for n, line in numbered]
    return check_unique(prompts, path, [n for n, _ in numbered])


def single_prompt(text: str) -> list[Prompt]:
    """`--prompt TEXT`: one prompt, its id derived as for a line of a text file."""
    if not text.strip():
        raise PromptFileError("--prompt", 1, "empty prompt text", "give the prompt's text")
    return [_prompt("--prompt", 1, None, text.strip())]


def check_unique(prompts: list[Prompt], path: Path | str, lines: Sequence[int]) -> list[Prompt]:
    first_line: dict[str, int] = {}
    for prompt, lineno in zip(prompts, lines):
        if prompt.id in first_line:
            raise PromptFileError(path, lineno, f"duplicate prompt id {prompt.id!r} (first on line "
                                  f"{first_line[prompt.id]})", "remove the repeated prompt or give it a distinct id")
        first_line[prompt.id] = lineno
    return prompts


def read_ids(path: Path, known: Sequence[Prompt]) -> tuple[str, ...]:
    """`--only FILE`: prompt ids, one a line (blank lines and `#` comments ignored), each one of `known`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--only: id file not found: {path}")
    ids = set(p.id for p in known)
    chosen = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        prompt_id = line.split("#", 1)[0].strip()
        if not prompt_id:
            continue
        if prompt_id not in ids:
            raise PromptFileError(path, lineno, f"{prompt_id!r} is not an id of the run's prompts",
                                  "list ids from the prompt file (the report's selection writes such a file)")
        chosen.append(prompt_id)
    if not chosen:
        raise PromptFileError(path, 1, "no ids in file", "list one prompt id a line")
    return tuple(dict.fromkeys(chosen))


def shard(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive shards of `size` items; the last may be shorter."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
