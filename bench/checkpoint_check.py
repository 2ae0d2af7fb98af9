"""The up-front checkpoint check on full-size files: seconds, bytes read, peak memory; and the content-hash speed.

    python bench/checkpoint_check.py [--hash-gib 2] [--out FILE.jsonl]     # a hollow full-size layout
    python bench/checkpoint_check.py --ckpt-dir DIR [--lr-ckpt F] [--hr-ckpt F] [--preset 2k]   # real downloads

The hollow layout, in a temporary folder, has Wan2.2-TI2V-5B's DiT shards at their real size (20 GB, real
headers, sparse: no data blocks) and the VAE, umT5, LR and HR `.pt` files with the real keys and shapes whose
tensors are stride-0 views of one element, so the files are small (a `.pt` is checked through its zip directory
and pickle alone, whose size does not depend on the tensor bytes). The tokenizer is the tiny one: the real
umT5 tokenizer (256k pieces) takes longer to load. The check runs in a fresh process; `import_s` is what its
imports cost (torch, transformers), `check_s` and `bytes_read_during_check` the check itself. `--hash-gib N`
also times `file_digest` (sha256 of the whole file) on an N GiB file, warm cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import report

from pixelwizard.checkpoints import wan_files
from pixelwizard.checkpoints.tiny import write_hollow_dit, write_tiny_tokenizer
from pixelwizard.models.config import DiTConfig, T5Config, VAEConfig
from pixelwizard.models.dit import WanDiT
from pixelwizard.models.hr_model import HRDiT
from pixelwizard.models.vae import WanVAE

CHECK = """
import json, resource, sys, time
start = time.perf_counter()
from pixelwizard.checkpoints.preflight import CheckpointProblems
from pixelwizard.pipeline.checks import check_checkpoints
from pixelwizard.pipeline.run_config import RunConfig
import pixelwizard.models.text_encoder  # transformers: imported by the check itself, counted apart
imported = time.perf_counter()
def rchar():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
before = rchar()
args = json.loads(sys.argv[1])
try:
    check_checkpoints(RunConfig(ckpt_dir=args["ckpt_dir"], lr_ckpt=args["lr_ckpt"], hr_ckpt=args["hr_ckpt"],
                                preset=args["preset"]))
    problems = []
except CheckpointProblems as err:
    problems = err.problems
done = time.perf_counter()
print(json.dumps({"import_s": round(imported - start, 2), "check_s": round(done - imported, 2),
                  "bytes_read_during_check": rchar() - before, "peak_rss_gib": round(
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "problems": problems}))
"""


def hollow(shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes that share one element each: the pickle of the real file, almost no data."""
    return {k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}


def write_hollow_layout(root: Path) -> dict[str, Path]:
    from pixelwizard.models.text_encoder import UMT5EncoderModel, umt5_config, wan_state_dict

    ckpt = root / "Wan2.2-TI2V-5B"
    write_hollow_dit(ckpt, DiTConfig())
    with torch.device("meta"):
        vae = {k: v.shape for k, v in WanVAE(VAEConfig()).state_dict().items()}
        t5 = {k: v.shape for k, v in wan_state_dict(UMT5EncoderModel(umt5_config(T5Config()))).items()}
        lr = {k: v.shape for k, v in WanDiT(DiTConfig()).state_dict().items()}
        hr = {k: v.shape for k, v in HRDiT(DiTConfig()).state_dict().items()}
    torch.save(hollow(vae), ckpt / wan_files.VAE_FILE)
    torch.save(hollow(t5), ckpt / wan_files.T5_FILE)
    write_tiny_tokenizer(ckpt / wan_files.TOKENIZER_DIR, T5Config().vocab_size)
    paths = {"ckpt_dir": ckpt, "lr_ckpt": root / "PixelWizard/lr/model.pt", "hr_ckpt": root / "PixelWizard/2k/model.pt"}
    for name, shapes in (("lr_ckpt", lr), ("hr_ckpt", hr)):
        paths[name].parent.mkdir(parents=True)
        torch.save({"generator": {f"model.{k}": v for k, v in hollow(shapes).items()}}, paths[name])
    return paths


def run_check(paths: dict[str, Path | None], preset: str) -> dict:
    args = json.dumps({**{k: None if v is None else str(v) for k, v in paths.items()}, "preset": preset})
    out = subprocess.run([sys.executable, "-c", CHECK, args], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    files = [p for p in Path(paths["ckpt_dir"]).rglob("*") if p.is_file()]
    files += [Path(p) for k, p in paths.items() if k != "ckpt_dir" and p is not None]
    result["checked_bytes"] = sum(p.stat().st_size for p in files)
    return result


def hash_speed(directory: Path, gib: float) -> dict:
    from pixelwizard.checkpoints.identity import file_digest

    path = directory / "blob"
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(int(gib * 1024)):
            f.write(block)
    file_digest(path)  # warm the page cache
    start = time.perf_counter()
    file_digest(path)
    seconds = time.perf_counter() - start
    return {"hash_gib": gib, "hash_s": round(seconds, 2), "hash_gib_per_s": round(gib / seconds, 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt-dir", type=Path, help="real Wan2.2-TI2V-5B downloads (default: a hollow layout)")
    parser.add_argument("--lr-ckpt", type=Path)
    parser.add_argument("--hr-ckpt", type=Path)
    parser.add_argument("--preset", default="2k")
    parser.add_argument("--hash-gib", type=float, default=0, help="also time file_digest on a file this large")
    parser.add_argument("--out", help="append json lines here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.ckpt_dir is None:
            paths, layout = write_hollow_layout(Path(tmp)), "hollow full-size"
        else:
            paths, layout = {"ckpt_dir": args.ckpt_dir, "lr_ckpt": args.lr_ckpt, "hr_ckpt": args.hr_ckpt}, "given"
        report(json.dumps({"bench": "checkpoint_check", "layout": layout, **run_check(paths, args.preset)}), args.out)
        if args.hash_gib:
            report(json.dumps({"bench": "file_digest", **hash_speed(Path(tmp), args.hash_gib)}), args.out)


if __name__ == "__main__":
    main()
