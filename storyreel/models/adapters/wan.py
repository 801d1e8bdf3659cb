"""Multi-shot adapter for diffusers' stock ``WanTransformer3DModel`` (Wan 2.1 / 2.2 text-to-video).

Scene-level self-attention across shots, interleaved per-shot 3D RoPE, independent per-shot timesteps and the
context-causal KV cache follow Long Context Tuning (Guo et al. 2025); cross-attention restricted to each shot's own
prompt (+ the global prompt) follows Mask²DiT (Qi et al. 2025). The Wan architecture is Wan Team (2025), "Wan: Open
and Advanced Large-Scale Video Generative Models".

How the stock model is driven (its weights and block code stay untouched):

* the two attention processors of every block are swapped for :class:`WanSceneSelfProcessor` /
  :class:`WanSceneCrossProcessor`; called with ordinary tensors they hand over to the processor they replaced, so
  ``adapter.transformer(...)`` still behaves exactly like the stock model;
* the stock blocks are called with a per-layer call object in the places of ``rotary_emb`` and
  ``encoder_hidden_states``; the processors read the layout's RoPE tables, attention plans and KV cache from it;
* per-shot timesteps use the stock per-token timestep path (Wan 2.2's ``timestep`` of shape ``[B, seq]``): the
  condition embedder runs once per new video segment and its output is spread over that segment's tokens; when
  every new video token has the same timestep the plain per-sample path runs;
* RoPE: Wan's positions module is bypassed; (t, h, w) positions come from ``layout.rope_positions()`` (see
  :func:`~storyreel.models.adapters._common.segment_origins`), with Wan's own per-axis split and frequencies.

One key/value tensor per layer, in layout order, holds the cross-attention keys of text tokens and the
self-attention keys of video tokens. Self-attention runs ``Restricted(policy, visual -> visual)`` and
cross-attention ``Restricted(cross_policy, visual -> text)`` over it, both through storyreel's attention backends;
the KV cache stores exactly that tensor, so cached prompts (e.g. a global prompt) stay visible to later shots.

Timesteps are Wan's own flow-matching convention as diffusers uses it: ``t = σ·1000`` in [0, 1000], 1000 = noise;
the model predicts the flow velocity ``ε - x0``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import WanTransformer3DModel
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from storyreel.models.adapters import _common
from storyreel.models.adapters._common import (
    Restricted,
    SceneAdapterBase,
    ScenePacking,
    allowed_pairs,
    cache_kv,
    rope_cos_sin_axes,
    to_policy,
)
from storyreel.nn.kvcache import KVCache
from storyreel.nn.layout import SequenceLayout
from storyreel.nn.masks import MaskPolicy, segment_mask
from storyreel.nn.rope import apply_rope

__all__ = ["WAN_TEXT_LEN", "WanSceneAdapter", "WanSceneCrossProcessor", "WanSceneSelfProcessor"]

#: the text length diffusers' Wan pipelines encode every prompt to (UMT5, zero-padded)
WAN_TEXT_LEN = 512


def _heads(x: Tensor, heads: int) -> Tensor:
    return rearrange(x, "b l (h d) -> b h l d", h=heads)


def _wan_axes_dims(head_dim: int) -> tuple[int, int, int]:
    hw = 2 * (head_dim // 6)  # Wan's split: h and w get 2·⌊D/6⌋ each, time the rest
    return head_dim - 2 * hw, hw, hw


@dataclass
class _WanPass:
    """Everything the processors need for one forward (shared by all layers)."""

    pack: ScenePacking
    ctx: Tensor  # [B, Lt, dim] embedded new text
    cos: Tensor  # [Lv, head_dim/2]
    sin: Tensor
    self_plans: list
    cross_plans: list
    cache: KVCache | None
    cache_write: bool


class _WanLayerCall:
    """Per-layer call object passed to a stock block in the places of ``rotary_emb`` and ``encoder_hidden_states``."""

    def __init__(self, state: _WanPass, layer: int, cross: nn.Module) -> None:
        self.state, self.layer, self.cross = state, layer, cross
        self.k_all: Tensor | None = None
        self.v_all: Tensor | None = None

    def text_kv(self, heads: int) -> tuple[Tensor, Tensor]:
        """Cross-attention keys/values ``[B, H, Lt, D]`` of the new text tokens (this layer's ``attn2``)."""
        attn, ctx = self.cross, self.state.ctx
        if getattr(attn, "fused_projections", False):
            k, v = attn.to_kv(ctx).chunk(2, dim=-1)
        else:
            k, v = attn.to_k(ctx), attn.to_v(ctx)
        return _heads(attn.norm_k(k), heads), _heads(v, heads)

    def keys(self, k_vid: Tensor, v_vid: Tensor) -> tuple[Tensor, Tensor]:
        """All keys/values ``[B, H, L_keys, D]`` in attention order: cache + new text (cross) + new video (self)."""
        st = self.state
        kt, vt = self.text_kv(k_vid.shape[1])
        k_new, v_new = torch.cat([kt, k_vid], dim=2), torch.cat([vt, v_vid], dim=2)  # [B, H, Lt + Lv, D] stream order
        if st.pack.to_attn is not None:
            k_new, v_new = k_new.index_select(2, st.pack.to_attn), v_new.index_select(2, st.pack.to_attn)
        self.k_all, self.v_all = cache_kv(st.cache, self.layer, k_new, v_new, st.cache_write)
        return self.k_all, self.v_all


class WanSceneSelfProcessor:
    """Self-attention of a Wan block over the multi-shot layout (falls back to the replaced processor)."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Tensor | None = None, rotary_emb: Any = None) -> Tensor:
        if not isinstance(rotary_emb, _WanLayerCall):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        call, st = rotary_emb, rotary_emb.state
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        h = attn.heads
        q, k, v = _heads(attn.norm_q(q), h), _heads(attn.norm_k(k), h), _heads(v, h)  # [B, H, Lv, D]
        q, k = apply_rope(q, st.cos, st.sin), apply_rope(k, st.cos, st.sin)
        k_all, v_all = call.keys(k, v)
        o = _common.masked_attention(q, k_all, v_all, st.self_plans[call.layer])  # [B, H, Lv, D]
        o = rearrange(o, "b h l d -> b l (h d)").type_as(q)
        return attn.to_out[1](attn.to_out[0](o))


class WanSceneCrossProcessor:
    """Cross-attention of a Wan block: each shot's video reads the text its cross policy allows."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Tensor | None = None, rotary_emb: Any = None) -> Tensor:
        if not isinstance(encoder_hidden_states, _WanLayerCall):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        call = encoder_hidden_states
        if call.k_all is None:
            raise RuntimeError("the Wan cross-attention ran before its block's self-attention; the block order changed")
        q = _heads(attn.norm_q(attn.to_q(hidden_states)), attn.heads)  # [B, H, Lv, D]
        o = _common.masked_attention(q, call.k_all, call.v_all, call.state.cross_plans[call.layer])
        o = rearrange(o, "b h l d -> b l (h d)").type_as(q)
        return attn.to_out[1](attn.to_out[0](o))


@functools.lru_cache(maxsize=8)
def _rope_tables(layout: SequenceLayout, n_cached: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    from storyreel.models.adapters._common import build_packing

    pack = build_packing(layout, n_cached, False)
    parts = []
    for seg_id, origin in zip(pack.new_segments, pack.origins):
        seg = layout.segments[seg_id]
        if seg.is_visual:
            coords = layout.token_grid[layout.segment_slice(seg_id)]  # [n, 3] (t, h, w) inside the segment
            parts.append(coords.to(torch.float64) + origin)
    pos = torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.float64)
    cos, sin = rope_cos_sin_axes(pos, _wan_axes_dims(head_dim))
    return cos.to(device), sin.to(device)


_common._CACHES.append(_rope_tables)


class WanSceneAdapter(SceneAdapterBase):
    """Drive a stock ``WanTransformer3DModel`` with storyreel layouts (see the module docstring).

    Args:
        transformer: a diffusers ``WanTransformer3DModel`` (text-to-video; image-conditioned variants with an image
            embedder are refused).
        attn_policy: default self-attention mask policy (name, per-layer names, ``"hybrid:..."`` spec or policy).
        cross_policy: which text each video token may read in cross-attention; ``"block_diagonal"`` (default) = its
            own shot's prompt + global prompts (Mask²DiT), ``"full"`` = every prompt, ``"causal_shots"`` = prompts of
            shots <= its own.

    ``forward(x, t, context, layout, *, policy, backend, kv_cache, cache_write)`` has the semantics of
    ``MultiShotMMDiT.forward``; ``t`` is Wan's timestep (σ·1000, 1000 = noise), the output is the flow velocity.
    """

    backbone = "wan"
    prediction = "flow"

    def __init__(self, transformer: nn.Module, *, attn_policy: str | Sequence[str] | MaskPolicy = "mask2dit",
                 cross_policy: str | MaskPolicy = "block_diagonal") -> None:
        if not isinstance(transformer, WanTransformer3DModel):
            raise ValueError(f"WanSceneAdapter wraps a diffusers WanTransformer3DModel, got {type(transformer).__name__}")
        cfg = transformer.config
        if cfg.image_dim is not None or cfg.added_kv_proj_dim is not None:
            raise ValueError(
                f"this Wan transformer has an image branch (image_dim={cfg.image_dim}, added_kv_proj_dim="
                f"{cfg.added_kv_proj_dim}); the scene adapter drives text-to-video Wan models only — load a T2V checkpoint"
            )
        super().__init__(transformer, attn_policy=attn_policy)
        self.cross_policy = to_policy(cross_policy)
        self._install_processors()

    # ------------------------------------------------------------------ config-like attributes
    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(p) for p in self.transformer.config.patch_size)  # type: ignore[return-value]

    @property
    def in_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.transformer.config.out_channels or self.in_channels)

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_dim)

    @property
    def text_len(self) -> int:
        return WAN_TEXT_LEN

    def _install_processors(self) -> None:
        for block in self.transformer.blocks:
            if not isinstance(block.attn1.processor, WanSceneSelfProcessor):
                block.attn1.set_processor(WanSceneSelfProcessor(block.attn1.processor))
            if not isinstance(block.attn2.processor, WanSceneCrossProcessor):
                block.attn2.set_processor(WanSceneCrossProcessor(block.attn2.processor))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor | Sequence[Tensor] | None,
        t: Tensor,
        context: Tensor | None,
        layout: SequenceLayout,
        *,
        policy: str | Sequence[str] | MaskPolicy | None = None,
        backend: str = "auto",
        kv_cache: KVCache | None = None,
        cache_write: bool = False,
    ) -> Tensor | list[Tensor] | None:
        """Flow velocity for the segments of ``layout`` that are not in ``kv_cache``.

        Args:
            x: ``[B, C, T_total, H, W]`` latents of the new VIDEO/IMAGE segments concatenated along time in layout
                order, or a list of per-segment ``[B, C, T_i, H_i, W_i]`` (then a list is returned); ``None`` when
                the new segments are text only (e.g. caching a global prompt with ``cache_write=True``).
            t: ``[B, n_shots]`` per-shot Wan timesteps (σ·1000 in [0, 1000]) over the FULL layout's shots, or ``[B]``.
            context: ``[B, L_text, text_dim]`` UMT5 states of the new TEXT segments concatenated in layout order.
            layout: the FULL layout (cached prefix + new segments): ``[global text]?`` then ``[text_i][video_i]``.
            policy: self-attention policy overriding ``attn_policy``.
            backend: attention backend (``"auto"``, ``"dense"``, ``"grouped"``, ``"flex"``).
            kv_cache: K/V of a prefix of ``layout``; new video queries attend to [cached ; new] keys.
            cache_write: append the new segments' K/V of every layer to ``kv_cache`` and commit them.
        Returns:
            velocity shaped like ``x`` (tensor, list, or ``None``), in ``x``'s dtype.
        """
        self._install_processors()  # e.g. after transformer.set_attn_processor(...)
        pack, lat, context, seg_t, b = self._prepare(x, t, context, layout, kv_cache, cache_write)
        tr = self.transformer
        ref = lat[0] if lat else context
        device, dtype = ref.device, tr.patch_embedding.weight.dtype
        txt = context.to(dtype) if pack.n_text else torch.zeros(b, 0, self.text_dim, device=device, dtype=dtype)
        try:
            out = self._run(pack, lat, txt, seg_t, b, policy, backend, kv_cache, cache_write, device, dtype)
        except BaseException:
            if cache_write and kv_cache is not None:
                kv_cache.truncate(kv_cache.n_segments)  # drop a partial (uncommitted) write
            raise
        if cache_write:
            kv_cache.commit([layout.segments[i] for i in pack.new_segments])  # type: ignore[union-attr]
        if not lat:
            return [] if isinstance(x, (list, tuple)) else None
        outs = [o.to(l.dtype) for o, l in zip(out, lat)]
        return outs if not isinstance(x, Tensor) else torch.cat(outs, dim=2)  # [B, C, T_total, H, W]

    def _run(self, pack: ScenePacking, lat: list[Tensor], txt: Tensor, seg_t: Tensor, b: int, policy: Any,
             backend: str, kv_cache: KVCache | None, cache_write: bool, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        tr = self.transformer
        if not lat:  # text only: its cross-attention K/V is all a later shot can read
            if not cache_write:
                return []
            ctx = tr.condition_embedder.text_embedder(txt)  # [B, Lt, dim]
            state = _WanPass(pack, ctx, txt.new_zeros(0), txt.new_zeros(0), [], [], kv_cache, cache_write)
            for i, block in enumerate(tr.blocks):
                call = _WanLayerCall(state, i, block.attn2)
                empty = ctx.new_zeros(b, block.attn1.heads, 0, self.hidden // block.attn1.heads)
                call.keys(empty, empty)
            return []
        self._check_cross(pack)
        vid = torch.cat([rearrange(tr.patch_embedding(l.to(dtype)), "b d t h w -> b (t h w) d") for l in lat], dim=1)
        vid = vid.contiguous()  # [B, Lv, dim]

        # ---- timesteps: only video tokens are modulated in Wan
        vt = seg_t[:, pack.local_video]  # [B, S_vid]
        if bool((vt == vt[:, :1]).all()):
            temb, proj, ctx, _ = tr.condition_embedder(vt[:, 0], txt, None)  # temb [B, dim], proj [B, 6·dim]
            proj = proj.unflatten(1, (6, -1))  # [B, 6, dim]
        else:
            n_sv = vt.shape[1]
            temb, proj, ctx, _ = tr.condition_embedder(vt.flatten(), txt, None, timestep_seq_len=n_sv)
            vid_local = torch.tensor(pack.local_video, device=device)  # local segment id per video segment
            tok = torch.searchsorted(vid_local, pack.vid_seg)  # [Lv]: video-segment index of every video token
            temb = temb.index_select(1, tok)  # [B, S_vid, dim] -> [B, Lv, dim]
            proj = proj.index_select(1, tok).unflatten(2, (6, -1))  # [B, Lv, 6, dim]

        # ---- blocks through the swapped processors
        cos, sin = _rope_tables(pack.layout, pack.n_cached_segments, self.hidden // tr.config.num_attention_heads, device)
        pols = self._policies(policy)
        state = _WanPass(
            pack, ctx, cos, sin,
            self._plans(pack, [Restricted(p, "visual", "visual") for p in pols], backend, device, queries="video"),
            self._plans(pack, [Restricted(self.cross_policy, "visual", "text")] * len(pols), backend, device, queries="video"),
            kv_cache, cache_write,
        )
        ckpt = self.gradient_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        for i, block in enumerate(tr.blocks):
            call = _WanLayerCall(state, i, block.attn2)
            if ckpt:
                vid = checkpoint(block, vid, call, proj, call, use_reentrant=False)
            else:
                vid = block(vid, call, proj, call)

        # ---- output head (adaLN with the final table) and unpatchify per segment
        table = tr.scale_shift_table.to(device)  # [1, 2, dim]
        if temb.ndim == 2:
            shift, scale = (table + temb[:, None]).chunk(2, dim=1)  # [B, 1, dim] each
        else:
            shift, scale = (table[:, None] + temb[:, :, None]).unbind(2)  # [B, Lv, 2, dim] -> [B, Lv, dim] each
        h = (tr.norm_out(vid.float()) * (1 + scale) + shift).type_as(vid)
        h = tr.proj_out(h)  # [B, Lv, pt·ph·pw·C]
        pt, ph, pw = self.patch_size
        outs, start = [], 0
        for seg_id in pack.video_segments:
            gt, gh, gw = pack.layout.segments[seg_id].grid
            n = gt * gh * gw
            outs.append(rearrange(h[:, start : start + n], "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                                  t=gt, h=gh, w=gw, pt=pt, ph=ph, pw=pw))
            start += n
        return outs

    def _check_cross(self, pack: ScenePacking) -> None:
        pol = Restricted(self.cross_policy, "visual", "text")
        if not pol.segment_structured:
            return
        seg = segment_mask(pack.attn_layout, pol)
        blind = [s for s in pack.query_video if not bool(seg[s].any())]
        if blind:
            shots = sorted({pack.attn_layout.segments[s].shot for s in blind})
            raise ValueError(
                f"video of shot(s) {shots} can read no text under cross_policy {self.cross_policy.name!r}; give every "
                "shot a text segment (or a global prompt) in the layout"
            )

    # ------------------------------------------------------------------ costs
    def _flops_terms(self, pack: ScenePacking, policies: list[MaskPolicy]) -> tuple[int, int]:
        cfg, dim = self.transformer.config, self.hidden
        lv, lt, s = pack.n_video, pack.n_text, len(pack.video_segments)
        pt, ph, pw = self.patch_size
        linear = 2 * lv * self.in_channels * pt * ph * pw * dim + 2 * lv * dim * self.out_channels * pt * ph * pw
        linear += 2 * lt * (cfg.text_dim * dim + dim * dim)  # text embedder
        linear += 2 * max(s, 1) * (cfg.freq_dim * dim + dim * dim + dim * 6 * dim)  # timestep MLP + projection
        per_layer = 2 * lv * (4 * dim * dim + 2 * dim * dim + 2 * dim * cfg.ffn_dim) + 2 * lt * 2 * dim * dim
        linear += per_layer * len(policies)
        attn, cache = 0, {}
        cross = Restricted(self.cross_policy, "visual", "text")
        for pol in policies:
            if pol not in cache:
                cache[pol] = allowed_pairs(pack.attn_layout, Restricted(pol, "visual", "visual"), pack.query_video)
                cache[pol] += allowed_pairs(pack.attn_layout, cross, pack.query_video) if lv else 0
            attn += 4 * dim * cache[pol]
        return linear, attn
