"""Adapters for diffusers' stock Wan / CogVideoX transformers (storyreel.models.adapters).

Equivalence with the stock forward (one shot, full policy, default positions) on diffusers' own tiny test
configurations and on larger random ones; multi-shot masks against the dense backend and against the stock model run
shot by shot; KV-cached causal generation against the uncached pass; loading from local directories.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed

from storyreel.models.adapters import (
    BackboneWeightsError,
    CogVideoXSceneAdapter,
    WanSceneAdapter,
    load_backbone,
)
from storyreel.models.adapters._common import segment_origins
from storyreel.nn import KVCache, Modality, Segment, SequenceLayout

TOL = 1e-5

# diffusers' own test configuration (tests/models/transformers/test_models_transformer_wan.py)
WAN_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
WAN_LARGER = dict(patch_size=(2, 2, 2), num_attention_heads=4, attention_head_dim=16, in_channels=8, out_channels=8,
                  text_dim=24, freq_dim=64, ffn_dim=96, num_layers=3, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
# diffusers' own test configuration (tests/models/transformers/test_models_transformer_cogvideox.py): CogVideoX-2B
# style (sin-cos positions, no RoPE)
COG_TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                text_embed_dim=8, num_layers=1, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
                temporal_compression_ratio=4, max_text_seq_length=8)
# CogVideoX 1.0-5B style (RoPE on a resize-crop grid) and CogVideoX 1.5 style (temporal patch 2, integer RoPE grid)
COG_ROPE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
                text_embed_dim=12, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
                max_text_seq_length=8, use_rotary_positional_embeddings=True)
COG_15 = dict(COG_ROPE, patch_size_t=2)


def _wan(cfg: dict, seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**cfg).eval()


def _cog(cfg: dict, seed: int = 0) -> CogVideoXTransformer3DModel:
    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**cfg).eval()


def _stock_cog_rope(model: CogVideoXTransformer3DModel, frames: int, gh: int, gw: int, crop=None):
    """RoPE tables exactly as diffusers' CogVideoX pipeline builds them (None without RoPE)."""
    cfg = model.config
    if not cfg.use_rotary_positional_embeddings:
        return None
    if cfg.patch_size_t is None:  # crop: diffusers' get_resize_crop_region_for_grid for this grid and base 4x4
        return get_3d_rotary_pos_embed(cfg.attention_head_dim, crop, (gh, gw), frames)
    base = (cfg.sample_height // cfg.patch_size, cfg.sample_width // cfg.patch_size)
    return get_3d_rotary_pos_embed(cfg.attention_head_dim, None, (gh, gw), frames // cfg.patch_size_t,
                                   grid_type="slice", max_size=base)


def _stock_cog(model, x: torch.Tensor, ctx: torch.Tensor, t: torch.Tensor, crop=None) -> torch.Tensor:
    """Stock forward on storyreel's [B, C, T, H, W] latents."""
    b, c, f, h, w = x.shape
    p = model.config.patch_size
    rope = _stock_cog_rope(model, f, h // p, w // p, crop)
    return model(x.transpose(1, 2), ctx, t, image_rotary_emb=rope).sample.transpose(1, 2)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------- one shot == stock


@pytest.mark.parametrize(("cfg", "shape", "text_len"), [(WAN_TINY, (1, 4, 2, 16, 16), 12), (WAN_LARGER, (2, 8, 4, 12, 16), 10)])
def test_wan_one_shot_full_policy_equals_stock(cfg, shape, text_len) -> None:
    model = _wan(cfg)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    ctx = torch.randn(shape[0], text_len, cfg["text_dim"], generator=g)
    t = torch.randint(0, 1000, (shape[0],), generator=g)
    with torch.no_grad():
        ref = model(x, t, ctx).sample
        adapter = WanSceneAdapter(model)
        pt, ph, pw = cfg["patch_size"]
        layout = SequenceLayout.scene(text_lens=[text_len], video_grids=[(shape[2] // pt, shape[3] // ph, shape[4] // pw)])
        for backend in ("auto", "dense", "grouped"):
            assert _err(adapter(x, t, ctx, layout, policy="full", backend=backend), ref) <= TOL
        assert _err(adapter(x, t.float()[:, None], ctx, layout, policy="full"), ref) <= TOL  # [B, n_shots] form
        assert _err(model(x, t, ctx).sample, ref) == 0.0  # the wrapped stock model still runs its own way


@pytest.mark.parametrize(
    ("cfg", "shape", "crop"),
    [
        (COG_TINY, (2, 4, 1, 8, 8), None),
        (COG_ROPE, (2, 4, 3, 8, 12), ((0, 0), (3, 4))),  # grid 4x6 onto base 4x4: resize-crop region (diffusers)
        (COG_15, (2, 4, 4, 8, 8), None),
    ],
    ids=["tiny-sincos", "rope-crop-grid", "v1.5-patch-t"],
)
def test_cogvideox_one_shot_full_policy_equals_stock(cfg, shape, crop) -> None:
    model = _cog(cfg)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g)
    ctx = torch.randn(shape[0], cfg["max_text_seq_length"], cfg["text_embed_dim"], generator=g)
    t = torch.randint(0, 1000, (shape[0],), generator=g)
    with torch.no_grad():
        ref = _stock_cog(model, x, ctx, t, crop)
        adapter = CogVideoXSceneAdapter(model)
        pt, ph, pw = adapter.patch_size
        layout = SequenceLayout.scene(text_lens=[ctx.shape[1]], video_grids=[(shape[2] // pt, shape[3] // ph, shape[4] // pw)])
        for backend in ("auto", "dense", "grouped"):
            assert _err(adapter(x, t, ctx, layout, policy="full", backend=backend), ref) <= TOL
        assert _err(_stock_cog(model, x, ctx, t, crop), ref) == 0.0


def test_config_attributes() -> None:
    wan, cog, cog15 = WanSceneAdapter(_wan(WAN_LARGER)), CogVideoXSceneAdapter(_cog(COG_TINY)), CogVideoXSceneAdapter(_cog(COG_15))
    assert (wan.patch_size, wan.in_channels, wan.text_dim, wan.text_len, wan.prediction) == ((2, 2, 2), 8, 24, 512, "flow")
    assert (cog.patch_size, cog.in_channels, cog.text_dim, cog.text_len, cog.prediction) == ((1, 2, 2), 4, 8, 8, "v")
    assert cog15.patch_size == (2, 2, 2)
    assert wan.num_parameters() == sum(p.numel() for p in wan.transformer.parameters())


# ----------------------------------------------------------------------------------------- multi-shot


def test_wan_block_diagonal_shots_equal_stock_per_shot_with_own_timesteps() -> None:
    model = _wan(WAN_TINY)
    adapter = WanSceneAdapter(model)
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(2, 4, 2, 8, 8, generator=g) for _ in range(3)]
    cs = [torch.randn(2, 6, 16, generator=g) for _ in range(3)]
    t = torch.tensor([[100.0, 500.0, 900.0], [999.0, 0.0, 250.0]])  # distinct per shot: per-token timesteps
    layout = SequenceLayout.scene(text_lens=[6] * 3, video_grids=[(2, 4, 4)] * 3)
    with torch.no_grad():
        for backend in ("dense", "grouped", "flex"):
            out = adapter(torch.cat(xs, 2), t, torch.cat(cs, 1), layout, policy="block_diagonal", backend=backend)
            for i in range(3):
                assert _err(out[:, :, 2 * i : 2 * i + 2], model(xs[i], t[:, i], cs[i]).sample) <= TOL


@pytest.mark.parametrize("cfg", [COG_TINY, COG_ROPE], ids=["sincos", "rope"])
def test_cogvideox_block_diagonal_shots_equal_stock_per_shot(cfg) -> None:
    model = _cog(cfg)
    adapter = CogVideoXSceneAdapter(model)
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(1, 4, 2, 8, 8, generator=g) for _ in range(3)]
    cs = [torch.randn(1, 8, cfg["text_embed_dim"], generator=g) for _ in range(3)]  # stock sin-cos needs 8 tokens
    t = torch.tensor([[10.0, 600.0, 999.0]])
    layout = SequenceLayout.scene(text_lens=[8] * 3, video_grids=[(2, 4, 4)] * 3)
    crop = ((0, 0), (4, 4))  # a native 4x4 grid
    with torch.no_grad():
        for backend in ("dense", "grouped"):
            out = adapter(torch.cat(xs, 2), t, torch.cat(cs, 1), layout, policy="block_diagonal", backend=backend)
            for i in range(3):
                assert _err(out[:, :, 2 * i : 2 * i + 2], _stock_cog(model, xs[i], cs[i], t[:, i], crop)) <= TOL


def _scene(kind: str, seed: int):
    """An adapter, a 3-shot layout with a global prompt and matching inputs."""
    g = torch.Generator().manual_seed(seed)
    if kind == "wan":
        adapter, tdim, grids, frames = WanSceneAdapter(_wan(WAN_TINY)), 16, [(2, 4, 4), (1, 4, 4), (2, 4, 4)], 5
        t = torch.tensor([[0.0, 400.0, 1000.0]])
    else:
        adapter, tdim, grids, frames = CogVideoXSceneAdapter(_cog(COG_15)), 12, [(1, 4, 4), (2, 4, 4), (1, 4, 4)], 8
        t = torch.tensor([[0.0, 400.0, 999.0]])
    layout = SequenceLayout.scene(text_lens=[4, 6, 5], video_grids=grids, global_text_len=3)
    x = torch.randn(1, 4, frames, 8, 8, generator=g)
    ctx = torch.randn(1, 3 + 15, tdim, generator=g)
    return adapter, layout, x, ctx, t


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
@pytest.mark.parametrize("policy", ["mask2dit", "mask2dit:v1", "mask2dit:v4", "causal_shots", "full", "hybrid:block_diagonal*1,full"])
def test_multishot_backends_equal_dense(kind, policy) -> None:
    adapter, layout, x, ctx, t = _scene(kind, 5)
    with torch.no_grad():
        ref = adapter(x, t, ctx, layout, policy=policy, backend="dense")
        for backend in ("grouped", "flex", "auto"):
            if backend == "flex" and policy.startswith("hybrid"):
                continue  # per-layer plans are covered by grouped/auto
            assert _err(adapter(x, t, ctx, layout, policy=policy, backend=backend), ref) <= TOL, backend


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_kv_cached_causal_generation_equals_uncached(kind) -> None:
    adapter, layout, x, ctx, t = _scene(kind, 6)
    with torch.no_grad():
        full = adapter(x, t, ctx, layout, policy="causal_shots", backend="dense")
        cache = KVCache()
        assert adapter(None, t[:, :0], ctx[:, :3], layout.prefix(1), policy="causal_shots", kv_cache=cache, cache_write=True) is None
        assert cache.n_tokens == 3 and len(cache.layers) == adapter.num_layers
        parts, f0, c0 = [], 0, 3
        frames = [adapter._latent_frames(layout, i) for i in layout.video_segments()]
        for shot in range(3):
            sub = layout.prefix(1 + 2 * (shot + 1))
            n_text = layout.segments[1 + 2 * shot].length
            xs, cs = x[:, :, f0 : f0 + frames[shot]], ctx[:, c0 : c0 + n_text]
            # a denoising step reads the cache without writing; the step that writes gives the same output
            step = adapter(xs, t[:, : shot + 1], cs, sub, policy="causal_shots", kv_cache=cache)
            parts.append(adapter(xs, t[:, : shot + 1], cs, sub, policy="causal_shots", kv_cache=cache, cache_write=True))
            assert _err(step, parts[-1]) == 0.0
            f0, c0 = f0 + frames[shot], c0 + n_text
        assert cache.layout == layout
        assert _err(torch.cat(parts, 2), full) <= TOL
        # a pass over several new segments in layout order [text][video][text][video] through the cache
        cache.truncate(3)
        two = adapter(x[:, :, frames[0]:], t, ctx[:, 3 + 4 :], layout, policy="causal_shots", kv_cache=cache, backend="grouped")
        assert _err(two, full[:, :, frames[0]:]) <= TOL


def test_wan_cross_attention_sees_only_its_own_prompt() -> None:
    model = _wan(dict(WAN_TINY, num_layers=1))
    g = torch.Generator().manual_seed(7)
    x, ctx = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 12, 16, generator=g)
    other = ctx.clone()
    other[:, 6:] = torch.randn(1, 6, 16, generator=g)  # shot 1's prompt changes
    layout = SequenceLayout.scene(text_lens=[6, 6], video_grids=[(2, 4, 4)] * 2)
    t = torch.tensor([500.0])
    with torch.no_grad():
        for cross, changes in (("block_diagonal", False), ("full", True)):
            adapter = WanSceneAdapter(model, cross_policy=cross)
            a, b = (adapter(x, t, c, layout, policy="full")[:, :, :2] for c in (ctx, other))
            assert (_err(a, b) > 1e-4) == changes, cross


def test_cogvideox_mask2dit_text_isolation() -> None:
    adapter = CogVideoXSceneAdapter(_cog(COG_TINY))  # one layer: shot 1's text reaches shot 0 only through the mask
    g = torch.Generator().manual_seed(8)
    x, ctx = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 10, 8, generator=g)
    other = ctx.clone()
    other[:, 5:] = torch.randn(1, 5, 8, generator=g)
    layout = SequenceLayout.scene(text_lens=[5, 5], video_grids=[(1, 4, 4)] * 2)
    t = torch.tensor([300.0])
    with torch.no_grad():
        for policy, changes in (("mask2dit", False), ("mask2dit:v4", True)):
            a, b = (adapter(x, t, c, layout, policy=policy)[:, :, :1] for c in (ctx, other))
            assert (_err(a, b) > 1e-4) == changes, policy


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_list_inputs_with_an_image_shot_and_other_sizes(kind) -> None:
    """Per-segment latents of different sizes (a video shot and a one-frame image shot) under block_diagonal."""
    g = torch.Generator().manual_seed(9)
    if kind == "wan":
        model, tdim = _wan(WAN_TINY), 16
        adapter = WanSceneAdapter(model)

        def stock(x, c, t):
            return model(x, t, c).sample
    else:
        model, tdim = _cog(COG_ROPE), 12
        adapter = CogVideoXSceneAdapter(model)

        def stock(x, c, t):
            return _stock_cog(model, x, c, t, ((0, 0), (4, 4)) if x.shape[-1] == 8 else ((0, 0), (3, 4)))
    xs = [torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 4, 1, 8, 12, generator=g)]
    cs = [torch.randn(1, 4, tdim, generator=g), torch.randn(1, 3, tdim, generator=g)]
    layout = SequenceLayout.scene(text_lens=[4, 3], video_grids=[(2, 4, 4), (1, 4, 6)],
                                  visual_modalities=[Modality.VIDEO, Modality.IMAGE])
    t = torch.tensor([[200.0, 700.0]])
    with torch.no_grad():
        out = adapter(xs, t, torch.cat(cs, 1), layout, policy="block_diagonal")
        assert isinstance(out, list) and [o.shape for o in out] == [x.shape for x in xs]
        for i in range(2):
            assert _err(out[i], stock(xs[i], cs[i], t[:, i])) <= TOL
        with pytest.raises(ValueError, match="pass x as a list"):
            adapter(torch.randn(1, 4, 3, 8, 8), t, torch.cat(cs, 1), layout)


def test_interleaved_origins() -> None:
    layout = SequenceLayout.scene(text_lens=[4, 6], video_grids=[(2, 4, 4), (3, 5, 5)], global_text_len=3)
    # cursor: global 0..2, text0 3..6, video0 at 7 (+max 4), text1 11..16, video1 at 17; shift = 3 (first segment)
    assert segment_origins(layout) == [0, 4, 4, 14, 14]
    assert segment_origins(SequenceLayout.scene(text_lens=[4], video_grids=[(2, 4, 4)])) == [0, 0]


# ----------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_gradients_checkpointing_and_grouped_match_dense(kind) -> None:
    adapter, layout, x, ctx, t = _scene(kind, 10)
    adapter.train()

    def grads(backend: str, ckpt: bool) -> list[torch.Tensor]:
        adapter.zero_grad()
        adapter.gradient_checkpointing = ckpt
        adapter(x, t, ctx, layout, policy="mask2dit", backend=backend).square().mean().backward()
        return [p.grad.clone() for p in adapter.parameters() if p.grad is not None]

    ref = grads("dense", False)
    assert len(ref) == len([p for p in adapter.parameters() if p.requires_grad])
    for backend, ckpt in (("dense", True), ("grouped", False)):
        got = grads(backend, ckpt)
        assert max(_err(a, b) / (b.abs().max().item() + 1e-12) for a, b in zip(got, ref)) <= 1e-4
    assert adapter.transformer.gradient_checkpointing is False


def test_lora_through_the_adapter() -> None:
    from peft import LoraConfig

    model = _wan(WAN_TINY)
    adapter, layout = WanSceneAdapter(model), SequenceLayout.scene(text_lens=[6, 6], video_grids=[(2, 4, 4)] * 2)
    x, ctx, t = torch.randn(1, 4, 4, 8, 8), torch.randn(1, 12, 16), torch.tensor([300.0])
    with torch.no_grad():
        before = adapter(x, t, ctx, layout)
    model.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=True))
    with torch.no_grad():
        assert _err(adapter(x, t, ctx, layout), before) <= TOL  # LoRA starts as the identity
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora:
            p.normal_(std=0.1)
    adapter(x, t, ctx, layout).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


# ----------------------------------------------------------------------------------------- errors and loading


def test_bad_inputs_name_the_problem() -> None:
    adapter = WanSceneAdapter(_wan(WAN_TINY))
    layout = SequenceLayout.scene(text_lens=[6], video_grids=[(2, 4, 4)])
    x, ctx, t = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 6, 16), torch.tensor([1.0])
    with pytest.raises(ValueError, match="context width 8"):
        adapter(x, t, torch.randn(1, 6, 8), layout)
    with pytest.raises(ValueError, match="need 2 latent frames"):
        adapter(torch.randn(1, 4, 3, 8, 8), t, ctx, layout)
    with pytest.raises(ValueError, match="token grid"):
        adapter(torch.randn(1, 4, 2, 8, 10), t, ctx, layout)
    with pytest.raises(ValueError, match="t has shape"):
        adapter(x, torch.ones(1, 3), ctx, layout)
    with pytest.raises(ValueError, match="unknown mask policy"):
        adapter(x, t, ctx, layout, policy="nope")
    with pytest.raises(ValueError, match="cache_write=True needs a kv_cache"):
        adapter(x, t, ctx, layout, cache_write=True)
    lay = SequenceLayout([Segment(Modality.TEXT, 0, (6, 1, 1)), Segment(Modality.LAYOUT, 0, (2, 1, 1), instance=0,
                                                                       box=(0.0, 0.0, 0.5, 0.5)), Segment(Modality.VIDEO, 0, (2, 4, 4))])
    with pytest.raises(ValueError, match="no stream for \\['LAYOUT'\\]"):
        adapter(x, t, torch.randn(1, 8, 16), lay)
    blind = SequenceLayout([Segment(Modality.TEXT, 0, (6, 1, 1)), Segment(Modality.VIDEO, 0, (2, 4, 4)),
                            Segment(Modality.VIDEO, 1, (2, 4, 4))])
    with pytest.raises(ValueError, match="shot\\(s\\) \\[1\\] can read no text"):
        adapter(torch.randn(1, 4, 4, 8, 8), torch.ones(1, 2), ctx, blind)
    cache = KVCache()
    adapter(x, t, ctx, layout, kv_cache=cache, cache_write=True)
    with pytest.raises(ValueError, match="not a prefix"):
        adapter(x, t, ctx, SequenceLayout.scene(text_lens=[5], video_grids=[(2, 4, 4)]).append(layout.segments), kv_cache=cache)
    with pytest.raises(ValueError, match="image branch"):
        WanSceneAdapter(_wan(dict(WAN_TINY, image_dim=8, added_kv_proj_dim=24)))
    with pytest.raises(ValueError, match="wraps a diffusers CogVideoXTransformer3DModel"):
        CogVideoXSceneAdapter(adapter.transformer)
    with pytest.raises(ValueError, match="cross_policy='bad'"):
        WanSceneAdapter(adapter.transformer, cross_policy="bad")


def test_load_backbone_from_config_dir_and_pipeline_root(tmp_path) -> None:
    adapter = load_backbone("wan", WAN_TINY, attn_policy="causal_shots")
    assert isinstance(adapter, WanSceneAdapter) and adapter.attn_policy == "causal_shots"
    adapter.transformer.save_pretrained(tmp_path / "pipe" / "transformer")
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    layout = SequenceLayout.scene(text_lens=[6], video_grids=[(2, 4, 4)])
    x, ctx, t = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 6, 16), torch.tensor([10.0])
    with torch.no_grad():
        ref = adapter(x, t, ctx, layout)
        for path in (tmp_path / "pipe", tmp_path / "pipe" / "transformer"):
            assert _err(load_backbone("wan", path)(x, t, ctx, layout), ref) == 0.0
    wan16 = load_backbone("wan", WAN_TINY, dtype=torch.bfloat16)  # float32 regions kept as diffusers keeps them
    assert wan16.transformer.scale_shift_table.dtype == torch.float32 and wan16.dtype == torch.bfloat16
    with torch.no_grad():
        x16, c16 = x.bfloat16(), ctx.bfloat16()
        ref16 = wan16.transformer(x16, t, c16).sample.float()
        assert _err(wan16(x16, t, c16, layout, policy="full").float(), ref16) <= 2e-2 * ref16.abs().max().item()
    half = load_backbone("cogvideox", COG_TINY, dtype=torch.bfloat16)
    assert isinstance(half, CogVideoXSceneAdapter) and half.dtype == torch.bfloat16
    out = half(torch.randn(1, 4, 1, 8, 8), torch.tensor([5]), torch.randn(1, 8, 8), SequenceLayout.scene(text_lens=[8], video_grids=[(1, 4, 4)]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(BackboneWeightsError, match="holds a WanTransformer3DModel.*use kind='wan'"):
        load_backbone("cogvideox", tmp_path / "pipe")
    with pytest.raises(ValueError, match="unknown backbone kind 'sora'"):
        load_backbone("sora", WAN_TINY)


def test_incomplete_weight_dirs_list_the_expected_files(tmp_path) -> None:
    with pytest.raises(BackboneWeightsError, match="does not exist; expected .*config.json"):
        load_backbone("wan", tmp_path / "missing")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    with pytest.raises(BackboneWeightsError, match="missing \\['diffusion_pytorch_model.safetensors"):
        load_backbone("wan", tmp_path / "w")
    shards = ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
    (tmp_path / "w" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": shards[0], "b": shards[1]}}))
    (tmp_path / "w" / shards[0]).write_bytes(b"")
    with pytest.raises(BackboneWeightsError, match=f"missing \\['{shards[1]}'\\]"):
        load_backbone("wan", tmp_path / "w")


def test_flop_counts_follow_tokens_and_allowed_pairs() -> None:
    adapter = WanSceneAdapter(_wan(WAN_TINY))
    one = SequenceLayout.scene(text_lens=[6], video_grids=[(2, 4, 4)])
    three = SequenceLayout.scene(text_lens=[6] * 3, video_grids=[(2, 4, 4)] * 3)
    f1 = adapter.flops_breakdown(one, policy="full")
    fb = adapter.flops_breakdown(three, policy="block_diagonal")
    ff = adapter.flops_breakdown(three, policy="full")
    assert fb["attention"] == 3 * f1["attention"]
    dim, lv, lt, layers = 24, 32, 6, 2
    assert f1["attention"] == layers * 4 * dim * (lv * lv + lv * lt)  # self + cross pairs
    assert ff["attention"] == layers * 4 * dim * (9 * lv * lv + 3 * lv * lt)  # cross stays per shot
    assert abs(fb["linear"] / (3 * f1["linear"]) - 1) < 0.02
    cached = adapter.flops_breakdown(three, policy="causal_shots", n_cached_segments=4)
    assert cached["attention"] == layers * 4 * dim * (3 * lv * lv + lv * lt)
    assert adapter.flops_per_forward(one, policy="full", batch=2) == 2 * sum(f1.values())
    cog = CogVideoXSceneAdapter(_cog(COG_TINY))
    c1 = cog.flops_breakdown(SequenceLayout.scene(text_lens=[8], video_grids=[(1, 4, 4)]), policy="full")
    assert c1["attention"] == 1 * 4 * 16 * (24 * 24)
