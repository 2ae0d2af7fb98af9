"""Attention backends fail safe: a backend counts only after its probe (import + one tiny call on the device) passes.

The third-party packages are stand-ins written to a temporary folder and imported by a fresh Python process: one
that cannot be imported (as a wheel built for another CUDA fails), one whose kernel raises at its first call, one
that returns a wrong result, one that works (plain attention in torch, on the CPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from pixelwizard.pipeline.run_config import ATTENTION

REPO = Path(__file__).resolve().parents[1]
WORKING = """
import torch
def flash_attn_func(q, k, v, softmax_scale, causal):
    q, k, v = (u.transpose(1, 2) for u in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=softmax_scale).transpose(1, 2)
"""
PACKAGES = {
    "flash_attn_interface": "raise ImportError('libcudart.so.13: cannot open shared object file')",
    "sageattention": "def sageattn(*args, **kwargs):\n    raise RuntimeError('CUDA error: no kernel image')",
    "flash_attn": WORKING,
}


def run(tmp_path: Path, code: str, packages: dict[str, str]) -> subprocess.CompletedProcess:
    for name, source in packages.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(source)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)


def test_broken_installs_warn_once_and_auto_moves_on(tmp_path):
    result = run(tmp_path, """
        from pixelwizard.models.attention import available_backends, first_available, select_backend
        print(available_backends("cpu"))
        print(available_backends("cpu"))  # probed once per backend and device: no second warning
        print(first_available(("flash3", "sage", "flash2", "sdpa"), "cpu"))
        try:
            select_backend("flash3", "cpu")
        except ValueError as err:
            print(err)
    """, PACKAGES)
    assert result.returncode == 0, result.stderr
    available, again, chosen, error = result.stdout.splitlines()
    assert available == again == "['sdpa', 'flash2']"
    assert chosen == "flash2"
    assert error.startswith("attention='flash3' is not available on cpu: flash_attn_interface is installed but failed "
                            "a test call on cpu: ImportError: libcudart.so.13")
    assert error.endswith("; or choose attention=sdpa")
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2, result.stderr  # one line per broken package, whatever the number of calls
    assert warnings[0].startswith("attention backend flash3 is not used: flash_attn_interface is installed but")
    assert "sage is not used: sageattention is installed but failed a test call on cpu: RuntimeError: CUDA error" \
        in warnings[1]


def test_a_kernel_with_a_wrong_result_is_not_used(tmp_path):
    wrong = WORKING.replace("scale=softmax_scale", "scale=2 * softmax_scale")
    result = run(tmp_path, """
        from pixelwizard.models.attention import available_backends
        print(available_backends("cpu"))
    """, {"flash_attn": wrong})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['sdpa']"
    assert "flash2 is not used: flash_attn is installed but failed a test call on cpu: RuntimeError: its result is " \
           "off by" in result.stderr


def test_the_run_settings_offer_every_backend():
    from pixelwizard.models.attention import BACKENDS

    assert ATTENTION == ("auto", *BACKENDS)
