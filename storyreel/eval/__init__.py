"""Evaluation: pixel metrics for multi-shot StoryWorld video (see ``docs/evaluation.md``) and the
StoryWorld benchmark suites (:mod:`storyreel.eval.bench`, ``docs/bench.md``).

Typical use::

    from storyreel.eval import score_scene, summarize
    scores = score_scene(shots_frames, script)   # shots_frames: one uint8 [T, H, W, 3] per shot
    summarize(scores)                            # {"identity_fidelity": 1.0, ...}
"""

from storyreel.eval.detect import ColorTrack, DetectConfig, ShotDetection, detect_shot, track_confidence
from storyreel.eval.layout import LayoutConfig, box_iou, layout_ap, truth_boxes
from storyreel.eval.metrics import (
    METRICS,
    PATTERN_PRIOR,
    MetricResult,
    SceneAnalysis,
    SettingConfig,
    TemporalConfig,
    analyze_scene,
    appearance_consistency,
    average_precision,
    boundary_smoothness,
    dynamic_degree,
    flicker,
    identity_fidelity,
    motion_smoothness,
    pattern_distribution,
    pool,
    pool_scores,
    score_scene,
    setting_consistency,
    shape_fidelity,
    split_video,
    summarize,
    text_shot_alignment,
)
from storyreel.eval.temporal import motion_compensated_midframes, motion_compensated_neighbours

__all__ = [
    "METRICS",
    "PATTERN_PRIOR",
    "ColorTrack",
    "DetectConfig",
    "LayoutConfig",
    "MetricResult",
    "SceneAnalysis",
    "SettingConfig",
    "ShotDetection",
    "TemporalConfig",
    "analyze_scene",
    "appearance_consistency",
    "average_precision",
    "boundary_smoothness",
    "box_iou",
    "detect_shot",
    "dynamic_degree",
    "flicker",
    "identity_fidelity",
    "layout_ap",
    "motion_compensated_midframes",
    "motion_compensated_neighbours",
    "motion_smoothness",
    "pattern_distribution",
    "pool",
    "pool_scores",
    "score_scene",
    "setting_consistency",
    "shape_fidelity",
    "split_video",
    "summarize",
    "text_shot_alignment",
    "track_confidence",
    "truth_boxes",
]
