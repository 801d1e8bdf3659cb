"""The ingestion settings: one keyword-only dataclass, validated on construction.

Every field that changes the stored samples is part of :meth:`IngestConfig.to_params`, which the
dataset manifest records; resuming into a folder written with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["DETECTORS", "IngestConfig"]

DETECTORS = ("content", "adaptive", "threshold")
"""Shot detectors from PySceneDetect: ``content`` (ContentDetector, fast cuts), ``adaptive``
(AdaptiveDetector, fast cuts robust to camera motion), ``threshold`` (ThresholdDetector, fades
through black)."""

_BACKENDS = ("pyav", "opencv")
_SHORT = ("drop", "hold")
_DTYPES = ("float32", "float16")


def _check(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ValueError(f"IngestConfig.{name}={value!r} is invalid; allowed: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclass(kw_only=True)
class IngestConfig:
    """How videos become scene samples.

    Shot detection (PySceneDetect; the same settings as its command line, see
    :func:`storyreel.ingest.shots.scenedetect_cli_args`):
        detectors: any of ``"content"``, ``"adaptive"``, ``"threshold"``; their cuts are merged.
        content_threshold: ContentDetector ``threshold`` (0-255, CLI ``detect-content -t``).
        adaptive_threshold: AdaptiveDetector ``adaptive_threshold`` (CLI ``detect-adaptive -t``).
        adaptive_min_content_val: AdaptiveDetector ``min_content_val`` (CLI ``detect-adaptive -c``).
        adaptive_window: AdaptiveDetector ``window_width`` in frames (CLI ``detect-adaptive -f``).
        fade_threshold: ThresholdDetector ``threshold`` on mean brightness (CLI ``detect-threshold -t``).
        min_scene_len: the detectors' ``min_scene_len`` in frames (CLI ``-m N``).
        luma_only: content/adaptive detectors look at brightness only.
        backend: the decoder PySceneDetect uses (``"pyav"``: the same decoder as the kept frames,
            so frame numbers agree exactly; ``"opencv"``: faster detection).
        downscale: PySceneDetect's integer downscale factor, ``None`` = its automatic choice.

    Shots (filtering in the style of Mask²DiT's data curation; every dropped shot is recorded
    with its reason):
        clip_frames: frames per stored shot clip (fixed length).
        fps: frame rate of the stored clips (frames are picked from the source at this rate).
        short_shots: a shot too short for the clip is ``"drop"``-ped or its clip is ``"hold"``-padded
            (the first/last frame repeats).
        min_shot_seconds: shots shorter than this are dropped (0 keeps every length).
        min_brightness: shots whose keyframe mean brightness (0-255) is below this are dropped
            (black frames and fades); 0 disables.

    Frames:
        size: ``(width, height)`` of the stored frames.
        border_threshold: brightness (0-255) at or below which edge rows/columns count as black
            borders (letterbox/pillarbox); 0 disables border removal.
        max_border: at most this fraction of the width/height is removed per side as border.
        max_upscale: largest allowed upscaling from the cropped source to ``size``; shots
            (or whole videos) that would need more are dropped with the reason.

    Scenes:
        max_shots: shots per scene sample at most (consecutive shots are grouped up to this).
        min_shots: scene samples with fewer kept shots are dropped (their shots get the reason).
        similarity_threshold: when set, a new scene starts where the colour-histogram similarity
            (0..1) of consecutive shots' keyframes falls below it.
        split_on_dropped: a dropped shot ends the current scene (no gaps inside a scene).

    Output:
        scenes_per_shard: scenes per tar shard (a shard may hold scenes of several videos).
        latent_dtype: dtype of cached latents and text states (``"float32"`` or ``"float16"``).
    """

    detectors: tuple[str, ...] = ("content",)
    content_threshold: float = 27.0
    adaptive_threshold: float = 3.0
    adaptive_min_content_val: float = 15.0
    adaptive_window: int = 2
    fade_threshold: float = 12.0
    min_scene_len: int = 15
    luma_only: bool = False
    backend: str = "pyav"
    downscale: int | None = None

    clip_frames: int = 16
    fps: int = 8
    short_shots: str = "drop"
    min_shot_seconds: float = 0.0
    min_brightness: float = 8.0

    size: tuple[int, int] = (64, 64)
    border_threshold: int = 20
    max_border: float = 0.3
    max_upscale: float = 1.0

    max_shots: int = 8
    min_shots: int = 2
    similarity_threshold: float | None = None
    split_on_dropped: bool = True

    scenes_per_shard: int = 64
    latent_dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.detectors, str):
            self.detectors = (self.detectors,)
        self.detectors = tuple(self.detectors)
        _check(len(self.detectors) >= 1 and all(d in DETECTORS for d in self.detectors), "detectors", self.detectors,
               f"one or more of {list(DETECTORS)}")
        _check(len(set(self.detectors)) == len(self.detectors), "detectors", self.detectors, "each detector at most once")
        _check(_is_num(self.content_threshold) and 0 < self.content_threshold <= 255, "content_threshold",
               self.content_threshold, "a number in (0, 255]")
        _check(_is_num(self.adaptive_threshold) and self.adaptive_threshold > 0, "adaptive_threshold",
               self.adaptive_threshold, "a number > 0")
        _check(_is_num(self.adaptive_min_content_val) and 0 <= self.adaptive_min_content_val <= 255,
               "adaptive_min_content_val", self.adaptive_min_content_val, "a number in [0, 255]")
        _check(_is_int(self.adaptive_window) and self.adaptive_window >= 1, "adaptive_window", self.adaptive_window,
               "an integer >= 1")
        _check(_is_num(self.fade_threshold) and 0 < self.fade_threshold < 255, "fade_threshold", self.fade_threshold,
               "a number in (0, 255)")
        _check(_is_int(self.min_scene_len) and self.min_scene_len >= 1, "min_scene_len", self.min_scene_len,
               "an integer >= 1 (frames)")
        _check(isinstance(self.luma_only, bool), "luma_only", self.luma_only, "True or False")
        _check(self.backend in _BACKENDS, "backend", self.backend, f"one of {list(_BACKENDS)}")
        _check(self.downscale is None or (_is_int(self.downscale) and self.downscale >= 1), "downscale", self.downscale,
               "None (automatic) or an integer >= 1")
        _check(_is_int(self.clip_frames) and 1 <= self.clip_frames <= 1024, "clip_frames", self.clip_frames,
               "an integer in 1..1024")
        _check(_is_int(self.fps) and 1 <= self.fps <= 240, "fps", self.fps, "an integer in 1..240")
        _check(self.short_shots in _SHORT, "short_shots", self.short_shots, f"one of {list(_SHORT)}")
        _check(_is_num(self.min_shot_seconds) and self.min_shot_seconds >= 0, "min_shot_seconds",
               self.min_shot_seconds, "a number >= 0")
        _check(_is_num(self.min_brightness) and 0 <= self.min_brightness < 255, "min_brightness",
               self.min_brightness, "a number in [0, 255)")
        size = tuple(self.size) if isinstance(self.size, (tuple, list)) else self.size
        _check(isinstance(size, tuple) and len(size) == 2 and all(_is_int(s) and 8 <= s <= 4096 for s in size),
               "size", self.size, "(width, height), each an integer in 8..4096")
        self.size = (int(size[0]), int(size[1]))
        _check(_is_int(self.border_threshold) and 0 <= self.border_threshold < 255, "border_threshold",
               self.border_threshold, "an integer in 0..254 (0 disables border removal)")
        _check(_is_num(self.max_border) and 0 <= self.max_border < 0.5, "max_border", self.max_border,
               "a fraction in [0, 0.5)")
        _check(_is_num(self.max_upscale) and self.max_upscale >= 1.0, "max_upscale", self.max_upscale,
               "a number >= 1 (1 = never upscale)")
        _check(_is_int(self.max_shots) and self.max_shots >= 1, "max_shots", self.max_shots, "an integer >= 1")
        _check(_is_int(self.min_shots) and 1 <= self.min_shots <= self.max_shots, "min_shots", self.min_shots,
               f"an integer in 1..max_shots ({self.max_shots})")
        _check(self.similarity_threshold is None or (_is_num(self.similarity_threshold) and 0 <= self.similarity_threshold <= 1),
               "similarity_threshold", self.similarity_threshold, "None or a number in [0, 1]")
        _check(isinstance(self.split_on_dropped, bool), "split_on_dropped", self.split_on_dropped, "True or False")
        _check(_is_int(self.scenes_per_shard) and self.scenes_per_shard >= 1, "scenes_per_shard", self.scenes_per_shard,
               "an integer >= 1")
        _check(self.latent_dtype in _DTYPES, "latent_dtype", self.latent_dtype, f"one of {list(_DTYPES)}")

    @property
    def clip_seconds(self) -> float:
        """Time from the first to the last frame of a clip: ``(clip_frames - 1) / fps``."""
        return (self.clip_frames - 1) / self.fps

    def detector_params(self) -> dict[str, Any]:
        """The shot-detection settings (recorded in every scene's ``meta``)."""
        keys = ("detectors", "content_threshold", "adaptive_threshold", "adaptive_min_content_val", "adaptive_window",
                "fade_threshold", "min_scene_len", "luma_only", "backend", "downscale")
        out = {k: getattr(self, k) for k in keys}
        out["detectors"] = list(self.detectors)
        return out

    def to_params(self) -> dict[str, Any]:
        """JSON-able dict of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["detectors"] = list(self.detectors)
        out["size"] = list(self.size)
        return out
