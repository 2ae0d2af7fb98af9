"""umT5-XXL text encoder: transformers' `UMT5EncoderModel` fed from the Wan2.2 `.pth` layout.

The network itself is transformers' (same maths as Wan's `T5Encoder`: one relative-position table per layer,
unscaled attention, gated tanh-GELU FFN, fp32 RMS statistics). This module owns the key map between the two
layouts, the strict meta-device loader, Wan's prompt cleaning and the per-prompt trimming of the output.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel

from pixelwizard.checkpoints.strict import (
    CheckpointError,
    check_state_dict,
    expected_shapes,
    first_line,
    read_torch_file,
)
from pixelwizard.models.config import ConfigError, T5Config

LAYOUT = "the Wan2.2 umT5-XXL encoder layout (models_t5_umt5-xxl-enc-bf16.pth)"

# (Wan key, transformers key); "{n}" is the block index. The only table of the layout: both directions use it.
_KEY_TABLE: tuple[tuple[str, str], ...] = (
    ("token_embedding.weight", "shared.weight"),
    ("blocks.{n}.norm1.weight", "encoder.block.{n}.layer.0.layer_norm.weight"),
    *((f"blocks.{{n}}.attn.{p}.weight", f"encoder.block.{{n}}.layer.0.SelfAttention.{p}.weight") for p in "qkvo"),
    ("blocks.{n}.pos_embedding.embedding.weight",
     "encoder.block.{n}.layer.0.SelfAttention.relative_attention_bias.weight"),
    ("blocks.{n}.norm2.weight", "encoder.block.{n}.layer.1.layer_norm.weight"),
    ("blocks.{n}.ffn.gate.0.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_0.weight"),  # GELU branch
    ("blocks.{n}.ffn.fc1.weight", "encoder.block.{n}.layer.1.DenseReluDense.wi_1.weight"),  # linear branch
    ("blocks.{n}.ffn.fc2.weight", "encoder.block.{n}.layer.1.DenseReluDense.wo.weight"),
    ("norm.weight", "encoder.final_layer_norm.weight"),
)
# transformers ties this to `shared.weight`; Wan stores the embedding once.
_TIED_KEY = "encoder.embed_tokens.weight"


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{n}"), r"(?P<n>\d+)"))


_PATTERNS = tuple((_pattern(wan), _pattern(hf)) for wan, hf in _KEY_TABLE)


def _translate(key: str, src: int, dst: int) -> str:
    """Map `key` from column `src` of the table to column `dst` (0 = Wan, 1 = transformers)."""
    for patterns, templates in zip(_PATTERNS, _KEY_TABLE):
        if match := patterns[src].fullmatch(key):
            return templates[dst].format(**match.groupdict())
    side = ("Wan", "transformers")[src]
    raise CheckpointError(f"{key!r} is not a {side} key of {LAYOUT}")


def hf_key(wan_key: str) -> str:
    """Wan `.pth` key -> `UMT5EncoderModel` state-dict key."""
    return _translate(wan_key, 0, 1)


def wan_key(hf: str) -> str:
    """`UMT5EncoderModel` state-dict key -> Wan `.pth` key (the tied `encoder.embed_tokens.weight` has none)."""
    return _translate(hf, 1, 0)


def wan_state_dict(model: UMT5EncoderModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the Wan keys, the tied embedding once; no copies."""
    return {wan_key(k): v for k, v in model.state_dict().items() if k != _TIED_KEY}


def umt5_config(cfg: T5Config) -> UMT5Config:
    if cfg.dim_attn % cfg.num_heads:
        raise ConfigError(f"T5 dim_attn {cfg.dim_attn} is not divisible by num_heads {cfg.num_heads}")
    return UMT5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.dim,
        d_kv=cfg.dim_attn // cfg.num_heads,
        d_ff=cfg.dim_ffn,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.num_buckets,
        relative_attention_max_distance=cfg.max_distance,
        layer_norm_epsilon=cfg.eps,
        feed_forward_proj="gated-gelu",  # transformers maps this to tanh-GELU ("gelu_new"), as Wan's GELU
        pad_token_id=0,
        eos_token_id=1,
        use_cache=False,
    )


def random_umt5(config: T5Config, seed: int, dtype: torch.dtype = torch.bfloat16) -> UMT5EncoderModel:
    """A seeded random encoder (transformers' T5 initialisation), for tiny checkpoints and tests."""
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = UMT5EncoderModel(umt5_config(config))
    return model.to(dtype).eval().requires_grad_(False)


def save_wan_t5(model: UMT5EncoderModel, path: Path) -> None:
    """Write `model` as a Wan-layout `.pth` (plain dict of tensors, the layout `TextEncoder.load` reads)."""
    torch.save(wan_state_dict(model), Path(path))


def clean_prompt(text: str) -> str:
    """Wan's 'whitespace' cleaning: repair mojibake, unescape HTML twice, collapse whitespace runs. ftfy is imported
    here, not with the module: building and timing the encoder needs no prompt text (bench/gpu.py on a bare image)."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: tokenizer folder not found (expected the google/umt5-xxl tokenizer)")
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory}: cannot load a tokenizer from this folder ({first_line(err)}); copy the "
                              "google/umt5-xxl folder of Wan-AI/Wan2.2-TI2V-5B there again") from None


class TextEncoder:
    """Prompts -> per-prompt umT5 features `[L_i, dim]`, L_i = true token count including `</s>`."""

    def __init__(self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase, config: T5Config) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def load(
        cls,
        pth_path: Path,
        tokenizer_dir: Path,
        config: T5Config,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
    ) -> TextEncoder:
        pth_path = Path(pth_path)
        tokenizer = load_tokenizer(tokenizer_dir)
        if len(tokenizer) > config.vocab_size:
            raise CheckpointError(f"{tokenizer_dir}: tokenizer has {len(tokenizer)} tokens, more than the encoder's "
                                  f"vocab_size {config.vocab_size}; use the tokenizer that came with the encoder")
        state = read_torch_file(pth_path)  # memory-mapped
        with torch.device("meta"):
            model = UMT5EncoderModel(umt5_config(config))
        expected = {wan_key(k): shape for k, shape in expected_shapes(model).items() if k != _TIED_KEY}
        found = {k: v.shape for k, v in state.items()}
        check_state_dict(expected, found, source=pth_path, layout=f"{LAYOUT} ({config})",
                         fix="use the models_t5_umt5-xxl-enc-bf16.pth of Wan-AI/Wan2.2-TI2V-5B")
        # `.to` is a no-op when the file already has the target dtype/device, so the mmap is the only copy.
        tensors = {hf_key(k): v.to(device=device, dtype=dtype) for k, v in state.items()}
        tensors[_TIED_KEY] = tensors["shared.weight"]
        model.load_state_dict(tensors, strict=True, assign=True)
        model.set_input_embeddings(model.shared)  # re-tie: one Parameter under both names
        return cls(model.eval().requires_grad_(False), tokenizer, config)

    def encode(self, prompts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.config.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.model.device)
        mask = batch["attention_mask"].to(self.model.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, text_len, dim]
        return [h[:n] for h, n in zip(hidden, mask.sum(dim=1).tolist())]
