"""Video and image I/O (PyAV + Pillow), storyboard contact sheets and frame/tensor conversion.

Videos are H.264 (libx264) in MP4 with the yuv420p pixel format, the combination that every
browser and player accepts. Frames travel through the library as ``uint8`` arrays ``[T, H, W, 3]``
(RGB); models see float tensors ``[T, 3, H, W]`` in ``[-1, 1]``.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

from storyreel.utils import atomic_path

__all__ = [
    "MediaError",
    "frames_to_tensor",
    "make_storyboard",
    "read_image",
    "read_video",
    "tensor_to_frames",
    "video_info",
    "write_image",
    "write_storyboard",
    "write_video",
]

PathLike = str | os.PathLike[str]


class MediaError(ValueError):
    """A video or image file could not be read (corrupt, truncated or not a media file)."""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_frames(frames: Any, *, name: str = "frames") -> np.ndarray:
    """Return ``frames`` as a C-contiguous uint8 array ``[T, H, W, 3]`` or raise ``ValueError``."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{name} must have dtype uint8, got {arr.dtype}; convert float tensors with "
            "storyreel.media.tensor_to_frames(x) first"
        )
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [T, H, W, 3] (RGB), got {tuple(arr.shape)}")
    if arr.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one frame, got shape {tuple(arr.shape)}")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"{name} must have a positive height and width, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


def _check_fps(fps: Any) -> int:
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or int(fps) < 1 or int(fps) > 240:
        raise ValueError(f"fps must be an integer between 1 and 240, got {fps!r}")
    return int(fps)


# --------------------------------------------------------------------------------------------
# video
# --------------------------------------------------------------------------------------------


def write_video(path: PathLike, frames: np.ndarray, fps: int, *, crf: int = 12) -> Path:
    """Write ``frames`` (uint8 ``[T, H, W, 3]``, RGB) as an H.264/yuv420p MP4 at ``path``.

    The file is written atomically (a reader never sees a partial file). ``crf`` is libx264's
    constant rate factor (0 = lossless luma, 51 = worst; the default 12 is visually lossless).
    H and W must be even because yuv420p stores colour at half resolution. Returns ``path``.
    """
    arr = _check_frames(frames)
    fps = _check_fps(fps)
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= int(crf) <= 51:
        raise ValueError(f"crf must be an integer in [0, 51], got {crf!r}")
    t, h, w, _ = arr.shape
    if h % 2 or w % 2:
        raise ValueError(
            f"frames have size {w}x{h} (width x height), but H.264/yuv420p needs an even width and height; "
            f"crop or pad to {w - w % 2}x{h - h % 2} or {w + w % 2}x{h + h % 2} (e.g. frames[:, :{h - h % 2}, :{w - w % 2}])"
        )
    target = Path(path)
    with atomic_path(target, suffix=".mp4") as tmp:
        # faststart puts the index first so that browsers can play while downloading
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width = w
            stream.height = h
            stream.pix_fmt = "yuv420p"
            stream.time_base = Fraction(1, fps)
            stream.options = {"crf": str(int(crf)), "preset": "medium"}
            for i in range(t):
                frame = av.VideoFrame.from_ndarray(arr[i], format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1, fps)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode(None):  # flush the encoder's delayed frames
                container.mux(packet)
    return target


def _open_video(path: PathLike) -> Any:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video file not found: {p}; check the path (it should be an .mp4 written by storyreel)")
    if p.is_dir():
        raise MediaError(f"{p} is a folder, not a video file; pass the path of an .mp4 file")
    try:
        container = av.open(str(p), mode="r")
    except (av.error.FFmpegError, OSError) as err:
        raise MediaError(
            f"cannot read video {p}: {err}. The file is corrupt, truncated or not a video; "
            "re-create it (e.g. re-run the command that wrote it)"
        ) from err
    if not container.streams.video:
        container.close()
        raise MediaError(f"{p} holds no video stream; pass an .mp4 with video (re-create the file)")
    return container


def read_video(path: PathLike) -> np.ndarray:
    """Decode every frame of the video at ``path``; returns uint8 ``[T, H, W, 3]`` (RGB)."""
    p = Path(path)
    container = _open_video(p)
    frames: list[np.ndarray] = []
    try:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
    except av.error.FFmpegError as err:
        raise MediaError(
            f"cannot decode video {p}: {err}. The file is corrupt or truncated; re-create it "
            "(e.g. re-run the command that wrote it)"
        ) from err
    finally:
        container.close()
    if not frames:
        raise MediaError(f"video {p} decoded to zero frames; the file is empty or truncated, re-create it")
    return np.stack(frames, axis=0)  # [T, H, W, 3]


def video_info(path: PathLike) -> dict[str, int | float]:
    """Return ``dict(frames, fps, width, height)`` of the video at ``path``.

    ``fps`` is an int when the rate is whole (always for files written by :func:`write_video`).
    The frame count comes from the container header, or from decoding when the header lacks it.
    """
    p = Path(path)
    container = _open_video(p)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps: int | float = 0
        if rate is not None:
            fps = int(rate) if Fraction(rate).denominator == 1 else float(rate)
        n = int(stream.frames or 0)
        if n <= 0:
            n = sum(1 for _ in container.decode(stream))
        info = {"frames": n, "fps": fps, "width": int(stream.codec_context.width), "height": int(stream.codec_context.height)}
    except av.error.FFmpegError as err:
        raise MediaError(f"cannot read video {p}: {err}. The file is corrupt or truncated; re-create it") from err
    finally:
        container.close()
    return info


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


def write_image(path: PathLike, image: np.ndarray) -> Path:
    """Write a uint8 image ``[H, W, 3]`` (RGB) or ``[H, W]`` (grey) as PNG, atomically. Returns ``path``."""
    arr = np.asarray(image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8, got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ValueError(f"image must have shape [H, W, 3] or [H, W], got {tuple(arr.shape)}")
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    return target


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 ``[H, W, 3]`` (RGB; alpha is dropped, grey is expanded)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image file not found: {p}; check the path")
    try:
        with Image.open(p) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, Image.UnidentifiedImageError) as err:
        raise MediaError(f"cannot read image {p}: {err}. The file is corrupt or not an image; re-create it") from err


# --------------------------------------------------------------------------------------------
# storyboard
# --------------------------------------------------------------------------------------------

_BG = (24, 24, 28)
_FG = (235, 235, 235)
_ACCENT = (250, 200, 80)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines no wider than ``width`` pixels."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        words = paragraph.split()
        line = ""
        for word in words:
            candidate = f"{line} {word}".strip()
            if not line or draw.textlength(candidate, font=font) <= width:
                line = candidate
                continue
            lines.append(line)
            line = word
        # a single word wider than the row is hard-broken by characters
        while line and draw.textlength(line, font=font) > width and len(line) > 1:
            cut = max(1, int(len(line) * width / max(1.0, draw.textlength(line, font=font))))
            hard = textwrap.wrap(line, cut, break_long_words=True)
            lines.extend(hard[:-1])
            line = hard[-1]
        lines.append(line)
    return lines


def _pick_frames(shot: np.ndarray, n: int) -> np.ndarray:
    """Return ``min(n, T)`` evenly spaced frames of ``shot`` (first and last included)."""
    t = shot.shape[0]
    k = min(n, t)
    idx = np.unique(np.round(np.linspace(0, t - 1, k)).astype(np.int64))
    return shot[idx]  # [k, H, W, 3]


def make_storyboard(
    shots: Sequence[np.ndarray],
    prompts: Sequence[str],
    *,
    frames_per_shot: int = 4,
    cell: int = 128,
    title: str | None = None,
) -> np.ndarray:
    """Draw a contact sheet: one row per shot, returns uint8 ``[H_img, W_img, 3]``.

    Each row shows ``frames_per_shot`` evenly spaced frames of the shot (``shots[i]``: uint8
    ``[T_i, H, W, 3]``) upscaled with nearest neighbour so that the frame width is ``cell``
    pixels (height keeps the aspect ratio), the shot number at the left, and ``prompts[i]``
    word-wrapped under the row. An optional ``title`` is drawn on top.
    """
    if len(shots) == 0:
        raise ValueError("shots must hold at least one shot ([T, H, W, 3] uint8 array), got an empty sequence")
    if len(prompts) != len(shots):
        raise ValueError(f"prompts must have one entry per shot: got {len(prompts)} prompts for {len(shots)} shots")
    if isinstance(frames_per_shot, bool) or not isinstance(frames_per_shot, int) or frames_per_shot < 1:
        raise ValueError(f"frames_per_shot must be a positive integer, got {frames_per_shot!r}")
    if isinstance(cell, bool) or not isinstance(cell, int) or not 16 <= cell <= 1024:
        raise ValueError(f"cell must be an integer number of pixels in [16, 1024], got {cell!r}")
    arrays = [_check_frames(s, name=f"shots[{i}]") for i, s in enumerate(shots)]
    h0, w0 = arrays[0].shape[1:3]
    cell_w, cell_h = cell, max(1, round(cell * h0 / w0))

    gap = max(2, cell // 32)
    font_size = max(10, cell // 9)
    font = _font(font_size)
    num_font = _font(max(12, cell // 5))
    title_font = _font(max(12, cell // 6))
    line_h = font_size + max(2, font_size // 4)
    margin = max(28, cell // 3)  # left column with the shot number
    row_w = frames_per_shot * cell_w + (frames_per_shot - 1) * gap
    width = margin + row_w + 2 * gap

    scratch = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    wrapped = [_wrap(scratch, str(p), font, row_w) for p in prompts]
    title_h = (max(12, cell // 6) + 3 * gap) if title else 0
    heights = [gap + cell_h + gap + len(lines) * line_h + 2 * gap for lines in wrapped]
    height = title_h + sum(heights) + gap

    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    y = gap
    if title:
        draw.text((gap * 2, y), str(title), fill=_ACCENT, font=title_font)
        y = title_h
    for i, (arr, lines) in enumerate(zip(arrays, wrapped)):
        top = y + gap
        draw.text((gap, top + cell_h // 2), str(i + 1), fill=_ACCENT, font=num_font, anchor="lm")
        for j, frame in enumerate(_pick_frames(arr, frames_per_shot)):
            img = Image.fromarray(frame).resize((cell_w, cell_h), resample=Image.Resampling.NEAREST)
            canvas.paste(img, (margin + j * (cell_w + gap), top))
        ty = top + cell_h + gap
        for line in lines:
            draw.text((margin, ty), line, fill=_FG, font=font)
            ty += line_h
        y += heights[i]
    return np.asarray(canvas, dtype=np.uint8).copy()


def write_storyboard(
    path: PathLike,
    shots: Sequence[np.ndarray],
    prompts: Sequence[str],
    *,
    frames_per_shot: int = 4,
    cell: int = 128,
    title: str | None = None,
) -> Path:
    """Render :func:`make_storyboard` and write it as PNG at ``path`` (atomically). Returns ``path``."""
    board = make_storyboard(shots, prompts, frames_per_shot=frames_per_shot, cell=cell, title=title)
    return write_image(path, board)


# --------------------------------------------------------------------------------------------
# frames <-> tensors
# --------------------------------------------------------------------------------------------


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[T, H, W, 3]`` -> float32 tensor ``[T, 3, H, W]`` in ``[-1, 1]``."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8, got {frames.dtype}")
        x = frames
    else:
        arr = np.asarray(frames)
        if arr.dtype != np.uint8:
            raise ValueError(f"frames must be uint8, got {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {tuple(x.shape)}")
    x = rearrange(x, "t h w c -> t c h w")
    return x.float().div(127.5).sub(1.0).contiguous()


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """Float tensor ``[T, 3, H, W]`` in ``[-1, 1]`` -> uint8 frames ``[T, H, W, 3]`` (clamped, rounded)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x must have shape [T, 3, H, W], got {tuple(x.shape)}")
    y = x.detach().float().cpu().add(1.0).mul(127.5).clamp(0.0, 255.0).round().to(torch.uint8)
    return rearrange(y, "t c h w -> t h w c").contiguous().numpy()
