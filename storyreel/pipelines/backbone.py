"""Production backbones (Wan 2.x, CogVideoX) behind the scene-pipeline interface.

Scene-level joint diffusion, independent per-shot timesteps, history conditioning at ``t_c`` and context-causal
KV-cached generation after LCT (Guo et al. 2025); shot masks after Mask²DiT (Qi et al. 2025). Each backbone keeps
its own noise schedule: Wan is flow matching (its ``scheduler/`` config, FlowMatch Euler or UniPC, velocity
``ε - x0``, model timesteps ``1000·t``), CogVideoX is DDPM with v-prediction (its DDIM / DPM scheduler, integer
timesteps).

The weights folder is a diffusers repository (``model_index.json``, ``transformer/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``), read from disk only; a missing or incomplete folder is
reported with the files expected before anything is loaded. The sampling loops live in
:mod:`storyreel.pipelines.backbone_run`; see ``docs/backbones.md``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from storyreel.autoencoders import Autoencoder
from storyreel.memory.history import HISTORY_STRATEGIES
from storyreel.pipelines.backbone_weights import (
    _FRAME_STEP,
    _VAE_CLASS,
    BACKBONES,
    BackboneFolderError,
    _check_kind,
    check_weights_dir,
    weights_fingerprint,
)
from storyreel.pipelines.scene import (
    GenerationError, GenerationEvent, GenerationPlan, SceneResult, resolve_device, resolve_dtype,
)
from storyreel.pretrained import CheckpointError
from storyreel.script import SceneScript, load_script
from storyreel.text.base import TextEncoder

__all__ = [
    "BACKBONES",
    "BackboneDefaults",
    "BackboneFolderError",
    "BackbonePipeline",
    "DiffusersVideoVAE",
    "T5StatesEncoder",
    "generate_backbone",
]

# ------------------------------------------------------------------------------------------------ encoders


class T5StatesEncoder(TextEncoder):
    """T5 / UMT5 token states from a local transformers encoder + tokenizer (no downloads).

    ``zero_padding=True`` (Wan): states of padded positions are zeroed, as Wan's pipeline does; ``False``
    (CogVideoX): the encoder runs without a mask and every position (pad tokens too) is fed to the backbone, as
    CogVideoX was trained. ``embed`` mean-pools the real tokens (for relevance history selection).
    """

    name = "t5"

    def __init__(self, encoder: Any, tokenizer: Any, *, max_length: int, zero_padding: bool, cache_size: int = 256) -> None:
        super().__init__(cache_size=cache_size)
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length={max_length!r} must be an int >= 1 (tokens per prompt)")
        self.encoder = encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.zero_padding = bool(zero_padding)
        self.dim = int(encoder.config.d_model)

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str], *, max_length: int, zero_padding: bool, device: torch.device,
                    dtype: torch.dtype) -> T5StatesEncoder:
        """Load ``root/text_encoder`` (its ``architectures`` class from transformers) and ``root/tokenizer``."""
        import transformers

        root = Path(root)
        arch = (json.loads((root / "text_encoder" / "config.json").read_text(encoding="utf-8")).get("architectures")
                or ["T5EncoderModel"])[0]
        model_cls = getattr(transformers, arch, None)
        if model_cls is None:
            raise BackboneFolderError(f"{root / 'text_encoder/config.json'} names architecture {arch!r}, which this "
                                      f"transformers {transformers.__version__} does not have; upgrade transformers")
        tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        encoder = model_cls.from_pretrained(root / "text_encoder", local_files_only=True, dtype=dtype).to(device)
        return cls(encoder, tokenizer, max_length=max_length, zero_padding=zero_padding)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        clean = [re.sub(r"\s+", " ", p).strip() for p in prompts]
        tok = self.tokenizer(clean, padding="max_length", max_length=self.max_length, truncation=True,
                             add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        if self.zero_padding:
            states = self.encoder(ids, attention_mask=mask).last_hidden_state.float()  # [N, L, D]
            states = states * mask[..., None].to(states.dtype)  # padded positions exactly zero
            return states.cpu(), mask.bool().cpu()
        states = self.encoder(ids).last_hidden_state.float()  # [N, L, D], every position fed to the backbone
        return states.cpu(), mask.bool().cpu()

    def _encode_batch(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        states, mask = self._run(prompts)
        if not self.zero_padding:
            mask = torch.ones_like(mask)  # every position is a conditioning token for this backbone
        return states, mask

    def _embed_batch(self, prompts: list[str]) -> Tensor:
        states, mask = self._run(prompts)
        w = mask[..., None].float()
        pooled = (states * w).sum(1) / w.sum(1).clamp_min(1.0)  # [N, D]
        return torch.nn.functional.normalize(pooled, dim=-1)


class DiffusersVideoVAE(Autoencoder):
    """A diffusers video VAE as a storyreel :class:`Autoencoder` with the backbone's latent normalisation.

    Wan: ``(mode(z) - latents_mean) / latents_std``; CogVideoX: ``mode(z) · scaling_factor``. ``encode`` takes
    ``[B, 3, T, H, W]`` in ``[-1, 1]`` and returns float32; ``decode`` returns float32 in ``[-1, 1]``.
    """

    def __init__(self, vae: Any, kind: str) -> None:
        super().__init__()
        _check_kind(kind)
        self.vae, self.kind = vae.eval().requires_grad_(False), kind
        cfg = vae.config
        if kind == "wan":
            self.latent_channels = int(cfg.z_dim)
            self.spatial_factor, self.temporal_factor = int(cfg.scale_factor_spatial), int(cfg.scale_factor_temporal)
            self.register_buffer("mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        else:
            self.latent_channels = int(cfg.latent_channels)
            self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
            self.temporal_factor = int(cfg.temporal_compression_ratio)
            self.scaling = float(cfg.scaling_factor)
        self.frame_step = _FRAME_STEP[kind]

    def frames_ok(self, frames: int) -> bool:
        """Whether a shot of ``frames`` pixel frames round-trips exactly through this VAE (``1 + k·frame_step``)."""
        return frames >= 1 and (frames - 1) % self.frame_step == 0

    def encode(self, video: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``[B, 3, T, H, W]`` in ``[-1, 1]`` → normalised latent ``[B, C, T', H/f, W/f]`` (float32)."""
        self._check_video(video)
        with torch.no_grad():
            dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
            z = (dist.sample(generator) if sample else dist.mode()).float()
        if self.kind == "wan":
            return (z - self.mean.to(z.device)) / self.std.to(z.device)
        return z * self.scaling

    def decode(self, z: Tensor, *, num_frames: int | None = None) -> Tensor:
        """Normalised latent ``[B, C, T', h, w]`` → video ``[B, 3, T, H, W]`` in ``[-1, 1]`` (float32)."""
        keep = self._check_latent(z, num_frames)
        z = z.float()
        z = z * self.std.to(z.device) + self.mean.to(z.device) if self.kind == "wan" else z / self.scaling
        with torch.no_grad():
            x = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        return x[:, :, :keep].clamp(-1.0, 1.0)


# ------------------------------------------------------------------------------------------------ pipeline


@dataclass(frozen=True, kw_only=True)
class BackboneDefaults:
    """Sampling defaults of a backbone pipeline; scripts and arguments override them.

    ``shift`` replaces a flow scheduler's shift (``None``: the scheduler config's); ``context_window`` is the
    most shots one pass sees in the shot-by-shot modes (history + the new shot); ``max_joint_shots`` the most
    shots joint mode takes when the mode is not chosen.
    """

    steps: int = 50
    guidance: float = 5.0
    shift: float | None = None
    t_c: float = 0.0
    history: str = "recency"
    context_window: int = 3
    max_joint_shots: int = 8

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(f"BackboneDefaults.{field}={getattr(self, field)!r} is invalid; allowed: {allowed}")

        for name in ("steps", "context_window", "max_joint_shots"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "an int >= 1")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or not 0 <= self.guidance < float("inf"):
            raise bad("guidance", "a finite number >= 0 (1 = no guidance)")
        if self.shift is not None and (isinstance(self.shift, bool) or not isinstance(self.shift, (int, float)) or not self.shift > 0):
            raise bad("shift", "null (the scheduler's) or a number > 0")
        if isinstance(self.t_c, bool) or not isinstance(self.t_c, (int, float)) or not 0 <= self.t_c < 1:
            raise bad("t_c", "a number in [0, 1) (0 = clean history)")
        if self.history not in HISTORY_STRATEGIES:
            raise bad("history", ", ".join(HISTORY_STRATEGIES))


class BackbonePipeline:
    """A Wan / CogVideoX adapter, its VAE, T5 encoder and scheduler, with :class:`ScenePipeline`'s interface.

    Build with :meth:`from_weights`; :meth:`check` resolves a script's settings without compute and
    :meth:`generate` returns a :class:`~storyreel.pipelines.scene.SceneResult` (modes joint, autoregressive,
    causal with a KV cache, extend). ``scene`` and ``causal`` both name the backbone: causal mode runs it under
    the ``causal_shots`` policy.
    """

    def __init__(
        self, *, kind: str, backbone: Any, autoencoder: DiffusersVideoVAE, text_encoder: TextEncoder,
        scheduler_config: dict[str, Any], defaults: BackboneDefaults | None = None, global_prompt: bool = True,
        name: str | None = None, fingerprint: str | None = None,
    ) -> None:
        _check_kind(kind)
        for attr in ("patch_size", "in_channels", "text_dim", "text_len", "prediction"):
            if not hasattr(backbone, attr):
                raise ValueError(f"backbone {type(backbone).__name__} lacks .{attr}; pass a storyreel scene adapter "
                                 "(storyreel.models.adapters.load_backbone)")
        if backbone.prediction not in ("flow", "v"):
            raise ValueError(f"backbone.prediction={backbone.prediction!r}; allowed: 'flow' or 'v'")
        if autoencoder.latent_channels != backbone.in_channels:
            raise ValueError(f"the VAE gives {autoencoder.latent_channels}-channel latents but the backbone takes "
                             f"in_channels={backbone.in_channels}; use the VAE of the same weights folder")
        if text_encoder.dim != backbone.text_dim:
            raise ValueError(f"text encoder width {text_encoder.dim} != backbone text_dim {backbone.text_dim}; use the "
                             "text encoder of the same weights folder")
        pred = str(scheduler_config.get("prediction_type", "flow_prediction" if "FlowMatch" in str(scheduler_config.get("_class_name")) else ""))
        want = "flow_prediction" if backbone.prediction == "flow" else "v_prediction"
        if pred != want:
            raise ValueError(f"the scheduler config predicts {pred!r} but the backbone is trained for {want!r}; use the "
                             "scheduler/ folder of the same weights")
        self.kind = kind
        self.backbone = backbone.eval().requires_grad_(False)
        self.autoencoder = autoencoder
        self.text_encoder = text_encoder
        self.scheduler_config = dict(scheduler_config)
        self.defaults = defaults or BackboneDefaults(guidance=6.0 if kind == "cogvideox" else 5.0)
        self.global_prompt = bool(global_prompt)
        self.latent_scale = 1.0  # the VAE wrapper normalises latents itself
        self.name = name or kind
        self._fingerprint = fingerprint

    # ------------------------------------------------------------------------------------------ basics

    @property
    def scene(self) -> Any:
        """The backbone (joint / autoregressive modes)."""
        return self.backbone

    @property
    def causal(self) -> Any:
        """The backbone again: causal mode runs it under ``causal_shots`` with a KV cache."""
        return self.backbone

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def text_len(self) -> int:
        """Tokens per prompt segment (the text encoder's ``max_length``)."""
        return int(self.text_encoder.max_length)

    @property
    def max_shots(self) -> int:
        """Shots joint mode takes when the mode is not chosen (memory, not training, sets it for backbones)."""
        return int(self.defaults.max_joint_shots)

    @property
    def prediction(self) -> str:
        return str(self.backbone.prediction)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    def model_prompt(self, script: SceneScript, i: int) -> str:
        """Shot ``i``'s prompt as the backbone reads it (``[SHOT CUT]`` marking; no character expansion)."""
        return script.shot_prompt_text(i)

    def weights_sha256(self) -> str:
        """Identity of the weights: sha256 over the weight files' names, sizes and first/last MiB (fast for
        multi-GB folders), or over the backbone's parameters when it was not loaded from a folder."""
        if self._fingerprint is None:
            from storyreel.pipelines.scene import _state_sha256

            self._fingerprint = _state_sha256([("backbone", self.backbone), ("vae", self.autoencoder)])
        return self._fingerprint

    def make_scheduler(self, shift: float | None = None) -> Any:
        """A fresh scheduler from the folder's config (its class from diffusers), ``shift`` replacing a flow shift."""
        import diffusers

        cfg = dict(self.scheduler_config)
        cls = getattr(diffusers, str(cfg.get("_class_name")), None)
        if cls is None:
            raise GenerationError(f"scheduler class {cfg.get('_class_name')!r} is not in diffusers {diffusers.__version__}; "
                                  "upgrade diffusers or fix scheduler/scheduler_config.json")
        if shift is not None:
            key = next((k for k in ("flow_shift", "shift") if k in cfg), None)
            if key is None:
                raise GenerationError(f"shift={shift} applies to flow-matching schedulers; {cls.__name__} has none. Drop shift")
            if float(cfg[key]) != float(shift):
                cfg[key] = float(shift)
                if key == "shift":
                    cfg["use_dynamic_shifting"] = False
        return cls.from_config(cfg)

    def model_timestep(self, t: float) -> float:
        """A noise level ``t ∈ [0, 1)`` in the backbone's timestep convention (flow ``1000·t``; DDPM an integer)."""
        n = self.num_train_timesteps
        return float(t * n) if self.prediction == "flow" else float(min(n - 1, round(t * (n - 1))))

    # ------------------------------------------------------------------------------------------ construction

    @classmethod
    def from_weights(
        cls, kind: str, weights_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None, finetuned: str | os.PathLike[str] | None = None,
        text_len: int | None = None, global_prompt: bool = True, defaults: BackboneDefaults | None = None,
    ) -> BackbonePipeline:
        """Load a ``kind`` (``"wan"`` / ``"cogvideox"``) diffusers weights folder from disk.

        ``dtype`` of the transformer and text encoder (default bfloat16 on CUDA, float32 elsewhere; the VAE stays
        float32); ``finetuned``: a model folder exported by ``storyreel train wan-lora`` / ``cogvideox-lora`` (LoRA or
        full weights); ``text_len``: tokens per prompt (default the backbone's, e.g. 512 for Wan, 226 for CogVideoX).
        The folder is checked before anything is loaded (:class:`BackboneFolderError` lists the files).
        """
        dev = resolve_device(device)
        files = check_weights_dir(kind, weights_dir)
        extra_files: list[Path] = []
        if finetuned is not None:
            from storyreel.train.backbone_task import check_finetuned_folder

            extra_files = check_finetuned_folder(finetuned, kind=kind)
        dtype = resolve_dtype(dtype)
        if dtype is None:
            dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        root = Path(weights_dir)
        import diffusers

        from storyreel.models.adapters import load_backbone

        try:
            backbone = load_backbone(kind, root / "transformer", dtype=dtype, device=dev)
        except (OSError, ValueError, CheckpointError) as err:
            raise BackboneFolderError(f"cannot load {root / 'transformer'}: {err}") from err
        trained: dict[str, Any] = {}
        if finetuned is not None:
            from storyreel.train.backbone_task import load_finetuned

            trained = load_finetuned(backbone, finetuned)
        vae = DiffusersVideoVAE(getattr(diffusers, _VAE_CLASS[kind]).from_pretrained(root / "vae", local_files_only=True,
                                                                                    torch_dtype=torch.float32), kind).to(dev)
        length = int(text_len or trained.get("text_len") or backbone.text_len)
        encoder = T5StatesEncoder.from_folder(root, max_length=length, zero_padding=kind == "wan", device=dev, dtype=dtype)
        sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        try:
            return cls(kind=kind, backbone=backbone, autoencoder=vae, text_encoder=encoder, scheduler_config=sched,
                       defaults=defaults, global_prompt=bool(trained.get("global_prompt", global_prompt)),
                       name=f"{kind}:{root.name}" + (f"+{Path(finetuned).name}" if finetuned else ""),
                       fingerprint=weights_fingerprint(files, extra_files))
        except ValueError as err:
            raise BackboneFolderError(f"{root}: {err}") from err

    # ------------------------------------------------------------------------------------------ check / generate

    def check(
        self, script: SceneScript, *, mode: str | None = None, steps: int | None = None, guidance: float | None = None,
        seed: int | None = None, shift: float | None = None, t_c: float | None = None, history: str | None = None,
        context_window: int | None = None, policy: str | None = None, kv_cache: bool = True,
    ) -> GenerationPlan:
        """Resolve and check every setting for ``script`` without computing anything (:class:`GenerationError`)."""
        from storyreel.pipelines.backbone_run import check_backbone_plan

        return check_backbone_plan(self, script, mode=mode, steps=steps, guidance=guidance, seed=seed, shift=shift,
                                   t_c=t_c, history=history, context_window=context_window, policy=policy,
                                   kv_cache=kv_cache)

    def generate(
        self, script: SceneScript | str | os.PathLike[str], *, mode: str | None = None, steps: int | None = None,
        guidance: float | None = None, seed: int | None = None, writer: Any = None, progress: bool = False,
        callback: Callable[[GenerationEvent], None] | None = None, resume: bool = False, overwrite: bool = False,
        shift: float | None = None, t_c: float | None = None, history: str | None = None,
        context_window: int | None = None, policy: str | None = None, kv_cache: bool = True, backend: str = "auto",
        model_id: str | None = None, context_parallel: Any = None,
    ) -> SceneResult:
        """Generate the shots of ``script`` (see :meth:`ScenePipeline.generate`; same result and run folder).

        Modes: ``joint`` (all shots denoised together under ``policy``), ``autoregressive`` (shot by shot, chosen
        history shots held at ``t_c``), ``causal`` (shot by shot under ``causal_shots`` with a KV cache of the
        history; ``kv_cache=False`` recomputes it each step), ``extend``. Each shot's noise comes from
        ``shot_seed(seed, i)``, so a shot does not change when others are added.

        ``context_parallel`` (joint mode): ``True`` / a process group splits every forward's video tokens over the
        ranks of a ``torchrun`` job (:mod:`storyreel.pipelines.context_parallel`); every rank runs this call with the
        same arguments and gets the same result.
        """
        from storyreel.pipelines.backbone_run import BackboneRun

        if not isinstance(script, SceneScript):
            script = load_script(script)
        plan = self.check(script, mode=mode, steps=steps, guidance=guidance, seed=seed, shift=shift, t_c=t_c,
                          history=history, context_window=context_window, policy=policy, kv_cache=kv_cache)
        if any(s.keyframe is not None or s.layout for s in script.shots):
            warnings.warn("the backbone pipeline ignores shots[].keyframe and shots[].layout", stacklevel=2)
        group = _cp_group(context_parallel)
        if group is not None and plan.mode != "joint":
            raise GenerationError(f"context parallelism splits the long sequence of joint mode; mode {plan.mode} "
                                  "generates one shot per pass. Use --mode joint or drop --context-parallel")
        run = BackboneRun(self, script, plan, writer=writer, progress=progress, callback=callback, resume=resume,
                          overwrite=overwrite, backend=backend, model_id=model_id or self.name)
        run.cp_group = group
        return run.execute()


def _cp_group(value: Any) -> Any:
    """``None`` / ``False``: off; ``True``: the default process group (>= 2 ranks); else a process group."""
    if value is None or value is False:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise GenerationError("context_parallel needs torch.distributed: launch with `torchrun --nproc-per-node N "
                              "--no-python storyreel generate ... --context-parallel` (or init_process_group first)")
    group = dist.group.WORLD if value is True else value
    if dist.get_world_size(group) < 2:
        raise GenerationError("context_parallel needs at least 2 processes; run under torchrun --nproc-per-node N >= 2")
    return group


def generate_backbone(
    script: SceneScript | str | os.PathLike[str], out: str | os.PathLike[str], *, backbone: str,
    weights: str | os.PathLike[str], mode: str | None = None, steps: int | None = None, guidance: float | None = None,
    seed: int | None = None, device: str = "cpu", dtype: str | None = None, finetuned: str | os.PathLike[str] | None = None,
    resume: bool = False, overwrite: bool = False, progress: bool = True, context_parallel: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """``storyreel generate SCRIPT -o OUT --backbone wan|cogvideox --weights DIR``: generate into run folder ``out``.

    Returns the ``scene.json`` dict. ``options`` go to :meth:`BackbonePipeline.generate` (shift, t_c, history,
    context_window, policy, kv_cache, backend). The device, script, weights folder and every setting are checked
    before any weights are loaded where possible (:class:`GenerationError`; ``ScriptError`` for the script).

    ``context_parallel``: under ``torchrun`` (``WORLD_SIZE >= 2``) joint mode splits each forward over the ranks
    (one GPU each, ``cuda:LOCAL_RANK`` when ``device`` is ``cuda``); rank 0 writes the run folder and returns
    ``scene.json``, the other ranks return the run's meta.
    """
    from storyreel.outputs import SceneWriter

    parsed = script if isinstance(script, SceneScript) else load_script(script)
    check_weights_dir(backbone, weights)
    rank = 0
    if context_parallel:
        device, rank = _init_distributed(device)
    dev = resolve_device(device)
    pipe = BackbonePipeline.from_weights(backbone, weights, device=dev, dtype=dtype, finetuned=finetuned)
    writer = None
    if rank == 0:
        try:
            writer = SceneWriter(out, fps=parsed.settings.fps)
        except ValueError as err:
            raise GenerationError(str(err)) from err
    result = pipe.generate(parsed, mode=mode, steps=steps, guidance=guidance, seed=seed, writer=writer,
                           progress=progress and rank == 0, resume=resume, overwrite=overwrite,
                           model_id=f"{backbone}:{weights}", context_parallel=bool(context_parallel), **options)
    return result.scene if result.scene is not None else result.meta


def _init_distributed(device: str) -> tuple[str, int]:
    """Join the ``torchrun`` job (NCCL on CUDA, else gloo); returns (this rank's device, rank)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2 and not dist.is_initialized():
        raise GenerationError("--context-parallel needs several processes: launch with `torchrun --nproc-per-node N "
                              "--no-python storyreel generate ... --context-parallel` (N >= 2 GPUs)")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if str(device).startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if str(device).startswith("cuda") else "gloo")
    return device, dist.get_rank()
