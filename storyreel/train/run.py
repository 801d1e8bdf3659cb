"""Entry points: ``run_from_config(path, overrides, resume)`` (what ``storyreel train`` calls) and the
``torchrun`` launcher ``python -m storyreel.train``; both run the same :class:`Trainer`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml

from storyreel.train.config import Recipe, RecipeError, load_recipe, recipe_to_dict
from storyreel.train.scenes import ensure_dataset
from storyreel.train.trainer import Trainer
from storyreel.utils import atomic_write, seed_everything

__all__ = ["TrainResult", "build_trainer", "run_from_config", "run_recipe"]


@dataclass
class TrainResult:
    """What a finished run produced (on rank 0; other ranks get the same paths)."""

    run_dir: Path
    model_dir: Path  # EMA weights as a from_pretrained folder
    step: int
    losses: list[float] = field(default_factory=list)  # per step of this session
    resumed_from: Path | None = None


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (or an initialised process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(recipe: Recipe, local_rank: int, world_size: int) -> torch.device:
    want = recipe.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if not want.startswith("cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RecipeError("train.device asks for CUDA but no GPU is visible; use --set train.device=cpu (or auto)")
    if world_size > 1:
        index = local_rank
    else:
        index = torch.device(want).index if torch.device(want).index is not None else torch.cuda.current_device()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _prepare_run_dir(recipe: Recipe, resume: Path | None, rank: int) -> Path:
    run = Path(recipe.output.dir)
    if rank == 0:
        ckpts = run / "checkpoints"
        if resume is None and ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir()):
            raise RecipeError(
                f"output.dir {run} already holds checkpoints of a run; continue it with --resume {run}, "
                "or start afresh with --set output.dir=NEW_DIR (or delete the folder)"
            )
        run.mkdir(parents=True, exist_ok=True)
        with atomic_write(run / "recipe.yaml", "w") as fh:
            yaml.safe_dump(recipe_to_dict(recipe), fh, sort_keys=False)
    return run


def build_trainer(recipe: Recipe, *, device: torch.device | None = None, rank: int = 0, world_size: int = 1) -> Trainer:
    """Synthesise the data folder if needed, build the recipe's task and a :class:`Trainer` (no steps run)."""
    device = device or _device(recipe, 0, 1)
    if recipe.kind == "backbone":  # the weights folder is checked before any data is synthesised
        from storyreel.train.backbone_task import check_backbone_recipe

        check_backbone_recipe(recipe)
    if rank == 0:
        ensure_dataset(recipe.data.path, recipe.data.synth, progress=recipe.output.progress)
    if world_size > 1:
        dist.barrier()  # the other ranks wait for rank 0 to finish synthesising
    seed_everything(recipe.train.seed + rank)
    if recipe.kind == "vae":
        from storyreel.train.vae_trainer import VAETask

        task: Any = VAETask(recipe, device=device, rank=rank, world_size=world_size)
    elif recipe.kind == "backbone":
        from storyreel.train.backbone_task import BackboneTask

        task = BackboneTask(recipe, device=device, rank=rank, world_size=world_size)
    else:
        from storyreel.train.scene_task import SceneTask

        task = SceneTask(recipe, device=device, rank=rank, world_size=world_size)
    return Trainer(recipe, task, device=device, rank=rank, world_size=world_size)


def run_recipe(recipe: Recipe, *, resume: str | os.PathLike[str] | None = None) -> TrainResult:
    """Train ``recipe`` to ``train.steps`` (optionally continuing from ``resume``); distributed under torchrun.

    Raises RecipeError (bad recipe), CheckpointError (bad/mismatched checkpoint), DatasetError (bad data) and
    NonFiniteLossError (training diverged; the state was saved) with messages that name the fix.
    """
    rank, world, local = _dist_env()
    own_group = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and recipe.train.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
        own_group = True
    try:
        if recipe.kind == "backbone":  # before the run folder or any data is written
            from storyreel.train.backbone_task import check_backbone_recipe

            check_backbone_recipe(recipe)
        device = _device(recipe, local, world)
        resume_path = Path(resume) if resume is not None else None
        run = _prepare_run_dir(recipe, resume_path, rank)
        trainer = build_trainer(recipe, device=device, rank=rank, world_size=world)
        resumed = trainer.resume(resume_path) if resume_path is not None else None
        if resumed is not None and rank == 0:
            print(f"resumed from {resumed} at step {trainer.step}", flush=True)
        history = trainer.fit()
        return TrainResult(run_dir=run, model_dir=run / "model", step=trainer.step,
                           losses=[h["loss"] for h in history], resumed_from=resumed)
    finally:
        if own_group:
            dist.destroy_process_group()


def run_from_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None, resume: str | os.PathLike[str] | None = None
) -> TrainResult:
    """Load a recipe (a YAML path or a name in ``configs/``), apply ``--set`` overrides, train (resuming if asked)."""
    recipe = load_recipe(path, overrides or [])
    return run_recipe(recipe, resume=resume)
