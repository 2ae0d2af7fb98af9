import pytest
import torch
from torch import nn

from pixelwizard.checkpoints.strict import CheckpointError, assign_state_dict, read_torch_file


def make_module() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))


def test_assign_loads_into_meta_module_and_casts(tmp_path):
    torch.manual_seed(0)
    source = make_module()
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    with torch.device("meta"):
        target = make_module()
    assign_state_dict(target, read_torch_file(path), source=path, layout="test layout", dtype=torch.bfloat16)
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
        assign_state_dict(target, read_torch_file(path), source=path, layout="test layout")
    assert str(path) in str(err.value) and fragment in str(err.value) and "test layout" in str(err.value)


def test_missing_and_unsafe_files(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        read_torch_file(tmp_path / "absent.pth")
    path = tmp_path / "pickled.pth"
    torch.save({"w": torch.zeros(1), "obj": object}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        read_torch_file(path)
