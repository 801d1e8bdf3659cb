"""Training recipes: a tree of keyword-only dataclasses loaded from YAML, with dotted ``--set`` overrides.

A recipe file is YAML with the top-level sections ``model``, ``data``, ``train``, ``schedule`` and
``output`` (plus ``name``, ``kind`` and an optional ``extends: other.yaml`` whose values it
overrides). ``--set a.b.c=value`` overrides one leaf; the value is parsed as a YAML scalar
(``--set train.steps=2000``, ``--set model.attn_policy=causal_shots``, ``--set train.betas=[0.9,0.95]``).
Unknown keys anywhere raise :class:`RecipeError` listing the valid keys at that level.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "BackboneConfig",
    "DataConfig",
    "ModelConfig",
    "OutputConfig",
    "ParallelConfig",
    "Recipe",
    "RecipeError",
    "ScheduleConfig",
    "StageConfig",
    "SynthConfig",
    "TimestepConfig",
    "TrainConfig",
    "apply_overrides",
    "find_recipe",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
]

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class RecipeError(ValueError):
    """A recipe file or a ``--set`` override is invalid (the message names the key and the fix)."""


def _check(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise RecipeError(f"{name}={value!r} is invalid: {allowed}")


def _choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    _check(value in choices, name, value, f"allowed values are {list(choices)}")


@dataclass(kw_only=True)
class SynthConfig:
    """Parameters for synthesising the StoryWorld data folder when it is missing (``synth_storyworld``)."""

    n_scenes: int = 64
    seed: int = 0
    n_shots: int | None = None  # None: 2-8 shots per scene at random
    resolution: int = 64  # square frames, pixels
    frames: int = 16
    fps: int = 8
    long_take_prob: float = 0.1
    scenes_per_shard: int = 256
    workers: int = 1  # processes that render scenes (the data is the same for any value)
    # every scene K times, the characters' unspoken patterns re-drawn in all but the first (storyreel.data.synth)
    pattern_redraws: int = 1

    def __post_init__(self) -> None:
        _check(self.workers >= 1, "data.synth.workers", self.workers, "need >= 1")
        _check(self.n_scenes >= 1, "data.synth.n_scenes", self.n_scenes, "need at least 1 scene")
        _check(self.n_shots is None or 1 <= self.n_shots <= 8, "data.synth.n_shots", self.n_shots, "use null or 1..8")
        _check(32 <= self.resolution <= 256, "data.synth.resolution", self.resolution, "use 32..256 pixels")
        _check(self.frames >= 1, "data.synth.frames", self.frames, "need >= 1")
        _check(self.fps >= 1, "data.synth.fps", self.fps, "need >= 1")
        _check(0.0 <= self.long_take_prob <= 1.0, "data.synth.long_take_prob", self.long_take_prob, "use a probability in [0, 1]")
        _check(self.scenes_per_shard >= 1, "data.synth.scenes_per_shard", self.scenes_per_shard, "need >= 1")
        _check(self.pattern_redraws >= 1, "data.synth.pattern_redraws", self.pattern_redraws,
               "need >= 1 (1: every scene once; K: K copies with re-drawn patterns)")


@dataclass(kw_only=True)
class ModelConfig:
    """What is trained: backbone (or VAE) preset, text encoder, autoencoder, initial weights."""

    name: str = "debug"  # MODELS key (kind=scene) or autoencoder preset (kind=vae)
    overrides: dict[str, Any] = field(default_factory=dict)  # fields of the model config to replace
    attn_policy: str | None = None  # replaces the config's attention policy, e.g. "causal_shots"
    text_encoder: str = "hashing"  # "hashing" | "minilm"
    text_encoder_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {dim: 64} for hashing
    text_len: int = 16  # tokens per shot prompt (padded / truncated)
    autoencoder: str = "patch"  # get_autoencoder name
    autoencoder_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {patch: [1, 4, 4]} for patch
    autoencoder_path: str | None = None  # folder of trained autoencoder weights (from_pretrained)
    latent_scale: float | None = None  # None: the autoencoder's own scaling factor (or 1)
    init_from: str | None = None  # checkpoint or model folder to start from (e.g. bidirectional weights)
    init_weights: Literal["ema", "model"] = "ema"
    # kind=scene: init_from has fewer transformer blocks than the model; its blocks are spread over the deeper
    # stack (first to first, last to last) and the blocks between start as identities (storyreel.train.grow)
    init_grow: bool = False
    freeze_encoder: bool = False  # kind=vae: train the decoder only, from init_from (its latents stay valid)
    backend: str = "auto"  # attention backend

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "name a model preset, e.g. 'debug'")
        _check(self.text_len >= 1, "model.text_len", self.text_len, "need >= 1 token per prompt")
        _choice("model.init_weights", self.init_weights, ("ema", "model"))
        _check(self.init_from is not None or not self.init_grow, "model.init_grow", self.init_grow,
               "growth starts from trained weights; set model.init_from to a shallower model of the same width")
        _check(self.latent_scale is None or self.latent_scale > 0, "model.latent_scale", self.latent_scale, "use null or > 0")
        _choice("model.backend", self.backend, ("auto", "dense", "grouped", "flex"))


@dataclass(kw_only=True)
class DataConfig:
    """Where the scenes come from and how training windows are cut from them."""

    path: str = "outputs/data/storyworld"
    synth: SynthConfig | None = field(default_factory=SynthConfig)  # None: never synthesise
    frames: int = 8  # pixel frames per video shot in a training window
    frame_stride: int = 1  # temporal subsampling inside a shot
    global_prompt: bool = True  # LCT: global prompt as its own text segment
    expand_characters: bool = False  # repeat each named character's global description in its shot prompt
    text_dropout: float = 0.1  # probability that a sample's prompts are all emptied (CFG)
    frame_substitution: float = 0.1  # per shot position: replace the shot by one of its frames
    image_condition_prob: float = 0.5  # a substituted image shot is held clean (t=0, no loss) as a condition
    single_shot_prob: float = 0.2  # LCT joint training: fraction of batches that are 1-shot
    stride_sampling: bool = True  # Captain Cinema dynamic stride over long scenes (stride uniform over those that fit)
    cache_scenes: bool = True  # keep decoded scenes in memory (small datasets)
    prefetch: int = 2  # batches built ahead on a background thread (0: build in the training loop)
    cache_latents: int = 0  # encoded shot windows kept on the autoencoder's device (0: encode every batch)

    def __post_init__(self) -> None:
        _check(bool(self.path), "data.path", self.path, "give a dataset folder")
        _check(self.frames >= 1, "data.frames", self.frames, "need >= 1")
        _check(self.frame_stride >= 1, "data.frame_stride", self.frame_stride, "need >= 1")
        _check(self.prefetch >= 0, "data.prefetch", self.prefetch, "need >= 0 (0 disables prefetching)")
        _check(self.cache_latents >= 0, "data.cache_latents", self.cache_latents, "need >= 0 (0 disables the cache)")
        for name in ("text_dropout", "frame_substitution", "image_condition_prob", "single_shot_prob"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"data.{name}", value, "use a probability in [0, 1]")


@dataclass(kw_only=True)
class TimestepConfig:
    """Training timestep distribution (rectified flow; LCT draws one per shot)."""

    distribution: Literal["logit_normal", "uniform"] = "logit_normal"
    independent: bool = True  # per-shot (LCT asynchronous) vs shared across the shots of a sample
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        _choice("train.timesteps.distribution", self.distribution, ("logit_normal", "uniform"))
        _check(self.std > 0, "train.timesteps.std", self.std, "need > 0")
        _check(self.shift > 0, "train.timesteps.shift", self.shift, "need > 0")


@dataclass(kw_only=True)
class ParallelConfig:
    """Scale-out, applied in ``train/parallelize.py`` in the order checkpoint → compile → FSDP/DDP."""

    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp when world_size > 1
    activation_checkpointing: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        _choice("train.parallel.strategy", self.strategy, ("auto", "none", "ddp", "fsdp"))


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation: steps, batch, optimiser, EMA, precision, timesteps, conditional mask."""

    steps: int = 1000
    batch_size: int = 4  # per device, per micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1+n)/(10+n)) after n updates
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    cond_mask_prob: float = 0.0  # Mask²DiT segment-level conditional mask
    character_weight: float = 0.0  # extra loss weight inside character boxes: latent cells (scene), pixels (vae); 0: plain mean
    # kind=scene: share of micro-batches run with context-causal attention (causal_shots) instead of the model's own
    # policy, so that one set of weights serves joint and causal (KV-cache) generation
    causal_prob: float = 0.0
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    vae_loss: dict[str, Any] = field(default_factory=dict)  # kind=vae: keyword arguments of vae_loss
    max_minutes: float | None = None  # wall-clock budget: checkpoint, export and stop once it is spent

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "train.steps", self.steps, "need >= 1")
        _check(self.max_minutes is None or self.max_minutes > 0, "train.max_minutes", self.max_minutes, "use null or > 0")
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "need >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum", self.grad_accum, "need >= 1")
        _check(self.lr > 0, "train.lr", self.lr, "need > 0")
        _choice("train.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _check(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", self.min_lr_ratio, "use [0, 1]")
        _check(self.warmup_steps >= 0, "train.warmup_steps", self.warmup_steps, "need >= 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "need >= 0")
        _check(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "train.betas", self.betas, "two values in [0, 1)")
        _check(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip", self.grad_clip, "use null or > 0")
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", self.ema_decay, "use [0, 1)")
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "train.device", self.device, "use auto, cpu, cuda or cuda:N")
        _choice("train.precision", self.precision, ("auto", "bf16", "fp32"))
        _check(0.0 <= self.cond_mask_prob <= 1.0, "train.cond_mask_prob", self.cond_mask_prob, "use a probability in [0, 1]")
        _check(0.0 <= self.causal_prob <= 1.0, "train.causal_prob", self.causal_prob, "use a probability in [0, 1]")
        _check(self.character_weight >= 0.0, "train.character_weight", self.character_weight,
               "use >= 0 (0 weighs every latent cell alike; 4 makes a cell inside a character box count 5 times)")


@dataclass(kw_only=True)
class StageConfig:
    """One stage of the data schedule (pretrain on concatenations → SFT on scenes; progressive shots)."""

    name: str = "stage"
    until_step: int | None = None  # the stage covers steps < until_step (None: to the end)
    mode: Literal["concat", "scene"] = "scene"  # concat: unrelated shots from different scenes (Mask²DiT pretrain)
    max_shots: int = 4
    min_shots: int = 2

    def __post_init__(self) -> None:
        _choice(f"schedule.stages[{self.name}].mode", self.mode, ("concat", "scene"))
        _check(1 <= self.min_shots <= self.max_shots, f"schedule.stages[{self.name}].min_shots", self.min_shots,
               f"need 1 <= min_shots <= max_shots ({self.max_shots})")
        _check(self.until_step is None or self.until_step >= 1, f"schedule.stages[{self.name}].until_step", self.until_step, "use null or >= 1")


@dataclass(kw_only=True)
class ScheduleConfig:
    """Ordered stages; each ends at its ``until_step`` and the last one runs to ``train.steps``."""

    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig(name="scene")])

    def __post_init__(self) -> None:
        _check(len(self.stages) >= 1, "schedule.stages", self.stages, "give at least one stage")
        last = 0
        for i, stage in enumerate(self.stages):
            if stage.until_step is None:
                _check(i == len(self.stages) - 1, f"schedule.stages[{i}].until_step", None, "only the last stage may omit until_step")
                continue
            _check(stage.until_step > last, f"schedule.stages[{i}].until_step", stage.until_step,
                   f"stage boundaries must increase (previous boundary {last})")
            last = stage.until_step

    def stage_at(self, step: int) -> StageConfig:
        """The stage that covers ``step`` (0-based); steps past every boundary stay in the last stage."""
        for stage in self.stages:
            if stage.until_step is None or step < stage.until_step:
                return stage
        return self.stages[-1]


@dataclass(kw_only=True)
class OutputConfig:
    """Run folder, logging cadence and checkpoint retention."""

    dir: str = "outputs/train/run"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.dir), "output.dir", self.dir, "give an output folder")
        _check(self.log_every >= 1, "output.log_every", self.log_every, "need >= 1")
        _check(self.checkpoint_every >= 1, "output.checkpoint_every", self.checkpoint_every, "need >= 1")
        _check(self.keep_last >= 1, "output.keep_last", self.keep_last, "need >= 1")


@dataclass(kw_only=True)
class BackboneConfig:
    """``kind: backbone``: a diffusers backbone (Wan / CogVideoX) fine-tuned with LoRA or fully (``train/backbone_task.py``)."""

    type: Literal["wan", "cogvideox"] = "wan"
    weights: str | None = None  # required to train: the diffusers weights folder (transformer/, vae/, text_encoder/, ...)
    finetune: Literal["lora", "full"] = "lora"
    lora_rank: int = 32
    lora_alpha: float | None = None  # None: = lora_rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"])
    base_dtype: Literal["auto", "bf16", "fp32"] = "auto"  # frozen weights in LoRA mode (auto: bf16 on CUDA)

    def __post_init__(self) -> None:
        _choice("backbone.type", self.type, ("wan", "cogvideox"))
        _check(self.weights is None or bool(self.weights), "backbone.weights", self.weights,
               "give the backbone's diffusers weights folder, e.g. --set backbone.weights=/data/Wan2.1-T2V-1.3B-Diffusers")
        _choice("backbone.finetune", self.finetune, ("lora", "full"))
        _check(self.lora_rank >= 1, "backbone.lora_rank", self.lora_rank, "need >= 1")
        _check(self.lora_alpha is None or self.lora_alpha > 0, "backbone.lora_alpha", self.lora_alpha, "use null (= rank) or > 0")
        _check(0.0 <= self.lora_dropout < 1.0, "backbone.lora_dropout", self.lora_dropout, "use [0, 1)")
        _check(len(self.lora_targets) >= 1, "backbone.lora_targets", self.lora_targets, "name at least one module suffix")
        _choice("backbone.base_dtype", self.base_dtype, ("auto", "bf16", "fp32"))


@dataclass(kw_only=True)
class Recipe:
    """A whole training run."""

    name: str = "recipe"
    kind: Literal["scene", "vae", "backbone"] = "scene"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    backbone: BackboneConfig | None = None  # kind=backbone only

    def __post_init__(self) -> None:
        _choice("kind", self.kind, ("scene", "vae", "backbone"))
        _check((self.backbone is not None) == (self.kind == "backbone"), "backbone", self.backbone,
               "a backbone: section goes with kind: backbone (and only with it)")


# ----------------------------------------------------------------------------------------------- building


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one YAML value against a type annotation; raise RecipeError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{where}={value!r} is invalid: allowed values are {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise RecipeError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}.{i}") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise RecipeError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise RecipeError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise RecipeError(f"{where}: unsupported field type {tp}")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'} must be a mapping of keys to values, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise RecipeError(f"unknown key {key!r}; valid keys under {where or 'the recipe root'!r}: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where or 'recipe'}: {err}") from err


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Build and validate a :class:`Recipe` from a plain dict (as loaded from YAML)."""
    return _build(Recipe, data, "")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Recipe → plain dict (tuples as lists), the inverse of :func:`recipe_from_dict`."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(recipe))


def _schema_step(tp: Any, key: str, where: str) -> Any:
    """Type of child ``key`` below a node of type ``tp``; RecipeError listing valid keys when unknown."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _schema_step(inner[0], key, where)
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        if key not in hints:
            raise RecipeError(
                f"unknown key {(where + '.' + key) if where else key!r} in --set; valid keys under "
                f"{where or 'the recipe root'!r}: {sorted(hints)}"
            )
        return hints[key]
    if origin in (list, tuple):
        if not key.isdigit():
            raise RecipeError(f"{where} is a list: address an item by index, e.g. {where}.0")
        return typing.get_args(tp)[0]
    if origin is dict or tp is Any:
        return Any
    raise RecipeError(f"{where} is a single value ({getattr(tp, '__name__', tp)}); it has no key {key!r}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``["a.b=value", ...]`` to a raw recipe dict (values parsed as YAML scalars); returns a new dict."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set train.steps=2000")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise RecipeError(f"--set {item!r}: empty key part; write e.g. --set train.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise RecipeError(f"--set {item!r}: value is not valid YAML ({err})") from err
        tp: Any = Recipe
        node: Any = out
        for depth, part in enumerate(parts):
            where = ".".join(parts[:depth])
            tp = _schema_step(tp, part, where)
            last = depth == len(parts) - 1
            if isinstance(node, list):
                idx = int(part)
                if idx >= len(node):
                    raise RecipeError(f"--set {item!r}: {where} has {len(node)} item(s); index {idx} is out of range")
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    if not isinstance(node.get(part), (dict, list)):
                        node[part] = {}
                    node = node[part]
    return out


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def find_recipe(path_or_name: str | Path) -> Path:
    """A recipe file path, or a name in ``configs/`` (``"debug"`` → ``configs/debug.yaml``)."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / f"{path_or_name}.yaml", CONFIG_DIR / str(path_or_name)):
        if cand.is_file():
            return cand
    names = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise RecipeError(f"recipe {str(path_or_name)!r} not found: give a YAML file path or one of {names}")


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: 'extends' loops back to itself ({' -> '.join(str(s) for s in seen)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err}); fix the syntax") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping with sections model/data/train/schedule/output")
    parent = data.pop("extends", None)
    if parent is not None:
        base = _load_raw((path.parent / str(parent)) if not Path(str(parent)).is_absolute() else Path(parent), (*seen, path))
        data = _deep_merge(base, data)
    return data


def load_recipe(path_or_name: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (following ``extends``), apply dotted overrides, validate; raise RecipeError on problems."""
    path = find_recipe(path_or_name)
    data = _load_raw(path)
    data.setdefault("name", path.stem)
    data = apply_overrides(data, list(overrides or []))
    try:
        return recipe_from_dict(data)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None
