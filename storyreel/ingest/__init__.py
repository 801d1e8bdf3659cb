"""Real-video ingestion: videos → shots → scenes → storyreel scene samples (``docs/ingest.md``).

``ingest_videos(videos, out, config=IngestConfig(...))`` writes the same dataset format as
StoryWorld synthesis (``docs/data.md``), so ``SceneDataset`` and every training recipe read it
unchanged. Shot boundaries come from PySceneDetect, frames from PyAV; the manifest is resumable
per video and records every bad input with its reason.
"""

import importlib
from typing import Any

# name -> submodule; imported on first use so that `storyreel --help` does not pay for torch / PyAV / OpenCV
_LAZY = {
    "DiffusersVAE": "storyreel.ingest.cache",
    "SceneCache": "storyreel.ingest.cache",
    "resolve_autoencoder": "storyreel.ingest.cache",
    "resolve_text_encoder": "storyreel.ingest.cache",
    "CaptionEntry": "storyreel.ingest.captions",
    "CaptionFile": "storyreel.ingest.captions",
    "CaptionFileError": "storyreel.ingest.captions",
    "Captioner": "storyreel.ingest.captions",
    "VideoCaptions": "storyreel.ingest.captions",
    "assign_captions": "storyreel.ingest.captions",
    "format_global_prompt": "storyreel.ingest.captions",
    "load_captioner": "storyreel.ingest.captions",
    "load_captions": "storyreel.ingest.captions",
    "DETECTORS": "storyreel.ingest.config",
    "IngestConfig": "storyreel.ingest.config",
    "ClipPlan": "storyreel.ingest.frames",
    "brightness": "storyreel.ingest.frames",
    "content_box": "storyreel.ingest.frames",
    "crop_to_aspect": "storyreel.ingest.frames",
    "decode_frames": "storyreel.ingest.frames",
    "keyframe_similarity": "storyreel.ingest.frames",
    "plan_clip": "storyreel.ingest.frames",
    "resize_clip": "storyreel.ingest.frames",
    "IngestWriter": "storyreel.ingest.manifest",
    "IngestReport": "storyreel.ingest.pipeline",
    "VideoResult": "storyreel.ingest.pipeline",
    "ingest_videos": "storyreel.ingest.pipeline",
    "video_id": "storyreel.ingest.pipeline",
    "ShotSpan": "storyreel.ingest.shots",
    "VideoInputError": "storyreel.ingest.shots",
    "VideoProbe": "storyreel.ingest.shots",
    "detect_shots": "storyreel.ingest.shots",
    "probe_video": "storyreel.ingest.shots",
    "scenedetect_cli_args": "storyreel.ingest.shots",
}

__all__ = [
    "DETECTORS",
    "CaptionEntry",
    "CaptionFile",
    "CaptionFileError",
    "Captioner",
    "ClipPlan",
    "DiffusersVAE",
    "IngestConfig",
    "IngestReport",
    "IngestWriter",
    "SceneCache",
    "ShotSpan",
    "VideoCaptions",
    "VideoInputError",
    "VideoProbe",
    "VideoResult",
    "assign_captions",
    "brightness",
    "content_box",
    "crop_to_aspect",
    "decode_frames",
    "detect_shots",
    "format_global_prompt",
    "ingest_videos",
    "keyframe_similarity",
    "load_captioner",
    "load_captions",
    "plan_clip",
    "probe_video",
    "resize_clip",
    "resolve_autoencoder",
    "resolve_text_encoder",
    "scenedetect_cli_args",
    "video_id",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'storyreel.ingest' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
