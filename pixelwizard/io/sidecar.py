"""The JSON sidecar that completes media outputs (an MP4, its contact sheet): written last, beside them, it records
the provenance and each file's sha256 and stamp (size, mtime, inode). Without it the media files do not count.

    verify_sidecar()   cheap while every file is unchanged (files.unchanged: a copy passes); otherwise the file is
                       hashed again and, when intact, its stamp renewed
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pixelwizard.io.files import file_stamp, sha256_file, unchanged, write_atomic


class SidecarError(RuntimeError):
    """Media outputs that are absent, incomplete or damaged; the message says which file."""


def write_sidecar(path: Path, attrs: Mapping[str, Any], files: Iterable[Path]) -> None:
    """Record `attrs` and the digests of `files` (already in place, beside `path`) in the sidecar at `path`."""
    digests = {f.name: {"sha256": sha256_file(f), "stamp": file_stamp(f)} for f in files}
    write_atomic(path, json.dumps({**attrs, "files": digests}, ensure_ascii=False, indent=1))


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        attrs = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except (OSError, ValueError):
        raise SidecarError(f"{path}: unreadable") from None
    if not isinstance(attrs, dict) or not isinstance(attrs.get("files"), dict):
        raise SidecarError(f"{path}: not a PixelWizard sidecar")
    return attrs


def verify_sidecar(path: Path) -> dict[str, Any]:
    """The sidecar's attributes when every file it lists is present and intact; raises FileNotFoundError or
    SidecarError."""
    path = Path(path)
    attrs = read_sidecar(path)
    renewed = False
    for name, entry in attrs["files"].items():
        file = path.parent / name
        try:
            stamp = file_stamp(file)
        except FileNotFoundError:
            raise SidecarError(f"{file}: missing") from None
        if not unchanged(entry["stamp"], stamp):
            if sha256_file(file) != entry["sha256"]:
                raise SidecarError(f"{file}: content differs from when it was written")
            entry["stamp"], renewed = stamp, True
    if renewed:
        write_atomic(path, json.dumps(attrs, ensure_ascii=False, indent=1))
    return attrs
