"""Rectified flow with per-shot timesteps.

Conventions (design.md "Key definitions"): ``t ∈ [0, 1]`` with 1 = pure noise,
``x_t = (1 - t)·x0 + t·ε`` and the model predicts the velocity ``v = ε - x0``; conditioning shots
sit at ``t_c`` (0 = clean). Timestep shift follows SD3 (Esser et al. 2024): ``t' = s·t / (1 + (s-1)·t)``;
LCT samples an independent logit-normal timestep per shot (Guo et al. 2025, §3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "expand_shot_timesteps",
    "flow_target",
    "inference_timesteps",
    "noise_latents",
    "sample_train_timesteps",
    "shift_timesteps",
]


def shift_timesteps(t: Tensor, shift: float) -> Tensor:
    """Map ``t`` through the SD3 shift ``s·t / (1 + (s-1)·t)``; ``shift > 1`` spends more steps at high noise."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def inference_timesteps(steps: int, *, shift: float = 1.0, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """Sampling grid ``[steps + 1]`` from ``t_start`` down to ``t_end`` (float64 → float32), shifted."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    grid = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    return shift_timesteps(grid, shift).to(torch.float32)


def sample_train_timesteps(
    batch: int,
    n_shots: int,
    *,
    distribution: Literal["logit_normal", "uniform"] = "logit_normal",
    independent: bool = True,
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training timesteps ``[batch, n_shots]``.

    ``independent=True`` draws one timestep per shot (LCT's asynchronous timesteps);
    ``False`` shares one draw across the shots of a sample.
    """
    if distribution not in ("logit_normal", "uniform"):
        raise ValueError(f"distribution must be 'logit_normal' or 'uniform', got {distribution!r}")
    cols = n_shots if independent else 1
    if distribution == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(batch, cols, generator=generator, device=device))
    else:
        t = torch.rand(batch, cols, generator=generator, device=device)
    t = shift_timesteps(t, shift)
    return t.expand(batch, n_shots).contiguous()


def expand_shot_timesteps(t: Tensor, frames_per_shot: Sequence[int]) -> Tensor:
    """Per-shot timesteps ``[B, n_shots]`` → per-latent-frame ``[B, 1, T_total, 1, 1]`` for shots packed along time."""
    if t.ndim != 2 or t.shape[1] != len(frames_per_shot):
        raise ValueError(f"t has shape {tuple(t.shape)} but there are {len(frames_per_shot)} shots; expected [B, {len(frames_per_shot)}]")
    repeats = torch.as_tensor(list(frames_per_shot), device=t.device)
    per_frame = torch.repeat_interleave(t, repeats, dim=1)  # [B, T_total]
    return per_frame[:, None, :, None, None]


def noise_latents(x0: Tensor, noise: Tensor, t_frames: Tensor) -> Tensor:
    """``x_t = (1 - t)·x0 + t·ε`` with ``t_frames`` broadcastable to ``x0`` (e.g. from :func:`expand_shot_timesteps`)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    return (1.0 - t_frames) * x0 + t_frames * noise


def flow_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Velocity target ``ε - x0``."""
    return noise - x0
