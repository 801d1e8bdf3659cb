"""Probe a video file (PyAV) and find its shots with PySceneDetect.

:func:`probe_video` reads only the container and packet timestamps (no decoding) and turns every
unusable input into an :class:`VideoInputError` whose message says what is wrong and how to fix
it: missing, empty, unreadable, without video, without frames, variable frame rate, too small.
:func:`detect_shots` runs PySceneDetect's own ``SceneManager`` with the detectors of an
:class:`~storyreel.ingest.config.IngestConfig`; :func:`scenedetect_cli_args` gives the
``scenedetect`` command line that finds the same boundaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from storyreel.ingest.config import IngestConfig

__all__ = ["ShotSpan", "VideoInputError", "VideoProbe", "detect_shots", "probe_video", "scenedetect_cli_args"]

# A frame interval counts as irregular when it differs from the typical (median) one by more than this fraction;
# a video is variable-frame-rate when more than _VFR_SHARE of its intervals (and at least 3) are irregular.
_VFR_TOLERANCE = 0.1
_VFR_SHARE = 0.01
_CFR_FIX = "re-encode it at a constant rate first, e.g. `ffmpeg -i IN -vf fps=24 -fps_mode cfr OUT.mp4`"


class VideoInputError(ValueError):
    """A video cannot be ingested; the message is the reason recorded in the manifest (with the fix)."""


@dataclass(frozen=True)
class VideoProbe:
    """What the container says about a video (no frame decoded).

    Attributes:
        width, height: coded frame size in pixels.
        fps: frame rate (exact fraction).
        frames: number of frames (video packets).
        duration: seconds covered by the frames (``frames / fps``).
        sar: sample aspect ratio (pixel width / pixel height; 1 for square pixels).
        codec: decoder name.
    """

    width: int
    height: int
    fps: Fraction
    frames: int
    duration: float
    sar: Fraction
    codec: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width, "height": self.height, "fps": f"{self.fps.numerator}/{self.fps.denominator}",
            "fps_float": round(float(self.fps), 6), "frames": self.frames, "duration": round(self.duration, 6),
            "sar": f"{self.sar.numerator}/{self.sar.denominator}", "codec": self.codec,
        }


@dataclass(frozen=True)
class ShotSpan:
    """One detected shot: frames ``start .. end - 1`` of the video (0-based, ``end`` exclusive)."""

    index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def mid(self) -> int:
        """The mid-shot frame: ``start + length // 2``."""
        return self.start + self.length // 2

    def seconds(self, fps: Fraction) -> tuple[float, float]:
        """``(start, end)`` in seconds at ``fps``."""
        return float(self.start / fps), float(self.end / fps)


def probe_video(path: str | os.PathLike[str], *, config: IngestConfig | None = None) -> VideoProbe:
    """Open ``path`` with PyAV and check that it can be ingested.

    Reads packet timestamps only. Raises :class:`VideoInputError` for a missing, empty, unreadable
    or frameless file, a file without a video stream, a variable frame rate (more than 1% of the
    frame intervals differ from the typical one by over 10%), a frame smaller than 2x2, or (given
    ``config``) a frame too small for ``config.size`` under ``config.max_upscale``.
    """
    p = Path(path)
    if not p.exists():
        raise VideoInputError(f"file not found: {p}; check the path")
    if not p.is_file():
        raise VideoInputError(f"{p} is not a regular file (a folder?); pass video files")
    if p.stat().st_size == 0:
        raise VideoInputError("empty file (0 bytes); re-copy or re-download the video")
    try:
        container = av.open(str(p), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise VideoInputError(f"unreadable: {err}; the file is corrupt, truncated or not a video (re-create or re-download it)") from err
    try:
        if not container.streams.video:
            raise VideoInputError("no video stream in the file (audio only?); pass a file with video")
        stream = container.streams.video[0]
        width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        codec = stream.codec_context.name
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        sar = Fraction(sar) if sar else Fraction(1)
        if sar <= 0:
            sar = Fraction(1)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        time_base = stream.time_base
        pts: list[int] = []
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's final flush packet
                    continue
                count += 1
                if packet.pts is not None:
                    pts.append(int(packet.pts))
        except av.error.FFmpegError as err:
            raise VideoInputError(f"unreadable: demuxing failed ({err}); the file is truncated or corrupt (re-create it)") from err
    finally:
        container.close()
    if count == 0:
        raise VideoInputError("the video stream holds no frames (zero-length video); re-create the file")
    if width < 2 or height < 2:
        raise VideoInputError(f"frame size {width}x{height} is unusable; a video needs at least 2x2 pixels")
    if len(pts) == count and count >= 3 and time_base:
        repeated = count - len(set(pts))
        if repeated > max(1, _VFR_SHARE * count):
            raise VideoInputError(
                f"broken timestamps: {repeated} of {count} frames repeat an earlier frame's timestamp, so frame times "
                f"are unknown; {_CFR_FIX}"
            )
        ticks = np.diff(np.sort(np.asarray(pts, dtype=np.int64)))
        ticks = ticks[ticks > 0]
        if ticks.size >= 2:
            typical = float(np.median(ticks))
            irregular = int(np.sum(np.abs(ticks - typical) > _VFR_TOLERANCE * typical))
            if irregular >= 3 and irregular > _VFR_SHARE * ticks.size:
                lo, hi = float(ticks.min() * time_base) * 1000, float(ticks.max() * time_base) * 1000
                raise VideoInputError(
                    f"variable frame rate: {irregular} of {ticks.size} frame intervals differ from the typical "
                    f"{typical * float(time_base) * 1000:.2f} ms (range {lo:.2f}-{hi:.2f} ms); {_CFR_FIX}"
                )
            if not rate:
                rate = Fraction(1) / (Fraction(int(round(typical))) * time_base)
    if not rate or rate <= 0:
        raise VideoInputError(f"the container states no frame rate; {_CFR_FIX}")
    fps = Fraction(rate).limit_denominator(1_000_000)
    probe = VideoProbe(width=width, height=height, fps=fps, frames=count, duration=float(count / fps), sar=sar, codec=codec)
    if config is not None:
        tw, th = config.size
        display_w = width * float(sar)
        scale = max(tw / display_w, th / height)  # smallest upscaling any crop of the full frame needs
        if scale > config.max_upscale + 1e-9:
            raise VideoInputError(
                f"frame size {width}x{height} is too small for the target {tw}x{th}: it needs {scale:.2f}x upscaling "
                f"(max_upscale={config.max_upscale}); choose a smaller --size or allow it with --max-upscale {scale:.2f}"
            )
    return probe


def _detectors(config: IngestConfig) -> list[Any]:
    from scenedetect import AdaptiveDetector, ContentDetector, ThresholdDetector

    out: list[Any] = []
    for name in config.detectors:
        if name == "content":
            out.append(ContentDetector(threshold=float(config.content_threshold), min_scene_len=config.min_scene_len,
                                       luma_only=config.luma_only))
        elif name == "adaptive":
            out.append(AdaptiveDetector(adaptive_threshold=float(config.adaptive_threshold),
                                        min_scene_len=config.min_scene_len, window_width=config.adaptive_window,
                                        min_content_val=float(config.adaptive_min_content_val),
                                        luma_only=config.luma_only))
        else:  # "threshold": the command line's defaults for the final fade and the faded-out time
            out.append(ThresholdDetector(threshold=float(config.fade_threshold), min_scene_len=config.min_scene_len,
                                         add_final_scene=True, min_out_length=0))
    return out


def detect_shots(path: str | os.PathLike[str], config: IngestConfig, *, frames: int | None = None) -> list[ShotSpan]:
    """Shot boundaries of the video at ``path`` with PySceneDetect (``config.detectors``, merged).

    Returns shots covering frames ``0 .. frames - 1`` in order (``frames``: the probed count; by
    default the end PySceneDetect reports). A video without cuts is one shot.
    """
    from scenedetect import SceneManager, open_video
    from scenedetect.video_stream import VideoOpenFailure

    try:
        video = open_video(str(path), backend=config.backend)
    except (VideoOpenFailure, OSError) as err:
        raise VideoInputError(f"PySceneDetect cannot open the video ({err}); re-encode it (e.g. to H.264 MP4)") from err
    manager = SceneManager()
    if config.downscale is not None:
        manager.auto_downscale = False
        manager.downscale = config.downscale
    for det in _detectors(config):
        manager.add_detector(det)
    processed = manager.detect_scenes(video=video)
    if frames is not None and processed < 0.99 * frames - 1:
        other = "opencv" if config.backend == "pyav" else "pyav"
        raise VideoInputError(
            f"PySceneDetect ({config.backend} backend) read only {processed} of {frames} frames; try --backend {other} "
            "or re-encode the video (e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`)"
        )
    scenes = manager.get_scene_list(start_in_scene=True)
    cuts = sorted({int(start.frame_num) for start, _ in scenes} - {0})
    end = int(scenes[-1][1].frame_num) if scenes else 0
    total = int(frames) if frames is not None else end
    cuts = [c for c in cuts if 0 < c < total]
    bounds = [0, *cuts, total]
    return [ShotSpan(index=i, start=a, end=b) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]


def scenedetect_cli_args(config: IngestConfig) -> list[str]:
    """``scenedetect`` command-line arguments (after ``-i VIDEO``) with the same detection settings.

    For example ``["-b", "pyav", "-m", "15", "detect-content", "-t", "27.0"]``; append an output
    command such as ``list-scenes -f out.csv``.
    """
    args = ["-b", config.backend, "-m", str(config.min_scene_len)]
    if config.downscale is not None:
        args += ["-d", str(config.downscale)]
    for name in config.detectors:
        if name == "content":
            args += ["detect-content", "-t", str(float(config.content_threshold))] + (["-l"] if config.luma_only else [])
        elif name == "adaptive":
            args += ["detect-adaptive", "-t", str(float(config.adaptive_threshold)), "-c",
                     str(float(config.adaptive_min_content_val)), "-f", str(config.adaptive_window)]
            args += ["-l"] if config.luma_only else []
        else:
            args += ["detect-threshold", "-t", str(float(config.fade_threshold)), "--min-out-length", "0"]
    return args
