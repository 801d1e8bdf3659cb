"""Per-token ODE steps for the rectified-flow probability path.

Timesteps may differ per token (per shot, per frame): every tensor of timesteps is broadcast
against the latent, so one step function serves joint, autoregressive (conditioning shots frozen
at ``t_c``), causal and FIFO sampling alike. A token whose ``t_next == t`` is left unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["ModelFn", "euler_step", "heun_step"]

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""``model_fn(x, t) -> velocity``: ``x`` a latent, ``t`` the timesteps the model should see (its own shape)."""


def euler_step(x: Tensor, v: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
    """One Euler step ``x + (t_next - t)·v``; ``t``/``t_next`` broadcast against ``x``."""
    return x + (t_next - t) * v


def heun_step(
    model_fn: ModelFn,
    x: Tensor,
    t_model: Tensor,
    t_next_model: Tensor,
    t: Tensor,
    t_next: Tensor,
    *,
    v: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Heun's second-order step (Karras et al. 2022, Alg. 1) for the flow ODE.

    ``t_model``/``t_next_model`` are the timesteps in the shape the model takes (e.g. ``[B, n_shots]``);
    ``t``/``t_next`` the same values broadcast against ``x``. Where ``t_next`` is 0 the step falls back to
    Euler (the corrector would evaluate the model at the clean end). Returns ``(x_next, v_at_t)``.
    """
    v1 = model_fn(x, t_model) if v is None else v
    x_euler = euler_step(x, v1, t, t_next)
    if bool((t_next_model <= 0).all()):
        return x_euler, v1
    v2 = model_fn(x_euler, t_next_model)
    x_heun = x + (t_next - t) * 0.5 * (v1 + v2)
    # tokens that land on t = 0 keep the Euler result
    final = (t_next <= 0).to(x.dtype)
    return final * x_euler + (1 - final) * x_heun, v1
