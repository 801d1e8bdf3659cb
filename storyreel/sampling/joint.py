"""Integrate the flow ODE over a grid of (possibly per-shot) timesteps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from storyreel.diffusion.solvers import ModelFn, euler_step, heun_step

__all__ = ["sample_flow"]


def sample_flow(
    model_fn: ModelFn,
    x: Tensor,
    timesteps: Tensor,
    *,
    expand: Callable[[Tensor], Tensor],
    solver: Literal["euler", "heun"] = "euler",
    callback: Callable[[int, int, Tensor], None] | None = None,
) -> Tensor:
    """Integrate ``dx/dt = model_fn(x, t)`` along ``timesteps`` from noise to data.

    Args:
        model_fn: ``(x, t_model) -> velocity`` with ``t_model`` one row of ``timesteps``.
        x: starting latent (noise where ``timesteps[0]`` is 1; conditioning tokens at their ``t_c``).
        timesteps: ``[N + 1, *t_shape]``, e.g. ``[N + 1, B, n_shots]``; rows decrease (or stay equal for
            frozen conditioning shots).
        expand: maps one row ``[*t_shape]`` to a tensor broadcastable against ``x``
            (e.g. ``lambda t: expand_shot_timesteps(t, frames)``).
        solver: ``"euler"`` (1 model call per step) or ``"heun"`` (2, Euler on the last step).
        callback: called as ``callback(step, n_steps, x)`` after each step.
    Returns:
        the latent at ``timesteps[-1]``.
    """
    if solver not in ("euler", "heun"):
        raise ValueError(f"solver must be 'euler' or 'heun', got {solver!r}")
    if timesteps.ndim < 1 or timesteps.shape[0] < 2:
        raise ValueError(f"timesteps needs at least 2 rows (N + 1 with N >= 1), got shape {tuple(timesteps.shape)}")
    if bool((timesteps[1:] > timesteps[:-1] + 1e-7).any()):
        raise ValueError("timesteps must not increase from one row to the next (sampling goes from noise to data)")
    n = timesteps.shape[0] - 1
    # the whole grid goes to x's device once: a host row per step would be a host->device copy (a stream
    # synchronisation) in every step and every model call
    timesteps = timesteps.to(x.device)
    for i in range(n):
        t_row, t_next_row = timesteps[i], timesteps[i + 1]
        t, t_next = expand(t_row).to(x), expand(t_next_row).to(x)  # x's device and dtype
        with torch.no_grad():
            if solver == "euler":
                x = euler_step(x, model_fn(x, t_row), t, t_next)
            else:
                x, _ = heun_step(model_fn, x, t_row, t_next_row, t, t_next)
        if callback is not None:
            callback(i + 1, n, x)
    return x
