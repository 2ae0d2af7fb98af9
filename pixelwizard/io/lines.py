"""Files of lines: the one way every line file is read and written, the users' (prompt files, `--only` files) and
the run's own (its copies of them, the event log).

- UTF-8; a byte-order mark at the very start is dropped (many editors write one), anywhere else it is text.
- Lines end at "\\n" only (a "\\r" before it goes too, for files saved on Windows). Python's str.splitlines()
  also splits at U+2028, U+2029, U+0085 and a few control characters, all of which may sit inside a JSON string.
- JSON is strict: NaN and Infinity (not JSON, though Python's json reads them) and a key given twice are refused.
- A JSON line is written with its characters as they are (ensure_ascii=False), except the separators above, which
  are escaped: any line reader, however it splits, then sees one record a line, and the copy reads back to the same
  values and, written again, to the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BOM = "\ufeff"
_ESCAPED = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"}  # the rest is escaped by json.dumps


class LineFileError(ValueError):
    """A line of a file that cannot be used: `file:line: problem; fix`."""

    def __init__(self, path: Path | str, line: int, problem: str, fix: str):
        super().__init__(f"{path}:{line}: {problem}; {fix}")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a UTF-8 text file with their numbers (from 1), without their line ends."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise LineFileError(path, line, "not valid UTF-8", "save the file as UTF-8") from None
    lines = text.removeprefix(BOM).split("\n")
    if lines[-1] == "":
        lines.pop()  # the end of the last line
    return [(n, line.removesuffix("\r")) for n, line in enumerate(lines, start=1)]


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) < len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {twice!r} is given twice")
    return record


_DECODER = json.JSONDecoder(parse_constant=_not_json, object_pairs_hook=_unique_keys)


def parse_json(line: str) -> Any:
    """One line's JSON value; raises ValueError with what is wrong."""
    try:
        return _DECODER.decode(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON ({err.msg} at column {err.colno})") from None


def json_line(value: Any) -> str:
    """`value` as one line of JSON, "\\n" included (see the module note)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    for char, escape in _ESCAPED.items():
        text = text.replace(char, escape)
    return text + "\n"
