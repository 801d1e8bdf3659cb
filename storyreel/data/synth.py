"""Synthesise a sharded StoryWorld dataset (resumable, deterministic given the seed)."""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from storyreel.data.shards import SceneSample, ShardWriter

__all__ = ["scene_seed", "storyworld_sample", "synth_storyworld"]


def scene_seed(seed: int, index: int) -> int:
    """The StoryWorld seed of scene ``index`` of a dataset made with ``seed`` (63-bit, deterministic)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    hi, lo = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


def _box_dict(box: Any) -> dict[str, Any]:
    """``Box(label, x0, y0, x1, y1)`` (namedtuple, dataclass or mapping) -> ``{"label", "box"}``."""
    if isinstance(box, dict):
        d = box
    elif hasattr(box, "_asdict"):
        d = box._asdict()
    elif is_dataclass(box):
        d = asdict(box)
    else:
        d = vars(box)
    coords = [d["x0"], d["y0"], d["x1"], d["y1"]]
    return {"label": str(d["label"]), "box": [float(c) if isinstance(c, (float, np.floating)) else int(c) for c in coords]}


def storyworld_sample(key: str, seed: int, **scene_kwargs: Any) -> SceneSample:
    """Sample and render one StoryWorld scene as a :class:`SceneSample`.

    ``scene_kwargs`` go to ``storyreel.world.sample_scene`` (n_shots, resolution, frames, fps,
    long_take_prob).
    """
    from storyreel.world import global_prompt, render_scene, sample_scene, shot_prompt

    spec = sample_scene(seed, **scene_kwargs)
    rendered = render_scene(spec)
    n = len(spec.shots)
    meta = dict(spec.to_metadata())
    meta.setdefault("seed", seed)
    meta["source"] = "storyworld"
    return SceneSample(
        key=key,
        global_prompt=global_prompt(spec),
        shot_prompts=[shot_prompt(spec, i) for i in range(n)],
        cuts=[bool(spec.shots[i].cut) for i in range(n)],
        frames=[np.ascontiguousarray(rendered.shots[i].frames, dtype=np.uint8) for i in range(n)],
        boxes=[[[_box_dict(b) for b in frame] for frame in rendered.shots[i].boxes] for i in range(n)],
        meta=meta,
        fps=int(scene_kwargs.get("fps", 8)),
    )


def _render_indexed(j: int, *, seed: int, scene_kwargs: dict[str, Any]) -> SceneSample:
    """Scene ``j`` of a dataset (a picklable worker function for :func:`synth_storyworld`)."""
    return storyworld_sample(f"{j:08d}", scene_seed(seed, j), **scene_kwargs)


def synth_storyworld(
    out_dir: str | os.PathLike[str],
    *,
    n_scenes: int,
    seed: int,
    scenes_per_shard: int = 256,
    n_shots: int | None = None,
    resolution: tuple[int, int] = (64, 64),
    frames: int = 16,
    fps: int = 8,
    long_take_prob: float = 0.1,
    progress: bool = True,
    workers: int = 1,
) -> Path:
    """Write ``n_scenes`` StoryWorld scenes to ``out_dir`` as a sharded dataset; returns ``out_dir``.

    Scene ``j`` has key ``f"{j:08d}"`` and StoryWorld seed :func:`scene_seed` ``(seed, j)``, so
    the dataset is reproducible and the shards are byte-identical across runs. Resumable: a
    re-run with the same arguments keeps verified shards and renders only the rest; a re-run with
    different arguments into the same folder is refused (choose another folder).
    ``resolution`` is (width, height). ``workers > 1`` renders scenes in that many processes (the
    shards stay byte-identical: scenes are written in order by this process).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer (processes that render scenes), got {workers!r}")
    if isinstance(n_scenes, bool) or not isinstance(n_scenes, int) or n_scenes < 1:
        raise ValueError(f"n_scenes must be a positive integer, got {n_scenes!r}")
    scene_seed(seed, 0)  # validates seed
    if n_shots is not None and (isinstance(n_shots, bool) or not isinstance(n_shots, int) or n_shots < 1):
        raise ValueError(f"n_shots must be None (random 2-8) or a positive integer, got {n_shots!r}")
    if len(tuple(resolution)) != 2:
        raise ValueError(f"resolution must be (width, height), got {resolution!r}")
    if not 0.0 <= float(long_take_prob) <= 1.0:
        raise ValueError(f"long_take_prob must be in [0, 1], got {long_take_prob!r}")
    scene_kwargs: dict[str, Any] = {
        "n_shots": n_shots,
        "resolution": (int(resolution[0]), int(resolution[1])),
        "frames": int(frames),
        "fps": int(fps),
        "long_take_prob": float(long_take_prob),
    }
    params = {"generator": "storyworld", "n_scenes": n_scenes, "seed": int(seed), **scene_kwargs}
    with ShardWriter(
        out_dir, scenes_per_shard=scenes_per_shard, source="storyworld", params=params, n_scenes=n_scenes
    ) as writer:
        start = n_scenes if writer.complete else writer.n_done
        with tqdm(total=n_scenes, initial=start, disable=not progress, unit="scene", desc="storyworld") as bar:
            todo = range(start, n_scenes)
            if workers == 1 or len(todo) < 2 * workers:
                for j in todo:
                    writer.add(storyworld_sample(f"{j:08d}", scene_seed(seed, j), **scene_kwargs))
                    bar.update(1)
            else:
                import functools
                from concurrent.futures import ProcessPoolExecutor

                render = functools.partial(_render_indexed, seed=int(seed), scene_kwargs=scene_kwargs)
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    for sample in pool.map(render, todo, chunksize=8):  # ordered: shards as with one process
                        writer.add(sample)
                        bar.update(1)
    return Path(out_dir)
