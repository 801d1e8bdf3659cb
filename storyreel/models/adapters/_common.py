"""Shared machinery of the diffusers backbone adapters: packing a layout into streams, restricted mask policies,
input checks, per-segment timesteps, RoPE tables from layout positions, and the adapter base class.

Scene-level attention, interleaved 3D RoPE, independent per-shot timesteps and the context-causal KV cache follow
Long Context Tuning (Guo et al. 2025); shot-restricted text attention follows Mask²DiT (Qi et al. 2025).

A stock backbone sees two streams: the *text stream* (every new TEXT segment, in layout order) and the *video
stream* (every new VIDEO/IMAGE segment, in layout order). Attention runs in an *attention order* described by a
:class:`SequenceLayout` (``ScenePacking.attn_layout``): without a KV cache that is the stream order
``[all text][all video]`` (no permutation at all; every policy here depends on shots and modalities, never on where a
segment sits), with a cache it is the full layout's order, so the cache always holds a prefix of the user's layout.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import Tensor, nn

from storyreel.models.mmdit import split_segment_latents
from storyreel.nn.attention import attention
from storyreel.nn.kvcache import KVCache
from storyreel.nn.layout import Modality, SequenceLayout, shot_timesteps
from storyreel.nn.masks import MaskPolicy, TokenMeta, dense_mask, get_policy, layer_policies, segment_mask

__all__ = [
    "Restricted",
    "SceneAdapterBase",
    "ScenePacking",
    "allowed_pairs",
    "build_packing",
    "cache_kv",
    "clear_caches",
    "masked_attention",
    "rope_cos_sin_axes",
]

_VISUAL = (Modality.VIDEO, Modality.IMAGE)
_SUPPORTED = (Modality.TEXT, Modality.VIDEO, Modality.IMAGE)


# --------------------------------------------------------------------------------------------- policies
@dataclass(frozen=True, repr=False)
class Restricted(MaskPolicy):
    """``base`` restricted to query / key modalities: ``"visual"`` (VIDEO/IMAGE), ``"text"`` (1-D) or ``"any"``.

    Wan keeps text out of self-attention (``Restricted(policy, "visual", "visual")``) and lets video read text only
    through cross-attention (``Restricted(cross_policy, "visual", "text")``); both run over one key tensor in layout
    order whose text rows hold the cross-attention keys and whose video rows hold the self-attention keys.
    """

    base: MaskPolicy
    queries: str = "any"
    keys: str = "any"

    def __post_init__(self) -> None:
        for field in ("queries", "keys"):
            if getattr(self, field) not in ("visual", "text", "any"):
                raise ValueError(f"Restricted.{field}={getattr(self, field)!r} must be 'visual', 'text' or 'any'")

    @property
    def segment_structured(self) -> bool:  # type: ignore[override]
        return self.base.segment_structured

    @property
    def name(self) -> str:
        return f"{self.base.name}[{self.queries}->{self.keys}]"

    @staticmethod
    def _select(meta: TokenMeta, which: str) -> Tensor:
        vis = meta.is_visual()
        return vis if which == "visual" else (~vis if which == "text" else vis | ~vis)

    def allowed(self, q: TokenMeta, k: TokenMeta) -> Tensor:
        return self.base.allowed(q, k) & self._select(q, self.queries) & self._select(k, self.keys)


def allowed_pairs(layout: SequenceLayout, policy: MaskPolicy, query_segments: Sequence[int] | None) -> int:
    """Number of allowed (query, key) token pairs (queries: tokens of ``query_segments``, default all)."""
    qs = list(range(layout.n_segments)) if query_segments is None else list(query_segments)
    if policy.segment_structured:
        seg = segment_mask(layout, policy).to(torch.int64)  # [S, S]
        lens = torch.tensor([s.length for s in layout.segments], dtype=torch.int64)  # [S]
        return int((lens[qs] * (seg[qs] @ lens)).sum())
    return sum(int(dense_mask(layout, policy, query_segments=[s]).sum()) for s in qs)


# --------------------------------------------------------------------------------------------- packing
@dataclass(frozen=True)
class ScenePacking:
    """Index bookkeeping for the new (non-cached) segments of one layout; built once per (layout, cache prefix).

    Local segment ids run ``0..S_new-1`` over ``new_segments``. ``to_attn`` maps attention order to stream order
    (``attn_tokens = cat(text_stream, video_stream)[to_attn]``) and ``to_stream`` back; both are ``None`` when the
    two orders coincide.
    """

    layout: SequenceLayout
    n_cached_segments: int
    new_segments: tuple[int, ...]
    text_segments: tuple[int, ...]  # full-layout ids of the new TEXT segments
    video_segments: tuple[int, ...]  # full-layout ids of the new VIDEO/IMAGE segments
    attn_layout: SequenceLayout  # the keys of every attention call, in attention order
    query_segments: tuple[int, ...] | None  # attn_layout ids of all new segments (None = every segment)
    query_video: tuple[int, ...]  # attn_layout ids of the new visual segments
    to_attn: Tensor | None  # [L_new]
    to_stream: Tensor | None  # [L_new]
    txt_seg: Tensor  # [Lt] local segment id of every text-stream token
    vid_seg: Tensor  # [Lv] local segment id of every video-stream token
    origins: tuple[int, ...]  # RoPE origin of every new segment (see segment_origins)
    txt_one: int | None  # the local segment holding every text-stream token, if there is just one
    vid_one: int | None  # same for the video stream

    @property
    def n_text(self) -> int:
        return int(self.txt_seg.numel())

    @property
    def n_video(self) -> int:
        return int(self.vid_seg.numel())

    @property
    def local_video(self) -> list[int]:
        """Local ids of the new visual segments."""
        return [self.new_segments.index(i) for i in self.video_segments]

    def to(self, device: torch.device) -> ScenePacking:
        """Index tensors on ``device``."""
        moved = dict(self.__dict__)
        for name in ("to_attn", "to_stream", "txt_seg", "vid_seg"):
            if moved[name] is not None:
                moved[name] = moved[name].to(device)
        return ScenePacking(**moved)


def segment_origins(layout: SequenceLayout) -> list[int]:
    """Per segment, the RoPE origin the adapters use (prefix-stable: it depends only on earlier segments).

    With ``c_i`` the interleaved-RoPE cursor of segment ``i`` (``layout.rope_positions()``) and ``s`` the length
    of the first segment when it is 1-D (else 0): a visual segment's tokens sit at ``c_i - s + (t, h, w)``; a text
    segment of ``n`` tokens sits at the single point ``c_i + n - s`` (where the video that follows it starts), so
    within one shot ``[text][video]`` text-to-video offsets equal those of the backbone's own single-shot run
    (unrotated text, video from 0), and a one-shot layout without a global prompt gets exactly the stock positions.
    """
    pos = layout.rope_positions()
    first = layout.segments[0]
    shift = first.length if first.modality not in _VISUAL else 0
    out = []
    for i, seg in enumerate(layout.segments):
        cursor = int(pos[layout.offsets[i], 0])
        out.append(cursor - shift if seg.modality in _VISUAL else cursor + seg.length - shift)
    return out


@functools.lru_cache(maxsize=64)
def build_packing(layout: SequenceLayout, n_cached_segments: int, use_cache: bool) -> ScenePacking:
    """Packing of the segments of ``layout`` from ``n_cached_segments`` on (see :class:`ScenePacking`).

    ``use_cache``: the pass reads or writes a KV cache (always true when segments are cached).
    """
    use_cache = use_cache or n_cached_segments > 0
    new = tuple(range(n_cached_segments, layout.n_segments))
    segs = [layout.segments[i] for i in new]
    is_vis = [s.modality in _VISUAL for s in segs]
    text_ids = tuple(i for i, v in zip(new, is_vis) if not v)
    video_ids = tuple(i for i, v in zip(new, is_vis) if v)
    lengths = torch.tensor([s.length for s in segs], dtype=torch.long)
    local = torch.repeat_interleave(torch.arange(len(segs)), lengths)  # [L_new] local segment of every token
    vis_tok = torch.repeat_interleave(torch.tensor(is_vis, dtype=torch.bool), lengths)  # [L_new]
    if use_cache:
        attn_layout = layout
        pos = torch.arange(int(lengths.sum()))
        stream_of_layout = torch.cat([pos[~vis_tok], pos[vis_tok]])  # stream position j holds layout token [j]
        to_attn = torch.argsort(stream_of_layout)  # attention (= layout) position i holds stream token [i]
        identity = bool((to_attn == pos).all())
        to_attn, to_stream = (None, None) if identity else (to_attn, stream_of_layout)
        query_segments = new if n_cached_segments else None
        query_video = video_ids
    else:
        attn_layout = SequenceLayout([layout.segments[i] for i in text_ids + video_ids])
        to_attn = to_stream = None
        query_segments = None
        query_video = tuple(range(len(text_ids), len(text_ids) + len(video_ids)))
    origins = segment_origins(layout)
    return ScenePacking(
        layout=layout,
        n_cached_segments=n_cached_segments,
        new_segments=new,
        text_segments=text_ids,
        video_segments=video_ids,
        attn_layout=attn_layout,
        query_segments=query_segments,
        query_video=query_video,
        to_attn=to_attn,
        to_stream=to_stream,
        txt_seg=local[~vis_tok],
        vid_seg=local[vis_tok],
        origins=tuple(origins[i] for i in new),
        txt_one=_single(local[~vis_tok]),
        vid_one=_single(local[vis_tok]),
    )


@functools.lru_cache(maxsize=64)
def packing_on(layout: SequenceLayout, n_cached_segments: int, use_cache: bool, device: torch.device) -> tuple[ScenePacking, Tensor]:
    """:func:`build_packing` with its index tensors on ``device``, and the new segments' shots there too (``-1`` for
    global segments), built once per (layout, prefix, device): no host-to-device copy in a sampling step."""
    pack = build_packing(layout, n_cached_segments, use_cache)
    seg_shot = layout.segment_shot[list(pack.new_segments)]
    return pack.to(device), seg_shot.to(device)


def _single(ids: Tensor) -> int | None:
    return int(ids[0]) if ids.numel() and bool((ids == ids[0]).all()) else None


#: lru-cached helpers of the adapters (cleared together by clear_caches)
_CACHES: list = []


def clear_caches() -> None:
    """Forget cached packings, RoPE tables and positional embeddings (e.g. to free GPU memory)."""
    build_packing.cache_clear()
    packing_on.cache_clear()
    for fn in _CACHES:
        fn.cache_clear()


# --------------------------------------------------------------------------------------------- numerics
def masked_attention(q: Tensor, k: Tensor, v: Tensor, plan: Any) -> Tensor:
    """``storyreel.nn.attention`` (one module-level hook, so that a benchmark can time every attention call)."""
    return attention(q, k, v, plan)


def cache_kv(cache: KVCache | None, layer: int, k: Tensor, v: Tensor, write: bool) -> tuple[Tensor, Tensor]:
    """Keys/values ``[B, H, L_cached + L_new, D]`` of ``cache`` + new tokens; ``write`` appends the new ones."""
    if cache is None:
        return k, v
    prev = cache.get(layer)
    if prev is not None and (prev[0].shape[0] != k.shape[0] or prev[0].dtype != k.dtype):
        raise ValueError(
            f"kv_cache holds batch {prev[0].shape[0]} ({prev[0].dtype}) but this forward has batch {k.shape[0]} "
            f"({k.dtype}); build the cache with the same batch size (e.g. the same CFG batching) and dtype"
        )
    k_all, v_all = cache.concat(layer, k, v)
    if write:  # stored without autograd history
        cache.append(layer, k.detach(), v.detach())
    return k_all, v_all


def rope_cos_sin_axes(positions: Tensor, axes_dims: Sequence[int], theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Rotation tables for (t, h, w) positions with the backbone's own per-axis split.

    Args:
        positions: ``[N, 3]`` float positions (integers or the CogVideoX crop grid).
        axes_dims: even rotary dims per axis, summing to ``head_dim`` (Wan: ``(D-4⌊D/6⌋, 2⌊D/6⌋, 2⌊D/6⌋)``;
            CogVideoX: ``(D/4, 3D/8, 3D/8)``).
    Returns:
        ``(cos, sin)`` float32 ``[N, head_dim // 2]``; column ``i`` rotates channel pair ``(2i, 2i+1)`` (the
        convention of :func:`storyreel.nn.rope.apply_rope`, of Wan's processor and of CogVideoX's).
    """
    cos, sin = [], []
    pos = positions.to(torch.float64)
    for axis, dim in enumerate(axes_dims):
        c, s = get_1d_rotary_pos_embed(dim, pos[:, axis], theta, use_real=True, freqs_dtype=torch.float64)
        cos.append(c[:, 0::2])  # [N, dim] (pairs repeated) -> [N, dim/2]
        sin.append(s[:, 0::2])
    return torch.cat(cos, dim=1), torch.cat(sin, dim=1)


# --------------------------------------------------------------------------------------------- base class
class SceneAdapterBase(nn.Module):
    """What both adapters share: config-like attributes, policies, input checks and FLOP counting.

    Subclasses set ``backbone``, ``prediction`` and implement ``forward`` and ``_flops_terms``.
    """

    backbone: str = ""
    prediction: str = ""

    def __init__(self, transformer: nn.Module, *, attn_policy: str | Sequence[str] | MaskPolicy = "mask2dit") -> None:
        super().__init__()
        self.transformer = transformer
        self.attn_policy = attn_policy
        self._policies(None)  # validate the default policy now

    # ------------------------------------------------------------------ config-like attributes
    @property
    def hidden(self) -> int:
        """Model width: heads × head dim."""
        return int(self.transformer.config.num_attention_heads * self.transformer.config.attention_head_dim)

    @property
    def num_layers(self) -> int:
        return int(self.transformer.config.num_layers)

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the transformer (diffusers' view: modules kept in float32 do not count)."""
        return getattr(self.transformer, "dtype", None) or next(self.transformer.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def gradient_checkpointing(self) -> bool:
        """Checkpoint every block in training forwards without a KV cache (maps to the stock model's flag)."""
        return bool(getattr(self.transformer, "gradient_checkpointing", False))

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.transformer.gradient_checkpointing = bool(value)

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of parameters of the wrapped transformer (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.transformer.parameters() if p.requires_grad or not trainable_only)

    def _policies(self, policy: str | Sequence[str] | MaskPolicy | None) -> list[MaskPolicy]:
        spec = self.attn_policy if policy is None else policy
        try:
            if isinstance(spec, MaskPolicy):
                return [spec] * self.num_layers
            return layer_policies(spec if isinstance(spec, str) else list(spec), self.num_layers)
        except (ValueError, TypeError) as err:
            raise ValueError(f"policy={spec!r} is not usable for a {self.num_layers}-layer {self.backbone} model: {err}") from err

    # ------------------------------------------------------------------ inputs
    def _latent_frames(self, layout: SequenceLayout, seg: int) -> int:
        """Latent frames of a visual segment: token frames × temporal patch (an image with ``pt > 1`` needs ``pt``)."""
        return layout.segments[seg].grid[0] * self.patch_size[0]

    def _check_latent(self, lat: Tensor, layout: SequenceLayout, seg: int, what: str) -> None:
        if not isinstance(lat, Tensor) or lat.dim() != 5 or lat.shape[1] != self.in_channels:
            shape = tuple(lat.shape) if isinstance(lat, Tensor) else type(lat).__name__
            raise ValueError(f"{what} has shape {shape} but the {self.backbone} adapter takes latents [B, C={self.in_channels}, T, H, W]")
        s, (pt, ph, pw) = layout.segments[seg], self.patch_size
        t, h, w = lat.shape[2:]
        if t % pt or h % ph or w % pw:
            raise ValueError(
                f"{what} latent grid {(t, h, w)} is not divisible by the patch {self.patch_size}; pad the latent "
                f"(e.g. frames to a multiple of {pt}) or crop it"
            )
        if (t // pt, h // ph, w // pw) != tuple(s.grid):
            raise ValueError(
                f"{what} latent grid {(t, h, w)} gives tokens {(t // pt, h // ph, w // pw)} with patch {self.patch_size}, "
                f"but layout segment {seg} (shot {s.shot}) has token grid {tuple(s.grid)}; build the layout from the latent shapes"
            )

    def _split_x(self, x: Any, layout: SequenceLayout, vis: tuple[int, ...]) -> list[Tensor]:
        return split_segment_latents(x, layout, vis, frames_of=lambda i: self._latent_frames(layout, i),
                                     check=lambda lat, seg, what: self._check_latent(lat, layout, seg, what))

    def _prepare(
        self, x: Any, t: Any, context: Tensor | None, layout: SequenceLayout, kv_cache: KVCache | None, cache_write: bool
    ) -> tuple[ScenePacking, list[Tensor], Tensor | None, Tensor, int]:
        """Validate inputs → (packing, per-segment latents, context, per-new-segment timesteps [B, S_new], batch)."""
        if not isinstance(layout, SequenceLayout):
            raise ValueError(f"layout must be a SequenceLayout, got {type(layout).__name__}")
        if cache_write and kv_cache is None:
            raise ValueError("cache_write=True needs a kv_cache to write to; pass kv_cache=KVCache()")
        bad = sorted({s.modality.name for s in layout.segments if s.modality not in _SUPPORTED})
        if bad:
            raise ValueError(
                f"the {self.backbone} adapter has no stream for {bad} segments (only TEXT, VIDEO and IMAGE); "
                "use MultiShotMMDiT for layout/semantic tokens"
            )
        n_cached = kv_cache.prefix_of(layout) if kv_cache is not None else 0
        use_cache = kv_cache is not None and (n_cached > 0 or cache_write)
        pack = build_packing(layout, n_cached, use_cache)
        if pack.video_segments:
            lat = self._split_x(x, layout, pack.video_segments)
        elif x is None or (isinstance(x, (list, tuple)) and not x) or (isinstance(x, Tensor) and x.dim() == 5 and x.shape[2] == 0):
            lat = []
        else:
            raise ValueError("x holds latents but the layout's new segments hold no video/image; pass x=None")
        batch = {lat[0].shape[0]} if lat else set()
        n_txt = pack.n_text
        if n_txt:
            if not isinstance(context, Tensor) or context.dim() != 3:
                raise ValueError(
                    f"context must be [B, {n_txt}, {self.text_dim}] (states of the layout's new text segments), got "
                    f"{None if not isinstance(context, Tensor) else tuple(context.shape)}"
                )
            if context.shape[1] != n_txt:
                lens = [layout.segments[i].length for i in pack.text_segments]
                raise ValueError(
                    f"context has {context.shape[1]} tokens but the layout's new text segments hold {n_txt} (per segment "
                    f"{lens}); encode every prompt to its segment's length"
                )
            if context.shape[2] != self.text_dim:
                raise ValueError(
                    f"context width {context.shape[2]} != the backbone's text_dim {self.text_dim}; use the text encoder "
                    "the backbone was trained with"
                )
            batch.add(context.shape[0])
        elif isinstance(context, Tensor) and context.numel():
            raise ValueError(f"context has {context.shape[1]} tokens but the layout's new segments hold no text; pass None")
        if not batch:
            raise ValueError("nothing to compute: pass x (video latents) or context (text states) for the new segments")
        if len(batch) > 1 or any(lt.shape[0] != lat[0].shape[0] for lt in lat):
            raise ValueError(f"batch sizes differ between x and context: {sorted(batch)}")
        b = batch.pop()
        device = lat[0].device if lat else context.device  # type: ignore[union-attr]
        t = torch.as_tensor(t, dtype=torch.float32, device=device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.dim() == 1 and t.shape[0] == b:
            t = t[:, None].expand(b, layout.n_shots)  # [B] -> [B, n_shots]
        if t.shape != (b, layout.n_shots):
            raise ValueError(
                f"t has shape {tuple(t.shape)} but batch {b} with {layout.n_shots} shot(s) needs [B]={b} or "
                f"[B, n_shots]=({b}, {layout.n_shots})"
            )
        if layout.n_shots == 0:
            t = t.new_zeros(b, 1)  # only global segments: they take t = 0 anyway
        pack, seg_shot = packing_on(layout, pack.n_cached_segments, use_cache, device)
        seg_t = shot_timesteps(t, seg_shot)  # [B, S_new]; global segments at t = 0
        return pack, lat, context, seg_t, b

    def _plans(self, pack: ScenePacking, policies: list[MaskPolicy], backend: str, device: torch.device, *, queries: str) -> list:
        """One plan per layer (shared between layers with the same policy)."""
        from storyreel.nn.attention import plan_attention

        qs = pack.query_video if queries == "video" else pack.query_segments
        plans: dict[MaskPolicy, Any] = {}
        out = []
        for pol in policies:
            if pol not in plans:
                plans[pol] = plan_attention(pack.attn_layout, pol, backend=backend, device=device, query_segments=qs)
            out.append(plans[pol])
        return out

    # ------------------------------------------------------------------ costs
    def flops_breakdown(
        self, layout: SequenceLayout, *, policy: str | Sequence[str] | MaskPolicy | None = None,
        n_cached_segments: int = 0, batch: int = 1,
    ) -> dict[str, int]:
        """Matmul FLOPs (2 per multiply-add) of one forward over the segments from ``n_cached_segments`` on.

        Returns ``{"linear": ..., "attention": ...}``: every linear/conv layer, and QKᵀ + AV over *allowed*
        (query, key) pairs only (self- and cross-attention). Norms, RoPE, softmax and elementwise work are not counted.
        """
        pack = build_packing(layout, n_cached_segments, n_cached_segments > 0)
        linear, attn = self._flops_terms(pack, self._policies(policy))
        return {"linear": int(linear * batch), "attention": int(attn * batch)}

    def flops_per_forward(
        self, layout: SequenceLayout, *, policy: str | Sequence[str] | MaskPolicy | None = None,
        n_cached_segments: int = 0, batch: int = 1,
    ) -> int:
        """Total of :meth:`flops_breakdown`."""
        return sum(self.flops_breakdown(layout, policy=policy, n_cached_segments=n_cached_segments, batch=batch).values())


def to_policy(spec: str | MaskPolicy) -> MaskPolicy:
    """A policy from a spec, with an error naming the argument."""
    try:
        return get_policy(spec)
    except ValueError as err:
        raise ValueError(f"cross_policy={spec!r}: {err}") from err
