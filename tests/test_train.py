"""Training engine on `debug` recipes: recipes and overrides, batches (conditional mask, per-shot timesteps,
frame substitution, text dropout, schedules), loss, EMA, accumulation, non-finite guard, logging, the
context-causal fine-tune, the VAE recipe and the committed loss-curve baseline.

Refreshing the baseline after an intended change to training numerics (model, data, batching, optimiser):
    STORYREEL_REFRESH_BASELINE=1 .venv/bin/python -m pytest tests/test_train.py -k baseline
then commit tests/data/debug-loss-baseline.json together with the change that moved it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from storyreel.train import EMA, NonFiniteLossError, RecipeError, build_trainer, load_recipe, run_from_config
from storyreel.train.batching import _rng, plan_step, sample_conditioning
from storyreel.train.config import CONFIG_DIR, recipe_from_dict
from storyreel.train.logging import MetricsLogger, peak_flops
from storyreel.train.scene_task import shot_loss
from storyreel.train.vae_trainer import _VAE_DRAW

BASELINE = Path(__file__).parent / "data" / "debug-loss-baseline.json"

pytestmark = pytest.mark.usefixtures("one_thread")


def debug(data_dir: Path, out: Path, *sets: str):
    """The debug recipe on the shared data, writing to ``out``, CPU, quiet."""
    return load_recipe("debug", [f"data.path={data_dir}", f"output.dir={out}", "train.device=cpu",
                                 "output.progress=false", *sets])


# ----------------------------------------------------------------------------------------------- recipes


def test_every_recipe_loads_and_validates():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"debug", "vae-small", "scene-small", "scene-small-causal"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name
    causal = load_recipe("scene-small-causal")
    assert causal.model.attn_policy == "causal_shots" and causal.model.init_from
    assert causal.model.name == load_recipe("scene-small").model.name  # inherited through `extends`
    stages = load_recipe("scene-small").schedule.stages
    assert [s.mode for s in stages] == ["concat", "concat", "scene", "scene"]
    assert [s.max_shots for s in stages] == [2, 4, 4, 8]


def test_overrides_parse_yaml_scalars():
    r = load_recipe("debug", ["train.steps=7", "train.lr=3e-4", "train.grad_clip=null", "data.global_prompt=false",
                              "train.betas=[0.8, 0.95]", "schedule.stages.1.max_shots=4", "model.overrides.depth=3"])
    assert r.train.steps == 7 and r.train.lr == pytest.approx(3e-4) and r.train.grad_clip is None
    assert r.data.global_prompt is False and r.train.betas == (0.8, 0.95)
    assert r.schedule.stages[1].max_shots == 4 and r.model.overrides == {"depth": 3}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.stepz=3", "valid keys under 'train'"),
        ("trian.steps=3", "valid keys under 'the recipe root'"),
        ("train.steps", "KEY=VALUE"),
        ("train.steps=many", "must be an integer"),
        ("train.lr=-1", "train.lr=-1"),
        ("train.timesteps.distribution=gaussian", "logit_normal"),
        ("schedule.stages.5.max_shots=2", "out of range"),
        ("train.steps.x=1", "single value"),
        ("train.causal_prob=1.5", "train.causal_prob"),
    ],
)
def test_bad_overrides_raise_clear_errors(override, needle):
    with pytest.raises(RecipeError, match=None) as info:
        load_recipe("debug", [override])
    assert needle in str(info.value)


def test_unknown_yaml_key_and_bad_stages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: " + str(CONFIG_DIR / "debug.yaml") + "\ndata: {framez: 3}\n")
    with pytest.raises(RecipeError, match=r"data\.framez.*valid keys under 'data'"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="boundaries must increase"):
        recipe_from_dict({"schedule": {"stages": [{"name": "a", "until_step": 5}, {"name": "b", "until_step": 3}, {"name": "c"}]}})
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("no-such-recipe")


# ----------------------------------------------------------------------------------------------- batches


def test_schedule_stages_and_single_shot_batches(data_dir, tmp_path):
    r = debug(data_dir, tmp_path, "data.single_shot_prob=0.0")
    assert plan_step(r.schedule, r.data, seed=0, step=0).stage.name == "pretrain"
    assert plan_step(r.schedule, r.data, seed=0, step=7).stage.mode == "concat"
    late = [plan_step(r.schedule, r.data, seed=0, step=s) for s in range(8, 60)]
    assert {p.stage.name for p in late} == {"sft"} and {p.n_shots for p in late} == {2, 3}
    r1 = debug(data_dir, tmp_path, "data.single_shot_prob=1.0")
    assert {plan_step(r1.schedule, r1.data, seed=0, step=s).n_shots for s in range(20)} == {1}


def test_concat_pretraining_draws_unrelated_shots_and_scene_mode_one_scene(data_dir, tmp_path):
    r = debug(data_dir, tmp_path, "data.single_shot_prob=0.0", "train.batch_size=4")
    builder = build_trainer(r).task.builder
    pre = builder.build(0, 0)  # stage "pretrain": concatenations
    for sources in pre.sources:
        assert len({key for key, _ in sources}) == len(sources)  # every shot from another scene
    assert all(p[0] == "" for p in pre.prompts)  # no global prompt for unrelated shots
    sft = builder.build(9, 0)
    for sources in sft.sources:
        assert len({key for key, _ in sources}) == 1
        shots = [s for _, s in sources]
        assert shots == sorted(shots) and len(set(shots)) == len(shots)
    assert all(p[0].startswith("Character 1") or p[0] == "" for p in sft.prompts)  # global prompt first


def test_expand_characters_repeats_each_shots_own_descriptions(data_dir, tmp_path):
    """data.expand_characters: every "Character N" of a shot prompt is followed by the description its own scene's
    global prompt gives, in concatenations of unrelated shots as well as in scenes; off, prompts are unchanged."""
    import re

    from storyreel.script import character_descriptions

    r = debug(data_dir, tmp_path, "data.single_shot_prob=0.0", "train.batch_size=4", "data.text_dropout=0.0",
              "data.expand_characters=true")
    plain = build_trainer(debug(data_dir, tmp_path, "data.single_shot_prob=0.0", "train.batch_size=4",
                                "data.text_dropout=0.0")).task.builder
    builder = build_trainer(r).task.builder
    index = builder.sampler.index
    keys = {index.load(i).key: i for i in range(len(index))}
    for step in (0, 9):  # a concat step and a scene step
        batch, base = builder.build(step, 0), plain.build(step, 0)
        n = batch.plan.n_shots
        for prompts, base_prompts, sources in zip(batch.prompts, base.prompts, batch.sources, strict=True):
            for shot_prompt, base_prompt, (key, shot) in zip(prompts[-n:], base_prompts[-n:], sources, strict=True):
                descs = character_descriptions(index.load(keys[key]).global_prompt)
                assert descs and shot_prompt == re.sub(
                    r"Character (\d+)", lambda m: f"Character {m.group(1)} ({descs[int(m.group(1))]})", base_prompt)
                assert "(" in shot_prompt and "(" not in base_prompt


def test_conditional_mask_puts_loss_on_last_shot_only(data_dir, tmp_path):
    r = debug(data_dir, tmp_path, "train.cond_mask_prob=1.0", "data.single_shot_prob=0.0", "data.frame_substitution=0.0")
    task = build_trainer(r).task
    batch = task.batch(9, 0)
    n = batch.plan.n_shots
    assert n >= 2 and bool(batch.cond_mask.all())
    assert torch.all(batch.t[:, :-1] == 0) and torch.all(batch.t[:, -1] > 0)
    assert torch.equal(batch.weights, torch.tensor([[0.0] * (n - 1) + [1.0]] * batch.t.shape[0]))
    loss, _ = task.loss(task.model, batch)
    # earlier shots are clean context (x_t = x0), so changing their noise changes only their (ignored) targets
    first = batch.frames_per_shot[0]
    batch.noise[:, :, :first] = torch.randn_like(batch.noise[:, :, :first]) * 5
    loss2, _ = task.loss(task.model, batch)
    assert float(loss2.detach()) == float(loss.detach())
    # and the gradient of the loss w.r.t. earlier shots' predictions is exactly zero
    pred = torch.randn_like(batch.latents, requires_grad=True)
    value, per_shot = shot_loss(pred, batch.noise - batch.latents, batch.frames_per_shot, batch.weights)
    value.backward()
    last = batch.frames_per_shot[-1]
    assert torch.all(pred.grad[:, :, :-last] == 0) and torch.any(pred.grad[:, :, -last:] != 0)
    assert float(value.detach()) == pytest.approx(float(per_shot[:, -1].mean()), rel=1e-6)


def test_shot_loss_averages_each_shot_then_shots():
    pred = torch.zeros(1, 1, 5, 1, 1)
    target = torch.tensor([1.0, 3.0, 3.0, 3.0, 3.0]).reshape(1, 1, 5, 1, 1)  # shot 0: 1 frame, shot 1: 4 frames
    loss, per = shot_loss(pred, target, [1, 4], torch.ones(1, 2))
    assert per.tolist() == [[1.0, 9.0]] and float(loss) == 5.0  # not the token mean (37/5)


def test_shot_loss_cell_weights_weigh_the_mean_within_each_shot():
    pred = torch.zeros(1, 1, 2, 1, 2)
    target = torch.tensor([1.0, 3.0, 2.0, 2.0]).reshape(1, 1, 2, 1, 2)  # shot 0: cells 1, 3; shot 1: cells 2, 2
    cells = torch.tensor([1.0, 3.0, 1.0, 5.0]).reshape(1, 1, 2, 1, 2)
    loss, per = shot_loss(pred, target, [1, 1], torch.ones(1, 2), cells)
    assert per.tolist() == [[(1 * 1 + 3 * 9) / 4, 4.0]]  # weighted mean of squared errors; a flat shot is unchanged
    assert float(loss) == pytest.approx((7.0 + 4.0) / 2)
    ones, _ = shot_loss(pred, target, [1, 1], torch.ones(1, 2), torch.ones_like(cells))
    assert float(ones) == float(shot_loss(pred, target, [1, 1], torch.ones(1, 2))[0])


def test_character_weight_marks_the_latent_cells_of_character_boxes(data_dir, tmp_path):
    from storyreel.train.batching import character_cells

    sets = ["data.single_shot_prob=0.0", "data.frame_substitution=0.3", "train.batch_size=3"]
    task = build_trainer(debug(data_dir, tmp_path, *sets, "train.character_weight=4")).task
    batch = task.batch(5, 0)
    cw = batch.cell_weights
    assert cw is not None and cw.shape == (batch.latents.shape[0], 1, *batch.latents.shape[2:])
    assert set(torch.unique(cw).tolist()) <= {1.0, 5.0} and bool((cw == 5.0).any()) and bool((cw == 1.0).any())
    # every box corner maps into a marked cell of the latent frame that covers its frame
    sampler, h, w = task.sampler, *batch.latents.shape[-2:]
    tl = max(batch.frames_per_shot)  # latent frames of a video shot (image shots have 1)
    windows = sampler.draw(task.builder.plan(5), 3, np.random.default_rng(0))
    for specs in windows:
        lat = [1 if len(s.frames) == 1 else tl for s in specs]
        cells = character_cells(sampler, specs, lat, (h, w))
        assert cells.shape == (sum(lat), h, w)
        offset = 0
        for s, t_lat in zip(specs, lat):
            scene = sampler.index.load(s.scene)
            H = scene.frames[s.shot].shape[1]
            r = round((len(s.frames) - 1) / (t_lat - 1)) if t_lat > 1 else 1
            for j, f in enumerate(s.frames):
                k = offset + min(t_lat - 1, math.ceil(j / r))
                for box in scene.boxes[s.shot][f]:
                    x0, y0, x1, y1 = box["box"]
                    cx, cy = min(max(x0, 0), H - 1) * h // H, min(max(y0, 0), H - 1) * h // H
                    if box["label"].startswith("Character") and x1 > 0 and y1 > 0 and x0 < H and y0 < H:
                        assert cells[k, cy, cx] == 1.0
            offset += t_lat
    # the weighted loss differs from the plain mean on the same batch; 0 builds no weights
    loss_w, _ = task.loss(task.model, batch)
    batch.cell_weights = None
    loss_plain, _ = task.loss(task.model, batch)
    assert float(loss_w.detach()) != float(loss_plain.detach())
    plain = build_trainer(debug(data_dir, tmp_path / "p", *sets)).task
    assert plain.batch(5, 0).cell_weights is None
    with pytest.raises(RecipeError, match="train.character_weight"):
        debug(data_dir, tmp_path / "bad", "train.character_weight=-1")


def test_timesteps_are_independent_per_shot_or_shared(data_dir, tmp_path):
    base = ["data.single_shot_prob=0.0", "train.cond_mask_prob=0.0", "data.frame_substitution=0.0", "train.batch_size=4"]
    task = build_trainer(debug(data_dir, tmp_path, *base)).task
    t = task.batch(3, 0).t
    assert t.shape[1] >= 2 and torch.all(t[:, 0] != t[:, 1]) and torch.all((t > 0) & (t < 1))
    shared = build_trainer(debug(data_dir, tmp_path / "s", *base, "train.timesteps.independent=false")).task
    ts = shared.batch(3, 0).t
    assert torch.all(ts == ts[:, :1]) and len(set(ts[:, 0].tolist())) == ts.shape[0]


def test_frame_substitution_makes_one_frame_image_shots(data_dir, tmp_path):
    r = debug(data_dir, tmp_path, "data.frame_substitution=1.0", "data.single_shot_prob=0.0", "data.image_condition_prob=0.0")
    task = build_trainer(r).task
    batch = task.batch(9, 0)
    from storyreel.nn.layout import Modality

    vis = [batch.layout.segments[i] for i in batch.layout.video_segments()]
    assert all(s.modality == Modality.IMAGE and s.grid[0] == 1 for s in vis)
    assert batch.frames_per_shot == [1] * batch.plan.n_shots and batch.latents.shape[2] == batch.plan.n_shots
    loss, _ = task.loss(task.model, batch)
    assert math.isfinite(float(loss.detach()))
    # the image shot may be held clean as a condition, but never every shot of a sample
    clean, cond, _ = sample_conditioning(batch=64, n_shots=2, image_shots=(True, True), cond_mask_prob=0.0,
                                         image_condition_prob=1.0, text_dropout=0.0, rng=np.random.default_rng(0))
    assert clean[:, 0].all() and not clean[:, 1].any() and not cond.any()


def test_latent_cache_gives_the_same_batches_and_encodes_each_window_once(data_dir, tmp_path):
    base = ["data.single_shot_prob=0.0", "train.batch_size=4", "data.frame_substitution=0.3"]
    plain = build_trainer(debug(data_dir, tmp_path / "a", *base)).task
    cached = build_trainer(debug(data_dir, tmp_path / "b", *base, "data.cache_latents=10000")).task
    for step in range(12):
        a, b = plain.batch(step, 0), cached.batch(step, 0)
        assert a.sources == b.sources and a.frames_per_shot == b.frames_per_shot and a.prompts == b.prompts
        torch.testing.assert_close(b.latents, a.latents, atol=1e-5, rtol=1e-5)
        assert torch.equal(a.noise, b.noise) and torch.equal(a.t, b.t)
    builder = cached.builder
    assert builder.cache_misses == len(builder._latents) > 0  # every window encoded exactly once
    misses = builder.cache_misses
    start = builder.sampler.order.state_dict()
    builder.sampler.order.load_state_dict({**start, "epoch": 0, "pos": 0})  # the same windows again: all hits
    builder.build(0, 0)
    assert builder.cache_misses == misses and builder.cache_hits > 0
    small = build_trainer(debug(data_dir, tmp_path / "c", *base, "data.cache_latents=3")).task.builder
    small.build(9, 0)
    assert len(small._latents) <= 3  # the LRU bound holds


def test_text_dropout_empties_prompts_at_the_set_rate(data_dir, tmp_path):
    task = build_trainer(debug(data_dir, tmp_path, "data.text_dropout=0.3", "train.batch_size=8")).task
    dropped, total = 0, 0
    empty = task.text_encoder.encode([""]).states[0]  # [L, D]
    for step in range(40):
        batch = task.batch(step, 0)
        for b, (flag, prompts) in enumerate(zip(batch.dropped.tolist(), batch.prompts)):
            total += 1
            if flag:
                dropped += 1
                assert all(p == "" for p in prompts)
                ctx = batch.context[b].reshape(len(prompts), -1, empty.shape[-1])  # [S_text, L, D]
                assert torch.allclose(ctx, empty.expand_as(ctx))
            else:
                assert all(p for p in prompts[1:])
    assert abs(dropped / total - 0.3) < 0.08, dropped / total
    clean, _, none = sample_conditioning(batch=100, n_shots=2, image_shots=(False, False), cond_mask_prob=0.0,
                                         image_condition_prob=0.0, text_dropout=0.0, rng=np.random.default_rng(1))
    assert not none.any() and not clean.any()


# ----------------------------------------------------------------------------------------------- optimisation


def test_ema_update_math():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = EMA(model, 0.9, warmup=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -2.0]]))
    ema.update()
    assert torch.allclose(ema.shadow["weight"], torch.tensor([[0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2]]))
    warm = EMA(model, 0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    warm.update()
    assert warm.current_decay() == pytest.approx(2 / 11)
    full = ema.full_state({"weight": torch.zeros(1, 2)})
    assert torch.equal(full["weight"], ema.shadow["weight"])


def test_grad_accumulation_equals_a_bigger_batch(data_dir, tmp_path):
    sets = ["data.single_shot_prob=0.0", "train.cond_mask_prob=0.0", "data.frame_substitution=0.0", "train.grad_clip=null"]
    small = build_trainer(debug(data_dir, tmp_path / "a", *sets, "train.batch_size=1", "train.grad_accum=2"))
    big = build_trainer(debug(data_dir, tmp_path / "b", *sets, "train.batch_size=2"))
    b0, b1 = small.task.batch(9, 0), small.task.batch(9, 1)
    assert b0.layout == b1.layout
    joint = small.task.batch(9, 0)
    for name in ("latents", "noise", "t", "weights", "context"):
        setattr(joint, name, torch.cat([getattr(b0, name), getattr(b1, name)]))
    small.task.batch = lambda step, micro: (b0, b1)[micro]
    big.task.batch = lambda step, micro: joint
    m_small, m_big = small.train_step(), big.train_step()
    assert m_small["loss"] == pytest.approx(m_big["loss"], rel=1e-5)
    for (name, p), q in zip(small.raw.named_parameters(), big.raw.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), name


def test_activation_checkpointing_gives_the_same_gradients(data_dir, tmp_path):
    plain = build_trainer(debug(data_dir, tmp_path / "a"))
    ckpt = build_trainer(debug(data_dir, tmp_path / "b", "train.parallel.activation_checkpointing=true"))
    batch = plain.task.batch(9, 0)
    plain.task.batch = ckpt.task.batch = lambda step, micro: batch
    assert plain.train_step()["loss"] == ckpt.train_step()["loss"]
    assert all(getattr(b, "_storyreel_ckpt", False) for b in ckpt.raw.blocks)
    for (name, p), q in zip(plain.raw.named_parameters(), ckpt.raw.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), name


def test_nonfinite_loss_stops_with_message_and_saved_state(data_dir, tmp_path):
    trainer = build_trainer(debug(data_dir, tmp_path))
    with torch.no_grad():
        trainer.raw.x_embed.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"non-finite training signal at step 0 .*saved to .*nonfinite-step-000000"):
        trainer.train_step()
    saved = tmp_path / "checkpoints" / "nonfinite-step-000000"
    assert (saved / "trainer_state.json").is_file() and (saved / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "checkpoints" / "latest").exists()  # a bad state never becomes the resume point
    assert trainer.step == 0


# ----------------------------------------------------------------------------------------------- runs


def test_debug_run_logs_checkpoints_and_exports(data_dir, tmp_path):
    from storyreel.models import MultiShotMMDiT

    out = tmp_path / "run"
    result = run_from_config("debug", [f"data.path={data_dir}", f"output.dir={out}", "train.device=cpu",
                                       "output.progress=false", "train.steps=6", "output.checkpoint_every=2"])
    assert result.step == 6 and len(result.losses) == 6 and all(math.isfinite(x) for x in result.losses)
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [5, 6]
    for key in ("loss", "grad_norm", "lr", "steps_per_s", "tokens_per_s", "stage", "n_shots"):
        assert key in lines[0]
    assert lines[0]["mfu"] is None and lines[0]["tokens_per_s"] > 0  # CPU: unknown peak
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000004", "step-000006"]  # keep_last 2
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000006"
    assert not list((out / "checkpoints").glob(".tmp-*"))
    model = MultiShotMMDiT.from_pretrained(out / "model")
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["_extra"]["text_encoder"] == "hashing" and model.config.in_channels == 48
    with pytest.raises(RecipeError, match="--resume"):  # a fresh run never overwrites a run's checkpoints
        run_from_config("debug", [f"data.path={data_dir}", f"output.dir={out}", "train.device=cpu", "output.progress=false"])


def test_causal_finetune_starts_from_bidirectional_weights(data_dir, tmp_path):
    src = tmp_path / "bidir"
    run_from_config("debug", [f"data.path={data_dir}", f"output.dir={src}", "train.device=cpu",
                              "output.progress=false", "train.steps=3"])
    r = debug(data_dir, tmp_path / "causal", "model.attn_policy=causal_shots", f"model.init_from={src}", "train.steps=2")
    trainer = build_trainer(r)
    from safetensors.torch import load_file

    ema = load_file(str(src / "checkpoints" / "step-000003" / "ema" / "model.safetensors"))
    for name, p in trainer.raw.state_dict().items():
        assert torch.equal(p, ema[name]), name
    assert trainer.raw.config.attn_policy == "causal_shots"
    for _ in trainer.steps():
        pass
    saved = json.loads((tmp_path / "causal" / "checkpoints" / "step-000002" / "model" / "config.json").read_text())
    assert saved["attn_policy"] == "causal_shots" and saved["_extra"]["init_from"].endswith("model.safetensors")


def test_causal_prob_mixes_context_causal_micro_batches(data_dir, tmp_path):
    r = debug(data_dir, tmp_path / "mixed", "train.causal_prob=0.5", "train.steps=2", "data.single_shot_prob=0.0",
              "data.frame_substitution=0.0")
    task = build_trainer(r).task
    with torch.no_grad():  # a fresh model's zero-initialised residual gates would hide the attention mask
        for p in task.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    draws = [task.batch(step, micro).causal for step in range(24) for micro in range(2)]
    assert 0 < sum(draws) < len(draws)  # both kinds of micro-batch occur
    assert draws == [task.batch(step, micro).causal for step in range(24) for micro in range(2)]  # deterministic
    step, micro = next((i // 2, i % 2) for i, c in enumerate(draws) if c)
    batch = task.batch(step, micro)
    assert batch.plan.n_shots >= 2
    assert task.describe(batch)["causal"] == 1.0
    # a causal micro-batch is the same loss as the model run with attn_policy causal_shots, and not the bidirectional one
    loss, _ = task.loss(task.model, batch)
    batch.causal = False
    loss_bidir, _ = task.loss(task.model, batch)
    causal_task = build_trainer(debug(data_dir, tmp_path / "causal", "model.attn_policy=causal_shots", "train.steps=2")).task
    causal_task.model.load_state_dict(task.model.state_dict())
    loss_causal, _ = causal_task.loss(causal_task.model, batch)
    assert float(loss) == pytest.approx(float(loss_causal), rel=1e-6)
    assert abs(float(loss) - float(loss_bidir)) > 1e-6
    # off by default: no micro-batch is causal, and the trained model records the share for pipelines
    plain = build_trainer(debug(data_dir, tmp_path / "plain", "train.steps=1")).task
    assert not any(plain.batch(step, 0).causal for step in range(8))
    assert task.extra()["causal_prob"] == 0.5


def test_vae_recipe_trains_and_exports_a_fitted_vae(data_dir, tmp_path):
    from storyreel.autoencoders import CausalVideoVAE

    out = tmp_path / "vae"
    result = run_from_config("vae-small", [f"data.path={data_dir}", f"output.dir={out}", "train.device=cpu",
                                           "output.progress=false", "model.name=debug", "data.frames=5",
                                           "train.steps=3", "train.batch_size=2", "train.warmup_steps=0",
                                           "data.frame_substitution=0.5"])
    assert len(result.losses) == 3 and all(math.isfinite(x) for x in result.losses)
    vae = CausalVideoVAE.from_pretrained(out / "model")
    assert vae.config.scaling_factor != 1.0  # latent normalisation fitted at export
    assert (out / "checkpoints" / "step-000003" / "ema" / "model.safetensors").is_file()

    # decoder-only fine-tune from it: the encoder and the latent normalisation stay, the decoder moves
    sets = [f"data.path={data_dir}", "train.device=cpu", "output.progress=false", "model.name=debug", "data.frames=5",
            "train.steps=3", "train.batch_size=2", "train.warmup_steps=0", "train.lr=1e-2"]
    with pytest.raises(RecipeError, match="model.init_from"):
        build_trainer(load_recipe("vae-small", [*sets, f"output.dir={tmp_path / 'x'}", "model.freeze_encoder=true"]))
    run_from_config("vae-small", [*sets, f"output.dir={tmp_path / 'dec'}", f"model.init_from={out / 'model'}",
                                  "model.freeze_encoder=true"])
    tuned = CausalVideoVAE.from_pretrained(tmp_path / "dec" / "model")
    assert (tuned.config.shift_factor, tuned.config.scaling_factor) == (vae.config.shift_factor, vae.config.scaling_factor)
    before, after = vae.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_vae_character_weight_weighs_the_pixels_inside_character_boxes(data_dir, tmp_path):
    sets = [f"data.path={data_dir}", "train.device=cpu", "output.progress=false", "model.name=debug", "data.frames=5",
            "train.batch_size=3", "data.frame_substitution=0.0"]
    recipe = load_recipe("vae-small", [*sets, f"output.dir={tmp_path / 'w'}", "train.character_weight=4"])
    task, twin = build_trainer(recipe).task, build_trainer(recipe).task
    batch = task.batch(2, 0)
    pw = batch["pixel_weights"]
    assert pw is not None and pw.shape == (3, 1, *batch["video"].shape[2:])
    assert set(torch.unique(pw).tolist()) == {1.0, 5.0}
    # the marked pixels are exactly the union of the character boxes of each clip's frames
    windows = twin.sampler.draw(twin._plan(2), 3, _rng(recipe.train.seed, _VAE_DRAW, 2, 0))  # the same draw
    for i, (spec,) in enumerate(windows):
        scene = twin.sampler.index.load(spec.scene)
        assert torch.equal(twin.sampler.pixels(spec).permute(1, 0, 2, 3).float() / 127.5 - 1.0, batch["video"][i])
        for j, f in enumerate(spec.frames):
            expect = torch.zeros(pw.shape[-2:], dtype=torch.bool)
            for box in scene.boxes[spec.shot][f]:
                if box["label"].startswith("Character"):
                    x0, y0, x1, y1 = box["box"]
                    expect[max(0, int(y0)) : max(0, math.ceil(y1)), max(0, int(x0)) : max(0, math.ceil(x1))] = True
            assert torch.equal(pw[i, 0, j] == 5.0, expect)
    loss_w, _ = task.loss(task.train_module, batch)
    plain = build_trainer(load_recipe("vae-small", [*sets, f"output.dir={tmp_path / 'p'}"])).task
    assert plain.batch(2, 0)["pixel_weights"] is None
    assert float(loss_w) != float(plain.loss(plain.train_module, {**batch, "pixel_weights": None})[0])


def test_mfu_is_model_flops_over_device_peak(tmp_path):
    assert peak_flops("cpu") is None
    log = MetricsLogger(tmp_path, total_steps=2, log_every=1, progress=False, peak=1e9)
    rec = log.step(1, {"loss": 1.0}, tokens=100, flops=5e6)
    assert rec is not None and rec["mfu"] == pytest.approx(5e6 * rec["steps_per_s"] / 1e9, rel=1e-9)
    assert rec["tokens_per_s"] == pytest.approx(100 * rec["steps_per_s"], rel=1e-9)
    log.close()


def test_debug_loss_curve_matches_committed_baseline(data_dir, tmp_path):
    """The first 20 CPU losses of the debug recipe (seed 0). See the module docstring to refresh."""
    result = run_from_config("debug", [f"data.path={data_dir}", f"output.dir={tmp_path}", "train.device=cpu",
                                       "output.progress=false"])
    losses = result.losses
    if os.environ.get("STORYREEL_REFRESH_BASELINE") == "1":
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        BASELINE.write_text(json.dumps({
            "recipe": "debug", "device": "cpu", "threads": 1, "torch": torch.__version__,
            "refresh": "STORYREEL_REFRESH_BASELINE=1 .venv/bin/python -m pytest tests/test_train.py -k baseline",
            "losses": losses,
        }, indent=1) + "\n")
    baseline = json.loads(BASELINE.read_text())
    assert len(losses) == len(baseline["losses"]) == 20
    np.testing.assert_allclose(losses, baseline["losses"], rtol=1e-4, atol=1e-6)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # the debug recipe does learn


@pytest.mark.gpu
def test_debug_recipe_trains_on_cuda_in_bf16(data_dir, tmp_path):
    r = load_recipe("debug", [f"data.path={data_dir}", f"output.dir={tmp_path}", "train.device=cuda",
                              "output.progress=false", "train.steps=3"])
    trainer = build_trainer(r)
    assert trainer.device.type == "cuda" and trainer.autocast_dtype == torch.bfloat16
    for _ in trainer.steps():
        pass
    assert all(math.isfinite(h["loss"]) for h in trainer.history)
    assert next(trainer.raw.parameters()).dtype == torch.float32  # master weights stay float32
    rec = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert rec["mfu"] is None or 0 < rec["mfu"] < 1


def test_init_grow_starts_a_deeper_model_from_a_trained_one(data_dir, tmp_path):
    from storyreel.pretrained import CheckpointError

    src = tmp_path / "shallow"
    run_from_config("debug", [f"data.path={data_dir}", f"output.dir={src}", "train.device=cpu",
                              "output.progress=false", "train.steps=2"])
    with pytest.raises(CheckpointError, match="missing"):  # a deeper model does not load the weights as they are
        build_trainer(debug(data_dir, tmp_path / "plain", "model.overrides.depth=4", f"model.init_from={src}"))
    trainer = build_trainer(debug(data_dir, tmp_path / "deep", "model.overrides.depth=4", f"model.init_from={src}",
                                  "model.init_grow=true", "train.steps=2"))
    from safetensors.torch import load_file

    ema = load_file(str(src / "checkpoints" / "step-000002" / "ema" / "model.safetensors"))
    state = trainer.raw.state_dict()
    assert len(trainer.raw.blocks) == 4
    for name in ema:  # debug depth 2 → blocks 0 and 3
        new = name.replace("blocks.1.", "blocks.3.") if name.startswith("blocks.1.") else name
        assert torch.equal(state[new], ema[name]), name
    for _ in trainer.steps():
        pass
