"""Temporal metrics: flicker, dynamic degree, motion smoothness and long-take boundary smoothness.

Definitions adapted from VBench (Huang et al. 2024, "VBench: Comprehensive Benchmark Suite for Video
Generative Models": temporal flickering, dynamic degree, motion smoothness). Where VBench uses
optical flow (RAFT) or a frame-interpolation network (AMT), these use frame differences and a
small symmetric block-matching interpolator, which StoryWorld's flat-shaded frames make adequate.
Every function returns a :class:`~storyreel.eval.common.MetricResult`; see ``docs/evaluation.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from einops import rearrange

from storyreel.eval.common import MetricResult, SceneAnalysis, _analysis, _box3, _frames_of, _result, _validate
from storyreel.eval.detect import DetectConfig
from storyreel.script import SceneScript

__all__ = [
    "TemporalConfig", "boundary_smoothness", "dynamic_degree", "flicker", "motion_compensated_midframes",
    "motion_compensated_neighbours", "motion_smoothness",
]


@dataclass(frozen=True, kw_only=True)
class TemporalConfig:
    """Thresholds of the temporal metrics (intensities in 0..255 units).

    Attributes:
        change_threshold: a pixel moved between two frames if its 3×3-box-smoothed value changed by
            more than this in some channel (smoothing keeps sensor-like noise below it).
        dynamic_threshold: a shot is dynamic if on average at least this share of its pixels move
            between consecutive frames.
        eps: added to both sides of the boundary-smoothness ratio, so static shots give 1, not 0/0.
        motion_side: motion smoothness works on frames box-downsampled by an integer factor to about
            this side (at least 1: never upsampled), so that the search covers the same share of the
            frame at every resolution and 1-pixel rounding of sub-pixel motion is averaged away.
        motion_radius: largest half-displacement (working pixels, per axis) between frames t-1 and
            t+1 that the interpolator searches (2 at side 32 covers 4 px per frame at 64 px).
        motion_block: matching window radius (working pixels) of the interpolator.
    """

    change_threshold: float = 24.0
    dynamic_threshold: float = 0.002
    eps: float = 0.5
    motion_side: int = 32
    motion_radius: int = 2
    motion_block: int = 2

    def __post_init__(self) -> None:
        _validate("TemporalConfig", [
            ("change_threshold", self.change_threshold, 0 < self.change_threshold < 255, "a number in (0, 255)"),
            ("dynamic_threshold", self.dynamic_threshold, 0 < self.dynamic_threshold < 1, "a number in (0, 1)"),
            ("eps", self.eps, self.eps > 0, "a number > 0"),
            ("motion_side", self.motion_side, isinstance(self.motion_side, int) and self.motion_side >= 8,
             "an integer >= 8"),
            ("motion_radius", self.motion_radius, isinstance(self.motion_radius, int) and 0 <= self.motion_radius <= 8,
             "an integer in 0..8"),
            ("motion_block", self.motion_block, isinstance(self.motion_block, int) and 0 <= self.motion_block <= 8,
             "an integer in 0..8"),
        ])



def flicker(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
            config: DetectConfig | None = None, analysis: SceneAnalysis | None = None) -> MetricResult:
    """Mean absolute frame-to-frame change (0..255) in static background regions — pixels that are
    background in both frames and keep their reference class (so neither a moving character nor a
    panning décor edge counts). 0 for clean renders; lower is better (VBench temporal flickering,
    restricted to static regions)."""
    a = _analysis(shots_frames, script, analysis, config, track_characters=False)
    items = []
    total = count = 0.0
    for i, (frames, det) in enumerate(zip(a.frames, a.shots, strict=True)):
        if frames.shape[0] < 2:
            continue
        bg = ~det.character_pixels  # [T, H, W]
        static = bg[1:] & bg[:-1] & (det.classes[1:] == det.classes[:-1])  # [T-1, H, W]
        diff = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16)).mean(-1)  # [T-1, H, W]
        s, n = float(diff[static].sum()), float(static.sum())
        items.append({"shot": i, "flicker": s / n if n else float("nan"), "pixels": int(n)})
        total, count = total + s, count + n
    return _result("flicker", "mean", {"sum": total, "count": count}, items, higher=False)


def _motion(frames: np.ndarray, cfg: TemporalConfig) -> np.ndarray:
    """Share of moving pixels between consecutive frames of ``[T, H, W, 3]``: float ``[T-1]``."""
    sm = _box3(frames)  # [T, H, W, 3]
    moved = (np.abs(sm[1:] - sm[:-1]) > cfg.change_threshold).any(-1)  # [T-1, H, W]
    return moved.mean(axis=(1, 2))


def dynamic_degree(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                   temporal_config: TemporalConfig | None = None,
                   analysis: SceneAnalysis | None = None) -> MetricResult:
    """Share of shots that move: mean share of moving pixels between consecutive frames at least
    ``dynamic_threshold`` (VBench's dynamic degree with frame differences for optical flow).
    Frozen or near-static video scores low; single-frame shots are left out."""
    cfg = temporal_config or TemporalConfig()
    shots = _frames_of(shots_frames, script, analysis)
    items = []
    for i, frames in enumerate(shots):
        if frames.shape[0] < 2:
            continue
        m = float(_motion(frames, cfg).mean())
        items.append({"shot": i, "motion": round(m, 5), "ok": m >= cfg.dynamic_threshold})
    totals = {"hits": float(sum(it["ok"] for it in items)), "count": float(len(items))}
    return _result("dynamic_degree", "fraction", totals, items)


def boundary_smoothness(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                        temporal_config: TemporalConfig | None = None,
                        analysis: SceneAnalysis | None = None) -> MetricResult:
    """Smoothness of long takes: for every shot with ``cut: false``, the mean absolute difference
    (0..255) between the previous shot's last frame and its first frame, divided by the mean
    within-shot frame difference of the two shots (``eps`` added to both). About 1 for a seamless
    continuation, much more for a jump; lower is better; NaN without long-take boundaries."""
    cfg = temporal_config or TemporalConfig()
    shots = _frames_of(shots_frames, script, analysis)
    items = []
    for i in range(1, len(shots)):
        if script.shots[i].cut:
            continue
        prev, cur = shots[i - 1].astype(np.float32), shots[i].astype(np.float32)
        across = float(np.abs(cur[0] - prev[-1]).mean())
        within = [np.abs(np.diff(s, axis=0)).mean(axis=(1, 2, 3)) for s in (prev, cur) if s.shape[0] > 1]
        inside = float(np.concatenate(within).mean()) if within else 0.0
        ratio = (across + cfg.eps) / (inside + cfg.eps)
        items.append({"shot": i, "across": round(across, 3), "within": round(inside, 3), "ratio": round(ratio, 4)})
    totals = {"sum": float(sum(it["ratio"] for it in items)), "count": float(len(items))}
    return _result("boundary_smoothness", "mean", totals, items, higher=False)




# ----------------------------------------------------------------------------------------------
# motion smoothness


def _box_sum(x: np.ndarray, r: int) -> np.ndarray:
    """Sum over the ``(2r+1) × (2r+1)`` window around each pixel of ``x [N, H, W]`` (zeros outside)."""
    if r == 0:
        return x
    c = np.pad(x, ((0, 0), (r + 1, r), (r + 1, r))).cumsum(1).cumsum(2)  # [N, H+2r+1, W+2r+1] integral image
    k = 2 * r + 1
    return c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]  # [N, H, W]


def motion_compensated_neighbours(frames: np.ndarray, *, radius: int = 2,
                                  block: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Warp the two neighbours of every inner frame onto it by symmetric block matching.

    For frame ``t`` and each pixel ``x``, the displacement ``d`` (``|d| <= radius`` per axis) whose
    windows ``frames[t-1](x - d)`` and ``frames[t+1](x + d)`` agree best (sum of absolute
    differences over a ``(2·block+1)²`` window, a small penalty preferring short motion) is taken as
    the motion through ``x`` — classic motion-compensated frame interpolation from the neighbours alone.

    Args:
        frames: ``[T, H, W, C]`` (any real dtype), T >= 3.

    Returns:
        ``(before, after)``, float32 ``[T-2, H, W, C]`` each: frame ``t-1`` at ``x - d`` and frame
        ``t+1`` at ``x + d`` for ``t = 1 .. T-2``.
    """
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim != 4 or f.shape[0] < 3:
        raise ValueError(f"frames has shape {f.shape}; pass [T, H, W, C] with T >= 3")
    T, H, W, C = f.shape
    R = radius
    padded = np.pad(f, ((0, 0), (R, R), (R, R), (0, 0)), mode="edge")  # [T, H+2R, W+2R, C]
    prev, nxt = padded[:-2], padded[2:]  # [T-2, H+2R, W+2R, C]
    best_cost = np.full((T - 2, H, W), np.inf, dtype=np.float32)
    before = np.zeros((T - 2, H, W, C), dtype=np.float32)
    after = np.zeros((T - 2, H, W, C), dtype=np.float32)
    for dy in range(-R, R + 1):
        for dx in range(-R, R + 1):
            a = prev[:, R - dy : R - dy + H, R - dx : R - dx + W]  # [T-2, H, W, C]: frame t-1 at x - d
            b = nxt[:, R + dy : R + dy + H, R + dx : R + dx + W]  # [T-2, H, W, C]: frame t+1 at x + d
            cost = _box_sum(np.abs(a - b).sum(-1), block) + 0.5 * (abs(dy) + abs(dx))  # [T-2, H, W]
            better = cost < best_cost
            best_cost = np.where(better, cost, best_cost)
            before = np.where(better[..., None], a, before)
            after = np.where(better[..., None], b, after)
    return before, after


def motion_compensated_midframes(frames: np.ndarray, *, radius: int = 2, block: int = 2) -> np.ndarray:
    """Predict every inner frame as the mean of its two motion-compensated neighbours
    (:func:`motion_compensated_neighbours`): exact for constant-velocity translation by an even number
    of pixels between frames ``t-1`` and ``t+1``, except at a few corner pixels of an object where the matching
    window cannot tell the motion (the aperture problem). ``frames [T, H, W, C]`` → float32 ``[T-2, H, W, C]``."""
    before, after = motion_compensated_neighbours(frames, radius=radius, block=block)
    return 0.5 * (before + after)


def _downsample(frames: np.ndarray, side: int) -> np.ndarray:
    """Box-downsample uint8 ``[T, H, W, 3]`` by ``max(1, min(H, W) // side)`` -> float32 ``[T, H', W', 3]``."""
    T, H, W, _ = frames.shape
    k = max(1, min(H, W) // side)
    f = frames[:, : H // k * k, : W // k * k].astype(np.float32)  # crop to a multiple of k
    return rearrange(f, "t (h a) (w b) c -> t h w c a b", a=k, b=k).mean(axis=(-2, -1))  # [T, H/k, W/k, 3]


def motion_smoothness(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                      temporal_config: TemporalConfig | None = None,
                      analysis: SceneAnalysis | None = None) -> MetricResult:
    """How well each frame is predicted from its neighbours: ``1 − mean |prediction − frame| / 255``
    over the pixels that change (VBench's motion smoothness with a block-matching interpolator for
    its AMT network).

    Frames are box-downsampled to about ``motion_side`` px; for every inner frame ``t`` of a shot the
    neighbours ``t-1`` and ``t+1`` are warped onto it (:func:`motion_compensated_neighbours`) and the
    prediction is their mean or, where it fits the 3×3 window better, either warped neighbour alone
    (this forgives the 1-pixel rounding of sub-pixel motion, so clean renders score ≈ 0.98). It is
    compared with the real frame on its *active* pixels (changing by more than ``change_threshold``
    from ``t-1`` or to ``t+1``). Smooth motion is predicted well; jerky, shuffled, stuttering or noisy
    frames are not. Blur alone raises the score a little (differences get smaller), as in VBench.
    Static pixels are left out, so still video gives NaN ("nothing moves": see
    :func:`dynamic_degree`) rather than a perfect score. Shots under 3 frames are skipped.

    Items: ``shot``, ``smoothness``, ``pixels`` (active pixels measured).
    """
    cfg = temporal_config or TemporalConfig()
    shots = _frames_of(shots_frames, script, analysis)
    items = []
    total = count = 0.0
    for i, frames in enumerate(shots):
        if frames.shape[0] < 3:
            continue
        g = _downsample(frames, cfg.motion_side)  # [T, h, w, 3]
        before, after = motion_compensated_neighbours(g, radius=cfg.motion_radius, block=cfg.motion_block)
        target = g[1:-1]  # [T-2, h, w, 3]
        # three predictions per pixel: the mean of the warped neighbours, or either one alone (an object moving by
        # an odd number of pixels over two frames sits, rounded, at one of them); per 3x3 window the best one
        errs = np.stack([np.abs(p - target).mean(-1) for p in (0.5 * (before + after), before, after)])  # [3, T-2, h, w]
        pick = np.stack([_box_sum(e, 1) for e in errs]).argmin(0)  # [T-2, h, w]
        err = np.take_along_axis(errs, pick[None], 0)[0] / 255.0  # [T-2, h, w]
        step = np.abs(np.diff(g, axis=0)).max(-1) > cfg.change_threshold  # [T-1, h, w]
        active = step[:-1] | step[1:]  # [T-2, h, w]: frame t changes from t-1 or to t+1
        s, n = float((1.0 - err[active]).sum()), float(active.sum())
        items.append({"shot": i, "smoothness": round(s / n, 5) if n else float("nan"), "pixels": int(n)})
        total, count = total + s, count + n
    return _result("motion_smoothness", "mean", {"sum": total, "count": count}, items)
