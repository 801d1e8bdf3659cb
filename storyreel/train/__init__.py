"""Training: recipes (YAML → dataclasses), the shared trainer, checkpoints, scale-out.

``run_from_config(path, overrides, resume)`` is what ``storyreel train RECIPE --set a.b=c --resume DIR`` calls;
``torchrun --nproc-per-node N -m storyreel.train RECIPE ...`` runs the same trainer with DDP/FSDP2.
"""

from storyreel.train.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from storyreel.train.config import (
    BackboneConfig,
    DataConfig,
    ModelConfig,
    OutputConfig,
    ParallelConfig,
    Recipe,
    RecipeError,
    ScheduleConfig,
    StageConfig,
    SynthConfig,
    TimestepConfig,
    TrainConfig,
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
)
from storyreel.train.run import TrainResult, build_trainer, run_from_config, run_recipe
from storyreel.train.trainer import EMA, NonFiniteLossError, Trainer

__all__ = [
    "EMA",
    "BackboneConfig",
    "CheckpointError",
    "DataConfig",
    "ModelConfig",
    "NonFiniteLossError",
    "OutputConfig",
    "ParallelConfig",
    "Recipe",
    "RecipeError",
    "ScheduleConfig",
    "StageConfig",
    "SynthConfig",
    "TimestepConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_overrides",
    "build_trainer",
    "load_checkpoint",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
    "resolve_checkpoint",
    "run_from_config",
    "run_recipe",
    "save_checkpoint",
]
