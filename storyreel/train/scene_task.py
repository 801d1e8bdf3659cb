"""The multi-shot diffusion task: rectified-flow loss on packed scenes, averaged per shot.

Rectified flow ``x_t = (1 - t)·x0 + t·ε`` with velocity target ``ε - x0`` (Liu et al. 2022; SD3, Esser et al.
2024); per-shot timesteps and context-causal fine-tuning from bidirectional weights after LCT (Guo et al. 2025,
§3.2-3.3); segment-level conditional mask after Mask²DiT (Qi et al. 2025).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from storyreel.diffusion import expand_shot_timesteps, flow_target, noise_latents
from storyreel.pretrained import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, has_weights, load_folder_state, weights_path
from storyreel.train.batching import BatchBuilder, TrainBatch, WindowSampler
from storyreel.train.checkpoint import check_state_matches, load_weights, resolve_checkpoint
from storyreel.train.config import Recipe, RecipeError
from storyreel.train.scenes import SceneIndex

__all__ = ["SceneTask", "WindowTask", "build_model_config", "last_shot_loss", "load_init_weights", "shot_loss"]


def shot_loss(pred: Tensor, target: Tensor, frames_per_shot: list[int], weights: Tensor,
              cell_weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-shot flow-matching loss.

    Args:
        pred, target: ``[B, C, T_total, h, w]`` with the shots concatenated along latent time.
        frames_per_shot: latent frames of each shot (sums to ``T_total``).
        weights: ``[B, n_shots]``, 1 where a shot carries loss (0: a clean conditioning shot).
        cell_weights: optional ``[B, 1, T_total, h, w]`` weights of the latent cells (``train.character_weight``);
            a shot's loss is then the weighted mean of its squared errors.
    Returns:
        ``(loss, per_shot)``: the mean of each shot's MSE over its own tokens, averaged over the shots that carry
        loss (so short image shots and long video shots count alike), and ``per_shot [B, n_shots]`` (detached).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    err = (pred.float() - target.float()).square()  # [B, C, T_total, h, w]
    chunks = torch.split(err, list(frames_per_shot), dim=2)  # n × [B, C, T_i, h, w]
    if cell_weights is None:
        per_shot = torch.stack([c.mean(dim=(1, 2, 3, 4)) for c in chunks], dim=1)  # [B, n]
    else:
        cw = torch.split(cell_weights.to(err).expand(err.shape[0], 1, *err.shape[2:]), list(frames_per_shot), dim=2)
        per_shot = torch.stack([(c * m).mean(dim=(1, 2, 3, 4)) / m.mean(dim=(1, 2, 3, 4)) for c, m in zip(chunks, cw)], dim=1)
    w = weights.to(per_shot)
    denom = w.sum()
    if float(denom) <= 0:
        raise ValueError("no shot in the batch carries loss (all weights are 0); keep at least one noisy shot per sample")
    return (per_shot * w).sum() / denom, per_shot.detach()


def build_model_config(recipe: Recipe, *, text_dim: int, latent_channels: int) -> Any:
    """The MMDiT config of a recipe: ``model.name`` + ``model.overrides``, with the sizes the encoders impose."""
    from storyreel.models import MODELS, get_model_config

    mc = recipe.model
    if mc.name not in MODELS:
        raise RecipeError(f"model.name={mc.name!r} is not a backbone preset; choose one of {sorted(MODELS)}")
    derived = {
        "in_channels": latent_channels,
        "text_dim": text_dim,
        "text_len": mc.text_len,
        "max_shots": max(s.max_shots for s in recipe.schedule.stages),
    }
    for key, value in derived.items():
        if key in mc.overrides and mc.overrides[key] != value:
            raise RecipeError(
                f"model.overrides.{key}={mc.overrides[key]!r} contradicts the recipe, which implies {value!r} "
                f"(from the text encoder / autoencoder / schedule); remove the override"
            )
    kwargs = {**mc.overrides, **derived}
    if mc.attn_policy is not None:
        kwargs["attn_policy"] = mc.attn_policy
    try:
        return get_model_config(mc.name, **kwargs)
    except ValueError as err:
        raise RecipeError(f"model: {err}") from err


def load_init_weights(model: nn.Module, source: str | Path, *, prefer: str = "ema", grow: bool = False) -> Path:
    """Initialise ``model`` from a model folder (``config.json`` + ``model.safetensors``) or a training checkpoint
    (run folder / ``step-*``; its ``ema`` or ``model`` weights). Only names and shapes must match, so a
    bidirectional checkpoint can seed a context-causal model (LCT §3.3). ``grow``: the source may have fewer
    transformer blocks of the same width; they are spread over the model's and the rest start as identities
    (:func:`storyreel.train.grow.grow_state`). Returns the weights file used."""
    src = Path(source)
    if has_weights(src):  # a model folder (one weights file or shards)
        weights = weights_path(src)
        state = load_folder_state(src)
    else:
        try:
            ckpt = resolve_checkpoint(src)
        except CheckpointError as err:
            raise CheckpointError(f"model.init_from={str(src)!r}: {err}") from err
        folder = ckpt / prefer if (ckpt / prefer / WEIGHTS_NAME).is_file() else ckpt / "model"
        weights = folder / WEIGHTS_NAME
        state = load_weights(weights)
    own = model.state_dict()
    if grow:
        from storyreel.train.grow import grow_state

        try:
            state = grow_state(state, own)
        except ValueError as err:
            raise CheckpointError(f"model.init_grow from {weights}: {err}") from err
    check_state_matches(state, own, source=weights, what=f"{type(model).__name__} built from the recipe")
    model.load_state_dict(state)
    return weights


def last_shot_loss(per_shot: Tensor, weights: Tensor) -> float:
    """Mean loss of the last shot over the samples where it carries loss (``per_shot``, ``weights``: ``[B, n]``)."""
    w = weights[:, -1]
    return float((per_shot[:, -1] * w).sum() / w.sum().clamp_min(1.0))


class WindowTask:
    """Task-protocol methods shared by every task that trains on :class:`BatchBuilder` batches (needs
    ``self.builder``, ``self.sampler``, ``self.device`` and ``self.model``)."""

    def batch(self, step: int, micro: int) -> TrainBatch:
        return self.builder.build(step, micro).to(self.device)  # type: ignore[attr-defined]

    def tokens(self, batch: TrainBatch) -> int:
        return batch.tokens

    def flops(self, batch: TrainBatch) -> float | None:
        """Forward + backward ≈ 3 × forward FLOPs of the batch."""
        fn = getattr(self.model, "flops_per_forward", None)  # type: ignore[attr-defined]
        if fn is None:
            return None
        cache: dict[tuple[Any, int], float] = self.__dict__.setdefault("_flops", {})
        key = (batch.layout, int(batch.latents.shape[0]))
        if key not in cache:  # counting allowed attention pairs builds a mask: once per layout
            if len(cache) > 256:
                cache.clear()
            cache[key] = 3.0 * float(fn(batch.layout, batch=key[1]))
        return cache[key]

    def describe(self, batch: TrainBatch) -> dict[str, Any]:
        plan = batch.plan
        return {"stage": plan.stage.name, "n_shots": plan.n_shots, "images": sum(plan.image_shots),
                "cond_mask": float(batch.cond_mask.float().mean()), "text_dropped": float(batch.dropped.float().mean()),
                "causal": float(batch.causal)}

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)  # type: ignore[attr-defined]


class SceneTask(WindowTask):
    """Multi-shot MMDiT on StoryWorld-style scene data (see :class:`~storyreel.train.batching.BatchBuilder`)."""

    class_name = "MultiShotMMDiT"

    def __init__(self, recipe: Recipe, *, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        from storyreel.autoencoders import get_autoencoder
        from storyreel.models import MultiShotMMDiT
        from storyreel.text import get_text_encoder

        self.recipe = recipe
        self.device = device
        mc, data, tc = recipe.model, recipe.data, recipe.train
        text_kwargs: dict[str, Any] = {"max_length": mc.text_len, **mc.text_encoder_kwargs}
        if mc.text_encoder == "minilm":
            text_kwargs.setdefault("device", device)
        self.text_encoder = get_text_encoder(mc.text_encoder, **text_kwargs)
        if mc.autoencoder_path and not (Path(mc.autoencoder_path) / CONFIG_NAME).is_file():
            raise RecipeError(
                f"model.autoencoder_path={mc.autoencoder_path!r} holds no trained autoencoder ({CONFIG_NAME} missing); "
                "train it first (`storyreel train vae-small`) or use --set model.autoencoder_path=null --set model.autoencoder=patch"
            )
        ae_source = mc.autoencoder_path or mc.autoencoder
        self.autoencoder = get_autoencoder(ae_source, **mc.autoencoder_kwargs)
        self.autoencoder.to(device).eval().requires_grad_(False)
        scale = mc.latent_scale if mc.latent_scale is not None else 1.0
        self.model_config = build_model_config(recipe, text_dim=self.text_encoder.dim, latent_channels=self.autoencoder.latent_channels)
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.model = MultiShotMMDiT(self.model_config)
        self.init_source = load_init_weights(self.model, mc.init_from, prefer=mc.init_weights, grow=mc.init_grow) if mc.init_from else None
        self.model.to(device)
        self.index = SceneIndex(data.path, cache=data.cache_scenes)
        self.sampler = WindowSampler(self.index, data, seed=tc.seed)
        self.builder = BatchBuilder(
            sampler=self.sampler, text_encoder=self.text_encoder, autoencoder=self.autoencoder, data=data,
            schedule=recipe.schedule, timesteps=tc.timesteps, cond_mask_prob=tc.cond_mask_prob, batch_size=tc.batch_size,
            patch_size=self.model_config.patch_size, text_len=mc.text_len, latent_scale=scale, seed=tc.seed, rank=rank,
            world_size=world_size, device=device, character_weight=tc.character_weight, causal_prob=tc.causal_prob,
        )

    # -- Task protocol ----------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: TrainBatch) -> tuple[Tensor, dict[str, float]]:
        """Noise the latents at the per-shot timesteps, predict the velocity, average the loss per shot."""
        t_frames = expand_shot_timesteps(batch.t, batch.frames_per_shot)  # [B, 1, T_total, 1, 1]
        xt = noise_latents(batch.latents, batch.noise, t_frames)  # [B, C, T_total, h, w]
        target = flow_target(batch.latents, batch.noise)
        policy = "causal_shots" if batch.causal else None  # None: the model's own attention policy
        pred = model(xt, batch.t, batch.context, batch.layout, backend=self.recipe.model.backend, policy=policy)
        loss, per_shot = shot_loss(pred, target, batch.frames_per_shot, batch.weights, batch.cell_weights)
        return loss, {"loss_last_shot": last_shot_loss(per_shot, batch.weights)}

    def extra(self) -> dict[str, Any]:
        """Facts a pipeline needs to use the weights (saved as ``_extra`` in ``config.json``)."""
        mc, data = self.recipe.model, self.recipe.data
        return {
            "recipe": self.recipe.name,
            "text_encoder": mc.text_encoder,
            "text_encoder_kwargs": dict(mc.text_encoder_kwargs),
            "text_len": mc.text_len,
            "autoencoder": mc.autoencoder_path or mc.autoencoder,
            "autoencoder_kwargs": dict(mc.autoencoder_kwargs),
            "latent_scale": mc.latent_scale if mc.latent_scale is not None else 1.0,
            "global_prompt": data.global_prompt,
            "expand_characters": data.expand_characters,
            "frames": data.frames,
            "frame_stride": data.frame_stride,
            "init_from": str(self.init_source) if self.init_source else None,
            "causal_prob": self.recipe.train.causal_prob,
        }
