"""StoryCLIP: mechanics on a tiny random model, behaviour of the shipped weights, training + resume."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from storyreel.eval.storyclip import (
    DEFAULT_STORYCLIP,
    STORYCLIP_CONFIGS,
    StoryCLIP,
    StoryCLIPConfig,
    embed_scene,
    frechet_distance,
    load_storyclip,
    prepare_clips,
    retrieval_accuracy,
    semantic_consistency,
    sequence_consistency,
    shot_text,
    storyclip_fd,
    storyclip_scores,
    visual_consistency,
)
from storyreel.eval.storyclip_train import StoryCLIPTrainConfig, heldout_galleries, train_storyclip
from storyreel.world import COLORS, render_scene, sample_scene, scene_to_script

# held-out scenes for behaviour checks: a range of their own (training uses 20,000,000 + j)
SEEDS = range(31_000_000, 31_000_040)


def _scene(seed: int, **kw):
    spec = sample_scene(seed, **kw)
    return spec, scene_to_script(spec), [s.frames for s in render_scene(spec).shots]


def _recolored(spec, *, fresh: bool = False):
    """The same scene with the character colours rotated among its characters, or (``fresh``)
    replaced by colours the scene does not use."""
    cols = [c.color for c in spec.characters]
    new = [c for c in COLORS if c not in cols][: len(cols)] if fresh else cols[1:] + cols[:1]
    chars = tuple(dataclasses.replace(c, color=new[k]) for k, c in enumerate(spec.characters))
    return [s.frames for s in render_scene(dataclasses.replace(spec, characters=chars)).shots]


@pytest.fixture(scope="module")
def tiny() -> StoryCLIP:
    torch.manual_seed(0)
    return StoryCLIP(STORYCLIP_CONFIGS["debug"]).eval()


@pytest.fixture(scope="module")
def shipped() -> StoryCLIP:
    return load_storyclip()


@pytest.fixture(scope="module")
def scenes():
    """Held-out scenes with >= 2 characters and >= 3 shots: (spec, script, frames)."""
    out = []
    for seed in SEEDS:
        spec, script, frames = _scene(seed)
        if len(spec.characters) >= 2 and len(spec.shots) >= 3:
            out.append((spec, script, frames))
    assert len(out) >= 12
    return out[:12]


# ----------------------------------------------------------------------------------------------
# mechanics (tiny random model)


def test_config_validation_names_field() -> None:
    with pytest.raises(ValueError, match="StoryCLIPConfig.frames=0"):
        StoryCLIPConfig(frames=0)
    with pytest.raises(ValueError, match="StoryCLIPConfig.size=30"):
        StoryCLIPConfig(size=30)
    with pytest.raises(ValueError, match="heldout_seed_base"):
        StoryCLIPTrainConfig(train_seed_base=100, train_scenes=10, heldout_seed_base=105)


def test_shot_text_expands_characters_and_setting() -> None:
    spec, script, _ = _scene(31_000_007)
    for i, shot in enumerate(spec.shots):
        text = shot_text(script, i)
        assert "Character" not in text and "[SHOT CUT]" not in text
        assert text.endswith(f"Setting: a {spec.setting}.")
        for n in shot.events:
            assert spec.character(n).description in text
    with pytest.raises(ValueError, match="out of range"):
        shot_text(script, len(spec.shots))


def test_prepare_clips_resamples_any_size() -> None:
    clips = [np.zeros((5, 48, 40, 3), np.uint8), np.full((20, 96, 96, 3), 255, np.uint8)]
    video = prepare_clips(clips, frames=8, size=32)
    assert video.shape == (2, 3, 8, 32, 32)
    assert torch.allclose(video[1], torch.full_like(video[1], 2.0))  # (1 - 0.5) / 0.25
    with pytest.raises(ValueError, match="uint8 clip"):
        prepare_clips([np.zeros((4, 8, 8, 3), np.float32)], frames=2, size=8)
    with pytest.raises(ValueError, match="single clip"):
        prepare_clips(np.zeros((4, 8, 8, 3), np.uint8), frames=2, size=8)


def test_save_load_round_trip_fp16(tiny: StoryCLIP, tmp_path) -> None:
    tiny.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    loaded = load_storyclip(tmp_path)
    assert loaded.config == tiny.config and not loaded.training
    for (name, a), (_, b) in zip(tiny.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert b.dtype == a.dtype, name
        assert torch.equal(b, a.half().to(a.dtype)) if a.is_floating_point() else torch.equal(a, b)
    clips = [np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8) for _ in range(3)]
    assert torch.allclose(tiny.encode_video(clips), loaded.encode_video(clips), atol=2e-2)


def test_missing_weights_error_names_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="storyclip_train"):
        load_storyclip(tmp_path / "nothing-here")


def test_similarities_bounded_and_consistent(tiny: StoryCLIP) -> None:
    _, script, frames = _scene(31_000_003, n_shots=4)
    scores = storyclip_scores(frames, script, model=tiny)
    for r in scores.values():
        assert -1.0 <= r.value <= 1.0
    vis, sem = scores["visual_consistency"], scores["semantic_consistency"]
    assert len(vis.items) == 6 and len(sem.items) == 4
    assert math.isclose(scores["sequence_consistency"].value, (vis.value + sem.value) / 2, rel_tol=1e-9)
    e = embed_scene(frames, script, model=tiny)
    assert torch.allclose(e.video.norm(dim=-1), torch.ones(4), atol=1e-5)
    # a one-shot scene has no pair: NaN, and pools as nothing
    one = visual_consistency(frames[:1], None, model=tiny)
    assert math.isnan(one.value) and one.totals["count"] == 0


def test_frechet_distance_analytic() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = rng.normal(size=16)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)  # same covariance
    cov = np.cov(a, rowvar=False)
    expected = float(a.mean(0) @ a.mean(0) + np.trace(cov))  # b = 2a: tr(S + 4S - 2·2S) = tr(S)
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="N, M >= 2"):
        frechet_distance(a[:1], a)


def test_train_resume_and_determinism(tmp_path) -> None:
    kw = dict(model="debug", train_scenes=4, batch_size=8, shots_per_scene=2, warmup=1, checkpoint_every=2,
              eval_galleries=0, progress=False)
    first = train_storyclip(StoryCLIPTrainConfig(steps=2, out=str(tmp_path / "a"), checkpoint_dir=str(tmp_path / "ck"), **kw))
    resumed = train_storyclip(StoryCLIPTrainConfig(steps=3, out=str(tmp_path / "b"), checkpoint_dir=str(tmp_path / "ck"), **kw))
    assert first.step == 2 and resumed.step == 3 and len(resumed.history) == 3
    assert resumed.history[:2] == first.history
    again = train_storyclip(StoryCLIPTrainConfig(steps=2, out=str(tmp_path / "c"), checkpoint_dir=str(tmp_path / "ck2"), **kw))
    assert again.history == first.history  # same seed, same data, same losses
    meta = json.loads((tmp_path / "b" / "config.json").read_text())["_extra"]["training"]
    assert meta["steps"] == 3 and meta["train_seeds"] == "20000000..20000003"
    with pytest.raises(ValueError, match="other settings"):
        train_storyclip(StoryCLIPTrainConfig(steps=4, out=str(tmp_path / "d"), checkpoint_dir=str(tmp_path / "ck"),
                                             **{**kw, "batch_size": 6}))


# ----------------------------------------------------------------------------------------------
# behaviour of the shipped weights


def test_shipped_weights_small_fp16() -> None:
    size = sum(p.stat().st_size for p in DEFAULT_STORYCLIP.iterdir())
    assert size <= 6 * 2**20
    with safe_open(str(DEFAULT_STORYCLIP / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.float16, torch.int64}


def test_shipped_retrieval_on_held_out_gallery(shipped: StoryCLIP) -> None:
    clips, texts = heldout_galleries(1, 32, pick_seed=7)[0]  # 32 shots of 32 held-out scenes
    acc = retrieval_accuracy(shipped, clips, texts)
    assert acc["t2v_top1"] >= 0.7 and acc["v2t_top1"] >= 0.7


def _mean(metric, pairs, model) -> float:
    return float(np.mean([metric(frames, script, model=model).value for frames, script in pairs]))


def test_semantic_catches_shuffled_prompts(shipped: StoryCLIP, scenes) -> None:
    gt = [(f, s) for _, s, f in scenes]
    shifted = [(f[1:] + f[:1], s) for _, s, f in scenes]  # every shot paired with another shot's prompt
    a, b = _mean(semantic_consistency, gt, shipped), _mean(semantic_consistency, shifted, shipped)
    assert a > b + 0.1, (a, b)


def test_semantic_catches_swapped_colours(shipped: StoryCLIP, scenes) -> None:
    gt = [(f, s) for _, s, f in scenes]
    swapped = [(_recolored(spec), s) for spec, s, _ in scenes]
    a, b = _mean(semantic_consistency, gt, shipped), _mean(semantic_consistency, swapped, shipped)
    assert a > b + 0.1, (a, b)


def test_semantic_catches_frozen_frames(shipped: StoryCLIP, scenes) -> None:
    gt = [(f, s) for _, s, f in scenes]
    frozen = [([np.repeat(x[len(x) // 2 : len(x) // 2 + 1], len(x), axis=0) for x in f], s) for _, s, f in scenes]
    a, b = _mean(semantic_consistency, gt, shipped), _mean(semantic_consistency, frozen, shipped)
    assert a > b + 0.01, (a, b)  # weak (≈ 0.947 vs 0.920): StoryCLIP sees appearance far better than motion


def test_visual_catches_foreign_shots(shipped: StoryCLIP, scenes) -> None:
    gt = [(f, s) for _, s, f in scenes]
    # every other shot replaced by the same-index shot of the next scene (other characters, other setting)
    mixed = []
    for k, (_, s, f) in enumerate(scenes):
        other = scenes[(k + 1) % len(scenes)][2]
        mixed.append(([other[i % len(other)] if i % 2 else x for i, x in enumerate(f)], s))
    a, b = _mean(visual_consistency, gt, shipped), _mean(visual_consistency, mixed, shipped)
    assert a > b + 0.1, (a, b)


def test_visual_catches_identity_drift(shipped: StoryCLIP, scenes) -> None:
    gt = [(f, s) for _, s, f in scenes]
    # every other shot shows the characters in colours the scene does not have
    drift = [([y if i % 2 else x for i, (x, y) in enumerate(zip(f, _recolored(spec, fresh=True), strict=True))], s)
             for spec, s, f in scenes]
    a, b = _mean(visual_consistency, gt, shipped), _mean(visual_consistency, drift, shipped)
    assert a > b + 0.05, (a, b)


def test_sequence_catches_shuffled_prompts(shipped: StoryCLIP, scenes) -> None:
    gt = [(f, s) for _, s, f in scenes]
    shifted = [(f[1:] + f[:1], s) for _, s, f in scenes]
    a, b = _mean(sequence_consistency, gt, shipped), _mean(sequence_consistency, shifted, shipped)
    assert a > b + 0.1, (a, b)


@pytest.mark.slow
def test_fd_ranks_perturbed_sets_worse(shipped: StoryCLIP, scenes) -> None:
    ref = [x for _, _, f in scenes[:6] for x in f]
    same_dist = [x for _, _, f in scenes[6:] for x in f]
    frozen = [np.repeat(x[:1], len(x), axis=0) for x in same_dist]
    darker = [(x * 0.6).astype(np.uint8) for x in same_dist]  # a colour shift
    collapsed = [same_dist[0]] * len(same_dist)  # one shot for every sample: no diversity
    assert storyclip_fd(ref, ref, model=shipped).value == pytest.approx(0.0, abs=1e-6)
    base = storyclip_fd(same_dist, ref, model=shipped)  # other ground-truth scenes: sampling error only
    assert base.value > 0 and not base.higher_is_better
    assert storyclip_fd(frozen, ref, model=shipped).value > base.value
    assert storyclip_fd(darker, ref, model=shipped).value > 1.5 * base.value
    assert storyclip_fd(collapsed, ref, model=shipped).value > 3 * base.value
