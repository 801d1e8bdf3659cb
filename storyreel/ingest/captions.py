"""Captions for ingested shots: a user's caption file (JSON or CSV) or a pluggable local captioner.

Caption files are keyed by video and shot time and carry a global prompt per video (LCT form:
``Character 1: ... Setting: ... Story: ...``) and per-shot text. Each entry is matched to the
detected shot it overlaps most (a time point: the shot containing it); several entries of one
shot are joined in time order. Shots without any entry keep an empty caption and are flagged,
never dropped. See ``docs/ingest.md`` for the formats.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from storyreel.ingest.shots import ShotSpan

__all__ = [
    "CaptionEntry",
    "CaptionFile",
    "CaptionFileError",
    "Captioner",
    "VideoCaptions",
    "assign_captions",
    "format_global_prompt",
    "load_captioner",
    "load_captions",
]


class CaptionFileError(ValueError):
    """A caption file cannot be read; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class CaptionEntry:
    """One caption of a video: ``text`` over ``start .. end`` seconds (``end=None``: at time ``start``)."""

    start: float
    end: float | None
    text: str


@dataclass
class VideoCaptions:
    """The captions of one video: its global prompt (LCT form, may be empty), shot entries, and
    optional scene-level global prompts over time ranges (``scene_globals``, text = LCT prompt)."""

    global_prompt: str = ""
    entries: list[CaptionEntry] = field(default_factory=list)
    scene_globals: list[CaptionEntry] = field(default_factory=list)

    def global_for(self, start: float, end: float) -> str:
        """The global prompt of a scene spanning ``start .. end`` seconds: the scene-level prompt
        covering at least half of it (the largest overlap wins; a point prompt counts when inside
        the scene), else the video's global prompt."""
        best, best_val = self.global_prompt, 0.0
        for e in self.scene_globals:
            if e.end is None:
                val = (end - start) / 2 if start <= e.start < end else 0.0
            else:
                val = min(end, e.end) - max(start, e.start)
            if val >= (end - start) / 2 and val > best_val:
                best, best_val = e.text, val
        return best


@runtime_checkable
class Captioner(Protocol):
    """A local model that captions shots; plug one in with ``ingest_videos(captioner=...)``.

    ``caption_shot`` gets the shot's keyframe as cropped from the source (uint8 ``[H, W, 3]``,
    borders removed, target aspect, source resolution) and the stored clip (uint8
    ``[T, h, w, 3]`` at the target size) and returns the shot caption ("" = no caption). An
    optional method ``caption_scene(keyframes: list[np.ndarray], shot_captions: list[str]) -> str``
    returns a scene's global prompt (LCT form) from the stored keyframes ``[h, w, 3]``.
    """

    def caption_shot(self, keyframe: np.ndarray, clip: np.ndarray) -> str:
        """Caption of one shot ("" when the model has nothing to say)."""
        ...


def load_captioner(spec: str, **kwargs: Any) -> Captioner:
    """Import a captioner from ``"package.module:Name"``; a class or factory is called with ``kwargs``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"captioner {spec!r} must look like 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import captioner module {module_name!r} ({err}); check the name and PYTHONPATH") from err
    obj = getattr(module, attr, None)
    if obj is None:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}; give the captioner class or factory name")
    factory = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "caption_shot"))
    captioner = obj(**kwargs) if factory else obj
    if not isinstance(captioner, Captioner):
        raise ValueError(f"{spec} does not give a captioner: it needs a method caption_shot(keyframe, clip) -> str")
    return captioner


def format_global_prompt(value: Any, *, where: str = "global") -> str:
    """A global prompt in LCT form from a string (kept as is) or a mapping with ``characters``,
    ``setting`` and ``story`` (formatted like ``SceneScript.global_prompt_text``)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if not isinstance(value, Mapping):
        raise CaptionFileError(f"{where}: a global prompt is a string or a mapping with characters/setting/story, "
                               f"got {type(value).__name__}")
    from storyreel.script import ScriptError, parse_script

    data = dict(value)
    chars = data.get("characters")
    if isinstance(chars, Mapping):  # {"1": "a red circle", ...} shorthand
        data["characters"] = [{"id": int(k), "description": v} for k, v in chars.items() if str(k).isdigit()]
    try:
        script = parse_script({"global": data, "shots": [{"prompt": "shot"}]})
    except ScriptError as err:
        problems = "; ".join(f"{i.loc.replace('global.', '')}: {i.message}" for i in err.errors)
        raise CaptionFileError(f"{where}: {problems}") from None
    return script.global_prompt_text()


def _time(value: Any, where: str, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise CaptionFileError(f"{where}: {name}={value!r} is not a number of seconds") from None
    if not math.isfinite(t) or t < 0:
        raise CaptionFileError(f"{where}: {name}={value!r} must be a finite number of seconds >= 0")
    return t


def _entry(start: Any, end: Any, text: Any, where: str) -> CaptionEntry:
    s, e = _time(start, where, "start"), _time(end, where, "end")
    if s is None:
        raise CaptionFileError(f"{where}: a shot caption needs a start time (seconds); leave start and end empty only for "
                               "the global prompt")
    if e is not None and e <= s:
        raise CaptionFileError(f"{where}: end ({e}) must be after start ({s})")
    if not isinstance(text, str):
        raise CaptionFileError(f"{where}: text must be a string, got {type(text).__name__}")
    return CaptionEntry(start=s, end=e, text=text.strip())


def _rows(rows: Sequence[Mapping[str, Any]], source: str, first_line: int) -> dict[str, VideoCaptions]:
    videos: dict[str, VideoCaptions] = {}
    for n, row in enumerate(rows):
        where = f"{source} line {first_line + n}" if first_line else f"{source}[{n}]"
        video = row.get("video")
        if not isinstance(video, str) or not video.strip():
            raise CaptionFileError(f"{where}: every row needs a video (file name or path)")
        caps = videos.setdefault(video.strip(), VideoCaptions())
        text = row.get("text", row.get("caption"))
        start, end = row.get("start"), row.get("end")
        kind = str(row.get("kind") or "").strip().lower()
        if kind not in ("", "shot", "global"):
            raise CaptionFileError(f"{where}: kind={kind!r}; allowed: shot (default) or global")
        timeless = _time(start, where, "start") is None and _time(end, where, "end") is None
        if timeless and kind != "shot":
            caps.global_prompt = format_global_prompt(text if text is not None else row.get("global"), where=where)
        elif kind == "global":
            scene = _entry(start, end, "", where)
            caps.scene_globals.append(CaptionEntry(scene.start, scene.end, format_global_prompt(text, where=where)))
        else:
            caps.entries.append(_entry(start, end, text, where))
    return videos


def _from_json(data: Any, source: str) -> dict[str, VideoCaptions]:
    if isinstance(data, Mapping) and set(data) == {"videos"}:
        data = data["videos"]
    if isinstance(data, list):
        if not all(isinstance(r, Mapping) for r in data):
            raise CaptionFileError(f"{source}: a list must hold rows like {{\"video\", \"start\", \"end\", \"text\"}}")
        return _rows(data, source, 0)
    if not isinstance(data, Mapping):
        raise CaptionFileError(f"{source}: the top level must be an object keyed by video or a list of rows")
    videos: dict[str, VideoCaptions] = {}
    for video, body in data.items():
        where = f"{source}: {video}"
        if not isinstance(body, Mapping):
            raise CaptionFileError(f"{where}: expected {{\"global\": ..., \"shots\": [...]}}, got {type(body).__name__}")
        unknown = sorted(set(body) - {"global", "shots", "scenes"})
        if unknown:
            raise CaptionFileError(f"{where}: unknown key(s) {unknown}; allowed: global, scenes, shots")
        caps = VideoCaptions(global_prompt=format_global_prompt(body.get("global"), where=f"{where}.global"))
        for k, scene in enumerate(body.get("scenes") or []):
            at = f"{where}.scenes[{k}]"
            if not isinstance(scene, Mapping):
                raise CaptionFileError(f"{at}: expected {{\"start\", \"end\", \"global\"}}")
            span = _entry(scene.get("start", scene.get("time")), scene.get("end"), "", at)
            caps.scene_globals.append(CaptionEntry(span.start, span.end, format_global_prompt(scene.get("global"), where=f"{at}.global")))
        for k, shot in enumerate(body.get("shots") or []):
            if not isinstance(shot, Mapping):
                raise CaptionFileError(f"{where}.shots[{k}]: expected {{\"start\", \"end\", \"text\"}} or {{\"time\", \"text\"}}")
            start = shot.get("start", shot.get("time"))
            caps.entries.append(_entry(start, shot.get("end"), shot.get("text", ""), f"{where}.shots[{k}]"))
        videos[str(video)] = caps
    return videos


class CaptionFile:
    """Captions of many videos, looked up by the video's path, file name or stem."""

    def __init__(self, videos: Mapping[str, VideoCaptions], *, source: str = "<memory>", sha256: str = "") -> None:
        self.videos = dict(videos)
        self.source = source
        self.sha256 = sha256

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CaptionFile:
        """Read a ``.json`` or ``.csv`` caption file (see ``docs/ingest.md``)."""
        p = Path(path)
        if not p.is_file():
            raise CaptionFileError(f"caption file not found: {p}; check the path")
        raw = p.read_bytes()
        text = raw.decode("utf-8-sig")
        if p.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise CaptionFileError(f"{p}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
            videos = _from_json(data, str(p))
        elif p.suffix.lower() == ".csv":
            reader = csv.DictReader(io.StringIO(text))
            fields = set(reader.fieldnames or [])
            if "video" not in fields or not fields & {"text", "caption"}:
                raise CaptionFileError(f"{p}: the CSV header needs the columns video,start,end,text (got {sorted(fields)})")
            videos = _rows(list(reader), str(p), 2)
        else:
            raise CaptionFileError(f"{p}: unknown caption file type {p.suffix!r}; use .json or .csv")
        return cls(videos, source=str(p), sha256=hashlib.sha256(raw).hexdigest())

    def lookup(self, video: str | os.PathLike[str]) -> VideoCaptions | None:
        """Captions of ``video``: the entry keyed by the path as given or the absolute path, else the
        entry whose file name equals the video's, else the entry whose stem (name without suffix) does."""
        given = str(video)
        p = Path(given)
        for key in (given, str(p.resolve())):
            if key in self.videos:
                return self.videos[key]
        for part in ("name", "stem"):
            for key, caps in self.videos.items():
                if getattr(Path(key), part) == getattr(p, part):
                    return caps
        return None


def load_captions(path: str | os.PathLike[str]) -> CaptionFile:
    """Read a caption file (``.json`` or ``.csv``); see :class:`CaptionFile`."""
    return CaptionFile.load(path)


def assign_captions(
    shots: Sequence[ShotSpan], entries: Sequence[CaptionEntry], *, fps: Fraction | float
) -> tuple[list[str], list[CaptionEntry]]:
    """Join caption entries onto shots; returns (text per shot, entries that match no shot).

    A range entry goes to the shot it overlaps most (the earlier shot on a tie); a time point to
    the shot containing it (the last shot for the video's end time). Entries of one shot are joined
    with a space in order of start time; shots without entries get "".
    """
    bounds = [s.seconds(Fraction(fps)) for s in shots]
    found: list[list[tuple[float, int, str]]] = [[] for _ in shots]
    unmatched: list[CaptionEntry] = []
    for n, e in enumerate(entries):
        best, best_val = -1, 0.0
        for i, (a, b) in enumerate(bounds):
            if e.end is None:
                inside = a <= e.start < b or (i == len(bounds) - 1 and math.isclose(e.start, b))
                if inside:
                    best = i
                    break
            else:
                overlap = min(b, e.end) - max(a, e.start)
                if overlap > best_val + 1e-9:
                    best, best_val = i, overlap
        if best < 0:
            unmatched.append(e)
        elif e.text:
            found[best].append((e.start, n, e.text))
    return [" ".join(t for _, _, t in sorted(f)) for f in found], unmatched
