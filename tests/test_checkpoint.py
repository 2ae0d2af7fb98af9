import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pixelwizard.checkpoints.strict import (
    CheckpointError,
    assign_state_dict,
    read_safetensors_header,
    read_torch_file,
)


def make_module() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))


def test_assign_loads_into_meta_module_and_casts(tmp_path):
    torch.manual_seed(0)
    source = make_module()
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    with torch.device("meta"):
        target = make_module().to(torch.bfloat16)
    assign_state_dict(target, read_torch_file(path), source=path, layout="test layout", fix="the fix")
    assert target[0].weight.dtype == torch.bfloat16
    assert not target[0].weight.is_meta
    torch.testing.assert_close(target[0].weight.float(), source[0].weight.bfloat16().float())


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda sd: sd.pop("0.bias"), "missing keys: 0.bias"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected keys: extra.weight"),
        (lambda sd: sd.__setitem__("1.weight", torch.zeros(4)), "wrong shapes: 1.weight (4,) (expected (3,))"),
    ],
)
def test_malformed_state_dicts_name_file_and_key(tmp_path, edit, fragment):
    sd = make_module().state_dict()
    edit(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with torch.device("meta"):
        target = make_module()
    with pytest.raises(CheckpointError) as err:
        assign_state_dict(target, read_torch_file(path), source=path, layout="test layout", fix="the fix")
    assert str(path) in str(err.value) and fragment in str(err.value) and "test layout" in str(err.value)
    assert str(err.value).endswith("; the fix") and "\n" not in str(err.value)


def test_missing_and_unsafe_files(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        read_torch_file(tmp_path / "absent.pth")
    path = tmp_path / "pickled.pth"
    torch.save({"w": torch.zeros(1), "obj": object}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_torch_file(path)


def test_mixed_dtype_module_gets_each_tensor_in_its_own_dtype(tmp_path):
    source = make_module()
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    with torch.device("meta"):
        target = make_module()
        target[0].to(torch.bfloat16)
    assign_state_dict(target, read_torch_file(path), source=path, layout="test layout", fix="the fix")
    assert target[0].weight.dtype == torch.bfloat16 and target[1].weight.dtype == torch.float32
    assert torch.equal(target[1].weight, source[1].weight)


def test_truncated_torch_file_is_named_as_such(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(make_module().state_dict(), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as err:
            read_torch_file(path)
        assert str(err.value) == (f"{path}: not a complete torch zip archive (truncated, damaged, or not a torch "
                                  "checkpoint); copy or download it again")


def write_safetensors(path, tensors):
    save_file(tensors, path)
    return path.read_bytes()


def test_safetensors_header_gives_shapes_without_the_data(tmp_path):
    path = tmp_path / "s.safetensors"
    data = write_safetensors(path, {"a": torch.randn(3, 5), "b": torch.zeros(7, dtype=torch.bfloat16)})
    assert read_safetensors_header(path) == {"a": torch.Size([3, 5]), "b": torch.Size([7])}
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    path.write_bytes(data[:header_end] + b"\xff" * (len(data) - header_end))  # garbage tensor bytes
    assert read_safetensors_header(path) == {"a": torch.Size([3, 5]), "b": torch.Size([7])}


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d[:-4], "truncated: the header lists 74 bytes of tensor data, the file holds 70; copy or download"),
    (lambda d: d + b"\0" * 6, "longer than its header says: the header lists 74 bytes of tensor data, the file "
                              "holds 80"),
    (lambda d: d[:5], "truncated or not a safetensors file (5 bytes, no complete header)"),
    (lambda d: d[:40], "truncated or not a safetensors file (40 bytes, no complete header)"),
    (lambda d: d[:8] + b"[" + d[9:], "damaged safetensors header"),
])
def test_damaged_safetensors_are_named_with_the_fix(tmp_path, edit, fragment):
    path = tmp_path / "s.safetensors"
    data = write_safetensors(path, {"a": torch.randn(3, 5), "b": torch.zeros(7, dtype=torch.bfloat16)})
    path.write_bytes(edit(data))
    with pytest.raises(CheckpointError) as err:
        read_safetensors_header(path)
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)
    assert str(err.value).endswith("copy or download it again")


def test_safetensors_header_entry_that_does_not_fill_its_bytes(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 40]}}
    raw = json.dumps(header).encode()
    path = tmp_path / "s.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 40)
    with pytest.raises(CheckpointError, match=r"a \(3, 5\) F32 does not fill its 40 bytes"):
        read_safetensors_header(path)
