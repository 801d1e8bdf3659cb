"""GoldenMem: history frames at golden-ratio-shrinking resolutions.

After Captain Cinema (Xiao et al. 2025, "Captain Cinema: Towards Short Movie Generation", GoldenMem): the k-th
previous frame (k = 0 the most recent) is kept at ``1/φ^k`` of the full size per side, φ = (1 + √5)/2. Its tokens
fall by ``φ^2`` per frame, and since ``Σ_k φ^{-2k} = φ^2/(φ^2 - 1) = φ``, the whole history costs at most φ × the
tokens of one full frame, however long it is.

Sizes are counted in backbone tokens: a frame of ``H × W`` tokens keeps ``floor(H/φ^k) × floor(W/φ^k)`` tokens and
is dropped once a side reaches 0 — flooring keeps the total strictly under φ·H·W. Latents are resized to
``tokens × patch`` latent pixels with antialiased bilinear interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

__all__ = ["PHI", "GoldenFrame", "full_frame_tokens", "goldenmem_compress", "goldenmem_sizes", "goldenmem_tokens"]

PHI = (1.0 + math.sqrt(5.0)) / 2.0


def _check_grid(h: int, w: int) -> None:
    for name, v in (("height", h), ("width", w)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"token grid {name}={v!r} must be an int >= 1")


def goldenmem_sizes(n_frames: int, grid_hw: tuple[int, int], *, phi: float = PHI) -> list[tuple[int, int]]:
    """Token grid ``(h_k, w_k)`` kept for the k-th previous frame, ``k = 0 .. K-1`` (most recent first).

    ``h_k = floor(H / φ^k)``, ``w_k = floor(W / φ^k)``; the list stops at the first frame with a side of 0 (older
    frames are dropped), so ``K <= n_frames``. ``grid_hw`` is the full frame's token grid ``(H, W)``.
    """
    h, w = grid_hw
    _check_grid(h, w)
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 0:
        raise ValueError(f"n_frames={n_frames!r} must be an int >= 0")
    if not phi > 1.0:
        raise ValueError(f"phi={phi!r} must be > 1 (the per-frame shrink factor)")
    sizes: list[tuple[int, int]] = []
    for k in range(n_frames):
        scale = phi**k
        # the small epsilon keeps exact quotients (e.g. H = φ^k · m) from flooring one below
        hk, wk = math.floor(h / scale + 1e-9), math.floor(w / scale + 1e-9)
        if hk < 1 or wk < 1:
            break
        sizes.append((hk, wk))
    return sizes


def goldenmem_tokens(n_frames: int, grid_hw: tuple[int, int], *, phi: float = PHI) -> int:
    """Total tokens of ``n_frames`` history frames under GoldenMem; always ``< φ · H · W`` (one full frame × φ)."""
    return sum(hk * wk for hk, wk in goldenmem_sizes(n_frames, grid_hw, phi=phi))


@dataclass(frozen=True)
class GoldenFrame:
    """One kept history frame: which history ``item`` (e.g. shot) and ``frame`` it came from, its distance ``k``
    from the newest frame, its token grid ``(h_k, w_k)`` and its resized latent ``[B, C, 1, h_k·ph, w_k·pw]``."""

    item: int
    frame: int
    k: int
    grid: tuple[int, int]
    latent: Tensor


def goldenmem_compress(
    latents: Sequence[Tensor], *, patch: tuple[int, int] = (1, 1), phi: float = PHI, max_frames: int | None = None,
) -> list[GoldenFrame]:
    """Compress a history of latent clips with GoldenMem.

    Args:
        latents: history clips in time order (oldest first), each ``[B, C, T_i, H, W]`` with one spatial size;
            their frames form one sequence whose last frame is the most recent (``k = 0``).
        patch: the backbone's spatial patch ``(ph, pw)``; ``H``/``W`` must be multiples of it, and every kept frame
            is resized to a whole number of patches.
        max_frames: keep at most this many frames (the most recent ones), in addition to GoldenMem's own cut.
    Returns:
        the kept frames in time order (oldest first), each a :class:`GoldenFrame` whose ``latent`` is
        ``[B, C, 1, h_k·ph, w_k·pw]`` (the newest frame unchanged).
    """
    clips = list(latents)
    if not clips:
        return []
    ph, pw = patch
    ref = clips[0]
    for i, z in enumerate(clips):
        if z.ndim != 5 or z.shape[:2] != ref.shape[:2] or z.shape[3:] != ref.shape[3:]:
            raise ValueError(
                f"latents[{i}] has shape {tuple(z.shape)}; every clip must be [B, C, T, H, W] with the batch, channels "
                f"and spatial size of latents[0] {tuple(ref.shape)}"
            )
    height, width = int(ref.shape[3]), int(ref.shape[4])
    if height % ph or width % pw:
        raise ValueError(f"latent size {height}x{width} is not a multiple of the patch {patch}; pass the backbone's (ph, pw)")
    frames = [(i, f) for i, z in enumerate(clips) for f in range(int(z.shape[2]))]  # (clip, frame), oldest first
    n = len(frames) if max_frames is None else min(len(frames), int(max_frames))
    sizes = goldenmem_sizes(n, (height // ph, width // pw), phi=phi)
    kept: list[GoldenFrame] = []
    for k, (hk, wk) in enumerate(sizes):
        clip, f = frames[len(frames) - 1 - k]
        x = clips[clip][:, :, f]  # [B, C, H, W]
        if (hk * ph, wk * pw) != (height, width):
            x = F.interpolate(x.float(), size=(hk * ph, wk * pw), mode="bilinear", antialias=True,
                              align_corners=False).to(x.dtype)  # [B, C, h_k·ph, w_k·pw]
        kept.append(GoldenFrame(item=clip, frame=f, k=k, grid=(hk, wk), latent=x.unsqueeze(2)))  # [B, C, 1, h, w]
    return kept[::-1]  # oldest first


def full_frame_tokens(grid_hw: tuple[int, int]) -> int:
    """Tokens of one full frame ``H · W`` (the unit GoldenMem's budget is counted in)."""
    _check_grid(*grid_hw)
    return grid_hw[0] * grid_hw[1]
