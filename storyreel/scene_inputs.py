"""How a scene becomes model inputs — shared by training (``train/batching.py``) and generation (``pipelines/``).

One definition of the packed inputs, so that a pipeline feeds a trained model exactly what it saw in training:

* layout: ``[global text]?`` then per shot ``[text_i][video_i]`` with every text segment ``text_len`` tokens
  (LCT, Guo et al. 2025: the global prompt is its own text segment with no video);
* text: one prompt per TEXT segment in layout order (the global prompt for shot ``-1``), encoded, then padded or
  truncated to ``text_len``; a dropped sample (CFG's unconditional branch) has every prompt emptied (``""``);
* latents: uint8 pixels → ``[-1, 1]`` → ``autoencoder.encode`` → ``× latent_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from storyreel.nn.embeddings import patch_grid
from storyreel.nn.layout import Modality, SequenceLayout

__all__ = [
    "decode_frames", "encode_context", "encode_frames", "encode_pixels", "latent_token_grid", "pad_text_states", "scene_layout",
    "segment_prompts",
]


def pad_text_states(states: Tensor, length: int) -> Tensor:
    """``[N, L, D]`` → ``[N, length, D]`` (truncate, or zero-pad at the end)."""
    if states.ndim != 3:
        raise ValueError(f"states must be [N, L, D], got shape {tuple(states.shape)}")
    if states.shape[1] >= length:
        return states[:, :length]
    pad = states.new_zeros(states.shape[0], length - states.shape[1], states.shape[2])
    return torch.cat([states, pad], dim=1)


def scene_layout(
    grids: Sequence[tuple[int, int, int]], *, text_len: int, global_prompt: bool, image_shots: Sequence[bool] | None = None,
) -> SequenceLayout:
    """The training/generation scene layout: ``[global text]?`` + per shot ``[text (text_len)][video grid]``.

    ``grids`` are the token grids of the shots; ``image_shots[i]`` marks a one-frame IMAGE shot.
    """
    images = list(image_shots) if image_shots is not None else [False] * len(grids)
    return SequenceLayout.scene(
        text_lens=[text_len] * len(grids), video_grids=list(grids), global_text_len=text_len if global_prompt else 0,
        visual_modalities=[Modality.IMAGE if img else Modality.VIDEO for img in images],
    )


def segment_prompts(
    layout: SequenceLayout, *, global_prompt: str, shot_prompts: Sequence[str], drop: bool = False,
    segments: Sequence[int] | None = None,
) -> list[str]:
    """The prompt of every TEXT segment of ``layout`` (or of ``segments``) in layout order.

    Shot ``s`` takes ``shot_prompts[s]``, a global segment takes ``global_prompt``; ``drop`` empties them all
    (the trainer's text dropout = the unconditional branch of classifier-free guidance).
    """
    segs = layout.text_segments() if segments is None else [i for i in segments if layout.segments[i].modality == Modality.TEXT]
    out = []
    for seg in segs:
        s = layout.segments[seg].shot
        out.append("" if drop else (global_prompt if s < 0 else shot_prompts[s]))
    return out


def encode_context(text_encoder: Any, prompts: Sequence[Sequence[str]], *, text_len: int) -> Tensor:
    """Text states ``[B, S · text_len, D]`` (float32, on the encoder's device) of ``B`` samples with ``S`` prompts
    each (layout order)."""
    b = len(prompts)
    s = len(prompts[0]) if b else 0
    if b == 0 or s == 0 or any(len(p) != s for p in prompts):
        raise ValueError(f"encode_context needs B >= 1 samples with the same number (>= 1) of prompts, got {[len(p) for p in prompts]}")
    flat = [p for per in prompts for p in per]
    states = text_encoder.encode(flat).states.float()  # [B * S, L, D]
    states = pad_text_states(states, text_len)  # [B * S, text_len, D]
    return states.reshape(b, s * text_len, states.shape[-1])  # [B, S * text_len, D]


@torch.no_grad()
def encode_pixels(autoencoder: Any, video: Tensor, *, latent_scale: float = 1.0, device: torch.device | str | None = None) -> Tensor:
    """uint8 video ``[B, F, 3, H, W]`` → latent ``[B, C, T', h, w]`` (float32, CPU) scaled by ``latent_scale``."""
    if video.dtype != torch.uint8 or video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"video must be uint8 [B, F, 3, H, W], got {video.dtype} {tuple(video.shape)}")
    if device is None:
        params = autoencoder.parameters() if hasattr(autoencoder, "parameters") else iter(())
        device = next((p.device for p in params), torch.device("cpu"))
    x = video.permute(0, 2, 1, 3, 4).to(device, torch.float32) / 127.5 - 1.0  # [B, 3, F, H, W] in [-1, 1]
    return autoencoder.encode(x).float().cpu() * latent_scale  # [B, C, T', h, w]


def encode_frames(autoencoder: Any, frames: np.ndarray, *, latent_scale: float = 1.0,
                  device: torch.device | str | None = None) -> Tensor:
    """uint8 frames ``[T, H, W, 3]`` of one shot → its latent ``[1, C, T', h, w]`` (on ``device`` if given)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)[None]  # [1, T, 3, H, W]
    z = encode_pixels(autoencoder, video, latent_scale=latent_scale)
    return z if device is None else z.to(device)


def decode_frames(autoencoder: Any, latent: Tensor, frames: int, *, latent_scale: float = 1.0) -> np.ndarray:
    """One shot's latent ``[1, C, T', h, w]`` → uint8 frames ``[frames, H, W, 3]``."""
    from storyreel.media import tensor_to_frames  # (PyAV stays out of the training imports)

    with torch.no_grad():
        x = autoencoder.decode(latent / latent_scale, num_frames=frames)  # [1, 3, F, H, W]
    return tensor_to_frames(x[0].permute(1, 0, 2, 3))  # [F, 3, H, W] → uint8 [F, H, W, 3]


def latent_token_grid(latent: Tensor, patch: Sequence[int], *, what: str = "latent") -> tuple[int, int, int]:
    """Token grid of a latent ``[B, C, T, H, W]`` under the backbone's ``patch`` ``(pt, ph, pw)``."""
    return patch_grid(tuple(latent.shape[2:]), tuple(patch), what=what)  # type: ignore[arg-type]
