"""Training loss of the causal video VAE: L1 + MSE reconstruction, KL to N(0, 1), edge term."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from storyreel.autoencoders.vae import CausalVideoVAE

__all__ = ["edge_loss", "kl_to_standard_normal", "vae_loss"]


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(mean, exp(logvar)) || N(0, 1))``, same shape as ``mean``."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)


def edge_loss(video: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean L1 between finite differences of ``video`` and ``recon`` (both ``[B, 3, T, H, W]``)
    along x, y and — when ``T > 1`` — t; sharpens edges and motion without a perceptual network."""
    terms = []
    for dim in (-1, -2, -3):
        if video.shape[dim] > 1:
            terms.append((torch.diff(video, dim=dim) - torch.diff(recon, dim=dim)).abs().mean())
    if not terms:  # a 1×1 single-frame video has no gradients
        return video.new_zeros(())
    return torch.stack(terms).sum()


def vae_loss(
    model: CausalVideoVAE,
    video: torch.Tensor,
    *,
    kl_weight: float = 1e-6,
    edge_weight: float = 0.1,
    sample: bool = True,
    generator: torch.Generator | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """VAE objective on ``video [B, 3, T, H, W]`` in ``[-1, 1]``.

    ``loss = L1 + MSE + kl_weight * KL + edge_weight * edge`` where L1/MSE/edge are per-pixel means
    and KL is summed over latent elements and divided by the number of pixel values (so
    ``kl_weight`` keeps its usual per-pixel meaning whatever the compression). The latent is a
    posterior sample (``sample=True``, noise from ``generator``) or the posterior mean.

    ``pixel_weights`` (``[B, 1, T, H, W]``, broadcast over colour) turns the L1 and MSE means into
    weighted means, ``sum(w·e) / sum(w)``: e.g. ``1 + 4·(inside a character box)`` makes the small
    characters' detail (their unspoken pattern) count as much as the background around them.

    Returns the scalar loss and float logs: ``loss``, ``l1``, ``mse``, ``kl`` (mean per latent
    element), ``edge``, ``logvar`` (mean posterior log-variance).
    """
    if kl_weight < 0 or edge_weight < 0:
        raise ValueError(f"kl_weight and edge_weight must be >= 0, got kl_weight={kl_weight}, edge_weight={edge_weight}")
    mean, logvar = model.encode_dist(video)  # [B, C, T', h, w] each
    z = mean
    if sample:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * logvar) * noise
    recon = model.decode_raw(z, num_frames=video.shape[2])  # [B, 3, T, H, W]
    err = recon - video
    if pixel_weights is None:
        l1 = err.abs().mean()
        mse = err.square().mean()
    else:
        if pixel_weights.dim() != 5 or pixel_weights.shape[1] != 1 or pixel_weights.shape[2:] != video.shape[2:] \
                or pixel_weights.shape[0] != video.shape[0]:
            raise ValueError(f"pixel_weights must be [B, 1, T, H, W] = {[video.shape[0], 1, *video.shape[2:]]}, "
                             f"got {list(pixel_weights.shape)}")
        w = pixel_weights.to(err)
        total = w.sum() * err.shape[1]
        l1 = (err.abs() * w).sum() / total
        mse = (err.square() * w).sum() / total
    kl_elem = kl_to_standard_normal(mean, logvar)
    kl_per_pixel = kl_elem.sum() / video.numel()
    edge = edge_loss(video, recon)
    loss = l1 + mse + kl_weight * kl_per_pixel + edge_weight * edge
    logs = {
        "loss": float(loss.detach()),
        "l1": float(l1.detach()),
        "mse": float(mse.detach()),
        "kl": float(kl_elem.detach().mean()),
        "edge": float(edge.detach()),
        "logvar": float(logvar.detach().mean()),
    }
    return loss, logs
