"""Real-video ingestion: videos → shots → scenes → storyreel scene samples (``docs/ingest.md``).

``ingest_videos(videos, out, config=IngestConfig(...))`` writes the same dataset format as
StoryWorld synthesis (``docs/data.md``), so ``SceneDataset`` and every training recipe read it
unchanged. Shot boundaries come from PySceneDetect, frames from PyAV; the manifest is resumable
per video and records every bad input with its reason.
"""

from storyreel.ingest.cache import DiffusersVAE, SceneCache, resolve_autoencoder, resolve_text_encoder
from storyreel.ingest.captions import (
    CaptionEntry,
    CaptionFile,
    CaptionFileError,
    Captioner,
    VideoCaptions,
    assign_captions,
    format_global_prompt,
    load_captioner,
    load_captions,
)
from storyreel.ingest.config import DETECTORS, IngestConfig
from storyreel.ingest.frames import (
    ClipPlan,
    brightness,
    content_box,
    crop_to_aspect,
    decode_frames,
    keyframe_similarity,
    plan_clip,
    resize_clip,
)
from storyreel.ingest.manifest import IngestWriter
from storyreel.ingest.pipeline import IngestReport, VideoResult, ingest_videos, video_id
from storyreel.ingest.shots import ShotSpan, VideoInputError, VideoProbe, detect_shots, probe_video, scenedetect_cli_args

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
