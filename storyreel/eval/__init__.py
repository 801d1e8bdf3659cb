"""Evaluation: pixel metrics for multi-shot StoryWorld video (see ``docs/evaluation.md``).

Typical use::

    from storyreel.eval import score_scene, summarize
    scores = score_scene(shots_frames, script)   # shots_frames: one uint8 [T, H, W, 3] per shot
    summarize(scores)                            # {"identity_fidelity": 1.0, ...}
"""

from storyreel.eval.detect import ColorTrack, DetectConfig, ShotDetection, detect_shot
from storyreel.eval.metrics import (
    METRICS,
    PATTERN_PRIOR,
    MetricResult,
    SceneAnalysis,
    SettingConfig,
    TemporalConfig,
    analyze_scene,
    appearance_consistency,
    boundary_smoothness,
    dynamic_degree,
    flicker,
    identity_fidelity,
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

__all__ = [
    "METRICS",
    "PATTERN_PRIOR",
    "ColorTrack",
    "DetectConfig",
    "MetricResult",
    "SceneAnalysis",
    "SettingConfig",
    "ShotDetection",
    "TemporalConfig",
    "analyze_scene",
    "appearance_consistency",
    "boundary_smoothness",
    "detect_shot",
    "dynamic_degree",
    "flicker",
    "identity_fidelity",
    "pattern_distribution",
    "pool",
    "pool_scores",
    "score_scene",
    "setting_consistency",
    "shape_fidelity",
    "split_video",
    "summarize",
    "text_shot_alignment",
]
