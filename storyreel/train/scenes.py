"""Random access to a scene dataset and a deterministic, resumable visiting order.

Training needs exact resume, so scenes are visited by index in a seeded permutation per epoch
with a position counter (``SceneOrder``), instead of streaming. ``SceneIndex`` scans the tar
shards once (member offsets + the small per-scene JSON record) and reads one scene's bytes on
demand; decoded scenes may be kept in memory for small datasets.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from storyreel.data import DatasetError, SceneSample, decode_scene, read_manifest

__all__ = ["SceneIndex", "SceneOrder", "SceneRecord", "ensure_dataset"]

_SUFFIXES = (".latents.safetensors", ".json", ".npz")


@dataclass(frozen=True)
class SceneRecord:
    """Where one scene lives and its shot structure (no pixels)."""

    key: str
    shard: Path
    members: tuple[tuple[str, int, int], ...]  # (suffix, data offset, size)
    frames: tuple[int, ...]  # frames per shot


def _split(name: str) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


class SceneIndex:
    """Index of every scene of a dataset folder (``manifest.json`` + ``shard-*.tar``), random access by position.

    Args:
        path: the dataset folder.
        cache: keep decoded scenes in memory (all of them; for small datasets), else an LRU of ``lru`` scenes.
    """

    def __init__(self, path: str | os.PathLike[str], *, cache: bool = True, lru: int = 64) -> None:
        manifest = read_manifest(path, verify=False)
        self.root = Path(manifest["root"])
        self.cache_all = cache
        self.lru = lru
        self._cache: OrderedDict[int, SceneSample] = OrderedDict()
        records: list[SceneRecord] = []
        for entry in manifest["shards"]:
            shard = self.root / entry["file"]
            groups: dict[str, list[tuple[str, int, int]]] = {}
            frames: dict[str, tuple[int, ...]] = {}
            order: list[str] = []
            try:
                with tarfile.open(shard, mode="r:") as tar:
                    for member in tar:
                        if not member.isfile() or (split := _split(member.name)) is None:
                            continue
                        key, suffix = split
                        if key not in groups:
                            groups[key] = []
                            order.append(key)
                        groups[key].append((suffix, member.offset_data, member.size))
                        if suffix == ".json":
                            fh = tar.extractfile(member)
                            record = json.loads(fh.read().decode("utf-8")) if fh is not None else {}
                            frames[key] = tuple(int(f) for f in record.get("frames", []))
            except (tarfile.TarError, OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DatasetError(f"cannot index shard {shard}: {err}; re-create the dataset (re-run the command that wrote it)") from err
            for key in order:
                if key not in frames or not frames[key]:
                    raise DatasetError(f"{shard}: scene {key!r} has no JSON record with per-shot frame counts; re-create the dataset")
                records.append(SceneRecord(key=key, shard=shard, members=tuple(groups[key]), frames=frames[key]))
        if not records:
            raise DatasetError(f"dataset {self.root} holds no scenes; synthesise some with `storyreel data synth --out {self.root}`")
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def frames(self, i: int) -> tuple[int, ...]:
        """Frames per shot of scene ``i``."""
        return self.records[i].frames

    def load(self, i: int) -> SceneSample:
        """Decode scene ``i`` (frames ``[T, H, W, 3]`` uint8 per shot)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        rec = self.records[i]
        files: dict[str, bytes] = {}
        try:
            with open(rec.shard, "rb") as fh:
                for suffix, offset, size in rec.members:
                    fh.seek(offset)
                    files[suffix] = fh.read(size)
        except OSError as err:
            raise DatasetError(f"cannot read scene {rec.key!r} from {rec.shard}: {err}") from err
        sample = decode_scene(rec.key, files, where=str(rec.shard))
        self._cache[i] = sample
        if not self.cache_all:
            while len(self._cache) > self.lru:
                self._cache.popitem(last=False)
        return sample


class SceneOrder:
    """Seeded permutation of ``range(n)`` per epoch with a position counter; the whole state is ``(epoch, pos)``."""

    def __init__(self, n: int, *, seed: int) -> None:
        if n < 1:
            raise ValueError(f"SceneOrder needs n >= 1 scenes, got {n}")
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.pos = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)

    def next(self) -> int:
        """The next scene index (a new permutation starts when one is exhausted)."""
        if self.pos >= self.n:
            self.epoch += 1
            self.pos = 0
            self._perm = self._permutation(self.epoch)
        idx = int(self._perm[self.pos])
        self.pos += 1
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(
                f"the data sampler state is for {state['n']} scenes but the dataset has {self.n}; "
                "resume with the same dataset folder (or start a new run)"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.pos = int(state["pos"])
        self._perm = self._permutation(self.epoch)


def ensure_dataset(path: str | os.PathLike[str], synth: Any | None, *, progress: bool = True) -> Path:
    """Return ``path``; if it holds no finished dataset and ``synth`` (a SynthConfig) is given, synthesise it first."""
    from storyreel.data import synth_storyworld

    p = Path(path)
    if (p / "manifest.json").is_file():
        try:
            manifest = json.loads((p / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("complete"):
            return p
    if synth is None:
        raise DatasetError(
            f"no finished dataset at {p} and the recipe has data.synth: null; create it with "
            f"`storyreel data synth --out {p}` or give data.synth parameters"
        )
    synth_storyworld(
        p, n_scenes=synth.n_scenes, seed=synth.seed, scenes_per_shard=synth.scenes_per_shard, n_shots=synth.n_shots,
        resolution=(synth.resolution, synth.resolution), frames=synth.frames, fps=synth.fps,
        long_take_prob=synth.long_take_prob, progress=progress, workers=synth.workers, pattern_redraws=synth.pattern_redraws,
    )
    return p
