"""One attention entry point for multi-shot sequences: ``attention(q, k, v, plan)``.

Grouped attention over segment masks follows Mask²DiT (Qi et al. 2025, §3.2); the log-sum-exp
merge of partial results is the standard online-softmax identity (Milakov & Gimelshein 2018).

Backends (each tested equal to ``dense``):

``dense``    reference on any device: one ``scaled_dot_product_attention`` call with the boolean
             ``[Lq, Lk]`` mask from :func:`~storyreel.nn.masks.dense_mask`.
``grouped``  no materialised mask, segment-structured policies only. The segment mask is covered
             exactly once by rectangles (query segments × key segments); each rectangle is one
             unmasked kernel call; rows covered by several rectangles are merged with their LSE.
``flex``     ``torch.nn.attention.flex_attention`` with a BlockMask built from the policy's predicate
             (:func:`~storyreel.nn.masks.flex_mask_mod`); compiled on CUDA, eager on CPU
             (``compile_flex=True`` compiles there too, ~20 s the first time).

Tiling algorithm (grouped, :func:`~storyreel.nn.masks.segment_cover`). Start with one rectangle per
set of query segments that see the same key segments (non-adjacent segments grouped, queries
gathered), then greedy local search under a cost model: factor the key set shared by several
rectangles out into one rectangle (e.g. all-video × all-video for Mask²DiT v2: ONE large unmasked
call), split a rectangle into its contiguous query or key runs, or merge rectangles with equal key
sets, while ``λ·calls + 2·gathered query rows + 4·gathered key rows + 4·extra merged rows`` drops
(every exact cover has the same FLOPs, so only overheads count; ``λ`` is the device's per-call cost).
Rectangles with one contiguous query run and one key run whose starts form arithmetic progressions
(same shape every shot) run as ONE batched call on strided views. Contiguous token sets are slice
views; others are gathered once per call with ``index_select``. Rows seen by one rectangle use
plain SDPA (native autograd); merged rows use kernels that return the LSE (cuDNN on CUDA after a
one-time self-check against flash, else flash; the CPU flash kernel; a math fallback) and
``out ← lerp(out, o, σ(lse − lse_out))``; with gradients the merged plan is one autograd function
whose backward runs each tile's flash backward with the merged output and LSE (ring-attention style).

``auto``: CUDA → ``grouped`` for segment-structured policies (for ``full`` that is one plain SDPA
call), ``flex`` for token-level ones (``layout_keyframe``); CPU → ``grouped`` for ``full`` (plain
SDPA) and for segment-structured policies whose estimated cost is not above the dense one, else
``dense`` (always for token-level policies: eager flex on CPU materialises the scores as well).
Measured on an H100 (bf16, 24×64 heads, 226 + 4096 tokens per shot): auto runs Mask²DiT v2 at
1.36× / 1.37× and causal_shots at 1.15× / 1.27× the effective throughput of unmasked flash
attention at 8 / 3 shots (``benchmarks/results/attention.md``).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from storyreel.nn.layout import SequenceLayout
from storyreel.nn.masks import MaskPolicy, dense_mask, flex_mask_mod, get_policy, segment_cover, segment_mask, segment_runs

__all__ = ["BACKENDS", "AttentionPlan", "attention", "clear_plan_cache", "plan_attention"]

BACKENDS: tuple[str, ...] = ("dense", "grouped", "flex")
_COST = {"gather_q": 2.0, "gather_k": 4.0, "merge": 4.0}
_CALL_OVERHEAD = {"cuda": 16384.0, "cpu": 192.0}  # λ: fixed cost of one call, in token-rows moved
_CPU_DENSE_PAIR = 1.2  # CPU: a masked (q, k) pair costs ~1.2x an unmasked one (mask read)
_CPU_CALL_PAIRS = 32768.0  # CPU: the fixed cost of one grouped call (+ its merge) ~ this many (q, k) pairs
# CUDA: up to this many (query, key) pairs one masked SDPA call (memory-efficient kernel, bool mask of this many
# bytes) beats the grouped program, whose tens of small kernels per layer cost host time, not arithmetic. Measured
# on an H100 (benchmarks/results/generation-gpu-large.md, 2.0 B model in bf16): dense took 1.34 s against grouped's
# 2.20 s for a cached causal shot (1 k x 8.5 k pairs) and 1.3 s against 2.0 s for a 4-shot joint scene (4.2 k x
# 4.2 k); at 8.5 k x 8.5 k both took ~2.7 s. Above it the mask's memory and wasted masked-out work grow
# quadratically, and grouped's tiles (only allowed pairs, flash kernels) win.
_CUDA_DENSE_MAX_PAIRS = 1 << 25


# ----------------------------------------------------------------------------- token-set access
@dataclass(frozen=True, eq=False)
class _Access:
    """How a token set is taken from a ``[B, H, L, D]`` tensor along dim 2.

    kind "slice": ``[start, start+length)``; "strided": ``count`` runs of ``length`` tokens starting
    at ``start + i*step`` (a batched call; logical shape ``[count, B*H, length, D]``); "index":
    gathered rows ``index`` (sorted).
    """

    kind: str
    length: int
    start: int = 0
    count: int = 1
    step: int = 0
    index: Tensor | None = None

    def take(self, x: Tensor) -> Tensor:
        if self.kind == "slice":
            return x.narrow(2, self.start, self.length)
        if self.kind == "index":
            return x.index_select(2, self.index)
        return _strided(x, self)

    def put(self, dst: Tensor, val: Tensor, add: bool = False) -> None:
        """``dst[rows] = val`` (or ``+=`` with ``add``); ``dst`` is a contiguous buffer that we own."""
        if self.kind == "index":
            (dst.index_add_ if add else dst.index_copy_)(2, self.index, val.to(dst.dtype))
        else:
            (self.take(dst).add_ if add else self.take(dst).copy_)(val)


def _strided(x: Tensor, acc: _Access) -> Tensor:
    """View ``[count, B*H, length, (D)]`` of ``x`` ``[B, H, L, (D)]`` (copy when B*H cannot be folded)."""
    b, h = x.shape[:2]
    tail = tuple(x.shape[3:])
    s_b, s_h, s_l = x.stride()[:3]
    if b == 1 or s_b == h * s_h:
        return x.as_strided(
            (acc.count, b * h, acc.length, *tail),
            (acc.step * s_l, s_h, s_l, *x.stride()[3:]),
            x.storage_offset() + acc.start * s_l,
        )
    idx = (acc.start + acc.step * torch.arange(acc.count)[:, None] + torch.arange(acc.length)).flatten()
    g = x.index_select(2, idx.to(x.device))  # [B, H, count*length, ...]
    g = g.unflatten(2, (acc.count, acc.length))  # -> [B, H, count, length, ...]
    return g.movedim(2, 0).flatten(1, 2)  # -> [count, B*H, length, ...]


# ----------------------------------------------------------------------------- planning: calls
@dataclass(frozen=True, eq=False)
class _Call:
    q: _Access
    k: _Access
    merge: bool  # rows already hold a partial result: merge by LSE instead of writing
    rects: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


@dataclass(frozen=True, eq=False)
class _Program:
    calls: tuple[_Call, ...]
    needs_lse: bool  # some query row is covered by more than one call
    needs_init: bool  # some call writes rows partly covered before (start from out=0, lse=-inf)


@functools.lru_cache(maxsize=128)
def _build_program(layout: SequenceLayout, policy: MaskPolicy, q_segs: tuple[int, ...], device: torch.device) -> _Program:
    seg = segment_mask(layout, policy).numpy()
    lengths = [s.length for s in layout.segments]
    empty = [s for s in q_segs if not seg[s].any()]
    if empty:
        raise ValueError(f"policy {policy.name!r} leaves segments {empty} with no key to attend to")
    lam = _CALL_OVERHEAD["cuda" if device.type == "cuda" else "cpu"]
    rects = segment_cover(seg, q_segs, lengths, call_overhead=lam, costs=_COST)
    qpos, kpos = {s: i for i, s in enumerate(q_segs)}, {s: s for s in range(len(lengths))}
    q_off, acc = {}, 0
    for s in q_segs:
        q_off[s], acc = acc, acc + lengths[s]

    def token_runs(segs: frozenset[int], pos: dict[int, int], off) -> list[tuple[int, int]]:  # noqa: ANN001
        return [(off(r[0]), sum(lengths[s] for s in r)) for r in segment_runs(segs, pos)]

    index_cache: dict[tuple[tuple[int, int], ...], Tensor] = {}

    def access(runs: list[tuple[int, int]]) -> _Access:
        if len(runs) == 1:
            return _Access("slice", runs[0][1], start=runs[0][0])
        key = tuple(runs)
        if key not in index_cache:
            index_cache[key] = torch.cat([torch.arange(a, a + n) for a, n in runs]).to(device)
        return _Access("index", sum(n for _, n in runs), index=index_cache[key])

    items = []  # (q runs, k runs, rect)
    for q, k in rects:
        qr = token_runs(q, qpos, q_off.__getitem__)
        kr = token_runs(k, kpos, lambda s: layout.offsets[s])
        items.append((qr, kr, (tuple(sorted(q)), tuple(sorted(k)))))
    # batch congruent single-run rectangles whose starts form arithmetic progressions
    calls_raw = [(access(qr), access(kr), [rect]) for qr, kr, rect in items if len(qr) > 1 or len(kr) > 1]
    shapes: dict[tuple[int, int], list] = {}
    for qr, kr, rect in items:
        if len(qr) == 1 and len(kr) == 1:
            shapes.setdefault((qr[0][1], kr[0][1]), []).append((qr[0][0], kr[0][0], rect))
    for (ql, kl), group in shapes.items():
        group.sort()
        i = 0
        while i < len(group):
            j = i + 1
            if j < len(group):
                dq, dk = group[j][0] - group[i][0], group[j][1] - group[i][1]
                if dq >= ql and dk >= kl:  # non-overlapping runs, positive steps
                    while j + 1 < len(group) and (group[j + 1][0] - group[j][0], group[j + 1][1] - group[j][1]) == (dq, dk):
                        j += 1
                    j += 1
            chain = group[i:j]
            if len(chain) == 1:
                calls_raw.append((access([(chain[0][0], ql)]), access([(chain[0][1], kl)]), [chain[0][2]]))
            else:
                qa = _Access("strided", ql, start=chain[0][0], count=len(chain), step=dq)
                ka = _Access("strided", kl, start=chain[0][1], count=len(chain), step=dk)
                calls_raw.append((qa, ka, [c[2] for c in chain]))
            i = j
    # biggest calls first; then decide per call whether its rows are written or merged
    calls_raw.sort(key=lambda c: -(c[0].length * c[0].count * c[1].length))
    touched: set[int] = set()
    calls, needs_init = [], False
    for qa, ka, rs in calls_raw:
        rows = {s for r in rs for s in r[0]}
        hit = rows & touched
        needs_init |= bool(hit) and hit != rows
        calls.append(_Call(qa, ka, merge=bool(hit), rects=tuple(rs)))
        touched |= rows
    needs_lse = any(c.merge for c in calls)
    return _Program(tuple(calls), needs_lse=needs_lse, needs_init=needs_init)


# ----------------------------------------------------------------------------- kernels with LSE
def _flash_ok(q: Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256


_FORCE_MATH = False  # tests flip this to check the math fallback against the kernels
_CUDNN_OK: dict[tuple, bool] = {}  # (device, dtype, head_dim) -> cuDNN-with-LSE passed its self-check


def _cudnn_lse(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False, scale=scale)
    return res[0], res[1].reshape(q.shape[:3]).float()  # cuDNN may return the LSE as [N, H, Lq, 1]


def _cudnn_usable(q: Tensor) -> bool:
    """cuDNN attention with LSE (faster than flash on Hopper), once checked against flash on this device."""
    if not _flash_ok(q) or q.shape[-1] > 128:
        return False
    key = (q.device, q.dtype, q.shape[-1])
    if key not in _CUDNN_OK:
        try:
            g = torch.Generator(device=q.device).manual_seed(0)
            x = torch.randn(2, 3, 300, q.shape[-1], device=q.device, dtype=q.dtype, generator=g)
            ok = True
            for t in (x, x.as_strided((2, 3, 100, q.shape[-1]), (200 * x.shape[-1],) + x.stride()[1:], 7 * x.shape[-1])):
                o1, l1 = _cudnn_lse(t, t, t, 0.125)
                res = torch.ops.aten._scaled_dot_product_flash_attention(t, t, t, 0.0, False, False, scale=0.125)
                ok &= (o1.float() - res[0].float()).abs().max().item() < 2e-2 and (l1 - res[1]).abs().max().item() < 1e-2
            _CUDNN_OK[key] = bool(ok)
        except RuntimeError:
            _CUDNN_OK[key] = False
    return _CUDNN_OK[key]


def _lse_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, for_grad: bool = False) -> tuple[Tensor, Tensor, Any]:
    """``(out [N,H,Lq,D], lse [N,H,Lq] float32, aux)`` of unmasked attention (aux: for the backward)."""
    if not _FORCE_MATH and q.device.type == "cpu":
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)
        return o, lse, None
    if not _FORCE_MATH and not for_grad and _cudnn_usable(q):
        return (*_cudnn_lse(q, k, v, scale), None)
    if not _FORCE_MATH and _flash_ok(q):
        res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)
        return res[0], res[1], (res[2], res[3], res[4], res[5], res[6], res[7])
    if not _FORCE_MATH and q.is_cuda:  # e.g. float32: memory-efficient kernel (its LSE is padded to 32)
        try:
            res = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False, scale=scale)
            return res[0], res[1][..., : q.shape[2]], None
        except RuntimeError:
            pass
    return (*_math_lse(q, k, v, scale), None)


_MATH_CHUNK_ELEMENTS = 1 << 28  # score elements per chunk of the float32 fallback (1 GiB)


def _math_rows(q: Tensor, k: Tensor) -> int:
    """Query rows per chunk of the float32 fallback (forward and backward chunk alike)."""
    n, h = q.shape[:2]
    return max(1, _MATH_CHUNK_ELEMENTS // max(1, n * h * k.shape[2]))


def _math_lse(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Reference attention in float32 (``out`` in q's dtype, ``lse`` float32), in query chunks so that no score
    tensor reaches 2^31 elements (CUDA matmuls fault beyond that) or more memory than it needs."""
    lq, rows = q.shape[2], _math_rows(q, k)
    kf, vf = k.float().transpose(-1, -2), v.float()
    outs, lses = [], []
    for a in range(0, lq, rows):
        s = torch.matmul(q[:, :, a : a + rows].float(), kf) * scale  # [N, H, rows, Lk]
        lse = torch.logsumexp(s, dim=-1)
        outs.append(torch.matmul(torch.exp(s - lse[..., None]), vf).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _lse_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, scale: float, aux: Any):
    """Gradients of one tile given the MERGED output ``o`` and ``lse`` of its rows (ring-attention style)."""
    if not _FORCE_MATH and q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            do.contiguous(), q, k, v, o.contiguous(), lse.contiguous(), 0.0, False, scale=scale
        )
    if not _FORCE_MATH and aux is not None:
        cq, ck, mq, mk, seed, offset = aux
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            do, q, k, v, o, lse.contiguous(), cq, ck, mq, mk, 0.0, False, seed, offset, scale=scale
        )
    kf, vf = k.float(), v.float()
    lq, rows = q.shape[2], _math_rows(q, k)
    dqs, dk, dv = [], torch.zeros_like(kf), torch.zeros_like(vf)
    for a in range(0, lq, rows):  # query chunks, as in the forward
        qf, dof, of = (t[:, :, a : a + rows].float() for t in (q, do, o))
        p = torch.exp(torch.matmul(qf, kf.transpose(-1, -2)) * scale - lse[:, :, a : a + rows, None])  # [N, H, rows, Lk]
        dv += torch.matmul(p.transpose(-1, -2), dof)
        ds = p * (torch.matmul(dof, vf.transpose(-1, -2)) - (dof * of).sum(-1, keepdim=True))
        dqs.append(torch.matmul(ds, kf) * scale)
        dk += torch.matmul(ds.transpose(-1, -2), qf) * scale
    return torch.cat(dqs, dim=2), dk, dv


def _call_inputs(call: _Call, q: Tensor, k: Tensor, v: Tensor, cache: dict) -> tuple[Tensor, Tensor, Tensor]:
    def take(acc: _Access, x: Tensor, tag: str) -> Tensor:
        if acc.kind != "index":
            return acc.take(x)
        key = (tag, id(acc.index))
        if key not in cache:
            cache[key] = acc.take(x)
        return cache[key]

    return take(call.q, q, "q"), take(call.k, k, "k"), take(call.k, v, "v")


def _run_lse(prog: _Program, q: Tensor, k: Tensor, v: Tensor, scale: float, keep_aux: bool = False):
    """Forward of a merged program: ``out [B,H,Lq,D]``, ``lse [B,H,Lq]`` and per-call kernel aux."""
    b, h, lq, d = q.shape
    if prog.needs_init:
        out = q.new_zeros(b, h, lq, d)
        lse = q.new_full((b, h, lq), float("-inf"), dtype=torch.float32)
    else:
        out = q.new_empty(b, h, lq, d)
        lse = q.new_empty(b, h, lq, dtype=torch.float32)
    cache: dict = {}
    auxes = []
    for call in prog.calls:
        qc, kc, vc = _call_inputs(call, q, k, v, cache)
        o, l_c, aux = _lse_forward(qc, kc, vc, scale, for_grad=keep_aux)
        auxes.append(aux if keep_aux else None)
        if not call.merge:
            call.q.put(out, o)
            call.q.put(lse, l_c)
            continue
        cur_o, cur_l = call.q.take(out), call.q.take(lse)
        w = torch.sigmoid(l_c - cur_l).unsqueeze(-1).to(out.dtype)  # weight of the new partial result per row
        merged_l = torch.logaddexp(cur_l, l_c)
        if call.q.kind == "index":  # gathered rows: merge, then scatter back
            call.q.put(out, torch.lerp(cur_o, o.to(out.dtype), w))
            call.q.put(lse, merged_l)
        else:  # views: merge in place
            cur_o.lerp_(o.to(out.dtype), w)
            cur_l.copy_(merged_l)
    return out, lse, auxes


class _MergedAttention(torch.autograd.Function):
    """Grouped attention with LSE merges; backward runs each tile's kernel backward on the merged out/LSE."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, prog: _Program, scale: float) -> Tensor:  # noqa: ANN001
        out, lse, auxes = _run_lse(prog, q, k, v, scale, keep_aux=True)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.prog, ctx.scale, ctx.auxes = prog, scale, auxes
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):  # noqa: ANN001, ANN205
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = (torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (q, k, v))
        dout = dout.contiguous()
        cache: dict = {}
        for call, aux in zip(ctx.prog.calls, ctx.auxes, strict=True):
            qc, kc, vc = _call_inputs(call, q, k, v, cache)
            oc, lc, doc = call.q.take(out), call.q.take(lse), call.q.take(dout)
            gq, gk, gv = _lse_backward(doc, qc, kc, vc, oc, lc, ctx.scale, aux)
            call.q.put(dq, gq, add=True)
            call.k.put(dk, gk, add=True)
            call.k.put(dv, gv, add=True)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None


def _run_grouped(prog: _Program, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if prog.needs_lse:
        if grad:
            return _MergedAttention.apply(q, k, v, prog, scale)
        return _run_lse(prog, q, k, v, scale)[0]
    if len(prog.calls) == 1 and prog.calls[0].q.kind == "slice" and prog.calls[0].q.length == q.shape[2]:
        call = prog.calls[0]  # one call covering every query row: return SDPA's output as is
        qc, kc, vc = _call_inputs(call, q, k, v, {})
        return F.scaled_dot_product_attention(qc, kc, vc, scale=scale)
    out = q.new_empty(q.shape)
    cache: dict = {}
    for call in prog.calls:  # every row is covered once: plain SDPA calls, native autograd
        qc, kc, vc = _call_inputs(call, q, k, v, cache)
        call.q.put(out, F.scaled_dot_product_attention(qc, kc, vc, scale=scale))
    return out


# ----------------------------------------------------------------------------- plans
@dataclass(frozen=True, eq=False)
class AttentionPlan:
    """Everything a backend needs for one (layout, policy, backend, device, query segments).

    Queries are the tokens of ``query_segments`` in layout order (``n_queries`` of them); keys are all
    ``n_keys`` tokens of ``layout``. Build with :func:`plan_attention` (cached).
    """

    layout: SequenceLayout
    policy: MaskPolicy
    backend: str
    device: torch.device
    query_segments: tuple[int, ...]
    n_queries: int
    n_keys: int
    reason: str
    mask: Tensor | None = None
    program: _Program | None = None
    block_mask: Any = None
    compile_flex: bool = False

    @property
    def n_calls(self) -> int:
        """Kernel calls per attention (grouped: tiles after batching; dense/flex: 1)."""
        return len(self.program.calls) if self.program is not None else 1

    def describe(self) -> str:
        """One line per kernel call (grouped) or a one-line summary."""
        head = f"{self.backend} [{self.policy.name}] Lq={self.n_queries} Lk={self.n_keys} ({self.reason})"
        if self.program is None:
            return head
        lines = [head]
        for c in self.program.calls:
            lines.append(
                f"  {'merge' if c.merge else 'write'} q:{c.q.kind}({c.q.count}x{c.q.length}) "
                f"k:{c.k.kind}({c.k.count}x{c.k.length}) rects={[list(map(list, r)) for r in c.rects]}"
            )
        return "\n".join(lines)


def _norm_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r} was asked for but CUDA is not available; plan for 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def plan_attention(
    layout: SequenceLayout,
    policy: str | MaskPolicy,
    *,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    query_segments: Sequence[int] | None = None,
    compile_flex: bool | None = None,
) -> AttentionPlan:
    """Precompute an attention plan (LRU-cached on all arguments).

    Args:
        layout: layout of the keys (the full sequence, cached prefix included).
        policy: a :class:`MaskPolicy` or its name (see :func:`~storyreel.nn.masks.get_policy`).
        backend: ``"auto"``, ``"dense"``, ``"grouped"`` or ``"flex"``.
        device: device of the q/k/v tensors that will use the plan.
        query_segments: segments whose tokens are the queries (default all; any sorted subset, e.g. the
            new segments after a KV-cached prefix).
        compile_flex: compile flex_attention (default: on CUDA only).
    """
    pol = get_policy(policy)
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown attention backend {backend!r}; choose 'auto' or one of {BACKENDS}")
    dev = _norm_device(device)
    if query_segments is None:
        qs = tuple(range(layout.n_segments))
    else:
        qs = tuple(int(s) for s in query_segments)
        if not qs or list(qs) != sorted(set(qs)) or qs[0] < 0 or qs[-1] >= layout.n_segments:
            raise ValueError(
                f"query_segments={list(query_segments)} must be sorted, unique and within 0..{layout.n_segments - 1}"
            )
    return _plan_cached(layout, pol, backend, dev, qs, compile_flex)


@functools.lru_cache(maxsize=128)
def _plan_cached(
    layout: SequenceLayout,
    pol: MaskPolicy,
    backend: str,
    dev: torch.device,
    qs: tuple[int, ...],
    compile_flex: bool | None,
) -> AttentionPlan:
    n_q = sum(layout.segments[s].length for s in qs)
    common = dict(layout=layout, policy=pol, device=dev, query_segments=qs, n_queries=n_q, n_keys=layout.seq_len)
    reason = "explicit"
    if backend == "auto":
        backend, reason = _auto_backend(layout, pol, dev, qs)
    if backend == "grouped":
        if not pol.segment_structured:
            raise ValueError(
                f"the grouped backend needs a segment-structured policy, but {pol.name!r} is token-level; "
                "use backend='flex' (GPU) or 'dense'"
            )
        return AttentionPlan(backend="grouped", reason=reason, program=_build_program(layout, pol, qs, dev), **common)
    if backend == "dense":
        mask = dense_mask(layout, pol, query_segments=qs, device=dev)
        return AttentionPlan(backend="dense", reason=reason, mask=mask, **common)
    comp = dev.type == "cuda" if compile_flex is None else bool(compile_flex)
    return AttentionPlan(
        backend="flex", reason=reason, block_mask=_flex_block_mask(layout, pol, dev, qs, n_q), compile_flex=comp, **common
    )


def clear_plan_cache() -> None:
    """Forget every cached plan (e.g. after freeing GPU memory)."""
    _plan_cached.cache_clear()
    _build_program.cache_clear()


def _auto_backend(layout: SequenceLayout, pol: MaskPolicy, dev: torch.device, qs: tuple[int, ...]) -> tuple[str, str]:
    if not pol.segment_structured:
        if dev.type == "cuda" and _flex_available():
            return "flex", "auto: token-level policy on CUDA"
        return "dense", "auto: token-level policy off CUDA"
    if pol.name == "full":
        return "grouped", "auto: full = plain SDPA"
    if dev.type == "cuda":
        pairs = sum(layout.segments[s].length for s in qs) * layout.seq_len
        if pairs <= _CUDA_DENSE_MAX_PAIRS:
            return "dense", f"auto: {pairs:.3g} pairs <= {_CUDA_DENSE_MAX_PAIRS:.3g}, one masked SDPA call on CUDA"
        return "grouped", f"auto: {pairs:.3g} pairs > {_CUDA_DENSE_MAX_PAIRS:.3g}, segment-structured policy on CUDA"
    prog = _build_program(layout, pol, qs, dev)
    work = sum(c.q.count * c.q.length * c.k.length for c in prog.calls)
    grouped = work + _CPU_CALL_PAIRS * len(prog.calls)
    dense = _CPU_DENSE_PAIR * sum(layout.segments[s].length for s in qs) * layout.seq_len
    if grouped <= dense:
        return "grouped", f"auto: est. grouped {grouped:.3g} <= dense {dense:.3g}"
    return "dense", f"auto: est. dense {dense:.3g} < grouped {grouped:.3g}"


# ----------------------------------------------------------------------------- flex
def _flex_available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex_block_mask(layout: SequenceLayout, pol: MaskPolicy, dev: torch.device, qs: tuple[int, ...], n_q: int):  # noqa: ANN202
    if not _flex_available():
        raise RuntimeError(f"torch {torch.__version__} has no flex_attention; use backend='grouped' or 'dense'")
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = flex_mask_mod(layout, pol, query_segments=qs, device=dev)
    return create_block_mask(mask_mod, None, None, n_q, layout.seq_len, device=dev)


@functools.cache
def _compiled_flex():  # noqa: ANN202
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _run_flex(plan: AttentionPlan, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    if plan.compile_flex:
        return _compiled_flex()(q, k, v, block_mask=plan.block_mask, scale=scale)
    with warnings.catch_warnings():  # eager flex warns that it is unfused; that is the point on CPU
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=plan.block_mask, scale=scale)


# ----------------------------------------------------------------------------- entry point
def _same_dtype(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One dtype for q, k and v. Mixed inputs are common under autocast (rotary embeddings computed in float32
    promote q and k while v stays bfloat16); the fused kernels reject them, and the float32 fallback is both slow
    and, at real sizes, too large. Under autocast the autocast dtype wins, otherwise the narrowest input dtype."""
    dts = {q.dtype, k.dtype, v.dtype}
    if len(dts) == 1:
        return q, k, v
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
    else:
        dt = min(dts, key=lambda d: torch.finfo(d).bits)
    return q.to(dt), k.to(dt), v.to(dt)


def attention(q: Tensor, k: Tensor, v: Tensor, plan: AttentionPlan, *, scale: float | None = None) -> Tensor:
    """Multi-shot attention.

    Args:
        q: ``[B, H, Lq, D]`` queries (the tokens of ``plan.query_segments``, in layout order).
        k, v: ``[B, H, Lk, D]`` keys/values of every token of ``plan.layout``.
        plan: from :func:`plan_attention`, for ``q``'s device.
        scale: softmax scale (default ``D ** -0.5``).

    Returns:
        ``[B, H, Lq, D]``.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be [B, H, L, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[2] != plan.n_queries:
        raise ValueError(
            f"the plan has {plan.n_queries} query tokens but the tensor has {q.shape[2]} (q.shape[2]); "
            "plan with the right layout/query_segments"
        )
    if k.shape[2] != plan.n_keys or v.shape[2] != plan.n_keys:
        raise ValueError(
            f"the plan's layout has {plan.n_keys} tokens but the tensor has {k.shape[2]} (k.shape[2]) / "
            f"{v.shape[2]} (v.shape[2])"
        )
    if k.shape[:2] != q.shape[:2] or v.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"q, k, v disagree on batch/heads/head_dim: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.device != plan.device:
        raise ValueError(f"the plan was made for {plan.device} but q is on {q.device}; plan with device=q.device")
    sc = float(q.shape[-1] ** -0.5) if scale is None else float(scale)
    q, k, v = _same_dtype(q, k, v)
    if plan.backend == "dense":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=plan.mask, scale=sc)
    if plan.backend == "grouped":
        return _run_grouped(plan.program, q, k, v, sc)
    return _run_flex(plan, q, k, v, sc)
