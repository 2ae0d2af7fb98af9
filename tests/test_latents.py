import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import torch
import zarr

from pixelwizard.io.files import remove_stale_temps
from pixelwizard.io.latent_store import (
    FORMAT_VERSION,
    CorruptStoreError,
    IncompleteStoreError,
    read_store,
    store_attrs,
    verify_store,
    write_store,
)
from pixelwizard.pipeline.provenance import provenance_digest

REPO = Path(__file__).resolve().parents[1]


def _temps(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def _bits(t: torch.Tensor) -> torch.Tensor:  # compare floats by bit pattern: NaN == NaN, -0.0 != 0.0
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16}.get(t.dtype, t.dtype))


def test_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    arrays = {
        "latent": torch.randn(48, 3, 4, 6) * 1e3,
        "latent_bf16": torch.randn(48, 3, 4, 6).to(torch.bfloat16),
        "context": torch.randn(7, 16),
        "special": torch.tensor([float("nan"), float("inf"), -0.0, 1e-40]),
        "tokens": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
    }
    path = tmp_path / "p0.zarr"
    write_store(path, arrays, {"prompt": "a fox", "seed": 7, "size": [256, 448]})

    tensors, attrs = read_store(path)
    assert set(tensors) == set(arrays)
    for name, tensor in arrays.items():
        assert tensors[name].dtype == tensor.dtype and torch.equal(_bits(tensors[name]), _bits(tensor)), name
    expected = {"prompt": "a fox", "seed": 7, "size": [256, 448], "complete": True, "format_version": FORMAT_VERSION}
    assert {k: v for k, v in attrs.items() if k != "files"} == expected
    assert set(attrs["files"]) == {p.relative_to(path).as_posix() for p in path.rglob("*")
                                   if p.is_file() and p != path / "zarr.json"}
    assert store_attrs(path) == attrs
    only, _ = read_store(path, ["latent_bf16"])
    assert list(only) == ["latent_bf16"] and only["latent_bf16"].dtype == torch.bfloat16
    with pytest.raises(KeyError, match="missing"):
        read_store(path, ["missing"])
    assert _temps(tmp_path) == []


def test_layout_chunks_and_bf16_bits(tmp_path):
    path = tmp_path / "p.zarr"
    write_store(path, {"lat": torch.zeros(48, 5, 6, 7, dtype=torch.bfloat16), "ctx": torch.ones(9, 4)}, {})
    group = zarr.open_group(path, mode="r")
    assert group["lat"].chunks == (48, 1, 6, 7) and group["lat"].shards == (48, 5, 6, 7)  # a chunk per frame
    assert group["lat"].dtype == "uint16" and group["lat"].attrs["logical_dtype"] == "bfloat16"
    assert group["ctx"].chunks == (9, 4) and group["ctx"].shards is None and group["ctx"].dtype == "float32"
    [sharding] = json.loads((path / "lat" / "zarr.json").read_text())["codecs"]
    assert {"name": "zstd", "configuration": {"level": 3, "checksum": False}} in sharding["configuration"]["codecs"]
    assert {"name": "crc32c"} in sharding["configuration"]["index_codecs"]
    files = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file())
    assert files == ["ctx/c/0/0", "ctx/zarr.json", "lat/c/0/0/0/0", "lat/zarr.json", "zarr.json"]  # 5 frames, 1 shard


def test_incomplete_or_missing_store_is_never_returned(tmp_path):
    missing = tmp_path / "missing.zarr"
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        read_store(missing)
    assert store_attrs(missing) is None

    half = tmp_path / "half.zarr"  # what a writer that skips the completion attr would leave
    group = zarr.open_group(half, mode="w", zarr_format=3)
    group.create_array("lat", shape=(2, 2), dtype="float32").__setitem__(..., 1.0)
    group.attrs.update({"seed": 1})
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    for path in (half, empty):
        with pytest.raises(IncompleteStoreError, match=f"{path.name}.*re-run"):
            read_store(path)
        assert store_attrs(path) is None


def test_replace_swaps_in_the_new_store(tmp_path):
    path = tmp_path / "p.zarr"
    write_store(path, {"x": torch.zeros(3), "stale": torch.zeros(1)}, {"run": "old"})
    write_store(path, {"x": torch.ones(3)}, {"run": "new"})
    tensors, attrs = read_store(path)
    assert list(tensors) == ["x"] and torch.equal(tensors["x"], torch.ones(3)) and attrs["run"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]


@pytest.mark.parametrize("arrays, attrs, error", [
    ({"x": torch.ones(4)}, {"run": "new", "device": torch.device("cpu")}, TypeError),
    # the meta tensor cannot be copied to the CPU, after "x" was already written into the temp store
    ({"x": torch.ones(4), "y": torch.empty(4, device="meta")}, {"run": "new"}, NotImplementedError),
])
def test_failed_replace_keeps_old_store_and_no_temps(tmp_path, arrays, attrs, error):
    path = tmp_path / "p.zarr"
    write_store(path, {"x": torch.arange(4.0)}, {"run": "old"})
    with pytest.raises(error):
        write_store(path, arrays, attrs)
    tensors, old_attrs = read_store(path)
    assert torch.equal(tensors["x"], torch.arange(4.0)) and old_attrs["run"] == "old"
    assert _temps(tmp_path) == []


@pytest.mark.parametrize("key, value", [("ids", {1, 2}), ("dtype", torch.float32), ("scale", float("nan"))])
def test_attrs_must_be_json(tmp_path, key, value):
    with pytest.raises(TypeError, match=repr(key)):
        write_store(tmp_path / "p.zarr", {"x": torch.ones(1)}, {"seed": 1, key: value})
    with pytest.raises(ValueError, match="reserved"):
        write_store(tmp_path / "p.zarr", {"x": torch.ones(1)}, {"complete": False})
    assert list(tmp_path.iterdir()) == []


_STALLING_WRITER = textwrap.dedent("""
    import sys, time
    from collections.abc import Mapping
    from pathlib import Path
    import torch
    from pixelwizard.io.latent_store import write_store

    class Stalls(Mapping):  # hands over one real tensor, then blocks: the writer is mid-store when it is killed
        def __iter__(self):
            return iter(["first", "second"])
        def __len__(self):
            return 2
        def __getitem__(self, key):
            if key == "first":
                return torch.full((4, 3, 5, 6), 9.0)
            print("stalled", flush=True)
            time.sleep(120)

    write_store(Path(sys.argv[1]), Stalls(), {"run": "new"})
""")


def test_sigkilled_writer_leaves_old_store_and_a_collectable_temp(tmp_path):
    path = tmp_path / "p.zarr"
    write_store(path, {"x": torch.arange(3.0)}, {"run": "old"})
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-c", _STALLING_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout.readline().strip() == "stalled"
        (temp,) = [tmp_path / name for name in _temps(tmp_path)]
        assert (temp / "first" / "zarr.json").is_file()
        # the killed writer's half store is neither visible at the path nor readable
        with pytest.raises(IncompleteStoreError):
            read_store(temp)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    tensors, attrs = read_store(path)
    assert torch.equal(tensors["x"], torch.arange(3.0)) and attrs["run"] == "old"
    assert remove_stale_temps(tmp_path) == 0  # too young under the default age guard
    assert remove_stale_temps(tmp_path, min_age_s=0) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"]


def test_remove_stale_temps_spares_live_writers_and_other_entries(tmp_path):
    live = tmp_path / f".p.zarr.tmp-{os.getpid()}-abcd1234"
    live.mkdir()
    dead = tmp_path / ".q.zarr.tmp-999999999-00ff00ff"  # above any pid_max
    dead.mkdir()
    young = tmp_path / ".s.zarr.tmp-999999999-0000aaaa"
    young.mkdir()
    old = time.time() - 7200
    for temp in (live, dead):
        os.utime(temp, (old, old))
    (tmp_path / "r.zarr").mkdir()
    (tmp_path / ".notes.tmp-1").mkdir()
    assert remove_stale_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp-1", live.name, young.name, "r.zarr"]
    assert remove_stale_temps(tmp_path / "absent") == 0


def test_provenance_digest():
    base = {"seed": 7, "stage": "lr", "model": {"ckpt": "a.pt", "steps": 50}, "size": [448, 256]}
    digest = provenance_digest(base)
    assert len(digest) == 64 and int(digest, 16) >= 0
    reordered = {"size": [448, 256], "model": {"steps": 50, "ckpt": "a.pt"}, "stage": "lr", "seed": 7}
    assert provenance_digest(reordered) == digest
    variants = [
        {**base, "seed": 8},
        {**base, "stage": "hr"},
        {**base, "model": {"ckpt": "a.pt", "steps": 51}},
        {**base, "size": [256, 448]},
        {**base, "extra": None},
        {**base, "seed": 7.0},
    ]
    assert len({provenance_digest(v) for v in variants} | {digest}) == len(variants) + 1


def _chunk(path: Path) -> Path:
    return path / "latent" / "c" / "0" / "0" / "0" / "0"  # the one shard


@pytest.fixture
def latent_store(tmp_path):
    path = tmp_path / "hr.zarr"
    write_store(path, {"latent": torch.randn(4, 3, 5, 6)}, {"digest": "d"})
    return path


def test_an_untouched_store_verifies_from_its_stamps_alone(latent_store, monkeypatch):
    from pixelwizard.io import latent_store as store

    monkeypatch.setattr(store, "_check_chunks", lambda path: pytest.fail("read the chunks of an untouched store"))
    assert verify_store(latent_store)["digest"] == "d"


def test_flipped_bytes_are_found_by_the_check_and_by_readers(latent_store):
    chunk = _chunk(latent_store)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # 1 byte inside the compressed payload: size unchanged, mtime moves
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="shard latent/c/0/0/0/0 fails its checksum"):
        verify_store(latent_store)
    with pytest.raises(CorruptStoreError, match="corrupt store"):
        read_store(latent_store)


def test_a_format_2_store_with_a_file_per_frame_is_still_read_and_checked(tmp_path):
    from pixelwizard.io import latent_store as store

    path, latent = tmp_path / "old.zarr", torch.randn(4, 3, 5, 6)
    array = zarr.open_group(path, mode="w", zarr_format=3).create_array(  # as format 2 wrote it: no shards
        "latent", shape=latent.shape, dtype="float32", chunks=(4, 1, 5, 6), fill_value=0,
        compressors=[zarr.codecs.ZstdCodec(level=3), zarr.codecs.Crc32cCodec()], config={"write_empty_chunks": True})
    array[...] = latent.numpy()
    attrs = {"digest": "d", "format_version": 2, "files": store._stamps(path), "complete": True}
    store._write_group_attrs(path, attrs, path)
    assert verify_store(path)["digest"] == "d" and torch.equal(read_store(path)[0]["latent"], latent)
    chunk = path / "latent" / "c" / "0" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="chunk latent/c/0/1/0/0 fails its checksum"):
        verify_store(path)


@pytest.mark.parametrize("damage", ["truncate", "delete", "empty", "unwritten", "uncomplete", "format"])
def test_truncated_deleted_or_uncompleted_stores_are_not_accepted(latent_store, damage):
    chunk = _chunk(latent_store)
    if damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:-7])
    elif damage == "delete":
        chunk.unlink()
    elif damage == "empty":  # zarr reads an empty shard as zeros
        chunk.write_bytes(b"")
    elif damage == "unwritten":  # an index (with its right crc32c) marking the chunks unwritten: zeros too
        index = b"\xff" * 16 * 3
        chunk.write_bytes(index + np.uint32(google_crc32c.value(index)).tobytes())
    elif damage == "format":
        meta = json.loads((latent_store / "zarr.json").read_text())
        meta["attributes"]["format_version"] = 1
        (latent_store / "zarr.json").write_text(json.dumps(meta))
    else:
        meta = json.loads((latent_store / "zarr.json").read_text())
        del meta["attributes"]["complete"]
        (latent_store / "zarr.json").write_text(json.dumps(meta))
    error = IncompleteStoreError if damage == "uncomplete" else CorruptStoreError
    with pytest.raises(error):
        verify_store(latent_store)
    if damage in ("truncate", "empty", "unwritten"):  # a reader refuses it too, whatever its stamps say
        with pytest.raises(CorruptStoreError):
            read_store(latent_store)
    if damage == "uncomplete":
        assert store_attrs(latent_store) is None


def test_a_copied_store_is_not_read_again_but_a_changed_copy_is(latent_store, tmp_path, monkeypatch):
    from pixelwizard.io import latent_store as store

    copy = tmp_path / "copy.zarr"
    subprocess.run(["cp", "-a", str(latent_store), str(copy)], check=True)  # same sizes and mtimes, new inodes
    meta = (copy / "zarr.json").read_bytes()
    with monkeypatch.context() as patched:
        patched.setattr(store, "_check_chunks", lambda path: pytest.fail("read the chunks of a copied store"))
        assert verify_store(copy)["digest"] == "d"
    assert (copy / "zarr.json").read_bytes() == meta  # nothing to renew
    assert torch.equal(read_store(copy)[0]["latent"], read_store(latent_store)[0]["latent"])
    chunk = _chunk(copy)
    os.utime(chunk, ns=(chunk.stat().st_atime_ns, chunk.stat().st_mtime_ns + 10**9))  # touched, the same content
    assert verify_store(copy)["digest"] == "d"  # read and checked in full; a read-only check changes nothing
    assert (copy / "zarr.json").read_bytes() == meta
    assert verify_store(copy, renew_in=tmp_path)["digest"] == "d"  # a run's check re-stamps it
    assert json.loads((copy / "zarr.json").read_text())["attributes"]["files"] == verify_store(copy)["files"] != \
        json.loads(meta)["attributes"]["files"]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size; the write moves the mtime
    chunk.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="fails its checksum"):
        verify_store(copy)
