"""Multi-shot MMDiT: one joint attention over a packed multi-shot sequence, separate text / video weights.

MMDiT block after SD3 (Esser et al. 2024); scene-level attention, interleaved 3D RoPE, per-shot timesteps and
context-causal KV cache after LCT (Guo et al. 2025); shot masks after Mask²DiT (Qi et al. 2025); per-layer hybrid
masks after Captain Cinema (Xiao et al. 2025); adaLN-Zero after DiT (Peebles & Xie 2023).

The model is ``forward(x, t, context, layout) -> velocity``: every structural fact (shots, text lengths, frames,
masks, RoPE positions, which tokens are cached) comes from the :class:`SequenceLayout`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from storyreel.nn.attention import AttentionPlan, attention, plan_attention
from storyreel.nn.embeddings import TimestepEmbedder, patch_grid, patchify, unpatchify
from storyreel.nn.kvcache import KVCache
from storyreel.nn.layout import Modality, SequenceLayout, shot_timesteps
from storyreel.nn.masks import MaskPolicy, dense_mask, layer_policies
from storyreel.nn.modulation import AdaLNModulation, gate, modulate
from storyreel.nn.rope import rope_axes_dims, rope_freqs, rope_rotate
from storyreel.pretrained import PretrainedMixin

__all__ = ["MMDiTBlock", "MMDiTConfig", "MODELS", "MultiShotMMDiT", "get_model_config", "split_segment_latents"]

_VISUAL = (Modality.VIDEO, Modality.IMAGE)


@dataclass(frozen=True, kw_only=True)
class MMDiTConfig:
    """Architecture of :class:`MultiShotMMDiT` (keyword-only, validated, serialised to ``config.json``).

    ``patch_size`` is ``(pt, ph, pw)``; a one-frame latent (an image shot) with ``pt > 1`` is repeated to fill one
    temporal patch and averaged back on output. ``attn_policy`` is a mask-policy name, a per-layer tuple of names,
    or a ``"hybrid:<policy>*k,<policy>"`` spec (see ``storyreel.nn.masks.layer_policies``). ``max_shots`` and
    ``text_len`` record what the model was trained with, for pipelines to check against; the model itself takes
    every length from the layout.
    """

    in_channels: int
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden: int
    depth: int
    heads: int
    text_dim: int
    mlp_ratio: float = 4.0
    attn_policy: str | tuple[str, ...] = "mask2dit"
    rope_theta: float = 10000.0
    qk_norm: bool = True
    max_shots: int = 8
    text_len: int = 32
    timestep_freq_dim: int = 256
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        def bad(field: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"MMDiTConfig.{field}={value!r} is invalid; allowed: {allowed}")

        for name in ("in_channels", "hidden", "depth", "heads", "text_dim", "max_shots", "text_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(name, value, "a positive integer")
        patch = tuple(self.patch_size) if isinstance(self.patch_size, (list, tuple)) else self.patch_size
        if not (isinstance(patch, tuple) and len(patch) == 3 and all(isinstance(p, int) and p >= 1 for p in patch)):
            raise bad("patch_size", self.patch_size, "three positive integers (pt, ph, pw), e.g. (1, 2, 2)")
        object.__setattr__(self, "patch_size", patch)
        if self.hidden % self.heads:
            raise bad("heads", self.heads, f"a divisor of hidden={self.hidden}")
        head_dim = self.hidden // self.heads
        try:
            rope_axes_dims(head_dim)
        except ValueError as err:
            raise bad("hidden", self.hidden, f"hidden/heads giving a head_dim usable by 3D RoPE ({err})") from err
        if not self.mlp_ratio > 0:
            raise bad("mlp_ratio", self.mlp_ratio, "a positive number (e.g. 4.0)")
        if not self.rope_theta > 0:
            raise bad("rope_theta", self.rope_theta, "a positive number (e.g. 10000.0)")
        if not isinstance(self.timestep_freq_dim, int) or self.timestep_freq_dim < 2:
            raise bad("timestep_freq_dim", self.timestep_freq_dim, "an integer >= 2 (e.g. 256)")
        if not 0 < self.norm_eps < 1:
            raise bad("norm_eps", self.norm_eps, "a small positive number (e.g. 1e-6)")
        spec = self.attn_policy
        if isinstance(spec, list):
            spec = tuple(spec)
            object.__setattr__(self, "attn_policy", spec)
        try:
            layer_policies(spec, self.depth)
        except (ValueError, TypeError) as err:
            raise bad("attn_policy", spec, f"a policy name, {self.depth} per-layer names, or 'hybrid:...' ({err})") from err

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patch_dim(self) -> int:
        """Values per video token: ``in_channels · pt · ph · pw``."""
        pt, ph, pw = self.patch_size
        return self.in_channels * pt * ph * pw


MODELS: dict[str, MMDiTConfig] = {
    # unit tests: ~65k parameters, hashing-encoder text width
    "debug": MMDiTConfig(in_channels=4, hidden=32, depth=2, heads=2, text_dim=64, mlp_ratio=2.0, max_shots=4, text_len=8),
    "tiny": MMDiTConfig(in_channels=16, hidden=128, depth=4, heads=4, text_dim=384, text_len=32),
    # the CPU demo size (MiniLM text states, 16-channel VAE latents)
    "small": MMDiTConfig(in_channels=16, hidden=384, depth=10, heads=6, text_dim=384, text_len=32),
    # the shipped default: 4x-spatial 8-channel VAE latents, patch 2x2, MiniLM states (48 tokens per prompt)
    "compact": MMDiTConfig(in_channels=8, hidden=192, depth=6, heads=3, text_dim=384, text_len=48),
    "base": MMDiTConfig(in_channels=16, hidden=768, depth=16, heads=12, text_dim=384, text_len=64, max_shots=16),
    # the width of the 1.3B-class production backbones (Wan2.1-1.3B: 1536 wide, 12 heads of 128); 2.0 B parameters
    # here (an MMDiT block has a text and a video stream)
    "large": MMDiTConfig(in_channels=16, hidden=1536, depth=24, heads=12, text_dim=384, text_len=64, max_shots=16),
}


def get_model_config(name: str, **overrides: Any) -> MMDiTConfig:
    """Registry config ``name`` with fields replaced by ``overrides`` (re-validated)."""
    if name not in MODELS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(MODELS)}")
    fields = {f.name for f in dataclasses.fields(MMDiTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"get_model_config({name!r}): unknown field(s) {unknown}; allowed: {sorted(fields)}")
    return dataclasses.replace(MODELS[name], **overrides)


# --------------------------------------------------------------------------------------------- blocks


class QKNorm(nn.RMSNorm):
    """RMSNorm of queries or keys over ``head_dim`` that runs in the input's dtype: under bf16 autocast the
    projections come out bf16 while the weight stays float32, and ``nn.RMSNorm`` then warns and falls back to an
    unfused kernel. Same parameters and state-dict names as ``nn.RMSNorm``."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if w is not None and w.dtype != x.dtype:
            w = w.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


class _Stream(nn.Module):
    """One modality's weights inside an MMDiT block: adaLN, qkv (+ q/k RMSNorm), out proj, MLP."""

    def __init__(self, cfg: MMDiTConfig, *, pre_only: bool) -> None:
        super().__init__()
        h, eps = cfg.hidden, cfg.norm_eps
        self.heads, self.pre_only = cfg.heads, pre_only
        self.ada = AdaLNModulation(h, 2 if pre_only else 6)
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=eps)
        self.qkv = nn.Linear(h, 3 * h)
        self.q_norm: nn.Module = QKNorm(cfg.head_dim, eps=eps) if cfg.qk_norm else nn.Identity()
        self.k_norm: nn.Module = QKNorm(cfg.head_dim, eps=eps) if cfg.qk_norm else nn.Identity()
        if not pre_only:
            mlp = int(round(h * cfg.mlp_ratio))
            self.proj = nn.Linear(h, h)
            self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=eps)
            self.mlp = nn.Sequential(nn.Linear(h, mlp), nn.GELU(), nn.Linear(mlp, h))

    def pre_attention(self, x: Tensor, c: Tensor, seg: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """``x [B, L, hidden]`` → q, k, v ``[B, heads, L, head_dim]`` and the per-token modulation chunks."""
        mods = self.ada(c, seg)  # each [B, L, hidden], float32
        qkv = self.qkv(modulate(self.norm1(x), mods[0], mods[1]))  # [B, L, 3*hidden]
        q, k, v = rearrange(qkv, "b l (three h d) -> three b h l d", three=3, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v, mods

    def post_attention(self, x: Tensor, o: Tensor, mods: tuple[Tensor, ...]) -> Tensor:
        """Gated residual attention output and gated residual MLP; ``x, o: [B, L, hidden]``."""
        _, _, g1, shift2, scale2, g2 = mods
        x = gate(x, self.proj(o), g1)
        return gate(x, self.mlp(modulate(self.norm2(x), shift2, scale2)), g2)


@dataclass(frozen=True)
class _Packing:
    """Index bookkeeping for the new (non-cached) tokens of one layout, built once per (layout, n_cached)."""

    new_segments: tuple[int, ...]  # layout segment ids computed in this call, in layout order
    ctx_segments: tuple[int, ...]  # 1-D (text/layout/semantic) new segments → the text stream
    vis_segments: tuple[int, ...]  # VIDEO/IMAGE new segments → the video stream
    txt_seg: Tensor  # [Lt] local (0..S_new-1) segment index of each text-stream token
    vid_seg: Tensor  # [Lv] same for video-stream tokens
    ctx_modality: Tensor  # [Lt] Modality of each text-stream token
    to_packed: Tensor  # [L_new]: packed[i] = cat(text_stream, video_stream)[to_packed[i]]
    to_streams: Tensor  # [L_new]: cat(text_stream, video_stream)[j] = packed[to_streams[j]]
    positions: Tensor  # [L_new, 3] interleaved RoPE positions taken from the FULL layout (kept on CPU)
    n_cached_tokens: int

    def to(self, device: torch.device) -> _Packing:
        """Index tensors moved to ``device`` (positions stay on CPU for ``rope_freqs``)."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("txt_seg", "vid_seg", "ctx_modality", "to_packed", "to_streams"):
            moved[name] = moved[name].to(device)
        return _Packing(**moved)


@functools.lru_cache(maxsize=64)
def _packing(layout: SequenceLayout, n_cached_segments: int) -> _Packing:
    new = tuple(range(n_cached_segments, layout.n_segments))
    segs = [layout.segments[i] for i in new]
    is_vis = [s.modality in _VISUAL for s in segs]
    lengths = torch.tensor([s.length for s in segs], dtype=torch.long)
    local = torch.repeat_interleave(torch.arange(len(segs)), lengths)  # [L_new] local segment of each token
    vis_tok = torch.repeat_interleave(torch.tensor(is_vis, dtype=torch.bool), lengths)  # [L_new]
    pos = torch.arange(int(lengths.sum()))
    order = torch.cat([pos[~vis_tok], pos[vis_tok]])  # stream order → packed position
    start = layout.offsets[n_cached_segments] if new else layout.seq_len
    mods = torch.tensor([int(s.modality) for s in segs], dtype=torch.long)
    return _Packing(
        new_segments=new,
        ctx_segments=tuple(i for i, v in zip(new, is_vis) if not v),
        vis_segments=tuple(i for i, v in zip(new, is_vis) if v),
        txt_seg=local[~vis_tok],
        vid_seg=local[vis_tok],
        ctx_modality=mods[local[~vis_tok]],
        to_packed=torch.argsort(order),
        to_streams=order,
        positions=layout.rope_positions()[start:],
        n_cached_tokens=start,
    )


@functools.lru_cache(maxsize=64)
def _packing_on(layout: SequenceLayout, n_cached_segments: int, device: torch.device, head_dim: int,
                theta: float) -> tuple[_Packing, Tensor, Tensor]:
    """What a forward needs on ``device`` for one (layout, cached prefix): the packing's index tensors, the shot of
    each new segment (``[S_new]``, -1 = global) and the RoPE rotation (complex ``[L_new, head_dim/2]``). Built once
    and reused by every sampling step: a host→device copy from pageable memory synchronises the stream, and a
    handful per forward keeps the host from queueing work ahead of a GPU."""
    pack = _packing(layout, n_cached_segments)
    seg_shot = layout.segment_shot[list(pack.new_segments)]
    freqs = rope_freqs(pack.positions, head_dim, theta=theta)
    return pack.to(device), seg_shot.to(device), freqs.to(device)


class MMDiTBlock(nn.Module):
    """SD3-style block: separate text / video weights, one joint attention over the packed sequence."""

    def __init__(self, cfg: MMDiTConfig, *, context_pre_only: bool = False) -> None:
        super().__init__()
        self.context_pre_only = context_pre_only  # last block: text only provides keys/values
        self.txt = _Stream(cfg, pre_only=context_pre_only)
        self.vid = _Stream(cfg, pre_only=False)

    def forward(
        self,
        txt: Tensor,
        vid: Tensor,
        c: Tensor,
        pack: _Packing,
        rope: Tensor,
        plan: AttentionPlan,
        cache: KVCache | None = None,
        layer: int = 0,
        cache_write: bool = False,
    ) -> tuple[Tensor | None, Tensor]:
        """Args: ``txt [B, Lt, hidden]``, ``vid [B, Lv, hidden]`` (new tokens only), ``c [B, S_new, hidden]`` float32
        timestep embedding per new segment, ``rope`` complex ``[L_new, head_dim/2]`` (:func:`rope_freqs`). Returns updated (txt, vid);
        txt is ``None`` for a ``context_pre_only`` block."""
        qt, kt, vt, mt = self.txt.pre_attention(txt, c, pack.txt_seg)
        qv, kv, vv, mv = self.vid.pre_attention(vid, c, pack.vid_seg)
        # [B, H, Lt + Lv, D] (stream order) → [B, H, L_new, D] (layout order)
        q, k, v = (torch.cat(pair, dim=2).index_select(2, pack.to_packed) for pair in ((qt, qv), (kt, kv), (vt, vv)))
        q, k = rope_rotate(q, rope), rope_rotate(k, rope)
        if cache is not None:
            prev = cache.get(layer)
            if prev is not None and (prev[0].shape[0] != k.shape[0] or prev[0].dtype != k.dtype):
                raise ValueError(
                    f"kv_cache holds batch {prev[0].shape[0]} ({prev[0].dtype}) but this forward has batch "
                    f"{k.shape[0]} ({k.dtype}); build the cache with the same batch size (e.g. the same CFG batching) and dtype"
                )
            k_new, v_new = k, v
            k, v = cache.concat(layer, k_new, v_new)  # [B, H, L_cached + L_new, D], layout order
            if cache_write:  # stored without autograd history; this pass still differentiates through k_new
                cache.append(layer, k_new.detach(), v_new.detach())
        o = attention(q, k, v, plan)  # [B, H, L_new, D]
        o = rearrange(o, "b h l d -> b l (h d)").index_select(1, pack.to_streams)  # [B, Lt + Lv, hidden] stream order
        ot, ov = o[:, : txt.shape[1]], o[:, txt.shape[1] :]
        vid = self.vid.post_attention(vid, ov, mv)
        return (None if self.context_pre_only else self.txt.post_attention(txt, ot, mt)), vid


# ---------------------------------------------------------------------------------------------- model


class MultiShotMMDiT(nn.Module, PretrainedMixin):
    """Multi-shot MMDiT velocity model ``forward(x, t, context, layout) -> v``.

    Text-stream tokens are every 1-D segment (TEXT, and LAYOUT / SEMANTIC tokens, which get a learned modality
    embedding); video-stream tokens are VIDEO / IMAGE segments. Every token is adaLN-modulated by the timestep
    of its own shot (global segments, shot -1, take ``t = 0``).
    """

    config_class: ClassVar[type] = MMDiTConfig

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        if not isinstance(config, MMDiTConfig):
            raise ValueError(f"MultiShotMMDiT needs an MMDiTConfig, got {type(config).__name__}; use get_model_config(name)")
        self.config = config
        h = config.hidden
        self.x_embed = nn.Linear(config.patch_dim, h)
        self.ctx_norm = nn.LayerNorm(config.text_dim, eps=config.norm_eps)
        self.ctx_embed = nn.Linear(config.text_dim, h)
        self.ctx_modality = nn.Embedding(len(Modality), h)
        self.t_embedder = TimestepEmbedder(h, freq_dim=config.timestep_freq_dim)
        self.blocks = nn.ModuleList(
            MMDiTBlock(config, context_pre_only=(i == config.depth - 1)) for i in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(h, elementwise_affine=False, eps=config.norm_eps)
        self.final_ada = AdaLNModulation(h, 2)
        self.head = nn.Linear(h, config.patch_dim)
        self.gradient_checkpointing = False
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier linears, N(0, 0.02) timestep MLP, zero modality embedding; adaLN-Zero: every modulation output
        (shift / scale / gate) and the output head start at zero, so a fresh model predicts ``v = 0``."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.RMSNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
        nn.init.normal_(self.t_embedder.fc1.weight, std=0.02)
        nn.init.normal_(self.t_embedder.fc2.weight, std=0.02)
        nn.init.zeros_(self.ctx_modality.weight)
        for m in self.modules():
            if isinstance(m, AdaLNModulation):
                m.zero_init()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -------------------------------------------------------------------------------------- helpers

    def _policies(self, policy: str | Sequence[str] | MaskPolicy | None) -> list[MaskPolicy]:
        spec = self.config.attn_policy if policy is None else policy
        try:
            if isinstance(spec, MaskPolicy):
                return [spec] * self.config.depth
            return layer_policies(spec if isinstance(spec, str) else list(spec), self.config.depth)
        except (ValueError, TypeError) as err:
            raise ValueError(f"policy={spec!r} is not usable for a {self.config.depth}-layer model: {err}") from err

    def _frames(self, layout: SequenceLayout, seg: int) -> int:
        """Latent frames of a visual segment: grid t · pt, or 1 for an IMAGE segment (t == 1)."""
        s = layout.segments[seg]
        if s.modality == Modality.IMAGE and s.grid[0] == 1:
            return 1
        return s.grid[0] * self.config.patch_size[0]

    def _check_latent(self, lat: Tensor, layout: SequenceLayout, seg: int, what: str) -> None:
        if lat.dim() != 5 or lat.shape[1] != self.config.in_channels:
            raise ValueError(
                f"{what} has shape {tuple(lat.shape)} but the model takes latents [B, C={self.config.in_channels}, T, H, W]"
            )
        s = layout.segments[seg]
        grid = patch_grid(tuple(lat.shape[2:]), self.config.patch_size, what=what)
        if grid != tuple(s.grid):
            raise ValueError(
                f"{what} latent grid {tuple(lat.shape[2:])} gives tokens {grid} with patch {self.config.patch_size}, "
                f"but layout segment {seg} (shot {s.shot}) has token grid {tuple(s.grid)}; build the layout from the latent shapes"
            )

    def _split_x(self, x: Tensor | Sequence[Tensor], layout: SequenceLayout, vis: tuple[int, ...]) -> list[Tensor]:
        """``x`` (concatenated along time, or a list) → one latent ``[B, C, T_i, H_i, W_i]`` per visual segment."""
        return split_segment_latents(x, layout, vis, frames_of=lambda i: self._frames(layout, i),
                                     check=lambda lat, seg, what: self._check_latent(lat, layout, seg, what=what))

    def _prepare(
        self, x: Any, t: Tensor, context: Tensor | None, layout: SequenceLayout, kv_cache: KVCache | None
    ) -> tuple[_Packing, list[Tensor], Tensor | None, Tensor]:
        if not isinstance(layout, SequenceLayout):
            raise ValueError(f"layout must be a SequenceLayout, got {type(layout).__name__}")
        n_cached = kv_cache.prefix_of(layout) if kv_cache is not None else 0
        pack = _packing(layout, n_cached)
        if pack.vis_segments:
            lat = self._split_x(x, layout, pack.vis_segments)
        elif x is None or (isinstance(x, (list, tuple)) and not x) or (isinstance(x, Tensor) and x.dim() == 5 and x.shape[2] == 0):
            lat = []
        else:
            raise ValueError("x holds latents but the layout's new segments hold no video/image; pass x=None")
        n_ctx = int(pack.txt_seg.numel())
        batch = {lat[0].shape[0]} if lat else set()
        if n_ctx:
            if context is None or context.dim() != 3:
                raise ValueError(
                    f"context must be [B, {n_ctx}, {self.config.text_dim}] (states of the layout's new text segments), "
                    f"got {None if context is None else tuple(context.shape)}"
                )
            if context.shape[1] != n_ctx:
                lens = [layout.segments[i].length for i in pack.ctx_segments]
                raise ValueError(
                    f"context has {context.shape[1]} tokens but the layout's new text segments hold {n_ctx} "
                    f"(per segment {lens}); encode every shot prompt to the layout's text length"
                )
            if context.shape[2] != self.config.text_dim:
                raise ValueError(
                    f"context width {context.shape[2]} != model text_dim {self.config.text_dim}; use the text encoder the model was built for"
                )
            batch.add(context.shape[0])
        elif context is not None and context.numel():
            raise ValueError(f"context has {context.shape[1]} tokens but the layout's new segments hold no text; pass None")
        if not batch:
            raise ValueError("nothing to compute: pass x (video latents) or context (text states) for the new segments")
        if len(batch) > 1 or any(lt.shape[0] != lat[0].shape[0] for lt in lat):
            raise ValueError(f"batch sizes differ between x and context: {sorted(batch)}")
        b = batch.pop()
        t = torch.as_tensor(t, dtype=torch.float32, device=(lat[0] if lat else context).device)  # type: ignore[union-attr]
        if t.dim() == 0:
            t = t.expand(b)
        if t.dim() == 1 and t.shape[0] == b:
            t = t[:, None].expand(b, layout.n_shots)  # [B] → [B, n_shots]
        if t.shape != (b, layout.n_shots):
            raise ValueError(
                f"t has shape {tuple(t.shape)} but batch {b} with {layout.n_shots} shot(s) needs [B]={b} or "
                f"[B, n_shots]=({b}, {layout.n_shots})"
            )
        if layout.n_shots == 0:
            t = t.new_zeros(b, 1)  # only global segments: they take global_t anyway
        return pack, lat, context, t

    # -------------------------------------------------------------------------------------- forward

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
        """Velocity for the segments of ``layout`` that are not in ``kv_cache``.

        Args:
            x: ``[B, C, T_total, H, W]`` latents of the new VIDEO/IMAGE segments concatenated along time in layout
                order, or a list of per-segment ``[B, C, T_i, H_i, W_i]`` (then a list is returned). ``None`` (or
                ``[]``) when the new segments hold no video (e.g. caching a global prompt).
            t: ``[B, n_shots]`` per-shot timestep in [0, 1] (1 = noise) over the FULL layout's shots, or ``[B]``.
            context: ``[B, L_ctx, text_dim]`` states of the new 1-D segments (TEXT; LAYOUT/SEMANTIC tokens too)
                concatenated in layout order; ``None`` when there are none.
            layout: the FULL layout (cached prefix + new segments).
            policy: mask policy spec overriding ``config.attn_policy`` (name, per-layer names, hybrid spec, policy).
            backend: attention backend (``"auto"``, ``"dense"``, ``"grouped"``, ``"flex"``).
            kv_cache: holds K/V of a prefix of ``layout``; new queries attend to [cached ; new] keys.
            cache_write: append the new segments' K/V of every layer to ``kv_cache`` and commit them.
        Returns:
            velocity shaped like ``x`` (tensor, list, or ``None``), in ``x``'s dtype.
        """
        if cache_write and kv_cache is None:
            raise ValueError("cache_write=True needs a kv_cache to write to; pass kv_cache=KVCache()")
        pack, lat, context, t = self._prepare(x, t, context, layout, kv_cache)
        ref = lat[0] if lat else context
        assert ref is not None
        device, dtype, b = ref.device, self.x_embed.weight.dtype, ref.shape[0]
        n_cached = layout.n_segments - len(pack.new_segments)
        pack, seg_shot, rope = _packing_on(layout, n_cached, device, self.config.head_dim, float(self.config.rope_theta))
        seg_t = shot_timesteps(t, seg_shot)  # each new segment's timestep [B, S_new]; global segments at t = 0

        # ---- embed: video tokens [B, Lv, hidden], text tokens [B, Lt, hidden], conditioning [B, S_new, hidden]
        vid = (self.x_embed(torch.cat([patchify(v, self.config.patch_size) for v in lat], dim=1).to(dtype))
               if lat else torch.zeros(b, 0, self.config.hidden, device=device, dtype=dtype))
        if pack.txt_seg.numel():
            ctx = self.ctx_embed(self.ctx_norm(context.to(dtype)))  # type: ignore[union-attr]
            txt = ctx + self.ctx_modality(pack.ctx_modality).to(dtype)  # [B, Lt, hidden]
        else:
            txt = torch.zeros(b, 0, self.config.hidden, device=device, dtype=dtype)
        c = self.t_embedder(seg_t)  # [B, S_new, hidden] float32

        # ---- one plan per distinct layer policy (the nn module caches plans across calls)
        query_segments = list(pack.new_segments) if pack.n_cached_tokens else None
        plans: dict[str, AttentionPlan] = {}
        layer_plans = []
        for pol in self._policies(policy):
            if pol.name not in plans:
                plans[pol.name] = plan_attention(layout, pol, backend=backend, device=device, query_segments=query_segments)
            layer_plans.append(plans[pol.name])

        use_ckpt = self.gradient_checkpointing and self.training and kv_cache is None and torch.is_grad_enabled()
        try:
            for i, block in enumerate(self.blocks):
                if use_ckpt:
                    new_txt, vid = checkpoint(block, txt, vid, c, pack, rope, layer_plans[i], use_reentrant=False)
                else:
                    new_txt, vid = block(txt, vid, c, pack, rope, layer_plans[i], kv_cache, i, cache_write)
                txt = new_txt if new_txt is not None else txt
        except BaseException:
            if cache_write and kv_cache is not None:
                kv_cache.truncate(kv_cache.n_segments)  # drop the partial (uncommitted) write
            raise
        if cache_write:
            assert kv_cache is not None
            kv_cache.commit([layout.segments[i] for i in pack.new_segments])

        # ---- head on video tokens only → per-segment latents
        if not lat:
            return [] if isinstance(x, (list, tuple)) else (None if x is None else torch.zeros_like(x))
        shift, scale = self.final_ada(c, pack.vid_seg)
        out = self.head(modulate(self.final_norm(vid), shift, scale))  # [B, Lv, C·pt·ph·pw]
        outs, start = [], 0
        for seg, lt in zip(pack.vis_segments, lat):
            grid = tuple(layout.segments[seg].grid)
            n = grid[0] * grid[1] * grid[2]
            piece = out[:, start : start + n]  # [B, n, patch_dim]
            outs.append(unpatchify(piece, grid, self.config.patch_size, self.config.in_channels, frames=lt.shape[2]).to(lt.dtype))
            start += n
        return outs if not isinstance(x, Tensor) else torch.cat(outs, dim=2)  # [B, C, T_total, H, W]

    # -------------------------------------------------------------------------------------- costs

    def flops_per_forward(
        self, layout: SequenceLayout, *, policy: str | Sequence[str] | MaskPolicy | None = None,
        n_cached_segments: int = 0, batch: int = 1,
    ) -> int:
        """Matmul FLOPs (2 per multiply-add) of one forward over ``layout``'s segments from ``n_cached_segments`` on.

        Counts every linear layer (embeddings, per-segment timestep MLP and adaLN, qkv, out proj, MLP, head) and
        attention (QKᵀ and AV) over *allowed* query/key pairs only, per layer policy. Norms, RoPE, softmax and
        elementwise work are not counted.
        """
        cfg, h = self.config, self.config.hidden
        pack = _packing(layout, n_cached_segments)
        lv, lt, s = int(pack.vid_seg.numel()), int(pack.txt_seg.numel()), len(pack.new_segments)
        mlp = int(round(h * cfg.mlp_ratio))
        flops = 2 * lv * cfg.patch_dim * h + 2 * lt * cfg.text_dim * h  # input embeddings
        flops += 2 * s * (cfg.timestep_freq_dim * h + h * h)  # timestep MLP (per new segment)
        full_stream = 2 * (3 * h * h + h * h + 2 * h * mlp)  # qkv + proj + MLP per token
        pairs: dict[str, int] = {}
        qs = list(pack.new_segments) if n_cached_segments else None
        for i, (block, pol) in enumerate(zip(self.blocks, self._policies(policy))):
            flops += lv * full_stream + 2 * s * h * 6 * h
            if block.context_pre_only:
                flops += lt * 2 * 3 * h * h + 2 * s * h * 2 * h
            else:
                flops += lt * full_stream + 2 * s * h * 6 * h
            if pol.name not in pairs:
                pairs[pol.name] = int(dense_mask(layout, pol, query_segments=qs).sum())
            flops += 2 * 2 * pairs[pol.name] * h  # QKᵀ and AV over allowed pairs, all heads
        flops += 2 * s * h * 2 * h + 2 * lv * h * cfg.patch_dim  # final adaLN + head
        return int(flops * batch)


def split_segment_latents(
    x: Tensor | Sequence[Tensor] | None, layout: SequenceLayout, vis: Sequence[int], *,
    frames_of: Any, check: Any,
) -> list[Tensor]:
    """Split a model's video input into one latent per new visual segment (shared by every backbone).

    Args:
        x: ``[B, C, T_total, H, W]`` latents of the segments ``vis`` concatenated along time, or a list of
            per-segment ``[B, C, T_i, H_i, W_i]``.
        vis: the layout's new VIDEO/IMAGE segment indices, in order.
        frames_of: ``seg -> latent frames`` of a segment (the backbone's temporal patch rule).
        check: ``(latent, seg, name) -> None`` validates one latent against its segment (raises ``ValueError``).
    """
    if isinstance(x, Tensor):
        frames = [int(frames_of(i)) for i in vis]
        if x.dim() != 5 or x.shape[2] != sum(frames):
            raise ValueError(
                f"x has shape {tuple(x.shape)} ({x.shape[2] if x.dim() == 5 else '?'} latent frames) but the layout's "
                f"{len(vis)} new video segment(s) need {sum(frames)} latent frames (per segment {frames}); "
                "pass [B, C, T_total, H, W]"
            )
        spatial = sorted({tuple(layout.segments[i].grid[1:]) for i in vis})
        if len(spatial) > 1:
            raise ValueError(
                f"the new video segments have different spatial token grids {spatial}, so they cannot be "
                "concatenated along time in one x tensor; pass x as a list of per-segment latents"
            )
        parts = list(torch.split(x, frames, dim=2))  # [B, C, T_total, H, W] → per segment [B, C, T_i, H, W]
        names = [f"x (segment {i})" for i in vis]
    else:
        parts = list(x) if x is not None else []
        if len(parts) != len(vis):
            raise ValueError(
                f"x is a list of {len(parts)} latents but the layout has {len(vis)} new video/image segments; pass one per segment"
            )
        names = [f"x[{j}]" for j in range(len(parts))]
    for lat, seg, name in zip(parts, vis, names):
        check(lat, seg, name)
    return parts
