"""Layout AP@0.5: do the objects sit where the script (or the StoryWorld ground truth) puts them?

Boxes come from colour segmentation of the frames (:mod:`storyreel.eval.detect`: each palette colour's
body per frame, with a confidence from :func:`~storyreel.eval.detect.track_confidence`) and are matched
against the script's layout boxes (``shots[i].layout``), or, for shots without a layout, against the
boxes of the StoryWorld ground truth of the script (each character's visible pixels per frame).
Average precision at IoU 0.5 as in PASCAL VOC (Everingham et al. 2010) — the box measure the long-take
keyframe paper (WACV 2025) uses for layout following — pooled over every frame of every shot, a
detection matching only a box of its own object. See ``docs/evaluation.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from storyreel.eval.common import AP_BINS, MetricResult, SceneAnalysis, _analysis, _result, _validate
from storyreel.eval.detect import DetectConfig, detect_shot, track_confidence
from storyreel.script import SceneScript
from storyreel.world.describe import parse_description
from storyreel.world.vocab import VocabularyError

if TYPE_CHECKING:
    from storyreel.world.render import RenderedScene

__all__ = ["LayoutConfig", "box_iou", "layout_ap", "truth_boxes"]

Box4 = tuple[float, float, float, float]


@dataclass(frozen=True, kw_only=True)
class LayoutConfig:
    """Settings of :func:`layout_ap`.

    Attributes:
        iou_threshold: a detection matches a ground-truth box of its object at this IoU or more.
        min_visible: ground-truth characters with fewer visible pixels than this (for a 64×64 frame,
            scaled with the frame area) are *ignored*: neither missed when not found nor false when
            found (an object entering by one pixel column, or hidden behind another).
    """

    iou_threshold: float = 0.5
    min_visible: int = 6

    def __post_init__(self) -> None:
        _validate("LayoutConfig", [
            ("iou_threshold", self.iou_threshold, 0 < self.iou_threshold <= 1, "a number in (0, 1]"),
            ("min_visible", self.min_visible, isinstance(self.min_visible, int) and self.min_visible >= 1,
             "an integer >= 1"),
        ])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes ``(x0, y0, x1, y1)`` (``x1``/``y1`` exclusive)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _frame_map(n_from: int, n_to: int) -> np.ndarray:
    """Index into ``n_to`` frames of each of ``n_from`` frames spread over the same shot: int ``[n_from]``."""
    if n_from == 1 or n_to == 1:
        return np.zeros(n_from, dtype=np.int64)
    return np.round(np.arange(n_from) * (n_to - 1) / (n_from - 1)).astype(np.int64)


def _label_color(label: str, characters: dict[int, tuple[str, str]], field: str) -> str:
    """Palette colour of a layout label: ``Character N`` (its global-prompt colour) or ``<colour> <shape>``."""
    words = label.strip().lower().split()
    if len(words) == 2 and words[0] == "character" and words[1].isdigit():
        n = int(words[1])
        if n not in characters:
            raise VocabularyError(field, label, {"characters": [f"Character {k}" for k in sorted(characters)]},
                                  f"Character {n} is not in the global prompt; label boxes with a listed character.")
        return characters[n][0]
    return parse_description(label, field=field)[0]


def truth_boxes(script: SceneScript, shot: int, *, frames: int, height: int, width: int,
                characters: dict[int, tuple[str, str]], truth: RenderedScene | None,
                min_visible: int = 6) -> list[list[tuple[str, Box4, bool]]]:
    """Ground-truth boxes of shot ``shot`` for ``frames`` frames of ``height × width`` pixels.

    From ``script.shots[shot].layout`` when given (a box with ``frame: None`` holds in every frame;
    ``frame`` counts the script's frames of the shot and is mapped onto ``frames``), else from the
    rendered StoryWorld ground truth ``truth`` (each character's visible pixels; ``min_visible`` is
    given for 64×64 and scaled). Returns per frame a list of ``(colour, (x0, y0, x1, y1), ignore)``.
    """
    sh = script.shots[shot]
    out: list[list[tuple[str, Box4, bool]]] = [[] for _ in range(frames)]
    if sh.layout:
        n_script = script.shot_frames(shot)
        where, back = _frame_map(n_script, frames), _frame_map(frames, n_script)  # [n_script], [frames]
        for j, lb in enumerate(sh.layout):
            color = _label_color(lb.label, characters, f"shots[{shot}].layout[{j}].label")
            x0, y0, x1, y1 = lb.box
            box = (x0 * width, y0 * height, x1 * width, y1 * height)
            if lb.frame is None:
                targets = range(frames)
            elif lb.frame < n_script:  # the generated frames that show this script frame (at least one)
                targets = [t for t in range(frames) if back[t] == lb.frame] or [int(where[lb.frame])]
            else:
                raise ValueError(f"shots[{shot}].layout[{j}].frame={lb.frame} is past the shot's {n_script} frames; "
                                 f"use a frame in 0..{n_script - 1} or null (every frame)")
            for t in targets:
                out[t].append((color, box, False))
        return out
    if truth is None:
        raise ValueError(f"shots[{shot}] has no layout; pass the StoryWorld ground truth (truth=render_script(script))")
    gt = truth.shots[shot]
    gh, gw = gt.frames.shape[1:3]
    need = max(1, int(round(min_visible * gh * gw / 64**2)))
    src = _frame_map(frames, gt.frames.shape[0])
    for t in range(frames):
        masks = gt.character_masks[src[t]]  # [gh, gw]: character index of each visible pixel, 0 = none
        for n in np.unique(masks).tolist():
            if n == 0 or n not in characters:
                continue
            ys, xs = np.nonzero(masks == n)
            box = (xs.min() * width / gw, ys.min() * height / gh, (xs.max() + 1) * width / gw, (ys.max() + 1) * height / gh)
            out[t].append((characters[n][0], box, ys.size < need))
    return out


def layout_ap(shots_frames: Sequence[np.ndarray] | None, script: SceneScript, *, config: DetectConfig | None = None,
              analysis: SceneAnalysis | None = None, truth: RenderedScene | None = None,
              layout_config: LayoutConfig | None = None) -> MetricResult:
    """Layout AP@0.5: average precision of the colour detector's boxes against the script's layout.

    Per frame and per object (a palette colour: ``Character N`` through the global prompt, or a
    ``<colour> <shape>`` label), the detected body box is a true positive if it overlaps a
    ground-truth box of the same object with IoU >= ``iou_threshold``, else a false positive; every
    ground-truth box not matched is missed (a character the script names but the frame should not
    show is a false positive when found; with a ``layout:``, only the objects it lists are judged).
    Detections are ranked by
    :func:`~storyreel.eval.detect.track_confidence`; AP is the area under the precision–recall curve
    (:func:`~storyreel.eval.common.average_precision`). Ground truth: ``shots[i].layout`` where the
    script gives one, else the StoryWorld render of the script (``truth``, rendered here when None).
    Frame counts and sizes may differ from the script's (boxes and frames are mapped).

    Items: per shot ``gt`` (boxes to find), ``tp``, ``fp``, ``ignored`` and ``source`` (layout / storyworld).
    """
    a = _analysis(shots_frames, script, analysis, config)
    cfg = config or DetectConfig()
    lcfg = layout_config or LayoutConfig()
    if truth is None and any(not s.layout for s in script.shots):
        from storyreel.world.describe import render_script

        truth = render_script(script)
    totals: dict[str, float] = {"gt": 0.0, **{f"{k}{b:02d}": 0.0 for k in ("tp", "fp") for b in range(AP_BINS)}}
    items: list[dict[str, Any]] = []
    for i, (frames, det) in enumerate(zip(a.frames, a.shots, strict=True)):
        T, H, W = frames.shape[:3]
        gt = truth_boxes(script, i, frames=T, height=H, width=W, characters=a.characters, truth=truth,
                         min_visible=lcfg.min_visible)
        named = [] if script.shots[i].layout else [c for c, _ in a.characters.values()]  # a layout lists what it judges
        colors = list(dict.fromkeys(named + [c for fr in gt for c, _, _ in fr]))
        tracks = dict(det.tracks)
        extra = [c for c in colors if c not in tracks]
        if extra:  # objects the script's characters do not cover (e.g. a "red star" prop box)
            tracks.update(detect_shot(frames, extra, config, setting=a.setting).tracks)
        distance = det.distance if det.distance is not None else detect_shot(frames, [], config, setting=a.setting).distance
        conf = {c: track_confidence(tracks[c], distance, tolerance=cfg.tolerance) for c in colors}
        n_gt = n_tp = n_fp = n_ign = 0
        for t in range(T):
            for c in colors:
                boxes = [(b, ign) for col, b, ign in gt[t] if col == c]
                n_gt += sum(not ign for _, ign in boxes)
                tr = tracks[c]
                if not tr.found[t]:
                    continue
                ious = [box_iou(tr.boxes[t].tolist(), b) for b, _ in boxes]
                k = int(np.argmax(ious)) if ious else -1
                if k >= 0 and ious[k] >= lcfg.iou_threshold and boxes[k][1]:
                    n_ign += 1  # matched an ignored box: neither right nor wrong
                    continue
                hit = k >= 0 and ious[k] >= lcfg.iou_threshold
                b = min(int(conf[c][t] * AP_BINS), AP_BINS - 1)
                totals[f"{'tp' if hit else 'fp'}{b:02d}"] += 1.0
                n_tp, n_fp = n_tp + hit, n_fp + (not hit)
        totals["gt"] += n_gt
        items.append({"shot": i, "gt": n_gt, "tp": n_tp, "fp": n_fp, "ignored": n_ign,
                      "source": "layout" if script.shots[i].layout else "storyworld"})
    return _result("layout_ap", "ap", totals, items)
