"""The identity "patch" autoencoder: exact, weight-free space-to-depth (and causal time-to-depth).

``causal_pack`` / ``causal_unpack`` are also the VAE's resampling primitives: frame 0 forms a
group of its own (replicated ``pt`` times), later frames are grouped ``pt`` at a time, the last
group padded by repeating the final frame. So ``T`` frames give ``1 + ceil((T-1)/pt)`` groups and
group ``j >= 1`` holds frames ``(j-1)*pt + 1 … j*pt`` only — causal by construction.
"""

from __future__ import annotations

import torch
from einops import rearrange

from storyreel.autoencoders import Autoencoder, latent_frames

__all__ = ["PatchAutoencoder", "causal_pack", "causal_unpack"]


def causal_pack(x: torch.Tensor, pt: int, ph: int, pw: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` → ``[B, C*pt*ph*pw, 1 + ceil((T-1)/pt), H/ph, W/pw]`` with frame 0 alone."""
    if pt > 1:
        t = x.shape[2]
        pad_end = (latent_frames(t, pt) - 1) * pt - (t - 1)  # frames to add after the last one
        parts = [x[:, :, :1].expand(-1, -1, pt, -1, -1), x[:, :, 1:]]  # frame 0 replicated to a full group
        if pad_end:
            parts.append(x[:, :, -1:].expand(-1, -1, pad_end, -1, -1))
        x = torch.cat(parts, dim=2)  # [B, C, pt * T', H, W]
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (c pt ph pw) t h w", pt=pt, ph=ph, pw=pw)


def causal_unpack(z: torch.Tensor, pt: int, ph: int, pw: int) -> torch.Tensor:
    """Inverse of :func:`causal_pack`: ``[B, C*pt*ph*pw, T', h, w]`` → ``[B, C, 1 + (T'-1)*pt, h*ph, w*pw]``.

    Frame 0 is taken from the last slot of group 0 (the other slots are its replicas).
    """
    x = rearrange(z, "b (c pt ph pw) t h w -> b c (t pt) (h ph) (w pw)", pt=pt, ph=ph, pw=pw)
    return x[:, :, pt - 1 :]  # [B, C, 1 + (T'-1)*pt, H, W]


class PatchAutoencoder(Autoencoder):
    """Exact invertible patchify codec for debugging: ``decode(encode(x), num_frames=T) == x`` bit for bit.

    Args:
        patch: ``(pt, ph, pw)``; ``ph == pw`` is the spatial factor, ``pt`` the temporal factor.
            The latent has ``3 * pt * ph * pw`` channels and holds the pixel values unchanged.
    """

    def __init__(self, patch: tuple[int, int, int] = (1, 2, 2)) -> None:
        super().__init__()
        patch = tuple(patch)  # type: ignore[assignment]
        if len(patch) != 3 or not all(isinstance(p, int) and p >= 1 for p in patch):
            raise ValueError(f"patch must be three ints >= 1 (pt, ph, pw), got {patch!r}")
        if patch[1] != patch[2]:
            raise ValueError(f"patch must be square in space (ph == pw), got {patch!r}; e.g. (1, 2, 2)")
        self.patch = patch
        self.temporal_factor = patch[0]
        self.spatial_factor = patch[1]
        self.latent_channels = 3 * patch[0] * patch[1] * patch[2]

    def encode(self, video: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` → latent ``[B, 3*pt*ph*pw, 1 + ceil((T-1)/pt), H/ph, W/pw]`` (deterministic)."""
        self._check_video(video)
        return causal_pack(video, *self.patch)

    def decode(self, z: torch.Tensor, *, num_frames: int | None = None) -> torch.Tensor:
        """Latent ``[B, C, T', h, w]`` → video ``[B, 3, num_frames or 1 + (T'-1)*pt, h*ph, w*pw]``."""
        keep = self._check_latent(z, num_frames)
        return causal_unpack(z, *self.patch)[:, :, :keep]

    def extra_repr(self) -> str:
        return f"patch={self.patch}, latent_channels={self.latent_channels}"
