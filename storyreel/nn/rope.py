"""3-D rotary position embeddings over (t, h, w) coordinates.

Interleaved 3D RoPE for multi-shot sequences follows Long Context Tuning (Guo et al. 2025, §3.1);
the positions themselves come from :meth:`storyreel.nn.layout.SequenceLayout.rope_positions`.
Rotary embeddings: Su et al. 2021, "RoFormer". Computed in float32 whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_rope", "rope_axes_dims", "rope_cos_sin", "rope_freqs", "rope_rotate"]


def rope_axes_dims(head_dim: int) -> tuple[int, int, int]:
    """Even per-axis rotary dims ``(d_t, d_h, d_w)`` summing to ``head_dim``.

    ``h`` and ``w`` get ``2·(head_dim // 6)`` each and time takes the rest (64 → (24, 20, 20)).
    """
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 6 or head_dim % 2:
        raise ValueError(f"head_dim={head_dim!r} must be an even int >= 6 to split over the 3 RoPE axes")
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


def rope_cos_sin(positions: Tensor, head_dim: int, *, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Rotation tables for integer positions.

    Args:
        positions: ``[L, 3]`` (t, h, w) positions (any integer or float dtype).
        head_dim: attention head dimension ``D``.
        theta: RoPE base.

    Returns:
        ``(cos, sin)``, float32 ``[L, D // 2]`` each; column ``i`` rotates the channel pair ``(2i, 2i+1)``.
    """
    if positions.ndim != 2 or positions.shape[-1] != 3:
        raise ValueError(f"positions must be [L, 3] (t, h, w), got shape {tuple(positions.shape)}")
    if theta <= 0:
        raise ValueError(f"theta={theta} must be > 0")
    pos = positions.to(torch.float64)
    angles = []
    for axis, dim in enumerate(rope_axes_dims(head_dim)):
        inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)  # [dim/2]
        angles.append(pos[:, axis, None] * inv_freq[None, :])  # [L, dim/2]
    ang = torch.cat(angles, dim=-1)  # [L, D/2]
    return torch.cos(ang).to(torch.float32), torch.sin(ang).to(torch.float32)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x`` by the angles in ``cos``/``sin`` (:func:`rope_rotate` on
    ``cos + i·sin``; pass the complex tables straight to it where they are reused).

    Args:
        x: ``[B, H, L, D]`` queries or keys.
        cos, sin: ``[L, D // 2]`` from :func:`rope_cos_sin` (or broadcastable to ``[B, H, L, D // 2]``).

    Returns:
        ``[B, H, L, D]`` in ``x.dtype`` (the rotation itself runs in float32).
    """
    if x.shape[-1] % 2:
        raise ValueError(f"the last dim of x must be even for RoPE, got {x.shape[-1]}")
    if cos.shape[-1] * 2 != x.shape[-1] or cos.shape != sin.shape:
        raise ValueError(
            f"cos/sin have shapes {tuple(cos.shape)}/{tuple(sin.shape)} but x has head_dim {x.shape[-1]}; "
            "they need [L, head_dim // 2]"
        )
    if cos.shape[-2] != x.shape[-2]:
        raise ValueError(f"cos/sin cover {cos.shape[-2]} tokens but x has {x.shape[-2]} (x.shape[-2])")
    return rope_rotate(x, torch.complex(cos.float(), sin.float()).to(x.device))


def rope_freqs(positions: Tensor, head_dim: int, *, theta: float = 10000.0) -> Tensor:
    """The tables of :func:`rope_cos_sin` as one complex64 ``[L, D // 2]`` tensor ``cos + i·sin``, for
    :func:`rope_rotate`."""
    cos, sin = rope_cos_sin(positions, head_dim, theta=theta)
    return torch.complex(cos, sin)


def rope_rotate(x: Tensor, freqs: Tensor) -> Tensor:
    """:func:`apply_rope` as one complex product: channel pair ``(2i, 2i+1)`` read as ``a + i·b`` and multiplied
    by ``freqs[:, i]``. The same rotation (float32, returned in ``x.dtype``) in one kernel instead of seven,
    which is what a small model's step costs on a GPU.

    Args:
        x: ``[B, H, L, D]`` queries or keys.
        freqs: complex64 ``[L, D // 2]`` from :func:`rope_freqs` (or broadcastable to ``[B, H, L, D // 2]``), on
            ``x``'s device.
    """
    if not freqs.is_complex() or freqs.dim() < 2 or freqs.shape[-1] * 2 != x.shape[-1] or freqs.shape[-2] != x.shape[-2]:
        raise ValueError(
            f"freqs must be complex [L, head_dim // 2] = [{x.shape[-2]}, {x.shape[-1] // 2}] for x of shape "
            f"{tuple(x.shape)}, got {freqs.dtype} {tuple(freqs.shape)}; build it with rope_freqs"
        )
    xf = x if x.dtype == torch.float32 else x.float()
    if not xf.is_contiguous():
        xf = xf.contiguous()
    out = torch.view_as_real(torch.view_as_complex(xf.unflatten(-1, (-1, 2))) * freqs).flatten(-2)  # [B, H, L, D]
    return out if out.dtype == x.dtype else out.to(x.dtype)
