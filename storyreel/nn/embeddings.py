"""Embeddings shared by the backbones: sinusoidal timestep embedding (float32) + MLP, and patchify helpers.

Timestep embedding after DiT (Peebles & Xie 2023) / the Transformer's sinusoidal encoding (Vaswani et al. 2017);
video patch embedding as a linear map over non-overlapping (pt, ph, pw) patches (equivalent to a strided Conv3d).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

__all__ = [
    "TimestepEmbedder",
    "patch_grid",
    "patchify",
    "timestep_embedding",
    "unpatchify",
]


def timestep_embedding(t: Tensor, dim: int, *, max_period: float = 10000.0, scale: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, always computed in float32.

    Args:
        t: timesteps of any shape ``[...]`` (rectified-flow ``t`` in [0, 1]; multiplied by ``scale`` so that the
            frequencies see the same range as the usual 0..1000 integer steps).
        dim: embedding width (odd widths get one zero column).
    Returns:
        float32 tensor ``[..., dim]`` = ``[cos(t·f_0..f_{d/2-1}), sin(t·f_0..f_{d/2-1})]``.
    """
    if dim < 2:
        raise ValueError(f"timestep_embedding: dim={dim} is too small; use dim >= 2 (e.g. 256)")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)  # [half]
    args = (t.to(torch.float32) * scale)[..., None] * freqs  # [..., half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [..., 2*half]
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # [..., dim]
    return emb


class TimestepEmbedder(nn.Module):
    """``t [...] → [..., hidden]``: sinusoidal features → Linear → SiLU → Linear, all in float32.

    The MLP weights may be stored in a lower precision (``model.to(bfloat16)``); they are upcast for the
    computation so that timestep conditioning never loses resolution (design.md: float32 regions).
    """

    def __init__(self, hidden: int, *, freq_dim: int = 256, scale: float = 1000.0) -> None:
        super().__init__()
        if hidden <= 0 or freq_dim < 2:
            raise ValueError(f"TimestepEmbedder: need hidden > 0 and freq_dim >= 2, got hidden={hidden}, freq_dim={freq_dim}")
        self.freq_dim = freq_dim
        self.scale = scale
        self.fc1 = nn.Linear(freq_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, t: Tensor) -> Tensor:
        """``t [...]`` (float, 1 = noise) → float32 embedding ``[..., hidden]``."""
        freq = timestep_embedding(t, self.freq_dim, scale=self.scale)  # [..., freq_dim] float32
        h = F.linear(freq, self.fc1.weight.float(), self.fc1.bias.float())
        return F.linear(F.silu(h), self.fc2.weight.float(), self.fc2.bias.float())


def patch_grid(shape: tuple[int, int, int], patch: tuple[int, int, int], *, what: str = "latent") -> tuple[int, int, int]:
    """Token grid ``(T/pt, H/ph, W/pw)`` of a latent grid ``(T, H, W)``.

    A single frame (``T == 1``) with ``pt > 1`` is an image: it gets one temporal token (see :func:`patchify`).
    Raises ``ValueError`` naming the grid and the patch when a side is not divisible.
    """
    t, h, w = shape
    pt, ph, pw = patch
    if t == 1:
        pt = 1
    if t % pt or h % ph or w % pw or min(t, h, w) <= 0:
        raise ValueError(
            f"{what} grid (T, H, W)={tuple(shape)} is not divisible by the patch size (pt, ph, pw)={tuple(patch)}; "
            f"resize/crop the latent (or pick frames) so that T is a multiple of {patch[0]} (or T == 1 for an image), "
            f"H of {ph} and W of {pw}"
        )
    return t // pt, h // ph, w // pw


def patchify(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """Cut a latent into non-overlapping patches, tokens in (t, h, w) raster order.

    Args:
        x: ``[B, C, T, H, W]``. With ``T == 1`` and ``pt > 1`` (a single image) the frame is repeated ``pt``
            times so that images share the video patch embedding; :func:`unpatchify` averages the copies back.
        patch: ``(pt, ph, pw)``.
    Returns:
        ``[B, T/pt · H/ph · W/pw, C·pt·ph·pw]``.
    """
    pt, ph, pw = patch
    if x.dim() != 5:
        raise ValueError(f"patchify expects a latent [B, C, T, H, W], got shape {tuple(x.shape)}")
    patch_grid(tuple(x.shape[2:]), patch)  # validates divisibility
    if x.shape[2] == 1 and pt > 1:
        x = x.expand(-1, -1, pt, -1, -1)  # [B, C, pt, H, W]: an image fills one temporal patch
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)


def unpatchify(tokens: Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int, *, frames: int | None = None) -> Tensor:
    """Inverse of :func:`patchify`.

    Args:
        tokens: ``[B, t·h·w, C·pt·ph·pw]`` in (t, h, w) raster order.
        grid: token grid ``(t, h, w)``.
        frames: latent frames wanted; ``1`` for an image patchified with ``pt > 1`` (the ``pt`` copies are
            averaged), default ``t·pt``.
    Returns:
        ``[B, C, frames, h·ph, w·pw]``.
    """
    pt, ph, pw = patch
    gt, gh, gw = grid
    if tokens.shape[1] != gt * gh * gw or tokens.shape[2] != channels * pt * ph * pw:
        raise ValueError(
            f"unpatchify: tokens {tuple(tokens.shape)} do not match grid {grid} × patch {patch} × channels {channels} "
            f"(expected [B, {gt * gh * gw}, {channels * pt * ph * pw}])"
        )
    x = rearrange(tokens, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=gt, h=gh, w=gw, c=channels, pt=pt, ph=ph, pw=pw)
    if frames is not None and frames != gt * pt:
        if not (frames == 1 and gt == 1):
            raise ValueError(f"unpatchify: frames={frames} is neither t·pt={gt * pt} nor 1 (image, t == 1)")
        x = x.mean(dim=2, keepdim=True)  # [B, C, 1, H, W]: average the pt copies of an image
    return x
