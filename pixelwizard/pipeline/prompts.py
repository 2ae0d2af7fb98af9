"""Prompts: where they come from (a .txt or .jsonl file, `--prompt`, the Python API), the one set of rules their
settings follow, whoever gives them, and sharding.

Prompt ids name output files, so they are validated, and a prompt without an id gets one derived from its text alone:
inserting or deleting other lines never renames an existing output. A prompt may carry its own `seed` and
`negative_prompt`; both enter its provenance.

The settings are the table FIELDS: each field's JSONL keys, its rule (what it must be, and the value the prompt
keeps) and the fix to suggest. A new setting is a field of `Prompt` plus an entry there; the CLI, the JSONL reader
and the Python API then all take it with the same rule. JSONL keys that are not a field's are the user's and are
ignored, unless one is a near miss of a field's key (`Seed`, `negative_promt`): that line is refused with the key
it was probably meant to be, because a misspelled setting would otherwise be dropped without a word and the run
made with the run's seed or negative prompt instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pixelwizard.io.lines import LineFileError, json_line, parse_json, read_lines

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SLUG_WORDS = 4
SHOWN_CHARS = 40
MAX_SEED = 2**63 - 1  # seeds feed sampling/seeds.py's 63-bit derivation


class PromptFileError(LineFileError):
    """A line of a prompt or id file that cannot be used: `file:line: problem; fix`."""


class PromptError(ValueError):
    """A prompt setting that cannot be used: `field value: problem; fix`."""

    def __init__(self, field: str, value: Any, problem: str, fix: str):
        self.field, self.fix = field, fix
        self.problem = f"{field}: {problem}" if value is None else f"{field} {shown(value)}: {problem}"
        super().__init__(f"{self.problem}; {fix}")


def shown(value: Any) -> str:
    """A value as a message shows it: its repr, cut to SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def check_id(prompt_id: str) -> None:
    """Raise ValueError unless `prompt_id` is safe as a file name."""
    if not isinstance(prompt_id, str) or not _ID_RE.fullmatch(prompt_id) or ".." in prompt_id:
        raise ValueError(f"invalid prompt id {prompt_id!r}")


def check_seed(value: Any) -> int:
    """A seed pixelwizard is given (the run's, a prompt's) is a whole number from 0 to 2^63-1."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError("must be a whole number from 0 to 2^63-1")
    return value


def check_text(value: Any) -> str:
    """A text pixelwizard is given (a prompt, a negative prompt) must be a string of characters: a lone surrogate (half
    of a UTF-16 pair, from a JSON escape like "\\ud83d" or undecodable bytes in a command line) is not one."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    for i, char in enumerate(value):
        if "\ud800" <= char <= "\udfff":
            raise ValueError(f"holds a lone surrogate U+{ord(char):04X} at character {i + 1} (half of a UTF-16 pair, "
                             "not a character)")
    return value


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    seed: int | None = None  # None: the run's base seed
    negative_prompt: str | None = None  # None: the run's negative prompt

    def __post_init__(self) -> None:
        check_id(self.id)  # whatever made it: ids name files

    @property
    def text_hash(self) -> str:
        return text_hash(self.text)

    def to_record(self) -> dict[str, Any]:
        """The prompt's settings as a JSONL record (read back by `read_prompts`); unset ones left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _id(value: Any) -> str | None:
    if value is None or value == "":
        return None  # derived from the text
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a string (or a number)")
    try:
        check_id(str(value))
    except ValueError:
        raise ValueError("not usable as a file name") from None
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        raise ValueError("missing")
    if not check_text(value).strip():
        raise ValueError("empty")
    return value.strip()


def _optional_text(value: Any) -> str | None:
    return None if value is None else check_text(value)


def _optional_seed(value: Any) -> int | None:
    return None if value is None else check_seed(value)


@dataclass(frozen=True)
class PromptField:
    keys: tuple[str, ...]  # the JSONL keys that give it, in order of precedence
    rule: Callable[[Any], Any]  # the value the prompt keeps (None: unset); ValueError(problem) when unusable
    fix: str


FIELDS: dict[str, PromptField] = {
    "id": PromptField(("id", "prompt_id"), _id, "ids name files: use 1-128 letters, digits, '.', '_', '-', starting "
                      "with a letter or digit, without '..' (or leave it out for one derived from the text)"),
    "text": PromptField(("text", "prompt", "caption"), _text, "give the prompt's text, a non-empty string"),
    "seed": PromptField(("seed",), _optional_seed, "write e.g. 42, or leave it out for the run's seed"),
    "negative_prompt": PromptField(("negative_prompt",), _optional_text, "give a string, or leave it out for the "
                                   "run's negative prompt"),
}
KNOWN_KEYS = tuple(key for field in FIELDS.values() for key in field.keys)


def make_prompt(**values: Any) -> Prompt:
    """A prompt from its settings (FIELDS' names; missing ones unset), each checked and normalised by its field's
    rule; raises PromptError naming the first unusable one. Without an id, one is derived from the text."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown prompt setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    kept = {}
    for name, field in FIELDS.items():
        try:
            kept[name] = field.rule(values.get(name))
        except ValueError as err:
            raise PromptError(name, values.get(name), str(err), field.fix) from None
    kept["id"] = kept["id"] or derived_id(kept["text"])
    return Prompt(**kept)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_id(text: str) -> str:
    """`<first words slugged>-<8 hex of sha256(text)>`, e.g. 'a-red-fox-runs-3f2a9c1b'."""
    slug = "-".join(re.findall(r"[a-z0-9]+", text.lower())[:SLUG_WORDS])[:48].strip("-") or "prompt"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def edit_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute a character, swap two neighbours) that turn `a` into `b`."""
    rows = [list(range(len(b) + 1))]
    for i, ca in enumerate(a, start=1):
        row = [i]
        for j, cb in enumerate(b, start=1):
            cost = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, rows[-2][j - 2] + 1)
            row.append(cost)
        rows.append(row)
    return rows[-1][-1]


def near_miss(key: str) -> str | None:
    """The known key `key` is probably a misspelling of: the same but for case, '_', '-' and spaces, or one edit
    away (two for keys of 8+ characters; none for 2-character keys, so a user's `uid` is not taken for `id`)."""
    def norm(k: str) -> str:
        return re.sub(r"[-_ ]", "", k.casefold())

    for known in KNOWN_KEYS:
        allowed = 0 if len(known) <= 2 else 1 if len(known) < 8 else 2
        if key != known and edit_distance(norm(key), norm(known)) <= allowed:
            return known
    return None


def _first(record: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of `keys` that is given and not empty (else an empty one, else None)."""
    given = [record[k] for k in keys if record.get(k) is not None]
    return next((v for v in given if v != ""), given[0] if given else None)


def _make(path: Path | str, lineno: int, **values: Any) -> Prompt:
    try:
        return make_prompt(**values)
    except PromptError as err:
        raise PromptFileError(path, lineno, err.problem, err.fix) from None


def _parse_jsonl_line(path: Path, lineno: int, line: str) -> Prompt:
    try:
        record = parse_json(line)
    except ValueError as err:
        raise PromptFileError(path, lineno, str(err), "write one JSON object per line") from None
    if not isinstance(record, dict):
        raise PromptFileError(path, lineno, "not a JSON object", 'write objects like {"id": "...", "text": "..."}')
    for key in record:
        if key not in KNOWN_KEYS and (known := near_miss(key)):
            raise PromptFileError(path, lineno, f"unknown key {key!r}", f"did you mean {known!r}? (keys of your own "
                                  "are kept and ignored, unless they are this close to a key pixelwizard reads)")
    return _make(path, lineno, **{name: _first(record, field.keys) for name, field in FIELDS.items()})


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a .txt or .jsonl file; the format is taken from the first non-empty line ('{' means JSONL).

    JSONL keys: FIELDS' (id from `id`, else `prompt_id`; text from `text`, else `prompt`, else `caption`; optional
    `seed` and `negative_prompt`). Texts are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    numbered = [(n, line.strip()) for n, line in read_lines(path) if line.strip()]
    if not numbered:
        raise PromptFileError(path, 1, "no prompts in file", "add one prompt per line")
    jsonl = numbered[0][1].startswith("{")
    prompts = [_parse_jsonl_line(path, n, line) if jsonl else _make(path, n, text=line) for n, line in numbered]
    return check_unique(prompts, path, [n for n, _ in numbered])


def prompts_jsonl(prompts: Sequence[Prompt]) -> str:
    """The run's copy of its prompts: JSON lines that `read_prompts` reads back to the same prompts, and that these
    prompts write again byte for byte."""
    return "".join(json_line(p.to_record()) for p in prompts)


def single_prompt(text: str) -> list[Prompt]:
    """`--prompt TEXT`: one prompt, its id derived as for a line of a text file."""
    return [_make("--prompt", 1, text=text)]


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
    for lineno, line in read_lines(path):
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


def ids_file(ids: Sequence[str]) -> str:
    """The run's copy of its --only ids, as `read_ids` reads them."""
    return "".join(f"{i}\n" for i in ids)


def shard(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive shards of `size` items; the last may be shorter."""
    if size < 1:
        raise ValueError(f"shard size must be >= 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]

