"""KV-cached causal_shots attention equals the rows of full causal attention."""

from __future__ import annotations

import pytest
import torch

from storyreel.nn.attention import attention, plan_attention
from storyreel.nn.kvcache import KVCache
from storyreel.nn.layout import SequenceLayout
from storyreel.nn.rope import apply_rope, rope_cos_sin

LAYOUT = SequenceLayout.scene(text_lens=[3, 2, 4, 3], video_grids=[(2, 2, 2), (1, 3, 2), (2, 1, 3), (2, 2, 2)], global_text_len=2)
HEADS, HEAD_DIM, DIM = 2, 12, 24


def _chunks(layout: SequenceLayout) -> list[list[int]]:
    """Segments added per step: the global prompt with shot 0, then one shot at a time."""
    chunks = [layout.segments_of_shot(-1) + layout.segments_of_shot(0)]
    return chunks + [layout.segments_of_shot(s) for s in range(1, layout.n_shots)]


def _rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = rope_cos_sin(positions, HEAD_DIM)
    return apply_rope(x, cos, sin)


@pytest.mark.parametrize("backend", ["dense", "grouped", "flex"])
def test_shot_by_shot_attention_equals_full_causal_rows(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    L = LAYOUT.seq_len
    q, k, v = (torch.randn(1, HEADS, L, HEAD_DIM, generator=g) for _ in range(3))
    pos = LAYOUT.rope_positions()
    q, k = _rope(q, pos), _rope(k, pos)
    full = attention(q, k, v, plan_attention(LAYOUT, "causal_shots", backend="dense"))

    cache = KVCache()
    for segs in _chunks(LAYOUT):
        layout = cache.full_layout([LAYOUT.segments[s] for s in segs])
        new = cache.new_segment_indices(len(segs))
        assert layout == LAYOUT.prefix(layout.n_segments)
        rows = LAYOUT.token_indices(segs)
        # positions of the new tokens come from the (prefix) layout and match the full layout's
        assert torch.equal(layout.rope_positions()[cache.n_tokens :], pos[rows])
        k_all, v_all = cache.concat(0, k[:, :, rows], v[:, :, rows], write=True)
        plan = plan_attention(layout, "causal_shots", backend=backend, query_segments=new)
        out = attention(q[:, :, rows], k_all, v_all, plan)
        assert (out - full[:, :, rows]).abs().max().item() <= 1e-5
        cache.commit([LAYOUT.segments[s] for s in segs])
    assert cache.layout == LAYOUT and cache.n_tokens == L


class _ToyNet(torch.nn.Module):
    """Two attention layers with RoPE whose inputs depend on the previous layer (exercises the cache protocol)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.ModuleList(torch.nn.Linear(DIM, 3 * DIM) for _ in range(2))

    def forward(self, x: torch.Tensor, layout: SequenceLayout, cache: KVCache | None, write: bool) -> torch.Tensor:
        n_cached = 0 if cache is None else cache.n_tokens
        new = list(range(cache.n_segments if cache else 0, layout.n_segments))
        pos = layout.rope_positions()[n_cached:]
        plan = plan_attention(layout, "causal_shots", backend="grouped", query_segments=new)
        for i, lin in enumerate(self.qkv):
            q, k, v = lin(x).unflatten(-1, (3, HEADS, HEAD_DIM)).permute(2, 0, 3, 1, 4)  # [B,L,3*D] -> 3 x [B,H,L,Dh]
            q, k = _rope(q, pos), _rope(k, pos)
            if cache is not None:
                k, v = cache.concat(i, k, v, write=write)
            x = x + attention(q, k, v, plan).transpose(1, 2).flatten(2)  # [B,H,L,Dh] -> [B,L,D]
        return x


def test_multi_layer_cache_protocol_matches_full_pass() -> None:
    torch.manual_seed(0)
    net = _ToyNet()
    x = torch.randn(2, LAYOUT.seq_len, DIM)
    with torch.no_grad():
        full = net(x, LAYOUT, None, False)
        cache = KVCache()
        for segs in _chunks(LAYOUT):
            layout = cache.full_layout([LAYOUT.segments[s] for s in segs])
            rows = LAYOUT.token_indices(segs)
            peek = net(x[:, rows], layout, cache, write=False)  # e.g. a denoising step: reads, no write
            out = net(x[:, rows], layout, cache, write=True)
            cache.commit([LAYOUT.segments[s] for s in segs])
            assert torch.allclose(peek, out, atol=1e-6)
            assert (out - full[:, rows]).abs().max().item() <= 1e-5
    assert cache.layers == [0, 1]
    assert cache.nbytes == 2 * 2 * (2 * HEADS * LAYOUT.seq_len * HEAD_DIM * 4)  # layers x (k, v) x bytes


def test_kvcache_api_and_errors() -> None:
    cache = KVCache()
    assert cache.layout is None and cache.n_tokens == 0 and cache.get(0) is None and cache.nbytes == 0
    segs = list(LAYOUT.segments[:3])  # global + shot 0 (2 + 3 + 8 tokens)
    k = torch.zeros(1, 2, 13, 4)
    with pytest.raises(ValueError, match="no layer appended"):
        cache.commit(segs)
    cache.append(0, k, k)
    cache.append(1, k, k)
    with pytest.raises(ValueError, match="uncommitted"):
        cache.append(0, k, k)
    cache.commit(segs)
    assert cache.n_tokens == 13 and cache.get(1)[0].shape == (1, 2, 13, 4)
    more = list(LAYOUT.segments[3:5])  # shot 1: 2 + 6 tokens
    cache.append(0, torch.ones(1, 2, 8, 4), torch.ones(1, 2, 8, 4))
    with pytest.raises(ValueError, match=r"layers hold \{1: 13\}"):
        cache.commit(more)
    cache.append(1, torch.ones(1, 2, 8, 4), torch.ones(1, 2, 8, 4))
    cache.commit(more)
    assert cache.layout == LAYOUT.prefix(5) and len(cache) == 21
    with pytest.raises(ValueError, match="must match"):
        cache.append(0, torch.ones(1, 3, 2, 4), torch.ones(1, 3, 2, 4))
    with pytest.raises(ValueError, match="no cached tokens but the cache holds 21"):
        cache.append(7, k, k)
    cache.truncate(3)
    assert cache.n_tokens == 13 and cache.get(0)[0].shape[2] == 13 and torch.all(cache.get(0)[0] == 0)
    cache.clear()
    assert cache.layout is None and cache.layers == []


def test_kvcache_pool_keeps_the_main_line_through_a_detour() -> None:
    from storyreel.nn.kvcache import KVCachePool
    from storyreel.nn.layout import Modality, Segment

    def write(cache: KVCache, have: list, key: str) -> None:
        seg = Segment(Modality.TEXT, len(have), (2, 1, 1))
        k = torch.full((1, 1, 2, 4), float(ord(key[0])))
        cache.append(0, k, k.clone())
        cache.commit([seg])
        have.append(key)

    pool = KVCachePool(size=2)
    main, have = pool.get(["g", "a"])
    assert have == [] and main.n_tokens == 0
    for key in ("g", "a"):
        write(main, have, key)
    detour, dhave = pool.get(["g", "b"])  # shares "g" with the main line: a view, no copy
    assert dhave == ["g"] and detour is not main and detour.n_tokens == 2
    assert detour.get(0)[0].untyped_storage().data_ptr() == main.get(0)[0].untyped_storage().data_ptr()
    write(detour, dhave, "b")
    again, ahave = pool.get(["g", "a", "c"])  # the main line is still there and extends in place
    assert again is main and ahave == ["g", "a"] and main.n_tokens == 4
    assert torch.equal(main.get(0)[0][0, 0, :, 0], torch.tensor([103.0, 103.0, 97.0, 97.0]))  # untouched by the detour
    assert len(pool) == 2
    pool.get(["x"])  # a third line evicts the least recently used (the detour)
    assert len(pool) == 2 and pool.get(["g", "b"])[1] == ["g"]  # rebuilt from the main line's prefix
    with pytest.raises(ValueError, match="size"):
        KVCachePool(size=0)
