"""Context parallelism for long multi-shot sequences: video tokens sharded across ranks, keys/values all-gathered.

Scene-level attention over every shot at once (LCT, Guo et al. 2025; Mask²DiT masks, Qi et al. 2025) makes one
forward's sequence grow with the shot count. Here each rank of a ``torch.distributed`` group holds a contiguous run
of the video tokens (cut at latent-frame boundaries, balanced by tokens) and runs every token-wise layer (patch
embedding, adaLN, projections, MLPs, output head) on its run only. In each attention layer the ranks all-gather
the video keys/values, so every rank holds every key and evaluates *its own rows* of the mask through storyreel's
attention backends (dense / grouped / flex) with its tokens as the plan's query segments. Any segment-structured
mask policy therefore works unchanged (full, mask2dit v1-v5, block_diagonal, causal_shots, per-layer hybrids);
the output equals the single-device forward. Text is small (one prompt per shot) and is replicated: Wan's
cross-attention keys are computed on every rank; CogVideoX's text tokens join every rank's joint attention.

Limits (see ``docs/backbones.md``): memory for keys/values is not sharded (each rank holds all of them for one
layer at a time), and the all-gather is not overlapped with compute. Ring attention (passing K/V blocks around the
ring with an online softmax) would shard that memory and overlap communication, but it visits key blocks in a
fixed order and suits full or causal masks; arbitrary shot masks would need per-block skipping and load balancing,
which is not implemented. No KV cache (causal mode) and inference only (the all-gather carries no gradient).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from einops import rearrange
from torch import Tensor

from storyreel.nn.attention import plan_attention
from storyreel.nn.layout import Segment, SequenceLayout
from storyreel.nn.masks import MaskPolicy, segment_mask

__all__ = ["ContextShards", "all_gather_tokens", "context_parallel_forward", "plan_shards"]


@dataclass(frozen=True)
class ContextShards:
    """How the new video tokens of a layout are split over ``world`` ranks.

    ``stream``: the layout's segments in stream order ``[text...][video...]``; ``attn_layout``: the same with video
    segments cut at rank boundaries (the keys of every attention call); ``parents[j]``: the ``stream`` segment of
    ``attn_layout`` segment ``j``; ``bounds[r]``: rank ``r``'s video-token range ``[start, end)``;
    ``rank_segments[r]``: its ``attn_layout`` video segments (its queries).
    """

    layout: SequenceLayout
    stream: SequenceLayout
    attn_layout: SequenceLayout
    parents: tuple[int, ...]
    bounds: tuple[tuple[int, int], ...]
    rank_segments: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        """Video tokens per rank."""
        return [e - s for s, e in self.bounds]

    def check_policy(self, policy: MaskPolicy) -> None:
        """Raise ``ValueError`` unless cutting the video segments leaves ``policy``'s mask unchanged."""
        if not policy.segment_structured:
            raise ValueError(f"context parallelism needs a segment-structured mask policy; {policy.name!r} is token-level")
        refined = segment_mask(self.attn_layout, policy)  # [S', S']
        idx = torch.tensor(self.parents)
        if not torch.equal(refined, segment_mask(self.stream, policy)[idx][:, idx]):
            raise ValueError(f"policy {policy.name!r} depends on segment boundaries, so its mask changes when shots are "
                             "split across ranks; use a shot-level policy (full, mask2dit, block_diagonal, causal_shots)")


@functools.lru_cache(maxsize=32)
def plan_shards(layout: SequenceLayout, world: int) -> ContextShards:
    """Split the video tokens of ``layout`` (stream order) into ``world`` contiguous runs of whole latent frames.

    Rank ``r`` takes the frames whose first token falls in ``[r·N/world, (r+1)·N/world)`` (``N`` video tokens),
    so runs differ by at most one frame. Raises ``ValueError`` when there are fewer frames than ranks.
    """
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world={world!r} must be an int >= 1 (the number of ranks)")
    text = [s for s in layout.segments if not s.is_visual]
    video = [s for s in layout.segments if s.is_visual]
    if not video:
        raise ValueError("the layout has no video segments to split across ranks")
    stream = SequenceLayout(text + video)
    units = [(i, t, s.grid[1] * s.grid[2]) for i, s in enumerate(video) for t in range(s.grid[0])]  # (segment, frame, tokens)
    if len(units) < world:
        raise ValueError(f"{len(units)} latent frame(s) cannot be split over {world} ranks; use at most {len(units)} ranks")
    total = sum(u[2] for u in units)
    owner, start = [], 0
    for _, _, n in units:  # rank of each frame: where its first token falls
        owner.append(min(world - 1, start * world // total))
        start += n
    for r in range(world):  # every rank gets at least one frame (only matters for very uneven frame sizes)
        if r not in owner:
            raise ValueError(f"rank {r} would get no video tokens with frames of sizes {[u[2] for u in units]}; use fewer ranks")
    bounds = [[total, 0] for _ in range(world)]
    off = 0
    for (_, _, n), r in zip(units, owner):  # owners never decrease along the stream: each run is contiguous
        bounds[r] = [min(bounds[r][0], off), off + n]
        off += n
    pieces: list[Segment] = []
    parents: list[int] = []
    rank_segs: list[list[int]] = [[] for _ in range(world)]
    k = 0
    for i, seg in enumerate(video):  # cut each video segment where the owning rank changes
        j = 0
        while j < seg.grid[0]:
            r, run = owner[k + j], 1
            while j + run < seg.grid[0] and owner[k + j + run] == r:
                run += 1
            rank_segs[r].append(len(text) + len(pieces))
            pieces.append(Segment(seg.modality, seg.shot, (run, seg.grid[1], seg.grid[2])))
            parents.append(len(text) + i)
            j += run
        k += seg.grid[0]
    return ContextShards(
        layout=layout, stream=stream, attn_layout=SequenceLayout(text + pieces),
        parents=tuple(range(len(text))) + tuple(parents), bounds=tuple((a, b) for a, b in bounds),
        rank_segments=tuple(tuple(r) for r in rank_segs),
    )


def all_gather_tokens(x: Tensor, sizes: Sequence[int], *, dim: int, group: Any = None) -> Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in rank order (rank ``r`` holds ``sizes[r]`` tokens there).

    ``x`` is padded to ``max(sizes)`` for ``all_gather`` and trimmed back; no autograd (inference only).
    """
    world = len(sizes)
    if world == 1:
        return x
    dim = dim % x.ndim
    top = max(sizes)
    if x.shape[dim] < top:
        pad = list(x.shape)
        pad[dim] = top - x.shape[dim]
        x = torch.cat([x, x.new_zeros(pad)], dim=dim)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)


def _group_info(group: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("context parallelism needs torch.distributed: launch with torchrun (or init_process_group)")
    return dist.get_rank(group), dist.get_world_size(group)


def _embed_run(embed: Any, grids: list[tuple[int, int, int]], start: int, end: int) -> Tensor:
    """Tokens ``[B, end - start, dim]`` of the video stream's run ``[start, end)`` (whole frames):
    ``embed(j, f0, f1)`` gives the tokens ``[B, (f1 - f0)·h·w, dim]`` of frames ``f0:f1`` of video segment ``j``."""
    out, off = [], 0
    for j, (gt, gh, gw) in enumerate(grids):
        n, hw = gt * gh * gw, gh * gw
        a, b = max(start, off), min(end, off + n)
        if a < b:
            out.append(embed(j, (a - off) // hw, (b - off) // hw))
        off += n
    return torch.cat(out, dim=1)


def _unpatchify(h: Tensor, layout: SequenceLayout, video_segments: Sequence[int], patch: tuple[int, int, int],
                order: str) -> list[Tensor]:
    """Head output ``[B, Lv, P]`` → per segment ``[B, C, T, H, W]`` (``order``: how P packs (c, pt, ph, pw))."""
    pt, ph, pw = patch
    outs, start = [], 0
    for seg_id in video_segments:
        gt, gh, gw = layout.segments[seg_id].grid
        n = gt * gh * gw
        outs.append(rearrange(h[:, start : start + n], f"b (t h w) ({order}) -> b c (t pt) (h ph) (w pw)",
                              t=gt, h=gh, w=gw, pt=pt, ph=ph, pw=pw))
        start += n
    return outs


def context_parallel_forward(
    adapter: Any, x: Tensor | Sequence[Tensor], t: Tensor, context: Tensor, layout: SequenceLayout, *,
    policy: Any = None, backend: str = "auto", group: Any = None,
) -> Tensor | list[Tensor]:
    """``adapter(x, t, context, layout, policy=, backend=)`` computed by every rank of ``group`` together.

    Every rank passes the same full inputs (``x`` ``[B, C, T_total, H, W]`` or a per-segment list, ``t`` per shot,
    ``context`` the text states of the layout's text segments) and gets the full output; each computes the
    token-wise layers of its share of the video tokens. Supports :class:`WanSceneAdapter` and
    :class:`CogVideoXSceneAdapter`, without a KV cache.
    """
    rank, world = _group_info(group)
    kind = getattr(adapter, "backbone", None)
    if kind not in ("wan", "cogvideox"):
        raise ValueError(f"context parallelism drives the Wan / CogVideoX scene adapters, got {type(adapter).__name__}")
    pack, lat, context, seg_t, b = adapter._prepare(x, t, context, layout, None, False)
    shards = plan_shards(layout, world)
    pols = adapter._policies(policy)
    with torch.no_grad():
        run = _wan_run if kind == "wan" else _cog_run
        outs = run(adapter, pack, lat, context, seg_t, b, pols, backend, shards, rank, group)
    outs = [o.to(z.dtype) for o, z in zip(outs, lat)]
    return outs if not isinstance(x, Tensor) else torch.cat(outs, dim=2)


def _plans(shards: ContextShards, policies: list[MaskPolicy], rank: int, backend: str, device: torch.device,
           queries: tuple[int, ...]) -> list:
    cache: dict[MaskPolicy, Any] = {}
    for pol in policies:
        if pol not in cache:
            shards.check_policy(pol)
            cache[pol] = plan_attention(shards.attn_layout, pol, backend=backend, device=device, query_segments=queries)
    return [cache[p] for p in policies]


def _wan_run(ad: Any, pack: Any, lat: list[Tensor], context: Tensor, seg_t: Tensor, b: int, pols: list[MaskPolicy],
             backend: str, shards: ContextShards, rank: int, group: Any) -> list[Tensor]:
    from storyreel.models.adapters._common import Restricted
    from storyreel.models.adapters.wan import _rope_tables, _WanLayerCall, _WanPass

    class _GatherCall(_WanLayerCall):
        def keys(self, k_vid: Tensor, v_vid: Tensor) -> tuple[Tensor, Tensor]:
            kt, vt = self.text_kv(k_vid.shape[1])  # [B, H, Lt, D], replicated on every rank
            k_all = all_gather_tokens(k_vid, shards.sizes, dim=2, group=group)  # [B, H, Lv, D]
            v_all = all_gather_tokens(v_vid, shards.sizes, dim=2, group=group)
            self.k_all, self.v_all = torch.cat([kt, k_all], dim=2), torch.cat([vt, v_all], dim=2)  # stream order
            return self.k_all, self.v_all

    tr = ad.transformer
    device, dtype = lat[0].device, tr.patch_embedding.weight.dtype
    pack = pack.to(device)
    ad._check_cross(pack)
    start, end = shards.bounds[rank]
    txt = context.to(dtype)
    grids = [tuple(pack.layout.segments[i].grid) for i in pack.video_segments]
    pt = ad.patch_size[0]

    def embed(j: int, f0: int, f1: int) -> Tensor:  # the stock Conv3d patch embedding of latent frames f0·pt:f1·pt
        return rearrange(tr.patch_embedding(lat[j][:, :, f0 * pt : f1 * pt].to(dtype)), "b d t h w -> b (t h w) d")

    vid = _embed_run(embed, grids, start, end).contiguous()  # [B, L_r, dim]
    vt = seg_t[:, pack.local_video]  # [B, S_vid]
    if bool((vt == vt[:, :1]).all()):
        temb, proj, ctx, _ = tr.condition_embedder(vt[:, 0], txt, None)
        proj = proj.unflatten(1, (6, -1))  # [B, 6, dim]
    else:
        temb, proj, ctx, _ = tr.condition_embedder(vt.flatten(), txt, None, timestep_seq_len=vt.shape[1])
        tok = torch.searchsorted(torch.tensor(pack.local_video, device=device), pack.vid_seg)[start:end]  # [L_r]
        temb, proj = temb.index_select(1, tok), proj.index_select(1, tok).unflatten(2, (6, -1))  # [B, L_r, (6,) dim]
    cos, sin = _rope_tables(pack.layout, 0, ad.hidden // tr.config.num_attention_heads, device)
    queries = shards.rank_segments[rank]
    state = _WanPass(pack, ctx, cos[start:end], sin[start:end],
                     _plans(shards, [Restricted(p, "visual", "visual") for p in pols], rank, backend, device, queries),
                     _plans(shards, [Restricted(ad.cross_policy, "visual", "text")] * len(pols), rank, backend, device, queries),
                     None, False)
    for i, block in enumerate(tr.blocks):
        call = _GatherCall(state, i, block.attn2)
        vid = block(vid, call, proj, call)
    table = tr.scale_shift_table.to(device)  # [1, 2, dim]
    if temb.ndim == 2:
        shift, scale = (table + temb[:, None]).chunk(2, dim=1)  # [B, 1, dim] each
    else:
        shift, scale = (table[:, None] + temb[:, :, None]).unbind(2)  # [B, L_r, dim] each
    h = tr.proj_out((tr.norm_out(vid.float()) * (1 + scale) + shift).type_as(vid))  # [B, L_r, P]
    h = all_gather_tokens(h, shards.sizes, dim=1, group=group)  # [B, Lv, P]
    return _unpatchify(h, pack.layout, pack.video_segments, ad.patch_size, "pt ph pw c")


def _cog_run(ad: Any, pack: Any, lat: list[Tensor], context: Tensor, seg_t: Tensor, b: int, pols: list[MaskPolicy],
             backend: str, shards: ContextShards, rank: int, group: Any) -> list[Tensor]:
    from storyreel.models.adapters import _common
    from storyreel.models.adapters.cogvideox import SegmentTimestepEmbedding, _CogLayerCall, _CogPass, _rope_tables

    tr, cfg = ad.transformer, ad.transformer.config
    device, dtype = lat[0].device, tr.patch_embed.text_proj.weight.dtype
    pack = pack.to(device)
    start, end = shards.bounds[rank]
    lt = pack.n_text
    txt = tr.embedding_dropout(tr.patch_embed.text_proj(context.to(dtype)))  # [B, Lt, dim], replicated
    grids = [tuple(pack.layout.segments[i].grid) for i in pack.video_segments]

    def embed(j: int, f0: int, f1: int) -> Tensor:  # the whole segment (its positional table), then the run's frames
        hw = grids[j][1] * grids[j][2]
        return ad._embed_video(lat[j], grids[j], dtype)[:, f0 * hw : f1 * hw]

    vid = tr.embedding_dropout(_embed_run(embed, grids, start, end))  # [B, L_r, dim]
    uniform = bool((seg_t == seg_t[:, :1]).all())
    emb = tr.time_embedding(tr.time_proj(seg_t[:, 0] if uniform else seg_t.flatten()).to(dtype), None)
    if tr.ofs_embedding is not None:
        emb = emb + tr.ofs_embedding(tr.ofs_proj(torch.full((1,), ad.ofs, device=device)).to(dtype))
    temb: Any = emb
    if not uniform:  # per-segment modulation spread over this rank's video tokens only
        local = pack.vid_seg[start:end]
        one = int(local[0]) if bool((local == local[0]).all()) else None
        temb = SegmentTimestepEmbedding(emb.unflatten(0, (b, -1)), dataclasses.replace(pack, vid_seg=local, vid_one=one))
    cos = sin = None
    if cfg.use_rotary_positional_embeddings:
        base = None if cfg.patch_size_t is not None else (cfg.sample_height // cfg.patch_size, cfg.sample_width // cfg.patch_size)
        cos_all, sin_all = _rope_tables(pack.layout, 0, cfg.attention_head_dim, base, device)  # [Lt + Lv, D/2]
        cos = torch.cat([cos_all[:lt], cos_all[lt + start : lt + end]])
        sin = torch.cat([sin_all[:lt], sin_all[lt + start : lt + end]])
    n_text_segs = len(pack.text_segments)
    queries = tuple(range(n_text_segs)) + shards.rank_segments[rank]
    plans = _plans(shards, pols, rank, backend, device, queries)
    ours = {id(p) for p in plans}
    inner = _common.masked_attention

    def gathered(q: Tensor, k: Tensor, v: Tensor, plan: Any) -> Tensor:
        if id(plan) not in ours:
            return inner(q, k, v, plan)
        kv = [torch.cat([z[:, :, :lt], all_gather_tokens(z[:, :, lt:], shards.sizes, dim=2, group=group)], dim=2)
              for z in (k, v)]  # [B, H, Lt + Lv, D]: text (replicated) + every rank's video
        return inner(q, kv[0], kv[1], plan)

    state = _CogPass(pack, cos, sin, plans, None, False)
    _common.masked_attention = gathered  # the adapters' attention hook, for this forward only
    try:
        for i, block in enumerate(tr.transformer_blocks):
            vid, txt = block(hidden_states=vid, encoder_hidden_states=txt, temb=temb, image_rotary_emb=_CogLayerCall(state, i))
    finally:
        _common.masked_attention = inner
    h = tr.proj_out(tr.norm_out(tr.norm_final(vid), temb=temb))  # [B, L_r, P]
    h = all_gather_tokens(h, shards.sizes, dim=1, group=group)
    return _unpatchify(h, pack.layout, pack.video_segments, ad.patch_size, "c pt ph pw")
