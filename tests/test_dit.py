from __future__ import annotations

import dataclasses
import hashlib
import math
import resource

import pytest
import torch

from pixelwizard.models.attention import AttentionBackendError, attention, available_backends, select_backend
from pixelwizard.models.config import DiTConfig
from pixelwizard.models.dit import (
    TokenRows,
    WanDiT,
    apply_rope,
    grid_positions,
    rope_factors,
    rope_for_grid,
    rope_split,
    sinusoidal_embedding,
)
from pixelwizard.models.offload import offload_blocks

CONFIG = DiTConfig(dim=64, ffn_dim=128, freq_dim=32, in_dim=8, out_dim=8, num_heads=4, num_layers=2,
                   text_dim=32, text_len=16)
LATENT = (8, 3, 4, 6)  # [C, T, H, W] -> token grid (3, 2, 3)
TOKENS = 3 * 2 * 3
FRAME_TOKENS = 2 * 3

# From the published checkpoint's manifest (Wan2.2-TI2V-5B diffusion_pytorch_model.safetensors.index.json weight_map,
# in Wan-Video/Wan2.2@42bf4cf WanModel.state_dict() order): sha256 of its sorted "key (shape)" lines and of its keys
# in state-dict order, one per line.
FULL_LAYOUT_SHA256 = "7b3b1e5d4e511617ec9335443638989e0295d22465ed293c97ae27f9cb8f8d4c"
FULL_KEY_ORDER_SHA256 = "17afea594b69655c59a1fa88297f1b979c404531fd46d0e7f7056283fde762fb"


def make_model(seed: int = 0) -> WanDiT:
    torch.manual_seed(seed)
    return WanDiT(CONFIG).eval()


def inputs(batch: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *LATENT, generator=gen), torch.randn(batch, 5, CONFIG.text_dim, generator=gen)


def e0_shapes(model: WanDiT) -> list[torch.Size]:
    """Records the e0 argument every block receives."""
    shapes = []

    def record(_, args):
        e0 = args[1]
        shapes.append(("rows", tuple(e0.table.shape), tuple(e0.index.shape)) if isinstance(e0, TokenRows) else e0.shape)

    for block in model.blocks:
        block.register_forward_pre_hook(record)
    return shapes


@torch.no_grad()
def test_output_shape_dtype_and_determinism():
    model = make_model()
    x, ctx = inputs(batch=2)
    out = model(x, torch.tensor([900.0, 10.0]), ctx)
    assert out.shape == (2, CONFIG.out_dim, *LATENT[1:]) and out.dtype == torch.float32
    assert out.isfinite().all() and out.abs().mean() > 1e-3
    assert torch.equal(out, model(x, torch.tensor([900.0, 10.0]), ctx))


@torch.no_grad()
def test_constant_per_token_t_equals_shared_t_and_modulation_stays_per_sample():
    model = make_model()
    shapes = e0_shapes(model)
    x, ctx = inputs()
    shared = model(x, torch.tensor([700.0]), ctx)
    per_token = model(x, torch.full((1, TOKENS), 700.0), ctx)
    assert torch.equal(shared, per_token)
    assert set(shapes) == {torch.Size([1, 1, 6, CONFIG.dim])}


@torch.no_grad()
def test_varying_per_token_t_is_modulated_per_token():
    model = make_model()
    shapes = e0_shapes(model)
    x, ctx = inputs()
    t = torch.full((1, TOKENS), 700.0)
    t[:, :FRAME_TOKENS] = 0.0  # clean first latent frame, as in image-to-video
    assert not torch.allclose(model(x, t, ctx), model(x, torch.tensor([700.0]), ctx))
    # per token, e0 is one row per distinct timestep and an index, never [B, L, 6, D]
    assert set(shapes) == {("rows", (1, 2, 6, CONFIG.dim), (1, TOKENS)), torch.Size([1, 1, 6, CONFIG.dim])}
    _, e0 = model.condition_time(t, TOKENS)
    assert e0.index[0, :FRAME_TOKENS].eq(0).all() and e0.index[0, FRAME_TOKENS:].eq(1).all()
    torch.testing.assert_close(e0.table[:, 1], model.condition_time(torch.tensor([700.0]), TOKENS)[1][:, 0],
                               atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_zero_head_gives_zero_output():
    model = make_model()
    model.head.head.weight.zero_()
    model.head.head.bias.zero_()
    x, ctx = inputs()
    assert torch.equal(model(x, torch.tensor([500.0]), ctx), torch.zeros(1, CONFIG.out_dim, *LATENT[1:]))


def test_sinusoid_is_cos_then_sin_in_timestep_units():
    t = torch.tensor([0.0, 250.0])
    emb = sinusoidal_embedding(t, 8)
    assert emb.dtype == torch.float32 and emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
    expected = torch.cat([torch.cos(250.0 * freqs), torch.sin(250.0 * freqs)]).float()
    torch.testing.assert_close(emb[1], expected, rtol=0, atol=1e-7)


def test_rope_split_matches_wan():
    assert rope_split(128) == (44, 42, 42)
    assert rope_split(16) == (8, 4, 4)


def test_rope_at_position_zero_is_identity():
    x = torch.randn(2, 5, 3, 16)
    assert torch.equal(apply_rope(x, rope_factors(torch.zeros(5, 3, dtype=torch.long), 16)), x)


def test_rope_rotates_only_its_axis_channels_and_depends_on_relative_position():
    head_dim = 16
    t_dims, h_dims, _ = rope_split(head_dim)
    x = torch.randn(1, 1, 2, head_dim)
    moved_h = apply_rope(x, rope_factors(torch.tensor([[0, 3, 0]]), head_dim))
    changed = (moved_h != x)[0, 0].any(0)
    assert changed[t_dims:t_dims + h_dims].all() and not changed[:t_dims].any() and not changed[t_dims + h_dims:].any()

    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)
    pq, pk, shift = torch.tensor([[2, 1, 4]]), torch.tensor([[0, 3, 1]]), torch.tensor([[5, 7, 2]])

    def score(p_q: torch.Tensor, p_k: torch.Tensor) -> torch.Tensor:
        return (apply_rope(q, rope_factors(p_q, head_dim)) * apply_rope(k, rope_factors(p_k, head_dim))).sum()

    torch.testing.assert_close(score(pq, pk), score(pq + shift, pk + shift), rtol=1e-5, atol=1e-5)


def test_grid_positions_follow_token_raster_order():
    pos = grid_positions((2, 3, 4))
    assert pos.shape == (24, 3)
    assert pos[(1 * 3 + 2) * 4 + 3].tolist() == [1, 2, 3]


def test_unpatchify_puts_channels_fastest_within_a_patch():
    model = WanDiT(CONFIG)
    c = CONFIG.out_dim
    rows = torch.arange(TOKENS * 4 * c, dtype=torch.float32).reshape(1, TOKENS, 4 * c)
    out = model.unpatchify(rows, (3, 2, 3))
    f, h, w, q, r, ch = 2, 1, 2, 1, 0, 5
    assert out[0, ch, f, 2 * h + q, 2 * w + r] == rows[0, (f * 2 + h) * 3 + w, (q * 2 + r) * c + ch]


@torch.no_grad()
def test_batch_of_two_equals_two_single_calls():
    model = make_model()
    x, _ = inputs(batch=2)
    ctx = [torch.randn(3, CONFIG.text_dim), torch.randn(CONFIG.text_len, CONFIG.text_dim)]
    t = torch.full((2, TOKENS), 400.0)
    t[0, :FRAME_TOKENS] = 0.0
    both = model(x, t, ctx)
    for i in range(2):
        torch.testing.assert_close(both[i:i + 1], model(x[i:i + 1], t[i:i + 1], ctx[i][None]), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_block_residuals_and_e_extra_enter_the_model():
    model = make_model()
    x, ctx = inputs()
    t = torch.tensor([300.0])
    base = model(x, t, ctx)
    zeros_tok, zeros_e = torch.zeros(1, TOKENS, CONFIG.dim), torch.zeros(1, 1, CONFIG.dim)
    assert torch.equal(base, model(x, t, ctx, block_residuals={1: zeros_tok}, e_extra=zeros_e))
    assert not torch.allclose(base, model(x, t, ctx, block_residuals={1: torch.randn(1, TOKENS, CONFIG.dim)}))
    assert not torch.allclose(base, model(x, t, ctx, e_extra=torch.randn(1, 1, CONFIG.dim)))
    with pytest.raises(ValueError, match="block indices"):
        model(x, t, ctx, block_residuals={CONFIG.num_layers: zeros_tok})


@torch.no_grad()
def test_row_chunking_does_not_change_the_result():
    model = make_model()
    x, ctx = inputs()
    t = torch.linspace(0, 999, TOKENS)[None]
    whole = model(x, t, ctx)
    for chunk in (1, 5):
        model.chunk_tokens = chunk
        torch.testing.assert_close(model(x, t, ctx), whole, rtol=1e-6, atol=1e-6)


def test_context_longer_than_text_len_is_rejected():
    x, _ = inputs()
    with pytest.raises(ValueError, match="text_len"):
        make_model()(x, torch.tensor([1.0]), torch.randn(1, CONFIG.text_len + 1, CONFIG.text_dim))


@torch.no_grad()
def test_meta_build_then_assign_is_complete():
    reference = make_model()
    with torch.device("meta"):
        model = WanDiT(CONFIG)
    model.load_state_dict(reference.state_dict(), assign=True)
    x, ctx = inputs()
    assert torch.equal(model.eval()(x, torch.tensor([10.0]), ctx), reference(x, torch.tensor([10.0]), ctx))


def test_full_5b_meta_build_has_the_original_keys_and_shapes():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.device("meta"):
        model = WanDiT(DiTConfig())
    state = model.state_dict()
    assert all(v.is_meta for v in state.values())
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 512 * 1024  # KiB: no weights allocated
    assert len(state) == 825 and sum(v.numel() for v in state.values()) == 4_999_787_712
    assert state["blocks.29.ffn.0.weight"].shape == (14336, 3072)
    assert state["head.head.weight"].shape == (192, 3072)
    listing = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(listing.encode()).hexdigest() == FULL_LAYOUT_SHA256
    assert hashlib.sha256("\n".join(state).encode()).hexdigest() == FULL_KEY_ORDER_SHA256


@torch.no_grad()
def test_cast_for_inference_bf16_keeps_fp32_islands_and_stays_close():
    model = make_model()
    x, ctx = inputs()
    t = torch.full((1, TOKENS), 600.0)
    t[:, :FRAME_TOKENS] = 0.0
    want = model(x, t, ctx)
    model.cast_for_inference(torch.bfloat16)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    assert dtypes["blocks.0.self_attn.q.weight"] == dtypes["patch_embedding.weight"] == torch.bfloat16
    assert dtypes["blocks.0.ffn.2.weight"] == dtypes["text_embedding.0.weight"] == torch.bfloat16
    for key in ("time_embedding.0.weight", "time_projection.1.weight", "blocks.1.modulation", "head.head.weight",
                "head.modulation", "blocks.0.norm3.weight", "blocks.0.cross_attn.norm_k.weight"):
        assert dtypes[key] == torch.float32, key
    got = model(x, t, ctx)
    assert got.dtype == torch.float32
    assert (got - want).abs().max() / want.abs().max() < 0.02


def test_attention_ignores_padded_keys_and_keeps_dtype():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 7, 3, 8, generator=gen) for _ in range(3))
    k_lens = torch.tensor([4, 7])
    out = attention(q, k, v, k_lens)
    for i, n in enumerate(k_lens.tolist()):
        scores = torch.einsum("lnd,mnd->nlm", q[i], k[i, :n]) / math.sqrt(8)
        expected = torch.einsum("nlm,mnd->lnd", scores.softmax(-1), v[i, :n])
        torch.testing.assert_close(out[i], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention(q, k, v, torch.tensor([7, 7])), attention(q, k, v))
    assert attention(q.bfloat16(), k.bfloat16(), v, k_lens).dtype == torch.bfloat16


def test_attention_backends_select_and_explain():
    assert available_backends("cpu") == ["sdpa"]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 9, 2, 8, generator=gen) for _ in range(3))
    assert torch.equal(select_backend("auto", "cpu")(q, k, v), attention(q, k, v))
    assert torch.equal(select_backend("sdpa", "cpu")(q, k, v, torch.tensor([5])), attention(q, k[:, :5], v[:, :5]))
    for name, needs in (("flash2", "flash_attn"), ("flash3", "flash_attn_interface"), ("sage", "sageattention"),
                        ("sdpa-cudnn", "a CUDA GPU")):
        with pytest.raises(AttentionBackendError, match=f"attention='{name}'.*{needs}.*choose attention=sdpa") as err:
            select_backend(name, "cpu")
        assert "\n" not in str(err.value)
    with pytest.raises(AttentionBackendError, match="unknown; choose one of auto, sdpa, sdpa-cudnn, flash2, flash3, "
                                                    "sage"):
        select_backend("xformers", "cpu")


@torch.no_grad()
def test_model_attention_backend_is_a_setting():
    model = make_model()
    x, ctx = inputs()
    want = model(x, torch.tensor([300.0]), ctx)
    assert torch.equal(model.use_attention("sdpa")(x, torch.tensor([300.0]), ctx), want)
    with pytest.raises(AttentionBackendError, match="flash_attn"):
        model.use_attention("flash2")


@torch.no_grad()
def test_residual_stream_is_updated_in_place_and_inputs_are_not():
    model = make_model()
    x, ctx = inputs()
    x_before, ctx_before = x.clone(), ctx.clone()
    tokens, _ = model.patchify(x)
    assert tokens.is_contiguous() and tokens.dtype == torch.float32
    e, e0 = model.condition_time(torch.tensor([300.0]), tokens.shape[1])
    rope = rope_for_grid((3, 2, 3), CONFIG.head_dim, tokens.device)
    out = model.blocks[0](tokens, e0, model.embed_text(ctx), rope, 4)
    assert out is tokens
    model(x, torch.tensor([300.0]), ctx)
    assert torch.equal(x, x_before) and torch.equal(ctx, ctx_before)


@torch.no_grad()
def test_offloaded_blocks_stream_two_at_a_time_and_match():
    torch.manual_seed(0)
    model = WanDiT(dataclasses.replace(CONFIG, num_layers=4)).eval()
    x, ctx = inputs()
    t = torch.linspace(0, 999, TOKENS)[None]
    want = model(x, t, ctx)
    streamer = offload_blocks(model, "cpu")
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda *_: seen.append(streamer.resident()))
    for _ in range(2):  # the second forward starts from the block 0 fetched after the first
        assert torch.equal(model(x, t, ctx), want)
    assert seen == [[0, 1], [1, 2], [2, 3], [0, 3]] * 2  # block i and the next are on the device; then block 0
    host = streamer.host[2]
    for p in model.blocks[2].parameters():  # released after its forward: back in its packed host buffer
        assert host.data_ptr() <= p.data_ptr() < host.data_ptr() + host.numel()


def test_offload_pins_one_buffer_per_block_of_about_its_size():
    """What block streaming asks to page-lock: one packed buffer per block, within 10% of the block's bytes (torch's
    own pinned allocator would round each request up to a power of two: 312 MiB -> 512 MiB at full size)."""
    model = WanDiT(dataclasses.replace(CONFIG, num_layers=3)).eval()
    block_bytes = [sum(p.numel() * p.element_size() for p in block.parameters()) for block in model.blocks]
    streamer = offload_blocks(model, "cpu")
    assert len(streamer.host) == len(model.blocks)
    for buffer, size in zip(streamer.host, block_bytes):
        assert buffer.dtype == torch.uint8 and size <= buffer.numel() <= 1.1 * size
    assert [slot.numel() for slot in streamer.slots] == [streamer.host[0].numel()] * 2  # the GPU side: two slots
    assert streamer.pinned.locked_bytes == 0  # nothing to lock without CUDA; on CUDA: sum of the buffers
