"""A small causal 3D-convolutional video VAE (first frame alone, 8× space / 4× time by default).

Causal video VAEs with a separately coded first frame follow MAGVIT-v2 (Yu et al. 2024) and
CogVideoX (Yang et al. 2024); this one is our own compact design for 64-px StoryWorld shots:
temporal convolutions pad only the past (replicating frame 0), GroupNorm is taken per frame, and
resampling is a causal space/time-to-depth (``causal_pack``) followed by a 1×1×1 projection, so
the latent of frame group ``j`` depends only on frames ``<= j * temporal_downsample``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from storyreel.autoencoders import Autoencoder
from storyreel.autoencoders.patch import causal_pack, causal_unpack
from storyreel.pretrained import PretrainedMixin

__all__ = ["VAE_CONFIGS", "CausalConv3d", "CausalVideoVAE", "VAEConfig"]

LOGVAR_RANGE = (-30.0, 20.0)


def _is_pow2(n: object) -> bool:
    return isinstance(n, int) and n >= 1 and (n & (n - 1)) == 0


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Configuration of :class:`CausalVideoVAE`.

    ``channel_multipliers`` has one entry per resolution level, so ``spatial_downsample`` must be
    ``2 ** (len(channel_multipliers) - 1)``; the first ``log2(temporal_downsample)`` transitions
    (the highest-resolution ones) also halve time. Latents are normalised as
    ``(z - shift_factor) * scaling_factor``.
    """

    base_channels: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 1
    latent_channels: int = 16
    spatial_downsample: int = 8
    temporal_downsample: int = 4
    norm_groups: int = 8
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def __post_init__(self) -> None:
        def bad(field: str, value: object, allowed: str) -> ValueError:
            return ValueError(f"VAEConfig.{field}={value!r} is invalid; allowed: {allowed}")

        if not isinstance(self.base_channels, int) or self.base_channels < 1:
            raise bad("base_channels", self.base_channels, "an int >= 1")
        mults = self.channel_multipliers
        if not isinstance(mults, tuple) or not mults or not all(isinstance(m, int) and m >= 1 for m in mults):
            raise bad("channel_multipliers", mults, "a non-empty tuple of ints >= 1, one per resolution level")
        if not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 1:
            raise bad("num_res_blocks", self.num_res_blocks, "an int >= 1")
        if not isinstance(self.latent_channels, int) or self.latent_channels < 1:
            raise bad("latent_channels", self.latent_channels, "an int >= 1")
        if not _is_pow2(self.spatial_downsample) or self.spatial_downsample != 2 ** (len(mults) - 1):
            raise bad(
                "spatial_downsample",
                self.spatial_downsample,
                f"2 ** (len(channel_multipliers) - 1) = {2 ** (len(mults) - 1)} (one 2× stage between levels)",
            )
        if not _is_pow2(self.temporal_downsample) or self.temporal_downsample > self.spatial_downsample:
            raise bad(
                "temporal_downsample",
                self.temporal_downsample,
                f"a power of 2 that is <= spatial_downsample ({self.spatial_downsample})",
            )
        if not isinstance(self.norm_groups, int) or self.norm_groups < 1:
            raise bad("norm_groups", self.norm_groups, "an int >= 1")
        widths = self.widths
        if any(w % self.norm_groups for w in widths):
            raise bad("norm_groups", self.norm_groups, f"a divisor of every level width {widths}")
        if not isinstance(self.scaling_factor, (int, float)) or not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise bad("scaling_factor", self.scaling_factor, "a finite number > 0")
        if not isinstance(self.shift_factor, (int, float)) or not math.isfinite(self.shift_factor):
            raise bad("shift_factor", self.shift_factor, "a finite number")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channel width of each resolution level, highest resolution first."""
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def temporal_stages(self) -> int:
        return int(math.log2(self.temporal_downsample))


VAE_CONFIGS: dict[str, VAEConfig] = {
    "debug": VAEConfig(base_channels=8, channel_multipliers=(1, 1, 2, 2), latent_channels=4, norm_groups=4),
    "tiny": VAEConfig(base_channels=16, channel_multipliers=(1, 2, 2, 4), latent_channels=8, norm_groups=8),
    "small": VAEConfig(base_channels=32, channel_multipliers=(1, 2, 2, 3), latent_channels=16, norm_groups=8),
    # the shipped default: 4x spatial keeps StoryWorld's fine patterns (dots, stripes) that 8x blurs away
    "small-4x": VAEConfig(
        base_channels=32, channel_multipliers=(1, 2, 4), latent_channels=8, spatial_downsample=4, norm_groups=8
    ),
}


class CausalConv3d(nn.Module):
    """3D convolution that pads time only on the past (replicating frame 0) and space with zeros.

    ``[B, Cin, T, H, W]`` → ``[B, Cout, T, H, W]``; output frame ``k`` sees input frames ``k-kt+1 … k``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (3, 3, 3)) -> None:
        super().__init__()
        kt, kh, kw = kernel
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"CausalConv3d kernel must be odd in space, got {kernel}")
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            x = F.pad(x, (0, 0, 0, 0, self.time_pad, 0), mode="replicate")  # [B, C, T + kt - 1, H, W]
        return self.conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame (never across time, which would break causality)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        y = rearrange(x, "b c t h w -> (b t) c h w")
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class ResBlock(nn.Module):
    """``x + conv(silu(norm(conv(silu(norm(x))))))`` with causal 3×3×3 convs; 1×1×1 shortcut if widths differ."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = FrameGroupNorm(groups, out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class Downsample(nn.Module):
    """Causal 2× space (and optionally 2× time) reduction: ``causal_pack`` then a 1×1×1 projection."""

    def __init__(self, in_channels: int, out_channels: int, *, temporal: bool) -> None:
        super().__init__()
        self.pt = 2 if temporal else 1
        self.proj = nn.Conv3d(in_channels * self.pt * 4, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(causal_pack(x, self.pt, 2, 2))  # [B, Cout, 1 + ceil((T-1)/pt), H/2, W/2]


class Upsample(nn.Module):
    """Inverse of :class:`Downsample`: 1×1×1 projection then ``causal_unpack`` (T' → 1 + (T'-1)·pt)."""

    def __init__(self, in_channels: int, out_channels: int, *, temporal: bool) -> None:
        super().__init__()
        self.pt = 2 if temporal else 1
        self.proj = nn.Conv3d(in_channels, out_channels * self.pt * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_unpack(self.proj(x), self.pt, 2, 2)  # [B, Cout, 1 + (T-1)*pt, 2H, 2W]


class Encoder(nn.Module):
    """Video ``[B, 3, T, H, W]`` → posterior parameters ``[B, 2*C, T', H/f, W/f]``."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        w, g = config.widths, config.norm_groups
        self.conv_in = CausalConv3d(3, w[0])
        self.levels = nn.ModuleList()
        for i, width in enumerate(w):
            blocks: list[nn.Module] = [ResBlock(width, width, g) for _ in range(config.num_res_blocks)]
            if i < len(w) - 1:
                blocks.append(Downsample(width, w[i + 1], temporal=i < config.temporal_stages))
            self.levels.append(nn.Sequential(*blocks))
        self.mid = ResBlock(w[-1], w[-1], g)
        self.norm_out = FrameGroupNorm(g, w[-1])
        self.conv_out = CausalConv3d(w[-1], 2 * config.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Raw latent ``[B, C, T', h, w]`` → video ``[B, 3, 1 + (T'-1)*s, h*f, w*f]`` (unclamped)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        w, g = config.widths, config.norm_groups
        self.conv_in = CausalConv3d(config.latent_channels, w[-1])
        self.mid = ResBlock(w[-1], w[-1], g)
        self.levels = nn.ModuleList()
        for i in reversed(range(len(w))):
            blocks: list[nn.Module] = [ResBlock(w[i], w[i], g) for _ in range(config.num_res_blocks)]
            if i > 0:  # mirror of the encoder's transition i-1 → i
                blocks.append(Upsample(w[i], w[i - 1], temporal=i - 1 < config.temporal_stages))
            self.levels.append(nn.Sequential(*blocks))
        self.norm_out = FrameGroupNorm(g, w[0])
        self.conv_out = CausalConv3d(w[0], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class CausalVideoVAE(Autoencoder, PretrainedMixin):
    """Small causal video VAE: ``[B, 3, T, H, W]`` ↔ ``[B, C, 1 + ceil((T-1)/s), H/f, W/f]``.

    ``encode`` returns the normalised latent ``(z - shift_factor) * scaling_factor`` of the
    posterior mean (or a posterior sample with ``sample=True``); ``decode`` inverts the
    normalisation, decodes and clamps to ``[-1, 1]``. ``encode_dist`` / ``decode_raw`` expose the
    unnormalised posterior and unclamped decoder for training.
    """

    config_class = VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        if not isinstance(config, VAEConfig):
            raise ValueError(f"config must be a VAEConfig (e.g. VAE_CONFIGS['debug']), got {type(config).__name__}")
        self.config = config
        self.latent_channels = config.latent_channels
        self.spatial_factor = config.spatial_downsample
        self.temporal_factor = config.temporal_downsample
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.init_weights()

    def init_weights(self) -> None:
        """Default (Kaiming-uniform) convs, unit/zero norms, and the last conv of every residual
        branch zeroed so each ResBlock starts as its shortcut (a stable, shallow network at init)."""
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                module.reset_parameters()
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, ResBlock):
                nn.init.zeros_(module.conv2.conv.weight)
                nn.init.zeros_(module.conv2.conv.bias)

    # -- raw (unnormalised) interface used for training ----------------------------------------
    def encode_dist(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Video ``[B, 3, T, H, W]`` → posterior ``(mean, logvar)``, each ``[B, C, T', H', W']`` (unnormalised)."""
        self._check_video(video)
        moments = self.encoder(video)  # [B, 2C, T', H', W']
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode_raw(self, z: torch.Tensor, *, num_frames: int | None = None) -> torch.Tensor:
        """Unnormalised latent ``[B, C, T', h, w]`` → unclamped video ``[B, 3, T, h*f, w*f]``."""
        keep = self._check_latent(z, num_frames)
        return self.decoder(z)[:, :, :keep]

    # -- Autoencoder interface ------------------------------------------------------------------
    def normalise(self, z_raw: torch.Tensor) -> torch.Tensor:
        return (z_raw - self.config.shift_factor) * self.config.scaling_factor

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.config.scaling_factor + self.config.shift_factor

    def encode(self, video: torch.Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in ``[-1, 1]`` → normalised latent ``[B, C, 1 + ceil((T-1)/s), H/f, W/f]``."""
        mean, logvar = self.encode_dist(video)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        return self.normalise(z)

    def decode(self, z: torch.Tensor, *, num_frames: int | None = None) -> torch.Tensor:
        """Normalised latent ``[B, C, T', h, w]`` → video ``[B, 3, num_frames or 1 + (T'-1)*s, h*f, w*f]`` in ``[-1, 1]``."""
        return self.decode_raw(self.denormalise(z), num_frames=num_frames).clamp(-1.0, 1.0)

    @torch.no_grad()
    def fit_latent_normalisation(self, videos: Iterable[torch.Tensor]) -> VAEConfig:
        """Set ``shift_factor`` / ``scaling_factor`` so posterior means of ``videos`` have mean 0 and std 1.

        ``videos``: an iterable of ``[B, 3, T, H, W]`` batches. Returns (and installs) the new config;
        call ``save_pretrained`` afterwards to keep it.
        """
        total, total_sq, count = 0.0, 0.0, 0
        for video in videos:
            mean, _ = self.encode_dist(video)
            m = mean.double()
            total += float(m.sum())
            total_sq += float((m * m).sum())
            count += m.numel()
        if count == 0:
            raise ValueError("fit_latent_normalisation got no videos; pass an iterable of [B, 3, T, H, W] batches")
        mu = total / count
        std = math.sqrt(max(total_sq / count - mu * mu, 1e-12))
        self.config = dataclasses.replace(self.config, shift_factor=mu, scaling_factor=1.0 / std)
        return self.config

    def extra_repr(self) -> str:
        return (
            f"latent_channels={self.latent_channels}, spatial_factor={self.spatial_factor}, "
            f"temporal_factor={self.temporal_factor}, params={self.num_parameters():,}"
        )
