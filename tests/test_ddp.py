"""Scale-out on CPU: two gloo processes train the debug recipe with DDP (and FSDP2) and end with identical
weights, having seen different data; the torchrun entry point runs the same trainer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from storyreel.train import build_trainer, load_recipe

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sets(data_dir: Path, out: Path, strategy: str) -> list[str]:
    return [f"data.path={data_dir}", f"output.dir={out}", "train.device=cpu", "output.progress=false",
            "train.steps=3", "output.checkpoint_every=3", f"train.parallel.strategy={strategy}",
            "data.single_shot_prob=0.0"]


def _worker(rank: int, world: int, port: int, data_dir: str, root: str, strategies: tuple[str, ...]) -> None:
    """One rank: train the debug recipe once per strategy, save its (gathered) weights and what it saw."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for strategy in strategies:
            out = Path(root) / strategy
            extra = ["train.parallel.activation_checkpointing=true"] if strategy == "fsdp" else []
            recipe = load_recipe("debug", [*_sets(Path(data_dir), out, strategy), *extra])
            trainer = build_trainer(recipe, device=torch.device("cpu"), rank=rank, world_size=world)
            seen: list = []
            build = trainer.task.batch

            def recording(step, micro, build=build, seen=seen):
                batch = build(step, micro)
                seen.append(batch.sources)
                return batch

            trainer.task.batch = recording
            history = trainer.fit()
            # every rank's own copy (FSDP: gather the shards; a collective, so all ranks call it in order)
            state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                     for k, v in trainer.raw.state_dict().items()}
            # resume the run on the same ranks for two more steps (sharded load of the full checkpoint)
            more = build_trainer(load_recipe("debug", [*_sets(Path(data_dir), out, strategy), *extra, "train.steps=5"]),
                                 device=torch.device("cpu"), rank=rank, world_size=world)
            more.resume(out)
            resumed = more.fit()
            after = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                     for k, v in more.raw.state_dict().items()}
            torch.save({"state": state, "seen": seen, "losses": [h["loss"] for h in history],
                        "kind": type(trainer.model).__name__, "resumed_state": after,
                        "resumed_steps": [h["step"] for h in resumed]}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(data_dir, tmp_path):
    strategies = ("ddp", "fsdp")
    mp.spawn(_worker, args=(2, _free_port(), str(data_dir), str(tmp_path), strategies), nprocs=2, join=True)
    init = build_trainer(load_recipe("debug", _sets(data_dir, tmp_path / "init", "none"))).full_model_state()
    for strategy in strategies:
        out = tmp_path / strategy
        r0 = torch.load(out / "rank0.pt", weights_only=False)
        r1 = torch.load(out / "rank1.pt", weights_only=False)
        assert r0["kind"] == ("DistributedDataParallel" if strategy == "ddp" else "FSDPMultiShotMMDiT")
        assert r0["seen"] != r1["seen"]  # each rank trained on its own share of the batch
        assert r0["losses"] == r1["losses"]  # the logged loss is the all-reduced mean
        assert set(r0["state"]) == set(init)
        moved = 0
        for k, v in r0["state"].items():
            assert torch.equal(v, r1["state"][k]), (strategy, k)
            moved += int(not torch.equal(v, init[k]))
        assert moved > 0, strategy
        assert r0["resumed_steps"] == r1["resumed_steps"] == [4, 5]
        for k, v in r0["resumed_state"].items():
            assert torch.equal(v, r1["resumed_state"][k]), (strategy, "resumed", k)
        saved = load_file(str(out / "checkpoints" / "step-000003" / "model" / "model.safetensors"))  # rank 0 wrote it
        assert set(saved) == set(r0["state"])
        assert all(torch.equal(saved[k], r0["state"][k]) for k in saved)  # full, gathered weights


@pytest.mark.slow
def test_torchrun_entry_point_runs_the_trainer(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "storyreel.train", "debug", *[a for s in _sets(data_dir, tmp_path, "ddp") for a in ("--set", s)]]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: step 3" in proc.stdout
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-000003"
