"""Multi-shot adapter for diffusers' stock ``CogVideoXTransformer3DModel`` (CogVideoX 1.0 2B/5B and 1.5).

Scene-level joint attention across shots, per-shot timesteps through per-token adaLN, interleaved per-shot RoPE and
the context-causal KV cache follow Long Context Tuning (Guo et al. 2025); the text/video masks follow Mask²DiT
(Qi et al. 2025), which is built on CogVideoX. The CogVideoX architecture is Yang et al. (2024), "CogVideoX:
Text-to-Video Diffusion Models with An Expert Transformer".

How the stock model is driven (its weights and block code stay untouched):

* the joint text–video attention processor of every block is swapped for :class:`CogVideoXSceneProcessor`; with
  ordinary arguments it hands over to the processor it replaced, so ``adapter.transformer(...)`` is unchanged;
* the block's two ``CogVideoXLayerNormZero`` and the output ``AdaLayerNorm`` are switched (``__class__``) to
  subclasses that also accept a per-segment timestep embedding and modulate every token with its own shot's
  embedding (the stock modules take one embedding per sample); parameter names and values are unchanged;
* the stock blocks run on the text stream (every new prompt, layout order) and the video stream (every new video
  segment); the processor runs their joint attention under the mask policy through storyreel's backends;
* positions: with rotary embeddings (CogVideoX 1.0-5B, 1.5) video tokens take ``layout.rope_positions()``-derived
  origins plus the pipeline's own in-shot grid (1.0: the resize-crop grid onto ``sample_height × sample_width``;
  1.5: integer positions); a shot's text — unrotated in the stock model — is rotated to the origin of its own
  video, so text-to-video offsets inside every shot equal the single-shot model's (an identity for the first
  shot). Without rotary embeddings (CogVideoX-2B) each video segment gets the stock 3-D sin-cos embedding of its
  own grid (restarting at 0 per shot).

Timesteps are CogVideoX's own DDPM convention: integer steps 0..999 (999 = noise), ``v``-prediction
(``prediction = "v"``): keep diffusers' ``CogVideoXDDIMScheduler`` / ``CogVideoXDPMScheduler`` schedules.
Latents are storyreel's ``[B, C, T, H, W]`` (CogVideoX itself takes ``[B, T, C, H, W]``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_sincos_pos_embed
from diffusers.models.normalization import AdaLayerNorm, CogVideoXLayerNormZero
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from storyreel.models.adapters import _common
from storyreel.models.adapters._common import (
    SceneAdapterBase,
    ScenePacking,
    allowed_pairs,
    build_packing,
    cache_kv,
    rope_cos_sin_axes,
)
from storyreel.nn.kvcache import KVCache
from storyreel.nn.layout import SequenceLayout
from storyreel.nn.masks import MaskPolicy
from storyreel.nn.rope import apply_rope

__all__ = [
    "CogVideoXSceneAdapter",
    "CogVideoXSceneProcessor",
    "PerTokenAdaLayerNorm",
    "PerTokenLayerNormZero",
    "SegmentTimestepEmbedding",
]


# --------------------------------------------------------------------------------------------- per-token adaLN
@dataclass(frozen=True)
class SegmentTimestepEmbedding:
    """A timestep embedding per new segment ``emb [B, S_new, C]`` and which segment every stream token belongs to."""

    emb: Tensor
    pack: ScenePacking  # txt_seg / vid_seg: local segment id per text / video token

    def spread(self, m: Tensor, stream: str) -> Tensor:
        """``m [B, S_new, D]`` → per token ``[B, L_stream, D]`` (a broadcast view when one segment covers the stream)."""
        one = self.pack.txt_one if stream == "text" else self.pack.vid_one
        if one is not None:
            return m[:, one : one + 1]  # [B, 1, D]
        return m.index_select(1, self.pack.txt_seg if stream == "text" else self.pack.vid_seg)


class PerTokenLayerNormZero(CogVideoXLayerNormZero):
    """``CogVideoXLayerNormZero`` that also takes a :class:`SegmentTimestepEmbedding` (per-token modulation)."""

    def forward(self, hidden_states: Tensor, encoder_hidden_states: Tensor, temb: Any) -> tuple[Tensor, ...]:
        if not isinstance(temb, SegmentTimestepEmbedding):
            return super().forward(hidden_states, encoder_hidden_states, temb)
        shift, scale, gate, e_shift, e_scale, e_gate = self.linear(self.silu(temb.emb)).chunk(6, dim=-1)  # [B, S, dim]
        v = functools.partial(temb.spread, stream="video")
        t = functools.partial(temb.spread, stream="text")
        hidden = self.norm(hidden_states) * (1 + v(scale)) + v(shift)
        text = self.norm(encoder_hidden_states) * (1 + t(e_scale)) + t(e_shift)
        return hidden, text, v(gate), t(e_gate)


class PerTokenAdaLayerNorm(AdaLayerNorm):
    """CogVideoX's output ``AdaLayerNorm`` (``chunk_dim=1``) that also takes a :class:`SegmentTimestepEmbedding`."""

    def forward(self, x: Tensor, timestep: Tensor | None = None, temb: Any = None) -> Tensor:
        if not isinstance(temb, SegmentTimestepEmbedding):
            return super().forward(x, timestep, temb)
        shift, scale = self.linear(self.silu(temb.emb)).chunk(2, dim=-1)  # [B, S_new, dim] each (shift first)
        return self.norm(x) * (1 + temb.spread(scale, "video")) + temb.spread(shift, "video")


# --------------------------------------------------------------------------------------------- attention processor
@dataclass
class _CogPass:
    pack: ScenePacking
    cos: Tensor | None  # [Lt + Lv, head_dim/2] stream order, or None without rotary embeddings
    sin: Tensor | None
    plans: list
    cache: KVCache | None
    cache_write: bool


class _CogLayerCall:
    """Per-layer call object passed to a stock block in the place of ``image_rotary_emb``."""

    def __init__(self, state: _CogPass, layer: int) -> None:
        self.state, self.layer = state, layer


class CogVideoXSceneProcessor:
    """Joint text–video attention of a CogVideoX block under a multi-shot mask (falls back to the replaced one)."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor,
                 attention_mask: Tensor | None = None, image_rotary_emb: Any = None) -> tuple[Tensor, Tensor]:
        if not isinstance(image_rotary_emb, _CogLayerCall):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        st, layer = image_rotary_emb.state, image_rotary_emb.layer
        lt = encoder_hidden_states.shape[1]
        x = torch.cat([encoder_hidden_states, hidden_states], dim=1)  # [B, Lt + Lv, dim] stream order
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        q, k, v = (rearrange(z, "b l (h d) -> b h l d", h=attn.heads) for z in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if st.cos is not None:
            q, k = apply_rope(q, st.cos, st.sin), apply_rope(k, st.cos, st.sin)
        if st.pack.to_attn is not None:  # stream order -> layout order of the new segments
            q, k, v = (z.index_select(2, st.pack.to_attn) for z in (q, k, v))
        k_all, v_all = cache_kv(st.cache, layer, k, v, st.cache_write)
        o = _common.masked_attention(q, k_all, v_all, st.plans[layer])  # [B, H, Lt + Lv, D]
        if st.pack.to_stream is not None:
            o = o.index_select(2, st.pack.to_stream)
        o = rearrange(o, "b h l d -> b l (h d)").type_as(q)
        o = attn.to_out[1](attn.to_out[0](o))
        return o[:, lt:], o[:, :lt]


# --------------------------------------------------------------------------------------------- positions
def _crop_region(grid_h: int, grid_w: int, base_h: int, base_w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The grid's aspect ratio fitted into the base grid, centred: ``((top, left), (bottom, right))``."""
    if grid_h / grid_w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / grid_h * grid_w))
    else:
        rw, rh = base_w, int(round(base_w / grid_w * grid_h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def _span(start: float, stop: float, n: int) -> Tensor:
    """``n`` positions from ``start`` spaced ``(stop - start) / n`` (CogVideoX 1.0's RoPE grid), float32 → float64."""
    return torch.linspace(start, stop * (n - 1) / n, n, dtype=torch.float32).to(torch.float64)


def _cog_axes_dims(head_dim: int) -> tuple[int, int, int]:
    return head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3


@functools.lru_cache(maxsize=8)
def _rope_tables(layout: SequenceLayout, n_cached: int, head_dim: int, base: tuple[int, int] | None,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin ``[Lt + Lv, head_dim/2]`` of the new tokens in stream order; ``base`` = 1.0 crop grid, None = 1.5."""
    pack = build_packing(layout, n_cached, False)
    text_pos, video_pos = [], []
    for seg_id, origin in zip(pack.new_segments, pack.origins):
        seg = layout.segments[seg_id]
        if not seg.is_visual:
            text_pos.append(torch.full((seg.length, 3), float(origin), dtype=torch.float64))  # all at the origin
            continue
        gt, gh, gw = seg.grid
        if base is None:
            axes = [torch.arange(n, dtype=torch.float64) for n in (gt, gh, gw)]
        else:
            (top, left), (bottom, right) = _crop_region(gh, gw, *base)
            axes = [_span(0, gt, gt), _span(top, bottom, gh), _span(left, right, gw)]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)  # [t, h, w, 3] -> [n, 3]
        video_pos.append(grid + origin)
    pos = torch.cat(text_pos + video_pos) if text_pos or video_pos else torch.zeros(0, 3, dtype=torch.float64)
    cos, sin = rope_cos_sin_axes(pos, _cog_axes_dims(head_dim))
    return cos.to(device), sin.to(device)


@functools.lru_cache(maxsize=8)
def _sincos(embed_dim: int, grid: tuple[int, int, int], spatial: float, temporal: float, device: torch.device) -> Tensor:
    gt, gh, gw = grid
    pe = get_3d_sincos_pos_embed(embed_dim, (gw, gh), gt, spatial, temporal, device=device, output_type="pt")
    return pe.flatten(0, 1)  # [T, H·W, D] -> [T·H·W, D]


_common._CACHES += [_rope_tables, _sincos]


# --------------------------------------------------------------------------------------------- adapter
class CogVideoXSceneAdapter(SceneAdapterBase):
    """Drive a stock ``CogVideoXTransformer3DModel`` with storyreel layouts (see the module docstring).

    Args:
        transformer: a diffusers ``CogVideoXTransformer3DModel``.
        attn_policy: default mask policy of the joint attention (name, per-layer names, ``"hybrid:..."``, policy).
        ofs: the ``ofs`` value fed to CogVideoX-1.5 I2V's offset embedding when the model has one (the pipeline's 2.0).

    ``forward(x, t, context, layout, *, policy, backend, kv_cache, cache_write)`` has the semantics of
    ``MultiShotMMDiT.forward``; ``t`` holds CogVideoX DDPM steps (0..999), the output is the ``v`` prediction.
    Text tokens take their shot's timestep, global prompts (shot -1) step 0.
    """

    backbone = "cogvideox"
    prediction = "v"

    def __init__(self, transformer: nn.Module, *, attn_policy: str | Sequence[str] | MaskPolicy = "mask2dit",
                 ofs: float = 2.0) -> None:
        if not isinstance(transformer, CogVideoXTransformer3DModel):
            raise ValueError(f"CogVideoXSceneAdapter wraps a diffusers CogVideoXTransformer3DModel, got {type(transformer).__name__}")
        if transformer.norm_out.chunk_dim != 1:
            raise ValueError(f"unexpected CogVideoX output norm (chunk_dim={transformer.norm_out.chunk_dim}, expected 1)")
        super().__init__(transformer, attn_policy=attn_policy)
        self.ofs = float(ofs)
        for block in transformer.transformer_blocks:  # same parameters, one more accepted temb type
            for norm in (block.norm1, block.norm2):
                if type(norm) is CogVideoXLayerNormZero:
                    norm.__class__ = PerTokenLayerNormZero
        if type(transformer.norm_out) is AdaLayerNorm:
            transformer.norm_out.__class__ = PerTokenAdaLayerNorm
        self._install_processors()

    # ------------------------------------------------------------------ config-like attributes
    @property
    def patch_size(self) -> tuple[int, int, int]:
        cfg = self.transformer.config
        return (int(cfg.patch_size_t or 1), int(cfg.patch_size), int(cfg.patch_size))

    @property
    def in_channels(self) -> int:
        return int(self.transformer.config.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.transformer.config.out_channels or self.in_channels)

    @property
    def text_dim(self) -> int:
        return int(self.transformer.config.text_embed_dim)

    @property
    def text_len(self) -> int:
        return int(self.transformer.config.max_text_seq_length)

    def _install_processors(self) -> None:
        for block in self.transformer.transformer_blocks:
            if not isinstance(block.attn1.processor, CogVideoXSceneProcessor):
                block.attn1.set_processor(CogVideoXSceneProcessor(block.attn1.processor))

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
        """``v`` prediction for the segments of ``layout`` that are not in ``kv_cache``.

        Args:
            x: ``[B, C, T_total, H, W]`` latents of the new VIDEO/IMAGE segments concatenated along time in layout
                order, or a list of per-segment ``[B, C, T_i, H_i, W_i]`` (then a list is returned); ``None`` when
                the new segments are text only.
            t: ``[B, n_shots]`` per-shot DDPM timesteps (0..999) over the FULL layout's shots, or ``[B]``.
            context: ``[B, L_text, text_dim]`` T5 states of the new TEXT segments concatenated in layout order.
            layout: the FULL layout (cached prefix + new segments).
            policy: mask policy overriding ``attn_policy``.
            backend: attention backend (``"auto"``, ``"dense"``, ``"grouped"``, ``"flex"``).
            kv_cache: K/V of a prefix of ``layout``; new queries attend to [cached ; new] keys.
            cache_write: append the new segments' K/V of every layer to ``kv_cache`` and commit them.
        Returns:
            ``v`` shaped like ``x`` (tensor, list, or ``None``), in ``x``'s dtype.
        """
        self._install_processors()
        pack, lat, context, seg_t, b = self._prepare(x, t, context, layout, kv_cache, cache_write)
        tr = self.transformer
        ref = lat[0] if lat else context
        device, dtype = ref.device, tr.patch_embed.text_proj.weight.dtype
        try:
            out = self._run(pack, lat, context, seg_t, b, policy, backend, kv_cache, cache_write, device, dtype)
        except BaseException:
            if cache_write and kv_cache is not None:
                kv_cache.truncate(kv_cache.n_segments)
            raise
        if cache_write:
            kv_cache.commit([layout.segments[i] for i in pack.new_segments])  # type: ignore[union-attr]
        if not lat:
            return [] if isinstance(x, (list, tuple)) else None
        outs = [o.to(l.dtype) for o, l in zip(out, lat)]
        return outs if not isinstance(x, Tensor) else torch.cat(outs, dim=2)

    def _embed_video(self, lat: Tensor, grid: tuple[int, int, int], dtype: torch.dtype) -> Tensor:
        """``[B, C, T, H, W]`` → ``[B, T'·H'·W', dim]`` with the stock patch projection (+ its sin-cos positions)."""
        pe = self.transformer.patch_embed
        pt, p, _ = self.patch_size
        lat = lat.to(dtype)
        if pe.patch_size_t is None:  # CogVideoX 1.0: a Conv2d per frame
            tok = pe.proj(rearrange(lat, "b c t h w -> (b t) c h w"))  # [(B·T), dim, H', W']
            tok = rearrange(tok, "(b t) d h w -> b (t h w) d", b=lat.shape[0])
        else:  # CogVideoX 1.5: a Linear over (c, pt, p, p) patches
            tok = pe.proj(rearrange(lat, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=p, pw=p))
        if pe.use_learned_positional_embeddings:
            native = ((pe.sample_frames - 1) // pe.temporal_compression_ratio + 1, pe.sample_height // p, pe.sample_width // p)
            if tuple(grid) != native:
                raise ValueError(
                    f"this CogVideoX has learned positional embeddings for the token grid {native} only, but a video "
                    f"segment has grid {tuple(grid)}; generate at the model's native size"
                )
            tok = tok + pe.pos_embedding[:, pe.max_text_seq_length :].to(tok)
        elif pe.use_positional_embeddings:
            tok = tok + _sincos(pe.embed_dim, tuple(grid), pe.spatial_interpolation_scale,
                                pe.temporal_interpolation_scale, tok.device).to(tok.dtype)
        return tok

    def _run(self, pack: ScenePacking, lat: list[Tensor], context: Tensor | None, seg_t: Tensor, b: int,
             policy: Any, backend: str, kv_cache: KVCache | None, cache_write: bool, device: torch.device,
             dtype: torch.dtype) -> list[Tensor]:
        tr, dim = self.transformer, self.hidden
        layout = pack.layout
        if not lat and not cache_write:
            return []  # text only and nothing to keep: no output to compute
        txt = (tr.patch_embed.text_proj(context.to(dtype)) if pack.n_text  # type: ignore[union-attr]
               else torch.zeros(b, 0, dim, device=device, dtype=dtype))
        vid = (torch.cat([self._embed_video(l, layout.segments[i].grid, dtype) for l, i in zip(lat, pack.video_segments)], 1)
               if lat else torch.zeros(b, 0, dim, device=device, dtype=dtype))
        txt, vid = tr.embedding_dropout(txt), tr.embedding_dropout(vid)

        # ---- timestep embedding: per sample when every new token shares one step, else per new segment
        uniform = bool((seg_t == seg_t[:, :1]).all())
        steps = seg_t[:, 0] if uniform else seg_t.flatten()  # [B] or [B·S_new]
        emb = tr.time_embedding(tr.time_proj(steps).to(dtype), None)  # [B or B·S_new, C]
        if tr.ofs_embedding is not None:
            ofs = torch.full((1,), self.ofs, device=device)
            emb = emb + tr.ofs_embedding(tr.ofs_proj(ofs).to(dtype))  # + [1, C]
        temb: Any = emb if uniform else SegmentTimestepEmbedding(emb.unflatten(0, (b, -1)), pack)  # [B·S, C] -> [B, S, C]

        # ---- blocks through the swapped processor
        cfg = tr.config
        cos = sin = None
        if cfg.use_rotary_positional_embeddings:
            base = None if cfg.patch_size_t is not None else (cfg.sample_height // cfg.patch_size, cfg.sample_width // cfg.patch_size)
            cos, sin = _rope_tables(layout, pack.n_cached_segments, cfg.attention_head_dim, base, device)
        state = _CogPass(pack, cos, sin, self._plans(pack, self._policies(policy), backend, device, queries="all"),
                         kv_cache, cache_write)
        ckpt = self.gradient_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        for i, block in enumerate(tr.transformer_blocks):
            call = _CogLayerCall(state, i)
            if ckpt:
                vid, txt = checkpoint(block, vid, txt, temb, call, use_reentrant=False)
            else:
                vid, txt = block(hidden_states=vid, encoder_hidden_states=txt, temb=temb, image_rotary_emb=call)
        if not lat:
            return []

        # ---- output head and unpatchify per segment
        h = tr.proj_out(tr.norm_out(tr.norm_final(vid), temb=temb))  # [B, Lv, C·pt·p·p]
        pt, ph, pw = self.patch_size
        outs, start = [], 0
        for seg_id in pack.video_segments:
            gt, gh, gw = layout.segments[seg_id].grid
            n = gt * gh * gw
            outs.append(rearrange(h[:, start : start + n], "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)",
                                  t=gt, h=gh, w=gw, pt=pt, ph=ph, pw=pw))
            start += n
        return outs

    # ------------------------------------------------------------------ costs
    def _flops_terms(self, pack: ScenePacking, policies: list[MaskPolicy]) -> tuple[int, int]:
        cfg, dim = self.transformer.config, self.hidden
        lv, lt, s = pack.n_video, pack.n_text, len(pack.new_segments)
        pt, ph, pw = self.patch_size
        ff = self.transformer.transformer_blocks[0].ff.net[0].proj.out_features  # GELU(proj) -> inner width
        tdim = cfg.time_embed_dim
        linear = 2 * lv * self.in_channels * pt * ph * pw * dim + 2 * lt * cfg.text_embed_dim * dim
        linear += 2 * s * (dim * tdim + tdim * tdim)  # timestep MLP
        per_layer = 2 * (lt + lv) * (4 * dim * dim + 2 * dim * ff) + 2 * 2 * s * tdim * 6 * dim
        linear += per_layer * len(policies)
        linear += 2 * lv * dim * self.out_channels * pt * ph * pw + 2 * s * tdim * 2 * dim
        attn, cache = 0, {}
        for pol in policies:
            if pol not in cache:
                cache[pol] = allowed_pairs(pack.attn_layout, pol, pack.query_segments)
            attn += 4 * dim * cache[pol]
        return linear, attn
