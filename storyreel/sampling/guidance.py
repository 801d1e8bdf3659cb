"""Classifier-free guidance as a wrapper over model functions (Ho & Salimans 2022)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(
    cond_fn: Callable[[Tensor, Tensor], Tensor],
    uncond_fn: Callable[[Tensor, Tensor], Tensor],
    scale: float,
) -> Callable[[Tensor, Tensor], Tensor]:
    """Return ``model_fn(x, t) = u + scale·(c - u)``; ``scale == 1`` calls only ``cond_fn``.

    ``scale`` is the usual guidance weight (1 = no guidance, 0 = unconditional only).
    """
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")

    if scale == 1.0:
        return cond_fn

    def guided(x: Tensor, t: Tensor) -> Tensor:
        u = uncond_fn(x, t)
        if scale == 0.0:
            return u
        c = cond_fn(x, t)
        return u + scale * (c - u)

    return guided
