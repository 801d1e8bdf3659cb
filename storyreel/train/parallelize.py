"""Scale-out for training, applied to a single-device model in ONE fixed order (after torchtitan):

1. shard  — tensor parallelism is not offered (our models fit one device); the step is the hook where it would go,
2. activation checkpointing — per transformer block (``model.blocks``), non-reentrant,
3. compile — ``torch.compile`` per block (in place, so parameter names do not change); a block recompiles for
   each new sequence structure, so it pays off only when the shot count is fixed (on an H100 the scene-small
   schedule, whose layouts vary per step, ran slower compiled than eager),
4. data parallelism — FSDP2 (``torch.distributed.fsdp.fully_shard`` per block, then the root) or DDP.

Model files stay single-device; everything distributed lives here.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from storyreel.train.config import ParallelConfig

__all__ = ["blocks_of", "parallelize", "resolve_strategy"]


def resolve_strategy(cfg: ParallelConfig, world_size: int) -> str:
    """``auto`` → ``ddp`` when ``world_size > 1`` else ``none``; ddp/fsdp with one process fall back to ``none``."""
    if cfg.strategy == "auto":
        return "ddp" if world_size > 1 else "none"
    if cfg.strategy in ("ddp", "fsdp") and world_size == 1:
        return "none"
    return cfg.strategy


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a model: ``model.blocks`` or, failing that, the largest ``ModuleList``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return list(blocks)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def _checkpoint_block(block: nn.Module) -> None:
    """Recompute ``block``'s activations in backward (its ``forward`` is wrapped in place; state-dict names unchanged)."""
    if getattr(block, "_storyreel_ckpt", False):
        return
    inner = block.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward  # type: ignore[method-assign]
    block._storyreel_ckpt = True  # type: ignore[attr-defined]


def parallelize(model: nn.Module, cfg: ParallelConfig, *, device: torch.device, world_size: int) -> nn.Module:
    """Apply activation checkpointing → compile → FSDP2/DDP to ``model`` (already on ``device``).

    Returns the module to call in training (a ``DistributedDataParallel`` wrapper for DDP; for FSDP2 and
    ``none`` the same object, modified in place). Keep a reference to the original model for state dicts.
    """
    strategy = resolve_strategy(cfg, world_size)
    if strategy != "none" and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"train.parallel.strategy={strategy!r} needs torch.distributed; launch with "
            "`torchrun --nproc-per-node N -m storyreel.train RECIPE` (or set train.parallel.strategy=none)"
        )
    blocks = blocks_of(model)
    # 1. shard: no tensor parallelism (see module docstring)
    # 2. activation checkpointing
    if cfg.activation_checkpointing:
        if not blocks:
            raise ValueError(f"train.parallel.activation_checkpointing needs a model with blocks; {type(model).__name__} has none")
        for block in blocks:
            _checkpoint_block(block)
    # 3. compile (per block, in place)
    if cfg.compile:
        for block in blocks or [model]:
            block.compile()
    # 4. data parallelism
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else None
        kwargs = {"mp_policy": mp} if mp is not None else {}
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    return model
