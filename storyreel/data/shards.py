"""The scene dataset format: ``manifest.json`` + plain tar shards of (json, npz) scene pairs.

One format for every source: StoryWorld synthesis writes it now, real-video ingestion writes
the same later. See ``docs/data.md`` for the precise specification.

Shards are deterministic: member order, tar headers and the npz zip entries carry no timestamps,
so the same inputs give byte-identical shards (and identical sha256 in the manifest).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storyreel.utils import atomic_path, atomic_write, sha256_file, utc_now

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DatasetError",
    "SceneSample",
    "ShardWriter",
    "decode_scene",
    "encode_scene",
    "iter_shard",
    "iter_shard_raw",
    "read_manifest",
    "shard_name",
]

FORMAT = "storyreel-scenes"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SOURCES = ("storyworld", "ingest")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_SUFFIXES = (".json", ".npz", ".latents.safetensors")


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete, corrupt or of another format version."""


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-000000.tar``."""
    return f"shard-{index:06d}.tar"




# --------------------------------------------------------------------------------------------
# one scene
# --------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SceneSample:
    """One multi-shot scene as stored in a shard.

    Attributes:
        key: unique id inside the dataset (letters, digits, ``_`` and ``-``; used as file stem).
        global_prompt: the scene-level caption (LCT form).
        shot_prompts: one caption per shot (``[SHOT CUT] ...`` where the shot starts with a cut).
        cuts: per shot, whether it starts with a cut (False: continues the previous shot's take).
        frames: per shot uint8 ``[T_i, H, W, 3]`` (RGB); all shots share H and W.
        boxes: per shot, per frame, a list of ``{"label": str, "box": [x0, y0, x1, y1]}``.
        meta: JSON-able source metadata (seed, character table, setting, shot types, events, ...).
        fps: frames per second.
        latents: optional named arrays cached beside the scene (latents, text states).
    """

    key: str
    global_prompt: str
    shot_prompts: list[str]
    cuts: list[bool]
    frames: list[np.ndarray]
    boxes: list[list[list[dict[str, Any]]]]
    meta: dict[str, Any] = field(default_factory=dict)
    fps: int = 8
    latents: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY_RE.match(self.key):
            raise ValueError(f"key must be a non-empty string of letters, digits, '_' or '-', got {self.key!r}")
        n = len(self.frames)
        if n < 1:
            raise ValueError(f"frames must hold at least one shot, got 0 (scene {self.key!r})")
        for name in ("shot_prompts", "cuts", "boxes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per shot ({n}), got {len(getattr(self, name))} (scene {self.key!r})")
        size = None
        for i, f in enumerate(self.frames):
            if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] < 1:
                desc = f"{f.dtype} {tuple(f.shape)}" if isinstance(f, np.ndarray) else type(f).__name__
                raise ValueError(f"frames[{i}] must be a uint8 array [T, H, W, 3] with T >= 1, got {desc} (scene {self.key!r})")
            if size is None:
                size = f.shape[1:3]
            elif f.shape[1:3] != size:
                raise ValueError(f"frames[{i}] has size {f.shape[1:3]} but shot 0 has {size}; all shots share H, W (scene {self.key!r})")
            if len(self.boxes[i]) != f.shape[0]:
                raise ValueError(
                    f"boxes[{i}] must have one list per frame ({f.shape[0]}), got {len(self.boxes[i])} (scene {self.key!r})"
                )
        if not all(isinstance(p, str) for p in self.shot_prompts) or not isinstance(self.global_prompt, str):
            raise ValueError(f"global_prompt and shot_prompts must be strings (scene {self.key!r})")
        self.cuts = [bool(c) for c in self.cuts]
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, np.integer)) or self.fps < 1:
            raise ValueError(f"fps must be a positive integer, got {self.fps!r} (scene {self.key!r})")
        self.fps = int(self.fps)

    @property
    def n_shots(self) -> int:
        """Number of shots."""
        return len(self.frames)

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.frames[0].shape[2]), int(self.frames[0].shape[1])


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` whose zip entries carry a fixed timestamp (byte-deterministic)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode_scene(sample: SceneSample) -> dict[str, bytes]:
    """Serialise a scene to its shard members ``{"<key>.json": ..., "<key>.npz": ..., ...}``."""
    w, h = sample.resolution
    record = {
        "key": sample.key,
        "global_prompt": sample.global_prompt,
        "shot_prompts": list(sample.shot_prompts),
        "cuts": list(sample.cuts),
        "fps": sample.fps,
        "resolution": [w, h],
        "n_shots": sample.n_shots,
        "frames": [int(f.shape[0]) for f in sample.frames],
        "boxes": sample.boxes,
        "meta": sample.meta,
    }
    try:
        text = json.dumps(record, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"scene {sample.key!r}: boxes and meta must be JSON-serialisable ({err}); convert arrays with .tolist()") from err
    files = {
        f"{sample.key}.json": text.encode("utf-8"),
        f"{sample.key}.npz": _npz_bytes({f"shot_{i:02d}": f for i, f in enumerate(sample.frames)}),
    }
    if sample.latents:
        from safetensors.numpy import save

        files[f"{sample.key}.latents.safetensors"] = save({k: np.ascontiguousarray(v) for k, v in sample.latents.items()})
    return files


def decode_scene(key: str, files: Mapping[str, bytes], *, where: str = "shard") -> SceneSample:
    """Inverse of :func:`encode_scene`: build a :class:`SceneSample` from its member bytes."""
    try:
        record = json.loads(files[".json"].decode("utf-8"))
        with np.load(io.BytesIO(files[".npz"]), allow_pickle=False) as npz:
            frames = [npz[f"shot_{i:02d}"] for i in range(int(record["n_shots"]))]
    except KeyError as err:
        raise DatasetError(f"{where}: scene {key!r} lacks {err}; the shard is damaged, re-create the dataset") from err
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{where}: scene {key!r} cannot be decoded ({err}); the shard is damaged, re-create the dataset") from err
    latents = None
    if ".latents.safetensors" in files:
        from safetensors.numpy import load

        latents = load(files[".latents.safetensors"])
    return SceneSample(
        key=key,
        global_prompt=record["global_prompt"],
        shot_prompts=record["shot_prompts"],
        cuts=record["cuts"],
        frames=frames,
        boxes=record["boxes"],
        meta=record.get("meta", {}),
        fps=record["fps"],
        latents=latents,
    )


def _split_member(name: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def iter_shard_raw(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {suffix: bytes})`` for each scene of a shard, in stored order (no decoding)."""
    p = Path(path)
    try:
        with tarfile.open(p, mode="r:") as tar:
            key: str | None = None
            group: dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue
                split = _split_member(member.name)
                if split is None:
                    continue
                k, suffix = split
                if key is not None and k != key:
                    yield key, group
                    group = {}
                key = k
                fh = tar.extractfile(member)
                group[suffix] = fh.read() if fh is not None else b""
            if key is not None:
                yield key, group
    except (tarfile.TarError, OSError) as err:
        raise DatasetError(f"cannot read shard {p}: {err}; re-create the dataset (re-run the command that wrote it)") from err


def iter_shard(path: str | os.PathLike[str]) -> Iterator[SceneSample]:
    """Yield every :class:`SceneSample` of a shard file, in stored order."""
    for key, files in iter_shard_raw(path):
        yield decode_scene(key, files, where=str(path))


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------


def _manifest_path(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(path)
    if p.name == MANIFEST and not p.is_dir():
        return p.parent, p
    return p, p / MANIFEST


def read_manifest(path: str | os.PathLike[str], *, verify: bool = True, allow_incomplete: bool = False) -> dict[str, Any]:
    """Load and check a dataset's ``manifest.json`` (``path``: the folder or the manifest itself).

    Checks the format name and version, that the dataset is complete (unless
    ``allow_incomplete``), and that every listed shard exists with the recorded size; with
    ``verify`` also each shard's sha256. Raises :class:`DatasetError` (or ``FileNotFoundError``)
    naming the file and the fix. Returns the manifest dict with ``"root"`` (the folder) added.
    """
    root, manifest = _manifest_path(path)
    hint = "create it with `storyreel data synth --out DIR` (or re-run the command that made it)"
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}; {hint}")
    if not manifest.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {root}: this is not a storyreel dataset or it was never finished; {hint}")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetError(f"{manifest} is not valid JSON ({err}); delete the folder and re-create the dataset") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{manifest} is not a storyreel scene-dataset manifest (format != {FORMAT!r}); point to a dataset folder")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{manifest} has format_version {version!r} but this storyreel reads version {FORMAT_VERSION}; "
            "re-create the dataset with this version (`storyreel data synth ...`) or use a matching storyreel"
        )
    if not data.get("complete", False) and not allow_incomplete:
        raise DatasetError(
            f"dataset {root} is incomplete ({data.get('scene_count', 0)} of {data.get('n_scenes') or '?'} "
            "scenes written): re-run the same command that created it to finish (finished shards are kept)"
        )
    for entry in data.get("shards", []):
        shard = root / entry["file"]
        if not shard.is_file():
            raise DatasetError(
                f"shard {shard} listed in {manifest} is missing; re-run the same `storyreel data synth` command "
                "(it rewrites missing shards) or restore the file"
            )
        if "size" in entry and shard.stat().st_size != entry["size"]:
            raise DatasetError(
                f"shard {shard} has {shard.stat().st_size} bytes but the manifest records {entry['size']} (truncated or "
                "replaced); re-run the same `storyreel data synth` command to rewrite it"
            )
        if verify and sha256_file(shard) != entry["sha256"]:
            raise DatasetError(
                f"shard {shard} fails its sha256 check (corrupt or modified); re-run the same `storyreel data synth` "
                "command to rewrite it"
            )
    data["root"] = str(root)
    return data


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


class ShardWriter:
    """Write scenes into ``shard-NNNNNN.tar`` files plus ``manifest.json``; resumable.

    Use as a context manager and call :meth:`add` once per scene, in a fixed order. Each shard
    is written atomically when it holds ``scenes_per_shard`` scenes, and the manifest is
    rewritten (atomically) after every shard. On a clean exit the last, possibly smaller, shard
    is written and the manifest is marked ``complete``; after an exception only full shards
    remain. Re-opening a folder whose manifest has the same ``source``, ``params`` and
    ``scenes_per_shard`` resumes: verified shards are kept and :attr:`n_done` scenes are
    skipped (the caller starts producing at scene ``n_done``).

    Args:
        out_dir: dataset folder.
        scenes_per_shard: scenes per tar shard (>= 1).
        source: ``"storyworld"`` or ``"ingest"``.
        params: JSON-able generation parameters; a resume requires them to be equal.
        n_scenes: the expected total, if known: :meth:`add` refuses more, and a clean exit with
            fewer leaves the dataset incomplete and raises (so a resume cannot end short).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        scenes_per_shard: int = 256,
        source: str,
        params: Mapping[str, Any],
        n_scenes: int | None = None,
    ) -> None:
        if isinstance(scenes_per_shard, bool) or not isinstance(scenes_per_shard, int) or scenes_per_shard < 1:
            raise ValueError(f"scenes_per_shard must be a positive integer, got {scenes_per_shard!r}")
        if n_scenes is not None and (isinstance(n_scenes, bool) or not isinstance(n_scenes, int) or n_scenes < 0):
            raise ValueError(f"n_scenes must be None or a non-negative integer, got {n_scenes!r}")
        self.n_scenes = n_scenes
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        try:
            self.params: dict[str, Any] = json.loads(json.dumps(dict(params)))  # normalise tuples -> lists
        except (TypeError, ValueError) as err:
            raise ValueError(f"params must be JSON-serialisable: {err}") from err
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"out_dir={str(self.root)!r} exists and is not a folder; choose a folder path")
        self.scenes_per_shard = scenes_per_shard
        self.source = source
        self._buffer: list[dict[str, bytes]] = []
        self._keys: set[str] = set()
        self._shards: list[dict[str, Any]] = []
        self._created = utc_now()
        self._complete = False
        self._closed = False
        self._resume()
        if not (self.root / MANIFEST).is_file():
            self._write_manifest()  # an empty, incomplete manifest marks the folder as ours from the start

    # ---- resume --------------------------------------------------------------------------

    def _resume(self) -> None:
        manifest = self.root / MANIFEST
        if not manifest.is_file():
            if self.root.is_dir() and any(self.root.glob("shard-*.tar")):
                raise ValueError(
                    f"{self.root} holds shard files but no {MANIFEST}; it is not a resumable dataset. "
                    "Choose another --out folder or delete this one"
                )
            return
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{manifest} is not valid JSON ({err}); delete {self.root} or choose another --out folder") from err
        if old.get("format") != FORMAT or old.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{self.root} holds a dataset of another format/version ({old.get('format')!r} v{old.get('format_version')!r}); "
                "choose another --out folder or delete it"
            )
        mine = {
            "source": self.source,
            "scenes_per_shard": self.scenes_per_shard,
            "n_scenes": self.n_scenes,
            "params": self.params,
        }
        theirs = {k: old.get(k) for k in mine}
        if mine != theirs:
            diff = [
                f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in mine if mine[k] != theirs[k] and k != "params"
            ] + [
                f"params.{k}: {old.get('params', {}).get(k)!r} -> {self.params.get(k)!r}"
                for k in sorted(set(self.params) | set(old.get("params") or {}))
                if self.params.get(k) != (old.get("params") or {}).get(k)
            ]
            raise ValueError(
                f"{self.root} already holds a dataset made with different settings ({'; '.join(diff)}); "
                "re-run with the original settings to resume, or choose another --out folder"
            )
        self._created = old.get("created", self._created)
        for i, entry in enumerate(old.get("shards", [])):
            shard = self.root / entry.get("file", "")
            ok = (
                entry.get("file") == shard_name(i)
                and shard.is_file()
                and entry.get("scenes") == self.scenes_per_shard
                and sha256_file(shard) == entry.get("sha256")
            )
            final_partial = (
                old.get("complete")
                and i == len(old["shards"]) - 1
                and shard.is_file()
                and entry.get("file") == shard_name(i)
                and sha256_file(shard) == entry.get("sha256")
            )
            if not (ok or final_partial):
                break  # this shard and every later one are rewritten
            self._shards.append(entry)
            self._keys.update(entry.get("keys", []))
        self._complete = bool(old.get("complete")) and len(self._shards) == len(old.get("shards", []))

    @property
    def n_done(self) -> int:
        """Scenes already stored in verified shards (skip these many scenes when resuming)."""
        return sum(int(e["scenes"]) for e in self._shards)

    @property
    def complete(self) -> bool:
        """True when the dataset in ``out_dir`` is finished (nothing left to add)."""
        return self._complete

    # ---- writing -------------------------------------------------------------------------

    def add(self, sample: SceneSample) -> None:
        """Append one scene; writes a shard whenever ``scenes_per_shard`` scenes are buffered."""
        if self._closed or self._complete:
            raise RuntimeError(
                f"ShardWriter for {self.root} is closed or the dataset is already complete; open a new writer "
                "(a complete dataset needs no more scenes)"
            )
        if not isinstance(sample, SceneSample):
            raise ValueError(f"add() takes a SceneSample, got {type(sample).__name__}")
        if sample.key in self._keys:
            raise ValueError(f"duplicate scene key {sample.key!r}; every scene in a dataset needs a unique key")
        if self.n_scenes is not None and self.n_done + len(self._buffer) >= self.n_scenes:
            raise ValueError(
                f"cannot add scene {sample.key!r}: the writer was opened with n_scenes={self.n_scenes} and would get "
                f"more than n_scenes={self.n_scenes}; raise n_scenes (in a new folder) or add fewer scenes"
            )
        self._keys.add(sample.key)
        self._buffer.append(encode_scene(sample))
        if len(self._buffer) >= self.scenes_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        index = len(self._shards)
        path = self.root / shard_name(index)
        keys: list[str] = []
        with atomic_path(path, suffix=".tar") as tmp:
            with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for files in self._buffer:
                    for name, payload in files.items():
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        info.mtime = 0
                        info.mode = 0o644
                        tar.addfile(info, io.BytesIO(payload))
                    keys.append(next(iter(files)).removesuffix(".json"))
        self._shards.append(
            {"file": path.name, "scenes": len(self._buffer), "size": path.stat().st_size, "sha256": sha256_file(path), "keys": keys}
        )
        self._buffer = []
        self._write_manifest()

    def _write_manifest(self) -> None:
        from storyreel import __version__

        data = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "source": self.source,
            "complete": self._complete,
            "scene_count": self.n_done,
            "n_scenes": self.n_scenes,
            "scenes_per_shard": self.scenes_per_shard,
            "shards": self._shards,
            "params": self.params,
            "storyreel_version": __version__,
            "created": self._created,
            "updated": utc_now(),
        }
        with atomic_write(self.root / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False)
            fh.write("\n")

    def close(self) -> Path:
        """Write the last (partial) shard, mark the manifest complete; returns the folder."""
        if not self._closed:
            if not self._complete:
                total = self.n_done + len(self._buffer)
                if self.n_scenes is not None and total != self.n_scenes:
                    self._closed = True
                    raise ValueError(
                        f"dataset {self.root} expects {self.n_scenes} scenes but {total} were written; "
                        f"the manifest stays incomplete. Re-open the writer and add scenes from index {self.n_done} on"
                    )
                self._flush()
                self._complete = True
                self._write_manifest()
            self._closed = True
        return self.root

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True  # keep only full shards; the buffer is dropped, a re-run redoes it
