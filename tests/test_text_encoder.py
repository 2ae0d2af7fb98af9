from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch

from pixelwizard.checkpoints.strict import CheckpointError
from pixelwizard.checkpoints.tiny import write_tiny_tokenizer
from pixelwizard.models.config import T5Config
from pixelwizard.models.text_encoder import (
    TextEncoder,
    UMT5EncoderModel,
    clean_prompt,
    hf_key,
    load_tokenizer,
    random_umt5,
    save_wan_t5,
    umt5_config,
    wan_key,
    wan_state_dict,
)

VOCAB = 384
CFG = T5Config(vocab_size=VOCAB, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2, text_len=512)
PROMPTS = ["a cat on the street", "a small red boat on the sea at night, cinematic wide shot", "dog"]

# From the published checkpoint's manifest (models_t5_umt5-xxl-enc-bf16.pth, the keys that Wan-Video/Wan2.2@42bf4cf
# wan/modules/t5.py umt5_xxl(encoder_only=True) loads strictly): sha256 of its sorted "key (shape)" lines, its tensor
# count and its parameter count.
FULL_LAYOUT_SHA256 = "6be56588df8911137e2b6abd9599f670fcf50bf704b4c833c9ec671067a2ff0e"
FULL_TENSORS, FULL_PARAMS = 242, 5_680_910_336


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("t5")
    write_tiny_tokenizer(root / "google" / "umt5-xxl", VOCAB)
    save_wan_t5(random_umt5(CFG, seed=0), root / "t5.pth")
    return root / "t5.pth", root / "google" / "umt5-xxl"


@pytest.fixture(scope="module")
def encoder(files):
    return TextEncoder.load(*files, CFG, dtype=torch.float32)


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  a\tcat \n\n on\u00a0the   mat  ", "a cat on the mat"),
        ("fish &amp;amp; chips", "fish & chips"),  # unescaped twice
        ("&lt;b&gt; bold", "<b> bold"),
        ("The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.", "The Mona Lisa doesn't have eyebrows."),  # mojibake
        ("\u3000caf\u00c3\u00a9\u2003cr\u00c3\u00a8me ", "café crème"),
        ("", ""),
    ],
)
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


def test_tiny_tokenizer_is_t5_like(files):
    tok = load_tokenizer(files[1])
    assert "T5Tokenizer" in type(tok).__name__
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == VOCAB
    batch = tok(["a cat", "dog"], padding="max_length", truncation=True, max_length=8, add_special_tokens=True)
    assert batch["input_ids"][0][:3] == tok.convert_tokens_to_ids(["\u2581a", "\u2581cat", "</s>"])
    assert batch["input_ids"][0][3:] == [0] * 5
    assert batch["attention_mask"][1] == [1, 1] + [0] * 6


def test_tiny_tokenizer_is_deterministic(tmp_path, files):
    write_tiny_tokenizer(tmp_path, VOCAB)
    assert (tmp_path / "tokenizer.json").read_bytes() == (files[1] / "tokenizer.json").read_bytes()


def test_outputs_are_trimmed_to_true_length(encoder):
    outs = encoder.encode(PROMPTS)
    lengths = [len(encoder.tokenizer(clean_prompt(p))["input_ids"]) for p in PROMPTS]  # incl. </s>
    assert [tuple(o.shape) for o in outs] == [(n, CFG.dim) for n in lengths]
    assert lengths[0] == 6 and lengths[2] == 2  # ▁a ▁cat ▁on ▁the ▁street </s>
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outs)


def test_long_prompt_is_truncated_to_text_len_with_eos_last(encoder):
    prompt = " ".join(["cat"] * 1000)
    ids = encoder.tokenizer([prompt], padding="max_length", truncation=True, max_length=CFG.text_len)["input_ids"][0]
    assert len(ids) == CFG.text_len and ids[-1] == 1 and 0 not in ids
    (out,) = encoder.encode([prompt])
    assert out.shape == (CFG.text_len, CFG.dim)


def test_batch_equals_one_by_one(encoder):
    batch = encoder.encode(PROMPTS)
    for prompt, row in zip(PROMPTS, batch):
        (single,) = encoder.encode([prompt])
        torch.testing.assert_close(row, single, rtol=1e-5, atol=1e-6)


def test_padding_does_not_leak_into_true_rows(encoder):
    """Padding positions are masked: the true rows equal an unpadded forward pass."""
    tok = encoder.tokenizer(clean_prompt(PROMPTS[1]), return_tensors="pt")
    with torch.inference_mode():
        unpadded = encoder.model(input_ids=tok["input_ids"]).last_hidden_state[0]
    torch.testing.assert_close(encoder.encode([PROMPTS[1]])[0], unpadded, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(files, encoder):
    model = random_umt5(CFG, seed=0)  # the same seed that wrote the file
    assert torch.equal(model.shared.weight, random_umt5(CFG, seed=0).shared.weight)
    assert not torch.equal(model.shared.weight, random_umt5(CFG, seed=1).shared.weight)
    bf16 = TextEncoder.load(*files, CFG)
    assert bf16.model.dtype == torch.bfloat16
    saved = torch.load(files[0], weights_only=True)
    assert wan_state_dict(bf16.model).keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in wan_state_dict(bf16.model).items())
    in_memory = TextEncoder(model, bf16.tokenizer, CFG)
    for a, b in zip(in_memory.encode(PROMPTS), bf16.encode(PROMPTS)):
        assert a.dtype == b.dtype == torch.bfloat16
        assert torch.equal(a, b)
    # fp32 load of the bf16 file: same values, upcast
    fp32_out, bf16_out = encoder.encode(PROMPTS)[0], bf16.encode(PROMPTS)[0]
    torch.testing.assert_close(fp32_out.to(torch.bfloat16), bf16_out, rtol=0.05, atol=0.05)


def test_embedding_is_tied_once(encoder):
    model = encoder.model
    assert model.shared.weight is model.encoder.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in wan_state_dict(model).values())


def _rewrite(files, tmp_path, edit):
    state = torch.load(files[0], weights_only=True)
    edit(state)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda s: s.pop("blocks.1.norm2.weight"), "blocks.1.norm2.weight"),
        (lambda s: s.update({"blocks.0.attn.extra.weight": torch.zeros(2)}), "blocks.0.attn.extra.weight"),
        (lambda s: s.update({"blocks.2.norm1.weight": torch.zeros(CFG.dim)}), "blocks.2.norm1.weight"),
        (lambda s: s.update({"token_embedding.weight": torch.zeros(VOCAB + 1, CFG.dim)}), "token_embedding.weight"),
    ],
    ids=["missing", "extra", "extra_block", "wrong_shape"],
)
def test_strict_errors_name_file_and_key(files, tmp_path, edit, key):
    path = _rewrite(files, tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        TextEncoder.load(path, files[1], CFG)
    assert str(path) in str(err.value) and key in str(err.value) and "umT5-XXL" in str(err.value)


def test_missing_files_are_checkpoint_errors(files, tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pth"):
        TextEncoder.load(tmp_path / "nothing.pth", files[1], CFG)
    with pytest.raises(CheckpointError, match="no_tokenizer"):
        TextEncoder.load(files[0], tmp_path / "no_tokenizer", CFG)
    small = dataclasses.replace(CFG, vocab_size=VOCAB - 1)
    with pytest.raises(CheckpointError, match="vocab_size"):
        TextEncoder.load(files[0], files[1], small)


def test_key_map_is_one_table_both_ways():
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(CFG))
    for key in model.state_dict():
        if key != "encoder.embed_tokens.weight":
            assert hf_key(wan_key(key)) == key
    assert hf_key("blocks.17.ffn.gate.0.weight") == "encoder.block.17.layer.1.DenseReluDense.wi_0.weight"
    assert hf_key("token_embedding.weight") == "shared.weight"
    with pytest.raises(CheckpointError, match="blocks.0.ffn.gate.1.weight"):
        hf_key("blocks.0.ffn.gate.1.weight")


def test_full_size_meta_build_matches_the_published_manifest():
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(T5Config()))
    state = wan_state_dict(model)
    assert len(state) == FULL_TENSORS and sum(v.numel() for v in state.values()) == FULL_PARAMS
    assert state["token_embedding.weight"].shape == (256384, 4096)
    assert state["blocks.23.pos_embedding.embedding.weight"].shape == (32, 64)  # one bucket table per layer
    assert state["blocks.0.ffn.gate.0.weight"].shape == (10240, 4096)
    listing = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(listing.encode()).hexdigest() == FULL_LAYOUT_SHA256


def test_transformers_umt5_is_wan_t5_attention():
    """Unscaled attention and Wan's bidirectional log buckets (16 per sign, 8 exact, capped at max distance)."""
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(T5Config()))
    attn = [b.layer[0].SelfAttention for b in model.encoder.block]
    assert all(a.scaling == 1.0 and a.has_relative_attention_bias for a in attn)
    rel = torch.arange(-300, 301)

    def wan_bucket(r: int) -> int:
        n = abs(r)
        small = n if n < 8 else min(15, 8 + int(math.log(n / 8) / math.log(128 / 8) * 8))
        return small + (16 if r > 0 else 0)

    assert attn[0]._relative_position_bucket(rel).tolist() == [wan_bucket(r) for r in rel.tolist()]
