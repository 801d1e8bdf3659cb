"""Multi-shot attention mask policies, each defined once as a vectorised predicate over token metadata.

Policies:
    full                 every token sees every token (LCT scene-level attention, Guo et al. 2025).
    mask2dit:v1..v5      Mask²DiT (Qi et al. 2025) symmetric masks over text/video pairs; v2 is the default.
    block_diagonal       each shot only with itself (Captain Cinema's early layers, Xiao et al. 2025).
    causal_shots         shot i sees shots <= i, bidirectional within a shot (LCT context-causal attention).
    layout_keyframe      layout tokens of an instance <-> keyframe tokens inside its box (long-take keyframes,
                         WACV 2025).

Every policy is a :class:`MaskPolicy` whose :meth:`~MaskPolicy.allowed` takes query and key
:class:`TokenMeta` that broadcast against each other and returns a boolean tensor of the broadcast
shape. The same function builds the dense ``[Lq, Lk]`` mask, the ``[S, S]`` segment mask that the
grouped backend tiles, and the ``mask_mod`` of the flex backend (where it sees 0-d tensors).
Global segments (shot -1) see and are seen by everything, except under ``causal_shots`` where they
count as shot -1 (seen by all, seeing only shot -1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from storyreel.nn.layout import Modality, SequenceLayout, grid_centres

__all__ = [
    "BlockDiagonal",
    "CausalShots",
    "Full",
    "LayoutKeyframe",
    "Mask2DiT",
    "MaskPolicy",
    "POLICY_NAMES",
    "TokenMeta",
    "dense_mask",
    "flex_mask_mod",
    "get_policy",
    "layer_policies",
    "segment_cover",
    "segment_mask",
    "segment_runs",
]


@dataclass(frozen=True)
class TokenMeta:
    """Per-token metadata (all tensors share one shape, usually ``[L]``).

    ``x, y``: normalised centre of a VIDEO/IMAGE token in its frame (NaN elsewhere);
    ``x0, y0, x1, y1``: box of a LAYOUT token (NaN elsewhere, so that box tests are False).
    """

    segment: Tensor
    shot: Tensor
    modality: Tensor
    instance: Tensor
    x: Tensor
    y: Tensor
    x0: Tensor
    y0: Tensor
    x1: Tensor
    y1: Tensor

    @classmethod
    def from_layout(cls, layout: SequenceLayout) -> TokenMeta:
        """Metadata ``[L]`` of every token of ``layout`` (CPU); one loop over segments, none over tokens."""
        nan = float("nan")
        xs, ys, boxes = [], [], []
        for s in layout.segments:
            n = s.length
            if s.is_visual:
                x, y = grid_centres(s.grid)
            else:
                x = y = torch.full((n,), nan)
            xs.append(x)
            ys.append(y)
            box = s.box if s.box is not None else (nan, nan, nan, nan)
            boxes.append(torch.tensor(box, dtype=torch.float32).expand(n, 4))  # [4] -> [n, 4]
        box_t = torch.cat(boxes)  # [L, 4]
        return cls(
            segment=layout.token_segment,
            shot=layout.token_shot,
            modality=layout.token_modality,
            instance=layout.token_instance,
            x=torch.cat(xs),
            y=torch.cat(ys),
            x0=box_t[:, 0].contiguous(),
            y0=box_t[:, 1].contiguous(),
            x1=box_t[:, 2].contiguous(),
            y1=box_t[:, 3].contiguous(),
        )

    def _map(self, fn) -> TokenMeta:  # noqa: ANN001 - internal helper
        return TokenMeta(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device: torch.device | str) -> TokenMeta:
        return self._map(lambda t: t.to(device))

    def take(self, index: Tensor) -> TokenMeta:
        """Metadata of the tokens at ``index`` (any shape; a 0-d index gives 0-d fields)."""
        return self._map(lambda t: t[index])

    def rows(self) -> TokenMeta:
        """Fields reshaped ``[L] -> [L, 1]`` (queries of a pairwise predicate)."""
        return self._map(lambda t: t[:, None])

    def cols(self) -> TokenMeta:
        """Fields reshaped ``[L] -> [1, L]`` (keys of a pairwise predicate)."""
        return self._map(lambda t: t[None, :])

    # modality tests (tensor ops only: usable inside vmap / torch.compile)
    def is_visual(self) -> Tensor:
        return (self.modality == int(Modality.VIDEO)) | (self.modality == int(Modality.IMAGE))

    def is_layout(self) -> Tensor:
        return self.modality == int(Modality.LAYOUT)

    def is_context(self) -> Tensor:
        """TEXT and SEMANTIC tokens (the conditioning streams)."""
        return (self.modality == int(Modality.TEXT)) | (self.modality == int(Modality.SEMANTIC))

    def is_global(self) -> Tensor:
        return self.shot < 0


def _same_shot_or_global(q: TokenMeta, k: TokenMeta) -> Tensor:
    return (q.shot == k.shot) | q.is_global() | k.is_global()


@dataclass(frozen=True)
class MaskPolicy(ABC):
    """A multi-shot attention mask as a predicate over (query, key) token metadata."""

    #: True when ``allowed`` depends only on segment-level attributes (segment, shot, modality)
    segment_structured: ClassVar[bool] = True

    @property
    @abstractmethod
    def name(self) -> str:
        """Spec string that :func:`get_policy` maps back to this policy."""

    @abstractmethod
    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        """Boolean tensor (broadcast shape of ``q`` and ``k`` fields): may query ``q`` attend to key ``k``?"""

    def __repr__(self) -> str:
        return f"MaskPolicy({self.name!r})"


@dataclass(frozen=True, repr=False)
class Full(MaskPolicy):
    """Every token attends to every token."""

    @property
    def name(self) -> str:
        return "full"

    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        return (q.shot >= -1) & (k.shot >= -1)  # all True, in the broadcast shape


@dataclass(frozen=True, repr=False)
class Mask2DiT(MaskPolicy):
    """Mask²DiT (Qi et al. 2025) symmetric mask, variants 1-5.

    v1: each shot's text/video only with itself; v2 = v1 + video<->video across shots (default);
    v3 = v2 + text<->text across shots; v4 = v2 + text_i<->all video; v5 = full attention.
    "Video" means VIDEO/IMAGE tokens; every other modality counts as text.
    """

    version: int = 2

    def __post_init__(self) -> None:
        if self.version not in (1, 2, 3, 4, 5):
            raise ValueError(f"Mask2DiT.version={self.version!r} must be one of 1, 2, 3, 4, 5")

    @property
    def name(self) -> str:
        return f"mask2dit:v{self.version}"

    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        ok = _same_shot_or_global(q, k)
        if self.version == 1:
            return ok
        qv, kv = q.is_visual(), k.is_visual()
        ok = ok | (qv & kv)
        if self.version == 3:
            ok = ok | (~qv & ~kv)
        elif self.version == 4:
            ok = ok | (~qv & kv) | (qv & ~kv)
        elif self.version == 5:
            ok = ok | ~ok
        return ok


@dataclass(frozen=True, repr=False)
class BlockDiagonal(MaskPolicy):
    """Each shot attends only within itself (global segments see and are seen by all)."""

    @property
    def name(self) -> str:
        return "block_diagonal"

    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        return _same_shot_or_global(q, k)


@dataclass(frozen=True, repr=False)
class IsolatedShots(MaskPolicy):
    """Each shot attends only within itself and to the global segments, which see only themselves: no path from
    one shot to another (history guidance's "alone" branch; for a context-causal model it is the shot generated
    with no history, exactly)."""

    @property
    def name(self) -> str:
        return "isolated_shots"

    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        return (q.shot == k.shot) | k.is_global()


@dataclass(frozen=True, repr=False)
class CausalShots(MaskPolicy):
    """Token of shot i sees every token of shots <= i (global = shot -1); bidirectional within a shot."""

    @property
    def name(self) -> str:
        return "causal_shots"

    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        return k.shot <= q.shot


@dataclass(frozen=True, repr=False)
class LayoutKeyframe(MaskPolicy):
    """Layout <-> keyframe masked attention (long-take keyframes, WACV 2025).

    Text/semantic tokens see all and are seen by all; keyframe (VIDEO/IMAGE) tokens see all keyframe
    tokens; layout tokens see their own instance's layout tokens (same shot); a layout token and a
    keyframe token of the same shot (or a global one) see each other when the keyframe token's centre
    lies inside the layout's box ``[x0, x1) × [y0, y1)``. Token-level, so not segment-structured.
    """

    segment_structured: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return "layout_keyframe"

    @staticmethod
    def _inside(lay: TokenMeta, vis: TokenMeta) -> Tensor:
        """Is the visual token's centre inside the layout token's box (same shot or either global)?"""
        box = (vis.x >= lay.x0) & (vis.x < lay.x1) & (vis.y >= lay.y0) & (vis.y < lay.y1)
        return box & _same_shot_or_global(lay, vis) & lay.is_layout() & vis.is_visual()

    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        ok = q.is_context() | k.is_context()
        ok = ok | (q.is_visual() & k.is_visual())
        ok = ok | (q.is_layout() & k.is_layout() & (q.instance == k.instance) & (q.shot == k.shot))
        return ok | self._inside(q, k) | self._inside(k, q)


POLICY_NAMES: tuple[str, ...] = (
    "full",
    "mask2dit",
    "mask2dit:v1",
    "mask2dit:v2",
    "mask2dit:v3",
    "mask2dit:v4",
    "mask2dit:v5",
    "block_diagonal",
    "isolated_shots",
    "causal_shots",
    "layout_keyframe",
)


def get_policy(spec: str | MaskPolicy) -> MaskPolicy:
    """Policy from a spec string (see :data:`POLICY_NAMES`) or pass a :class:`MaskPolicy` through."""
    if isinstance(spec, MaskPolicy):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a mask policy must be a name or a MaskPolicy, got {type(spec).__name__}")
    name = spec.strip().lower()
    if name == "full":
        return Full()
    if name == "block_diagonal":
        return BlockDiagonal()
    if name == "causal_shots":
        return CausalShots()
    if name == "isolated_shots":
        return IsolatedShots()
    if name == "layout_keyframe":
        return LayoutKeyframe()
    if name == "mask2dit":
        return Mask2DiT(2)
    if name.startswith("mask2dit:v") and name[len("mask2dit:v") :] in {"1", "2", "3", "4", "5"}:
        return Mask2DiT(int(name[len("mask2dit:v") :]))
    raise ValueError(f"unknown mask policy {spec!r}; valid names: {', '.join(POLICY_NAMES)} (or hybrid:... per layer)")


def _query_tokens(layout: SequenceLayout, query_segments: Sequence[int] | None) -> Tensor:
    if query_segments is None:
        return torch.arange(layout.seq_len)
    return layout.token_indices(list(query_segments))


def dense_mask(
    layout: SequenceLayout,
    policy: str | MaskPolicy,
    *,
    query_segments: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    chunk: int = 4096,
) -> Tensor:
    """Boolean mask ``[Lq, Lk]`` (True = may attend).

    Queries are the tokens of ``query_segments`` (default: all) concatenated in the given order;
    keys are all tokens of ``layout``. Built in row chunks of ``chunk`` queries to bound memory.
    """
    pol = get_policy(policy)
    meta = layout.token_meta(device)
    q_tok = _query_tokens(layout, query_segments).to(device)
    keys = meta.cols()
    out = torch.empty(q_tok.numel(), layout.seq_len, dtype=torch.bool, device=device)
    for start in range(0, q_tok.numel(), chunk):
        rows = meta.take(q_tok[start : start + chunk]).rows()
        out[start : start + chunk] = pol.allowed(rows, keys)
    return out


def flex_mask_mod(
    layout: SequenceLayout,
    policy: str | MaskPolicy,
    *,
    query_segments: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """A flex-attention ``mask_mod(b, h, q_idx, kv_idx)`` for ``policy`` on ``layout``.

    Token-level policies evaluate :meth:`MaskPolicy.allowed` on the tokens' metadata. Segment-structured
    ones look the same predicate up in the ``[S, S]`` segment table: two loads per element in the kernel,
    and one compiled kernel shared by every segment-structured policy.
    """
    pol = get_policy(policy)
    q_tok = _query_tokens(layout, query_segments).to(device)
    if pol.segment_structured:
        n_seg = layout.n_segments
        table = segment_mask(layout, pol).flatten().to(device)  # [S, S] -> [S*S]
        seg = layout.token_segment.to(device)
        q_row = seg[q_tok] * n_seg

        def table_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return table[q_row[q_idx] + seg[kv_idx]]

        return table_mask_mod
    meta = layout.token_meta(device)

    def token_mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return pol.allowed(meta.take(q_tok[q_idx]), meta.take(kv_idx))

    return token_mask_mod


def segment_mask(layout: SequenceLayout, policy: str | MaskPolicy) -> Tensor:
    """Boolean ``[S, S]`` mask between segments (only for segment-structured policies)."""
    pol = get_policy(policy)
    if not pol.segment_structured:
        raise ValueError(
            f"policy {pol.name!r} is token-level, so it has no segment mask; use dense_mask() "
            "(or the 'flex'/'dense' attention backends)"
        )
    first = torch.tensor(layout.offsets, dtype=torch.long)  # one representative token per segment
    meta = layout.token_meta("cpu").take(first)
    return pol.allowed(meta.rows(), meta.cols())


def layer_policies(spec: str | MaskPolicy | Sequence[str | MaskPolicy], n_layers: int) -> list[MaskPolicy]:
    """One policy per layer.

    ``spec`` is a single policy (same for all layers), a list of ``n_layers`` policies, or
    ``"hybrid:<name>*k,<name>"`` — e.g. ``"hybrid:block_diagonal*4,full"`` gives block-diagonal
    attention in the first 4 blocks and full attention after (Captain Cinema). In a hybrid spec
    every item but one carries a count ``*k``; the one without a count fills the remaining layers.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers={n_layers!r} must be a positive int")
    if isinstance(spec, MaskPolicy):
        return [spec] * n_layers
    if isinstance(spec, str):
        if not spec.strip().lower().startswith("hybrid:"):
            return [get_policy(spec)] * n_layers
        return _parse_hybrid(spec, n_layers)
    specs = list(spec)
    if len(specs) != n_layers:
        raise ValueError(f"attention policy list has {len(specs)} entries but the model has {n_layers} layers")
    return [get_policy(s) for s in specs]


def _parse_hybrid(spec: str, n_layers: int) -> list[MaskPolicy]:
    items = [it.strip() for it in spec.strip()[len("hybrid:") :].split(",") if it.strip()]
    if not items:
        raise ValueError(f"hybrid spec {spec!r} lists no policies; write e.g. 'hybrid:block_diagonal*4,full'")
    parsed: list[tuple[MaskPolicy, int | None]] = []
    for it in items:
        name, star, count = it.rpartition("*") if "*" in it else (it, "", "")
        if star:
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"hybrid spec {spec!r}: count in {it!r} must be a positive int")
            parsed.append((get_policy(name), int(count)))
        else:
            parsed.append((get_policy(it), None))
    free = [i for i, (_, c) in enumerate(parsed) if c is None]
    fixed = sum(c for _, c in parsed if c is not None)
    if len(free) > 1:
        raise ValueError(f"hybrid spec {spec!r}: at most one policy may omit its '*count' (it fills the rest)")
    if fixed > n_layers or (not free and fixed != n_layers):
        raise ValueError(
            f"hybrid spec {spec!r} assigns {fixed} layers but the model has {n_layers}; "
            "make the counts add up or leave one count out to fill the rest"
        )
    out: list[MaskPolicy] = []
    for pol, c in parsed:
        out += [pol] * (c if c is not None else n_layers - fixed)
    return out


# ----------------------------------------------------------------------------- exact covers of a segment mask
Rect = tuple[frozenset[int], frozenset[int]]  # (query segments, key segments), all pairs allowed


def segment_runs(ids: Iterable[int], pos: dict[int, int]) -> list[list[int]]:
    """Split segment ids into runs that are consecutive in ``pos`` order (segment -> position)."""
    out: list[list[int]] = []
    for s in sorted(ids, key=pos.__getitem__):
        if out and pos[s] == pos[out[-1][-1]] + 1:
            out[-1].append(s)
        else:
            out.append([s])
    return out


class _CoverCost:
    """Overhead of an exact cover of a segment mask by rectangles (see :func:`segment_cover`)."""

    def __init__(self, lengths: list[int], q_segs: Sequence[int], call_overhead: float, costs: dict) -> None:
        self.len, self.lam, self.costs = lengths, call_overhead, costs
        self.qpos = {s: i for i, s in enumerate(q_segs)}
        self.kpos = {s: s for s in range(len(lengths))}
        self._memo: dict[tuple[str, frozenset[int]], tuple[int, int]] = {}

    def info(self, segs: frozenset[int], side: str) -> tuple[int, int]:
        """(tokens, number of contiguous runs) of a query ('q') or key ('k') segment set."""
        key = (side, segs)
        if key not in self._memo:
            pos = self.qpos if side == "q" else self.kpos
            self._memo[key] = (sum(self.len[s] for s in segs), len(segment_runs(segs, pos)))
        return self._memo[key]

    def __call__(self, rects: list[Rect]) -> float:
        """λ per call (congruent single-run rectangles share one batched call) + gathered rows + merged rows."""
        classes: set[tuple[int, int]] = set()
        cost = 0.0
        gq: set[frozenset[int]] = set()
        gk: set[frozenset[int]] = set()
        hits: dict[int, int] = {}
        for q, k in rects:
            (nq, rq), (nk, rk) = self.info(q, "q"), self.info(k, "k")
            if not (rq == 1 and rk == 1 and (nq, nk) in classes):
                classes.add((nq, nk))
                cost += self.lam
            if rq > 1:
                gq.add(q)
            if rk > 1:
                gk.add(k)
            for s in q:
                hits[s] = hits.get(s, 0) + 1
        cost += self.costs["gather_q"] * sum(self.info(q, "q")[0] for q in gq)
        cost += self.costs["gather_k"] * sum(self.info(k, "k")[0] for k in gk)
        return cost + self.costs["merge"] * sum(self.len[s] * (c - 1) for s, c in hits.items())

    def moves(self, rects: list[Rect]) -> Iterator[list[Rect]]:
        """Neighbouring exact covers: factor a shared key set, split into runs, merge equal key sets."""
        n = len(rects)
        seen: set[frozenset[int]] = set()
        for a in range(n):
            for b in range(a + 1, n):
                shared = rects[a][1] & rects[b][1]
                if not shared or shared in seen:
                    continue
                seen.add(shared)
                inv = [r for r in rects if shared <= r[1]]
                new = [r for r in rects if not shared <= r[1]] + [(frozenset().union(*(q for q, _ in inv)), shared)]
                yield new + [(q, k - shared) for q, k in inv if k - shared]
        for i, (q, k) in enumerate(rects):
            others = rects[:i] + rects[i + 1 :]
            kr, qr = segment_runs(k, self.kpos), segment_runs(q, self.qpos)
            if len(kr) > 1:
                yield others + [(q, frozenset(r)) for r in kr]
            if len(qr) > 1:
                yield others + [(frozenset(r), k) for r in qr]
        for a in range(n):
            for b in range(a + 1, n):
                if rects[a][1] == rects[b][1]:
                    rest = [r for j, r in enumerate(rects) if j not in (a, b)]
                    yield rest + [(rects[a][0] | rects[b][0], rects[a][1])]


def segment_cover(
    seg_mask: Tensor | np.ndarray,
    q_segs: Sequence[int],
    lengths: Sequence[int],
    *,
    call_overhead: float,
    costs: dict[str, float],
) -> list[Rect]:
    """Greedy exact cover of the rows ``q_segs`` of a boolean ``[S, S]`` segment mask by rectangles.

    Every allowed (query segment, key segment) pair lies in exactly one rectangle. Starts from one
    rectangle per distinct row (query segments that see the same keys) and takes the best
    cost-lowering local move (factor / split / merge) until none is left. ``costs`` weighs gathered
    query rows (``gather_q``), gathered key rows (``gather_k``) and extra merged rows (``merge``);
    ``call_overhead`` is the cost of one call, all in token-rows. See :mod:`storyreel.nn.attention`.
    """
    mask = np.asarray(seg_mask, dtype=bool)
    groups: dict[frozenset[int], set[int]] = {}
    for s in q_segs:
        groups.setdefault(frozenset(np.flatnonzero(mask[s]).tolist()), set()).add(s)
    rects: list[Rect] = [(frozenset(q), k) for k, q in groups.items()]
    cost = _CoverCost(list(lengths), q_segs, call_overhead, costs)
    best = cost(rects)
    for _ in range(4 * len(lengths) + 8):
        cands = [(cost(r), i, r) for i, r in enumerate(cost.moves(rects))]
        if not cands:
            break
        c, _, r = min(cands, key=lambda t: (t[0], t[1]))
        if c >= best - 1e-9:
            break
        best, rects = c, r
    return rects
