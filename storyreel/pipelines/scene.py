"""Scene generation pipeline: a scene model (+ optional context-causal model), an autoencoder and a text encoder.

Scene-level joint diffusion, autoregressive history conditioning at ``t_c`` and context-causal KV-cached
generation after LCT (Guo et al. 2025, "Long Context Tuning for Video Generation"); scene extension with
Mask²DiT (Qi et al. 2025); GoldenMem history and retrieval after Captain Cinema (Xiao et al. 2025).

A pipeline folder holds ``pipeline.json`` (the parts and the sampling defaults) and the parts' folders
``scene/``, ``causal/`` (optional) and ``autoencoder/`` (each written by ``save_pretrained``; the autoencoder
may instead be named, e.g. ``patch``). The text encoder is named (``minilm`` / ``hashing`` with kwargs).
The sampling loops live in :mod:`storyreel.pipelines.scene_run`; see ``docs/generation.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storyreel.autoencoders import Autoencoder, get_autoencoder
from storyreel.memory.history import HISTORY_STRATEGIES
from storyreel.models import MultiShotMMDiT, get_model_config
from storyreel.nn.layout import SequenceLayout
from storyreel.nn.masks import dense_mask, layer_policies
from storyreel.pretrained import CONFIG_NAME, CheckpointError
from storyreel.script import SceneScript, load_script
from storyreel.text import get_text_encoder
from storyreel.utils import atomic_write

__all__ = [
    "DEFAULT_PIPELINE_DIR",
    "GenerationError",
    "GenerationEvent",
    "GenerationPlan",
    "PipelineDefaults",
    "ScenePipeline",
    "SceneResult",
    "generate_to_dir",
    "resolve_device",
    "resolve_dtype",
    "shot_seed",
]

DEFAULT_PIPELINE_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"
PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "storyreel-pipeline/1"
SOLVERS = ("euler", "heun")
SHOT_STREAM = 0x5107  # seed stream of per-shot noise


class GenerationError(ValueError):
    """A generation request that cannot run; raised before any compute, the message says what to change."""


def shot_seed(seed: int, shot: int, *, stream: int = SHOT_STREAM, extra: tuple[int, ...] = ()) -> int:
    """The seed of shot ``shot``'s random draws: a pure function of ``(seed, stream, shot, *extra)`` (63 bits)."""
    state = np.random.SeedSequence([int(seed), int(stream), int(shot), *(int(e) for e in extra)]).generate_state(1, np.uint64)
    return int(state[0] & np.uint64((1 << 63) - 1))


@dataclass(frozen=True, kw_only=True)
class PipelineDefaults:
    """Sampling defaults of a pipeline (``pipeline.json`` → ``defaults``); scripts and arguments override them.

    ``t_c`` is the noise level of conditioning (history) shots, 0 = clean; ``context_window`` the most shots one
    forward pass sees (history + the new shot; ``None`` = the model's ``max_shots``); ``history`` the selection
    strategy beyond the window; ``goldenmem`` compresses history frames (Captain Cinema GoldenMem);
    ``history_guidance`` the weight of history guidance (0 = off): each step also runs the model with every shot cut
    off from the others and moves the result away from it, ``+ h·(with others − alone)``;
    ``history_guidance_causal`` its weight in ``causal`` mode (``None``: ``history_guidance``), where the shots
    conditioned on are the model's own earlier shots rather than the rest of the scene being denoised with them.
    ``autoguidance`` the weight of autoguidance (0 = off; needs the pipeline's ``guide`` model): each step also runs
    a small, briefly trained model on the same inputs and moves the result away from it, ``+ w·(model − guide)``
    (Karras et al. 2024). It counters the strong model's pull towards the average of the unspoken patterns. It is
    not applied in ``causal`` mode, whose KV cache the bidirectional guide cannot share.
    """

    steps: int = 24
    guidance: float = 3.0
    shift: float = 1.0
    solver: str = "euler"
    t_c: float = 0.0
    context_window: int | None = None
    history: str = "recency"
    goldenmem: bool = False
    history_guidance: float = 0.0
    history_guidance_causal: float | None = None
    autoguidance: float = 0.0

    def autoguidance_for(self, mode: str) -> float:
        """The default autoguidance weight of generation mode ``mode`` (0 in ``causal`` mode)."""
        return 0.0 if mode == "causal" else float(self.autoguidance)

    def history_guidance_for(self, mode: str) -> float:
        """The default history-guidance weight of generation mode ``mode``."""
        if mode == "causal" and self.history_guidance_causal is not None:
            return float(self.history_guidance_causal)
        return float(self.history_guidance)

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"PipelineDefaults.{field}={getattr(self, field)!r} is invalid; allowed: {allowed}")

        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise bad("steps", "an int >= 1")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or not 0 <= self.guidance < math.inf:
            raise bad("guidance", "a finite number >= 0 (1 = no guidance)")
        if isinstance(self.shift, bool) or not isinstance(self.shift, (int, float)) or not 0 < self.shift < math.inf:
            raise bad("shift", "a finite number > 0 (1 = no shift)")
        if self.solver not in SOLVERS:
            raise bad("solver", " or ".join(SOLVERS))
        if isinstance(self.t_c, bool) or not isinstance(self.t_c, (int, float)) or not 0 <= self.t_c < 1:
            raise bad("t_c", "a number in [0, 1) (0 = clean history)")
        cw = self.context_window
        if cw is not None and (isinstance(cw, bool) or not isinstance(cw, int) or cw < 1):
            raise bad("context_window", "null (the model's max_shots) or an int >= 1")
        if self.history not in HISTORY_STRATEGIES:
            raise bad("history", ", ".join(HISTORY_STRATEGIES))
        if not isinstance(self.goldenmem, bool):
            raise bad("goldenmem", "true or false")
        for field, optional in (("history_guidance", False), ("history_guidance_causal", True), ("autoguidance", False)):
            w = getattr(self, field)
            if (w is None and optional) or (not isinstance(w, bool) and isinstance(w, (int, float)) and 0 <= w < math.inf):
                continue
            raise bad(field, ("null (same as history_guidance) or " if optional else "") + "a finite number >= 0 (0 = off)")


@dataclass(frozen=True)
class GenerationEvent:
    """Passed to ``generate(..., callback=)``: ``kind`` is ``"step"`` (after each sampler step of ``shots``) or
    ``"shot"`` (shot ``shots[0]`` is final and written); ``latents`` are the current per-segment latents."""

    kind: str
    shots: tuple[int, ...]
    step: int
    n_steps: int
    latents: list[torch.Tensor] | None = None


@dataclass(frozen=True)
class GenerationPlan:
    """Every resolved setting of one generation, checked before any compute."""

    mode: str
    steps: int
    guidance: float
    seed: int
    solver: str
    shift: float
    t_c: float
    history: str
    goldenmem: bool
    window: int
    policy: str | None
    kv_cache: bool
    frames: tuple[int, ...]
    latent_shapes: tuple[tuple[int, int, int, int], ...]  # per shot (C, T', h, w)
    height: int
    width: int
    history_guidance: float = 0.0
    autoguidance: float = 0.0


@dataclass
class SceneResult:
    """What :meth:`ScenePipeline.generate` returns.

    ``videos[i]``: uint8 ``[T, H, W, 3]`` of shot ``i`` (as saved when a writer is used); ``latents[i]``: the
    sampled latent ``[1, C, T', h, w]`` of a shot generated in this call, ``None`` for a shot taken from disk;
    ``meta``: what goes into ``scene.json``; ``scene``: the ``scene.json`` dict when a writer finalised the run.
    """

    videos: list[np.ndarray]
    latents: list[torch.Tensor | None]
    meta: dict[str, Any]
    generated: list[int]
    reused: list[int]
    scene: dict[str, Any] | None = None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` as a ``torch.device``; :class:`GenerationError` when it is
    not available on this machine."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GenerationError(f"device {device!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerationError(
                f"device {str(device)!r} was asked for, but this machine has no usable CUDA GPU (torch.cuda.is_available() "
                "is False, e.g. no GPU, no driver, or a CPU-only torch build); run with --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GenerationError(
                f"device {str(device)!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0..cuda:{torch.cuda.device_count() - 1}; pick one of those or --device cpu"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise GenerationError(f"device {str(device)!r} (Apple MPS) is not available on this machine; run with --device cpu")
    elif dev.type != "cpu":
        raise GenerationError(f"device {str(device)!r} is not supported for generation; use cpu, cuda, cuda:N or mps")
    return dev


_DTYPE_NAMES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16" | "fp16" | "fp32"`` (or the long names, or a ``torch.dtype``) to a floating ``torch.dtype``;
    ``None`` stays ``None`` (the caller's default). Anything else is a :class:`GenerationError` naming the choices."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in _DTYPE_NAMES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype.lower()]
    raise GenerationError(f"dtype {dtype!r} is unknown; use bf16, fp16 or fp32")


def _state_sha256(modules: list[tuple[str, torch.nn.Module | None]]) -> str:
    h = hashlib.sha256()
    for prefix, module in modules:
        if module is None:
            continue
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _is_context_causal(model: MultiShotMMDiT) -> bool:
    """True when no layer lets a token of an earlier shot attend to a later shot (needed for KV caching)."""
    layout = SequenceLayout.scene(text_lens=[2, 2], video_grids=[(1, 1, 2), (1, 1, 2)], global_text_len=2)
    shot = layout.token_shot
    future = (shot[None, :] > shot[:, None]) & (shot[None, :] >= 0)  # [Lq, Lk]: key in a later shot than the query
    policies = layer_policies(model.config.attn_policy, model.config.depth)
    return all(not bool((dense_mask(layout, pol) & future).any()) for pol in policies)


def shared_causal(scene: MultiShotMMDiT) -> MultiShotMMDiT:
    """A context-causal view of ``scene``: a model whose config is ``scene``'s with ``attn_policy="causal_shots"`` and
    whose parameters and buffers are ``scene``'s own objects (nothing copied; moving or casting one moves both).

    For weights trained with ``train.causal_prob > 0``, which saw context-causal micro-batches beside bidirectional
    ones, so that one model serves joint and causal (KV-cache) generation."""
    cfg = dataclasses.replace(scene.config, attn_policy="causal_shots")
    with torch.device("meta"):
        twin = MultiShotMMDiT(cfg)
    pairs = list(zip(twin.named_modules(), scene.named_modules(), strict=True))
    for (name_t, mod_t), (name_s, mod_s) in pairs:
        if name_t != name_s or type(mod_t) is not type(mod_s):
            raise ValueError(f"cannot share weights: module {name_t!r} ({type(mod_t).__name__}) != {name_s!r} ({type(mod_s).__name__})")
        mod_t._parameters = mod_s._parameters  # the same dicts: the same Parameter objects
        mod_t._buffers = mod_s._buffers
    return twin.train(scene.training)


class ScenePipeline:
    """Scene model (bidirectional), optional context-causal model, autoencoder and text encoder, with defaults.

    ``causal="shared"`` serves causal mode with the scene model's own weights under context-causal attention
    (:func:`shared_causal`), for a scene model trained with ``train.causal_prob > 0``.

    Build with :meth:`from_pretrained` (a pipeline folder, ``"default"`` or ``"debug"``), :meth:`from_model_folders`
    (training exports) or :meth:`debug`; generate with :meth:`generate` or :func:`generate_to_dir`.
    """

    def __init__(
        self, *, scene: MultiShotMMDiT, autoencoder: Autoencoder, text_encoder: Any, causal: MultiShotMMDiT | str | None = None,
        defaults: PipelineDefaults | None = None, global_prompt: bool = True, latent_scale: float = 1.0,
        text_encoder_spec: dict[str, Any] | None = None, autoencoder_spec: dict[str, Any] | None = None,
        name: str = "custom", trained: dict[str, Any] | None = None, expand_characters: bool = False,
        guide: MultiShotMMDiT | None = None,
    ) -> None:
        if not isinstance(scene, MultiShotMMDiT):
            raise ValueError(f"scene must be a MultiShotMMDiT, got {type(scene).__name__}")
        cfg = scene.config
        if autoencoder.latent_channels != cfg.in_channels:
            raise ValueError(
                f"autoencoder latents have {autoencoder.latent_channels} channels but the scene model takes "
                f"in_channels={cfg.in_channels}; pair the model with the autoencoder it was trained on"
            )
        if text_encoder.dim != cfg.text_dim:
            raise ValueError(
                f"text encoder width {text_encoder.dim} != scene model text_dim {cfg.text_dim}; use the text encoder "
                "the model was trained with"
            )
        self.causal_shared = isinstance(causal, str) and causal == "shared"
        if isinstance(causal, str):
            if not self.causal_shared:
                raise ValueError(f"causal={causal!r} is not a model; pass a MultiShotMMDiT, 'shared' or None")
            causal = shared_causal(scene)
        if causal is not None:
            if not isinstance(causal, MultiShotMMDiT):
                raise ValueError(f"causal must be a MultiShotMMDiT, 'shared' or None, got {type(causal).__name__}")
            _check_same_inputs(causal, cfg, "causal model", ("in_channels", "text_dim", "patch_size", "text_len"),
                               "both must be trained with the same encoders and text length")
            if not _is_context_causal(causal):
                raise ValueError(
                    f"the causal model's attention policy {causal.config.attn_policy!r} lets earlier shots attend to "
                    "later ones, so its KV cache would be wrong; train it with attn_policy causal_shots "
                    "(configs/scene-small-causal.yaml)"
                )
        if guide is not None:
            if not isinstance(guide, MultiShotMMDiT):
                raise ValueError(f"guide must be a MultiShotMMDiT or None, got {type(guide).__name__}")
            _check_same_inputs(guide, cfg, "guide model", ("in_channels", "text_dim", "patch_size", "text_len", "max_shots"),
                               "train the guide on the scene model's data, encoders and text length "
                               "(configs/scene-default-guide.yaml)")
        if not latent_scale > 0:
            raise ValueError(f"latent_scale={latent_scale!r} must be > 0")
        self.scene = scene.eval().requires_grad_(False)
        self.causal = causal.eval().requires_grad_(False) if causal is not None else None
        self.guide = guide.eval().requires_grad_(False) if guide is not None else None
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.defaults = defaults or PipelineDefaults()
        self.global_prompt = bool(global_prompt)
        self.expand_characters = bool(expand_characters)
        self.latent_scale = float(latent_scale)
        self.text_encoder_spec = text_encoder_spec or {"name": getattr(text_encoder, "name", "hashing"), "kwargs": {}}
        self.autoencoder_spec = autoencoder_spec
        self.name = name
        self.trained = dict(trained or {})
        self._sha: str | None = None

    # ---------------------------------------------------------------------------------- basics

    @property
    def device(self) -> torch.device:
        """Device of the scene model."""
        return next(self.scene.parameters()).device

    @property
    def text_len(self) -> int:
        """Tokens per prompt segment (the model's ``text_len``)."""
        return int(self.scene.config.text_len)

    @property
    def max_shots(self) -> int:
        """Shots the scene model was trained to see in one pass."""
        return int(self.scene.config.max_shots)

    @property
    def dtype(self) -> torch.dtype:
        """Weight dtype of the scene (and causal) model; the autoencoder always runs in float32."""
        return next(self.scene.parameters()).dtype

    def to(self, device: str | torch.device, dtype: str | torch.dtype | None = None) -> ScenePipeline:
        """Move the models and the autoencoder to ``device`` (checked with :func:`resolve_device`); ``dtype``
        (``bf16``, ``fp16`` or ``fp32``) casts the scene and causal models' weights. Sampling, the latents and the
        autoencoder stay float32: each model call casts its inputs to the weights' dtype and its velocity back.
        bf16 is the usual choice for large models on a GPU; the video differs slightly from float32's, so
        ``scene.json`` records the dtype and the weights hash covers it."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype)
        self.scene.to(dev, dt)
        if self.causal_shared:  # a view of the scene model's parameters: rebuilt on the moved ones
            self.causal = shared_causal(self.scene).eval().requires_grad_(False)
        elif self.causal is not None:
            self.causal.to(dev, dt)
        if self.guide is not None:
            self.guide.to(dev, dt)
        self.autoencoder.to(dev)
        if dt is not None:
            self._sha = None
        return self

    def weights_sha256(self) -> str:
        """sha256 over the weights of the scene model, causal model, autoencoder and guide model, if any (names,
        shapes and bytes)."""
        if self._sha is None:
            causal = None if self.causal_shared else self.causal  # shared: the scene model's weights, hashed once
            parts = [("scene", self.scene), ("causal", causal), ("autoencoder", self.autoencoder)]
            if self.guide is not None:  # pipelines without a guide keep their earlier hash
                parts.append(("guide", self.guide))
            self._sha = _state_sha256(parts)
        return self._sha

    # ---------------------------------------------------------------------------------- construction

    @classmethod
    def debug(cls, seed: int = 0, *, max_shots: int = 3, causal: bool = True, t_c: float = 0.1, steps: int = 3,
              guidance: float = 2.0) -> ScenePipeline:
        """A random-weight debug pipeline for tests: ``debug`` MMDiT (+ a ``causal_shots`` twin), hashing text
        encoder (64-d), exact patch autoencoder ``(1, 2, 2)``. Its videos are noise-like: it checks plumbing only.

        Unlike a freshly initialised model (adaLN-Zero: velocity 0), every weight is random, so outputs depend on
        every input (prompts, history, timesteps).
        """
        gen = torch.Generator().manual_seed(int(seed))
        text_len = 8
        enc_spec = {"name": "hashing", "kwargs": {"dim": 64}}
        ae_spec = {"name": "patch", "kwargs": {"patch": [1, 2, 2]}}
        ae = get_autoencoder("patch", patch=(1, 2, 2))
        cfg = get_model_config("debug", in_channels=ae.latent_channels, text_dim=64, text_len=text_len, max_shots=max_shots)

        def build(config: Any) -> MultiShotMMDiT:
            model = MultiShotMMDiT(config)
            with torch.no_grad():
                for p in model.parameters():
                    if not bool(p.any()):  # zero-initialised (adaLN, head, modality embedding) → small random
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
            return model

        with torch.random.fork_rng(devices=[]):  # the modules' own initialisation draws from the global generator
            torch.manual_seed(int(seed))
            scene = build(cfg)
            causal_model = build(dataclasses.replace(cfg, attn_policy="causal_shots")) if causal else None
        return cls(
            scene=scene, causal=causal_model, autoencoder=ae, text_encoder=get_text_encoder("hashing", dim=64, max_length=text_len),
            defaults=PipelineDefaults(steps=steps, guidance=guidance, t_c=t_c), global_prompt=True, latent_scale=1.0,
            text_encoder_spec=enc_spec, autoencoder_spec=ae_spec, name=f"debug(seed={seed})", trained={"note": "random weights"},
        )

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike[str] = "default", *, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype | None = None) -> ScenePipeline:
        """Load ``"default"`` (``storyreel/weights/default``), ``"debug"`` (:meth:`debug`), a pipeline folder (with
        ``pipeline.json``) or a scene model folder exported by training (``config.json`` with training facts).
        ``dtype`` casts the scene models' weights (:meth:`to`; default: float32)."""
        dev = resolve_device(device)
        dt = resolve_dtype(dtype)
        return cls._from_pretrained(model, dev).to(dev, dt)

    @classmethod
    def _from_pretrained(cls, model: str | os.PathLike[str], dev: torch.device) -> ScenePipeline:
        if str(model) == "debug":
            return cls.debug().to(dev)
        if str(model) == "default":
            folder = DEFAULT_PIPELINE_DIR
            if not (folder / PIPELINE_FILE).is_file():
                raise GenerationError(
                    f"no default model is shipped with this storyreel yet ({folder} holds no {PIPELINE_FILE}). Pass a "
                    "pipeline folder with --model PATH (written by ScenePipeline.save_pretrained, or a scene model folder "
                    "exported by `storyreel train`, e.g. outputs/train/scene-small/model), or --model debug to try the "
                    "plumbing with random weights"
                )
        else:
            folder = Path(model)
        if not folder.is_dir():
            raise GenerationError(
                f"model folder {str(folder)!r} does not exist{' (it is a file)' if folder.exists() else ''}. Pass --model "
                "PATH of a folder holding pipeline.json (written by ScenePipeline.save_pretrained) or a scene model "
                "exported by `storyreel train` (holding config.json and model.safetensors), or --model default"
            )
        if not (folder / PIPELINE_FILE).is_file():
            if (folder / CONFIG_NAME).is_file():
                return cls.from_model_folders(folder, device=dev)
            raise GenerationError(
                f"{folder} is not a pipeline folder: it holds neither {PIPELINE_FILE} nor a model {CONFIG_NAME}. Pass the "
                "folder written by ScenePipeline.save_pretrained or by `storyreel train` (its model/ subfolder)"
            )
        return cls._load_folder(folder, dev)

    @classmethod
    def _load_folder(cls, folder: Path, dev: torch.device) -> ScenePipeline:
        path = folder / PIPELINE_FILE
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GenerationError(f"cannot read {path} ({err}); restore it or write it again with save_pretrained") from err
        if not isinstance(meta, dict) or meta.get("format") != PIPELINE_FORMAT:
            raise GenerationError(f"{path} is not a {PIPELINE_FORMAT} file (format={meta.get('format') if isinstance(meta, dict) else None!r}); "
                                  "write it with ScenePipeline.save_pretrained")
        try:
            scene = MultiShotMMDiT.from_pretrained(folder / str(meta.get("scene", "scene")), device=dev)
            spec = meta.get("causal")
            causal = (spec if spec == "shared" else MultiShotMMDiT.from_pretrained(folder / spec, device=dev)) if spec else None
            guide = MultiShotMMDiT.from_pretrained(folder / str(meta["guide"]), device=dev) if meta.get("guide") else None
            ae = _load_autoencoder(meta.get("autoencoder"), folder, dev)
            text = meta.get("text_encoder") or {}
            encoder = _build_text_encoder(text, scene.config.text_len, dev)
            defaults = PipelineDefaults(**(meta.get("defaults") or {}))
            return cls(scene=scene, causal=causal, autoencoder=ae, text_encoder=encoder, defaults=defaults,
                       global_prompt=bool(meta.get("global_prompt", True)), latent_scale=float(meta.get("latent_scale", 1.0)),
                       text_encoder_spec=text, autoencoder_spec=meta.get("autoencoder"), name=str(meta.get("name", folder)),
                       trained=meta.get("trained") or {}, expand_characters=bool(meta.get("expand_characters", False)),
                       guide=guide)
        except GenerationError:
            raise
        except (CheckpointError, ValueError, TypeError, KeyError) as err:
            raise GenerationError(f"cannot load the pipeline in {folder}: {err}") from err

    @classmethod
    def from_model_folders(
        cls, scene: str | os.PathLike[str], *, causal: str | os.PathLike[str] | None = None,
        defaults: PipelineDefaults | None = None, device: str | torch.device = "cpu", name: str | None = None,
        autoencoder: str | os.PathLike[str] | None = None, guide: str | os.PathLike[str] | None = None,
    ) -> ScenePipeline:
        """Assemble a pipeline from model folders exported by ``storyreel train`` (their ``config.json`` records the
        text encoder, autoencoder, text length, latent scale and global-prompt use under ``_extra``).

        ``causal="shared"`` serves causal mode with the scene model itself (:func:`shared_causal`); it is refused
        unless the scene model was trained with ``train.causal_prob > 0``.

        ``autoencoder`` replaces the recorded autoencoder with a folder whose encoder and latent normalisation are
        the same (a decoder-only fine-tune, ``model.freeze_encoder``); anything else is refused, since the scene
        model would read latents it was not trained on.

        ``guide`` is the folder of a weak model for autoguidance (``PipelineDefaults.autoguidance``), trained on
        the same data, encoders and text length (``configs/scene-default-guide.yaml``)."""
        dev = resolve_device(device)
        folder = Path(scene)
        try:
            extra = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("_extra") or {}
        except (OSError, json.JSONDecodeError) as err:
            raise GenerationError(f"cannot read {folder / CONFIG_NAME} ({err}); pass a model folder written by training") from err
        missing = [k for k in ("text_encoder", "autoencoder") if k not in extra]
        if missing:
            raise GenerationError(
                f"{folder / CONFIG_NAME} does not record {missing} (no training facts under _extra); build the pipeline "
                "in Python with ScenePipeline(scene=..., autoencoder=..., text_encoder=...) and save_pretrained it"
            )
        try:
            model = MultiShotMMDiT.from_pretrained(folder, device=dev)
            if str(causal) == "shared":
                if not float(extra.get("causal_prob") or 0.0) > 0:
                    raise GenerationError(
                        f"{folder} was trained without context-causal batches (train.causal_prob is "
                        f"{extra.get('causal_prob') or 0}), so its attention never saw the causal mask that causal mode "
                        "uses; train it with --set train.causal_prob=0.3, or export a separately tuned causal model "
                        "(--causal FOLDER, configs/scene-default-causal.yaml)")
                causal_model: MultiShotMMDiT | str | None = "shared"
            else:
                causal_model = MultiShotMMDiT.from_pretrained(causal, device=dev) if causal is not None else None
            guide_model = MultiShotMMDiT.from_pretrained(guide, device=dev) if guide is not None else None
            ae_name = str(extra["autoencoder"])
            ae_spec = ({"path": ae_name} if (Path(ae_name) / CONFIG_NAME).is_file()
                       else {"name": ae_name, "kwargs": dict(extra.get("autoencoder_kwargs") or {})})
            ae = _load_autoencoder(ae_spec, Path.cwd(), dev)
            if autoencoder is not None:
                ae, ae_spec = _same_encoder(ae, Path(autoencoder), dev, trained_with=ae_name)
            text = {"name": extra["text_encoder"], "kwargs": dict(extra.get("text_encoder_kwargs") or {})}
            encoder = _build_text_encoder(text, model.config.text_len, dev)
            trained = {k: extra.get(k) for k in ("recipe", "frames", "frame_stride", "init_from", "causal_prob") if k in extra}
            return cls(scene=model, causal=causal_model, autoencoder=ae, text_encoder=encoder, defaults=defaults,
                       global_prompt=bool(extra.get("global_prompt", True)), latent_scale=float(extra.get("latent_scale", 1.0)),
                       text_encoder_spec=text, autoencoder_spec=ae_spec, name=name or str(folder), trained=trained,
                       expand_characters=bool(extra.get("expand_characters", False)), guide=guide_model)
        except GenerationError:
            raise
        except (CheckpointError, ValueError, TypeError) as err:
            raise GenerationError(f"cannot assemble a pipeline from {folder}: {err}") from err

    def model_prompt(self, script: SceneScript, i: int) -> str:
        """Shot ``i``'s prompt as this pipeline's models read it: ``[SHOT CUT]`` marking and, for pipelines trained
        with ``data.expand_characters`` (the shipped default), each named character's description repeated."""
        return script.shot_prompt_text(i, expand_characters=self.expand_characters)

    def save_pretrained(self, directory: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Path:
        """Write ``pipeline.json``, ``scene/``, ``causal/`` (if any and not shared), ``guide/`` (if any) and ``autoencoder/`` (a trained autoencoder;
        a named one such as ``patch`` is recorded by name) into ``directory``; ``dtype`` (e.g. ``torch.float16``)
        stores the weights in that type (the shipped default is saved in fp16 to fit the repository's budget)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.scene.save_pretrained(out / "scene", dtype=dtype)
        if self.causal is not None and not self.causal_shared:
            self.causal.save_pretrained(out / "causal", dtype=dtype)
        if self.guide is not None:
            self.guide.save_pretrained(out / "guide", dtype=dtype)
        if hasattr(self.autoencoder, "save_pretrained"):
            self.autoencoder.save_pretrained(out / "autoencoder", dtype=dtype)
            ae_spec: dict[str, Any] = {"path": "autoencoder"}
        elif self.autoencoder_spec and "name" in self.autoencoder_spec:
            ae_spec = self.autoencoder_spec
        else:
            raise ValueError(f"cannot save autoencoder {type(self.autoencoder).__name__}: it has no save_pretrained and no name; "
                             "pass autoencoder_spec={'name': ..., 'kwargs': ...} to the pipeline")
        meta = {
            "format": PIPELINE_FORMAT, "name": self.name, "scene": "scene",
            "causal": "shared" if self.causal_shared else ("causal" if self.causal is not None else None),
            **({"guide": "guide"} if self.guide is not None else {}),
            "autoencoder": ae_spec, "text_encoder": self.text_encoder_spec, "global_prompt": self.global_prompt,
            "expand_characters": self.expand_characters,
            "latent_scale": self.latent_scale, "defaults": dataclasses.asdict(self.defaults), "trained": self.trained,
        }
        with atomic_write(out / PIPELINE_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2)
            fh.write("\n")
        return out

    # ---------------------------------------------------------------------------------- checks

    def check(
        self, script: SceneScript, *, mode: str | None = None, steps: int | None = None, guidance: float | None = None,
        seed: int | None = None, solver: str | None = None, shift: float | None = None, t_c: float | None = None,
        history: str | None = None, goldenmem: bool | None = None, context_window: int | None = None,
        policy: str | None = None, kv_cache: bool = True, history_guidance: float | None = None,
        autoguidance: float | None = None,
    ) -> GenerationPlan:
        """Resolve and check every setting for ``script`` without computing anything; :class:`GenerationError`
        names the first problem and its fix. Arguments override the script, which overrides the pipeline defaults."""
        from storyreel.pipelines.scene_checks import check_plan

        return check_plan(self, script, mode=mode, steps=steps, guidance=guidance, seed=seed, solver=solver, shift=shift,
                          t_c=t_c, history=history, goldenmem=goldenmem, context_window=context_window, policy=policy,
                          kv_cache=kv_cache, history_guidance=history_guidance, autoguidance=autoguidance)

    # ---------------------------------------------------------------------------------- generation

    def generate(
        self, script: SceneScript | str | os.PathLike[str], *, mode: str | None = None, steps: int | None = None,
        guidance: float | None = None, seed: int | None = None, writer: Any = None, progress: bool = False,
        callback: Callable[[GenerationEvent], None] | None = None, resume: bool = False, overwrite: bool = False,
        solver: str | None = None, shift: float | None = None, t_c: float | None = None, history: str | None = None,
        goldenmem: bool | None = None, context_window: int | None = None, policy: str | None = None,
        kv_cache: bool = True, backend: str = "auto", model_id: str | None = None, history_guidance: float | None = None,
        autoguidance: float | None = None,
    ) -> SceneResult:
        """Generate the shots of ``script``; see ``docs/generation.md``.

        Modes: ``joint`` (all shots together), ``autoregressive`` (shot by shot, earlier shots held at ``t_c``),
        ``causal`` (the context-causal model with a KV cache; ``kv_cache=False`` recomputes the history every step,
        giving the same video), ``extend`` (add shots to a run folder's finished shots). With a ``writer``
        (:class:`~storyreel.outputs.SceneWriter`) each shot is written as soon as it is final and the run is
        finalised; ``resume`` skips shots already finished by the same run. ``history_guidance`` (default: the
        pipeline's) adds history guidance: one more model call per step, with every shot cut off from the others.
        ``autoguidance`` (default: the pipeline's) adds autoguidance with the pipeline's guide model: one call of
        that small model per step (not in ``causal`` mode).
        """
        from storyreel.pipelines.scene_run import SceneRun

        if not isinstance(script, SceneScript):
            script = load_script(script)
        plan = self.check(script, mode=mode, steps=steps, guidance=guidance, seed=seed, solver=solver, shift=shift,
                          t_c=t_c, history=history, goldenmem=goldenmem, context_window=context_window, policy=policy,
                          kv_cache=kv_cache, history_guidance=history_guidance, autoguidance=autoguidance)
        if script.shots and any(s.keyframe is not None or s.layout for s in script.shots):
            warnings.warn("the scene pipeline ignores shots[].keyframe and shots[].layout (the story and long-take "
                          "pipelines use them)", stacklevel=2)
        run = SceneRun(self, script, plan, writer=writer, progress=progress, callback=callback, resume=resume,
                       overwrite=overwrite, backend=backend, model_id=model_id or self.name)
        return run.execute()


def _check_same_inputs(model: MultiShotMMDiT, cfg: Any, role: str, fields: tuple[str, ...], fix: str) -> None:
    """``ValueError`` naming the first of ``fields`` in which ``model``'s config differs from the scene model's ``cfg``."""
    for field in fields:
        if getattr(model.config, field) != getattr(cfg, field):
            raise ValueError(f"{role} {field}={getattr(model.config, field)!r} differs from the scene model's "
                             f"{getattr(cfg, field)!r}; {fix}")


def _build_text_encoder(spec: dict[str, Any], text_len: int, dev: torch.device) -> Any:
    if not isinstance(spec, dict) or "name" not in spec:
        raise GenerationError(f"text_encoder must be {{'name': 'minilm' | 'hashing', 'kwargs': {{...}}}}, got {spec!r}")
    kwargs = {"max_length": text_len, **dict(spec.get("kwargs") or {})}
    if str(spec["name"]).lower() == "minilm":
        kwargs.setdefault("device", dev)
    return get_text_encoder(str(spec["name"]), **kwargs)


def _same_encoder(trained: Any, folder: Path, dev: torch.device, *, trained_with: str) -> tuple[Any, dict[str, Any]]:
    """The autoencoder in ``folder`` if its encoder and latent normalisation equal ``trained``'s, else an error."""
    new = _load_autoencoder({"path": str(folder)}, Path.cwd(), dev)
    old_state, new_state = trained.state_dict(), new.state_dict()
    enc = [k for k in old_state if k.startswith("encoder.")]
    differs = [k for k in enc if k not in new_state or not torch.equal(old_state[k].float(), new_state[k].float())]
    cfg_old, cfg_new = getattr(trained, "config", None), getattr(new, "config", None)
    norm_old = (getattr(cfg_old, "shift_factor", None), getattr(cfg_old, "scaling_factor", None))
    norm_new = (getattr(cfg_new, "shift_factor", None), getattr(cfg_new, "scaling_factor", None))
    if not enc or differs or norm_old != norm_new:
        what = (f"encoder weights differ ({differs[:2]}...)" if differs else
                "it has no encoder to compare" if not enc else f"latent shift/scale differ ({norm_new} vs {norm_old})")
        raise GenerationError(
            f"autoencoder {folder} cannot replace {trained_with}, which the scene model was trained with: {what}. Only "
            "a decoder-only fine-tune (model.freeze_encoder: true, from that autoencoder) keeps the latents the same"
        )
    return new, {"path": str(folder)}


def _load_autoencoder(spec: Any, base: Path, dev: torch.device) -> Autoencoder:
    if isinstance(spec, str):
        spec = {"path": spec} if (base / spec / CONFIG_NAME).is_file() else {"name": spec}
    if not isinstance(spec, dict) or not ({"path", "name"} & set(spec)):
        raise GenerationError(f"autoencoder must be {{'path': FOLDER}} or {{'name': NAME, 'kwargs': {{...}}}}, got {spec!r}")
    if "path" in spec:
        folder = Path(spec["path"])
        folder = folder if folder.is_absolute() else base / folder
        if not (folder / CONFIG_NAME).is_file():
            raise GenerationError(f"autoencoder folder {folder} holds no {CONFIG_NAME}; restore it or train it "
                                  "(`storyreel train vae-small`)")
        return get_autoencoder(folder, device=dev)
    kwargs = dict(spec.get("kwargs") or {})
    if "patch" in kwargs:
        kwargs["patch"] = tuple(kwargs["patch"])
    return get_autoencoder(str(spec["name"]), **kwargs).to(dev)


def generate_to_dir(
    script_path_or_script: SceneScript | str | os.PathLike[str], out_dir: str | os.PathLike[str], *, mode: str | None = None,
    steps: int | None = None, guidance: float | None = None, seed: int | None = None, device: str = "cpu",
    model: str | os.PathLike[str] = "default", resume: bool = False, progress: bool = True, overwrite: bool = False,
    dtype: str | torch.dtype | None = None, **options: Any,
) -> dict[str, Any]:
    """Generate a script into run folder ``out_dir`` (``shots/NN.mp4`` + sidecars, ``scene.mp4``, ``storyboard.png``,
    ``scene.json``); returns the ``scene.json`` dict. ``options`` go to :meth:`ScenePipeline.generate` (solver,
    shift, t_c, history, goldenmem, context_window, policy, kv_cache, backend, history_guidance, autoguidance); ``dtype`` the scene
    models' weights (:meth:`ScenePipeline.to`). Checks the device, the dtype, the script, the model folder and every
    setting before any compute (:class:`GenerationError`, or ``ScriptError`` for the script).
    """
    from storyreel.outputs import SceneWriter

    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    script = script_path_or_script if isinstance(script_path_or_script, SceneScript) else load_script(script_path_or_script)
    pipe = ScenePipeline.from_pretrained(model, device=dev, dtype=dt)
    try:
        writer = SceneWriter(out_dir, fps=script.settings.fps)
    except ValueError as err:
        raise GenerationError(str(err)) from err
    result = pipe.generate(script, mode=mode, steps=steps, guidance=guidance, seed=seed, writer=writer, progress=progress,
                           resume=resume, overwrite=overwrite, model_id=str(model), **options)
    assert result.scene is not None
    return result.scene

