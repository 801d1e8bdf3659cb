"""Rectified-flow path: noising, training targets, timestep sampling and shift schedules."""

from storyreel.diffusion.flow import (
    expand_shot_timesteps,
    flow_target,
    inference_timesteps,
    noise_latents,
    sample_train_timesteps,
    shift_timesteps,
)

__all__ = [
    "expand_shot_timesteps",
    "flow_target",
    "inference_timesteps",
    "noise_latents",
    "sample_train_timesteps",
    "shift_timesteps",
]
