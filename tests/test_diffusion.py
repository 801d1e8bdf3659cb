"""Rectified-flow path and samplers: analytic checks."""

import pytest
import torch

from storyreel.diffusion import (
    expand_shot_timesteps,
    flow_target,
    inference_timesteps,
    noise_latents,
    sample_train_timesteps,
    shift_timesteps,
)
from storyreel.sampling import classifier_free_guidance, sample_flow


def _oracle(x0: torch.Tensor, frames: list[int]):
    """Exact velocity of the straight path that ends at ``x0``: v = (x_t - x0) / t."""

    def model_fn(x, t_row):
        t = expand_shot_timesteps(t_row, frames).clamp_min(1e-12)
        return (x - x0) / t

    return model_fn


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_sampler_integrates_straight_flow_exactly(solver, steps):
    frames = [2, 3]
    x0 = torch.randn(2, 4, 5, 3, 3)
    noise = torch.randn_like(x0)
    grid = inference_timesteps(steps, shift=3.0)
    timesteps = grid[:, None, None].expand(steps + 1, 2, 2)
    out = sample_flow(_oracle(x0, frames), noise, timesteps, expand=lambda t: expand_shot_timesteps(t, frames), solver=solver)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_conditioning_shot_at_tc_stays_frozen():
    frames = [2, 2]
    x0 = torch.randn(1, 3, 4, 2, 2)
    noise = torch.randn_like(x0)
    t_c = 0.0
    steps = 4
    grid = inference_timesteps(steps)
    timesteps = torch.stack([torch.full((steps + 1,), t_c), grid], dim=-1)[:, None, :]  # [N+1, 1, 2]
    start = noise.clone()
    start[:, :, :2] = x0[:, :, :2]  # shot 0 given clean
    out = sample_flow(_oracle(x0, frames), start, timesteps, expand=lambda t: expand_shot_timesteps(t, frames))
    assert torch.equal(out[:, :, :2], x0[:, :, :2])
    torch.testing.assert_close(out[:, :, 2:], x0[:, :, 2:], atol=1e-5, rtol=1e-5)


def test_noise_and_target_definitions():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([[0.25], [1.0]])
    xt = noise_latents(x0, eps, t)
    torch.testing.assert_close(xt[1], eps[1])
    torch.testing.assert_close(xt[0], 0.75 * x0[0] + 0.25 * eps[0])
    # moving along the target velocity from x_t by -t lands on x0
    torch.testing.assert_close(xt - t * flow_target(x0, eps), x0)


def test_shift_and_grids():
    t = torch.linspace(0, 1, 11)
    s = shift_timesteps(t, 3.0)
    assert s[0] == 0 and s[-1] == 1 and bool((s >= t).all())
    grid = inference_timesteps(8, shift=2.0)
    assert grid.shape == (9,) and grid[0] == 1 and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())
    with pytest.raises(ValueError, match="steps"):
        inference_timesteps(0)
    with pytest.raises(ValueError, match="shift"):
        shift_timesteps(t, 0.0)


def test_train_timesteps_independent_vs_shared():
    g = torch.Generator().manual_seed(0)
    ind = sample_train_timesteps(64, 4, generator=g)
    shared = sample_train_timesteps(64, 4, independent=False, generator=g)
    assert ind.shape == shared.shape == (64, 4)
    assert bool((ind > 0).all() and (ind < 1).all())
    assert (ind.std(dim=1) > 1e-3).float().mean() > 0.9
    assert torch.equal(shared, shared[:, :1].expand_as(shared))


def test_expand_checks_shot_count():
    with pytest.raises(ValueError, match="3 shots"):
        expand_shot_timesteps(torch.zeros(1, 2), [1, 1, 1])


def test_sampler_rejects_increasing_grid():
    with pytest.raises(ValueError, match="increase"):
        sample_flow(lambda x, t: x, torch.zeros(1), torch.tensor([0.0, 1.0]), expand=lambda t: t)


def test_cfg_combination():
    cond = lambda x, t: x + 1.0  # noqa: E731
    uncond = lambda x, t: x  # noqa: E731
    x = torch.zeros(3)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 4.0)(x, None), torch.full((3,), 4.0))
    assert classifier_free_guidance(cond, uncond, 1.0) is cond
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 0.0)(x, None), x)
    with pytest.raises(ValueError):
        classifier_free_guidance(cond, uncond, -1.0)
