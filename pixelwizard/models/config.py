"""Architecture configs of the three pretrained networks, one schema for real and tiny models.

The real values are Wan2.2-TI2V-5B's. A checkpoint directory carries them in `config.json` (DiT) or, for the
`.pth` files that carry none, in an optional json beside the file (`vae_config.json`, `t5_config.json`); tiny
checkpoints use the very same fields with small numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

C = TypeVar("C")
PIXEL_PATCH = 2  # the VAE's 2x2 pixel-unshuffle before the encoder, 3 -> 12 channels


class ConfigError(ValueError):
    """A config file or value that cannot describe a model."""


@dataclass(frozen=True)
class DiTConfig:
    """`WanModel` hyper-parameters; field names follow the published `config.json`."""

    # Keys of the published config.json that describe the file, not the network: key -> required value (None: any).
    file_keys: ClassVar[dict[str, str | None]] = {"_class_name": "WanModel", "_diffusers_version": None}

    dim: int = 3072
    ffn_dim: int = 14336
    freq_dim: int = 256
    in_dim: int = 48
    out_dim: int = 48
    num_heads: int = 24
    num_layers: int = 30
    text_len: int = 512
    eps: float = 1e-6
    # Absent from the published config.json (the original hard-codes them); honoured when present.
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    text_dim: int = 4096
    window_size: tuple[int, int] = (-1, -1)
    model_type: str = "ti2v"

    def __post_init__(self) -> None:
        _require(self.dim % self.num_heads == 0, f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        head_dim = self.dim // self.num_heads
        _require(head_dim % 2 == 0 and head_dim >= 6, f"head_dim {head_dim} must be even and >= 6 for 3D RoPE")
        _require(tuple(self.window_size) == (-1, -1),
                 f"window_size {self.window_size}: only global attention is supported")
        _require(self.model_type in ("t2v", "ti2v"), f"model_type {self.model_type!r}: only t2v/ti2v are supported")
        _require(len(self.patch_size) == 3, f"patch_size {self.patch_size} must have 3 entries")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class VAEConfig:
    """Wan2.2 VAE widths (`Wan2_2_VAE` / `WanVAE_` defaults)."""

    dim: int = 160  # encoder base width (`c_dim`)
    dec_dim: int = 256  # decoder base width
    z_dim: int = 48
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # sic: the original's spelling

    def __post_init__(self) -> None:
        _require(len(self.temperal_downsample) == len(self.dim_mult) - 1,
                 "temperal_downsample needs one entry per down stage (len(dim_mult) - 1)")

    @property
    def time_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def space_factor(self) -> int:
        return PIXEL_PATCH * 2 ** (len(self.dim_mult) - 1)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """The latent [z_dim, T, H, W] of a `frames` x `height` x `width` video."""
        if (frames - 1) % self.time_factor or height % self.space_factor or width % self.space_factor:
            raise ConfigError(f"a {frames}-frame {width}x{height} video has no latent: frames must be "
                              f"{self.time_factor}n+1, width and height multiples of {self.space_factor}")
        return self.z_dim, (frames - 1) // self.time_factor + 1, height // self.space_factor, width // self.space_factor


@dataclass(frozen=True)
class T5Config:
    """umT5-XXL encoder hyper-parameters, in the original `T5Encoder` naming."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_type(name: str, value: Any, default: Any) -> None:
    """`value` must have the type of the field's default: json numbers, booleans, strings and lists are
    distinct, so a `"2"` or a `2.5` for an int field is refused here rather than failing deep in a model."""
    if isinstance(default, tuple):
        _require(isinstance(value, list), f"{name}: expected a list like {list(default)}, got {value!r}")
        for item in value:
            _check_type(name, item, default[0])
        return
    if isinstance(default, bool | str):
        ok = type(value) is type(default)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # float: json writes 1e-06 as a float, but an int is a valid float too
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    _require(ok, f"{name}: expected {type(default).__name__}, got {value!r}")


def _coerce(cls: type[C], values: dict[str, Any], source: str) -> C:
    """Build a config dataclass from a json dict, strictly: every key known, every value of its field's type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a json object of {cls.__name__} fields, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    file_keys = getattr(cls, "file_keys", {})
    unknown = [k for k in values if k not in fields and k not in file_keys]
    if unknown:
        known = sorted(fields) + sorted(file_keys)
        hints = [f"{k!r} -> {match[0]!r}" for k in unknown if (match := difflib.get_close_matches(k, known, n=1))]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise ConfigError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}{hint}; {cls.__name__} knows "
                          f"{', '.join(known)}; rename or remove them")
    for key, required in file_keys.items():
        if required is not None and key in values and values[key] != required:
            raise ConfigError(f"{source}: {key} is {values[key]!r}, not {required!r}: this file describes another "
                              "model; use the config.json of Wan-AI/Wan2.2-TI2V-5B")
    try:
        kwargs = {}
        for name, value in values.items():
            if name in fields:
                _check_type(name, value, fields[name].default)
                kwargs[name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def config_from_json(cls: type[C], path: Path) -> C:
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid json ({err}); fix the file or download it again") from None
    return _coerce(cls, values, str(path))


def config_to_json(config: Any, path: Path, **extra: Any) -> None:
    Path(path).write_text(json.dumps({**extra, **dataclasses.asdict(config)}, indent=2) + "\n")
