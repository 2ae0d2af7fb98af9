"""The up-front checkpoint check on tiny checkpoints written in the real layouts, damaged the ways users damage them."""

import dataclasses
import json
import shutil
import struct
import zipfile

import pytest
import torch

from pixelwizard.checkpoints import wan, wan_files
from pixelwizard.checkpoints.preflight import CheckpointProblems, check_checkpoints
from pixelwizard.checkpoints.strict import CheckpointError
from pixelwizard.checkpoints.tiny import TINY_DIT, randomize_, write_hollow_dit, write_tiny_weights
from pixelwizard.checkpoints.trainer import save_trainer_checkpoint
from pixelwizard.models.config import DiTConfig, config_to_json
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.pipeline import checks
from pixelwizard.pipeline.run_config import RunConfig

SHARD_1 = "diffusion_pytorch_model-00001-of-00003.safetensors"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_tiny_weights(tmp_path_factory.mktemp("weights"), seed=0)


@pytest.fixture
def weights(pristine, tmp_path):
    """A private copy of the tiny weights: ckpt_dir, lr_ckpt, hr_ckpt."""
    root = pristine["ckpt_dir"].parent
    shutil.copytree(root, tmp_path / "w")
    return {name: tmp_path / "w" / path.relative_to(root) for name, path in pristine.items()}


def problems(weights):
    """The problem lines of the check (empty when everything passes); each must be a single line."""
    try:
        check_checkpoints(weights["ckpt_dir"], lr_ckpt=weights["lr_ckpt"], hr_ckpt=weights["hr_ckpt"])
    except CheckpointProblems as err:
        assert str(err) == "\n".join(err.problems) and all("\n" not in line for line in err.problems)
        return err.problems
    return []


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_intact_checkpoints_pass(weights):
    assert problems(weights) == []


def test_truncated_shard_is_named(weights):
    shard = weights["ckpt_dir"] / SHARD_1
    truncate(shard, keep=0.9)
    (line,) = problems(weights)
    assert line.startswith(f"{shard}: truncated: the header lists ") and "copy or download it again" in line


def test_truncated_model_pt_is_named(weights):
    truncate(weights["hr_ckpt"])
    assert problems(weights) == [f"{weights['hr_ckpt']}: not a complete torch zip archive (truncated, damaged, or "
                                 "not a torch checkpoint); copy or download it again"]


def test_base_dit_given_as_hr_checkpoint_is_named_as_such(weights):
    weights["hr_ckpt"] = weights["lr_ckpt"]  # an LR model.pt is the base DiT's architecture
    (line,) = problems(weights)
    assert line.startswith(f"{weights['lr_ckpt']}: a base Wan2.2 DiT, not a PixelWizard HR checkpoint (no "
                           "dt_embedding/spatial_adapter; missing keys: dt_embedding.0.bias")
    assert line.endswith("give --hr-ckpt PixelWizard's 2k/model.pt or 4k/model.pt")


def test_hr_checkpoint_given_as_lr_checkpoint_is_named_as_such(weights):
    weights["lr_ckpt"] = weights["hr_ckpt"]
    (line,) = problems(weights)
    assert line.startswith(f"{weights['hr_ckpt']}: a PixelWizard HR checkpoint, not an LR DiT (it has dt_embedding/"
                           "spatial_adapter; unexpected keys: dt_embedding.0.bias")
    assert line.endswith("give --lr-ckpt PixelWizard's lr/model.pt, or leave it out to use the base DiT")


def test_wrong_shapes_name_the_file_keys_and_role(weights):
    wider = dataclasses.replace(TINY_DIT, dim=128)
    save_trainer_checkpoint(randomize_(HRDiT(wider), 1), weights["hr_ckpt"])
    (line,) = problems(weights)
    assert line.startswith(f"{weights['hr_ckpt']}: does not match the PixelWizard HR model")
    assert "wrong shapes: blocks.0.cross_attn.k.bias (128,) (expected (64,))" in line
    assert line.endswith("use PixelWizard's checkpoint for Wan2.2-TI2V-5B (huggingface.co/wxli318/PixelWizard)")


def test_dit_shapes_that_disagree_with_config_json(weights):
    config_to_json(dataclasses.replace(TINY_DIT, ffn_dim=96), weights["ckpt_dir"] / wan_files.DIT_CONFIG)
    lines = problems(weights)
    assert lines[0].startswith(f"{weights['ckpt_dir'] / wan_files.DIT_INDEX}: does not match the WanModel DiT of "
                               "config.json; wrong shapes: blocks.0.ffn.0.bias (128,) (expected (96,))")
    assert all("wrong shapes" in line for line in lines)  # the trainer files were made for the other width too


def test_unreadable_vae_file(weights):
    vae = weights["ckpt_dir"] / wan_files.VAE_FILE
    vae.write_bytes(b"not a checkpoint at all")
    (line,) = problems(weights)
    assert line.startswith(f"{vae}: not a complete torch zip archive")


def test_vae_with_a_pickled_object_is_refused(weights):
    vae = weights["ckpt_dir"] / wan_files.VAE_FILE
    torch.save({"conv1.weight": torch.zeros(1), "hook": print}, vae)
    (line,) = problems(weights)
    assert line.startswith(f"{vae}: cannot be read as a weights-only torch checkpoint (")


def test_missing_tokenizer(weights):
    shutil.rmtree(weights["ckpt_dir"] / wan_files.TOKENIZER_DIR)
    (line,) = problems(weights)
    assert line == f"{weights['ckpt_dir'] / wan_files.TOKENIZER_DIR}: missing; expected {wan_files.LAYOUT}"


def run_problems(weights, preset: str, **settings) -> list[str]:
    """The problem lines of a run's checkpoint check, which also holds the HR file against the preset's size."""
    config = RunConfig(ckpt_dir=str(weights["ckpt_dir"]), lr_ckpt=str(weights["lr_ckpt"]),
                       hr_ckpt=str(weights["hr_ckpt"]), preset=preset, settings=settings)
    try:
        checks.check_checkpoints(config)
    except CheckpointProblems as err:
        return err.problems
    return []


def test_hr_checkpoint_size_against_the_preset(weights):
    hr = weights["hr_ckpt"]  # the tiny HR model: in a tiny/ folder, and it records 256x160
    assert run_problems(weights, "tiny") == [] and run_problems(weights, "tiny", width=160, height=256) == []
    assert run_problems(weights, "2k", width=256, height=160) == []  # trained for the run's own size
    assert run_problems(weights, "2k") == [
        f"{hr}: trained for 256x160 (recorded in the file; its 'tiny' folder) but preset '2k' takes the model "
        "trained for 2560x1440; use --preset tiny with this checkpoint, or give --hr-ckpt that one"]

    in_2k = hr.parent.parent / "2k" / "model.pt"  # as PixelWizard publishes it: no size in the file
    save_trainer_checkpoint(randomize_(HRDiT(TINY_DIT), 4), in_2k)
    weights["hr_ckpt"] = in_2k
    assert run_problems(weights, "2k") == []
    assert run_problems(weights, "4k") == [
        f"{in_2k}: trained for 2560x1440 (its '2k' folder) but preset '4k' takes the model trained "
        "for 3840x2144; use --preset 2k with this checkpoint, or give --hr-ckpt that one"]
    assert run_problems(weights, "1080p-portrait") == []  # portrait 1080p takes the 2k model


def test_every_problem_is_reported_at_once(weights):
    ckpt = weights["ckpt_dir"]
    config = json.loads((ckpt / wan_files.DIT_CONFIG).read_text())
    (ckpt / wan_files.DIT_CONFIG).write_text(json.dumps({**config, "dim_head": 16}))
    truncate(ckpt / SHARD_1, keep=0.9)
    (ckpt / wan_files.T5_FILE).unlink()
    weights["lr_ckpt"] = weights["hr_ckpt"]
    truncate(weights["hr_ckpt"])
    lines = problems(weights)
    assert [line.split(": ")[0] for line in lines] == [
        str(ckpt / wan_files.DIT_CONFIG), str(ckpt / SHARD_1), str(ckpt / wan_files.T5_FILE), str(weights["hr_ckpt"])]
    assert "unknown key(s) 'dim_head'" in lines[0] and "truncated" in lines[1] and "missing" in lines[2]
    assert "not a complete torch zip archive" in lines[3]  # without a config the trainer files are still read
    assert len(lines) == 4  # the file given as both LR and HR checkpoint: said once


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointProblems) as err:
        check_checkpoints(tmp_path / "nowhere", hr_ckpt=tmp_path / "model.pt")
    assert err.value.problems == [f"{tmp_path / 'nowhere'}: not a directory; expected {wan_files.LAYOUT}",
                                  f"{tmp_path / 'model.pt'}: file not found; check the path"]
    assert isinstance(err.value, CheckpointError)


def scramble_tensor_bytes(path):
    """Overwrite every tensor byte of a safetensors or torch zip file with 0xFF; headers and directories stay."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".safetensors":
        start = 8 + struct.unpack("<Q", data[:8])[0]
        data[start:] = b"\xff" * (len(data) - start)
    else:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if "/data/" in m.filename]
        for m in members:
            name_len, extra_len = struct.unpack("<HH", data[m.header_offset + 26:m.header_offset + 30])
            start = m.header_offset + 30 + name_len + extra_len
            data[start:start + m.compress_size] = b"\xff" * m.compress_size
    path.write_bytes(bytes(data))


def test_check_reads_no_tensor_data(weights):
    ckpt = weights["ckpt_dir"]
    scrambled = [*ckpt.glob("*.safetensors"), ckpt / wan_files.VAE_FILE, ckpt / wan_files.T5_FILE, weights["lr_ckpt"],
                 weights["hr_ckpt"]]
    for path in scrambled:
        scramble_tensor_bytes(path)
    assert problems(weights) == []
    assert torch.isnan(wan.load_vae(ckpt).decoder.head[2].bias).all()  # the real load does read the garbage


def bytes_read():
    """Bytes this process has read through read(2) and friends so far (Linux)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_full_size_dit_shards_are_checked_from_their_headers(weights):
    ckpt = weights["ckpt_dir"]
    for shard in ckpt.glob("*.safetensors"):
        shard.unlink()
    write_hollow_dit(ckpt, DiTConfig())
    headers = 0
    for shard in ckpt.glob("*.safetensors"):
        with open(shard, "rb") as f:
            headers += 8 + struct.unpack("<Q", f.read(8))[0]
    data = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) - headers
    assert data == 19_999_150_848  # Wan2.2-TI2V-5B's DiT in fp32 (the published index's total_size)
    before = bytes_read()
    model = wan.load_dit(ckpt, device="meta")
    assert bytes_read() - before < 2 << 20 and model.config == DiTConfig()
    lines = problems(weights)  # the tiny trainer files do not fit the full-size DiT: named, not read
    assert len(lines) == 2 and all("wrong shapes" in line for line in lines)
