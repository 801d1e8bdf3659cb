"""Multi-shot MMDiT: shapes, single-shot equivalence, per-shot timesteps, masks, KV cache, backends, I/O, costs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from storyreel.models import MODELS, MMDiTConfig, MultiShotMMDiT, get_model_config
from storyreel.nn.attention import BACKENDS
from storyreel.nn.embeddings import patchify, timestep_embedding, unpatchify
from storyreel.nn.kvcache import KVCache
from storyreel.nn.layout import Modality, Segment, SequenceLayout

CFG = MODELS["debug"]  # in_channels 4, patch (1, 2, 2), hidden 32, depth 2, text_dim 64
C, D = CFG.in_channels, CFG.text_dim


def perturbed(cfg: MMDiTConfig = CFG, seed: int = 0) -> MultiShotMMDiT:
    """A debug model moved away from adaLN-Zero init so that outputs depend on everything."""
    torch.manual_seed(seed)
    model = MultiShotMMDiT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def scene(grids, text_len: int = 3, global_len: int = 0, modalities=None) -> SequenceLayout:
    return SequenceLayout.scene(
        text_lens=[text_len] * len(grids), video_grids=grids, global_text_len=global_len, visual_modalities=modalities
    )


def inputs(layout: SequenceLayout, batch: int = 2, cfg: MMDiTConfig = CFG):
    """Random latents (concatenated along time) and text states for every segment of ``layout``."""
    pt, ph, pw = cfg.patch_size
    vis = [layout.segments[i] for i in layout.video_segments()]
    frames = sum(1 if s.modality == Modality.IMAGE else s.grid[0] * pt for s in vis)
    g = vis[0].grid
    x = torch.randn(batch, cfg.in_channels, frames, g[1] * ph, g[2] * pw)
    n_txt = sum(s.length for s in layout.segments if s.modality == Modality.TEXT)
    return x, torch.randn(batch, n_txt, cfg.text_dim)


def shot_frames(layout: SequenceLayout, shot: int) -> slice:
    """Latent frame slice of ``shot``'s video in the concatenated x (pt = 1)."""
    start = 0
    for i in layout.video_segments():
        s = layout.segments[i]
        if s.shot == shot:
            return slice(start, start + s.grid[0])
        start += s.grid[0]
    raise AssertionError(shot)


# ------------------------------------------------------------------------------------------ shapes


def test_output_shape_multishot_video_and_fresh_model_is_zero() -> None:
    layout = scene([(2, 2, 2), (1, 2, 2), (3, 2, 2)], global_len=2)
    x, ctx = inputs(layout)
    t = torch.rand(2, 3)
    fresh = MultiShotMMDiT(CFG)
    v0 = fresh(x, t, ctx, layout)
    assert v0.shape == x.shape and torch.count_nonzero(v0) == 0  # adaLN-Zero + zero head
    v = perturbed()(x, t, ctx, layout)
    assert v.shape == x.shape and v.dtype == x.dtype and v.abs().sum() > 0


def test_image_shots_and_list_inputs() -> None:
    layout = scene([(1, 2, 2), (2, 2, 2)], modalities=[Modality.IMAGE, Modality.VIDEO])
    x, ctx = inputs(layout)
    model = perturbed()
    v = model(x, torch.rand(2, 2), ctx, layout)
    assert v.shape == x.shape == (2, C, 3, 4, 4)
    # list form: per-segment latents, list back
    outs = model([x[:, :, :1], x[:, :, 1:]], torch.rand(2, 2), ctx, layout)
    assert [tuple(o.shape) for o in outs] == [(2, C, 1, 4, 4), (2, C, 2, 4, 4)]


def test_temporal_patch_with_a_one_frame_image() -> None:
    cfg = get_model_config("debug", patch_size=(2, 2, 2))
    layout = scene([(1, 2, 2), (2, 2, 2)], modalities=[Modality.IMAGE, Modality.VIDEO])
    model = perturbed(cfg)
    x = [torch.randn(1, C, 1, 4, 4), torch.randn(1, C, 4, 4, 4)]  # image: T=1; video: T=4 → 2 temporal tokens
    ctx = torch.randn(1, 6, D)
    outs = model(x, torch.rand(1, 2), ctx, layout)
    assert [tuple(o.shape) for o in outs] == [(1, C, 1, 4, 4), (1, C, 4, 4, 4)]
    v = model(torch.cat(x, dim=2), torch.rand(1, 2), ctx, layout)
    assert v.shape == (1, C, 5, 4, 4)


def test_patchify_roundtrip_and_timestep_embedding() -> None:
    x = torch.randn(2, 3, 4, 6, 8)
    tok = patchify(x, (2, 3, 2))
    assert tok.shape == (2, 2 * 2 * 4, 3 * 12)
    assert torch.equal(unpatchify(tok, (2, 2, 4), (2, 3, 2), 3), x)
    img = torch.randn(1, 3, 1, 6, 8)
    assert torch.allclose(unpatchify(patchify(img, (2, 3, 2)), (1, 2, 4), (2, 3, 2), 3, frames=1), img)
    e = timestep_embedding(torch.tensor([0.0, 0.5]).to(torch.bfloat16), 7)
    assert e.dtype == torch.float32 and e.shape == (2, 7)
    assert torch.allclose(e[0, :3], torch.ones(3)) and torch.allclose(e[0, 3:], torch.zeros(4))


# -------------------------------------------------------------------------------- single-shot path


def test_one_shot_layout_policies_coincide() -> None:
    """The single-shot path: for one shot, full == mask2dit (all variants) == block_diagonal == causal_shots."""
    layout = scene([(2, 2, 2)], text_len=4)
    x, ctx = inputs(layout)
    model, t = perturbed(), torch.rand(2)
    ref = model(x, t, ctx, layout, policy="full")
    for pol in ("mask2dit", "mask2dit:v1", "mask2dit:v3", "block_diagonal", "causal_shots", "hybrid:block_diagonal*1,full"):
        assert torch.allclose(model(x, t, ctx, layout, policy=pol), ref, atol=1e-6), pol


def test_shot_inside_block_diagonal_scene_equals_single_shot() -> None:
    """Interleaved RoPE keeps each shot's relative offsets: under block_diagonal every shot of a scene
    equals the single-shot model run on that shot alone."""
    layout = scene([(2, 2, 2), (1, 2, 2), (2, 2, 2)])
    x, ctx = inputs(layout)
    model, t = perturbed(), torch.rand(2, 3)
    v = model(x, t, ctx, layout, policy="block_diagonal")
    for shot in range(3):
        sl = shot_frames(layout, shot)
        single = scene([layout.segments[2 * shot + 1].grid])
        v1 = model(x[:, :, sl], t[:, shot], ctx[:, 3 * shot : 3 * shot + 3], single, policy="full")
        assert torch.allclose(v[:, :, sl], v1, atol=1e-5), shot


# ------------------------------------------------------------------------------ per-shot timesteps


def test_equal_per_shot_timesteps_equal_uniform_call() -> None:
    layout = scene([(1, 2, 2), (2, 2, 2)], global_len=2)
    x, ctx = inputs(layout)
    model = perturbed()
    tb = torch.tensor([0.3, 0.8])
    assert torch.equal(model(x, tb, ctx, layout), model(x, tb[:, None].expand(2, 2), ctx, layout))


@pytest.mark.parametrize("policy, shot0_changes", [("block_diagonal", False), ("mask2dit:v2", True), ("full", True)])
def test_changing_one_shots_timestep(policy: str, shot0_changes: bool) -> None:
    layout = scene([(2, 2, 2), (2, 2, 2)])
    x, ctx = inputs(layout)
    model = perturbed()
    t_a, t_b = torch.tensor([[0.5, 0.5]] * 2), torch.tensor([[0.5, 0.9]] * 2)
    va, vb = model(x, t_a, ctx, layout, policy=policy), model(x, t_b, ctx, layout, policy=policy)
    s0, s1 = shot_frames(layout, 0), shot_frames(layout, 1)
    assert not torch.allclose(va[:, :, s1], vb[:, :, s1], atol=1e-4)  # shot 1 sees its own timestep
    assert torch.allclose(va[:, :, s0], vb[:, :, s0], atol=1e-6) != shot0_changes


def test_text_tokens_take_their_shots_timestep() -> None:
    """With the video stream's adaLN made timestep-independent, t only enters through the text stream. Under
    mask2dit:v1 (text_i ↔ video_i only) changing t_1 must change shot 1 (its text takes t_1) and leave shot 0 alone
    (shot 0's text takes t_0)."""
    layout = scene([(1, 2, 2), (1, 2, 2)])
    x, ctx = inputs(layout, batch=1)
    model = perturbed()
    with torch.no_grad():  # silence the video stream's own adaLN so only text modulation carries t
        for blk in model.blocks:
            blk.vid.ada.linear.weight.zero_()
            blk.vid.ada.linear.bias.copy_(0.1 * torch.randn_like(blk.vid.ada.linear.bias))
        model.final_ada.linear.weight.zero_()
    va = model(x, torch.tensor([[0.2, 0.2]]), ctx, layout, policy="mask2dit:v1")
    vb = model(x, torch.tensor([[0.2, 0.7]]), ctx, layout, policy="mask2dit:v1")
    s0, s1 = shot_frames(layout, 0), shot_frames(layout, 1)
    assert torch.allclose(va[:, :, s0], vb[:, :, s0], atol=1e-6)
    assert not torch.allclose(va[:, :, s1], vb[:, :, s1], atol=1e-4)


# -------------------------------------------------------------------------------------- KV cache


def test_causal_kv_cache_equals_full_causal_forward() -> None:
    layout = scene([(2, 2, 2), (1, 2, 2), (2, 2, 2)], global_len=2)
    x, ctx = inputs(layout)
    model, t = perturbed(), torch.rand(2, 3)
    full = model(x, t, ctx, layout, policy="causal_shots")

    cache = KVCache()
    assert model(None, t[:, :0], ctx[:, :2], layout.prefix(1), policy="causal_shots", kv_cache=cache, cache_write=True) is None
    assert cache.n_tokens == 2
    n_txt = 2
    for shot in range(3):
        sub = layout.prefix(1 + 2 * (shot + 1))  # global + shots 0..shot
        sl = shot_frames(layout, shot)
        c_shot = ctx[:, n_txt : n_txt + 3]
        # a forward without cache_write leaves the cache as it was
        peek = model(x[:, :, sl], t[:, : shot + 1], c_shot, sub, policy="causal_shots", kv_cache=cache)
        assert cache.layout.n_segments == 1 + 2 * shot
        out = model(x[:, :, sl], t[:, : shot + 1], c_shot, sub, policy="causal_shots", kv_cache=cache, cache_write=True)
        assert torch.equal(peek, out)
        assert (out - full[:, :, sl]).abs().max() <= 1e-5, shot
        n_txt += 3
    assert cache.layout == layout and cache.n_tokens == layout.seq_len


def test_history_at_noise_level_tc_in_cache() -> None:
    """History held at t_c: caching shot 0 at t_c then generating shot 1 equals the full causal forward with
    per-shot timesteps (t_c, t_1)."""
    layout = scene([(2, 2, 2), (2, 2, 2)])
    x, ctx = inputs(layout, batch=1)
    model = perturbed()
    t = torch.tensor([[0.1, 0.9]])
    full = model(x, t, ctx, layout, policy="causal_shots")
    cache = KVCache()
    model(x[:, :, :2], t[:, :1], ctx[:, :3], layout.prefix(2), policy="causal_shots", kv_cache=cache, cache_write=True)
    out = model(x[:, :, 2:], t, ctx[:, 3:], layout, policy="causal_shots", kv_cache=cache)
    assert (out - full[:, :, 2:]).abs().max() <= 1e-5


# -------------------------------------------------------------------------------------- backends


def _cpu_backends() -> list[str]:
    from storyreel.nn.attention import plan_attention

    layout = scene([(1, 2, 2)])
    ok = []
    for b in BACKENDS:
        try:
            plan_attention(layout, "full", backend=b, device="cpu")
        except (ValueError, RuntimeError):
            continue
        ok.append(b)
    return ok


def _check_backends(backends: list[str], policies: tuple[str, ...]) -> None:
    layout = scene([(2, 2, 2), (1, 2, 2), (1, 2, 2)], global_len=2)
    x, ctx = inputs(layout)
    model, t = perturbed(), torch.rand(2, 3)
    with torch.no_grad():  # inference (flex has no CPU backward)
        for policy in policies:
            ref = model(x, t, ctx, layout, policy=policy, backend="dense")
            for b in backends:
                err = (model(x, t, ctx, layout, policy=policy, backend=b) - ref).abs().max()
                assert err <= 1e-5, (policy, b, err)


POLICIES = ("full", "mask2dit", "block_diagonal", "causal_shots", "hybrid:mask2dit:v4*1,causal_shots")


def test_grouped_and_auto_backends_match_dense() -> None:
    assert {"dense", "grouped"} <= set(_cpu_backends())
    _check_backends(["grouped", "auto"], POLICIES)


@pytest.mark.slow
def test_flex_backend_matches_dense() -> None:
    """Eager flex_attention on CPU takes seconds per plan, hence slow. The pinned torch plans flex on CPU."""
    assert "flex" in _cpu_backends()
    _check_backends(["flex"], POLICIES)


def test_grouped_backend_gradients_match_dense() -> None:
    layout = scene([(1, 2, 2), (2, 2, 2)], global_len=2)
    x, ctx = inputs(layout)
    model, t = perturbed(), torch.rand(2, 2)
    grads = {}
    for b in ("dense", "grouped"):
        model.zero_grad()
        model(x, t, ctx, layout, policy="mask2dit", backend=b).square().mean().backward()
        grads[b] = [p.grad.clone() for p in model.parameters()]
    for gd, gg in zip(grads["dense"], grads["grouped"]):
        assert torch.allclose(gd, gg, atol=1e-5)


# ------------------------------------------------------------------------------------ I/O, errors


def test_save_pretrained_roundtrip(tmp_path) -> None:
    cfg = get_model_config("debug", attn_policy=("block_diagonal", "causal_shots"))
    model = perturbed(cfg)
    model.save_pretrained(tmp_path / "m")
    loaded = MultiShotMMDiT.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    layout = scene([(1, 2, 2), (1, 2, 2)])
    x, ctx = inputs(layout)
    t = torch.rand(2, 2)
    assert torch.equal(model(x, t, ctx, layout), loaded(x, t, ctx, layout))


def test_save_pretrained_shards_large_weights_and_loads_them_back(tmp_path) -> None:
    from storyreel.pretrained import INDEX_NAME, WEIGHTS_NAME, CheckpointError, shard_state

    model = perturbed(CFG)
    state = model.state_dict()
    total = sum(v.numel() * v.element_size() for v in state.values())
    limit = total // 3 + 1
    model.save_pretrained(tmp_path / "m", max_shard_bytes=limit)
    shards = sorted((tmp_path / "m").glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (tmp_path / "m" / WEIGHTS_NAME).exists()
    index = json.loads((tmp_path / "m" / INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(state) and index["metadata"]["total_size"] == total
    biggest = max(v.numel() * v.element_size() for v in state.values())
    assert all(p.stat().st_size <= max(limit, biggest) + 64 * 1024 for p in shards)  # header + data per file
    loaded = MultiShotMMDiT.from_pretrained(tmp_path / "m")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    # saving again unsharded replaces the shards (no stale files left to confuse a loader)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / WEIGHTS_NAME).is_file() and not (tmp_path / "m" / INDEX_NAME).exists()
    assert not list((tmp_path / "m").glob("model-*-of-*.safetensors"))
    # a missing shard is named
    model.save_pretrained(tmp_path / "s", max_shard_bytes=limit)
    victim = sorted((tmp_path / "s").glob("model-*-of-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        MultiShotMMDiT.from_pretrained(tmp_path / "s")
    # the split keeps every tensor once, in at most max_bytes per group unless a tensor alone is bigger
    groups = shard_state(state, limit)
    assert sorted(k for g in groups for k in g) == sorted(state)
    assert all(sum(v.numel() * v.element_size() for v in g.values()) <= limit or len(g) == 1 for g in groups)


def test_bad_inputs_name_both_sides() -> None:
    layout = scene([(1, 2, 2), (1, 2, 2)])
    x, ctx = inputs(layout)
    model, t = MultiShotMMDiT(CFG), torch.rand(2, 2)
    with pytest.raises(ValueError, match=r"context has 5 tokens.*hold 6"):
        model(x, t, ctx[:, :5], layout)
    with pytest.raises(ValueError, match=r"context width 63 != model text_dim 64"):
        model(x, t, ctx[..., :63], layout)
    with pytest.raises(ValueError, match=r"\(1, 5, 4\).*not divisible.*\(1, 2, 2\)"):
        model([torch.randn(2, C, 1, 5, 4), x[:, :, 1:]], t, ctx, layout)
    with pytest.raises(ValueError, match=r"gives tokens \(1, 3, 2\).*token grid \(1, 2, 2\)"):
        model(torch.randn(2, C, 2, 6, 4), t, ctx, layout)
    with pytest.raises(ValueError, match=r"3 latent frames.*need 2"):
        model(torch.randn(2, C, 3, 4, 4), t, ctx, layout)
    with pytest.raises(ValueError, match=r"C=4"):
        model(torch.randn(2, 3, 2, 4, 4), t, ctx, layout)
    with pytest.raises(ValueError, match=r"t has shape \(2, 3\).*\(2, 2\)"):
        model(x, torch.rand(2, 3), ctx, layout)
    with pytest.raises(ValueError, match=r"policy='diagonal'"):
        model(x, t, ctx, layout, policy="diagonal")
    with pytest.raises(ValueError, match=r"batch sizes differ"):
        model(x, t, ctx[:1], layout)
    with pytest.raises(ValueError, match=r"cache_write=True needs a kv_cache"):
        model(x, t, ctx, layout, cache_write=True)
    cache = KVCache()
    model(x[:, :, :1], t[:, :1], ctx[:, :3], scene([(1, 2, 2)], text_len=2 + 1), kv_cache=cache, cache_write=True)
    with pytest.raises(ValueError, match=r"not a prefix"):
        model(x[:, :, 1:], t, ctx[:, 3:], scene([(1, 2, 2), (1, 2, 2)], text_len=4), kv_cache=cache)
    with pytest.raises(ValueError, match=r"holds batch 2 .*this forward has batch 1"):
        model(x[:1, :, 1:], t[:1], ctx[:1, 3:], layout, kv_cache=cache)


def test_config_validation_and_registry() -> None:
    with pytest.raises(ValueError, match=r"heads=5.*divisor of hidden=32"):
        get_model_config("debug", heads=5)
    with pytest.raises(ValueError, match=r"patch_size"):
        get_model_config("debug", patch_size=(1, 0, 2))
    with pytest.raises(ValueError, match=r"attn_policy"):
        get_model_config("debug", attn_policy="nope")
    with pytest.raises(ValueError, match=r"attn_policy"):
        get_model_config("debug", attn_policy=("full",) * 3)  # depth is 2
    with pytest.raises(ValueError, match=r"unknown model config 'huge'.*debug"):
        get_model_config("huge")
    with pytest.raises(ValueError, match=r"unknown field.*'hiden'"):
        get_model_config("debug", hiden=3)
    with pytest.raises(ValueError, match=r"depth=0"):
        dataclasses.replace(CFG, depth=0)
    sizes = []
    for name in ("debug", "tiny", "small", "base", "large"):
        with torch.device("meta"):
            sizes.append(MultiShotMMDiT(MODELS[name]).num_parameters())
    assert sizes == sorted(sizes) and sizes[0] > 0


def test_bfloat16_weights_keep_float32_regions() -> None:
    layout = scene([(1, 2, 2), (2, 2, 2)])
    x, ctx = inputs(layout)
    model, t = perturbed(), torch.rand(2, 2)
    ref = model(x, t, ctx, layout)
    v = model.to(torch.bfloat16)(x, t, ctx, layout)
    assert v.dtype == torch.float32 and v.shape == ref.shape
    assert (v - ref).norm() / ref.norm() < 0.1


def test_mixed_spatial_sizes_need_a_list() -> None:
    layout = scene([(1, 2, 2), (1, 3, 2)])
    model = perturbed()
    ctx = torch.randn(1, 6, D)
    with pytest.raises(ValueError, match=r"different spatial token grids.*pass x as a list"):
        model(torch.randn(1, C, 2, 4, 4), torch.rand(1), ctx, layout)
    outs = model([torch.randn(1, C, 1, 4, 4), torch.randn(1, C, 1, 6, 4)], torch.rand(1), ctx, layout)
    assert [tuple(o.shape) for o in outs] == [(1, C, 1, 4, 4), (1, C, 1, 6, 4)]


# ------------------------------------------------------------------------------------------ costs


def test_parameter_and_flop_counts_scale() -> None:
    p = [MultiShotMMDiT(get_model_config("debug", depth=d)).num_parameters() for d in (2, 3, 4)]
    assert 0 < p[0] < p[1] < p[2] and p[2] - p[1] == p[1] - p[0]  # one full block per extra layer
    model = MultiShotMMDiT(CFG)
    one, two = scene([(2, 2, 2)]), scene([(2, 2, 2), (2, 2, 2)])
    f1 = model.flops_per_forward(one, policy="block_diagonal")
    assert f1 > 0
    assert model.flops_per_forward(two, policy="block_diagonal") == 2 * f1
    assert model.flops_per_forward(two, policy="full") > model.flops_per_forward(two, policy="mask2dit") > 2 * f1
    assert model.flops_per_forward(two, policy="block_diagonal", batch=3) == 6 * f1
    # the causal KV-cached forwards together cost exactly the full causal forward
    three = scene([(2, 2, 2), (1, 2, 2), (2, 2, 2)])
    pieces = sum(model.flops_per_forward(three.prefix(2 * (s + 1)), policy="causal_shots", n_cached_segments=2 * s) for s in range(3))
    assert pieces == model.flops_per_forward(three, policy="causal_shots")


# ------------------------------------------------------------------------------------- training


def test_a_few_adam_steps_reduce_the_loss() -> None:
    layout = scene([(1, 2, 2), (2, 2, 2)])
    x, ctx = inputs(layout)
    target = torch.randn_like(x)
    t = torch.tensor([[0.3, 0.7], [0.9, 0.1]])
    model = MultiShotMMDiT(CFG).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.mse_loss(model(x, t, ctx, layout), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_checkpointing_matches() -> None:
    layout = scene([(1, 2, 2), (1, 2, 2)])
    x, ctx = inputs(layout)
    model = perturbed().train()
    t = torch.rand(2, 2)
    model(x, t, ctx, layout).square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, t, ctx, layout).square().mean().backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6)


def test_layout_and_semantic_tokens_use_the_text_stream() -> None:
    segs = [
        Segment(Modality.TEXT, 0, (3, 1, 1)),
        Segment(Modality.LAYOUT, 0, (2, 1, 1), instance=0, box=(0.0, 0.0, 0.5, 0.5)),
        Segment(Modality.VIDEO, 0, (1, 2, 2)),
    ]
    layout = SequenceLayout(segs)
    model = perturbed()
    x, ctx = torch.randn(1, C, 1, 4, 4), torch.randn(1, 5, D)
    t = torch.rand(1)
    v = model(x, t, ctx, layout, policy="full")
    assert v.shape == x.shape
    with torch.no_grad():
        model.ctx_modality.weight[int(Modality.LAYOUT)].add_(torch.randn(CFG.hidden))  # layout tokens are told apart from text
    assert not torch.allclose(model(x, t, ctx, layout, policy="full"), v)


def test_modulation_helpers_match_their_formulas() -> None:
    from storyreel.nn.modulation import gate, modulate

    torch.manual_seed(0)
    x, shift, scale, g = (torch.randn(2, 5, 8) for _ in range(4))
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale) + shift)
    torch.testing.assert_close(gate(x, shift, g), x + g * shift)
    torch.testing.assert_close(modulate(x, shift[:, :1], scale[:, :1]), x * (1 + scale[:, :1]) + shift[:, :1])  # broadcast
    xb = x.to(torch.bfloat16)
    assert modulate(xb, shift, scale).dtype == torch.bfloat16 and gate(xb, xb, g).dtype == torch.bfloat16
    torch.testing.assert_close(modulate(xb, shift, scale).float(), (xb.float() * (1 + scale) + shift).bfloat16().float())


def test_device_tables_are_built_once_per_layout_and_prefix() -> None:
    """Every sampling step of a shot reuses the packing, segment shots and RoPE rotation already on the device."""
    from storyreel.models.mmdit import _packing_on

    model = perturbed()
    layout = scene([(2, 2, 2)] * 2, global_len=2)
    x, ctx = inputs(layout, batch=1)
    _packing_on.cache_clear()
    with torch.no_grad():
        first = model(x, torch.tensor([[0.3, 0.7]]), ctx, layout)
        misses = _packing_on.cache_info().misses
        again = model(x, torch.tensor([[0.3, 0.7]]), ctx, layout)
    assert misses == 1 and _packing_on.cache_info().misses == 1 and _packing_on.cache_info().hits == 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    pack, seg_shot, freqs = _packing_on(layout, 0, torch.device("cpu"), CFG.head_dim, float(CFG.rope_theta))
    assert seg_shot.tolist() == [s.shot for s in layout.segments]  # the global prompt is shot -1 (timestep 0)
    assert freqs.is_complex() and freqs.shape == (layout.seq_len, CFG.head_dim // 2)


def test_qk_norm_runs_in_the_input_dtype_under_bf16_autocast() -> None:
    """Under bf16 autocast the q/k RMSNorm gets bf16 input and a float32 weight: it must not warn about the
    mismatch (the unfused fallback) and must match the float32 norm to bf16 precision."""
    import warnings

    from storyreel.models.mmdit import QKNorm

    norm = QKNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(2, 3, 5, 8)
    ref = torch.nn.RMSNorm(8, eps=1e-6)
    ref.load_state_dict(norm.state_dict())  # same state-dict names as nn.RMSNorm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), ref(x), rtol=2e-2, atol=2e-2)
    assert torch.equal(norm(x), ref(x))
    layout = scene([(1, 2, 2), (2, 2, 2)], global_len=2)
    xs, ctx = inputs(layout)
    model, t = perturbed(), torch.rand(2, 2)
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.filterwarnings("error", message=".*Mismatch dtype.*")
        out = model(xs, t, ctx, layout)
    assert torch.allclose(out.float(), model(xs, t, ctx, layout), atol=0.1)


# ------------------------------------------------------------------------------------------ depth growth


def test_grown_model_computes_what_the_shallow_one_did():
    from storyreel.train.grow import block_placement, grow_state

    small = perturbed(dataclasses.replace(CFG, depth=3), seed=3)
    big = MultiShotMMDiT(dataclasses.replace(CFG, depth=7)).eval()
    big.load_state_dict(grow_state(small.state_dict(), big.state_dict()))
    place = block_placement(3, 7)
    assert place == [0, 3, 6]
    for old, new in enumerate(place):  # trained blocks land where placed, bit for bit
        for name, p in small.blocks[old].state_dict().items():
            assert torch.equal(big.blocks[new].state_dict()[name], p), (old, new, name)
    # an inserted block copies the trained one before it, except for its zeroed residual gates
    ada_new, ada_src = big.blocks[4].vid.ada.linear.weight, small.blocks[1].vid.ada.linear.weight
    h = CFG.hidden
    assert torch.equal(ada_new[:2 * h], ada_src[:2 * h]) and not ada_new[2 * h:3 * h].any() and not ada_new[5 * h:].any()
    assert torch.equal(big.blocks[4].vid.qkv.weight, small.blocks[1].vid.qkv.weight)
    layout = scene([(2, 2, 2), (1, 2, 2)], global_len=2)
    x, ctx = inputs(layout)
    t = torch.tensor([[0.3, 0.8], [0.9, 0.1]])
    with torch.no_grad():
        assert torch.allclose(big(x, t, ctx, layout), small(x, t, ctx, layout), atol=1e-5)


def test_depth_growth_refuses_what_it_cannot_grow():
    from storyreel.train.grow import block_placement, grow_state

    with pytest.raises(ValueError, match="old depth <= new depth"):
        block_placement(4, 3)
    wide = MultiShotMMDiT(dataclasses.replace(CFG, hidden=48, heads=3)).state_dict()
    deep = MultiShotMMDiT(dataclasses.replace(CFG, depth=4)).state_dict()
    with pytest.raises(ValueError, match="in the trained model"):
        grow_state(wide, deep)
