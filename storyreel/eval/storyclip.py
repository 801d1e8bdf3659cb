"""StoryCLIP: a small contrastive text–video model trained on StoryWorld, and the metrics built on it.

Contrastive pre-training after CLIP (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision": symmetric InfoNCE, learnable temperature); factorised (2+1)D video
convolutions after R(2+1)D (Tran et al. 2018). The metrics play the role ViCLIP plays in Mask²DiT
(Qi et al. 2025: visual, semantic and sequence consistency) and of I3D features in FVD
(Unterthiner et al. 2018: Fréchet distance between feature sets).

Text side: frozen all-MiniLM-L6-v2 token states (``storyreel.text``, not part of the weights) and
a small trainable transformer head. Video side: a (2+1)D conv net on clips resampled to
``config.frames`` frames of ``config.size``² pixels. Both project to a shared, L2-normalised space.
The text of a shot is :func:`shot_text`: its prompt with every ``Character N`` replaced by the
global description of that character, plus the setting (see ``docs/storyclip.md``).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from storyreel.eval.metrics import MetricResult
from storyreel.pretrained import CheckpointError, PretrainedMixin
from storyreel.script import SceneScript

__all__ = [
    "DEFAULT_STORYCLIP", "STORYCLIP_CONFIGS", "SceneEmbeddings", "StoryCLIP", "StoryCLIPConfig", "embed_scene",
    "expand_prompt", "frechet_distance", "load_storyclip", "prepare_clips", "retrieval_accuracy", "scene_texts", "semantic_consistency",
    "sequence_consistency", "shot_text", "storyclip_fd", "storyclip_scores", "visual_consistency",
]

#: Where the shipped weights live (``config.json`` + ``model.safetensors``, fp16).
DEFAULT_STORYCLIP = Path(__file__).resolve().parent.parent / "weights" / "storyclip"


@dataclass(frozen=True, kw_only=True)
class StoryCLIPConfig:
    """StoryCLIP architecture.

    Attributes:
        embed_dim: size of the shared text–video space.
        frames, size: clips are resampled to ``frames`` frames of ``size × size`` pixels.
        patch: side of the non-overlapping patches of the video stem (``size % patch == 0``).
        widths: channels of the video stages (stem/stage 1 at ``size/patch``, stage 2 at half that).
        video_hidden: hidden width of the video head (flattened time × pooled channels → embedding).
        text_encoder: registered name of the frozen text encoder (``storyreel.text``).
        text_dim, text_max_length: its token-state width and tokens per prompt.
        text_width, text_heads, text_layers: the trainable text head (transformer encoder layers).
        init_temperature, max_logit_scale: initial softmax temperature and the cap on ``1/T``.
    """

    embed_dim: int = 256
    frames: int = 8
    size: int = 64
    patch: int = 4
    widths: tuple[int, int, int] = (24, 48, 96)
    video_hidden: int = 256
    text_encoder: str = "minilm"
    text_dim: int = 384
    text_max_length: int = 32
    text_width: int = 192
    text_heads: int = 4
    text_layers: int = 1
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"StoryCLIPConfig.{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        def pos(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        for name in ("embed_dim", "frames", "video_hidden", "text_dim", "text_width", "text_heads", "text_layers"):
            check(name, pos(getattr(self, name)), "an int >= 1")
        check("patch", pos(self.patch), "an int >= 1")
        check("size", pos(self.size) and self.size % (2 * self.patch) == 0, f"an int, a multiple of 2·patch = {2 * self.patch}")
        check("widths", isinstance(self.widths, tuple) and len(self.widths) == 3 and all(pos(w) and w % 4 == 0 for w in self.widths),
              "a tuple of 3 ints, multiples of 4 (GroupNorm with 4 groups)")
        check("text_width", self.text_width % self.text_heads == 0, f"a multiple of text_heads={self.text_heads}")
        check("text_max_length", pos(self.text_max_length) and self.text_max_length >= 2, "an int >= 2")
        check("text_encoder", isinstance(self.text_encoder, str) and bool(self.text_encoder), "a registered text encoder name")
        check("init_temperature", 0 < self.init_temperature < 1, "a float in (0, 1)")
        check("max_logit_scale", self.max_logit_scale >= 1 / self.init_temperature, "a float >= 1 / init_temperature")


STORYCLIP_CONFIGS: dict[str, StoryCLIPConfig] = {
    "default": StoryCLIPConfig(),
    # tests: tiny, with the weight-free hashing text encoder
    "debug": StoryCLIPConfig(embed_dim=32, frames=4, size=32, widths=(8, 8, 16), video_hidden=32,
                             text_encoder="hashing", text_dim=32, text_width=32, text_heads=2),
}


# ----------------------------------------------------------------------------------------------
# shot texts


_CHAR_REF = re.compile(r"\bCharacter (\d+)\b")
_SHOT_CUT = re.compile(r"^\s*\[SHOT CUT\]\s*")


def shot_text(script: SceneScript, i: int) -> str:
    """The text StoryCLIP embeds for shot ``i`` (0-based) of ``script``.

    The shot prompt without ``[SHOT CUT]``, every ``Character N`` replaced by that character's
    global description, then the setting: ``Close-up of a red circle moving right. Setting: a
    slate room.`` A shot then says everything that is visible in it on its own.
    """
    if not 0 <= i < script.n_shots:
        raise ValueError(f"shot index i={i} is out of range; the script has {script.n_shots} shots (0-based)")
    described = {c.id: c.description for c in script.global_.characters}
    return expand_prompt(script.shots[i].prompt, described, script.global_.setting)


def expand_prompt(prompt: str, descriptions: dict[int, str], setting: str) -> str:
    """``prompt`` without ``[SHOT CUT]``, ``Character N`` → ``descriptions[N]``, then ``Setting: <setting>.``"""
    prompt = _SHOT_CUT.sub("", prompt.strip())
    text = _CHAR_REF.sub(lambda m: descriptions[int(m.group(1))].strip() if int(m.group(1)) in descriptions
                         else m.group(0), prompt)
    text = text if text.endswith(".") else text + "."
    return f"{text} Setting: {setting.strip().rstrip('.')}."


def scene_texts(script: SceneScript) -> list[str]:
    """:func:`shot_text` of every shot of ``script``."""
    return [shot_text(script, i) for i in range(script.n_shots)]


# ----------------------------------------------------------------------------------------------
# clips


def _as_clip(clip: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(clip)) if not isinstance(clip, torch.Tensor) else clip
    if t.ndim != 4 or t.shape[-1] != 3 or t.dtype != torch.uint8 or min(t.shape[:3]) < 1:
        raise ValueError(f"{name} must be a uint8 clip [T, H, W, 3] with T, H, W >= 1, got "
                         f"dtype {t.dtype} shape {tuple(t.shape)}; convert frames with np.asarray(frames, np.uint8)")
    return t


def prepare_clips(clips: Any, *, frames: int, size: int, frame_indices: Sequence[int] | None = None) -> torch.Tensor:
    """uint8 clips → normalised float video ``[N, 3, frames, size, size]``.

    ``clips``: a uint8 array/tensor ``[N, T, H, W, 3]`` or a sequence of ``[T_i, H_i, W_i, 3]``.
    Frames are picked at ``round(linspace(0, T-1, frames))`` (or ``frame_indices``, all in range
    for every clip), then resized to ``size × size`` (area average down, bilinear up).
    """
    if isinstance(clips, (np.ndarray, torch.Tensor)) and clips.ndim == 4:
        raise ValueError("clips is a single clip [T, H, W, 3]; pass a batch [N, T, H, W, 3] or a list of clips")
    items = [_as_clip(c, f"clips[{k}]") for k, c in enumerate(clips)]
    if not items:
        raise ValueError("clips is empty; pass at least one uint8 clip [T, H, W, 3]")
    out = []
    for k, c in enumerate(items):
        t = c.shape[0]
        if frame_indices is None:
            idx = torch.linspace(0, t - 1, frames).round().long()
        else:
            idx = torch.as_tensor(list(frame_indices), dtype=torch.long)
            if idx.numel() != frames or int(idx.min()) < 0 or int(idx.max()) >= t:
                raise ValueError(f"frame_indices={list(frame_indices)} must be {frames} indices in [0, {t - 1}] (clips[{k}])")
        x = rearrange(c[idx].float(), "t h w c -> t c h w")  # [frames, 3, H, W]
        if x.shape[-2:] != (size, size):
            down = x.shape[-2] >= size and x.shape[-1] >= size
            x = F.interpolate(x, size=(size, size), mode="area") if down else \
                F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out.append(x)
    video = torch.stack(out)  # [N, frames, 3, size, size]
    video = (video / 255.0 - 0.5) / 0.25
    return rearrange(video, "n t c h w -> n c t h w")


# ----------------------------------------------------------------------------------------------
# model


class _Block21D(nn.Module):
    """Residual (2+1)D block: 1×3×3 spatial conv, then 3×1×1 temporal conv, GroupNorm + ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.spatial = nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.n1 = nn.GroupNorm(4, c)
        self.temporal = nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), bias=False)
        self.n2 = nn.GroupNorm(4, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, T, H, W]
        y = F.relu(self.n1(self.spatial(x)))
        return F.relu(x + self.n2(self.temporal(y)))


class VideoEncoder(nn.Module):
    """Video ``[B, 3, frames, size, size]`` (normalised) → embedding ``[B, embed_dim]`` (not normalised).

    Per frame the last feature map is pooled (mean and max per channel); the head sees the pooled
    features of all frames in order, so it can read changes over time."""

    def __init__(self, cfg: StoryCLIPConfig) -> None:
        super().__init__()
        w0, w1, w2 = cfg.widths
        # rgb + (x, y) coordinate channels: global pooling then still knows where things are
        self.stem = nn.Conv3d(5, w0, (1, cfg.patch, cfg.patch), stride=(1, cfg.patch, cfg.patch))
        self.stage1 = nn.Sequential(nn.Conv3d(w0, w1, (1, 3, 3), padding=(0, 1, 1), bias=False), nn.GroupNorm(4, w1),
                                    nn.ReLU(), _Block21D(w1))
        self.stage2 = nn.Sequential(nn.Conv3d(w1, w2, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
                                    nn.GroupNorm(4, w2), nn.ReLU(), _Block21D(w2))
        self.head = nn.Sequential(nn.Linear(cfg.frames * 2 * w2, cfg.video_hidden), nn.GELU(),
                                  nn.Linear(cfg.video_hidden, cfg.embed_dim))
        lin = torch.linspace(-1.0, 1.0, cfg.size)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy]), persistent=False)  # [2, size, size]
        self.frames = cfg.frames

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = video.shape
        if t != self.frames:
            raise ValueError(f"video has {t} frames, the encoder takes {self.frames}; use prepare_clips() first")
        coords = self.coords[:, None].expand(2, t, h, w)[None].expand(b, 2, t, h, w)  # [B, 2, T, H, W]
        x = self.stage2(self.stage1(self.stem(torch.cat([video, coords], dim=1))))  # [B, w2, T, h', w']
        pooled = torch.cat([x.mean(dim=(3, 4)), x.amax(dim=(3, 4))], dim=1)  # [B, 2·w2, T]
        return self.head(rearrange(pooled, "b c t -> b (t c)"))  # [B, embed_dim]


class TextHead(nn.Module):
    """Frozen token states ``[B, L, text_dim]`` + mask ``[B, L]`` → embedding ``[B, embed_dim]``."""

    def __init__(self, cfg: StoryCLIPConfig) -> None:
        super().__init__()
        self.proj_in = nn.Linear(cfg.text_dim, cfg.text_width)
        self.pos = nn.Parameter(torch.zeros(cfg.text_max_length, cfg.text_width))
        layer = nn.TransformerEncoderLayer(cfg.text_width, cfg.text_heads, dim_feedforward=2 * cfg.text_width,
                                           dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_width)
        self.proj_out = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = states.shape[1]
        if length > self.pos.shape[0]:
            raise ValueError(f"text states have {length} tokens, the head takes at most {self.pos.shape[0]}")
        x = self.proj_in(states.float()) + self.pos[:length]  # [B, L, W]
        x = self.norm(self.layers(x, src_key_padding_mask=~mask))
        m = mask[..., None].to(x.dtype)  # [B, L, 1]
        pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)  # [B, W] masked mean
        return self.proj_out(pooled)  # [B, embed_dim]


class StoryCLIP(PretrainedMixin, nn.Module):
    """Contrastive text–video model; :meth:`encode_video` / :meth:`encode_text` give unit vectors.

    The frozen text encoder (``config.text_encoder``) is built on first use and is not part of the
    saved weights. ``save_pretrained`` writes fp16 weights; ``from_pretrained`` loads them as fp32.
    """

    config_class = StoryCLIPConfig

    def __init__(self, config: StoryCLIPConfig) -> None:
        super().__init__()
        if not isinstance(config, StoryCLIPConfig):
            raise TypeError(f"StoryCLIP takes a StoryCLIPConfig, got {type(config).__name__}")
        self.config = config
        self.video = VideoEncoder(config)
        self.text = TextHead(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self._text_encoder: Any = None

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def scale(self) -> torch.Tensor:
        """``1 / temperature``, capped at ``config.max_logit_scale`` (scalar tensor)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    # -- embeddings --------------------------------------------------------------------------------
    def video_features(self, video: torch.Tensor) -> torch.Tensor:
        """Prepared video ``[B, 3, frames, size, size]`` → unit vectors ``[B, embed_dim]``."""
        return F.normalize(self.video(video), dim=-1)

    def text_features(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token states ``[B, L, text_dim]`` + bool mask ``[B, L]`` → unit vectors ``[B, embed_dim]``."""
        return F.normalize(self.text(states, mask), dim=-1)

    def text_encoder(self) -> Any:
        """The frozen token-state encoder (built on first call, on this model's device)."""
        if self._text_encoder is None:
            from storyreel.text import get_text_encoder

            kwargs: dict[str, Any] = {"max_length": self.config.text_max_length, "device": self.device}
            if self.config.text_encoder == "hashing":  # weight-free encoder of any width (tests)
                kwargs["dim"] = self.config.text_dim
            encoder = get_text_encoder(self.config.text_encoder, **kwargs)
            if encoder.dim != self.config.text_dim:
                raise ValueError(f"StoryCLIPConfig.text_dim={self.config.text_dim} does not match the "
                                 f"{self.config.text_encoder!r} encoder's width {encoder.dim}; set text_dim={encoder.dim}")
            self._text_encoder = encoder
        return self._text_encoder

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts → unit vectors ``[N, embed_dim]`` (float32, on this model's device)."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of texts; wrap one text in a list: [text]")
        states = self.text_encoder().encode(list(texts)).to(self.device)
        return self.text_features(states.states, states.mask)

    @torch.no_grad()
    def encode_video(self, clips: Any, *, batch_size: int = 64) -> torch.Tensor:
        """uint8 clips (``[N, T, H, W, 3]`` or a list of ``[T_i, H_i, W_i, 3]``, any size) → unit
        vectors ``[N, embed_dim]`` (see :func:`prepare_clips` for the resampling)."""
        clips = list(clips)
        out = []
        for s in range(0, len(clips), batch_size):
            video = prepare_clips(clips[s : s + batch_size], frames=self.config.frames, size=self.config.size)
            out.append(self.video_features(video.to(self.device)))
        if not out:
            raise ValueError("encode_video got no clips; pass at least one uint8 clip [T, H, W, 3]")
        return torch.cat(out)

    # -- save / load -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None,
                        dtype: torch.dtype = torch.float16) -> Path:
        """Write ``config.json`` + ``model.safetensors`` with floating weights stored as ``dtype``."""
        encoder, self._text_encoder = self._text_encoder, None  # the frozen encoder is not ours to copy or save
        try:
            twin = copy.deepcopy(self).to(device="cpu", dtype=dtype)
        finally:
            self._text_encoder = encoder
        return PretrainedMixin.save_pretrained(twin, directory, extra=extra)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> StoryCLIP:
        """Load a folder written by :meth:`save_pretrained`; weights become float32, eval mode."""
        model = super().from_pretrained(directory, device="cpu")
        return model.float().eval().to(device)


def load_storyclip(path: str | os.PathLike[str] = "default", *, device: str | torch.device = "cpu") -> StoryCLIP:
    """Load StoryCLIP from a folder; ``"default"`` is the shipped model (``storyreel/weights/storyclip``).

    Raises:
        FileNotFoundError: the folder or its weights are missing (the message says how to get them).
    """
    folder = DEFAULT_STORYCLIP if str(path) == "default" else Path(path)
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"no StoryCLIP weights at {folder} (missing {', '.join(missing)}). Restore the shipped weights with "
            "`git checkout storyreel/weights/storyclip`, or train them: "
            f"`python -m storyreel.eval.storyclip_train --out {folder}`; or pass the folder of a trained StoryCLIP."
        )
    try:
        return StoryCLIP.from_pretrained(folder, device=device)
    except CheckpointError as err:
        raise CheckpointError(f"cannot load StoryCLIP from {folder}: {err}") from err


@functools.lru_cache(maxsize=2)
def _default_model(device: str) -> StoryCLIP:
    return load_storyclip("default", device=device)


def _model(model: StoryCLIP | None) -> StoryCLIP:
    return _default_model("cpu") if model is None else model


# ----------------------------------------------------------------------------------------------
# metrics


@dataclass(frozen=True)
class SceneEmbeddings:
    """StoryCLIP vectors of one scene: ``video [N_shots, D]`` and ``text [N_shots, D]`` (unit, fp32, CPU)."""

    video: torch.Tensor
    text: torch.Tensor


def embed_scene(shots_frames: Sequence[Any], script: SceneScript, *, model: StoryCLIP | None = None) -> SceneEmbeddings:
    """Embed every shot clip (uint8 ``[T_i, H, W, 3]``) and every :func:`shot_text` of ``script``."""
    if isinstance(shots_frames, (np.ndarray, torch.Tensor)):
        raise ValueError("shots_frames is one array; pass a list with one uint8 [T, H, W, 3] array per shot "
                         "(split a whole video with storyreel.eval.metrics.split_video(video, script))")
    if len(shots_frames) != script.n_shots:
        raise ValueError(f"shots_frames has {len(shots_frames)} shots but the script has {script.n_shots}; "
                         "pass one frame array per script shot, in order")
    m = _model(model)
    return SceneEmbeddings(video=m.encode_video(shots_frames).cpu(), text=m.encode_text(scene_texts(script)).cpu())


def _emb(shots_frames: Sequence[Any], script: SceneScript | None, model: StoryCLIP | None,
         embeddings: SceneEmbeddings | None, *, need_text: bool) -> SceneEmbeddings:
    if embeddings is not None:
        return embeddings
    if script is None:
        if need_text:
            raise ValueError("this metric compares shots with their prompts; pass the scene script")
        m = _model(model)
        video = m.encode_video(shots_frames).cpu()
        return SceneEmbeddings(video=video, text=torch.empty(0, video.shape[1]))
    return embed_scene(shots_frames, script, model=model)


def visual_consistency(shots_frames: Sequence[Any], script: SceneScript | None = None, *,
                       model: StoryCLIP | None = None, embeddings: SceneEmbeddings | None = None) -> MetricResult:
    """Mean StoryCLIP video–video cosine similarity over all pairs of shots of a scene (in [-1, 1]).

    ``shots_frames``: one uint8 clip ``[T_i, H, W, 3]`` per shot. NaN for a one-shot scene.
    ``model`` defaults to the shipped StoryCLIP; pass ``embeddings`` (:func:`embed_scene`) to share
    one embedding pass between metrics.
    """
    v = _emb(shots_frames, script, model, embeddings, need_text=False).video
    sims = v @ v.T  # [N, N]
    items = [{"shots": [i, j], "similarity": float(sims[i, j])} for i, j in combinations(range(v.shape[0]), 2)]
    totals = {"sum": float(sum(it["similarity"] for it in items)), "count": float(len(items))}
    value = totals["sum"] / totals["count"] if items else float("nan")
    return MetricResult(name="visual_consistency", value=value, kind="mean", totals=totals, items=items)


def semantic_consistency(shots_frames: Sequence[Any], script: SceneScript, *, model: StoryCLIP | None = None,
                         embeddings: SceneEmbeddings | None = None) -> MetricResult:
    """Mean StoryCLIP cosine similarity of each shot clip with its own :func:`shot_text` (in [-1, 1])."""
    e = _emb(shots_frames, script, model, embeddings, need_text=True)
    sims = (e.video * e.text).sum(dim=-1)  # [N]
    items = [{"shot": i, "similarity": float(s)} for i, s in enumerate(sims)]
    totals = {"sum": float(sims.sum()), "count": float(sims.numel())}
    value = totals["sum"] / totals["count"] if totals["count"] else float("nan")
    return MetricResult(name="semantic_consistency", value=value, kind="mean", totals=totals, items=items)


def sequence_consistency(shots_frames: Sequence[Any], script: SceneScript, *, model: StoryCLIP | None = None,
                         embeddings: SceneEmbeddings | None = None) -> MetricResult:
    """Mean of :func:`visual_consistency` and :func:`semantic_consistency` (Mask²DiT's sequence consistency).

    NaN when visual consistency is (one shot). Totals hold ``sum = visual + semantic`` and
    ``count = 2``, so pooling scenes averages their per-scene values.
    """
    e = _emb(shots_frames, script, model, embeddings, need_text=True)
    vis = visual_consistency(shots_frames, script, embeddings=e)
    sem = semantic_consistency(shots_frames, script, embeddings=e)
    ok = not (math.isnan(vis.value) or math.isnan(sem.value))
    totals = {"sum": vis.value + sem.value if ok else 0.0, "count": 2.0 if ok else 0.0}
    value = totals["sum"] / 2.0 if ok else float("nan")
    items = [{"visual": vis.value, "semantic": sem.value}]
    return MetricResult(name="sequence_consistency", value=value, kind="mean", totals=totals, items=items)


def storyclip_scores(shots_frames: Sequence[Any], script: SceneScript, *,
                     model: StoryCLIP | None = None) -> dict[str, MetricResult]:
    """Visual, semantic and sequence consistency of one scene from one embedding pass."""
    e = embed_scene(shots_frames, script, model=model)
    return {"visual_consistency": visual_consistency(shots_frames, script, embeddings=e),
            "semantic_consistency": semantic_consistency(shots_frames, script, embeddings=e),
            "sequence_consistency": sequence_consistency(shots_frames, script, embeddings=e)}


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root via eigh (negative round-off eigenvalues clipped to 0)."""
    w, q = np.linalg.eigh((m + m.T) / 2)
    return (q * np.sqrt(np.clip(w, 0.0, None))) @ q.T


def frechet_distance(a: Any, b: Any) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a [N, D]`` and ``b [M, D]`` (N, M >= 2).

    ``|mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a^½ S_b S_a^½)^½)``; the matrix square roots come from
    symmetric eigendecompositions (float64), so the trace term is exact for PSD covariances.
    """
    x = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    y = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"frechet_distance needs two feature sets [N, D] and [M, D] with N, M >= 2 and the same D; "
                         f"got shapes {x.shape} and {y.shape}")
    mu = x.mean(0) - y.mean(0)
    sa, sb = np.cov(x, rowvar=False), np.cov(y, rowvar=False)  # [D, D]
    ra = _psd_sqrt(sa)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(ra @ sb @ ra), 0.0, None)).sum()  # tr((S_a^½ S_b S_a^½)^½)
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * cross, 0.0))


def storyclip_fd(generated: Sequence[Any], reference: Sequence[Any], *, model: StoryCLIP | None = None) -> MetricResult:
    """Fréchet distance in StoryCLIP space between two sets of shot clips (an FVD analogue; lower is better).

    ``generated``, ``reference``: sequences of uint8 clips ``[T, H, W, 3]`` (at least 2 each; use
    tens to hundreds of shots — the covariance of 256-d vectors needs many samples).
    """
    m = _model(model)
    g, r = m.encode_video(list(generated)).cpu(), m.encode_video(list(reference)).cpu()
    fd = frechet_distance(g, r)
    return MetricResult(name="storyclip_fd", value=fd, kind="mean", totals={"sum": fd, "count": 1.0},
                        items=[{"generated": len(g), "reference": len(r)}], higher_is_better=False)


@torch.no_grad()
def retrieval_accuracy(model: StoryCLIP, clips: Any, texts: Sequence[str], *,
                       text_keys: Sequence[Any] | None = None) -> dict[str, float]:
    """Top-1 retrieval within one gallery of ``N`` clips and their ``N`` texts (clip ``k`` ↔ text ``k``).

    Returns ``{"t2v_top1", "v2t_top1", "n"}``. A hit is the right item or one whose text equals
    the query's (``text_keys`` may give other equality keys): identical captions are indistinguishable.
    """
    texts = list(texts)
    v = model.encode_video(clips).cpu()
    if len(texts) != v.shape[0]:
        raise ValueError(f"retrieval_accuracy got {v.shape[0]} clips but {len(texts)} texts; pass one text per clip")
    t = model.encode_text(texts).cpu()
    keys = list(text_keys) if text_keys is not None else texts
    same = torch.tensor([[a == b for b in keys] for a in keys])  # [N, N] clip j matches text i
    sims = t @ v.T  # [N texts, N clips]
    rows = torch.arange(len(texts))
    t2v = same[rows, sims.argmax(dim=1)].float().mean().item()
    v2t = same[rows, sims.T.argmax(dim=1)].float().mean().item()
    return {"t2v_top1": t2v, "v2t_top1": v2t, "n": float(len(texts))}
