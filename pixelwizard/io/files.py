"""Writing outputs: inside their folder, whole or not at all, never over what pixelwizard did not make.

Every file the project writes goes through here, with the folder it must stay in (`root`: OUT for a run, the given
folder for the Python API and the tiny weights):

- No folder between `root` and the output may be a symbolic link or a file: nothing is followed out of `root`.
  Missing folders are created, one by one, the same way.
- What sits at the output path is replaced only when pixelwizard made it: a regular file (an older output), or for a
  directory output what its writer recognises as its own (`ours`, e.g. a zarr store). A directory, or anything
  else, in the way is refused with one line and never deleted. A symbolic link at the output path is replaced by
  the output itself; its target is never written.
- An output is written under a hidden temporary sibling and renamed into place when complete, so a reader sees the
  old output or the new one, never half of one. Temporaries left by killed writers are collected later.

    .<name>.tmp-<pid>-<hex>        the temporary sibling of <name> (a file or a directory)
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
Ours = Callable[[Path], bool]  # whether what sits at an output path is an output of ours, which may be replaced


class OutputPathError(ValueError):
    """An output that would leave its folder, or replace something pixelwizard did not make."""


def is_regular_file(path: Path) -> bool:
    return stat.S_ISREG(os.lstat(path).st_mode)


def _folders(path: Path, root: Path) -> list[Path]:
    """The folders from `root` (excluded) down to `path`'s own; refuses a `path` outside `root`."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        raise OutputPathError(f"{path}: outside {root}, the folder it belongs in") from None
    if not parts or ".." in parts:
        raise OutputPathError(f"{path}: not a path inside {root}")
    return [Path(root).joinpath(*parts[:i]) for i in range(1, len(parts))]


def _check_folder(folder: Path, root: Path, mode: int) -> None:
    if stat.S_ISLNK(mode):
        raise OutputPathError(f"{folder}: a symbolic link (to {os.readlink(folder)}); pixelwizard writes only inside "
                              f"{root} and never through a link: make it a real folder, then run again")
    if not stat.S_ISDIR(mode):
        raise OutputPathError(f"{folder}: not a folder, but pixelwizard writes into a folder there; move it away, "
                              "then run again")


def check_outputs(paths: Iterable[Path], root: Path, *, ours: Ours = is_regular_file) -> None:
    """Refuse (OutputPathError) any output of `paths` that would leave `root` or replace what pixelwizard did not
    make (see the module note); each folder is looked at once. Creates and changes nothing: dry runs check so too."""
    checked: set[Path] = set()
    for path in map(Path, paths):
        for folder in _folders(path, root):
            if folder not in checked:
                try:
                    _check_folder(folder, root, os.lstat(folder).st_mode)
                except FileNotFoundError:
                    break  # created on writing, empty
                checked.add(folder)
        else:
            _check_target(path, ours)


def _check_target(path: Path, ours: Ours) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISLNK(mode) and not ours(path):
        kind = "a directory" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else "something"
        raise OutputPathError(f"{path}: {kind} that pixelwizard did not make is in the way, and pixelwizard never "
                              "deletes what it did not make; move it away (or choose another output), then run again")


def check_output(path: Path, root: Path | None = None, *, ours: Ours = is_regular_file) -> None:
    """`check_outputs` for one output; `root` defaults to the output's own folder."""
    path = Path(path)
    check_outputs([path], path.parent if root is None else root, ours=ours)


def check_folder(folder: Path, root: Path) -> None:
    """Refuse (OutputPathError) a link or a file at `folder` or between it and `root`; missing folders are fine."""
    if Path(folder) == Path(root):
        return
    for each in [*_folders(folder, root), Path(folder)]:
        try:
            _check_folder(each, root, os.lstat(each).st_mode)
        except FileNotFoundError:
            return


def make_folders(path: Path, root: Path | None = None) -> None:
    """Create `root` (default: `path`'s own folder) as the caller named it, then the missing folders between it and
    `path`, one by one, refusing a link or a file among them (OutputPathError)."""
    path = Path(path)
    root = path.parent if root is None else Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for folder in _folders(path, root):
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
        _check_folder(folder, root, os.lstat(folder).st_mode)


def temp_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path` (same directory, so the final rename is atomic)."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def publish(tmp: Path, path: Path, root: Path | None = None, *, ours: Ours = is_regular_file) -> None:
    """Rename the finished `tmp` (file or directory) to `path` inside `root` (default: `path`'s own folder),
    replacing what is there if `ours` says pixelwizard made it, or a symbolic link (the link, never its target)."""
    path = Path(path)
    check_output(path, root, ours=ours)
    if not stat.S_ISDIR(os.lstat(tmp).st_mode) or not os.path.lexists(path):
        os.replace(tmp, path)  # a file replaces a file or a link in one step
        return
    # rename(2) cannot put a directory over a non-empty directory or a link: swap the old one aside, move the new one
    # in, then delete the old. Between the two renames (microseconds) nothing is at `path`; a crash there leaves the
    # old one in a temp sibling that remove_stale_temps() collects.
    old = temp_sibling(path)
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    remove_temp(old)


@contextmanager
def staged(path: Path, root: Path | None = None, *, directory: bool = False,
           ours: Ours = is_regular_file) -> Iterator[Path]:
    """Write an output at `path` inside `root` (default: `path`'s own folder): checked first, then the block
    writes the temporary sibling it is given (a fresh directory when `directory`), published when the block ends
    cleanly and removed otherwise."""
    path = Path(path)
    make_folders(path, root)
    check_output(path, root, ours=ours)
    tmp = temp_sibling(path)
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        publish(tmp, path, root, ours=ours)
    except BaseException:
        remove_temp(tmp)
        raise


def publish_tree(build: Path, root: Path) -> list[Path]:
    """Move every file of the finished folder `build` to the same place under `root`, once every destination has
    been checked (so a refusal changes nothing in `root`); returns the destinations."""
    made = sorted(p for p in Path(build).rglob("*") if p.is_file())
    targets = [Path(root) / p.relative_to(build) for p in made]
    check_outputs(targets, root)
    for source, target in zip(made, targets):
        make_folders(target, root)
        publish(source, target, root)
    return targets


def write_atomic(path: Path, content: str | bytes, root: Path | None = None) -> None:
    """Write a small file whole or not at all, inside `root` (default: its own folder)."""
    with staged(path, root) as tmp:
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        else:
            tmp.write_bytes(content)


def open_output(path: Path, root: Path | None = None, *, append: bool, read: bool = False) -> IO[str]:
    """A text file inside `root` (default: its own folder) to write as it goes (logs, locks): appended to, or
    emptied first, and read too with `read` (a lock that holds a record); a symbolic link at `path` is refused
    rather than followed."""
    path = Path(path)
    make_folders(path, root)
    check_output(path, root)
    flags = (os.O_RDWR if read else os.O_WRONLY) | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutputPathError(f"{path}: a symbolic link; pixelwizard does not write through links: remove it, "
                                  "then run again") from None
        raise
    return os.fdopen(fd, ("a" if append else "w") + ("+" if read else ""), encoding="utf-8")


def remove_output(path: Path, root: Path | None = None) -> None:
    """Delete an output of ours (a file, or a link: never its target) inside `root`; absent is fine."""
    check_output(path, root)
    Path(path).unlink(missing_ok=True)


def remove_temp(tmp: Path) -> None:
    """Drop an unfinished temporary (file, directory or link) after a failed write."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(tmp).st_mode)
    except FileNotFoundError:
        return
    if is_dir:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, owned by another user
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temps(parent: Path, root: Path | None = None, min_age_s: float = 3600.0) -> int:
    """Delete temporaries left by crashed writers in the folder `parent` inside `root` (default: `parent` itself);
    returns how many were removed.

    A temporary is removed only if its writer pid is not alive on this host AND it was last modified at least
    `min_age_s` ago. The age guard is what makes this safe on a shared filesystem, where a pid says nothing about
    writers on other nodes; pass 0 only when every writer runs on this host.
    """
    parent, cutoff = Path(parent), time.time() - min_age_s
    if root is not None:
        check_folder(parent, root)
    if not parent.is_dir():
        return 0
    stale = [entry for entry in parent.iterdir()
             if (match := _TEMP_RE.match(entry.name)) and not _pid_alive(int(match.group(1)))
             and entry.lstat().st_mtime <= cutoff]
    for entry in stale:
        remove_temp(entry)
    return len(stale)


def file_stamp(path: Path | os.DirEntry) -> list[int]:
    """A file's size, mtime and inode, recorded when an output is written and compared by `unchanged`."""
    st = path.stat(follow_symlinks=False)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def unchanged(recorded: object, stamp: list[int]) -> bool:
    """Whether a file still holds what it held when `recorded` was taken: the same size and the same mtime, to the
    nanosecond. Any write sets the mtime to the time of the write, a truncation changes the size; a copy made
    with `cp -a` or `rsync -a`, or a move to another file system, keeps both, so a copied run is not read again
    (only its inodes differ). A file edited and then given back its old mtime on purpose would pass."""
    return isinstance(recorded, list) and recorded[:2] == stamp[:2]


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
