"""Pixel metrics for multi-shot StoryWorld video: identity, appearance and setting consistency,
text–shot alignment and temporal quality, from generated frames plus the scene script.

Definitions adapted from Mask²DiT (Qi et al. 2025: visual consistency across shots, shot–text
alignment), LCT (Guo et al. 2025: identity/appearance and background consistency across shots of
one scene) and VBench (Huang et al. 2024: temporal flickering, dynamic degree). Feature models are
replaced by exact colour segmentation (:mod:`storyreel.eval.detect`), which StoryWorld's palette
makes possible. Every metric returns a :class:`MetricResult`: a float (NaN when there is nothing to
measure), the totals it came from (so scenes pool exactly, :func:`pool`) and per-item details.
See ``docs/evaluation.md`` for thresholds and calibration.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from storyreel.eval.detect import DetectConfig, ShotDetection, check_frames, detect_shot, erode
from storyreel.script import SceneScript
from storyreel.world.describe import parse_description, parse_setting, parse_shot_prompt
from storyreel.world.vocab import PATTERNS

__all__ = [
    "METRICS", "PATTERN_PRIOR", "MetricResult", "SceneAnalysis", "SettingConfig", "TemporalConfig", "analyze_scene",
    "appearance_consistency", "boundary_smoothness", "dynamic_degree", "flicker", "identity_fidelity",
    "pattern_distribution", "pool", "pool_scores", "score_scene", "setting_consistency", "shape_fidelity",
    "split_video", "summarize", "text_shot_alignment",
]

#: The sampler draws each character's pattern uniformly (``world/sampler.py``).
PATTERN_PRIOR: dict[str, float] = {p: 1.0 / len(PATTERNS) for p in PATTERNS}


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class MetricResult:
    """One metric on one scene (or pooled over scenes).

    ``value``: the score (NaN when nothing was measurable). ``kind`` says how ``totals`` make the
    value, so results pool exactly: ``fraction`` (hits / count), ``f1`` (tp, fp, fn), ``mean``
    (sum / count), ``setting`` (two fractions averaged, see :func:`setting_consistency`) or
    ``distribution`` (a count per pattern, scored against :data:`PATTERN_PRIOR`). ``items``:
    per-item details (JSON-able dicts). ``higher_is_better`` is False for ``flicker`` and
    ``boundary_smoothness``.
    """

    name: str
    value: float
    kind: str
    totals: dict[str, float]
    items: list[dict[str, Any]] = field(default_factory=list)
    higher_is_better: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN becomes None)."""
        v = None if math.isnan(self.value) else self.value
        return {"name": self.name, "value": v, "kind": self.kind, "totals": dict(self.totals),
                "higher_is_better": self.higher_is_better, "items": self.items}


def _validate(owner: str, checks: list[tuple[str, object, bool, str]]) -> None:
    """Raise ``ValueError`` for the first failed ``(field, value, ok, allowed)`` check of a config."""
    for name, value, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{owner}.{name}={value!r} is invalid; allowed: {allowed}")


def _value(kind: str, totals: Mapping[str, float]) -> float:
    if kind == "fraction" or kind == "mean":
        key = "hits" if kind == "fraction" else "sum"
        return totals[key] / totals["count"] if totals["count"] else float("nan")
    if kind == "f1":
        denom = 2 * totals["tp"] + totals["fp"] + totals["fn"]
        return 2 * totals["tp"] / denom if denom else 1.0  # nothing to find and nothing found
    if kind == "setting":
        parts = [totals["color_hits"] / totals["color_count"]] if totals["color_count"] else []
        if totals["decor_count"]:
            parts.append(totals["decor_sum"] / totals["decor_count"])
        return float(np.mean(parts)) if parts else float("nan")
    if kind == "distribution":
        n = sum(totals[p] for p in PATTERNS)
        if not n:
            return float("nan")
        return 1.0 - 0.5 * sum(abs(totals[p] / n - PATTERN_PRIOR[p]) for p in PATTERNS)
    raise ValueError(f"MetricResult.kind={kind!r} is unknown; allowed: fraction, f1, mean, setting, distribution")


def _result(name: str, kind: str, totals: dict[str, float], items: list[dict[str, Any]], *,
            higher: bool = True) -> MetricResult:
    return MetricResult(name=name, value=_value(kind, totals), kind=kind, totals=totals, items=items,
                        higher_is_better=higher)


def pool(results: Sequence[MetricResult]) -> MetricResult:
    """Pool one metric over scenes by summing its totals (micro average); items are concatenated
    with a ``scene`` index added."""
    if not results:
        raise ValueError("pool() got no results; pass the MetricResult of at least one scene")
    names = {(r.name, r.kind) for r in results}
    if len(names) != 1:
        raise ValueError(f"pool() got different metrics {sorted(names)}; pool one metric at a time")
    first = results[0]
    totals: dict[str, float] = {}
    for r in results:
        for k, v in r.totals.items():
            totals[k] = totals.get(k, 0.0) + v
    items = [{"scene": i, **it} for i, r in enumerate(results) for it in r.items]
    return _result(first.name, first.kind, totals, items, higher=first.higher_is_better)


def pool_scores(scores: Sequence[Mapping[str, MetricResult]]) -> dict[str, MetricResult]:
    """Pool the :func:`score_scene` dicts of several scenes, metric by metric."""
    if not scores:
        raise ValueError("pool_scores() got no scenes; pass at least one score_scene() result")
    return {name: pool([s[name] for s in scores]) for name in scores[0]}


def summarize(scores: Mapping[str, MetricResult]) -> dict[str, float]:
    """``{metric: value}`` of a :func:`score_scene` (or :func:`pool_scores`) result."""
    return {name: r.value for name, r in scores.items()}


# ----------------------------------------------------------------------------------------------
# scene analysis (detections shared by every metric)


@dataclass
class SceneAnalysis:
    """Colour detections of every shot of a scene, with what the script says.

    ``characters``: id -> (colour, shape) from the global prompt; ``named[i]``: ids named in shot
    ``i``'s prompt; ``shots[i]``: the :class:`ShotDetection` of shot ``i``; ``frames[i]``: its uint8
    frames ``[T_i, H, W, 3]``; ``tracked``: False if only pixel classes were computed.
    """

    script: SceneScript
    characters: dict[int, tuple[str, str]]
    setting: str
    named: list[list[int]]
    frames: list[np.ndarray]
    shots: list[ShotDetection]
    tracked: bool = True


def _script_characters(script: SceneScript) -> dict[int, tuple[str, str]]:
    chars = {}
    for j, c in enumerate(script.global_.characters):
        chars[c.id] = parse_description(c.description, field=f"global.characters[{j}].description")
    return chars


def _check_shots(shots_frames: Sequence[np.ndarray], script: SceneScript) -> list[np.ndarray]:
    if isinstance(shots_frames, np.ndarray):
        raise ValueError(
            "shots_frames is one array; pass a list with one uint8 [T, H, W, 3] array per shot "
            "(split a whole video with storyreel.eval.metrics.split_video(video, script))"
        )
    shots = [check_frames(f, name=f"shots_frames[{i}]") for i, f in enumerate(shots_frames)]
    if len(shots) != script.n_shots:
        raise ValueError(
            f"shots_frames has {len(shots)} shots but the script has {script.n_shots}; pass one frame "
            "array per script shot, in order"
        )
    sizes = {f.shape[1:3] for f in shots}
    if len(sizes) != 1:
        raise ValueError(f"shots_frames mixes frame sizes {sorted(sizes)}; every shot must have the same H × W")
    return shots


def split_video(video: np.ndarray, script: SceneScript) -> list[np.ndarray]:
    """Cut a whole video uint8 ``[sum T_i, H, W, 3]`` into the script's shots (``script.shot_frames``)."""
    video = check_frames(video, name="video")
    lengths = [script.shot_frames(i) for i in range(script.n_shots)]
    if video.shape[0] != sum(lengths):
        raise ValueError(
            f"video has {video.shape[0]} frames but the script's shots add up to {sum(lengths)} "
            f"({lengths}); pass the video generated for this script or split it yourself"
        )
    return list(np.split(video, np.cumsum(lengths)[:-1]))


def analyze_scene(shots_frames: Sequence[np.ndarray], script: SceneScript, config: DetectConfig | None = None, *,
                  track_characters: bool = True) -> SceneAnalysis:
    """Detect every character colour of ``script`` in every shot.

    Args:
        shots_frames: one uint8 array ``[T_i, H, W, 3]`` per script shot (frame counts may differ
            from the script's; sizes must agree).
        script: the scene script; character descriptions and the setting must be in StoryWorld's
            vocabulary (``a red circle``, ``a slate room``).
        config: detector thresholds.
        track_characters: False classifies pixels only (``shots[i].tracks`` stays empty), which
            is all the setting and flicker metrics need.
    """
    shots = _check_shots(shots_frames, script)
    characters = _script_characters(script)
    setting = parse_setting(script.global_.setting, field="global.setting")
    colors = [c for c, _ in characters.values()] if track_characters else []
    detections = [detect_shot(f, colors, config, setting=setting) for f in shots]
    named = [[n for n in script.characters_in_shot(i) if n in characters] for i in range(script.n_shots)]
    return SceneAnalysis(script=script, characters=characters, setting=setting, named=named, frames=shots,
                         shots=detections, tracked=track_characters)


def _analysis(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, analysis: SceneAnalysis | None,
              config: DetectConfig | None, *, track_characters: bool = True) -> SceneAnalysis:
    if analysis is not None:
        if analysis.script is not script and analysis.script != script:
            raise ValueError("analysis was made for another script; pass the same script or no analysis")
        if track_characters and not analysis.tracked:
            raise ValueError("analysis has no character tracks; make it with analyze_scene(..., track_characters=True)")
        return analysis
    if shots_frames is None:
        raise ValueError("pass shots_frames (one uint8 [T, H, W, 3] array per shot) or a precomputed analysis")
    return analyze_scene(shots_frames, script, config, track_characters=track_characters)


def _frames_of(shots_frames: Sequence[np.ndarray] | None, script: SceneScript,
               analysis: SceneAnalysis | None) -> list[np.ndarray]:
    """The checked frames of every shot, from ``analysis`` when given (no detection needed)."""
    if analysis is not None:
        return _analysis(None, script, analysis, None, track_characters=False).frames
    if shots_frames is None:
        raise ValueError("pass shots_frames (one uint8 [T, H, W, 3] array per shot) or a precomputed analysis")
    return _check_shots(shots_frames, script)


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
# temporal


@dataclass(frozen=True, kw_only=True)
class TemporalConfig:
    """Thresholds of the temporal metrics (intensities in 0..255 units).

    Attributes:
        change_threshold: a pixel moved between two frames if its 3×3-box-smoothed value changed by
            more than this in some channel (smoothing keeps sensor-like noise below it).
        dynamic_threshold: a shot is dynamic if on average at least this share of its pixels move
            between consecutive frames.
        eps: added to both sides of the boundary-smoothness ratio, so static shots give 1, not 0/0.
    """

    change_threshold: float = 24.0
    dynamic_threshold: float = 0.002
    eps: float = 0.5

    def __post_init__(self) -> None:
        _validate("TemporalConfig", [
            ("change_threshold", self.change_threshold, 0 < self.change_threshold < 255, "a number in (0, 255)"),
            ("dynamic_threshold", self.dynamic_threshold, 0 < self.dynamic_threshold < 1, "a number in (0, 1)"),
            ("eps", self.eps, self.eps > 0, "a number > 0"),
        ])


def _box3(frames: np.ndarray) -> np.ndarray:
    """3×3 box filter (edge-replicated) of ``[T, H, W, 3]`` -> float32 ``[T, H, W, 3]``."""
    f = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # [T, H+2, W+2, 3]
    H, W = frames.shape[1:3]
    return sum(f[:, dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3)) / 9.0


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
# bundle

#: Metrics computed by :func:`score_scene`, in order.
METRICS: tuple[str, ...] = (
    "identity_fidelity", "shape_fidelity", "appearance_consistency", "pattern_distribution", "text_shot_alignment",
    "setting_consistency", "flicker", "dynamic_degree", "boundary_smoothness",
)


def score_scene(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *, config: DetectConfig | None = None,
                setting_config: SettingConfig | None = None, temporal_config: TemporalConfig | None = None,
                analysis: SceneAnalysis | None = None) -> dict[str, MetricResult]:
    """Every metric of :data:`METRICS` for one scene (detections computed once).

    Args:
        shots_frames: one uint8 array ``[T_i, H, W, 3]`` per script shot (or None with ``analysis``).
        script: the scene script the video was generated from.
        analysis: a precomputed :func:`analyze_scene` of these frames, to reuse.

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
        "flicker": flicker(None, script, **kw),
        "dynamic_degree": dynamic_degree(None, script, temporal_config=temporal_config, **kw),
        "boundary_smoothness": boundary_smoothness(None, script, temporal_config=temporal_config, **kw),
    }
