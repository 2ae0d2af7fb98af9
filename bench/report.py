"""Shared by the bench scripts: print a result line and append it to the --out json-lines file."""

from __future__ import annotations


def report(line: str, out: str | None) -> None:
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
