"""Precomputed latents and text states, stored in each scene's ``<key>.latents.safetensors`` member.

Names inside the member (``i`` = shot index in the scene, two digits):

* ``latent_00``, ``latent_01``, ...: ``autoencoder.encode`` of the shot clip, ``[C, T', h, w]``
  (the autoencoder's own normalised latent, *before* any pipeline ``latent_scale``);
* ``text_global`` ``[L, D]`` and ``text_global_mask`` ``[L]`` (bool): the global prompt;
* ``text_00`` ``[L, D]`` and ``text_mask_00`` ``[L]`` (bool), ...: the shot prompts.

Which encoders made them is stored in the scene's ``meta["cache"]`` and in the manifest ``params``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DiffusersVAE", "SceneCache", "resolve_autoencoder", "resolve_text_encoder"]

_DEFAULT_AE = Path(__file__).resolve().parent.parent / "weights" / "default" / "autoencoder"


class DiffusersVAE:
    """A diffusers video VAE (e.g. ``AutoencoderKLWan``, ``AutoencoderKLCogVideoX``) as a cache encoder.

    ``encode(video [B, 3, T, H, W] in [-1, 1])`` returns ``latent_dist.mode()``: the VAE's raw latent,
    without the pipeline's normalisation (Wan's ``latents_mean``/``latents_std``, CogVideoX's
    ``scaling_factor``), which the consumer applies. ``spatial_factor`` and ``latent_channels`` are
    measured once by encoding one black 64×64 frame.
    """

    def __init__(self, model: Any, name: str) -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        with torch.no_grad():
            z = self.encode(torch.zeros(1, 3, 1, 64, 64))  # [1, C, 1, h, w]
        self.latent_channels = int(z.shape[1])
        self.spatial_factor = 64 // int(z.shape[-1])

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str = "cpu") -> DiffusersVAE:
        """Load a diffusers model folder (``config.json`` with ``_class_name``) written by ``save_pretrained``."""
        import json

        import diffusers

        class_name = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("_class_name", "")
        model_class = getattr(diffusers, str(class_name), None)
        if model_class is None or not hasattr(model_class, "encode"):
            raise ValueError(f"{folder}/config.json names {class_name!r}, which is not a diffusers autoencoder; "
                             "pass the folder of a video VAE (e.g. the vae/ folder of a Wan or CogVideoX checkpoint)")
        return cls(model_class.from_pretrained(str(folder)).to(device), str(folder))

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video ``[B, 3, T, H, W]`` in ``[-1, 1]`` → raw latent ``[B, C, T', h, w]`` (``latent_dist.mode()``)."""
        return SceneCache._latent(self.model.encode(video.to(self.device, self.dtype))).float()


def _is_diffusers_folder(path: Path) -> bool:
    import json

    try:
        return bool(json.loads((path / "config.json").read_text(encoding="utf-8")).get("_class_name"))
    except (OSError, ValueError):
        return False


def resolve_autoencoder(spec: Any, *, device: str = "cpu") -> tuple[Any, str]:
    """An autoencoder and its name from ``spec``: an object with ``.encode``, ``"default"`` (the
    shipped autoencoder), a registry name of ``storyreel.autoencoders.get_autoencoder``, a
    storyreel ``save_pretrained`` folder or a diffusers VAE folder (:class:`DiffusersVAE`)."""
    if not isinstance(spec, (str, Path)):
        if not callable(getattr(spec, "encode", None)):
            raise ValueError(f"autoencoder must have .encode(video [B, 3, T, H, W] in [-1, 1]); got {type(spec).__name__}")
        return spec, getattr(spec, "name", None) or type(spec).__name__
    from storyreel.autoencoders import get_autoencoder

    name = str(spec)
    if name != "default" and _is_diffusers_folder(Path(name)):
        return DiffusersVAE.from_folder(name, device=device), name
    target = _DEFAULT_AE if name == "default" else name
    if str(target) in _registry():
        model = get_autoencoder(target).to(device)  # a fresh registry model (weights from its own init)
    else:
        model = get_autoencoder(target, device=device)  # a save_pretrained folder
    model.requires_grad_(False)
    return model, name


def _registry() -> set[str]:
    from storyreel.autoencoders import AUTOENCODERS

    return set(AUTOENCODERS)


def resolve_text_encoder(spec: Any, *, device: str = "cpu") -> tuple[Any, str]:
    """A text encoder and its name from ``spec``: an object with ``.encode(prompts) -> TextStates``
    or a name of ``storyreel.text.get_text_encoder`` (``"minilm"``, ``"hashing"``)."""
    if not isinstance(spec, str):
        if not callable(getattr(spec, "encode", None)):
            raise ValueError(f"text_encoder must have .encode(prompts) -> TextStates; got {type(spec).__name__}")
        return spec, getattr(spec, "name", None) or type(spec).__name__
    from storyreel.text import get_text_encoder

    kwargs = {"device": device} if spec.strip().lower() == "minilm" else {}
    return get_text_encoder(spec, **kwargs), spec


class SceneCache:
    """Encode a scene's clips and prompts for the ``.latents.safetensors`` member.

    Args:
        autoencoder: anything :func:`resolve_autoencoder` takes, or None (no latents).
        text_encoder: anything :func:`resolve_text_encoder` takes, or None (no text states).
        dtype: ``"float32"`` or ``"float16"`` for the stored arrays.
        device: torch device for the encoders.
    """

    def __init__(self, *, autoencoder: Any = None, text_encoder: Any = None, dtype: str = "float32", device: str = "cpu") -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.device = torch.device(device)
        self.autoencoder, self.autoencoder_name = (None, None) if autoencoder is None else resolve_autoencoder(autoencoder, device=device)
        self.text_encoder, self.text_encoder_name = (None, None) if text_encoder is None else resolve_text_encoder(text_encoder, device=device)
        if self.autoencoder is not None and hasattr(self.autoencoder, "eval"):
            self.autoencoder.eval()

    @property
    def enabled(self) -> bool:
        return self.autoencoder is not None or self.text_encoder is not None

    def describe(self) -> dict[str, Any]:
        """JSON-able description (encoder names, dtype, latent factors) for the manifest and scene meta."""
        out: dict[str, Any] = {"autoencoder": self.autoencoder_name, "text_encoder": self.text_encoder_name,
                               "dtype": self.dtype.name}
        if self.autoencoder is not None:
            for attr in ("latent_channels", "spatial_factor", "temporal_factor"):
                if hasattr(self.autoencoder, attr):
                    out[attr] = int(getattr(self.autoencoder, attr))
        if self.text_encoder is not None:
            for attr in ("dim", "max_length"):
                if hasattr(self.text_encoder, attr):
                    out[f"text_{attr}"] = int(getattr(self.text_encoder, attr))
        return out

    def check_size(self, size: tuple[int, int]) -> None:
        """Raise ``ValueError`` when the autoencoder cannot take frames of ``size`` = ``(width, height)``."""
        f = int(getattr(self.autoencoder, "spatial_factor", 1) or 1) if self.autoencoder is not None else 1
        if size[0] % f or size[1] % f:
            raise ValueError(
                f"size {size[0]}x{size[1]} is not divisible by the autoencoder's spatial factor {f}; "
                f"choose a size that is a multiple of {f} (e.g. {size[0] // f * f or f}x{size[1] // f * f or f})"
            )

    @torch.no_grad()
    def encode(self, frames: list[np.ndarray], global_prompt: str, shot_prompts: list[str]) -> dict[str, np.ndarray]:
        """Named arrays for one scene. ``frames``: per shot uint8 ``[T, H, W, 3]`` (equal T within a batch
        is not required: shots are encoded together when their shapes agree, else one by one)."""
        out: dict[str, np.ndarray] = {}
        if self.autoencoder is not None:
            shapes = {f.shape for f in frames}
            groups = [list(range(len(frames)))] if len(shapes) == 1 else [[i] for i in range(len(frames))]
            for group in groups:
                video = torch.from_numpy(np.stack([frames[i] for i in group]))  # [B, T, H, W, 3] uint8
                x = video.permute(0, 4, 1, 2, 3).to(self.device, torch.float32) / 127.5 - 1.0  # [B, 3, T, H, W] in [-1, 1]
                z = self._latent(self.autoencoder.encode(x))  # [B, C, T', h, w]
                for j, i in enumerate(group):
                    out[f"latent_{i:02d}"] = z[j].float().cpu().numpy().astype(self.dtype)
        if self.text_encoder is not None:
            states = self.text_encoder.encode([global_prompt, *shot_prompts])  # states [1+N, L, D], mask [1+N, L]
            s = states.states.float().cpu().numpy().astype(self.dtype)
            m = states.mask.cpu().numpy().astype(bool)
            out["text_global"], out["text_global_mask"] = s[0], m[0]
            for i in range(len(shot_prompts)):
                out[f"text_{i:02d}"], out[f"text_mask_{i:02d}"] = s[i + 1], m[i + 1]
        return out

    @staticmethod
    def _latent(result: Any) -> torch.Tensor:
        """The latent tensor of an ``encode`` result: a tensor, a diffusers output (``latent_dist.mode()``) or a tuple."""
        if isinstance(result, torch.Tensor):
            return result
        dist = getattr(result, "latent_dist", None)
        if dist is not None:
            return dist.mode() if hasattr(dist, "mode") else dist.mean
        if isinstance(result, (tuple, list)) and result and isinstance(result[0], torch.Tensor):
            return result[0]
        raise ValueError(f"autoencoder.encode returned {type(result).__name__}; expected a tensor [B, C, T', h, w] "
                         "or a diffusers encoder output with .latent_dist")
