"""Synthesise a sharded StoryWorld dataset (resumable, deterministic given the seed)."""

from __future__ import annotations

import dataclasses
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


def redraw_patterns(spec: Any, draw: int) -> Any:
    """``spec`` with every character's unspoken pattern drawn anew (uniformly, reproducibly from the scene seed and
    ``draw``); prompts, shapes, colours, layout and motion stay the same. ``draw = 0`` returns ``spec``."""
    from storyreel.world import PATTERNS

    if draw == 0:
        return spec
    rng = np.random.default_rng([int(spec.seed), 7919, int(draw)])
    names = sorted(PATTERNS)
    chars = tuple(dataclasses.replace(c, pattern=names[int(rng.integers(len(names)))]) for c in spec.characters)
    return dataclasses.replace(spec, characters=chars)


def storyworld_sample(key: str, seed: int, *, pattern_draw: int = 0, **scene_kwargs: Any) -> SceneSample:
    """Sample and render one StoryWorld scene as a :class:`SceneSample`.

    ``scene_kwargs`` go to ``storyreel.world.sample_scene`` (n_shots, resolution, frames, fps,
    long_take_prob). ``pattern_draw > 0`` re-draws the characters' patterns (:func:`redraw_patterns`).
    """
    from storyreel.world import global_prompt, render_scene, sample_scene, shot_prompt

    spec = redraw_patterns(sample_scene(seed, **scene_kwargs), pattern_draw)
    rendered = render_scene(spec)
    n = len(spec.shots)
    meta = dict(spec.to_metadata())
    meta.setdefault("seed", seed)
    if pattern_draw:
        meta["pattern_draw"] = int(pattern_draw)
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


def _item_key(i: int, redraws: int) -> tuple[str, int, int]:
    """Item ``i`` of a dataset with ``redraws`` pattern draws per scene: ``(key, scene index, draw)``."""
    j, k = divmod(i, redraws)
    return (f"{j:08d}" if k == 0 else f"{j:08d}-p{k}"), j, k


def _render_indexed(i: int, *, seed: int, scene_kwargs: dict[str, Any], redraws: int = 1) -> SceneSample:
    """Item ``i`` of a dataset (a picklable worker function for :func:`synth_storyworld`)."""
    key, j, k = _item_key(i, redraws)
    return storyworld_sample(key, scene_seed(seed, j), pattern_draw=k, **scene_kwargs)


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
    pattern_redraws: int = 1,
) -> Path:
    """Write ``n_scenes`` StoryWorld scenes to ``out_dir`` as a sharded dataset; returns ``out_dir``.

    Scene ``j`` has key ``f"{j:08d}"`` and StoryWorld seed :func:`scene_seed` ``(seed, j)``, so
    the dataset is reproducible and the shards are byte-identical across runs. Resumable: a
    re-run with the same arguments keeps verified shards and renders only the rest; a re-run with
    different arguments into the same folder is refused (choose another folder).
    ``resolution`` is (width, height). ``workers > 1`` renders scenes in that many processes (the
    shards stay byte-identical: scenes are written in order by this process).

    ``pattern_redraws = K > 1`` writes every scene K times: as drawn (key ``f"{j:08d}"``), then K - 1 times with its
    characters' unspoken patterns re-drawn (``f"{j:08d}-p{k}"``, :func:`redraw_patterns`). The same prompts then
    come with different patterns, so a model cannot tie a pattern to a scene and has to read it from the other
    shots of the sample (``n_scenes · K`` items in all).
    """
    if isinstance(pattern_redraws, bool) or not isinstance(pattern_redraws, int) or pattern_redraws < 1:
        raise ValueError(f"pattern_redraws must be a positive integer (1: every scene once, as drawn), got {pattern_redraws!r}")
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
    if pattern_redraws > 1:  # (absent otherwise, so datasets written before this option still resume)
        params["pattern_redraws"] = pattern_redraws
    n_items = n_scenes * pattern_redraws
    with ShardWriter(
        out_dir, scenes_per_shard=scenes_per_shard, source="storyworld", params=params, n_scenes=n_items
    ) as writer:
        start = n_items if writer.complete else writer.n_done
        with tqdm(total=n_items, initial=start, disable=not progress, unit="scene", desc="storyworld") as bar:
            todo = range(start, n_items)
            if workers == 1 or len(todo) < 2 * workers:
                for i in todo:
                    writer.add(_render_indexed(i, seed=int(seed), scene_kwargs=scene_kwargs, redraws=pattern_redraws))
                    bar.update(1)
            else:
                import functools
                from concurrent.futures import ProcessPoolExecutor

                render = functools.partial(_render_indexed, seed=int(seed), scene_kwargs=scene_kwargs,
                                           redraws=pattern_redraws)
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    for sample in pool.map(render, todo, chunksize=8):  # ordered: shards as with one process
                        writer.add(sample)
                        bar.update(1)
    return Path(out_dir)
