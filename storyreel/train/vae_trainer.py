"""The video-VAE task: train ``CausalVideoVAE`` on single-shot clips (and single frames) of the scene data.

Uses the same :class:`~storyreel.train.trainer.Trainer` (optimiser, EMA, checkpoints, exact resume) as the
diffusion backbone. At export the EMA model's latent normalisation (shift / scale) is fitted on training clips.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from storyreel.pretrained import CONFIG_NAME
from storyreel.train.batching import StepPlan, WindowSampler, _rng, _torch_gen
from storyreel.train.config import Recipe, RecipeError, StageConfig
from storyreel.train.scenes import SceneIndex

__all__ = ["VAETask", "build_vae_config"]

_VAE_PLAN, _VAE_DRAW, _VAE_NOISE = 505, 606, 707


def build_vae_config(recipe: Recipe) -> Any:
    """``model.name`` ("debug" | "tiny" | "small", or "vae-<size>") + ``model.overrides`` → VAEConfig."""
    from storyreel.autoencoders import VAE_CONFIGS

    name = recipe.model.name.removeprefix("vae-")
    if name not in VAE_CONFIGS:
        raise RecipeError(f"model.name={recipe.model.name!r} is not a VAE preset; choose one of {sorted(VAE_CONFIGS)}")
    fields = {f.name for f in dataclasses.fields(VAE_CONFIGS[name])}
    unknown = sorted(set(recipe.model.overrides) - fields)
    if unknown:
        raise RecipeError(f"model.overrides has unknown VAEConfig field(s) {unknown}; allowed: {sorted(fields)}")
    try:
        return dataclasses.replace(VAE_CONFIGS[name], **recipe.model.overrides)
    except ValueError as err:
        raise RecipeError(f"model.overrides: {err}") from err


class _LossModule(nn.Module):
    """Runs ``vae_loss`` inside ``forward`` so that DDP sees the computation (its hooks sync the gradients)."""

    def __init__(self, vae: nn.Module, loss_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.vae = vae
        self.loss_kwargs = loss_kwargs

    def forward(self, video: Tensor, generator: torch.Generator | None = None,
                pixel_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        from storyreel.autoencoders import vae_loss

        return vae_loss(self.vae, video, generator=generator, pixel_weights=pixel_weights, **self.loss_kwargs)


class VAETask:
    """Causal video VAE on clips of ``data.frames`` frames; a ``data.frame_substitution`` share of steps uses single frames."""

    class_name = "CausalVideoVAE"

    def __init__(self, recipe: Recipe, *, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        from storyreel.autoencoders import CausalVideoVAE

        self.recipe = recipe
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.model_config = build_vae_config(recipe)
        torch.manual_seed(recipe.train.seed)
        self.model = CausalVideoVAE(self.model_config)
        self.frozen_norm: tuple[float, float] | None = None
        if recipe.model.freeze_encoder and not recipe.model.init_from:
            raise RecipeError("model.freeze_encoder=true trains the decoder of an existing autoencoder; set model.init_from "
                              "to its folder (e.g. storyreel/weights/default/autoencoder) or drop freeze_encoder")
        if recipe.model.init_from:
            from storyreel.train.scene_task import load_init_weights

            weights = load_init_weights(self.model, recipe.model.init_from, prefer=recipe.model.init_weights)
            if recipe.model.freeze_encoder:
                # the encoder and its latent normalisation stay exactly as they were, so every model trained on
                # this autoencoder's latents keeps working with the new decoder
                config = json.loads((weights.parent / CONFIG_NAME).read_text()) if (weights.parent / CONFIG_NAME).is_file() else {}
                self.frozen_norm = (float(config.get("shift_factor", 0.0)), float(config.get("scaling_factor", 1.0)))
                self.model.config = dataclasses.replace(self.model.config, shift_factor=self.frozen_norm[0],
                                                        scaling_factor=self.frozen_norm[1])
                self.model.encoder.requires_grad_(False)
        self.model.to(device)
        self.train_module = _LossModule(self.model, dict(recipe.train.vae_loss))
        self.index = SceneIndex(recipe.data.path, cache=recipe.data.cache_scenes)
        self.sampler = WindowSampler(self.index, recipe.data, seed=recipe.train.seed)
        self._stage = StageConfig(name="vae", mode="concat", max_shots=1, min_shots=1)

    def _plan(self, step: int) -> StepPlan:
        image = bool(_rng(self.recipe.train.seed, _VAE_PLAN, step).random() < self.recipe.data.frame_substitution)
        return StepPlan(stage=self._stage, stage_index=0, n_shots=1, image_shots=(image,))

    def _clips(self, sampler: WindowSampler, plan: StepPlan, count: int, rng: Any,
               weighted: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``count`` clips as video ``[count, 3, F, H, W]`` in [-1, 1] (F = 1 for image steps); with ``weighted``
        also their pixel loss weights ``[count, 1, F, H, W]``: ``1 + train.character_weight`` inside a character
        box, 1 elsewhere."""
        windows = sampler.draw(plan, count, rng)
        frames = [sampler.materialise(w, mode="concat")["frames"][0] for w in windows]  # count × [F, 3, H, W] uint8
        video = torch.stack(frames).permute(0, 2, 1, 3, 4)  # [count, 3, F, H, W]
        video = video.to(torch.float32) / 127.5 - 1.0
        if not weighted:
            return video
        grid = tuple(video.shape[-2:])
        boxes = np.stack([sampler.frame_cells(w[0].scene, w[0].shot, grid)[list(w[0].frames)] for w in windows])
        weights = 1.0 + self.recipe.train.character_weight * torch.from_numpy(boxes.astype(np.float32))[:, None]
        return video, weights  # [count, 1, F, H, W]

    # -- Task protocol ----------------------------------------------------------------------------

    def batch(self, step: int, micro: int) -> dict[str, Any]:
        b = self.recipe.train.batch_size
        plan = self._plan(step)
        rng = _rng(self.recipe.train.seed, _VAE_DRAW, step, micro)
        weights = None
        if self.recipe.train.character_weight > 0:
            video, weights = self._clips(self.sampler, plan, b * self.world_size, rng, weighted=True)
            weights = weights[self.rank * b : (self.rank + 1) * b].to(self.device)
        else:
            video = self._clips(self.sampler, plan, b * self.world_size, rng)
        mine = video[self.rank * b : (self.rank + 1) * b].to(self.device)
        gen = _torch_gen(self.recipe.train.seed, _VAE_NOISE, step, micro, self.rank)
        if self.device.type == "cuda":
            gen = torch.Generator(self.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        return {"video": mine, "generator": gen, "image": plan.image_shots[0], "pixel_weights": weights}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        loss, logs = model(batch["video"], batch["generator"], batch.get("pixel_weights"))
        return loss, {k: v for k, v in logs.items() if k != "loss"}

    def tokens(self, batch: dict[str, Any]) -> int:
        """Latent positions per step: B · T' · h · w."""
        b, _, t, h, w = batch["video"].shape
        _, lt, lh, lw = self.model.latent_shape(t, h, w)
        return int(b * lt * lh * lw)

    def flops(self, batch: dict[str, Any]) -> float | None:
        """Convolution FLOPs are not modelled; MFU is reported as None for the VAE."""
        return None

    def describe(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"frames": int(batch["video"].shape[2])}

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def extra(self) -> dict[str, Any]:
        return {"recipe": self.recipe.name, "frames": self.recipe.data.frames}

    @torch.no_grad()
    def finalize(self, directory: Path, *, batches: int = 8) -> None:
        """Fit the exported (EMA) VAE's latent shift/scale on training clips so latents have mean 0, std 1."""
        from storyreel.autoencoders import CausalVideoVAE

        vae = CausalVideoVAE.from_pretrained(directory, device=self.device).eval()
        if self.frozen_norm is not None:  # decoder-only: keep the encoder's normalisation
            vae.config = dataclasses.replace(vae.config, shift_factor=self.frozen_norm[0], scaling_factor=self.frozen_norm[1])
            vae.save_pretrained(directory, extra=self.extra())
            return
        sampler = WindowSampler(self.index, self.recipe.data, seed=self.recipe.train.seed + 1)
        plan = StepPlan(stage=self._stage, stage_index=0, n_shots=1, image_shots=(False,))
        clips = [self._clips(sampler, plan, self.recipe.train.batch_size, _rng(self.recipe.train.seed, 808, i)).to(self.device)
                 for i in range(batches)]
        vae.fit_latent_normalisation(clips)
        vae.save_pretrained(directory, extra=self.extra())
