"""Backbone fine-tuning (Wan / CogVideoX through diffusers) on tiny random weights folders, on CPU: the objectives
(flow for Wan, v-prediction with the scheduler's alphas for CogVideoX), LoRA and full steps that reduce the loss on
a repeated batch, LoRA touching only LoRA weights, the recipes, and an exported fine-tune feeding the pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storyreel.pipelines.backbone_weights import write_debug_weights
from storyreel.train import RecipeError, build_trainer, load_recipe
from storyreel.train.backbone_task import BackboneTask, lora_state_dict, noise_for_backbone
from storyreel.train.config import SynthConfig
from storyreel.train.scenes import ensure_dataset


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {kind: write_debug_weights(kind, root / kind, seed=1) for kind in ("wan", "cogvideox")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    synth = SynthConfig(n_scenes=4, seed=0, n_shots=3, resolution=32, frames=9, fps=8, long_take_prob=0.0, scenes_per_shard=8)
    return ensure_dataset(tmp_path_factory.mktemp("data") / "sw", synth, progress=False)


def _recipe(kind: str, weights: Path, shards: Path, out: Path, *sets: str):
    frames, text_len = (5, 8) if kind == "wan" else (9, 8)
    return load_recipe(f"{kind}-lora", [
        f"backbone.weights={weights}", f"data.path={shards}", "data.synth=null", f"data.frames={frames}",
        f"model.text_len={text_len}", "train.device=cpu", "train.batch_size=1", "data.prefetch=0",
        "data.frame_substitution=0.0", "data.single_shot_prob=0.0", "output.progress=false", f"output.dir={out}",
        "backbone.base_dtype=fp32", "schedule.stages.0.max_shots=2", *sets,
    ])


def _steps(task: BackboneTask, n: int, lr: float) -> list[float]:
    """``n`` AdamW steps on one repeated batch; the losses seen (fixed noise, timesteps and masks)."""
    batch = task.batch(0, 0)
    params = [p for p in task.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        loss, _ = task.loss(task.model, batch)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_objectives_invert_to_the_clean_latent():
    """Flow: ``x0 = x_t - t·v``; DDPM v: ``x0 = √ᾱ·x_t - √(1-ᾱ)·v``; clean shots are exactly clean at timestep 0."""
    from diffusers import CogVideoXDDIMScheduler

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 5, 3, 3, generator=g), torch.randn(2, 4, 5, 3, 3, generator=g)
    frames, t = [2, 3], torch.tensor([[0.3, 0.8], [0.5, 0.1]])
    clean = torch.tensor([[False, False], [True, False]])
    xt, v, tm = noise_for_backbone("flow", x0, eps, t, clean, frames)
    tf = torch.repeat_interleave(torch.where(clean, 0.0, t), torch.tensor(frames), dim=1)[:, None, :, None, None]
    torch.testing.assert_close(xt - tf * v, x0)
    assert tm.tolist() == [[300.0, 800.0], [0.0, 100.0]]
    abar = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True).alphas_cumprod
    xt, v, tm = noise_for_backbone("v", x0, eps, t, clean, frames, alphas_cumprod=abar)
    assert tm.tolist() == [[300.0, 800.0], [0.0, 100.0]]
    a = abar[tm.long()].float()
    af, sf = (torch.repeat_interleave(z, torch.tensor(frames), dim=1)[:, None, :, None, None] for z in (a.sqrt(), (1 - a).sqrt()))
    af = torch.where(torch.repeat_interleave(clean, torch.tensor(frames), dim=1)[:, None, :, None, None], 1.0, af)
    sf = torch.where(af == 1.0, 0.0, sf)
    torch.testing.assert_close(af * xt - sf * v, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xt[1, :, :2], x0[1, :, :2])  # the clean shot


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_lora_steps_reduce_loss_and_touch_only_lora(kind, weights, shards, tmp_path, one_thread):
    task = BackboneTask(_recipe(kind, weights[kind], shards, tmp_path), device=torch.device("cpu"))
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    lora = set(lora_state_dict(task.model))
    assert lora and task.trainable == sum(p.numel() for p in task.model.parameters() if p.requires_grad)
    assert {n for n, p in task.model.named_parameters() if p.requires_grad} == lora
    losses = _steps(task, 8, lr=1e-2)
    assert losses[-1] < 0.9 * losses[0], losses
    after = task.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= lora, sorted(changed - lora)[:5]


@pytest.mark.parametrize("kind", ["wan", "cogvideox"])
def test_full_steps_reduce_loss(kind, weights, shards, tmp_path, one_thread):
    task = BackboneTask(_recipe(kind, weights[kind], shards, tmp_path, "backbone.finetune=full"), device=torch.device("cpu"))
    assert not lora_state_dict(task.model) and all(p.requires_grad for p in task.model.parameters())
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    losses = _steps(task, 6, lr=1e-3)
    assert losses[-1] < 0.9 * losses[0], losses
    after = task.model.state_dict()
    assert sum(not torch.equal(before[k], after[k]) for k in before) > len(before) // 2


def test_recipes_need_the_weights_folder(weights, tmp_path):
    for name in ("wan-lora", "cogvideox-lora"):
        recipe = load_recipe(name)
        assert recipe.kind == "backbone" and recipe.backbone.finetune == "lora" and recipe.backbone.weights is None
        assert recipe.train.parallel.activation_checkpointing and recipe.train.precision == "bf16"
        with pytest.raises(RecipeError, match="backbone.weights is required.*--set backbone.weights="):
            BackboneTask(recipe, device=torch.device("cpu"))  # before anything is loaded
    assert load_recipe("cogvideox-lora").model.text_len == 226 and load_recipe("wan-lora").model.text_len == 512
    bad = load_recipe("wan-lora", [f"backbone.weights={tmp_path / 'nowhere'}", "train.device=cpu",
                                   f"data.path={tmp_path / 'data'}", f"output.dir={tmp_path / 'out'}"])
    with pytest.raises(RecipeError, match="backbone.weights: the wan weights folder .* does not exist"):
        build_trainer(bad, device=torch.device("cpu"))
    assert not (tmp_path / "data").exists()  # refused before any StoryWorld data was synthesised
    with pytest.raises(RecipeError, match=r"data.frames=16 is not 1 \+ 4·k"):
        build_trainer(load_recipe("wan-lora", [f"backbone.weights={weights['wan']}", "data.frames=16"]))
    with pytest.raises(RecipeError, match="goes with kind: backbone"):
        load_recipe("debug", [f"backbone.weights={weights['wan']}"])


def test_recipe_trains_exports_and_the_pipeline_loads_it(weights, shards, tmp_path, one_thread):
    """Two trainer steps (EMA, checkpoint, export) with activation checkpointing; the export, loaded by the pipeline
    with its LoRA merged, changes the backbone's weights and generates."""
    from storyreel.pipelines.backbone import BackboneDefaults, BackbonePipeline
    from storyreel.script import parse_script
    from storyreel.train import run_recipe

    recipe = _recipe("wan", weights["wan"], shards, tmp_path / "run", "train.steps=2", "output.checkpoint_every=2",
                     "train.precision=fp32", "train.ema_decay=0.0")
    result = run_recipe(recipe)
    assert result.step == 2 and (result.model_dir / "model.safetensors").is_file()
    base = BackbonePipeline.from_weights("wan", weights["wan"], text_len=8)
    tuned = BackbonePipeline.from_weights("wan", weights["wan"], finetuned=result.model_dir,
                                          defaults=BackboneDefaults(steps=2, guidance=1.0))
    assert tuned.text_len == 8 and tuned.name.endswith("+model")
    w0 = dict(base.backbone.named_parameters())
    tuned_w = {n.replace(".base_layer", ""): p for n, p in tuned.backbone.named_parameters() if "lora_" not in n}
    assert set(tuned_w) == set(w0)
    diff = [n for n, p in tuned_w.items() if not torch.equal(p, w0[n])]  # LoRA folded into the targeted linears only
    assert diff and all(n.split(".")[-2] in ("to_q", "to_k", "to_v", "0", "proj", "2") for n in diff), diff
    script = parse_script({"title": "t", "global": {"characters": [], "setting": "a park"}, "shots": [{"prompt": "a man walks"}],
                           "settings": {"resolution": [32, 32], "frames": 5, "fps": 8}})
    assert tuned.generate(script).videos[0].shape == (5, 32, 32, 3)
    assert tuned.weights_sha256() != base.weights_sha256()


# ------------------------------------------------------------------------------------------------ two processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, weights: str, shards: str, root: str) -> None:
    """One rank: LoRA-train the Wan recipe under FSDP2 (+ activation checkpointing) and under DDP, save the LoRA."""
    import os

    import torch.distributed as dist

    from storyreel.train import build_trainer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {}
        for strategy in ("fsdp", "ddp"):
            recipe = _recipe("wan", Path(weights), Path(shards), Path(root) / strategy, "train.steps=2",
                             "output.checkpoint_every=2", "train.precision=fp32", f"train.parallel.strategy={strategy}")
            trainer = build_trainer(recipe, device=torch.device("cpu"), rank=rank, world_size=world)
            history = trainer.fit()
            state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                     for k, v in trainer.raw.state_dict().items() if "lora_B" in k}
            out[strategy] = {"lora_B": state, "kind": type(trainer.model).__name__, "loss": [h["loss"] for h in history]}
        torch.save(out, Path(root) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_fsdp2_and_ddp_lora(weights, shards, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(weights["wan"]), str(shards), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for strategy in ("fsdp", "ddp"):
        a, b = r0[strategy]["lora_B"], r1[strategy]["lora_B"]
        assert a and set(a) == set(b)
        for k in a:  # synchronised updates: identical LoRA on both ranks, moved away from B = 0
            torch.testing.assert_close(a[k], b[k])
        assert any(bool(v.abs().sum() > 0) for v in a.values())
    assert r0["ddp"]["kind"] == "DistributedDataParallel" and r0["fsdp"]["kind"].startswith("FSDP")
    assert (tmp_path / "fsdp" / "model" / "model.safetensors").is_file()
