"""Mask policies against hand-written expected matrices."""

from __future__ import annotations

import pytest
import torch

from storyreel.nn.layout import Modality, Segment, SequenceLayout
from storyreel.nn.masks import (
    POLICY_NAMES,
    BlockDiagonal,
    CausalShots,
    Full,
    Mask2DiT,
    dense_mask,
    get_policy,
    layer_policies,
    segment_mask,
)

# 3 shots, no global prompt: segments t0 v0 t1 v1 t2 v2 with token lengths 2 2 1 2 2 2
THREE = SequenceLayout.scene(text_lens=[2, 1, 2], video_grids=[(1, 1, 2), (1, 2, 1), (2, 1, 1)])
# global prompt + 2 shots: segments g t0 v0 t1 v1 with token lengths 2 1 2 2 3
GLOBAL = SequenceLayout.scene(text_lens=[1, 2], video_grids=[(1, 2, 1), (3, 1, 1)], global_text_len=2)

EXPECTED_THREE = {
    "mask2dit:v1": ["110000", "110000", "001100", "001100", "000011", "000011"],
    "block_diagonal": ["110000", "110000", "001100", "001100", "000011", "000011"],
    "isolated_shots": ["110000", "110000", "001100", "001100", "000011", "000011"],
    "mask2dit:v2": ["110000", "110101", "001100", "011101", "000011", "010111"],
    "mask2dit": ["110000", "110101", "001100", "011101", "000011", "010111"],
    "mask2dit:v3": ["111010", "110101", "101110", "011101", "101011", "010111"],
    "mask2dit:v4": ["110101", "111111", "011101", "111111", "010111", "111111"],
    "mask2dit:v5": ["111111"] * 6,
    "full": ["111111"] * 6,
    "causal_shots": ["110000", "110000", "111100", "111100", "111111", "111111"],
}
EXPECTED_GLOBAL = {
    "block_diagonal": ["11111", "11100", "11100", "10011", "10011"],
    "isolated_shots": ["10000", "11100", "11100", "10011", "10011"],  # the global prompt sees only itself
    "mask2dit:v2": ["11111", "11100", "11101", "10011", "10111"],
    "mask2dit:v3": ["11111", "11110", "11101", "11011", "10111"],
    "causal_shots": ["10000", "11100", "11100", "11111", "11111"],
    "full": ["11111"] * 5,
}


def _matrix(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


def _expand(seg: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
    lens = torch.tensor([s.length for s in layout.segments])
    return seg.repeat_interleave(lens, dim=0).repeat_interleave(lens, dim=1)


@pytest.mark.parametrize(
    ("layout", "name", "rows"),
    [(THREE, n, r) for n, r in EXPECTED_THREE.items()] + [(GLOBAL, n, r) for n, r in EXPECTED_GLOBAL.items()],
)
def test_policy_matches_hand_written_matrix(layout: SequenceLayout, name: str, rows: list[str]) -> None:
    expected = _matrix(rows)
    assert torch.equal(segment_mask(layout, name), expected)
    assert torch.equal(dense_mask(layout, name), _expand(expected, layout))  # token level
    assert torch.equal(dense_mask(layout, name, chunk=3), _expand(expected, layout))  # chunked build


def test_dense_mask_query_segments_are_rows_of_the_full_mask() -> None:
    full = dense_mask(GLOBAL, "causal_shots")
    rows = dense_mask(GLOBAL, "causal_shots", query_segments=[3, 4])
    assert torch.equal(rows, full[GLOBAL.offsets[3] :])


@pytest.mark.parametrize("name", ["full", "block_diagonal", *[f"mask2dit:v{v}" for v in range(1, 6)], "layout_keyframe"])
def test_symmetric_policies(name: str) -> None:
    for layout in (THREE, GLOBAL, _keyframe_layout()):
        m = dense_mask(layout, name)
        assert torch.equal(m, m.T), f"{name} is not symmetric on {layout}"


def test_causal_is_block_lower_triangular() -> None:
    layout = SequenceLayout.scene(text_lens=[2, 3, 1, 2], video_grids=[(1, 2, 2), (2, 1, 1), (1, 1, 3), (1, 1, 1)])
    m = dense_mask(layout, "causal_shots")
    shot = layout.token_shot
    assert torch.equal(m, shot[None, :] <= shot[:, None])
    for i in range(layout.n_shots):
        for j in range(layout.n_shots):
            block = m[shot == i][:, shot == j]
            assert bool(block.all()) if j <= i else not bool(block.any())


def _keyframe_layout() -> SequenceLayout:
    # tokens: T | I0 I1 I2 I3 (2x2 keyframe, centres x,y in {.25,.75}) | A (box top-left) | B1 B2 (box right half)
    #         | J (shot 1 keyframe, 1x1, centre (.5,.5))
    return SequenceLayout(
        [
            Segment(Modality.TEXT, 0, (1, 1, 1)),
            Segment(Modality.IMAGE, 0, (1, 2, 2)),
            Segment(Modality.LAYOUT, 0, (1, 1, 1), instance=0, box=(0.0, 0.0, 0.5, 0.5)),
            Segment(Modality.LAYOUT, 0, (2, 1, 1), instance=1, box=(0.5, 0.0, 1.0, 1.0)),
            Segment(Modality.IMAGE, 1, (1, 1, 1)),
        ]
    )


def test_layout_keyframe_hand_written() -> None:
    expected = _matrix(
        [
            "111111111",  # T sees all
            "111111001",  # I0 (.25,.25): keyframes, text, A
            "111110111",  # I1 (.75,.25): keyframes, text, B
            "111110001",  # I2 (.25,.75): no box contains it
            "111110111",  # I3 (.75,.75): B
            "110001000",  # A: text, I0, own instance
            "101010110",  # B1: text, own instance, I1 I3 (not shot 1's J even though inside)
            "101010110",  # B2
            "111110001",  # J: text and keyframes
        ]
    )
    layout = _keyframe_layout()
    assert torch.equal(dense_mask(layout, "layout_keyframe"), expected)
    assert not get_policy("layout_keyframe").segment_structured
    with pytest.raises(ValueError, match="token-level"):
        segment_mask(layout, "layout_keyframe")


def test_get_policy() -> None:
    assert get_policy("mask2dit") == Mask2DiT(2) and get_policy("MASK2DIT:v4") == Mask2DiT(4)
    assert get_policy("full") == Full() and get_policy("causal_shots") == CausalShots()
    pol = BlockDiagonal()
    assert get_policy(pol) is pol and hash(get_policy("block_diagonal")) == hash(pol)
    for name in POLICY_NAMES:
        assert get_policy(get_policy(name).name) == get_policy(name)
    with pytest.raises(ValueError, match="valid names: full, mask2dit"):
        get_policy("mask2dit:v7")
    with pytest.raises(ValueError, match="version"):
        Mask2DiT(0)


def test_layer_policies() -> None:
    assert layer_policies("full", 3) == [Full()] * 3
    assert layer_policies(["full", "causal_shots"], 2) == [Full(), CausalShots()]
    hybrid = layer_policies("hybrid:block_diagonal*2,full", 5)
    assert hybrid == [BlockDiagonal()] * 2 + [Full()] * 3
    assert layer_policies("hybrid:mask2dit:v1*1,causal_shots*2", 3) == [Mask2DiT(1), CausalShots(), CausalShots()]
    with pytest.raises(ValueError, match="2 entries but the model has 3 layers"):
        layer_policies(["full", "full"], 3)
    with pytest.raises(ValueError, match="assigns 6 layers but the model has 4"):
        layer_policies("hybrid:block_diagonal*6,full", 4)
    with pytest.raises(ValueError, match="at most one policy may omit"):
        layer_policies("hybrid:full,causal_shots", 4)
    with pytest.raises(ValueError, match="count"):
        layer_policies("hybrid:full*x", 4)
    with pytest.raises(ValueError, match="unknown mask policy"):
        layer_policies("hybrid:nope*2,full", 4)
