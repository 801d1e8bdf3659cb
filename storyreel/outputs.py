"""The one writer of a scene run folder, shared by ground-truth rendering and generation.

Layout of a run folder ``OUT``::

    OUT/shots/01.mp4, 01.json, 02.mp4, 02.json, ...   one H.264 clip + sidecar per shot
    OUT/scene.mp4                                    all shots concatenated in order
    OUT/storyboard.png                               contact sheet, one row per shot
    OUT/scene.json                                   meta + per-shot entries (written last)

Every file is written atomically. A shot counts as finished only when its mp4 and sidecar both
exist and the sidecar's sha256 matches the mp4, so an interrupted run can be resumed by
regenerating exactly the shots that :meth:`SceneWriter.finished_shots` does not list.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storyreel.media import _check_fps, _check_frames, read_video, write_storyboard, write_video
from storyreel.utils import atomic_write, sha256_file, utc_now

__all__ = ["SceneWriter", "sha256_file"]

SCENE_FORMAT = "storyreel-scene/1"
_RESERVED = ("format", "fps", "n_shots", "total_frames", "files", "shots", "created")




def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


class SceneWriter:
    """Write the shots, concatenated video, storyboard and ``scene.json`` of one scene run.

    Args:
        out_dir: run folder (created on first write).
        fps: frames per second of every clip written.

    Shot indices ``i`` are 0-based in the API; files are numbered from 1 (``shots/01.mp4``).
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, fps: int) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ValueError(f"out_dir={str(self.out_dir)!r} exists and is not a folder; choose a folder path")
        self.fps = _check_fps(fps)

    # ---- paths ---------------------------------------------------------------------------

    @property
    def shots_dir(self) -> Path:
        """``OUT/shots``."""
        return self.out_dir / "shots"

    def _check_index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or int(i) < 0:
            raise ValueError(f"shot index must be a non-negative integer (0-based), got {i!r}")
        return int(i)

    def shot_path(self, i: int) -> Path:
        """Path of shot ``i`` (0-based): ``OUT/shots/NN.mp4`` with NN = i + 1, two digits."""
        return self.shots_dir / f"{self._check_index(i) + 1:02d}.mp4"

    def sidecar_path(self, i: int) -> Path:
        """Path of shot ``i``'s sidecar: ``OUT/shots/NN.json``."""
        return self.shot_path(i).with_suffix(".json")

    @property
    def scene_path(self) -> Path:
        """``OUT/scene.mp4``."""
        return self.out_dir / "scene.mp4"

    @property
    def storyboard_path(self) -> Path:
        """``OUT/storyboard.png``."""
        return self.out_dir / "storyboard.png"

    @property
    def scene_json_path(self) -> Path:
        """``OUT/scene.json``."""
        return self.out_dir / "scene.json"

    # ---- shots ---------------------------------------------------------------------------

    def write_shot(self, i: int, frames: np.ndarray, *, prompt: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write shot ``i`` (frames uint8 ``[T, H, W, 3]``) and its sidecar; return the sidecar dict.

        The mp4 is written first, then the sidecar (each atomically), so a crash in between leaves
        a shot whose sha256 does not match: it is not counted as finished and will be redone.
        Files of other shots are never touched. ``meta`` must be JSON-serialisable.
        """
        i = self._check_index(i)
        arr = _check_frames(frames)
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict or None, got {type(meta).__name__}")
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta of shot {i} must be JSON-serialisable: {err}; convert arrays with .tolist()") from err
        mp4 = self.shot_path(i)
        write_video(mp4, arr, self.fps)
        sidecar = {
            "index": i,
            "file": mp4.name,
            "prompt": prompt,
            "frames": int(arr.shape[0]),
            "height": int(arr.shape[1]),
            "width": int(arr.shape[2]),
            "fps": self.fps,
            "sha256": sha256_file(mp4),
            "meta": meta if meta is not None else {},
            "created": utc_now(),
        }
        _write_json(self.sidecar_path(i), sidecar)
        return sidecar

    def shot_record(self, i: int) -> dict[str, Any] | None:
        """The sidecar of shot ``i`` if the shot is finished and verified, else ``None``."""
        mp4, side = self.shot_path(i), self.sidecar_path(i)
        if not (mp4.is_file() and side.is_file()):
            return None
        try:
            record = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("index") != int(i) or record.get("file") != mp4.name:
            return None
        if record.get("sha256") != sha256_file(mp4):
            return None
        return record

    def finished_shots(self) -> list[int]:
        """Sorted 0-based indices of shots whose mp4 + sidecar exist and whose sha256 matches."""
        if not self.shots_dir.is_dir():
            return []
        found: list[int] = []
        for side in self.shots_dir.glob("*.json"):
            if not side.stem.isdigit() or int(side.stem) < 1:
                continue
            i = int(side.stem) - 1
            if side.name == self.sidecar_path(i).name and self.shot_record(i) is not None:
                found.append(i)
        return sorted(found)

    def read_shot(self, i: int) -> np.ndarray:
        """Decode shot ``i``; returns uint8 ``[T, H, W, 3]``. Raises if the shot is missing or corrupt."""
        i = self._check_index(i)
        if self.shot_record(i) is None:
            raise FileNotFoundError(
                f"shot {i} ({self.shot_path(i)}) is missing, partial or fails its sha256 check; "
                "write it again with SceneWriter.write_shot (re-run the generation to redo unfinished shots)"
            )
        return read_video(self.shot_path(i))

    # ---- scene ---------------------------------------------------------------------------

    def finalize(self, *, prompts: Sequence[str] | None = None, meta: dict[str, Any]) -> dict[str, Any]:
        """Write ``scene.mp4``, ``storyboard.png`` and ``scene.json``; return the scene.json dict.

        The scene is shots ``0 .. len(prompts) - 1`` (all must be finished; ``prompts=None`` uses
        every finished shot with its recorded prompt). ``meta`` (JSON-serialisable) is merged at
        the top level of scene.json; its keys must not clash with the writer's own keys
        (format, fps, n_shots, total_frames, files, shots, created).
        """
        if not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
        clash = sorted(set(meta) & set(_RESERVED))
        if clash:
            raise ValueError(f"meta keys {clash} are reserved by scene.json; rename them (e.g. put them under meta['extra'])")
        if prompts is None:
            indices = self.finished_shots()
            if not indices or indices != list(range(len(indices))):
                raise ValueError(
                    f"cannot finalize {self.out_dir}: finished shots are {indices}, expected 0..N-1 without gaps; "
                    "write the missing shots first"
                )
        else:
            if isinstance(prompts, str) or len(prompts) == 0:
                raise ValueError("prompts must be a non-empty sequence of strings, one per shot")
            indices = list(range(len(prompts)))
        records = [self.shot_record(i) for i in indices]
        missing = [i for i, r in zip(indices, records) if r is None]
        if missing:
            names = ", ".join(self.shot_path(i).name for i in missing)
            raise ValueError(
                f"cannot finalize {self.out_dir}: shots {missing} ({names}) are missing or fail their sha256 check; "
                "write them with write_shot first (re-running the generation redoes unfinished shots)"
            )
        texts = [str(p) for p in prompts] if prompts is not None else [str(r["prompt"]) for r in records]  # type: ignore[index]
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"meta must be JSON-serialisable: {err}") from err

        shots = [read_video(self.shot_path(i)) for i in indices]
        sizes = {s.shape[1:3] for s in shots}
        if len(sizes) != 1:
            raise ValueError(
                f"shots have different frame sizes {sorted(sizes)}; every shot of a scene must share one "
                "resolution (re-render the odd ones at the scene's resolution)"
            )
        write_video(self.scene_path, np.concatenate(shots, axis=0), self.fps)  # [sum T_i, H, W, 3]
        title = meta.get("title") if isinstance(meta.get("title"), str) else None
        write_storyboard(self.storyboard_path, shots, texts, title=title)
        h, w = shots[0].shape[1:3]
        scene: dict[str, Any] = {
            "format": SCENE_FORMAT,
            **meta,
            "fps": self.fps,
            "n_shots": len(indices),
            "total_frames": int(sum(s.shape[0] for s in shots)),
            "resolution": meta.get("resolution", [int(w), int(h)]),
            "files": {
                "video": self.scene_path.name,
                "video_sha256": sha256_file(self.scene_path),
                "storyboard": self.storyboard_path.name,
            },
            "shots": [
                {
                    "index": i,
                    "prompt": text,
                    "frames": int(s.shape[0]),
                    "file": f"shots/{self.shot_path(i).name}",
                    "sha256": r["sha256"],  # type: ignore[index]
                }
                for i, text, s, r in zip(indices, texts, shots, records)
            ],
            "created": utc_now(),
        }
        _write_json(self.scene_json_path, scene)
        return scene
