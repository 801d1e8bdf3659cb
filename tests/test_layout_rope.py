"""SequenceLayout metadata/validation and interleaved 3D RoPE."""

from __future__ import annotations

import pytest
import torch

from storyreel.nn.layout import Modality, Segment, SequenceLayout
from storyreel.nn.rope import apply_rope, rope_axes_dims, rope_cos_sin, rope_freqs, rope_rotate


def _layout() -> SequenceLayout:
    # [global text 2][text0 3][video0 1x2x2][text1 2][video1 2x1x2]
    return SequenceLayout.scene(text_lens=[3, 2], video_grids=[(1, 2, 2), (2, 1, 2)], global_text_len=2)


def test_scene_offsets_and_token_tensors() -> None:
    lay = _layout()
    assert lay.seq_len == 2 + 3 + 4 + 2 + 4 == 15
    assert lay.n_segments == 5 and lay.n_shots == 2
    assert lay.offsets == (0, 2, 5, 9, 11)
    assert lay.token_segment.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4]
    assert lay.token_shot.tolist() == [-1, -1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert lay.token_modality.tolist() == [0] * 5 + [1] * 4 + [0] * 2 + [1] * 4
    assert lay.segment_slice(2) == slice(5, 9)
    assert lay.segments_of_shot(1) == [3, 4] and lay.segments_of_shot(-1) == [0]
    assert lay.video_segments() == [2, 4] and lay.text_segments() == [0, 1, 3]
    assert lay.token_indices([4, 1]).tolist() == [11, 12, 13, 14, 2, 3, 4]
    assert lay.token_grid[5:9].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]]


def test_layout_is_hashable_immutable_and_cached() -> None:
    a, b = _layout(), _layout()
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != a.prefix(3)
    with pytest.raises(AttributeError, match="immutable"):
        a.seq_len = 3
    assert a.token_segment is a.token_segment  # computed once
    assert a.rope_positions() is a.rope_positions()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"text_lens": [3, 2], "video_grids": [(1, 2, 2)]}, "text_lens has 2 entries but video_grids has 1"),
        ({"text_lens": [3], "video_grids": [(1, 0, 2)]}, r"grid=\(1, 0, 2\) must be three positive ints"),
        ({"text_lens": [3], "video_grids": [(1, True, 2)]}, "must be three positive ints"),
        ({"text_lens": [3], "video_grids": [(1, 2)]}, "must be three positive ints"),
        ({"text_lens": [0], "video_grids": [(1, 2, 2)]}, r"text_lens\[0\]=0 must be a positive int"),
        ({"text_lens": [2], "video_grids": [(1, 2, 2)], "global_text_len": -1}, "global_text_len=-1"),
    ],
)
def test_scene_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SequenceLayout.scene(**kwargs)


def test_segment_and_layout_validation() -> None:
    with pytest.raises(ValueError, match=r"TEXT segment must be \(n, 1, 1\)"):
        Segment(Modality.TEXT, 0, (3, 2, 1))
    with pytest.raises(ValueError, match="only for LAYOUT"):
        Segment(Modality.VIDEO, 0, (1, 2, 2), box=(0, 0, 1, 1))
    with pytest.raises(ValueError, match="x0 < x1"):
        Segment(Modality.LAYOUT, 0, (1, 1, 1), instance=0, box=(0.5, 0, 0.2, 1))
    with pytest.raises(ValueError, match="shot=-2"):
        Segment(Modality.TEXT, -2, (1, 1, 1))
    with pytest.raises(ValueError, match=r"shots \[1\] have no segment"):
        SequenceLayout([Segment(Modality.TEXT, 0, (1, 1, 1)), Segment(Modality.TEXT, 2, (1, 1, 1))])
    with pytest.raises(ValueError, match="at least one segment"):
        SequenceLayout([])
    lay = _layout()
    with pytest.raises(ValueError, match=r"layout has 15 tokens but the tensor has 12 \(q.shape\[2\]\)"):
        lay.check_tokens(12, "q.shape[2]")
    assert Segment(1, 0, [1, 2, 2]).modality is Modality.VIDEO  # ints and lists are normalised


def test_append_prefix_select_shots() -> None:
    lay = _layout()
    assert lay.prefix(3).append(lay.segments[3:]) == lay
    with pytest.raises(ValueError, match="prefix needs"):
        lay.prefix(0)
    sel = lay.select_shots([1])
    assert sel.n_shots == 1 and [s.shot for s in sel.segments] == [-1, 0, 0]
    assert sel.segments[2].grid == (2, 1, 2)
    swapped = lay.select_shots([1, 0])
    assert [s.length for s in swapped.segments] == [2, 2, 4, 3, 4]
    with pytest.raises(ValueError, match="repeated"):
        lay.select_shots([0, 0])
    with pytest.raises(ValueError, match="outside"):
        lay.select_shots([2])


def test_token_timesteps_shapes() -> None:
    lay = _layout()  # 2 global, 7 of shot 0, 6 of shot 1
    t = torch.tensor([[0.2, 0.9], [0.5, 0.1]])
    out = lay.token_timesteps(t, global_t=0.05)
    assert out.shape == (2, 15) and out.dtype == torch.float32
    assert torch.allclose(out[1], torch.tensor([0.05] * 2 + [0.5] * 7 + [0.1] * 6))
    per_shot = lay.token_timesteps(torch.tensor([0.2, 0.9]), global_t=0.05)  # [n_shots] -> B = 1
    assert per_shot.shape == (1, 15) and torch.allclose(per_shot[0], out[0])
    per_sample = lay.token_timesteps(torch.tensor([0.3, 0.7]), batch=2)  # [B] broadcast over shots
    assert torch.allclose(per_sample[:, 2:], torch.tensor([[0.3], [0.7]]).expand(2, 13))
    assert lay.token_timesteps(torch.tensor([0.3, 0.7, 0.4])).shape == (3, 15)  # length != n_shots -> [B]
    assert torch.allclose(lay.token_timesteps(0.5)[0, 2:], torch.full((13,), 0.5))
    with pytest.raises(ValueError, match="has 3 timesteps per sample"):
        lay.token_timesteps(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- RoPE positions
def test_one_shot_positions_match_single_shot_grid() -> None:
    n_text, (T, H, W) = 5, (3, 4, 2)
    pos = SequenceLayout.scene(text_lens=[n_text], video_grids=[(T, H, W)]).rope_positions()
    # a plain single-shot model: video on its own 3D grid from 0, the text prefix on the diagonal before it
    grid = torch.stack(torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij"), -1)
    ref = torch.cat([(torch.arange(n_text) - n_text)[:, None].expand(-1, 3), grid.reshape(-1, 3)])
    offset = pos - ref
    assert (offset == offset[0]).all()  # one global constant offset, which RoPE ignores
    text, video = pos[:n_text], pos[n_text:]
    rtext, rvideo = ref[:n_text], ref[n_text:]
    assert torch.equal(video[:, None] - text[None], rvideo[:, None] - rtext[None])  # text -> video
    assert torch.equal(video[:, None] - video[None], rvideo[:, None] - rvideo[None])  # video -> video


def test_multi_shot_positions_continue_on_the_diagonal() -> None:
    grids = [(2, 3, 3), (4, 2, 2), (1, 2, 5)]
    lens = [3, 2, 4]
    lay = SequenceLayout.scene(text_lens=lens, video_grids=grids, global_text_len=2)
    pos = lay.rope_positions()
    assert pos[:2].tolist() == [[0, 0, 0], [1, 1, 1]]
    cursor = 2
    for shot, (n, g) in enumerate(zip(lens, grids, strict=True)):
        ti, vi = lay.segments_of_shot(shot)
        tpos, vpos = pos[lay.segment_slice(ti)], pos[lay.segment_slice(vi)]
        diag = torch.arange(cursor, cursor + n)[:, None].expand(-1, 3)
        assert torch.equal(tpos, diag)  # text on the diagonal, right after the previous shot
        start = cursor + n
        assert vpos.min(0).values.tolist() == [start] * 3  # video starts after its text on the diagonal
        assert (vpos.max(0).values - start).tolist() == [g[0] - 1, g[1] - 1, g[2] - 1]
        cursor = start + max(g)
    assert torch.equal(lay.prefix(4).rope_positions(), pos[: lay.prefix(4).seq_len])  # KV-cache prefixes agree


def test_rope_axes_dims() -> None:
    assert rope_axes_dims(64) == (24, 20, 20)
    assert rope_axes_dims(6) == (2, 2, 2)
    for d in (8, 32, 128):
        dims = rope_axes_dims(d)
        assert sum(dims) == d and all(x % 2 == 0 for x in dims)
    for bad in (5, 7, 4, True):
        with pytest.raises(ValueError, match="head_dim"):
            rope_axes_dims(bad)


def test_rope_scores_depend_only_on_position_differences() -> None:
    torch.manual_seed(0)
    head_dim, L = 32, 40
    q, k = torch.randn(1, 2, L, head_dim), torch.randn(1, 2, L, head_dim)
    pos = torch.randint(0, 50, (L, 3))

    def scores(p: torch.Tensor) -> torch.Tensor:
        cos, sin = rope_cos_sin(p, head_dim)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)

    base = scores(pos)
    assert torch.allclose(base, scores(pos + torch.tensor([7, -3, 11])), atol=1e-4)
    moved = pos.clone()
    moved[: L // 2, 0] += 5  # changes relative positions of half of the tokens
    assert not torch.allclose(base, scores(moved), atol=1e-2)


def test_apply_rope_float32_and_dtype() -> None:
    x = torch.randn(2, 3, 10, 16)
    cos, sin = rope_cos_sin(torch.randint(0, 9, (10, 3)), 16)
    assert cos.dtype == torch.float32 and cos.shape == (10, 8)
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation
    zero_cos, zero_sin = rope_cos_sin(torch.zeros(10, 3, dtype=torch.long), 16)
    assert torch.equal(apply_rope(x, zero_cos, zero_sin), x)
    yb = apply_rope(x.to(torch.bfloat16), cos, sin)
    assert yb.dtype == torch.bfloat16 and torch.allclose(yb.float(), y, atol=3e-2)
    with pytest.raises(ValueError, match="cover 10 tokens but x has 9"):
        apply_rope(x[:, :, :9], cos, sin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_rotate_is_apply_rope_as_one_complex_product(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    pos = torch.randint(0, 30, (12, 3))
    x = torch.randn(2, 3, 12, 16).to(dtype)
    cos, sin = rope_cos_sin(pos, 16)
    freqs = rope_freqs(pos, 16)
    assert freqs.dtype == torch.complex64 and freqs.shape == (12, 8)
    y = rope_rotate(x, freqs)
    assert y.dtype == dtype and y.shape == x.shape
    a, b = x.float()[..., 0::2], x.float()[..., 1::2]  # the pairwise rotation written out
    ref = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    torch.testing.assert_close(y.float(), ref.to(dtype).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apply_rope(x, cos, sin), y)
    # a non-contiguous input (a transposed view) rotates the same
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous()
    torch.testing.assert_close(rope_rotate(xt, freqs), y)
    with pytest.raises(ValueError, match="rope_freqs"):
        rope_rotate(x, cos)  # real tables
    with pytest.raises(ValueError, match="rope_freqs"):
        rope_rotate(x[:, :, :5], freqs)  # 5 tokens, 12 rows
