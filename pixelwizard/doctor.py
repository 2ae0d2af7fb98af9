"""`pixelwizard doctor`: what to run first on a new GPU machine, in a few seconds.

    GPUs        each visible GPU: name, memory, compute capability; the NVIDIA driver
    software    Python, torch, its CUDA and the runtime cuDNN
    attention   every backend's probe on the first GPU (or the CPU) and what `auto` picks there
    traps       each known-bad combination of pixelwizard/gpu_traps.py: whether it applies here, and its fix
    disk        free space where --out would go
    presets     per preset (the tiny demo aside): each stage's peak GPU memory (pixelwizard/pipeline/gpu_memory.py),
                the largest, whether it fits the smallest visible GPU, and what makes an oversized stage fit

`report()` gathers it as plain data (bench/gpu.py keeps it in its JSON), `render()` writes it for people.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import torch

from pixelwizard.gpu_traps import cudnn_name, known_traps
from pixelwizard.models.attention import BACKENDS, auto_order, first_available, probe
from pixelwizard.models.config import DiTConfig
from pixelwizard.pipeline.gpu_memory import GIB, Models, fit
from pixelwizard.pipeline.presets import PRESETS


def nvidia_driver() -> str | None:
    """The NVIDIA driver version nvidia-smi reports (None without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return None
    listing = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False, timeout=30).stdout.split()
    return listing[0] if listing else None


def gpus() -> list[dict]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / GIB, 2),
                    "capability": f"{props.major}.{props.minor}"})
    return out


def free_disk(out: Path) -> dict:
    existing = next(p for p in (out, *out.parents) if p.exists())
    return {"path": str(existing.resolve()), "free_gib": round(shutil.disk_usage(existing).free / GIB, 1)}


def report(out: Path = Path(".")) -> dict:
    visible = gpus()
    device = "cuda:0" if visible else "cpu"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    capability = torch.cuda.get_device_capability(0) if visible else None
    gpu_gib = min((g["memory_gib"] for g in visible), default=None)
    models = Models.of()
    presets = [fit(preset, models, gpu_gib, num_heads=DiTConfig().num_heads, max_gpus=len(visible))
               for name, preset in PRESETS.items() if name != "tiny"]
    return {
        "gpus": visible,
        "driver": nvidia_driver(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None if cudnn is None else cudnn_name(cudnn),
        "attention": {name: probe(name, device) or "ok" for name in BACKENDS},
        "attention_auto": first_available(auto_order(device), device),
        "traps": [vars(t) for t in known_traps(torch.__version__, cudnn, capability)],
        "disk": free_disk(out),
        "presets": [vars(p) for p in presets],
    }


def render(data: dict) -> list[str]:
    """The report as lines for a terminal."""
    lines = []
    if data["gpus"]:
        for g in data["gpus"]:
            lines.append(f"GPU {g['index']}      {g['name']}, {g['memory_gib']:.1f} GiB, compute {g['capability']}")
        lines.append(f"driver     {data['driver'] or 'unknown (no nvidia-smi)'}")
    else:
        lines.append("GPUs       none: torch sees no CUDA device (the stages would run on the CPU)")
    lines.append(f"software   Python {data['python']}, torch {data['torch']}, CUDA {data['cuda'] or '-'}, "
                 f"cuDNN {data['cudnn'] or '-'}")
    for name, state in data["attention"].items():
        lines.append(f"attention  {name}: {state}")
    lines.append(f"attention  auto -> {data['attention_auto']}")
    for trap in data["traps"]:
        if not trap["applies"]:
            lines.append(f"trap       {trap['name']}: not here ({trap['detail']})")
        else:
            mark = "applies, handled" if trap["handled"] else "APPLIES, fix it"
            lines.append(f"trap       {trap['name']}: {mark} ({trap['detail']}): {trap['fix']}")
    lines.append(f"disk       {data['disk']['free_gib']:.1f} GiB free at {data['disk']['path']}")
    for p in data["presets"]:
        stages = ", ".join(f"{s} {gib:.1f}" for s, gib in p["stages"].items())
        verdict = {None: "no GPU to check against", True: "fits"}.get(p["fits"], "does not fit as it is")
        lines.append(f"preset     {p['preset']}: largest stage {p['largest']} {p['stages'][p['largest']]:.1f} GiB "
                     f"({stages} GiB): {verdict}")
        for stage, remedies in p["remedies"].items():
            lines.append(f"           {stage}: " + (" or ".join(remedies) if remedies else
                                                    "no setting makes it fit this GPU"))
    return lines
