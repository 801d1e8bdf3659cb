"""Every attention backend equals the dense reference, for every policy."""

from __future__ import annotations

import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from storyreel.nn.attention import attention, clear_plan_cache, plan_attention
from storyreel.nn.layout import Modality, Segment, SequenceLayout

ATT = sys.modules["storyreel.nn.attention"]  # the module (``storyreel.nn.attention`` is also the function)
SEGMENT_POLICIES = [
    "full",
    "mask2dit:v1",
    "mask2dit",
    "mask2dit:v3",
    "mask2dit:v4",
    "mask2dit:v5",
    "block_diagonal",
    "causal_shots",
]
LAYOUTS = {
    "uniform": SequenceLayout.scene(text_lens=[3] * 4, video_grids=[(2, 2, 2)] * 4),
    "global": SequenceLayout.scene(text_lens=[2, 4, 3], video_grids=[(1, 2, 3), (2, 2, 1), (3, 1, 1)], global_text_len=3),
    "one_shot": SequenceLayout.scene(text_lens=[5], video_grids=[(2, 3, 2)]),
}
GPU_PROFILE = ATT._CALL_OVERHEAD["cuda"]


def _qkv(layout: SequenceLayout, *, b: int = 1, h: int = 2, d: int = 8, lq: int | None = None, grad: bool = False):
    g = torch.Generator().manual_seed(layout.seq_len)
    lq = layout.seq_len if lq is None else lq
    q = torch.randn(b, h, lq, d, generator=g)
    k, v = (torch.randn(b, h, layout.seq_len, d, generator=g) for _ in range(2))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def _check(layout: SequenceLayout, policy: str, backend: str, **kw) -> None:
    q, k, v = _qkv(layout, **kw)
    ref = attention(q, k, v, plan_attention(layout, policy, backend="dense"))
    out = attention(q, k, v, plan_attention(layout, policy, backend=backend))
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5, f"{backend} != dense for {policy} on {layout}"


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("policy", SEGMENT_POLICIES)
@pytest.mark.parametrize("backend", ["grouped", "flex", "auto"])
def test_backends_match_dense(layout_name: str, policy: str, backend: str) -> None:
    _check(LAYOUTS[layout_name], policy, backend)


@pytest.mark.parametrize("policy", ["mask2dit", "mask2dit:v3", "mask2dit:v4", "causal_shots", "block_diagonal"])
def test_grouped_with_gpu_cost_profile_matches_dense(policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU cost profile produces merged/strided tilings even at toy sizes; they must be exact too."""
    monkeypatch.setitem(ATT._CALL_OVERHEAD, "cpu", 0.0)
    clear_plan_cache()
    try:
        for layout in LAYOUTS.values():
            _check(layout, policy, "grouped", b=2)
    finally:
        clear_plan_cache()


def test_layout_keyframe_flex_and_dense() -> None:
    layout = SequenceLayout(
        [
            Segment(Modality.TEXT, 0, (3, 1, 1)),
            Segment(Modality.IMAGE, 0, (1, 4, 4)),
            Segment(Modality.LAYOUT, 0, (2, 1, 1), instance=0, box=(0.0, 0.0, 0.5, 0.75)),
            Segment(Modality.LAYOUT, 0, (2, 1, 1), instance=1, box=(0.25, 0.5, 1.0, 1.0)),
        ]
    )
    _check(layout, "layout_keyframe", "flex")
    assert plan_attention(layout, "layout_keyframe").backend == "dense"  # auto on CPU
    with pytest.raises(ValueError, match="token-level; use backend='flex'"):
        plan_attention(layout, "layout_keyframe", backend="grouped")


@st.composite
def _layouts(draw: st.DrawFn) -> SequenceLayout:
    n = draw(st.integers(1, 5))
    text = draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    grid = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
    grids = draw(st.lists(grid, min_size=n, max_size=n))
    if draw(st.booleans()):  # same sizes for every shot: exercises the strided batched calls
        text, grids = [text[0]] * n, [grids[0]] * n
    return SequenceLayout.scene(text_lens=text, video_grids=grids, global_text_len=draw(st.sampled_from([0, 0, 4])))


@settings(max_examples=25)
@given(layout=_layouts(), policy=st.sampled_from(SEGMENT_POLICIES), gpu_profile=st.booleans(), data=st.data())
def test_random_layouts_match_dense(layout: SequenceLayout, policy: str, gpu_profile: bool, data: st.DataObject) -> None:
    first = data.draw(st.integers(0, layout.n_segments - 1))  # queries = a suffix of the segments
    qs = list(range(first, layout.n_segments))
    lq = sum(layout.segments[s].length for s in qs)
    q, k, v = _qkv(layout, b=2, lq=lq)
    ref = attention(q, k, v, plan_attention(layout, policy, backend="dense", query_segments=qs))
    old = ATT._CALL_OVERHEAD["cpu"]
    ATT._CALL_OVERHEAD["cpu"] = GPU_PROFILE if gpu_profile else old
    clear_plan_cache()
    try:
        for backend in ("grouped", "flex", "auto"):
            out = attention(q, k, v, plan_attention(layout, policy, backend=backend, query_segments=qs))
            assert (out - ref).abs().max().item() <= 1e-5, backend
    finally:
        ATT._CALL_OVERHEAD["cpu"] = old
        clear_plan_cache()


@pytest.mark.parametrize("force_math", [False, True])
@pytest.mark.parametrize("policy", ["mask2dit", "mask2dit:v4", "causal_shots"])
def test_grouped_gradients_match_dense(policy: str, force_math: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ATT, "_FORCE_MATH", force_math)
    monkeypatch.setitem(ATT._CALL_OVERHEAD, "cpu", 0.0)  # many tiles and LSE merges
    clear_plan_cache()
    layout = LAYOUTS["global"]
    q, k, v = _qkv(layout, b=2, grad=True)
    plan = plan_attention(layout, policy, backend="grouped")
    if policy != "causal_shots":
        assert plan.program.needs_lse  # the merged (custom autograd) path is what this test covers
    go = torch.randn(q.shape)
    ref = torch.autograd.grad(attention(q, k, v, plan_attention(layout, policy, backend="dense")), (q, k, v), go)
    got = torch.autograd.grad(attention(q, k, v, plan), (q, k, v), go)
    for name, a, b in zip("qkv", got, ref, strict=True):
        assert (a - b).abs().max().item() <= 1e-5, f"d{name}"
    clear_plan_cache()


def test_non_contiguous_batched_inputs() -> None:
    layout = LAYOUTS["uniform"]
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in _qkv(layout, b=3, h=2))  # [B,L,H,D] memory
    ref = attention(q, k, v, plan_attention(layout, "mask2dit:v1", backend="dense"))
    plan = plan_attention(layout, "mask2dit:v1", backend="grouped")
    assert any(c.q.kind == "strided" for c in plan.program.calls)
    assert (attention(q, k, v, plan) - ref).abs().max().item() <= 1e-5


def test_mask2dit_v2_eight_shots_tiles_into_one_video_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """At GPU sizes the all-video x all-video work becomes ONE unmasked call, the rest two batched calls."""
    monkeypatch.setitem(ATT._CALL_OVERHEAD, "cpu", GPU_PROFILE)
    clear_plan_cache()
    layout = SequenceLayout.scene(text_lens=[226] * 8, video_grids=[(4, 32, 32)] * 8)
    plan = plan_attention(layout, "mask2dit", backend="grouped")
    calls = plan.program.calls
    assert len(calls) == 3
    big = calls[0]
    assert big.q.length == big.k.length == 8 * 4096 and not big.merge
    assert {(c.q.kind, c.q.count) for c in calls[1:]} == {("strided", 8)}
    causal = plan_attention(layout, "causal_shots", backend="grouped").program
    assert not causal.needs_lse  # contiguous key prefixes: no LSE merge needed
    clear_plan_cache()


def test_plan_cache_auto_choice_and_errors() -> None:
    layout = LAYOUTS["global"]
    assert plan_attention(layout, "mask2dit") is plan_attention(layout, "mask2dit")
    full = plan_attention(layout, "full")
    assert full.backend == "grouped" and full.n_calls == 1  # plain SDPA
    assert plan_attention(layout, "mask2dit").backend in ("grouped", "dense")
    q, k, v = _qkv(layout)
    assert layout.seq_len == 25
    with pytest.raises(ValueError, match=r"plan has 25 query tokens but the tensor has 24 \(q.shape\[2\]\)"):
        attention(q[:, :, :-1], k, v, full)
    with pytest.raises(ValueError, match=r"layout has 25 tokens but the tensor has 24 \(k.shape\[2\]\)"):
        attention(q, k[:, :, 1:], v, full)
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        plan_attention(layout, "full", backend="fast")
    with pytest.raises(ValueError, match="must be sorted, unique"):
        plan_attention(layout, "full", query_segments=[3, 1])
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            plan_attention(layout, "full", device="cuda")


@pytest.mark.slow
def test_compiled_flex_on_cpu() -> None:
    layout = LAYOUTS["global"]
    q, k, v = _qkv(layout)
    ref = attention(q, k, v, plan_attention(layout, "mask2dit", backend="dense"))
    out = attention(q, k, v, plan_attention(layout, "mask2dit", backend="flex", compile_flex=True))
    assert (out - ref).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------- GPU (run by the lead on CUDA)
@pytest.mark.gpu
@pytest.mark.parametrize("policy", [*SEGMENT_POLICIES, "layout_keyframe"])
def test_cuda_backends_match_dense_bf16(policy: str) -> None:
    if policy == "layout_keyframe":
        layout = SequenceLayout(
            [
                Segment(Modality.TEXT, 0, (7, 1, 1)),
                Segment(Modality.IMAGE, 0, (1, 16, 16)),
                Segment(Modality.LAYOUT, 0, (4, 1, 1), instance=0, box=(0.1, 0.1, 0.6, 0.5)),
            ]
        )
    else:
        layout = SequenceLayout.scene(text_lens=[40] * 3, video_grids=[(2, 8, 8)] * 3, global_text_len=16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, layout.seq_len, 64, generator=g).cuda().bfloat16() for _ in range(3))
    ref = attention(q, k, v, plan_attention(layout, policy, backend="dense", device="cuda")).float()
    backends = ["flex", "auto"] + (["grouped"] if policy != "layout_keyframe" else [])
    for backend in backends:
        out = attention(q, k, v, plan_attention(layout, policy, backend=backend, device="cuda")).float()
        assert (out - ref).abs().max().item() <= 2e-2, backend
    expected_auto = "flex" if policy == "layout_keyframe" else "grouped"
    assert plan_attention(layout, policy, device="cuda").backend == expected_auto


@pytest.mark.gpu
@pytest.mark.parametrize("policy", ["mask2dit", "mask2dit:v3", "causal_shots"])
def test_cuda_grouped_gradients_bf16(policy: str) -> None:
    layout = SequenceLayout.scene(text_lens=[24] * 4, video_grids=[(2, 8, 8)] * 4)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 4, layout.seq_len, 64, generator=g).cuda().bfloat16().requires_grad_() for _ in range(3))
    go = torch.randn(q.shape, generator=g).cuda().bfloat16()
    plan = plan_attention(layout, policy, backend="grouped", device="cuda")
    ref = torch.autograd.grad(attention(q, k, v, plan_attention(layout, policy, backend="dense", device="cuda")), (q, k, v), go)
    got = torch.autograd.grad(attention(q, k, v, plan), (q, k, v), go)
    for name, a, b in zip("qkv", got, ref, strict=True):
        err = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
        assert err <= 3e-2, f"d{name} relative error {err}"


@pytest.mark.parametrize("chunk", [1 << 28, 7 * 20])  # one chunk / many uneven query chunks
def test_math_fallback_in_query_chunks(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 fallback splits the queries so no score tensor reaches 2^31 elements (CUDA matmuls fault there):
    forward and gradients must not depend on the chunking."""
    monkeypatch.setattr(ATT, "_FORCE_MATH", True)
    monkeypatch.setitem(ATT._CALL_OVERHEAD, "cpu", 0.0)
    monkeypatch.setattr(ATT, "_MATH_CHUNK_ELEMENTS", chunk)
    clear_plan_cache()
    layout = LAYOUTS["global"]
    q, k, v = _qkv(layout, b=2, grad=True)
    go = torch.randn(q.shape)
    ref_out = attention(q, k, v, plan_attention(layout, "mask2dit", backend="dense"))
    ref = torch.autograd.grad(ref_out, (q, k, v), go)
    out = attention(q, k, v, plan_attention(layout, "mask2dit", backend="grouped"))
    assert (out - ref_out).abs().max().item() <= 1e-5
    for name, a, b in zip("qkv", torch.autograd.grad(out, (q, k, v), go), ref, strict=True):
        assert (a - b).abs().max().item() <= 1e-5, f"d{name}"
    clear_plan_cache()


@pytest.mark.parametrize("backend", ["grouped", "dense"])
def test_mixed_dtypes_run_in_one_dtype(backend: str) -> None:
    """Rotary embeddings in float32 under autocast leave q/k float32 and v bfloat16: attention runs them in one
    dtype (the autocast dtype, else the narrowest) instead of failing or falling back to float32 scores."""
    layout = LAYOUTS["global"]
    q, k, v = _qkv(layout, b=1)
    plan = plan_attention(layout, "mask2dit", backend=backend)
    ref = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), plan)
    out = attention(q, k, v.bfloat16(), plan)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention(q, k.bfloat16(), v, plan).dtype == torch.bfloat16


def test_auto_backend_on_cuda_is_dense_for_small_problems_and_grouped_for_large_ones() -> None:
    """The CUDA choice needs no GPU to be made: it only counts (query, key) pairs against the measured threshold."""
    import importlib

    from storyreel.nn.masks import get_policy

    attn = importlib.import_module("storyreel.nn.attention")

    cuda = torch.device("cuda")
    small = SequenceLayout.scene(text_lens=[32] * 4, video_grids=[(4, 16, 16)] * 4, global_text_len=32)  # 4.2 k tokens
    large = SequenceLayout.scene(text_lens=[32] * 8, video_grids=[(4, 16, 16)] * 8, global_text_len=32)  # 8.5 k tokens
    everything = tuple(range(len(large.segments)))
    last_shot = everything[-2:]  # a cached causal call: the last prompt and video only, keys over the whole scene
    for pol in ("mask2dit", "causal_shots"):
        p = get_policy(pol)
        assert attn._auto_backend(small, p, cuda, tuple(range(len(small.segments))))[0] == "dense"
        assert attn._auto_backend(large, p, cuda, last_shot)[0] == "dense"
        backend, reason = attn._auto_backend(large, p, cuda, everything)
        assert backend == "grouped" and "pairs >" in reason
        assert large.seq_len ** 2 > attn._CUDA_DENSE_MAX_PAIRS >= small.seq_len ** 2
    assert attn._auto_backend(small, get_policy("full"), cuda, tuple(range(len(small.segments))))[0] == "grouped"
