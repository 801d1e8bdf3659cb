"""adaLN-Zero modulation, per token (each token modulated by its own segment's timestep embedding).

adaLN-Zero after DiT (Peebles & Xie 2023); per-shot timesteps per token after LCT (Guo et al. 2025).
All modulation arithmetic runs in float32 (design.md "Style") and is cast back to the activation dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AdaLNModulation", "gate", "modulate"]


def _f32(t: Tensor) -> Tensor:
    """``t`` in float32 (itself when it already is: no dispatch for a no-op cast)."""
    return t if t.dtype == torch.float32 else t.float()


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x · (1 + scale) + shift`` in float32, returned in ``x.dtype``.

    Args:
        x: ``[B, L, D]`` (usually already layer-normed).
        shift, scale: per token ``[B, L, D]`` (or anything broadcastable, e.g. ``[B, 1, D]``).
    """
    out = torch.addcmul(_f32(shift), _f32(x), 1.0 + _f32(scale))
    return out if out.dtype == x.dtype else out.to(x.dtype)


def gate(residual: Tensor, update: Tensor, g: Tensor) -> Tensor:
    """Gated residual ``residual + g · update`` (float32 product), returned in ``residual.dtype``.

    Args:
        residual, update: ``[B, L, D]``; g: per-token gate ``[B, L, D]`` (zero at init → identity block).
    """
    out = torch.addcmul(_f32(residual), _f32(g), _f32(update))
    return out if out.dtype == residual.dtype else out.to(residual.dtype)


class AdaLNModulation(nn.Module):
    """SiLU → Linear producing ``n_chunks`` modulation vectors; zero-initialised (adaLN-Zero).

    Modulation depends only on the conditioning vector, so it is computed once per *segment*
    (``c [B, S, hidden]``) and gathered to tokens (``token_segment [L]``): the result is exactly the
    per-token modulation ``f(c[token])`` at a fraction of the cost.
    """

    def __init__(self, hidden: int, n_chunks: int) -> None:
        super().__init__()
        if hidden <= 0 or n_chunks <= 0:
            raise ValueError(f"AdaLNModulation: need hidden > 0 and n_chunks > 0, got hidden={hidden}, n_chunks={n_chunks}")
        self.n_chunks = n_chunks
        self.linear = nn.Linear(hidden, n_chunks * hidden)
        self.zero_init()

    def zero_init(self) -> None:
        """adaLN-Zero: all shifts, scales and gates start at 0."""
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor, token_segment: Tensor) -> tuple[Tensor, ...]:
        """Per-token modulation chunks.

        Args:
            c: float32 conditioning per segment ``[B, S, hidden]`` (not yet passed through SiLU).
            token_segment: ``[L]`` long, index into the ``S`` axis for each token of this stream.
        Returns:
            ``n_chunks`` float32 tensors ``[B, L, hidden]`` (shift, scale, gate, ... in the caller's order).
        """
        mod = F.linear(F.silu(_f32(c)), _f32(self.linear.weight), _f32(self.linear.bias))  # [B, S, n*hidden]
        mod = mod.index_select(1, token_segment)  # [B, L, n*hidden]: each token takes its segment's row
        return tuple(torch.chunk(mod, self.n_chunks, dim=-1))  # n × [B, L, hidden]
