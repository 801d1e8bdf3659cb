"""What every metric shares: :class:`MetricResult` (a value with the totals that make it, so scenes
pool exactly), the :class:`SceneAnalysis` of a scene (colour detections of every shot, computed once
and shared by every metric) and the input checks. The metrics themselves live in
:mod:`storyreel.eval.metrics` (which re-exports everything here), :mod:`storyreel.eval.temporal`
and :mod:`storyreel.eval.layout`; see ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storyreel.eval.detect import DetectConfig, ShotDetection, check_frames, detect_shot
from storyreel.script import SceneScript
from storyreel.world.describe import parse_description, parse_setting
from storyreel.world.vocab import PATTERNS

__all__ = [
    "AP_BINS", "PATTERN_PRIOR", "MetricResult", "SceneAnalysis", "analyze_scene", "average_precision", "pool",
    "pool_scores", "split_video", "summarize",
]

#: The sampler draws each character's pattern uniformly (``world/sampler.py``).
PATTERN_PRIOR: dict[str, float] = {p: 1.0 / len(PATTERNS) for p in PATTERNS}

#: Detection confidences are binned into this many equal bins of [0, 1] for average precision, so that
#: the counts per bin (``tpNN`` / ``fpNN`` totals) pool scenes exactly.
AP_BINS = 20


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class MetricResult:
    """One metric on one scene (or pooled over scenes).

    ``value``: the score (NaN when nothing was measurable). ``kind`` says how ``totals`` make the
    value, so results pool exactly: ``fraction`` (hits / count), ``f1`` (tp, fp, fn), ``mean``
    (sum / count), ``setting`` (two fractions averaged, see
    :func:`~storyreel.eval.metrics.setting_consistency`), ``distribution`` (a count per pattern,
    scored against :data:`PATTERN_PRIOR`) or ``ap`` (ground-truth count ``gt`` and true / false
    positives per confidence bin ``tp00..`` / ``fp00..``, see :func:`average_precision`). ``items``:
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
    if kind == "ap":
        return average_precision(totals)
    raise ValueError(f"MetricResult.kind={kind!r} is unknown; allowed: fraction, f1, mean, setting, distribution, ap")


def average_precision(totals: Mapping[str, float]) -> float:
    """Average precision from binned detection counts (PASCAL VOC all-point interpolation).

    ``totals``: ``gt`` (ground-truth boxes to find) and, per confidence bin ``b`` of :data:`AP_BINS`
    (bin ``b`` holds confidences in ``[b, b + 1) / AP_BINS``), ``tp{b:02d}`` / ``fp{b:02d}``: the
    detections of that bin that matched a ground-truth box / did not. Walking the bins from the most
    confident down traces the precision–recall curve; AP is the area under its upper envelope. NaN
    with nothing to find and nothing found; 0 when detections exist but there is nothing to find.
    """
    gt = float(totals.get("gt", 0.0))
    tp = np.array([totals.get(f"tp{b:02d}", 0.0) for b in range(AP_BINS)][::-1], dtype=np.float64)  # [B] confident first
    fp = np.array([totals.get(f"fp{b:02d}", 0.0) for b in range(AP_BINS)][::-1], dtype=np.float64)  # [B]
    if gt <= 0:
        return float("nan") if fp.sum() == 0 and tp.sum() == 0 else 0.0
    keep = (tp + fp) > 0
    ctp, cfp = np.cumsum(tp[keep]), np.cumsum(fp[keep])  # [K] cumulative counts down the confidence bins
    if ctp.size == 0:
        return 0.0
    recall = ctp / gt
    precision = ctp / (ctp + cfp)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # [K] best precision at this recall or beyond
    steps = np.diff(np.concatenate([[0.0], recall]))  # [K] recall gained in each bin
    return float((steps * envelope).sum())


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




def _box3(frames: np.ndarray) -> np.ndarray:
    """3×3 box filter (edge-replicated) of ``[T, H, W, 3]`` -> float32 ``[T, H, W, 3]``."""
    f = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # [T, H+2, W+2, 3]
    H, W = frames.shape[1:3]
    return sum(f[:, dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3)) / 9.0

