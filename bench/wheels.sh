#!/usr/bin/env bash
# The wheels worth carrying to a bare GPU machine (it has no network; its image has torch, triton, einops,
# safetensors, transformers, numpy, pyyaml, rich, typer, pillow, opencv). Run where a package index is reachable:
#
#     bench/wheels.sh            # -> bench/wheels/*.whl (ignored by git), then their total size
#
# ftfy + wcwidth: the text encoder's prompt cleaning. sageattention 1.0.6: Triton kernels only, so no CUDA build to
# match (its probe decides on the GPU whether it runs there). zarr (+ numcodecs, donfig, google-crc32c) and av: the
# latent stores and the MP4s, for running stages there; ~37 MB in all, within the ~60 MB a device call carries.
# Versions: the project's own ranges (pyproject.toml), for CPython 3.12 on x86-64 manylinux.
# bench/run_gpu.sh installs them with `pip install --no-index` before the bench.
set -euo pipefail
cd "$(dirname "$0")"
mapfile -t project < <(python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("../pyproject.toml", "rb"))["project"]["dependencies"]
for name in ("ftfy", "zarr", "av", "google-crc32c"):
    print(next(d for d in deps if re.match(rf"{re.escape(name)}\b", d)))
PY
)
rm -rf wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d wheels "${project[@]}" wcwidth "sageattention==1.0.6" numcodecs donfig
ls -l wheels/*.whl
du -ch wheels/*.whl | tail -1
