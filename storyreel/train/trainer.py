"""The training loop shared by every recipe: optimiser, accumulation, clipping, bf16 autocast, EMA,
non-finite guard, logging and exact resume.

What is trained and how a batch becomes a loss is a *task* (``SceneTask`` for the multi-shot
diffusion backbone, ``VAETask`` for the video VAE); the :class:`Trainer` owns everything else.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from storyreel.train.checkpoint import (
    CheckpointError,
    check_config_matches,
    check_state_matches,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    write_model_folder,
)
from storyreel.train.config import Recipe, recipe_to_dict
from storyreel.train.logging import MetricsLogger, peak_flops
from storyreel.train.parallelize import parallelize, resolve_strategy

__all__ = ["EMA", "NonFiniteLossError", "Task", "Trainer", "lr_factor"]


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the state at that step was saved for inspection."""


class Task(Protocol):
    """What a recipe trains (see ``SceneTask`` / ``VAETask``)."""

    model: nn.Module
    model_config: Any
    class_name: str

    def batch(self, step: int, micro: int) -> Any: ...
    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]: ...
    def tokens(self, batch: Any) -> int: ...
    def flops(self, batch: Any) -> float | None: ...
    def describe(self, batch: Any) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def extra(self) -> dict[str, Any]: ...


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: Tensor) -> Tensor:
    """The full tensor of a DTensor (collective), or the tensor itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class EMA:
    """Exponential moving average of a model's parameters, kept in float32 beside them (same sharding).

    ``update()``: ``ema ← d·ema + (1 − d)·θ`` with ``d = decay`` (or, with ``warmup``, ``min(decay, (1+n)/(10+n))``
    after ``n`` updates, so early averages are not dominated by the random initialisation).
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = {n: params[n].detach().clone().float() for n in self.names}
        self._params = [params[n] for n in self.names]

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        shadows = [_local(self.shadow[n]) for n in self.names]
        news = [_local(p.detach()).float() for p in self._params]
        torch._foreach_lerp_(shadows, news, 1.0 - d)
        self.updates += 1

    def full_state(self, model_state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``model_state`` (full, CPU) with parameters replaced by their EMA (collective under FSDP)."""
        out = dict(model_state)
        for n in self.names:
            value = _full(self.shadow[n]).detach().cpu()
            out[n] = value.to(model_state[n].dtype) if n in model_state else value
        return out

    def load_full_state(self, state: dict[str, Tensor]) -> None:
        """Load EMA values from a full state dict (re-sharded like the parameters)."""
        for n, p in zip(self.names, self._params):
            if n not in state:
                raise CheckpointError(f"EMA weights lack {n!r}; the checkpoint was written for another model")
            full = state[n].float()
            if hasattr(p, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor

                self.shadow[n] = distribute_tensor(full.to(_local(p).device), p.device_mesh, p.placements)
            else:
                self.shadow[n] = full.to(p.device)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warmup over ``warmup`` steps, then constant or cosine to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Runs a task under a recipe on one process (or one rank of a ``torchrun`` job).

    Args:
        recipe: the validated recipe.
        task: builds batches and losses; ``task.model`` is the raw single-device model (already on ``device``).
        device: where the model runs.
        rank, world_size: the process's place in a distributed job (1 = single process).
    """

    def __init__(self, recipe: Recipe, task: Task, *, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        self.recipe = recipe
        self.task = task
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.run_dir = Path(recipe.output.dir)
        tc = recipe.train
        self.raw = task.model
        self.strategy = resolve_strategy(tc.parallel, world_size)
        # the module called in training: the model, or a task's loss wrapper around it (so DDP sees the forward)
        self.model = parallelize(getattr(task, "train_module", self.raw), tc.parallel, device=device, world_size=world_size)
        self.ema = EMA(self.raw, tc.ema_decay, warmup=tc.ema_warmup)
        params = [p for p in self.raw.parameters() if p.requires_grad]
        fused = device.type == "cuda" and self.strategy != "fsdp"
        self.optimizer = torch.optim.AdamW(
            params, lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps, weight_decay=tc.weight_decay, **({"fused": True} if fused else {})
        )
        total = tc.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, total=total, warmup=tc.warmup_steps, schedule=tc.lr_schedule, min_ratio=tc.min_lr_ratio),
        )
        precision = tc.precision if tc.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        from storyreel.train.batching import Prefetcher

        # batches of upcoming steps are built on a thread; task.batch is looked up at call time
        self.prefetch = Prefetcher(lambda s, m: self.task.batch(s, m), self.task.state_dict, self.task.load_state_dict,
                                   accum=tc.grad_accum, depth=recipe.data.prefetch)
        self.step = 0
        self.logger: MetricsLogger | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------ state

    def _sd_options(self) -> StateDictOptions:
        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def full_model_state(self) -> dict[str, Tensor]:
        """Full (unsharded) CPU state dict of the raw model (collective under FSDP)."""
        return {k: v.detach().cpu() for k, v in get_model_state_dict(self.raw, options=self._sd_options()).items()}

    def save(self, *, name: str | None = None, update_latest: bool = True) -> Path | None:
        """Write a checkpoint of the current step (every rank must call it; rank 0 writes). Returns its folder on rank 0."""
        model_state = self.full_model_state()
        ema_state = self.ema.full_state(model_state)
        optim_state = get_optimizer_state_dict(self.raw, self.optimizer, options=self._sd_options())
        path = None
        if self.rank == 0:
            path = save_checkpoint(
                self.run_dir, step=self.step, model_state=model_state, ema_state=ema_state, optimizer_state=optim_state,
                scheduler_state=self.scheduler.state_dict(),
                data_state={"task": self.prefetch.state_dict(), "ema_updates": self.ema.updates},
                model_config=self.task.model_config, class_name=self.task.class_name, recipe=recipe_to_dict(self.recipe),
                extra=self.task.extra(), keep_last=self.recipe.output.keep_last if update_latest else None,
                name=name, update_latest=update_latest,
            )
        self._barrier()
        return path

    def resume(self, path: str | Path) -> Path:
        """Continue from a checkpoint (a run folder, its ``checkpoints/latest`` or a ``step-*`` folder)."""
        ckpt = load_checkpoint(path)
        if ckpt.class_name and ckpt.class_name != self.task.class_name:
            raise CheckpointError(
                f"{ckpt.path / 'model'} holds a {ckpt.class_name}, but this recipe trains a {self.task.class_name}; "
                "resume with the recipe that wrote it"
            )
        check_config_matches(ckpt.model_config, self.task.model_config, source=ckpt.path / "model" / "config.json")
        own = dict(self.raw.state_dict())  # names and global shapes (DTensor.shape is global under FSDP), no gather
        check_state_matches(ckpt.model_state, own, source=ckpt.path / "model" / "model.safetensors")
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.raw, ckpt.model_state, options=StateDictOptions(full_state_dict=True))
        if ckpt.ema_state is not None:
            check_state_matches(ckpt.ema_state, own, source=ckpt.path / "ema" / "model.safetensors", what="EMA model")
            self.ema.load_full_state(ckpt.ema_state)
        try:
            set_optimizer_state_dict(self.raw, self.optimizer, ckpt.optimizer_state, options=StateDictOptions(full_state_dict=True))
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{ckpt.path / 'optimizer.pt'} does not fit this model's optimiser ({type(err).__name__}: {err}); "
                "resume with the recipe that wrote it"
            ) from err
        if ckpt.scheduler_state is not None:
            self.scheduler.load_state_dict(ckpt.scheduler_state)
        self.prefetch.close()
        try:
            self.task.load_state_dict(ckpt.data_state["task"])
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{ckpt.path / 'trainer_state.json'}: data sampler state does not fit: {err}") from err
        self.ema.updates = int(ckpt.data_state.get("ema_updates", ckpt.step))
        restore_rng(ckpt.rng)
        self.step = ckpt.step
        return ckpt.path

    # ------------------------------------------------------------------------------------------ steps

    def _barrier(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        if not last and self.strategy == "ddp":
            return self.model.no_sync()  # type: ignore[operator]
        if self.strategy == "fsdp":
            self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
        return contextlib.nullcontext()

    def _grad_norm(self) -> Tensor:
        params = [p for p in self.raw.parameters() if p.grad is not None]
        clip = self.recipe.train.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"), foreach=True)
        return _full(norm).float()

    def train_step(self) -> dict[str, Any]:
        """One optimiser step (``grad_accum`` micro-batches); returns its metrics. Raises NonFiniteLossError."""
        accum = self.recipe.train.grad_accum
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[Tensor] = []
        logs: dict[str, float] = {}
        tokens, flops, info = 0, 0.0, {}
        for micro in range(accum):
            batch = self.prefetch.get(self.step, micro)
            with self._no_sync(micro == accum - 1):
                with self._autocast():
                    loss, mlogs = self.task.loss(self.model, batch)
                (loss / accum).backward()
            losses.append(loss.detach().float())
            for k, v in mlogs.items():
                logs[k] = logs.get(k, 0.0) + v / accum
            tokens += self.task.tokens(batch)
            f = self.task.flops(batch)
            flops = flops + f if (f is not None and flops is not None) else None
            info = self.task.describe(batch)
        loss_t = torch.stack(losses).mean()
        norm = self._grad_norm()
        bad = (~torch.isfinite(loss_t)).float() + (~torch.isfinite(norm)).float()
        if self.world_size > 1:
            stats = torch.stack([loss_t.to(self.device), bad.to(self.device)])
            dist.all_reduce(stats)
            loss_t, bad = stats[0] / self.world_size, stats[1]
        loss_value, norm_value = float(loss_t), float(norm)
        if float(bad) > 0:
            self._nonfinite(loss_value, norm_value, info)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update()
        self.step += 1
        return {"loss": loss_value, "grad_norm": norm_value, "lr": self.scheduler.get_last_lr()[0], **logs, **info,
                "_tokens": tokens * self.world_size, "_flops": None if flops is None else flops * self.world_size}

    def _nonfinite(self, loss: float, norm: float, info: dict[str, Any]) -> None:
        name = f"nonfinite-step-{self.step:06d}"
        path = self.save(name=name, update_latest=False)
        where = path if path is not None else self.run_dir / "checkpoints" / name
        msg = (
            f"non-finite training signal at step {self.step} (loss={loss}, grad_norm={norm}, {info}); "
            f"the state before the update was saved to {where}. Lower train.lr, keep train.grad_clip set, check the data, "
            f"then resume from the last good checkpoint with --resume {self.run_dir}"
        )
        if self.logger is not None:
            self.logger.message(msg)
        raise NonFiniteLossError(msg)

    def steps(self, until: int | None = None) -> Iterator[dict[str, Any]]:
        """Iterate training steps up to ``until`` (default ``train.steps``), checkpointing on schedule."""
        total = self.recipe.train.steps if until is None else until
        out = self.recipe.output
        if self.logger is None:
            self.logger = MetricsLogger(
                self.run_dir, total_steps=self.recipe.train.steps, start_step=self.step, log_every=out.log_every,
                enabled=self.rank == 0, progress=out.progress, tensorboard=out.tensorboard, peak=peak_flops(self.device),
                world_size=self.world_size,
            )
        budget = self.recipe.train.max_minutes
        started = time.monotonic()
        while self.step < total:
            if budget is not None and self._out_of_time(started, budget):
                self.save()
                break
            metrics = self.train_step()
            tokens, flops = metrics.pop("_tokens"), metrics.pop("_flops")
            rec = self.logger.step(self.step, metrics, tokens=tokens, flops=flops)
            self.history.append({"step": self.step, **metrics})
            if self.step % out.checkpoint_every == 0 or self.step == self.recipe.train.steps:
                self.save()
                self.logger.reset_timer()
            yield rec or {"step": self.step, **metrics}

    def _out_of_time(self, started: float, budget_minutes: float) -> bool:
        """Whether the wall-clock budget is spent (rank 0 decides, so every rank stops at the same step).

        One process: a clock read, no device work. Several: one tiny broadcast per step, so that no rank
        stops alone (which would hang the others in their next collective).
        """
        spent = time.monotonic() - started > 60.0 * budget_minutes
        if self.world_size == 1 or not dist.is_initialized():
            return spent
        flag = torch.tensor([float(spent)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def fit(self) -> list[dict[str, Any]]:
        """Train to ``train.steps``; write the final EMA model to ``<run>/model``; return per-step metrics of this session."""
        try:
            for _ in self.steps():
                pass
            self.export(self.run_dir / "model")
        finally:
            self.prefetch.close()
            if self.logger is not None:
                self.logger.close()
        return self.history

    def export(self, directory: Path) -> Path | None:
        """Write the EMA weights as a ``from_pretrained`` folder (rank 0) and let the task finish it (e.g. VAE scaling)."""
        state = self.ema.full_state(self.full_model_state())
        if self.rank == 0:
            write_model_folder(directory, state, self.task.model_config, class_name=self.task.class_name, extra=self.task.extra())
            finalize = getattr(self.task, "finalize", None)  # optional: e.g. the VAE fits its latent scaling
            if finalize is not None:
                finalize(directory)
        self._barrier()
        return directory if self.rank == 0 else None
