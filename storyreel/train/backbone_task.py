"""Fine-tuning a diffusers backbone (Wan / CogVideoX) on multi-shot scenes, with LoRA (peft) or fully.

Per-shot timesteps, the global prompt as its own segment and scene-level attention after LCT (Guo et al. 2025,
§3.2); the segment-level conditional mask (all shots but the last held clean, no loss) and mask policies after
Mask²DiT (Qi et al. 2025); low-rank adaptation after LoRA (Hu et al. 2022). Each backbone keeps its own
objective: Wan is flow matching (``x_t = (1-t)·x0 + t·ε``, target ``ε - x0``, model timestep ``1000·t``);
CogVideoX is DDPM v-prediction (``x_τ = √ᾱ_τ·x0 + √(1-ᾱ_τ)·ε``, target ``v = √ᾱ_τ·ε - √(1-ᾱ_τ)·x0`` with the
alphas of its scheduler config, integer ``τ = ⌊t·N⌋``). Batches are storyreel's (``train/batching.py``) with the
backbone's VAE latents and T5 states; the trainer, torchrun, FSDP2 / DDP, activation checkpointing and bf16 are
the shared ones (``train/trainer.py``, ``train/parallelize.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from storyreel.diffusion import expand_shot_timesteps
from storyreel.pretrained import CONFIG_NAME, WEIGHTS_NAME
from storyreel.train.batching import BatchBuilder, TrainBatch, WindowSampler
from storyreel.train.config import BackboneConfig, Recipe, RecipeError
from storyreel.train.scene_task import WindowTask, last_shot_loss, shot_loss
from storyreel.train.scenes import SceneIndex

__all__ = [
    "BackboneModelConfig",
    "BackboneTask",
    "apply_lora",
    "check_backbone_recipe",
    "check_finetuned_folder",
    "load_finetuned",
    "lora_state_dict",
    "noise_for_backbone",
]

_CLASS = {"wan": "WanSceneAdapter", "cogvideox": "CogVideoXSceneAdapter"}


@dataclass(frozen=True, kw_only=True)
class BackboneModelConfig:
    """What a fine-tuned backbone folder records in ``config.json`` (besides the weights folder it started from)."""

    kind: str
    finetune: str
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: tuple[str, ...]
    text_len: int
    attn_policy: str | None

    def __post_init__(self) -> None:
        if self.kind not in _CLASS:
            raise ValueError(f"BackboneModelConfig.kind={self.kind!r}; allowed: {sorted(_CLASS)}")
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"BackboneModelConfig.finetune={self.finetune!r}; allowed: 'lora' or 'full'")
        if self.text_len < 1:
            raise ValueError(f"BackboneModelConfig.text_len={self.text_len!r}; allowed: an int >= 1")


def apply_lora(backbone: nn.Module, *, rank: int, alpha: float, dropout: float, targets: list[str] | tuple[str, ...]) -> int:
    """Inject LoRA layers (peft) into ``backbone.transformer``'s linears whose names end with ``targets``; freeze
    every other weight; keep the LoRA weights in float32. Returns the number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    transformer = getattr(backbone, "transformer", backbone)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=list(targets),
                        init_lora_weights=True)
    try:
        inject_adapter_in_model(config, transformer)
    except ValueError as err:
        raise RecipeError(f"backbone.lora_targets={list(targets)} match no linear layer of {type(transformer).__name__} "
                          f"({err}); name module suffixes such as to_q, to_k, to_v, to_out.0, net.0.proj, net.2") from err
    n = 0
    for name, p in backbone.named_parameters():
        train = "lora_" in name
        p.requires_grad_(train)
        if train:
            p.data = p.data.float()
            n += p.numel()
    return n


def lora_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The LoRA tensors of ``backbone`` (names as in its state dict)."""
    return {k: v for k, v in backbone.state_dict().items() if "lora_" in k}


def check_finetuned_folder(folder: str | os.PathLike[str], *, kind: str) -> list[Path]:
    """Check a folder exported by a backbone recipe (``config.json`` + ``model.safetensors``) before loading it."""
    from storyreel.pipelines.backbone_weights import BackboneFolderError

    root = Path(folder)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (root / n).is_file()]
    if missing:
        raise BackboneFolderError(
            f"fine-tuned folder {root} lacks {missing}; pass the model/ folder written by `storyreel train wan-lora` "
            "(or cogvideox-lora), e.g. outputs/train/wan-lora/model"
        )
    cfg = json.loads((root / CONFIG_NAME).read_text(encoding="utf-8"))
    if cfg.get("kind") != kind:
        raise BackboneFolderError(f"{root} was fine-tuned from a {cfg.get('kind')!r} backbone, not {kind!r}; use "
                                  f"--backbone {cfg.get('kind')} with that backbone's weights")
    return [root / CONFIG_NAME, root / WEIGHTS_NAME]


def load_finetuned(backbone: nn.Module, folder: str | os.PathLike[str], *, merge: bool = True) -> dict[str, Any]:
    """Load an exported fine-tune into a freshly loaded ``backbone`` (LoRA: injected with the recorded config and,
    with ``merge``, folded into the base weights). Returns the recorded training facts (``_extra``)."""
    from safetensors.torch import load_file

    from storyreel.pipelines.backbone_weights import BackboneFolderError

    root = Path(folder)
    cfg = json.loads((root / CONFIG_NAME).read_text(encoding="utf-8"))
    if cfg.get("finetune") == "lora":
        apply_lora(backbone, rank=cfg["lora_rank"], alpha=cfg["lora_alpha"], dropout=0.0, targets=cfg["lora_targets"])
    state = load_file(str(root / WEIGHTS_NAME))
    own = backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise BackboneFolderError(f"{root / WEIGHTS_NAME} does not fit this backbone (missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}); load it with the weights folder it was fine-tuned from")
    backbone.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    if merge:
        for module in backbone.modules():
            if hasattr(module, "merge") and hasattr(module, "lora_A"):
                module.merge()
    backbone.requires_grad_(False)
    return dict(cfg.get("_extra") or {})


def noise_for_backbone(
    prediction: str, x0: Tensor, noise: Tensor, t: Tensor, clean: Tensor, frames_per_shot: list[int], *,
    num_train_timesteps: int = 1000, alphas_cumprod: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Noisy latents, training target and model timesteps for one backbone objective.

    Args:
        prediction: ``"flow"`` (Wan) or ``"v"`` (CogVideoX).
        x0, noise: ``[B, C, T_total, h, w]`` (shots concatenated along latent time).
        t: ``[B, n_shots]`` noise levels in [0, 1]; ``clean``: ``[B, n_shots]`` bool, shots held exactly clean.
        frames_per_shot: latent frames of each shot.
        alphas_cumprod: ``[N]`` the DDPM scheduler's ᾱ (``"v"`` only).
    Returns:
        ``(x_t, target, t_model)`` with ``t_model [B, n_shots]`` in the backbone's convention (clean shots: 0).
    """
    n = int(num_train_timesteps)
    if prediction == "flow":
        t = torch.where(clean, torch.zeros_like(t), t)
        tf = expand_shot_timesteps(t, frames_per_shot).to(x0)  # [B, 1, T_total, 1, 1]
        return (1.0 - tf) * x0 + tf * noise, noise - x0, t * n
    if prediction != "v" or alphas_cumprod is None:
        raise ValueError(f"prediction={prediction!r} needs 'flow', or 'v' with alphas_cumprod")
    tau = (t * n).floor().clamp(0, n - 1).long()  # [B, n_shots] integer DDPM timesteps
    tau = torch.where(clean, torch.zeros_like(tau), tau)
    abar = alphas_cumprod.to(x0.device, torch.float64)[tau].float()  # [B, n_shots]
    a, s = abar.sqrt(), (1.0 - abar).sqrt()
    a, s = torch.where(clean, torch.ones_like(a), a), torch.where(clean, torch.zeros_like(s), s)  # clean: x_t = x0
    af, sf = (expand_shot_timesteps(v, frames_per_shot).to(x0) for v in (a, s))  # [B, 1, T_total, 1, 1] each
    return af * x0 + sf * noise, af * noise - sf * x0, tau.float()


def check_backbone_recipe(recipe: Recipe) -> None:
    """What a backbone recipe needs before any data or weights are touched: a complete weights folder and shots of
    frame counts the backbone's VAE serves. Raises :class:`RecipeError` naming the key and the fix."""
    from storyreel.pipelines import GenerationError
    from storyreel.pipelines.backbone_weights import _FRAME_STEP, check_weights_dir

    bc = recipe.backbone
    if recipe.kind != "backbone" or bc is None:
        raise RecipeError("kind: backbone needs a backbone: section (type, weights, finetune, ...)")
    if not bc.weights:
        raise RecipeError(f"backbone.weights is required: the {bc.type} diffusers weights folder, e.g. "
                          f"--set backbone.weights=/data/{'Wan2.1-T2V-1.3B-Diffusers' if bc.type == 'wan' else 'CogVideoX-2b'} "
                          "(see docs/backbones.md; nothing is downloaded)")
    try:
        check_weights_dir(bc.type, bc.weights)
    except GenerationError as err:
        raise RecipeError(f"backbone.weights: {err}") from None
    if recipe.train.causal_prob > 0:
        raise RecipeError(f"train.causal_prob={recipe.train.causal_prob} is for storyreel's own scene model (kind: scene); a "
                          "backbone recipe trains one attention policy, set by model.attn_policy (e.g. causal_shots)")
    step = _FRAME_STEP[bc.type]
    if (recipe.data.frames - 1) % step:
        raise RecipeError(f"data.frames={recipe.data.frames} is not 1 + {step}·k, which {bc.type}'s VAE needs (e.g. "
                          f"{1 + 4 * step}); set data.frames")


class _TrainForward(nn.Module):
    """What the trainer calls and parallelises: the adapter, with the transformer's blocks exposed as ``blocks`` so
    that activation checkpointing and FSDP2 (``train/parallelize.py``) wrap one transformer block each."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        tr = adapter.transformer
        self.blocks = tr.blocks if hasattr(tr, "blocks") else tr.transformer_blocks  # Wan / CogVideoX

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.adapter(*args, **kwargs)


class BackboneTask(WindowTask):
    """A Wan / CogVideoX scene adapter fine-tuned on storyreel shards (the Task protocol of ``train/trainer.py``)."""

    def __init__(self, recipe: Recipe, *, device: torch.device, rank: int = 0, world_size: int = 1) -> None:
        from storyreel.models.adapters import load_backbone
        from storyreel.pipelines.backbone import DiffusersVideoVAE, T5StatesEncoder
        from storyreel.pipelines.backbone_weights import _VAE_CLASS

        bc: BackboneConfig | None = recipe.backbone
        if bc is None:
            raise RecipeError("kind: backbone needs a backbone: section (type, weights, finetune, ...)")
        self.recipe, self.device, self.kind = recipe, device, bc.type
        mc, data, tc = recipe.model, recipe.data, recipe.train
        check_backbone_recipe(recipe)
        root = Path(bc.weights)  # type: ignore[arg-type]
        lora = bc.finetune == "lora"
        base = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(bc.base_dtype)
        if base is None:
            base = torch.bfloat16 if (lora and device.type == "cuda") else torch.float32
        if not lora:
            base = torch.float32  # full fine-tuning keeps float32 master weights (bf16 comes from autocast / FSDP)
        torch.manual_seed(tc.seed)  # identical LoRA initialisation on every rank
        self.model = load_backbone(bc.type, root / "transformer", dtype=base, device=device)
        self.base_dtype = base
        alpha = float(bc.lora_alpha if bc.lora_alpha is not None else bc.lora_rank)
        if lora:
            self.trainable = apply_lora(self.model, rank=bc.lora_rank, alpha=alpha, dropout=bc.lora_dropout, targets=bc.lora_targets)
        else:
            self.model.requires_grad_(True)
            self.trainable = sum(p.numel() for p in self.model.parameters())
        self.init_source = None
        if mc.init_from:
            check_finetuned_folder(mc.init_from, kind=bc.type)
            if lora:
                from safetensors.torch import load_file

                self.model.load_state_dict(load_file(str(Path(mc.init_from) / WEIGHTS_NAME)))
            else:
                load_finetuned(self.model, mc.init_from, merge=True)
                self.model.requires_grad_(True)
            self.init_source = str(mc.init_from)
        self.model.to(device)
        self.train_module = _TrainForward(self.model)
        self.prediction = str(self.model.prediction)
        import diffusers

        sched_cfg = json.loads((root / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        self.num_train_timesteps = int(sched_cfg.get("num_train_timesteps", 1000))
        self.alphas_cumprod = None
        if self.prediction == "v":
            self.alphas_cumprod = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg).alphas_cumprod.clone()
        enc_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.text_encoder = T5StatesEncoder.from_folder(root, max_length=mc.text_len, zero_padding=bc.type == "wan",
                                                        device=device, dtype=enc_dtype)
        vae = getattr(diffusers, _VAE_CLASS[bc.type]).from_pretrained(root / "vae", local_files_only=True,
                                                                      torch_dtype=torch.float32)
        self.autoencoder = DiffusersVideoVAE(vae, bc.type).to(device)
        self.model_config = BackboneModelConfig(
            kind=bc.type, finetune=bc.finetune, lora_rank=bc.lora_rank, lora_alpha=alpha, lora_dropout=bc.lora_dropout,
            lora_targets=tuple(bc.lora_targets), text_len=mc.text_len, attn_policy=mc.attn_policy)
        self.class_name = _CLASS[bc.type]
        self.index = SceneIndex(data.path, cache=data.cache_scenes)
        self.sampler = WindowSampler(self.index, data, seed=tc.seed)
        self.builder = BatchBuilder(
            sampler=self.sampler, text_encoder=self.text_encoder, autoencoder=self.autoencoder, data=data,
            schedule=recipe.schedule, timesteps=tc.timesteps, cond_mask_prob=tc.cond_mask_prob, batch_size=tc.batch_size,
            patch_size=tuple(int(p) for p in self.model.patch_size), text_len=mc.text_len, latent_scale=1.0,
            seed=tc.seed, rank=rank, world_size=world_size, device=device, character_weight=tc.character_weight,
        )

    # -- Task protocol ----------------------------------------------------------------------------

    def loss(self, model: nn.Module, batch: TrainBatch) -> tuple[Tensor, dict[str, float]]:
        """Noise every shot at its own level with the backbone's forward process; per-shot averaged loss on the
        backbone's target (flow velocity or v); clean conditioning shots carry no loss."""
        clean = batch.weights <= 0  # [B, n_shots]
        xt, target, t_model = noise_for_backbone(
            self.prediction, batch.latents, batch.noise, batch.t, clean, batch.frames_per_shot,
            num_train_timesteps=self.num_train_timesteps, alphas_cumprod=self.alphas_cumprod)
        dtype = self.base_dtype
        pred = model(xt.to(dtype), t_model, batch.context.to(dtype), batch.layout, policy=self.recipe.model.attn_policy,
                     backend=self.recipe.model.backend)
        loss, per_shot = shot_loss(pred, target, batch.frames_per_shot, batch.weights, batch.cell_weights)
        return loss, {"loss_last_shot": last_shot_loss(per_shot, batch.weights)}

    def extra(self) -> dict[str, Any]:
        """Facts the backbone pipeline needs to use the weights (``_extra`` of ``config.json``)."""
        bc, data = self.recipe.backbone, self.recipe.data
        assert bc is not None
        return {"recipe": self.recipe.name, "backbone": bc.type, "weights": str(bc.weights), "finetune": bc.finetune,
                "text_len": self.recipe.model.text_len, "global_prompt": data.global_prompt, "frames": data.frames,
                "trainable_parameters": int(self.trainable), "init_from": self.init_source}
