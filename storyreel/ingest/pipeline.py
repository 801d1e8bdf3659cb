"""Real videos → storyreel scene samples: shots, scenes, keyframes, captions, cached latents.

Per video: probe (PyAV) → shot boundaries (PySceneDetect) → per shot a fixed-length clip at the
target fps around the mid-shot keyframe, black borders removed, centre-cropped to the target
aspect and resized → consecutive shots grouped into scenes → captions joined → optional latents
and text states → written as ordinary ``SceneSample`` s (``docs/data.md``), committed per video.

Shot filtering and consecutive-shot scene grouping follow the data curation of Mask²DiT (Qi et
al. 2025, "Mask²DiT: Dual Mask-based Diffusion Transformer for Multi-Scene Long Video
Generation"); the mid-shot keyframe follows Captain Cinema (Xiao et al. 2025).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storyreel.data.shards import SceneSample
from storyreel.ingest.cache import SceneCache
from storyreel.ingest.captions import CaptionFile, Captioner, VideoCaptions, assign_captions
from storyreel.ingest.config import IngestConfig
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
from storyreel.ingest.shots import ShotSpan, VideoInputError, VideoProbe, detect_shots, probe_video

__all__ = ["IngestReport", "VideoResult", "ingest_videos", "video_id"]

SHOT_CUT = "[SHOT CUT]"


@dataclass
class VideoResult:
    """What happened to one input video in this run (``status``: done, failed or skipped)."""

    video: str
    path: str
    status: str
    reason: str | None = None
    scenes: int = 0
    shots: int = 0
    kept_shots: int = 0
    frames: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


@dataclass
class IngestReport:
    """Outcome of :func:`ingest_videos`: the dataset folder and one :class:`VideoResult` per input."""

    out: Path
    results: list[VideoResult]
    scene_count: int

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def frames_per_second(self) -> float:
        """Source frames ingested per second of processing (videos done in this run)."""
        done = [r for r in self.results if r.status == "done"]
        secs = sum(r.seconds for r in done)
        return sum(r.frames for r in done) / secs if secs > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.count('done')} video(s) ingested, {self.count('skipped')} skipped (already done), "
                f"{self.count('failed')} failed; the dataset {self.out} holds {self.scene_count} scenes")


def video_id(path: Path, taken: set[str]) -> str:
    """A key-safe id for a video: its file stem (letters, digits, ``_``, ``-``), made unique against ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_-")[:40] or "video"
    if base not in taken:
        return base
    base = f"{base}-{hashlib.sha1(str(path).encode('utf-8')).hexdigest()[:8]}"
    n, candidate = 2, base
    while candidate in taken:
        candidate, n = f"{base}-{n}", n + 1
    return candidate


def _fingerprint(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


@dataclass
class _Shot:
    """A detected shot while it is processed."""

    span: ShotSpan
    info: dict[str, Any]
    plan: ClipPlan | None = None
    raw: np.ndarray | None = None  # [T, H, W, 3] source frames of the clip
    missing: int = 0
    clip: np.ndarray | None = None  # [T, h, w, 3] stored clip
    caption: str = ""

    @property
    def kept(self) -> bool:
        return self.info.get("reason") is None


class _VideoJob:
    """Ingest one video into the writer's current (uncommitted) batch."""

    def __init__(self, *, given: str, path: Path, vid: str, config: IngestConfig, captions: CaptionFile | None,
                 captioner: Captioner | None, cache: SceneCache, writer: IngestWriter) -> None:
        self.given, self.path, self.vid, self.cfg = given, path, vid, config
        self.captions, self.captioner, self.cache, self.writer = captions, captioner, cache, writer
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}

    def _tick(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - t0, 4)
        return now

    def run(self) -> tuple[dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        t = time.perf_counter()
        probe = probe_video(self.path, config=cfg)
        t = self._tick("probe", t)
        spans = detect_shots(self.path, cfg, frames=probe.frames)
        t = self._tick("detect", t)
        texts, caps = self._file_captions(spans, probe)
        if float(probe.fps) < cfg.fps:
            self.warnings.append(f"source frame rate {float(probe.fps):.3f} is below fps={cfg.fps}: clip frames repeat")
        shots = [self._plan(span, probe, texts[span.index]) for span in spans]
        self._decode(shots, probe)
        t = self._tick("decode_and_crop", t)
        scenes = self._group(shots)
        keys = self._write(scenes, shots, probe, caps)
        self._tick("encode_and_write", t)
        kept = [s for s in shots if s.kept]
        uncaptioned = sum(not s.caption for s in kept)
        if (self.captions is not None or self.captioner is not None) and uncaptioned and kept:
            self.warnings.append(f"{uncaptioned} of {len(kept)} kept shot(s) have no caption (empty caption, flagged)")
        if not keys:
            self.warnings.append("no scene passed the filters (see the shots' reasons in the details file)")
        record = {
            "status": "done", "reason": None, "scenes": len(keys), "shots": len(shots), "kept_shots": len(kept),
            "uncaptioned_shots": uncaptioned, "frames": probe.frames, "warnings": list(self.warnings),
        }
        details = {"video": self.given, "path": str(self.path), "id": self.vid, "probe": probe.to_dict(),
                   "detector": cfg.detector_params(), "scenes": keys, "shots": [s.info for s in shots],
                   "warnings": list(self.warnings), "timings": self.timings}
        return record, details

    # ---- captions ------------------------------------------------------------------------------

    def _file_captions(self, spans: list[ShotSpan], probe: VideoProbe) -> tuple[list[str], VideoCaptions | None]:
        texts = [""] * len(spans)
        if self.captions is None:
            return texts, None
        caps = self.captions.lookup(self.given)
        if caps is None:
            self.warnings.append(f"missing caption entries: {self.captions.source} has no entry for this video "
                                 "(add one keyed by its file name); its shots are kept uncaptioned")
            return texts, None
        texts, unmatched = assign_captions(spans, caps.entries, fps=probe.fps)
        if unmatched:
            times = ", ".join(f"{e.start:g}s" for e in unmatched[:5])
            self.warnings.append(f"{len(unmatched)} caption entr(ies) match no shot (at {times}; past the video's end?)")
        if not caps.global_prompt and not caps.scene_globals:
            self.warnings.append("missing caption entries: no global prompt for this video (empty global prompt)")
        return texts, caps

    # ---- shots ---------------------------------------------------------------------------------

    def _plan(self, span: ShotSpan, probe: VideoProbe, text: str) -> _Shot:
        cfg = self.cfg
        a, b = span.seconds(probe.fps)
        info: dict[str, Any] = {"index": span.index, "frames": [span.start, span.end], "times": [round(a, 4), round(b, 4)],
                                "mid": span.mid, "reason": None, "scene": None}
        shot = _Shot(span=span, info=info, caption=text)
        if text:
            info["caption_source"] = "file"
        if b - a < cfg.min_shot_seconds:
            info["reason"] = f"too short: {b - a:.2f} s < min_shot_seconds={cfg.min_shot_seconds}"
            return shot
        plan = plan_clip(span, src_fps=probe.fps, fps=cfg.fps, clip_frames=cfg.clip_frames, hold=cfg.short_shots == "hold")
        if plan is None:
            info["reason"] = (f"shorter than one clip: {span.length} frames ({b - a:.2f} s) cannot hold {cfg.clip_frames} "
                              f"frames at {cfg.fps} fps ({cfg.clip_seconds:.2f} s); use short_shots='hold' to keep it")
            return shot
        shot.plan = plan
        info.update(clip_frames=list(plan.indices), keyframe_index=plan.keyframe_index, held=plan.held)
        return shot

    def _decode(self, shots: list[_Shot], probe: VideoProbe) -> None:
        users: dict[int, list[tuple[_Shot, int]]] = {}
        for shot in shots:
            if shot.plan is not None:
                for k, idx in enumerate(shot.plan.indices):
                    users.setdefault(idx, []).append((shot, k))
                shot.missing = len(shot.plan.indices)
        for idx, frame in decode_frames(self.path, users, fps=probe.fps):
            for shot, k in users[idx]:
                if shot.raw is None:
                    shot.raw = np.empty((len(shot.plan.indices), *frame.shape), dtype=np.uint8)  # [T, H, W, 3]
                shot.raw[k] = frame
                shot.missing -= 1
                if shot.missing == 0:
                    self._finish_shot(shot, probe)
        for shot in shots:
            if shot.plan is not None and shot.clip is None and shot.kept:
                shot.info["reason"] = "its frames could not be decoded (the video ends early: truncated file?)"
                shot.raw = None

    def _finish_shot(self, shot: _Shot, probe: VideoProbe) -> None:
        """Borders, crop, resize, brightness filter and captioner for a shot whose clip frames are decoded."""
        cfg = self.cfg
        raw, shot.raw = shot.raw, None
        box = content_box(raw, threshold=cfg.border_threshold, max_border=cfg.max_border)
        crop = crop_to_aspect(box, cfg.size, sar=probe.sar)
        shot.info.update(content_box=list(box), crop=list(crop))
        scale = max(cfg.size[0] / ((crop[2] - crop[0]) * float(probe.sar)), cfg.size[1] / (crop[3] - crop[1]))
        if scale > cfg.max_upscale + 1e-9:
            shot.info["reason"] = (f"picture area {crop[2] - crop[0]}x{crop[3] - crop[1]} after border removal needs "
                                   f"{scale:.2f}x upscaling (max_upscale={cfg.max_upscale})")
            return
        clip = resize_clip(raw, crop, cfg.size)  # [T, h, w, 3]
        k0 = shot.plan.keyframe_index
        level = brightness(clip[k0])
        shot.info["brightness"] = round(level, 2)
        if level < cfg.min_brightness:
            shot.info["reason"] = f"too dark: keyframe brightness {level:.1f} < min_brightness={cfg.min_brightness}"
            return
        if not shot.caption and self.captioner is not None:
            x0, y0, x1, y1 = crop
            text = self.captioner.caption_shot(np.ascontiguousarray(raw[k0, y0:y1, x0:x1]), clip)
            if not isinstance(text, str):
                raise TypeError(f"captioner.caption_shot returned {type(text).__name__}; it must return a str")
            shot.caption = text.strip()
            if shot.caption:
                shot.info["caption_source"] = "captioner"
        shot.clip = clip

    # ---- scenes --------------------------------------------------------------------------------

    def _group(self, shots: list[_Shot]) -> list[list[_Shot]]:
        cfg = self.cfg
        scenes: list[list[_Shot]] = []
        current: list[_Shot] = []
        gap = False
        for shot in shots:
            if not shot.kept:
                gap = gap or cfg.split_on_dropped
                continue
            split = gap or len(current) >= cfg.max_shots
            if current and cfg.similarity_threshold is not None:
                k_prev, k_new = current[-1].plan.keyframe_index, shot.plan.keyframe_index
                sim = keyframe_similarity(current[-1].clip[k_prev], shot.clip[k_new])
                shot.info["similarity_to_previous"] = round(sim, 4)
                split = split or sim < cfg.similarity_threshold
            if split and current:
                scenes.append(current)
                current = []
            current.append(shot)
            gap = False
        if current:
            scenes.append(current)
        out = []
        for scene in scenes:
            if len(scene) < cfg.min_shots:
                for shot in scene:
                    shot.info["reason"] = f"its scene has {len(scene)} shot(s) < min_shots={cfg.min_shots}"
                    shot.clip = None
            else:
                out.append(scene)
        return out

    def _write(self, scenes: list[list[_Shot]], shots: list[_Shot], probe: VideoProbe, caps: VideoCaptions | None) -> list[str]:
        cfg = self.cfg
        keys = []
        for j, scene in enumerate(scenes):
            key = f"{self.vid}-{j:04d}"
            frames = [s.clip for s in scene]
            captions = [s.caption for s in scene]
            file_global = caps.global_for(scene[0].info["times"][0], scene[-1].info["times"][1]) if caps else ""
            global_prompt, global_source = file_global, "file" if file_global else None
            if not global_prompt and self.captioner is not None and hasattr(self.captioner, "caption_scene"):
                keyframes = [s.clip[s.plan.keyframe_index] for s in scene]
                global_prompt = str(self.captioner.caption_scene(keyframes, captions)).strip()
                global_source = "captioner" if global_prompt else None
            prompts = [f"{SHOT_CUT} {c}" if c else "" for c in captions]
            meta_shots = []
            for i, s in enumerate(scene):
                s.info["scene"] = key
                s.info["captioned"] = bool(s.caption)
                meta_shots.append({
                    "shot": s.span.index, "frames": s.info["frames"], "times": s.info["times"],
                    "clip_frames": list(s.plan.indices), "keyframe_index": s.plan.keyframe_index,
                    "keyframe_frame": s.span.mid, "held": s.plan.held, "content_box": s.info["content_box"],
                    "crop": s.info["crop"], "caption": s.caption, "captioned": bool(s.caption),
                    "caption_source": s.info.get("caption_source"),
                })
            meta = {
                "source": "ingest", "generator": "ingest", "video": self.given, "video_path": str(self.path),
                "video_id": self.vid, "scene_index": j,
                "time_range": [scene[0].info["times"][0], scene[-1].info["times"][1]],
                "frame_range": [scene[0].span.start, scene[-1].span.end],
                "source_fps": probe.to_dict()["fps"], "source_resolution": [probe.width, probe.height],
                "detector": cfg.detector_params(), "shots": meta_shots,
                "uncaptioned_shots": [i for i, c in enumerate(captions) if not c],
                "global_captioned": bool(global_prompt), "global_caption_source": global_source,
            }
            latents = None
            if self.cache.enabled:
                latents = self.cache.encode(frames, global_prompt, prompts)
                meta["cache"] = self.cache.describe()
            sample = SceneSample(
                key=key, global_prompt=global_prompt, shot_prompts=prompts, cuts=[True] * len(scene), frames=frames,
                boxes=[[[] for _ in range(f.shape[0])] for f in frames], meta=meta, fps=cfg.fps, latents=latents,
            )
            self.writer.add(sample)
            keys.append(key)
        for s in shots:
            s.clip = None
        return keys


def ingest_videos(
    videos: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    config: IngestConfig | None = None,
    captions: CaptionFile | str | os.PathLike[str] | None = None,
    captioner: Captioner | None = None,
    autoencoder: Any = None,
    text_encoder: Any = None,
    device: str = "cpu",
    retry_failed: bool = False,
    progress: bool = True,
) -> IngestReport:
    """Ingest ``videos`` into the dataset folder ``out`` (created, or resumed/extended).

    Args:
        videos: video file paths, processed in order.
        out: dataset folder (manifest.json + shard-NNNNNN.tar + videos/<id>.json details).
        config: the :class:`IngestConfig` (default settings when None).
        captions: a caption file (``.json``/``.csv``) or a loaded :class:`CaptionFile`.
        captioner: a :class:`Captioner` for shots the caption file does not cover (or all shots).
        autoencoder: cache latents: a storyreel autoencoder name/folder, ``"default"``, a diffusers
            VAE folder, or any object with ``.encode(video [B, 3, T, H, W] in [-1, 1])``.
        text_encoder: cache text states: ``"minilm"``, ``"hashing"`` or an object with ``.encode(prompts)``.
        device: torch device for the encoders.
        retry_failed: re-try videos recorded as failed even if the file has not changed.
        progress: show a progress bar.

    Videos already ingested into ``out`` are skipped; failed ones are retried when the file changed
    (or with ``retry_failed``). Every bad input is recorded in the manifest with its reason and the
    run goes on. A crash loses at most the video in progress; re-run the same command to finish.
    Returns an :class:`IngestReport`.
    """
    from tqdm.auto import tqdm

    cfg = config if config is not None else IngestConfig()
    if not isinstance(cfg, IngestConfig):
        raise ValueError(f"config must be an IngestConfig, got {type(cfg).__name__}")
    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    if captions is not None and not isinstance(captions, CaptionFile):
        captions = CaptionFile.load(captions)
    if captioner is not None and not callable(getattr(captioner, "caption_shot", None)):
        raise ValueError(f"captioner must have caption_shot(keyframe, clip) -> str; got {type(captioner).__name__}")
    cache = SceneCache(autoencoder=autoencoder, text_encoder=text_encoder, dtype=cfg.latent_dtype, device=device)
    if cache.autoencoder is not None:
        cache.check_size(cfg.size)
    params = {"generator": "ingest", **cfg.to_params(), "cache": cache.describe() if cache.enabled else None}
    writer = IngestWriter(out, params=params, scenes_per_shard=cfg.scenes_per_shard)
    writer.start()
    results: list[VideoResult] = []
    seen: set[str] = set()
    with tqdm(total=len(videos), disable=not progress, unit="video", desc="ingest") as bar:
        for given in videos:
            given_s = str(given)
            path = Path(given_s).expanduser().resolve()
            bar.set_postfix_str(path.name[:30])
            results.append(_one(given_s, path, seen, cfg, captions, captioner, cache, writer, retry_failed))
            seen.add(str(path))
            done = [r for r in results if r.status == "done"]
            secs = sum(r.seconds for r in done)
            if secs > 0:
                bar.set_postfix(scenes=writer.scene_count, fps=f"{sum(r.frames for r in done) / secs:.0f}")
            bar.update(1)
    writer.finish()
    return IngestReport(out=Path(out), results=results, scene_count=writer.scene_count)


def _one(given: str, path: Path, seen: set[str], cfg: IngestConfig, captions: CaptionFile | None,
         captioner: Captioner | None, cache: SceneCache, writer: IngestWriter, retry_failed: bool) -> VideoResult:
    key = str(path)
    fp = _fingerprint(path)
    old = writer.record(key)
    if key in seen or (old is not None and old["status"] == "done"):
        warn = [] if old is None or fp is None or old.get("fingerprint") == fp else [
            "the file changed since it was ingested; its earlier scenes are kept (ingest into a new --out to redo it)"]
        return VideoResult(video=given, path=key, status="skipped", reason="already ingested", warnings=warn)
    if old is not None and old["status"] == "failed" and not retry_failed and old.get("fingerprint") == fp:
        return VideoResult(video=given, path=key, status="skipped", reason=f"failed before: {old.get('reason')}")
    vid = old["id"] if old is not None else video_id(path, writer.used_ids())
    base = {"video": given, "path": key, "id": vid, "fingerprint": fp}
    job = _VideoJob(given=given, path=path, vid=vid, config=cfg, captions=captions, captioner=captioner, cache=cache,
                    writer=writer)
    t0 = time.perf_counter()
    try:
        record, details = job.run()
    except VideoInputError as err:
        reason = str(err)
    except Exception as err:  # noqa: BLE001 - one bad video must not stop the run; the reason is recorded
        reason = f"{type(err).__name__}: {err} (unexpected error while ingesting this video)"
    else:
        seconds = time.perf_counter() - t0
        record = {**base, **record, "seconds": round(seconds, 4)}
        writer.commit(record, details)
        return VideoResult(video=given, path=key, status="done", scenes=record["scenes"], shots=record["shots"],
                           kept_shots=record["kept_shots"], frames=record["frames"], seconds=seconds,
                           warnings=record["warnings"])
    writer.fail({**base, "status": "failed", "reason": reason, "scenes": 0})
    return VideoResult(video=given, path=key, status="failed", reason=reason, seconds=time.perf_counter() - t0)
