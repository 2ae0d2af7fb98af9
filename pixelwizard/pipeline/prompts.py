"""Prompts: where they come from (a .txt or .jsonl file, `--prompt`, the Python API), the one set of rules their
settings follow, whoever gives them, and sharding.

Prompt ids name output files, so they are validated, and a prompt without an id gets one derived from its text alone:
inserting or deleting other lines never renames an existing output. A prompt may carry its own `seed` and
`negative_prompt`; both enter its provenance. It may also name a source file for its anchor: an `image` (its first
frame), a `video` (upscaled; with optional `start` seconds and `fps`) or a saved `latent`; a video or latent prompt
may leave out its text (the empty prompt). A relative path is taken from the prompt file's folder (from the current
one for the CLI's and the Python API's).

The settings are the table FIELDS: each field's JSONL keys, its rule (what it must be, and the value the prompt
keeps) and the fix to suggest; what concerns several fields at once (one source a prompt, a video's options) is
checked after them, in `make_prompt`. A new setting is a field of `Prompt` plus an entry there; the CLI, the JSONL
reader and the Python API then all take it with the same rule. JSONL keys that are not a field's are the user's and
are ignored, unless one is a near miss of a field's key (`Seed`, `negative_promt`, `videos`): that line is refused
with the key it was probably meant to be, because a misspelled setting would otherwise be dropped without a word and
the run made with the run's seed, negative prompt or anchor instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from pixelwizard.io.input_file import LATENT_SUFFIXES
from pixelwizard.io.lines import LineFileError, json_line, parse_json, read_lines

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SURROGATE = re.compile("[\ud800-\udfff]")
SOURCE_KEYS = ("image", "video", "latent")  # at most one per prompt
UNTEXTED_SOURCES = ("video", "latent")  # may leave out the text: upscaled with the empty prompt
VIDEO_OPTIONS = ("start", "fps")  # a video's only
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
    if surrogate := _SURROGATE.search(value):
        raise ValueError(f"holds a lone surrogate U+{ord(surrogate[0]):04X} at character {surrogate.start() + 1} "
                         "(half of a UTF-16 pair, not a character)")
    return value


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    seed: int | None = None  # None: the run's base seed
    negative_prompt: str | None = None  # None: the run's negative prompt
    image: str | None = None  # the first frame (image to video)
    video: str | None = None  # a video to upscale ...
    start: float | None = None  # ... from this second on (None: its first frame)
    fps: int | None = None  # ... at this rate (None: its own)
    latent: str | None = None  # a saved anchor latent to upscale

    def __post_init__(self) -> None:
        check_id(self.id)  # whatever made it: ids name files

    @cached_property  # asked per output and stage: half a million times for status at 100,000 prompts
    def source(self) -> str:
        """What the anchor is made from: text (sampled), image (sampled from a first frame), video or latent."""
        return next((key for key in SOURCE_KEYS if getattr(self, key) is not None), "text")

    @property
    def source_file(self) -> str | None:
        return getattr(self, self.source) if self.source != "text" else None

    @property
    def text_hash(self) -> str:
        return text_hash(self.text)

    def to_record(self) -> dict[str, Any]:
        """The prompt's settings as a JSONL record (read back by `read_prompts`); unset ones left out."""
        return {name: value for name in PROMPT_FIELDS if (value := getattr(self, name)) is not None}


PROMPT_FIELDS = tuple(f.name for f in fields(Prompt))


def _id(value: Any) -> str | None:
    if value == "":
        return None  # derived from the text
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("must be a string (or a number)")
    try:
        check_id(str(value))
    except ValueError:
        raise ValueError("not usable as a file name") from None
    return str(value)


def _text(value: Any) -> str:
    if not check_text(value).strip():
        raise ValueError("empty")
    return value.strip()


def _untexted(value: Any) -> str:
    """A video's or saved latent's text: may be empty (the empty prompt)."""
    return "" if isinstance(value, str) and not value.strip() else _text(value)


def _file(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a file's path")
    return value.strip()


def _start(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ValueError("must be a number of seconds, 0 or more")
    return float(value)


def _fps(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 1e9:
        raise ValueError("must be a positive whole number")
    return value


@dataclass(frozen=True)
class PromptField:
    keys: tuple[str, ...]  # the JSONL keys that give it, in order of precedence
    rule: Callable[[Any], Any]  # a given value -> the one the prompt keeps (None: unset); ValueError(problem)
    fix: str


FIELDS: dict[str, PromptField] = {
    "id": PromptField(("id", "prompt_id"), _id, "ids name files: use 1-128 letters, digits, '.', '_', '-', starting "
                      "with a letter or digit, without '..' (or leave it out for one derived from the text)"),
    "text": PromptField(("text", "prompt", "caption"), _text, "give the prompt's text, a non-empty string"),
    "seed": PromptField(("seed",), check_seed, "write e.g. 42, or leave it out for the run's seed"),
    "negative_prompt": PromptField(("negative_prompt",), check_text, "give a string, or leave it out for the "
                                   "run's negative prompt"),
    "image": PromptField(("image",), _file, 'give the first frame\'s image file, e.g. "cat.jpg"'),
    "video": PromptField(("video",), _file, 'give the video file to upscale, e.g. "clips/pier.mp4"'),
    "start": PromptField(("start",), _start, "write e.g. 2.5, or leave it out for the video's first frame"),
    "fps": PromptField(("fps",), _fps, "write e.g. 24, or leave it out for the video's own rate"),
    "latent": PromptField(("latent",), _file, 'give the saved anchor latent\'s file, e.g. "anchor.pt"'),
}
KNOWN_KEYS = tuple(key for field in FIELDS.values() for key in field.keys)
_FIELD_OF = {key: name for name, field in FIELDS.items() for key in field.keys}


def make_prompt(*, folder: Path | None = None, **values: Any) -> Prompt:
    """A prompt from its settings (FIELDS' names; missing ones unset), each checked and normalised by its field's
    rule; raises PromptError naming the first unusable one. A source file's path is resolved from `folder` (default:
    the current folder). Without an id, one is derived from the text and the source file as written."""
    if not FIELDS.keys() >= values.keys():
        unknown = sorted(values.keys() - FIELDS.keys())
        raise TypeError(f"unknown prompt setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    source = next((key for key in SOURCE_KEYS if values.get(key) is not None), "text")
    kept = dict.fromkeys(FIELDS)
    untexted = source in UNTEXTED_SOURCES
    for name, field in FIELDS.items():
        value = values.get(name)
        if value is None:  # unset (a text, unless the source may go without one: the empty prompt)
            if name == "text" and not untexted:
                raise PromptError(name, None, "missing", field.fix)
            continue
        try:
            kept[name] = (_untexted if name == "text" and untexted else field.rule)(value)
        except ValueError as err:
            raise PromptError(name, value, str(err), field.fix) from None
    if kept["text"] is None:
        kept["text"] = ""
    _check_source(kept, values)
    if kept["id"] is None:
        options = "".join(f" {key}={kept[key]:g}" for key in VIDEO_OPTIONS if kept[key] is not None)
        name = Path(kept[source]).stem if source in UNTEXTED_SOURCES else None
        kept["id"] = derived_id(kept["text"], f"{source}:{kept[source]}{options}" if source != "text" else "", name)
    if source != "text":
        kept[source] = str((Path(folder or ".") / kept[source]).resolve())
    return Prompt(**kept)


def _check_source(kept: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """What concerns several settings: one source file a prompt, and a video's options with a video only."""
    given = [key for key in SOURCE_KEYS if kept[key] is not None]
    if len(given) > 1:
        raise PromptError(given[1], values[given[1]], f"given with {given[0]}", "give one source file a prompt: "
                          f"{', '.join(SOURCE_KEYS)}")
    for key in VIDEO_OPTIONS:
        if kept[key] is not None and kept["video"] is None:
            raise PromptError(key, values[key], "given without a video", f"remove {key}, or add a video")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_id(text: str, source: str = "", name: str | None = None) -> str:
    """`<first words slugged>-<8 hex of sha256(text)>`, e.g. 'a-red-fox-runs-3f2a9c1b'. A prompt with a source file
    hashes it too (`source`: its kind, path as written and options) and may take its words from `name` instead."""
    words = re.findall(r"[a-z0-9]+", (text if name is None else name).lower())
    slug = "-".join(words[:SLUG_WORDS])[:48].strip("-") or "prompt"
    keyed = f"{source}\n{text}" if source else text
    return f"{slug}-{hashlib.sha256(keyed.encode()).hexdigest()[:8]}"


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
    if len(keys) == 1:
        return record.get(keys[0])
    given = [record[k] for k in keys if record.get(k) is not None]
    return next((v for v in given if v != ""), given[0] if given else None)


def _make(path: Path | str, lineno: int, **values: Any) -> Prompt:
    try:
        return make_prompt(**values)
    except PromptError as err:
        raise PromptFileError(path, lineno, err.problem, err.fix) from None


def _parse_jsonl_line(path: Path, folder: Path, lineno: int, line: str) -> Prompt:
    try:
        record = parse_json(line)
    except ValueError as err:
        raise PromptFileError(path, lineno, str(err), "write one JSON object per line") from None
    if not isinstance(record, dict):
        raise PromptFileError(path, lineno, "not a JSON object", 'write objects like {"id": "...", "text": "..."}')
    given = set()
    for key in record:
        if key in _FIELD_OF:
            given.add(_FIELD_OF[key])
        elif known := near_miss(key):
            raise PromptFileError(path, lineno, f"unknown key {key!r}", f"did you mean {known!r}? (keys of your own "
                                  "are kept and ignored, unless they are this close to a key pixelwizard reads)")
    values = {name: _first(record, FIELDS[name].keys) for name in given}
    return _make(path, lineno, folder=folder, **values)


def read_prompts(path: Path) -> list[Prompt]:
    """Prompts of a .txt or .jsonl file; the format is taken from the first non-empty line ('{' means JSONL).

    JSONL keys: FIELDS' (id from `id`, else `prompt_id`; text from `text`, else `prompt`, else `caption`; optional
    `seed`, `negative_prompt` and a source file with its options). Texts are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    numbered = [(n, line.strip()) for n, line in read_lines(path) if line.strip()]
    if not numbered:
        raise PromptFileError(path, 1, "no prompts in file", "add one prompt per line")
    jsonl = numbered[0][1].startswith("{")
    folder = path.parent
    prompts = [_parse_jsonl_line(path, folder, n, line) if jsonl else _make(path, n, text=line)
               for n, line in numbered]
    return check_unique(prompts, path, [n for n, _ in numbered])


def prompts_jsonl(prompts: Sequence[Prompt]) -> str:
    """The run's copy of its prompts: JSON lines that `read_prompts` reads back to the same prompts, and that these
    prompts write again byte for byte."""
    return "".join(json_line(p.to_record()) for p in prompts)


def single_prompt(text: str, image: Path | None = None) -> list[Prompt]:
    """`--prompt TEXT` (and `--image FILE`, its first frame): one prompt, its id derived as for a line of a text
    file (a JSONL line naming the image)."""
    return [_make("--prompt", 1, text=text, image=None if image is None else str(image))]


def source_prompts(files: Sequence[Path], text: str, *, start: float | None = None,
                   fps: int | None = None) -> list[Prompt]:
    """`upscale FILE...`: one prompt per video (a saved anchor latent by its suffix), each with `text` (may be
    empty), its id derived as for a JSONL line naming the file."""
    prompts = []
    for n, file in enumerate(files, start=1):
        if Path(file).suffix.lower() not in LATENT_SUFFIXES:
            prompts.append(_make("upscale", n, text=text, video=str(file), start=start, fps=fps))
        elif start is not None or fps is not None:
            raise PromptFileError(file, 1, "--start and --fps take frames of a video, not of a saved latent",
                                  "leave them out, or upscale the latents apart")
        else:
            prompts.append(_make("upscale", n, text=text, latent=str(file)))
    return check_unique(prompts, "upscale", range(1, len(prompts) + 1))


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

