"""Dataset format: shards + manifest, resumable writing, streaming reader, StoryWorld synthesis."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from storyreel.data import (
    DatasetError,
    SceneDataset,
    SceneSample,
    ShardWriter,
    decode_scene,
    encode_scene,
    iter_shard,
    read_manifest,
    scene_seed,
    select_shots,
    split_for_worker,
    synth_storyworld,
)
from storyreel.data import synth as synth_module

PARAMS = {"generator": "test", "n": 1}


def make_sample(j: int, *, n_shots: int | None = None, size: int = 8) -> SceneSample:
    """A small random scene; shot count and frame counts vary with j."""
    rng = np.random.default_rng(j)
    n = n_shots if n_shots is not None else 1 + j % 5
    frames = [rng.integers(0, 256, (2 + (i + j) % 3, size, size, 3), dtype=np.uint8) for i in range(n)]
    boxes = [[[{"label": "Character 1", "box": [t, 0, t + 3, 4]}] for t in range(f.shape[0])] for f in frames]
    return SceneSample(
        key=f"{j:08d}",
        global_prompt=f"Character 1: a red circle. Scene {j}.",
        shot_prompts=[("[SHOT CUT] " if i % 2 == 0 else "") + f"Shot {i} of scene {j}." for i in range(n)],
        cuts=[i % 2 == 0 for i in range(n)],
        frames=frames,
        boxes=boxes,
        meta={"seed": j, "characters": [{"index": 1, "color": "red", "pattern": "dots"}]},
        fps=8,
    )


def write_dataset(path, n: int, per_shard: int, params=PARAMS) -> None:
    with ShardWriter(path, scenes_per_shard=per_shard, source="storyworld", params=params, n_scenes=n) as w:
        for j in range(w.n_done, n):
            w.add(make_sample(j))


def assert_same(a: SceneSample, b: SceneSample) -> None:
    assert a.key == b.key and a.global_prompt == b.global_prompt and a.fps == b.fps
    assert a.shot_prompts == b.shot_prompts and a.cuts == b.cuts and a.boxes == b.boxes and a.meta == b.meta
    assert len(a.frames) == len(b.frames)
    for x, y in zip(a.frames, b.frames):
        assert x.dtype == y.dtype == np.uint8 and np.array_equal(x, y)


# ---- one scene --------------------------------------------------------------------------------


def test_sample_validation():
    good = make_sample(3)
    with pytest.raises(ValueError, match="key"):
        SceneSample(**{**vars(good), "key": "a.b"})
    with pytest.raises(ValueError, match="shot_prompts must have one entry per shot"):
        SceneSample(**{**vars(good), "shot_prompts": ["x"]})
    with pytest.raises(ValueError, match=r"frames\[0\] must be a uint8"):
        SceneSample(**{**vars(good), "frames": [f.astype(np.float32) for f in good.frames]})
    with pytest.raises(ValueError, match=r"boxes\[0\] must have one list per frame"):
        SceneSample(**{**vars(good), "boxes": [b[:-1] for b in good.boxes]})
    odd = [good.frames[0]] + [np.zeros((f.shape[0], 4, 4, 3), np.uint8) for f in good.frames[1:]]
    with pytest.raises(ValueError, match="share H, W"):
        SceneSample(**{**vars(good), "frames": odd})


def test_encode_decode_round_trip_with_latents():
    s = make_sample(4)
    s.latents = {"z": np.arange(12, dtype=np.float32).reshape(3, 4), "text": np.ones((2, 5), np.float16)}
    files = encode_scene(s)
    assert set(files) == {"00000004.json", "00000004.npz", "00000004.latents.safetensors"}
    record = json.loads(files["00000004.json"])
    assert record["frames"] == [f.shape[0] for f in s.frames] and record["resolution"] == [8, 8]
    back = decode_scene("00000004", {k.removeprefix("00000004"): v for k, v in files.items()})
    assert_same(s, back)
    assert set(back.latents) == {"z", "text"} and np.array_equal(back.latents["z"], s.latents["z"])
    assert encode_scene(s) == files  # byte-deterministic (no timestamps)


# ---- writing, reading, resuming ------------------------------------------------------------------


def test_shard_round_trip(tmp_path):
    write_dataset(tmp_path, 7, 3)
    m = read_manifest(tmp_path)
    assert m["format_version"] == 1 and m["source"] == "storyworld" and m["complete"]
    assert m["scene_count"] == 7 and m["params"] == PARAMS
    assert [s["file"] for s in m["shards"]] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [s["scenes"] for s in m["shards"]] == [3, 3, 1]
    got = [s for e in m["shards"] for s in iter_shard(tmp_path / e["file"])]
    assert len(got) == 7
    for j, s in enumerate(got):
        assert_same(make_sample(j), s)
    items = list(SceneDataset(tmp_path))
    assert [it["key"] for it in items] == [f"{j:08d}" for j in range(7)]
    for j, it in enumerate(items):
        ref = make_sample(j)
        assert it["shot_indices"] == list(range(ref.n_shots))
        for x, f in zip(it["frames"], ref.frames):
            assert x.dtype == torch.uint8 and x.shape == (f.shape[0], 3, 8, 8)
            assert torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(f))
        assert it["boxes"] == ref.boxes and it["cuts"] == ref.cuts and it["meta"] == ref.meta


def test_shards_are_byte_identical_across_runs(tmp_path):
    write_dataset(tmp_path / "a", 5, 2)
    write_dataset(tmp_path / "b", 5, 2)
    sha = lambda p: [e["sha256"] for e in read_manifest(p)["shards"]]  # noqa: E731
    assert sha(tmp_path / "a") == sha(tmp_path / "b")


def test_resume_skips_complete_shards(tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with ShardWriter(tmp_path, scenes_per_shard=3, source="storyworld", params=PARAMS, n_scenes=7) as w:
            for j in range(7):
                if j == 5:
                    raise Boom
                w.add(make_sample(j))
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert not m["complete"] and m["scene_count"] == 3 and len(m["shards"]) == 1
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000000.tar"]
    with pytest.raises(DatasetError, match="incomplete.*re-run"):
        read_manifest(tmp_path)
    first = tmp_path / "shard-000000.tar"
    stamp = (first.stat().st_ino, first.stat().st_mtime_ns)

    added = []
    with ShardWriter(tmp_path, scenes_per_shard=3, source="storyworld", params=PARAMS, n_scenes=7) as w:
        assert w.n_done == 3 and not w.complete
        for j in range(w.n_done, 7):
            added.append(j)
            w.add(make_sample(j))
    assert added == [3, 4, 5, 6]
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == stamp  # not rewritten
    write_dataset(tmp_path / "ref", 7, 3)
    resumed, ref = read_manifest(tmp_path), read_manifest(tmp_path / "ref")
    assert [e["sha256"] for e in resumed["shards"]] == [e["sha256"] for e in ref["shards"]]
    # a complete dataset needs nothing more
    with ShardWriter(tmp_path, scenes_per_shard=3, source="storyworld", params=PARAMS, n_scenes=7) as w:
        assert w.complete and w.n_done == 7
        with pytest.raises(RuntimeError, match="complete"):
            w.add(make_sample(7))


def test_resume_rewrites_from_a_damaged_shard(tmp_path):
    write_dataset(tmp_path / "ref", 7, 3)
    write_dataset(tmp_path, 7, 3)
    (tmp_path / "shard-000001.tar").write_bytes(b"garbage")
    with ShardWriter(tmp_path, scenes_per_shard=3, source="storyworld", params=PARAMS, n_scenes=7) as w:
        assert w.n_done == 3 and not w.complete  # shard 1 and everything after it are redone
        for j in range(w.n_done, 7):
            w.add(make_sample(j))
    sha = lambda p: [e["sha256"] for e in read_manifest(p)["shards"]]  # noqa: E731
    assert sha(tmp_path) == sha(tmp_path / "ref")


def test_expected_scene_count_is_enforced(tmp_path):
    with pytest.raises(ValueError, match="expects 4 scenes but 2 were written"):
        with ShardWriter(tmp_path, scenes_per_shard=2, source="ingest", params={}, n_scenes=4) as w:
            w.add(make_sample(0))
            w.add(make_sample(1))
    assert not json.loads((tmp_path / "manifest.json").read_text())["complete"]
    with ShardWriter(tmp_path, scenes_per_shard=2, source="ingest", params={}, n_scenes=4) as w:
        assert w.n_done == 2
        w.add(make_sample(2))
        w.add(make_sample(3))
        with pytest.raises(ValueError, match="more than n_scenes=4"):
            w.add(make_sample(4))
    assert read_manifest(tmp_path)["scene_count"] == 4


def test_resume_with_other_params_is_refused(tmp_path):
    write_dataset(tmp_path, 2, 2)
    with pytest.raises(ValueError, match=r"different settings.*params.n: 1 -> 2.*another --out"):
        ShardWriter(tmp_path, scenes_per_shard=2, source="storyworld", params={**PARAMS, "n": 2}, n_scenes=2)
    with pytest.raises(ValueError, match="scenes_per_shard: 2 -> 3"):
        ShardWriter(tmp_path, scenes_per_shard=3, source="storyworld", params=PARAMS, n_scenes=2)


def test_writer_validation(tmp_path):
    with pytest.raises(ValueError, match="source"):
        ShardWriter(tmp_path, source="youtube", params={})
    with pytest.raises(ValueError, match="scenes_per_shard"):
        ShardWriter(tmp_path, scenes_per_shard=0, source="ingest", params={})
    with ShardWriter(tmp_path / "d", scenes_per_shard=4, source="ingest", params={}) as w:
        w.add(make_sample(0))
        with pytest.raises(ValueError, match="duplicate scene key"):
            w.add(make_sample(0))


def test_manifest_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="storyreel data synth"):
        read_manifest(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        read_manifest(tmp_path)
    write_dataset(tmp_path / "d", 4, 2)
    root = tmp_path / "d"
    manifest = json.loads((root / "manifest.json").read_text())

    (root / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DatasetError, match="format_version 99.*re-create"):
        read_manifest(root)
    (root / "manifest.json").write_text(json.dumps(manifest))

    data = (root / "shard-000001.tar").read_bytes()
    flipped = bytearray(data)
    flipped[700] ^= 0xFF
    (root / "shard-000001.tar").write_bytes(bytes(flipped))
    with pytest.raises(DatasetError, match=r"shard-000001.tar fails its sha256.*re-run"):
        read_manifest(root)
    read_manifest(root, verify=False)  # size still matches: only the sha check sees it
    (root / "shard-000001.tar").write_bytes(data[:-512])
    with pytest.raises(DatasetError, match=r"shard-000001.tar has .* bytes"):
        read_manifest(root, verify=False)
    (root / "shard-000001.tar").unlink()
    with pytest.raises(DatasetError, match=r"shard-000001.tar .* is missing.*re-run"):
        SceneDataset(root)


# ---- worker / rank splitting -----------------------------------------------------------------


@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=7),
    world=st.integers(1, 4),
    workers=st.integers(1, 4),
    data=st.data(),
)
def test_split_covers_every_scene_once(sizes, world, workers, data):
    order = data.draw(st.permutations(list(range(len(sizes)))))
    seen = Counter()
    for rank in range(world):
        for worker in range(workers):
            for shard, positions in split_for_worker(sizes, order, rank=rank, world_size=world, worker=worker, num_workers=workers):
                for p in range(sizes[shard]) if positions is None else positions:
                    seen[(shard, p)] += 1
    assert seen == Counter({(s, p): 1 for s in range(len(sizes)) for p in range(sizes[s])})


@pytest.mark.parametrize("per_shard", [2, 5])  # 4 shards (shard-level split) and 2 shards (scene-level split)
def test_ranks_and_workers_cover_dataset_once(tmp_path, per_shard):
    write_dataset(tmp_path, 8, per_shard)
    keys = []
    for rank in range(2):
        ds = SceneDataset(tmp_path, shuffle=True, seed=3, rank=rank, world_size=2, verify=False)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        keys += [item["key"] for item in loader]
    assert sorted(keys) == [f"{j:08d}" for j in range(8)]


def test_shuffle_is_seeded(tmp_path):
    write_dataset(tmp_path, 9, 3)
    order = lambda **kw: [it["key"] for it in SceneDataset(tmp_path, shuffle=True, **kw)]  # noqa: E731
    assert order(seed=1) == order(seed=1)
    assert sorted(order(seed=1)) == [f"{j:08d}" for j in range(9)]
    assert len({tuple(order(seed=s)) for s in range(5)}) > 1
    ds = SceneDataset(tmp_path, shuffle=True, seed=1)
    epochs = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        epochs.append(tuple(it["key"] for it in ds))
    assert epochs[0] == tuple(order(seed=1)) and len(set(epochs)) > 1


# ---- shot windows -------------------------------------------------------------------------------


@given(n=st.integers(1, 12), k=st.one_of(st.none(), st.integers(1, 12)), stride=st.booleans(), seed=st.integers(0, 2**31))
def test_select_shots_gives_valid_windows(n, k, stride, seed):
    picks = select_shots(n, max_shots=k, stride_sampling=stride, rng=np.random.default_rng(seed))
    want = n if k is None else min(k, n)
    assert len(picks) == want
    assert all(0 <= p < n for p in picks) and picks == sorted(set(picks))
    steps = {b - a for a, b in zip(picks, picks[1:])}
    assert len(steps) <= 1  # evenly strided
    if not stride:
        assert steps <= {1}


def test_stride_sampling_draws_every_fitting_stride():
    rng = np.random.default_rng(0)
    strides, starts = Counter(), Counter()
    for _ in range(600):
        picks = select_shots(9, max_shots=3, stride_sampling=True, rng=rng)
        strides[picks[1] - picks[0]] += 1
        starts[picks[0]] += 1
    assert set(strides) == {1, 2, 3, 4}  # (9 - 1) // (3 - 1) = 4 strides fit
    assert min(strides.values()) > 100  # stride chosen uniformly (~150 each)
    assert set(starts) == set(range(7))


def test_dataset_windows(tmp_path):
    with ShardWriter(tmp_path, scenes_per_shard=4, source="ingest", params={}) as w:
        for j in range(6):
            w.add(make_sample(j, n_shots=6))
    for stride in (False, True):
        ds = SceneDataset(tmp_path, max_shots=3, shot_stride_sampling=stride, seed=5)
        items = list(ds)
        assert len(items) == 6
        for it in items:
            ref = make_sample(int(it["key"]), n_shots=6)
            idx = it["shot_indices"]
            assert len(idx) == 3 and len(it["frames"]) == len(it["shot_prompts"]) == len(it["cuts"]) == 3
            assert it["shot_prompts"] == [ref.shot_prompts[i] for i in idx]
            assert it["boxes"] == [ref.boxes[i] for i in idx]
            for x, i in zip(it["frames"], idx):
                assert torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(ref.frames[i]))
            if not stride:
                assert idx == list(range(idx[0], idx[0] + 3))
        # deterministic given the seed, independent of reading order
        again = {it["key"]: it["shot_indices"] for it in SceneDataset(tmp_path, max_shots=3, shot_stride_sampling=stride, seed=5, shuffle=True)}
        assert again == {it["key"]: it["shot_indices"] for it in items}
    with pytest.raises(ValueError, match="max_shots"):
        SceneDataset(tmp_path, max_shots=0)


# ---- StoryWorld synthesis ----------------------------------------------------------------------


SYNTH = dict(n_shots=3, resolution=(32, 32), frames=3, fps=8, long_take_prob=0.5, progress=False)


def test_scene_seed_is_deterministic_and_distinct():
    assert scene_seed(0, 5) == scene_seed(0, 5)
    assert len({scene_seed(s, j) for s in range(3) for j in range(200)}) == 600
    with pytest.raises(ValueError, match="seed"):
        scene_seed(-1, 0)


def test_synth_storyworld_writes_readable_scenes(tmp_path):
    from storyreel.world import global_prompt, render_scene, sample_scene, shot_prompt

    path = synth_storyworld(tmp_path / "sw", n_scenes=5, seed=7, scenes_per_shard=2, **SYNTH)
    m = read_manifest(path)
    assert m["source"] == "storyworld" and m["scene_count"] == 5 and [e["scenes"] for e in m["shards"]] == [2, 2, 1]
    assert m["params"]["seed"] == 7 and m["params"]["resolution"] == [32, 32]
    items = list(SceneDataset(path))
    assert [it["key"] for it in items] == [f"{j:08d}" for j in range(5)]
    it = items[3]
    spec = sample_scene(scene_seed(7, 3), n_shots=3, resolution=(32, 32), frames=3, fps=8, long_take_prob=0.5)
    ref = render_scene(spec)
    assert it["meta"]["seed"] == scene_seed(7, 3) and it["meta"]["characters"] == spec.to_metadata()["characters"]
    assert it["global_prompt"] == global_prompt(spec)
    assert it["shot_prompts"] == [shot_prompt(spec, i) for i in range(3)]
    assert it["cuts"] == [s.cut for s in spec.shots]
    for x, shot in zip(it["frames"], ref.shots):
        assert torch.equal(x.permute(0, 2, 3, 1), torch.from_numpy(shot.frames))
    assert it["boxes"][0][0][0]["label"] == ref.shots[0].boxes[0][0].label
    assert it["boxes"][0][0][0]["box"] == [ref.shots[0].boxes[0][0].x0, ref.shots[0].boxes[0][0].y0,
                                           ref.shots[0].boxes[0][0].x1, ref.shots[0].boxes[0][0].y1]


def test_pattern_redraws_repeat_each_scene_with_new_patterns_only(tmp_path):
    path = synth_storyworld(tmp_path / "sw", n_scenes=4, seed=7, scenes_per_shard=5, pattern_redraws=3, **SYNTH)
    m = read_manifest(path)
    assert m["scene_count"] == 12 and m["params"]["pattern_redraws"] == 3
    items = list(SceneDataset(path))
    assert [it["key"] for it in items] == [k for j in range(4) for k in (f"{j:08d}", f"{j:08d}-p1", f"{j:08d}-p2")]
    plain = list(SceneDataset(synth_storyworld(tmp_path / "plain", n_scenes=4, seed=7, scenes_per_shard=5, **SYNTH)))
    assert "pattern_redraws" not in read_manifest(tmp_path / "plain")["params"]  # the default writes what it always did
    changed = 0
    for j in range(4):
        first, *copies = items[3 * j : 3 * j + 3]
        assert first["key"] == plain[j]["key"] and all(torch.equal(a, b) for a, b in zip(first["frames"], plain[j]["frames"]))
        for k, it in enumerate(copies, start=1):
            # same prompts, cuts, boxes and seed; only the characters' patterns (and so their pixels) may differ
            assert it["shot_prompts"] == first["shot_prompts"] and it["global_prompt"] == first["global_prompt"]
            assert it["boxes"] == first["boxes"] and it["cuts"] == first["cuts"] and it["meta"]["pattern_draw"] == k
            strip = lambda chars: [{key: v for key, v in c.items() if key != "pattern"} for c in chars]  # noqa: E731
            assert strip(it["meta"]["characters"]) == strip(first["meta"]["characters"])
            patterns = [c["pattern"] for c in it["meta"]["characters"]]
            changed += patterns != [c["pattern"] for c in first["meta"]["characters"]]
    assert changed >= 4  # re-drawn, not copied (each draw is uniform over three patterns)
    again = list(SceneDataset(synth_storyworld(tmp_path / "again", n_scenes=4, seed=7, scenes_per_shard=5, pattern_redraws=3, **SYNTH)))
    assert [it["meta"]["characters"] for it in again] == [it["meta"]["characters"] for it in items]  # reproducible
    with pytest.raises(ValueError, match="pattern_redraws must be a positive integer"):
        synth_storyworld(tmp_path / "bad", n_scenes=1, seed=7, pattern_redraws=0, **SYNTH)


def test_synth_is_resumable_and_deterministic(tmp_path, monkeypatch):
    ref = synth_storyworld(tmp_path / "ref", n_scenes=5, seed=2, scenes_per_shard=2, **SYNTH)
    real = synth_module.storyworld_sample
    calls: list[str] = []
    interrupt_at = {"00000003"}

    def flaky(key, seed, **kw):
        calls.append(key)
        if key in interrupt_at:
            raise KeyboardInterrupt
        return real(key, seed, **kw)

    monkeypatch.setattr(synth_module, "storyworld_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        synth_storyworld(tmp_path / "run", n_scenes=5, seed=2, scenes_per_shard=2, **SYNTH)
    assert read_manifest(tmp_path / "run", allow_incomplete=True)["scene_count"] == 2
    with pytest.raises(DatasetError, match="incomplete"):
        SceneDataset(tmp_path / "run")
    calls.clear()
    interrupt_at.clear()
    synth_storyworld(tmp_path / "run", n_scenes=5, seed=2, scenes_per_shard=2, **SYNTH)
    assert calls == ["00000002", "00000003", "00000004"]  # shard 0 (scenes 0, 1) was skipped
    sha = lambda p: [e["sha256"] for e in read_manifest(p)["shards"]]  # noqa: E731
    assert sha(tmp_path / "run") == sha(ref)
    calls.clear()
    synth_storyworld(tmp_path / "run", n_scenes=5, seed=2, scenes_per_shard=2, **SYNTH)
    assert calls == []  # complete: nothing re-rendered
    with pytest.raises(ValueError, match="different settings"):
        synth_storyworld(tmp_path / "run", n_scenes=5, seed=3, scenes_per_shard=2, **SYNTH)


def test_synth_with_worker_processes_writes_the_same_shards(tmp_path):
    kw = dict(n_scenes=6, seed=3, scenes_per_shard=4, n_shots=2, resolution=(32, 32), frames=4, progress=False)
    synth_storyworld(tmp_path / "one", **kw)
    synth_storyworld(tmp_path / "two", workers=2, **kw)
    sha = lambda p: [e["sha256"] for e in read_manifest(p)["shards"]]  # noqa: E731
    assert sha(tmp_path / "one") == sha(tmp_path / "two")
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        synth_storyworld(tmp_path / "bad", workers=0, **kw)
