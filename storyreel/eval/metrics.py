"""Pixel metrics for multi-shot StoryWorld video: identity, appearance and setting consistency,
text–shot alignment, layout AP and temporal quality, from generated frames plus the scene script.

Definitions adapted from Mask²DiT (Qi et al. 2025: visual consistency across shots, shot–text
alignment), LCT (Guo et al. 2025: identity/appearance and background consistency across shots of
one scene) and VBench (Huang et al. 2024: temporal flickering, motion smoothness, dynamic degree).
Feature models are replaced by exact colour segmentation (:mod:`storyreel.eval.detect`), which
StoryWorld's palette makes possible. Every metric returns a :class:`MetricResult`: a float (NaN when
there is nothing to measure), the totals it came from (so scenes pool exactly, :func:`pool`) and
per-item details. This module holds the identity / appearance / alignment / setting metrics and the
bundle (:data:`METRICS`, :func:`score_scene`); the temporal metrics live in
:mod:`storyreel.eval.temporal`, layout AP in :mod:`storyreel.eval.layout`, the shared result and
analysis types in :mod:`storyreel.eval.common` (all re-exported here). See ``docs/evaluation.md``
for thresholds and calibration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from storyreel.eval.common import (  # noqa: F401  (re-exported: the names metrics.py always had)
    AP_BINS,
    PATTERN_PRIOR,
    MetricResult,
    SceneAnalysis,
    _analysis,
    _box3,
    _check_shots,
    _frames_of,
    _result,
    _script_characters,
    _validate,
    _value,
    analyze_scene,
    average_precision,
    pool,
    pool_scores,
    split_video,
    summarize,
)
from storyreel.eval.detect import DetectConfig, erode
from storyreel.eval.layout import LayoutConfig, layout_ap
from storyreel.eval.temporal import TemporalConfig, boundary_smoothness, dynamic_degree, flicker, motion_smoothness
from storyreel.script import SceneScript
from storyreel.world.describe import parse_shot_prompt
from storyreel.world.vocab import PATTERNS

if TYPE_CHECKING:
    from storyreel.world.render import RenderedScene

__all__ = [
    "AP_BINS", "METRICS", "PATTERN_PRIOR", "LayoutConfig", "MetricResult", "SceneAnalysis", "SettingConfig",
    "TemporalConfig", "analyze_scene", "appearance_consistency", "average_precision", "boundary_smoothness",
    "dynamic_degree", "flicker", "identity_fidelity", "layout_ap", "motion_smoothness", "pattern_distribution", "pool",
    "pool_scores", "score_scene", "setting_consistency", "shape_fidelity", "split_video", "summarize",
    "text_shot_alignment",
]


# ----------------------------------------------------------------------------------------------
# identity, appearance, alignment


def identity_fidelity(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                      config: DetectConfig | None = None, analysis: SceneAnalysis | None = None) -> MetricResult:
    """Share of (shot, character) pairs — every character a shot's prompt names — in which that
    character's colour from the global prompt appears in the shot.

    Items: ``shot``, ``character``, ``color``, ``ok``, ``frames_found`` and the detected ``shape``.
    """
    a = _analysis(shots_frames, script, analysis, config)
    items = []
    for i, named in enumerate(a.named):
        for n in named:
            color, shape = a.characters[n]
            tr = a.shots[i].tracks[color]
            items.append({"shot": i, "character": n, "color": color, "ok": bool(tr.present),
                          "frames_found": int(tr.found.sum()), "shape": tr.shape, "described_shape": shape})
    totals = {"hits": float(sum(it["ok"] for it in items)), "count": float(len(items))}
    return _result("identity_fidelity", "fraction", totals, items)


def shape_fidelity(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                   config: DetectConfig | None = None, analysis: SceneAnalysis | None = None) -> MetricResult:
    """Share of named, present characters whose body shape (majority over frames where the body is
    whole and large enough) is the shape of their global-prompt description. Pairs whose shape
    could not be measured are left out (see ``DetectConfig.shape_min_side``)."""
    a = _analysis(shots_frames, script, analysis, config)
    items = []
    for i, named in enumerate(a.named):
        for n in named:
            color, shape = a.characters[n]
            tr = a.shots[i].tracks[color]
            if tr.present and tr.shape is not None:
                items.append({"shot": i, "character": n, "described": shape, "detected": tr.shape,
                              "votes": tr.shape_votes, "ok": tr.shape == shape})
    totals = {"hits": float(sum(it["ok"] for it in items)), "count": float(len(items))}
    return _result("shape_fidelity", "fraction", totals, items)


def _patterns_seen(a: SceneAnalysis) -> dict[int, list[tuple[int, str, float]]]:
    """Per character: ``(shot, pattern, median dark share)`` for every shot that names it, shows it
    and lets its pattern be measured, in shot order."""
    seen: dict[int, list[tuple[int, str, float]]] = {n: [] for n in a.characters}
    for i, named in enumerate(a.named):
        for n in named:
            tr = a.shots[i].tracks[a.characters[n][0]]
            if tr.present and tr.pattern is not None:
                seen[n].append((i, tr.pattern, tr.median_dark_share))
    return seen


def appearance_consistency(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                           config: DetectConfig | None = None, analysis: SceneAnalysis | None = None) -> MetricResult:
    """Share of characters whose pattern (an unspoken detail) was measured in two or more shots and
    is the same in all of them. Read it together with :func:`pattern_distribution`: drawing every
    character solid is consistent but shows no patterns.

    Items: ``character``, ``color``, ``patterns`` (per shot), ``dark_share`` (per shot), ``ok``.
    """
    a = _analysis(shots_frames, script, analysis, config)
    items = []
    for n, seen in _patterns_seen(a).items():
        if len(seen) < 2:
            continue
        pats = [p for _, p, _ in seen]
        items.append({"character": n, "color": a.characters[n][0], "shots": [s for s, _, _ in seen],
                      "patterns": pats, "dark_share": [round(d, 4) for _, _, d in seen], "ok": len(set(pats)) == 1})
    totals = {"hits": float(sum(it["ok"] for it in items)), "count": float(len(items))}
    return _result("appearance_consistency", "fraction", totals, items)


def pattern_distribution(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                         config: DetectConfig | None = None, analysis: SceneAnalysis | None = None) -> MetricResult:
    """How patterns are spread over characters at their first measured appearance, scored as
    ``1 - total variation distance`` to the sampler's draw (:data:`PATTERN_PRIOR`, uniform): 1 when
    solid, dots and stripes are equally common, 1/3 when everything is drawn solid. Meaningful
    pooled over many scenes (:func:`pool`); ``totals`` holds the count per pattern."""
    a = _analysis(shots_frames, script, analysis, config)
    items = []
    for n, seen in _patterns_seen(a).items():
        if seen:
            shot, pat, dark = seen[0]
            items.append({"character": n, "color": a.characters[n][0], "shot": shot, "pattern": pat,
                          "dark_share": round(dark, 4)})
    counts = Counter(it["pattern"] for it in items)
    totals = {p: float(counts.get(p, 0)) for p in PATTERNS}
    return _result("pattern_distribution", "distribution", totals, items)


def text_shot_alignment(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                        config: DetectConfig | None = None, analysis: SceneAnalysis | None = None) -> MetricResult:
    """F1 of "character present in the shot" against the prompts: for every shot and every character
    of the global prompt, named in the prompt (truth) vs. its colour detected (prediction).

    Items: per shot ``named``, ``detected`` (character ids) and ``tp``/``fp``/``fn``.
    """
    a = _analysis(shots_frames, script, analysis, config)
    items = []
    tp = fp = fn = 0
    for i, named in enumerate(a.named):
        det = [n for n, (c, _) in a.characters.items() if a.shots[i].tracks[c].present]
        t, p = set(named), set(det)
        items.append({"shot": i, "named": sorted(t), "detected": sorted(p), "tp": len(t & p), "fp": len(p - t),
                      "fn": len(t - p)})
        tp, fp, fn = tp + len(t & p), fp + len(p - t), fn + len(t - p)
    return _result("text_shot_alignment", "f1", {"tp": float(tp), "fp": float(fp), "fn": float(fn)}, items)


# ----------------------------------------------------------------------------------------------
# setting


@dataclass(frozen=True, kw_only=True)
class SettingConfig:
    """Thresholds of :func:`setting_consistency`.

    Attributes:
        color_tolerance: two shots' dominant background colours agree within this RGB distance.
        shade_levels: brightness factors of set-dressing shades to histogram (StoryWorld's 70–85%).
        ray_tolerance: a background pixel is a shade of the dominant colour if it lies within this
            RGB distance of the dominant colour's ray.
        min_share: a shot shows set dressing if at least this share of its background pixels are
            shades; pairs where neither shot shows any agree, where one does they disagree.
        frames_per_shot: frames per shot (evenly spaced) that the profile is measured on.
    """

    color_tolerance: float = 24.0
    shade_levels: tuple[float, ...] = (0.70, 0.75, 0.80, 0.85)
    ray_tolerance: float = 20.0
    min_share: float = 0.005
    frames_per_shot: int = 4

    def __post_init__(self) -> None:
        lv = self.shade_levels
        _validate("SettingConfig", [
            ("color_tolerance", self.color_tolerance, self.color_tolerance > 0, "a number > 0"),
            ("shade_levels", lv, len(lv) >= 1 and all(0 < x < 1 for x in lv) and list(lv) == sorted(set(lv)),
             "ascending distinct factors in (0, 1)"),
            ("ray_tolerance", self.ray_tolerance, self.ray_tolerance > 0, "a number > 0"),
            ("min_share", self.min_share, 0 <= self.min_share < 1, "a number in [0, 1)"),
            ("frames_per_shot", self.frames_per_shot, self.frames_per_shot >= 1, "an integer >= 1"),
        ])


def _dominant(pixels: np.ndarray) -> np.ndarray:
    """Dominant colour of uint8 ``[P, 3]`` pixels: the fullest cell of a 16-level RGB grid, refined
    to the median of the pixels within 24 of that cell's centre. Returns float ``[3]``."""
    q = pixels.astype(np.int64) // 16  # [P, 3]
    cell = np.bincount((q[:, 0] * 16 + q[:, 1]) * 16 + q[:, 2], minlength=4096).argmax()
    centre = np.array([cell // 256, (cell // 16) % 16, cell % 16], dtype=np.float32) * 16 + 7.5
    d = pixels.astype(np.float32) - centre  # [P, 3]
    near = (d * d).sum(1) <= 24.0**2
    return np.median(pixels[near], axis=0).astype(np.float64)


def _shade_profile(pixels: np.ndarray, base: np.ndarray, cfg: SettingConfig) -> np.ndarray:
    """Share of ``pixels`` (uint8 ``[P, 3]``) at each set-dressing level of ``base``: float ``[L]``."""
    x = pixels.astype(np.float32)
    b = base.astype(np.float32)
    f = x @ b / max(float(b @ b), 1e-6)  # [P] brightness factor relative to the base
    r = x - f[:, None] * b[None, :]  # [P, 3]
    off = np.sqrt((r * r).sum(1))  # [P] distance from the base's ray
    lv = np.asarray(cfg.shade_levels)
    half = 0.025 if len(lv) == 1 else float(np.diff(lv).min()) / 2
    edges = np.concatenate([[lv[0] - half], (lv[:-1] + lv[1:]) / 2, [lv[-1] + half]])  # [L+1]
    ok = (off <= cfg.ray_tolerance) & (f >= edges[0]) & (f < edges[-1])
    hist = np.histogram(f[ok], bins=edges)[0].astype(np.float64)  # [L]
    return hist / max(len(pixels), 1)


def setting_consistency(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *,
                        config: DetectConfig | None = None, analysis: SceneAnalysis | None = None,
                        setting_config: SettingConfig | None = None) -> MetricResult:
    """Agreement of the shots' settings: ``0.5·colour agreement + 0.5·décor agreement``.

    Per shot, from background pixels (not a character colour or pattern shade, 3×3-smoothed
    against noise) of a few frames: the dominant colour and the profile of set-dressing shades
    (share of background pixels at 70/75/80/85% brightness of the dominant colour: ground band and
    décor). *Colour agreement*: share of shot pairs whose dominant colours lie within
    ``color_tolerance``. *Décor agreement*: mean histogram intersection of the normalised shade
    profiles over pairs of shots of the same shot type (from the prompts; framing changes what a
    shot shows, so only like framings are compared; 1 if neither shows set dressing, 0 if only one
    does). NaN for one-shot scenes. Ground truth scores about 0.95, not 1: pans and re-centred
    mediums/close-ups show different parts of the set.

    Items: ``{"shot", "dominant", "profile", "shot_type"}`` per shot, then one item per pair.
    """
    a = _analysis(shots_frames, script, analysis, config, track_characters=False)
    cfg = setting_config or SettingConfig()
    shots, bases, profiles = [], [], []
    for i, (frames, det) in enumerate(zip(a.frames, a.shots, strict=True)):
        shot_type = parse_shot_prompt(script.shots[i].prompt)[0]
        pick = np.unique(np.linspace(0, frames.shape[0] - 1, cfg.frames_per_shot).round().astype(np.int64))  # [F]
        keep = erode(~det.character_pixels[pick], 1)  # [F, H, W]: background away from characters
        smooth = _box3(frames[pick])  # [F, H, W, 3]
        bg = smooth[keep]  # [P, 3]
        base = _dominant(bg) if bg.shape[0] else None  # None: the shot is all character
        prof = _shade_profile(bg, base, cfg) if base is not None else None
        bases.append(base)
        profiles.append(prof)
        shots.append({"shot": i, "shot_type": shot_type,
                      "dominant": None if base is None else [round(float(v), 1) for v in base],
                      "profile": None if prof is None else [round(float(v), 5) for v in prof]})
    pairs = []
    color_hits = decor_sum = decor_count = 0.0
    for i, j in combinations(range(len(shots)), 2):
        pair: dict[str, Any] = {"shots": [i, j]}
        if bases[i] is None or bases[j] is None:
            pair["color"] = 0.0
        else:
            dist = float(np.linalg.norm(bases[i] - bases[j]))
            pair["color_distance"] = round(dist, 2)
            pair["color"] = float(dist <= cfg.color_tolerance)
        color_hits += pair["color"]
        if shots[i]["shot_type"] == shots[j]["shot_type"]:
            p, q = profiles[i], profiles[j]
            if p is None or q is None:
                decor = 0.0
            else:
                has_p, has_q = p.sum() >= cfg.min_share, q.sum() >= cfg.min_share
                decor = float(np.minimum(p / p.sum(), q / q.sum()).sum()) if has_p and has_q else float(has_p == has_q)
            pair["decor"] = round(decor, 4)
            decor_sum, decor_count = decor_sum + decor, decor_count + 1
        pairs.append(pair)
    totals = {"color_hits": color_hits, "color_count": float(len(pairs)), "decor_sum": decor_sum,
              "decor_count": decor_count}
    return _result("setting_consistency", "setting", totals, [*shots, *pairs])


# ----------------------------------------------------------------------------------------------
# bundle

#: Metrics computed by :func:`score_scene`, in order.
METRICS: tuple[str, ...] = (
    "identity_fidelity", "shape_fidelity", "appearance_consistency", "pattern_distribution", "text_shot_alignment",
    "setting_consistency", "layout_ap", "flicker", "motion_smoothness", "dynamic_degree", "boundary_smoothness",
)


def score_scene(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *, config: DetectConfig | None = None,
                setting_config: SettingConfig | None = None, temporal_config: TemporalConfig | None = None,
                layout_config: LayoutConfig | None = None, analysis: SceneAnalysis | None = None,
                truth: RenderedScene | None = None) -> dict[str, MetricResult]:
    """Every metric of :data:`METRICS` for one scene (detections computed once).

    Args:
        shots_frames: one uint8 array ``[T_i, H, W, 3]`` per script shot (or None with ``analysis``).
        script: the scene script the video was generated from.
        analysis: a precomputed :func:`analyze_scene` of these frames, to reuse.
        truth: the StoryWorld render of ``script`` (``render_script(script)``), to reuse for layout
            AP's ground-truth boxes; rendered when needed and not given.

    Returns:
        ``{name: MetricResult}``; :func:`summarize` turns it into ``{name: float}``,
        :func:`pool_scores` pools several scenes.
    """
    a = _analysis(shots_frames, script, analysis, config)
    kw = {"analysis": a}
    return {
        "identity_fidelity": identity_fidelity(None, script, **kw),
        "shape_fidelity": shape_fidelity(None, script, **kw),
        "appearance_consistency": appearance_consistency(None, script, **kw),
        "pattern_distribution": pattern_distribution(None, script, **kw),
        "text_shot_alignment": text_shot_alignment(None, script, **kw),
        "setting_consistency": setting_consistency(None, script, setting_config=setting_config, **kw),
        "layout_ap": layout_ap(None, script, config=config, truth=truth, layout_config=layout_config, **kw),
        "flicker": flicker(None, script, **kw),
        "motion_smoothness": motion_smoothness(None, script, temporal_config=temporal_config, **kw),
        "dynamic_degree": dynamic_degree(None, script, temporal_config=temporal_config, **kw),
        "boundary_smoothness": boundary_smoothness(None, script, temporal_config=temporal_config, **kw),
    }
