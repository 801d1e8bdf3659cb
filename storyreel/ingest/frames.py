"""Frames of a shot: clip sampling, decoding (PyAV), black-border removal, crop and resize.

The mid-shot keyframe follows Captain Cinema (Xiao et al. 2025, "Captain Cinema: Towards Short
Movie Generation"), which represents each shot by a keyframe; here it is the frame in the middle of
the shot, and every stored clip contains it exactly (see :func:`plan_clip`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from storyreel.ingest.shots import ShotSpan, VideoInputError

__all__ = [
    "ClipPlan",
    "brightness",
    "content_box",
    "crop_to_aspect",
    "decode_frames",
    "keyframe_similarity",
    "plan_clip",
    "resize_clip",
]

_BRIGHT_SHARE = 0.02  # a row/column whose share of bright pixels stays below this in every frame is border


@dataclass(frozen=True)
class ClipPlan:
    """Which source frames make one shot's clip.

    Attributes:
        indices: source frame index of each clip frame (non-decreasing, inside the shot).
        keyframe_index: position in the clip of the mid-shot keyframe (``indices[k] == shot.mid``).
        held: True when the shot was shorter than the clip and edge frames repeat.
    """

    indices: tuple[int, ...]
    keyframe_index: int
    held: bool = False


def _round_half_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def plan_clip(shot: ShotSpan, *, src_fps: Fraction | float, fps: int, clip_frames: int, hold: bool) -> ClipPlan | None:
    """Pick ``clip_frames`` source frames of ``shot`` at ``fps`` around the mid-shot keyframe.

    Clip frame ``k`` is source frame ``shot.mid + round((k - k0) · src_fps / fps)``: frames are taken
    at the target rate (nearest source frame) and the keyframe ``shot.mid`` is clip frame ``k0``,
    chosen as close to ``clip_frames // 2`` as the shot allows. Returns ``None`` when the shot is too
    short for the clip, unless ``hold`` (then indices are clamped into the shot: edge frames repeat).
    """
    step = float(src_fps) / fps  # source frames per clip frame
    n = clip_frames

    def indices(k0: int) -> list[int]:
        return [shot.mid + _round_half_away((k - k0) * step) for k in range(n)]

    best: int | None = None
    for k0 in sorted(range(n), key=lambda k: (abs(k - n // 2), k)):
        idx = indices(k0)
        if idx[0] >= shot.start and idx[-1] <= shot.end - 1:
            best = k0
            break
    if best is not None:
        return ClipPlan(indices=tuple(indices(best)), keyframe_index=best)
    if not hold:
        return None
    k0 = n // 2
    idx = [min(max(i, shot.start), shot.end - 1) for i in indices(k0)]
    return ClipPlan(indices=tuple(idx), keyframe_index=k0, held=True)


def decode_frames(path: str | os.PathLike[str], wanted: Iterable[int], *, fps: Fraction | float) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the video at ``path`` with PyAV and yield ``(index, frame)`` for each wanted frame index.

    ``frame`` is uint8 RGB ``[H, W, 3]``. A frame's index comes from its timestamp
    (``round((pts - pts_0) · time_base · fps)``, the numbering PySceneDetect uses) or its decode
    position when timestamps are missing; a wanted index skipped by a timestamp gap gets the next
    decoded frame. Decoding stops after the last wanted index; only wanted frames are converted to
    RGB. Wanted indices past the end of the video are not yielded. Raises :class:`VideoInputError`
    when decoding fails.
    """
    want = sorted(set(int(i) for i in wanted))
    if not want:
        return
    last = want[-1]
    pos = 0  # next wanted index to serve
    try:
        container = av.open(str(Path(path)), mode="r")
    except (av.error.FFmpegError, OSError) as err:
        raise VideoInputError(f"unreadable: {err}; re-create or re-download the file") from err
    index = -1
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        pts0: int | None = None
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and tb:
                    if pts0 is None:
                        pts0 = int(frame.pts)
                    derived = _round_half_away(float((int(frame.pts) - pts0) * tb * Fraction(fps)))
                    index = max(derived, index + 1)
                else:
                    index += 1
                if pos < len(want) and want[pos] <= index:
                    rgb = frame.to_ndarray(format="rgb24")
                    while pos < len(want) and want[pos] <= index:  # a gap in timestamps: the next frame stands in
                        yield want[pos], rgb
                        pos += 1
                if index >= last:
                    break
        except av.error.FFmpegError as err:
            raise VideoInputError(
                f"decoding failed after frame {index} ({err}); the file is truncated or corrupt (re-create it)"
            ) from err
    finally:
        container.close()


def _gray(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[T, H, W, 3]`` → uint8 luma ``[T, H, W]`` (ITU-R 601 weights, OpenCV)."""
    import cv2

    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


def content_box(frames: np.ndarray, *, threshold: int, max_border: float) -> tuple[int, int, int, int]:
    """The picture area inside black borders (letterbox / pillarbox) of a clip.

    ``frames``: uint8 ``[T, H, W, 3]``. A row (column) at the edge is border when, in every frame,
    fewer than 2% of its pixels are brighter than ``threshold``; at most ``max_border`` of the
    height (width) is removed per side. Returns ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1``
    exclusive; the full frame when ``threshold`` is 0.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got shape {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    if threshold <= 0:
        return 0, 0, w, h
    bright = _gray(frames) > threshold  # [T, H, W]
    rows = bright.sum(axis=2, dtype=np.int32).max(axis=0) / w  # [H] largest share of bright pixels per row
    cols = bright.sum(axis=1, dtype=np.int32).max(axis=0) / h  # [W] ... per column

    def edge(share: np.ndarray, limit: int) -> int:
        n = 0
        while n < limit and share[n] < _BRIGHT_SHARE:
            n += 1
        return n

    cap_y, cap_x = int(max_border * h), int(max_border * w)
    top, bottom = edge(rows, cap_y), edge(rows[::-1], cap_y)
    left, right = edge(cols, cap_x), edge(cols[::-1], cap_x)
    return left, top, w - right, h - bottom


def crop_to_aspect(box: tuple[int, int, int, int], size: tuple[int, int], *, sar: Fraction | float = 1) -> tuple[int, int, int, int]:
    """Centre-crop ``box`` (``x0, y0, x1, y1``) to the display aspect of ``size`` = ``(width, height)``.

    ``sar`` is the source's sample aspect ratio (pixel width / height), so anamorphic video gets
    the right display aspect after resizing to ``size``.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    target = size[0] / size[1]
    sar_f = float(sar)
    if w * sar_f / h > target:  # too wide: crop the width
        nw = max(1, min(w, round(h * target / sar_f)))
        x0 += (w - nw) // 2
        return x0, y0, x0 + nw, y1
    nh = max(1, min(h, round(w * sar_f / target)))
    y0 += (h - nh) // 2
    return x0, y0, x1, y0 + nh


def resize_clip(frames: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    """Crop ``frames`` (uint8 ``[T, H, W, 3]``) to ``box`` and resize to ``size`` = ``(width, height)``.

    Area averaging when shrinking, bilinear when enlarging. Returns uint8 ``[T, height, width, 3]``.
    """
    import cv2

    x0, y0, x1, y1 = box
    tw, th = size
    shrink = (x1 - x0) >= tw and (y1 - y0) >= th
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((frames.shape[0], th, tw, 3), dtype=np.uint8)
    for t in range(frames.shape[0]):
        out[t] = cv2.resize(frames[t, y0:y1, x0:x1], (tw, th), interpolation=interp)
    return out


def brightness(frame: np.ndarray) -> float:
    """Mean luma (0-255) of a uint8 RGB frame ``[H, W, 3]``."""
    return float(_gray(frame[None]).mean())


def keyframe_similarity(a: np.ndarray, b: np.ndarray, *, bins: int = 8) -> float:
    """Colour-histogram intersection (0..1) of two uint8 RGB frames ``[H, W, 3]`` (1 = same colours)."""
    def hist(x: np.ndarray) -> np.ndarray:
        q = (x.reshape(-1, 3).astype(np.int64) * bins) // 256  # [H*W, 3] bin per channel
        flat = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
        h = np.bincount(flat, minlength=bins**3).astype(np.float64)
        return h / h.sum()

    return float(np.minimum(hist(a), hist(b)).sum())
