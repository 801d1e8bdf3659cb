"""Streaming multi-shot scene dataset over tar shards.

Shot windows: a contiguous window of at most ``max_shots`` shots, or Captain Cinema's dynamic
stride sampling (Xiao et al. 2025, "Captain Cinema: Towards Short Movie Generation"): pick a
stride uniformly from those that fit the window into the scene, then a random start, so that
one scene yields context spanning short and long stretches of its story.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import IterableDataset, get_worker_info

from storyreel.data.shards import SceneSample, decode_scene, iter_shard_raw, read_manifest

__all__ = ["SceneDataset", "select_shots", "split_for_worker"]


def select_shots(
    n_shots: int, *, max_shots: int | None, stride_sampling: bool, rng: np.random.Generator
) -> list[int]:
    """Choose which shots of an ``n_shots`` scene to return (sorted 0-based indices).

    Without ``max_shots`` every shot is kept. Otherwise ``k = min(max_shots, n_shots)`` shots:
    a contiguous window at a random start, or, with ``stride_sampling``, shots
    ``start, start + s, ..., start + (k-1) s`` where ``s`` is drawn uniformly from the strides
    that fit (``1 .. (n_shots-1) // (k-1)``) and ``start`` uniformly from the valid starts.
    """
    if n_shots < 1:
        raise ValueError(f"n_shots must be >= 1, got {n_shots}")
    k = n_shots if max_shots is None else min(max_shots, n_shots)
    if stride_sampling and k > 1:
        max_stride = (n_shots - 1) // (k - 1)
        stride = int(rng.integers(1, max_stride + 1))
    else:
        stride = 1
    span = (k - 1) * stride + 1  # shots covered from first to last pick
    start = int(rng.integers(0, n_shots - span + 1))
    return [start + j * stride for j in range(k)]


def split_for_worker(
    shard_sizes: list[int], order: list[int], *, rank: int, world_size: int, worker: int, num_workers: int
) -> list[tuple[int, list[int] | None]]:
    """Assign scenes to one (rank, worker) so that all (rank, worker) pairs cover each scene once.

    ``order`` is the shard visiting order. With at least as many shards as readers
    (``world_size * num_workers``) whole shards are dealt round-robin (``None`` = every scene of
    the shard); with fewer shards, scenes are dealt round-robin by their global position, each
    reader opening every shard but decoding only its own scenes. Returns ``[(shard, positions)]``.
    """
    total = world_size * num_workers
    gid = rank * num_workers + worker
    if not 0 <= gid < total:
        raise ValueError(f"rank={rank}, worker={worker} out of range for world_size={world_size}, num_workers={num_workers}")
    if len(order) >= total:
        return [(s, None) for s in order[gid::total]]
    out: list[tuple[int, list[int] | None]] = []
    offset = 0
    for s in order:
        positions = [p for p in range(shard_sizes[s]) if (offset + p) % total == gid]
        offset += shard_sizes[s]
        if positions:
            out.append((s, positions))
    return out


class SceneDataset(IterableDataset):
    """Stream multi-shot scenes from a dataset folder (``manifest.json`` + ``shard-*.tar``).

    Each item is a dict:
        ``frames``: list over shots of uint8 tensors ``[T_i, 3, H, W]``;
        ``global_prompt``: str; ``shot_prompts``: list[str]; ``cuts``: list[bool];
        ``boxes``: per shot, per frame, list of ``{"label", "box": [x0, y0, x1, y1]}``;
        ``meta``: source metadata; ``key``: scene id; ``fps``: int;
        ``shot_indices``: which stored shots were picked (0-based, increasing);
        ``latents``: dict of numpy arrays, only when the scene has cached latents.
    Prompts, cuts and boxes are those stored for the picked shots (not rewritten for windows).

    Shards are split across DataLoader workers and, when ``torch.distributed`` is initialised
    (or ``rank``/``world_size`` are given), across ranks; every scene is read by exactly one
    reader per epoch (readers may receive different counts). Randomness (shard/scene order,
    shot windows) depends only on ``seed``, the epoch (:meth:`set_epoch`) and the scene key,
    not on the number of workers.

    Args:
        path: dataset folder.
        shuffle: shuffle shard order and scene order within each shard.
        seed: base seed.
        max_shots: return at most this many shots per scene (a window, see :func:`select_shots`).
        shot_stride_sampling: pick the window's shots with a random stride (Captain Cinema).
        verify: check every shard's sha256 when opening (size is always checked).
        rank, world_size: override the distributed rank/world size (default: torch.distributed).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        shuffle: bool = False,
        seed: int = 0,
        max_shots: int | None = None,
        shot_stride_sampling: bool = False,
        verify: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if max_shots is not None and (isinstance(max_shots, bool) or not isinstance(max_shots, int) or max_shots < 1):
            raise ValueError(f"max_shots must be None or a positive integer, got {max_shots!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if (rank is None) != (world_size is None):
            raise ValueError(f"give both rank and world_size or neither, got rank={rank!r}, world_size={world_size!r}")
        if world_size is not None and (world_size < 1 or not 0 <= rank < world_size):  # type: ignore[operator]
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        self.manifest = read_manifest(path, verify=verify)
        self.root = Path(self.manifest["root"])
        self.shard_files = [self.root / e["file"] for e in self.manifest["shards"]]
        self.shard_sizes = [int(e["scenes"]) for e in self.manifest["shards"]]
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.max_shots = max_shots
        self.shot_stride_sampling = bool(shot_stride_sampling)
        self._rank = rank
        self._world_size = world_size
        self.epoch = 0

    @property
    def num_scenes(self) -> int:
        """Total scenes in the dataset (over all ranks and workers)."""
        return sum(self.shard_sizes)

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffling/window randomness for a new epoch (call before iterating)."""
        self.epoch = int(epoch)

    def _distributed(self) -> tuple[int, int]:
        if self._world_size is not None:
            return int(self._rank), int(self._world_size)  # type: ignore[arg-type]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _assignment(self) -> list[tuple[int, list[int] | None]]:
        rank, world = self._distributed()
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = list(range(len(self.shard_files)))
        if self.shuffle:
            order = [int(i) for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        return split_for_worker(self.shard_sizes, order, rank=rank, world_size=world, worker=worker, num_workers=num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for shard, positions in self._assignment():
            path = self.shard_files[shard]
            wanted = None if positions is None else set(positions)
            raw = ((k, f) for p, (k, f) in enumerate(iter_shard_raw(path)) if wanted is None or p in wanted)
            if self.shuffle:
                group = list(raw)  # compressed bytes only; decoded one at a time below
                perm = np.random.default_rng([self.seed, self.epoch, shard]).permutation(len(group))
                raw = (group[int(i)] for i in perm)
            for key, files in raw:
                yield self._item(decode_scene(key, files, where=str(path)))

    def _item(self, sample: SceneSample) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, zlib.crc32(sample.key.encode("utf-8"))])
        picks = select_shots(
            sample.n_shots, max_shots=self.max_shots, stride_sampling=self.shot_stride_sampling, rng=rng
        )
        item: dict[str, Any] = {
            "key": sample.key,
            "frames": [rearrange(torch.from_numpy(sample.frames[i]), "t h w c -> t c h w").contiguous() for i in picks],
            "global_prompt": sample.global_prompt,
            "shot_prompts": [sample.shot_prompts[i] for i in picks],
            "cuts": [sample.cuts[i] for i in picks],
            "boxes": [sample.boxes[i] for i in picks],
            "meta": sample.meta,
            "fps": sample.fps,
            "shot_indices": picks,
        }
        if sample.latents:
            item["latents"] = sample.latents
        return item
