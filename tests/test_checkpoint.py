"""Checkpoints: exact resume on CPU, atomic writes and the `latest` pointer, clear errors for corrupt or
mismatched checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from storyreel.train import CheckpointError, build_trainer, load_recipe, run_from_config
from storyreel.train.checkpoint import capture_rng, list_checkpoints, load_checkpoint, resolve_checkpoint, restore_rng
from storyreel.train.scenes import SceneOrder

pytestmark = pytest.mark.usefixtures("one_thread")


def sets(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.path={data_dir}", f"output.dir={out}", "train.device=cpu", "output.progress=false", *extra]


@pytest.fixture(scope="module")
def short_run(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "debug"
    run_from_config("debug", sets(data_dir, out, "train.steps=4", "output.checkpoint_every=2"))
    return out


def test_resume_continues_exactly(data_dir, tmp_path):
    """10 steps straight == 6 steps, stop, resume to 10 (losses and final weights bit for bit on CPU)."""
    common = ["train.steps=10", "output.checkpoint_every=3", "output.keep_last=5", "train.grad_accum=2"]
    full = run_from_config("debug", sets(data_dir, tmp_path / "full", *common))
    part = run_from_config("debug", sets(data_dir, tmp_path / "part", *common, "train.steps=6"))
    assert part.losses == full.losses[:6]
    rest = run_from_config("debug", sets(data_dir, tmp_path / "part", *common), resume=tmp_path / "part")
    assert rest.resumed_from == tmp_path / "part" / "checkpoints" / "step-000006"
    assert len(rest.losses) == 4
    assert max(abs(a - b) for a, b in zip(rest.losses, full.losses[6:])) <= 1e-6
    for sub in ("model", "ema"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / "step-000010" / sub / "model.safetensors"))
        b = load_file(str(tmp_path / "part" / "checkpoints" / "step-000010" / sub / "model.safetensors"))
        for k in a:
            assert torch.equal(a[k], b[k]), (sub, k)
    steps = [json.loads(x)["step"] for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # the resumed log continues without duplicates


def test_checkpoint_contents_latest_pointer_and_retention(short_run):
    ckpts = list_checkpoints(short_run)
    assert [c.name for c in ckpts] == ["step-000002", "step-000004"]
    assert resolve_checkpoint(short_run) == short_run / "checkpoints" / "step-000004"
    ck = load_checkpoint(short_run)
    assert ck.step == 4 and ck.class_name == "MultiShotMMDiT" and ck.ema_state is not None
    assert set(ck.model_state) == set(ck.ema_state)
    assert any(not torch.equal(ck.model_state[k], ck.ema_state[k]) for k in ck.model_state)
    assert ck.data_state["task"]["order"]["pos"] > 0 and ck.recipe["name"] == "debug"
    assert {"python", "numpy", "torch"} <= set(ck.rng)
    assert ck.optimizer_state["param_groups"][0]["lr"] > 0
    assert not list((short_run / "checkpoints").glob(".tmp-*"))


def test_rng_and_sampler_state_round_trip():
    import random

    import numpy as np

    state = capture_rng()
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == a
    order = SceneOrder(7, seed=3)
    first = [order.next() for _ in range(10)]  # crosses an epoch
    saved = order.state_dict()
    tail = [order.next() for _ in range(9)]
    again = SceneOrder(7, seed=3)
    again.load_state_dict(saved)
    assert [again.next() for _ in range(9)] == tail and sorted(first[:7]) == list(range(7))
    with pytest.raises(ValueError, match="same dataset"):
        SceneOrder(8, seed=3).load_state_dict(saved)


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_weights_name_the_file(short_run, data_dir, tmp_path):
    run = _copy_run(short_run, tmp_path / "run")
    weights = run / "checkpoints" / "step-000004" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"step-000004/model/model\.safetensors.*corrupt or truncated"):
        run_from_config("debug", sets(data_dir, tmp_path / "next", "train.steps=6"), resume=run)


def test_corrupt_state_and_optimizer_name_the_file(short_run, tmp_path):
    run = _copy_run(short_run, tmp_path / "run")
    ck = run / "checkpoints" / "step-000004"
    (ck / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"optimizer\.pt.*corrupt"):
        load_checkpoint(ck)
    (ck / "trainer_state.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json is not valid JSON"):
        load_checkpoint(ck)


def test_mismatched_checkpoint_names_the_differences(short_run, data_dir, tmp_path):
    trainer = build_trainer(load_recipe("debug", sets(data_dir, tmp_path, "model.overrides.hidden=64")))
    with pytest.raises(CheckpointError, match=r"config\.json was written for a different model config: hidden: checkpoint 32 vs recipe 64"):
        trainer.resume(short_run)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        trainer.resume(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.resume(tmp_path / "missing")


def test_dangling_latest_pointer_is_reported(short_run, tmp_path):
    run = _copy_run(short_run, tmp_path / "run")
    (run / "checkpoints" / "latest").write_text("step-000099\n")
    with pytest.raises(CheckpointError, match="points at 'step-000099'"):
        resolve_checkpoint(run)
    assert resolve_checkpoint(run / "checkpoints" / "step-000002").name == "step-000002"


def test_init_from_checks_shapes(short_run, data_dir, tmp_path):
    recipe = load_recipe("debug", sets(data_dir, tmp_path, f"model.init_from={short_run}", "model.overrides.depth=3"))
    with pytest.raises(CheckpointError, match=r"ema/model\.safetensors does not match .*missing"):
        build_trainer(recipe)


def test_prefetcher_reports_the_position_before_unconsumed_batches():
    from storyreel.train.batching import Prefetcher

    order = SceneOrder(50, seed=1)

    def build(step, micro):
        return (step, micro, order.next())

    pre = Prefetcher(build, order.state_dict, order.load_state_dict, accum=2, depth=3)
    got = [pre.get(s, m) for s in range(3) for m in range(2)]
    assert [g[:2] for g in got] == [(s, m) for s in range(3) for m in range(2)]
    state = pre.state_dict()  # the thread has built ahead, but the position is after the 6 batches handed out
    assert state["pos"] == 6
    reference = SceneOrder(50, seed=1)
    assert [g[2] for g in got] == [reference.next() for _ in range(6)]
    jump = pre.get(7, 1)  # out of order: rewind to the first unconsumed batch, then build the request
    assert jump[:2] == (7, 1) and jump[2] == reference.next()
    pre.close()
    assert order.state_dict()["pos"] == 7
    sync = Prefetcher(build, order.state_dict, order.load_state_dict, accum=1, depth=0)
    assert sync.get(0, 0)[2] == reference.next() and sync.state_dict()["pos"] == 8

    def broken(step, micro):
        raise ValueError(f"bad data at step {step}")

    failing = Prefetcher(broken, order.state_dict, order.load_state_dict, accum=1, depth=2)
    with pytest.raises(ValueError, match="bad data at step 0"):
        failing.get(0, 0)
