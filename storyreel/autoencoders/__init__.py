"""Video autoencoders: the shared ``Autoencoder`` interface, an exact patch codec and a causal VAE.

Every autoencoder maps video ``[B, 3, T, H, W]`` in ``[-1, 1]`` to a normalised latent
``[B, C, T', H', W']`` and back. Temporal compression by ``s`` is causal with the first frame alone:
``T' = 1 + ceil((T - 1) / s)``, so a single image is a one-frame video and shares the model;
decoding gives ``1 + (T' - 1) * s`` frames, cropped to ``num_frames`` when given.

``get_autoencoder(name)`` builds one by name (``AUTOENCODERS``) or loads a folder written by
``save_pretrained``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "AUTOENCODERS",
    "VAE_CONFIGS",
    "Autoencoder",
    "CausalVideoVAE",
    "PatchAutoencoder",
    "VAEConfig",
    "get_autoencoder",
    "latent_frames",
    "pixel_frames",
    "vae_loss",
]


def latent_frames(frames: int, temporal_factor: int) -> int:
    """Latent frames for ``frames`` video frames under causal compression ``s``: ``1 + ceil((T-1)/s)``."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return 1 + math.ceil((frames - 1) / temporal_factor)


def pixel_frames(latent: int, temporal_factor: int) -> int:
    """Frames decoded from ``latent`` latent frames: ``1 + (T'-1)*s``."""
    if latent < 1:
        raise ValueError(f"latent frames must be >= 1, got {latent}")
    return 1 + (latent - 1) * temporal_factor


class Autoencoder(nn.Module, abc.ABC):
    """Interface of every storyreel video autoencoder.

    Subclasses set ``latent_channels``, ``spatial_factor`` and ``temporal_factor`` and implement
    ``encode`` / ``decode``; shape checks and the frame arithmetic live here.
    """

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    @abc.abstractmethod
    def encode(self, video: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in ``[-1, 1]`` → normalised latent ``[B, C, T', H', W']``."""

    @abc.abstractmethod
    def decode(self, z: torch.Tensor, *, num_frames: int | None = None) -> torch.Tensor:
        """Normalised latent ``[B, C, T', H', W']`` → video ``[B, 3, T, H, W]`` (``T = num_frames`` if given)."""

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T', H', W')`` of the latent of a ``frames × height × width`` video."""
        self._check_hw(height, width)
        return (
            self.latent_channels,
            latent_frames(frames, self.temporal_factor),
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # -- validation helpers for subclasses --------------------------------------------------------
    def _check_hw(self, height: int, width: int) -> None:
        f = self.spatial_factor
        if height < f or width < f or height % f or width % f:
            raise ValueError(
                f"{type(self).__name__} needs height and width divisible by its spatial factor {f}; "
                f"got {height}×{width}. Resize or crop the video to a multiple of {f}."
            )

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"video must be [B, 3, T, H, W], got shape {tuple(video.shape)}; "
                "for images [B, 3, H, W] pass video.unsqueeze(2) (a 1-frame video)"
            )
        if video.shape[2] < 1:
            raise ValueError("video has 0 frames; pass at least one frame")
        self._check_hw(video.shape[-2], video.shape[-1])

    def _check_latent(self, z: torch.Tensor, num_frames: int | None) -> int:
        """Validate a latent; return the number of frames to keep after decoding."""
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"latent must be [B, {self.latent_channels}, T', H', W'], got shape {tuple(z.shape)}"
            )
        full = pixel_frames(z.shape[2], self.temporal_factor)
        if num_frames is None:
            return full
        lowest = pixel_frames(z.shape[2] - 1, self.temporal_factor) + 1 if z.shape[2] > 1 else 1
        if not lowest <= num_frames <= full:
            raise ValueError(
                f"num_frames={num_frames} does not fit a latent with {z.shape[2]} frames; "
                f"allowed {lowest}..{full} (latent_frames(T, {self.temporal_factor}) must equal {z.shape[2]})"
            )
        return num_frames


# Submodules subclass Autoencoder, so they are imported after it is defined.
from storyreel.autoencoders.losses import vae_loss  # noqa: E402
from storyreel.autoencoders.patch import PatchAutoencoder  # noqa: E402
from storyreel.autoencoders.vae import VAE_CONFIGS, CausalVideoVAE, VAEConfig  # noqa: E402


def _vae_builder(size: str) -> Callable[..., CausalVideoVAE]:
    def build(**overrides: Any) -> CausalVideoVAE:
        """A fresh ``CausalVideoVAE`` of ``VAE_CONFIGS[size]`` with config fields replaced by ``overrides``."""
        return CausalVideoVAE(dataclasses.replace(VAE_CONFIGS[size], **overrides))

    return build


AUTOENCODERS: dict[str, Callable[..., Autoencoder]] = {
    "patch": PatchAutoencoder,
    **{f"vae-{size}": _vae_builder(size) for size in VAE_CONFIGS},
}


def get_autoencoder(name: str | os.PathLike[str], **kwargs: Any) -> Autoencoder:
    """Build the autoencoder registered as ``name`` or load a ``save_pretrained`` folder.

    Names: ``"patch"`` (kwargs go to ``PatchAutoencoder``) and ``"vae-debug"``, ``"vae-tiny"``,
    ``"vae-small"`` (a freshly initialised ``CausalVideoVAE``; kwargs replace ``VAEConfig`` fields,
    e.g. ``latent_channels=8``). A path to a folder holding a ``config.json`` written by
    ``CausalVideoVAE.save_pretrained`` loads that model (``kwargs`` go to ``from_pretrained``,
    e.g. ``device``).
    """
    key = str(name)
    if key in AUTOENCODERS:
        return AUTOENCODERS[key](**kwargs)
    folder = Path(key)
    if (folder / "config.json").is_file():
        return CausalVideoVAE.from_pretrained(folder, **kwargs)
    raise ValueError(
        f"unknown autoencoder {key!r}: choose one of {sorted(AUTOENCODERS)} "
        "or pass a folder written by CausalVideoVAE.save_pretrained (holding config.json)"
    )
