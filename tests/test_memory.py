"""History pool selection (recency / relevance / user-named) and GoldenMem compression."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from storyreel.memory import (
    PHI,
    HistoryPool,
    full_frame_tokens,
    goldenmem_compress,
    goldenmem_sizes,
    goldenmem_tokens,
    select_history,
)
from storyreel.text import HashingEncoder

# ------------------------------------------------------------------------------------------ selection


def test_recency_picks_the_most_recent_shots_in_time_order():
    assert select_history(6, range(6), 3) == [3, 4, 5]
    assert select_history(6, [5, 0, 2], 2) == [2, 5]
    assert select_history(2, [0, 1], 5) == [0, 1]  # fewer candidates than slots: all of them
    assert select_history(3, [0, 1, 2], 0) == []


def test_required_shots_are_always_kept():
    # a long take (cut: false) must see its previous shot even when another rule would drop it
    assert select_history(5, range(5), 2, strategy="relevance", scores=[0.9, 0.8, 0.7, 0.6, -1.0], required=[4]) == [0, 4]
    assert select_history(5, range(5), 1, strategy="script", required=[4]) == [4]
    with pytest.raises(ValueError, match="holds only 1"):
        select_history(5, range(5), 1, required=[3, 4])


def test_relevance_orders_by_score_and_breaks_ties_by_recency():
    scores = [0.1, 0.9, 0.5, 0.9, 0.2]
    assert select_history(5, range(5), 2, strategy="relevance", scores=scores) == [1, 3]
    assert select_history(5, range(5), 3, strategy="relevance", scores=scores) == [1, 2, 3]
    tied = [0.5, 0.5, 0.5, 0.5]
    assert select_history(4, range(4), 2, strategy="relevance", scores=tied) == [2, 3]  # ties -> most recent
    with pytest.raises(ValueError, match="one score per candidate"):
        select_history(4, range(4), 2, strategy="relevance", scores=[1.0])


def test_user_named_history_is_used_exactly():
    assert select_history(6, range(6), 3, user=[0, 2]) == [0, 2]
    assert select_history(6, range(6), 3, strategy="relevance", scores=[0.0] * 6, user=[1]) == [1]
    assert select_history(6, range(6), 3, user=[0], required=[5]) == [0, 5]
    assert select_history(6, range(6), 3, strategy="script") == []  # script strategy: nothing unless named
    with pytest.raises(ValueError, match="name at most 2"):
        select_history(6, range(6), 3, user=[0, 1, 2], required=[5])
    with pytest.raises(ValueError, match="not available"):
        select_history(3, [0, 1], 2, user=[2])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="recency, relevance, script"):
        select_history(3, [0, 1], 1, strategy="newest")
    with pytest.raises(ValueError, match="not earlier"):
        select_history(2, [0, 1, 2], 1)
    with pytest.raises(ValueError, match="k=-1"):
        select_history(2, [0], -1)


def test_pool_relevance_uses_prompt_embeddings():
    enc = HashingEncoder(dim=64)
    pool = HistoryPool(embed=enc.embed)
    prompts = [
        "Wide shot of Character 1 jumping in the night sky.",
        "Close-up of Character 2 spinning on the forest floor.",
        "Medium shot of Character 3 entering the stone hall.",
        "Close-up of Character 2 spinning near a tree on the forest floor.",
        "Wide shot of Character 4 exiting the snow field.",
    ]
    for i, p in enumerate(prompts):
        pool.add(i, prompt=p, latent=torch.zeros(1, 4, 1, 2, 2))
    target = "Close-up of Character 2 spinning on the forest floor again."
    sims = pool.similarities(target, pool.shots)
    assert sorted(range(5), key=lambda j: -sims[j])[:2] == [1, 3]  # the two forest-floor shots are the closest
    assert pool.select(5, prompt=target, k=2, strategy="relevance") == [1, 3]
    assert pool.select(5, prompt=target, k=2, strategy="recency") == [3, 4]
    assert pool.select(3, prompt=target, k=1, strategy="relevance") == [1]  # only shots before the target count
    assert pool.select(5, prompt=target, k=2, strategy="relevance", user=[0]) == [0]
    with pytest.raises(KeyError, match="holds"):
        pool.entry(9)


def test_pool_without_embedding_cannot_rank_by_relevance():
    pool = HistoryPool()
    pool.add(0, prompt="a", latent=torch.zeros(1, 4, 1, 2, 2))
    assert pool.select(1, prompt="b", k=1) == [0]
    with pytest.raises(ValueError, match="embed"):
        pool.select(1, prompt="b", k=1, strategy="relevance")


# ------------------------------------------------------------------------------------------ GoldenMem


def test_goldenmem_sizes_shrink_by_phi():
    sizes = goldenmem_sizes(10, (16, 16))
    assert sizes[0] == (16, 16)
    assert sizes[1] == (math.floor(16 / PHI), math.floor(16 / PHI)) == (9, 9)
    assert sizes == [(16, 16), (9, 9), (6, 6), (3, 3), (2, 2), (1, 1)]  # then a side reaches 0: older frames dropped
    assert goldenmem_sizes(2, (16, 16)) == sizes[:2]
    assert goldenmem_sizes(0, (4, 4)) == []
    with pytest.raises(ValueError, match="height"):
        goldenmem_sizes(3, (0, 4))


@given(h=st.integers(1, 64), w=st.integers(1, 64), n=st.integers(0, 200))
def test_goldenmem_history_costs_at_most_phi_frames(h, w, n):
    tokens = goldenmem_tokens(n, (h, w))
    assert tokens < PHI * full_frame_tokens((h, w))
    assert tokens == sum(a * b for a, b in goldenmem_sizes(n, (h, w)))
    if n:
        assert tokens >= h * w  # the newest frame is always kept whole


def test_goldenmem_long_history_approaches_phi():
    # the bound is tight for large frames: Σ φ^-2k → φ
    assert goldenmem_tokens(1000, (256, 256)) / (256 * 256) > 1.55


def test_goldenmem_compress_shapes_order_and_newest_frame_unchanged():
    torch.manual_seed(0)
    clips = [torch.randn(1, 4, 3, 16, 16), torch.randn(1, 4, 2, 16, 16)]  # 5 frames, newest = clips[1][:, :, 1]
    kept = goldenmem_compress(clips, patch=(2, 2))
    sizes = goldenmem_sizes(5, (8, 8))
    assert len(kept) == len(sizes)
    assert [f.k for f in kept] == list(range(len(sizes)))[::-1]  # oldest first
    assert [(f.item, f.frame) for f in kept][-2:] == [(1, 0), (1, 1)]
    for f in kept:
        hk, wk = sizes[f.k]
        assert f.grid == (hk, wk)
        assert f.latent.shape == (1, 4, 1, 2 * hk, 2 * wk)
    assert torch.equal(kept[-1].latent[:, :, 0], clips[1][:, :, 1])
    # a downsampled frame keeps the mean of its source (antialiased bilinear is an average)
    src = clips[1][:, :, 0]
    assert torch.allclose(kept[-2].latent.mean(), src.mean(), atol=0.2)
    assert len(goldenmem_compress(clips, patch=(2, 2), max_frames=2)) == 2
    assert goldenmem_compress([], patch=(2, 2)) == []


def test_goldenmem_compress_validates_inputs():
    with pytest.raises(ValueError, match="spatial size"):
        goldenmem_compress([torch.zeros(1, 4, 1, 8, 8), torch.zeros(1, 4, 1, 6, 8)])
    with pytest.raises(ValueError, match="multiple of the patch"):
        goldenmem_compress([torch.zeros(1, 4, 1, 6, 6)], patch=(4, 4))
