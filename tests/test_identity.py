"""Content identity of checkpoint files: full-content sha256, cached by path, size, mtime, ctime and inode."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from pixelwizard.checkpoints import wan_files
from pixelwizard.checkpoints.identity import CHUNK_BYTES, DigestCache, file_digest, files_digest
from pixelwizard.checkpoints.strict import CheckpointError
from pixelwizard.pipeline.run_config import RunConfig
from pixelwizard.pipeline.stages import CHECKPOINT_FILES


class Hashings:
    """A progress callback that records which files were hashed (read from the first byte to the last)."""

    def __init__(self):
        self.files = []

    def __call__(self, path, done, size):
        if done == size:
            self.files.append(path)


@pytest.fixture
def blob(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(3 << 20))
    return path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_digest_is_the_sha256_of_the_whole_file(blob, tmp_path):
    hashed = Hashings()
    assert file_digest(blob, DigestCache(tmp_path / "cache.json"), hashed) == sha256(blob)
    assert hashed.files == [blob.resolve()]


def test_an_edit_in_the_middle_changes_the_digest_even_with_the_mtime_restored(blob, tmp_path):
    cache = DigestCache(tmp_path / "cache.json")
    before = file_digest(blob, cache)
    stat = blob.stat()
    with open(blob, "r+b") as f:
        f.seek(stat.st_size // 2)
        byte = f.read(1)
        f.seek(stat.st_size // 2)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(blob, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, mtime and inode: only ctime moved
    after = file_digest(blob, cache)
    assert after != before and after == sha256(blob)


def test_a_touched_but_identical_file_is_hashed_again_and_keeps_its_digest(blob, tmp_path):
    cache = DigestCache(tmp_path / "cache.json")
    before = file_digest(blob, cache)
    os.utime(blob, ns=(time.time_ns(), blob.stat().st_mtime_ns + 1_000_000_000))
    hashed = Hashings()
    assert file_digest(blob, cache, hashed) == before
    assert hashed.files == [blob.resolve()]


def test_a_copied_file_is_hashed_again(blob, tmp_path):
    cache = DigestCache(tmp_path / "cache.json")
    before = file_digest(blob, cache)
    inode = blob.stat().st_ino
    shutil.copy2(blob, tmp_path / "copy")  # same bytes, size and mtime
    os.replace(tmp_path / "copy", blob)
    assert blob.stat().st_ino != inode
    hashed = Hashings()
    assert file_digest(blob, cache, hashed) == before
    assert hashed.files == [blob.resolve()]


def test_the_cache_file_is_reused_by_the_next_process(blob, tmp_path):
    digest = file_digest(blob, DigestCache(tmp_path / "out" / ".pixelwizard" / "file-digests.json"))
    entries = json.loads((tmp_path / "out" / ".pixelwizard" / "file-digests.json").read_text())
    assert entries[str(blob.resolve())]["sha256"] == digest
    assert entries[str(blob.resolve())]["size"] == blob.stat().st_size
    hashed = Hashings()
    assert file_digest(blob, DigestCache(tmp_path / "out" / ".pixelwizard" / "file-digests.json"), hashed) == digest
    assert hashed.files == []


def test_a_damaged_cache_file_only_costs_a_rehash(blob, tmp_path):
    (tmp_path / "cache.json").write_text('{"truncated": ')
    hashed = Hashings()
    assert file_digest(blob, DigestCache(tmp_path / "cache.json"), hashed) == sha256(blob)
    assert hashed.files == [blob.resolve()]
    assert str(blob.resolve()) in json.loads((tmp_path / "cache.json").read_text())


def test_progress_reports_every_chunk(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"\1" * (2 * CHUNK_BYTES + 5))
    seen = []
    file_digest(path, on_progress=lambda p, done, size: seen.append((done, size)))
    assert seen == [(CHUNK_BYTES, path.stat().st_size), (2 * CHUNK_BYTES, path.stat().st_size),
                    (2 * CHUNK_BYTES + 5, path.stat().st_size)]


def test_a_file_that_changes_while_hashed_is_refused_and_not_cached(tmp_path):
    path = tmp_path / "growing"
    path.write_bytes(b"\0" * (CHUNK_BYTES + 1))

    def still_being_copied(p, done, size):
        if done == CHUNK_BYTES:
            with open(path, "ab") as f:
                f.write(b"more")

    cache = DigestCache(tmp_path / "cache.json")
    with pytest.raises(CheckpointError, match="changed while it was being hashed; wait until it is fully written"):
        file_digest(path, cache, still_being_copied)
    assert not (tmp_path / "cache.json").exists()


SAVER = """
import os, sys
from pathlib import Path
from pixelwizard.checkpoints.identity import DigestCache, file_digest
cache_path, file, rounds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for i in range(rounds):
    os.utime(file, ns=(i, i * 1000))  # a new mtime: every round hashes and saves again
    file_digest(file, DigestCache(cache_path))
"""


def test_concurrent_saves_never_leave_a_torn_cache(tmp_path):
    cache_path = tmp_path / "file-digests.json"
    files = []
    for i in range(2):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(os.urandom(1 << 16) * 16)
    savers = [subprocess.Popen([sys.executable, "-c", SAVER, str(cache_path), str(f), "60"]) for f in files]
    reads = 0
    while any(p.poll() is None for p in savers):
        if cache_path.exists():
            json.loads(cache_path.read_text())  # never half-written
            reads += 1
    assert [p.returncode for p in savers] == [0, 0] and reads > 0
    entries = json.loads(cache_path.read_text())
    assert entries and set(entries) <= {str(f.resolve()) for f in files}
    assert all(entry["sha256"] == sha256(tmp_path / os.path.basename(name)) for name, entry in entries.items())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def role_digests(paths, cache):
    config = RunConfig(ckpt_dir=str(paths["ckpt_dir"]), hr_ckpt=str(paths["hr_ckpt"]), lr_ckpt=str(paths["lr_ckpt"]))
    base = dataclasses.replace(config, lr_ckpt=None)
    roles = {role: files(config) for role, files in CHECKPOINT_FILES.items()}
    roles["dit"] = CHECKPOINT_FILES["lr_dit"](base)  # the base DiT, when no LR checkpoint is given
    return {role: files_digest(files, paths["ckpt_dir"], cache) for role, files in roles.items()}


def test_each_role_digest_covers_its_files_and_only_them(weights, tmp_path):
    root = weights["ckpt_dir"].parent
    shutil.copytree(root, tmp_path / "w")
    paths = {name: tmp_path / "w" / p.relative_to(root) for name, p in weights.items()}
    cache = DigestCache(tmp_path / "cache.json")
    before = role_digests(paths, cache)
    assert len(set(before.values())) == 5
    ckpt = paths["ckpt_dir"]
    edits = {"dit": ckpt / wan_files.DIT_INDEX, "t5": ckpt / wan_files.TOKENIZER_DIR / "tokenizer_config.json",
             "vae": ckpt / wan_files.VAE_CONFIG}
    for role, path in edits.items():
        path.write_text(path.read_text() + " ")
        after = role_digests(paths, cache)
        assert {r for r in after if after[r] != before[r]} == {role}
        before = after
    config = ckpt / wan_files.DIT_CONFIG  # the DiT's architecture is part of every DiT role
    config.write_text(config.read_text() + " ")
    after = role_digests(paths, cache)
    assert {r for r in after if after[r] != before[r]} == {"dit", "lr_dit", "hr_dit"}
    shutil.move(tmp_path / "w", tmp_path / "moved")  # a moved checkpoint keeps its identity
    moved = {name: tmp_path / "moved" / p.relative_to(tmp_path / "w") for name, p in paths.items()}
    assert role_digests(moved, cache) == after
