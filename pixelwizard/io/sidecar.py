"""The JSON sidecar that completes media outputs (an MP4, its contact sheet): written last, beside them, it records
the provenance and each file's sha256 and stamp (size, mtime, inode). Without it the media files do not count.

    verify_sidecar()   cheap while every file is unchanged (files.unchanged: a copy passes); otherwise the file is
                       hashed again and, when intact, its stamp renewed if the caller writes in the run (read-only
                       callers leave it)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pixelwizard.io.files import OutputPathError, file_stamp, sha256_file, unchanged, write_atomic


class SidecarError(RuntimeError):
    """Media outputs that are absent, incomplete or damaged; the message says which file."""


def write_sidecar(path: Path, attrs: Mapping[str, Any], files: Iterable[Path], root: Path | None = None) -> None:
    """Record `attrs` and the digests of `files` (already in place, beside `path`) in the sidecar at `path`, inside
    `root` (default: its own folder)."""
    digests = {f.name: {"sha256": sha256_file(f), "stamp": file_stamp(f)} for f in files}
    write_atomic(path, json.dumps({**attrs, "files": digests}, ensure_ascii=False, indent=1), root)


def read_sidecar(path: Path) -> dict[str, Any]:
    try:
        attrs = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except (OSError, ValueError):
        raise SidecarError(f"{path}: unreadable") from None
    if not isinstance(attrs, dict) or not isinstance(attrs.get("files"), dict):
        raise SidecarError(f"{path}: not a PixelWizard sidecar")
    return attrs


def verify_sidecar(path: Path, renew_in: Path | None = None) -> dict[str, Any]:
    """The sidecar's attributes when every file it lists is present and intact; raises FileNotFoundError or
    SidecarError. A file whose stamp changed is re-hashed; with `renew_in` (the run's folder, for callers that may
    write in it), the new stamps are recorded."""
    path = Path(path)
    attrs = read_sidecar(path)
    renewed = False
    for name, entry in attrs["files"].items():
        file = path.parent / name
        try:
            stamp = file_stamp(file)
            same = unchanged(entry["stamp"], stamp)
            intact = same or sha256_file(file) == entry["sha256"]
        except FileNotFoundError:
            raise SidecarError(f"{file}: missing") from None
        except OSError as err:  # a folder in its place, say
            raise SidecarError(f"{file}: unreadable ({err.strerror})") from None
        if not intact:
            raise SidecarError(f"{file}: content differs from when it was written")
        if not same:
            entry["stamp"], renewed = stamp, True
    if renewed and renew_in is not None:
        try:
            write_atomic(path, json.dumps(attrs, ensure_ascii=False, indent=1), renew_in)
        except (OutputPathError, OSError):  # reached through a link, a read-only copy: the next check hashes again
            pass
    return attrs
