"""Every check a scene generation makes before computing anything (see :meth:`ScenePipeline.check`).

Each problem is raised as one :class:`~storyreel.pipelines.scene.GenerationError` paragraph that names the value,
what is allowed and how to fix it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from storyreel.autoencoders import latent_frames
from storyreel.memory.history import HISTORY_STRATEGIES
from storyreel.nn.masks import layer_policies
from storyreel.script import MAX_SEED, MODES, SceneScript

if TYPE_CHECKING:
    from storyreel.pipelines.scene import GenerationPlan, ScenePipeline

__all__ = ["allowed_frames", "check_plan"]


def _error(message: str) -> Exception:
    from storyreel.pipelines.scene import GenerationError

    return GenerationError(" ".join(message.split()))


def _frames_ok(frames: int, temporal: int, pt: int) -> bool:
    t = latent_frames(frames, temporal)
    return t == 1 or t % pt == 0


def allowed_frames(frames: int, temporal: int, pt: int) -> tuple[int | None, int]:
    """The nearest frame counts below (``None`` if none) and above ``frames`` that an autoencoder with temporal factor
    ``temporal`` and a backbone with temporal patch ``pt`` can serve (``latent_frames`` is 1 or a multiple of ``pt``)."""
    lo = next((f for f in range(frames - 1, 0, -1) if _frames_ok(f, temporal, pt)), None)
    hi = next(f for f in range(frames + 1, frames + temporal * pt + 2) if _frames_ok(f, temporal, pt))
    return lo, hi


def _number(name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False, integer: bool = False) -> Any:
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise _error(f"{name}={value!r} is not {kind}; give {kind} (see `storyreel generate --help`)")
    below = value <= low if low_open else value < low
    if below or value > high:
        rng = f"{'>' if low_open else '>='} {low:g}" + ("" if high == math.inf else f" and <= {high:g}")
        raise _error(f"{name}={value!r} is out of range; allowed: {rng}")
    return value


def check_plan(
    pipe: ScenePipeline, script: SceneScript, *, mode: str | None, steps: int | None, guidance: float | None,
    seed: int | None, solver: str | None, shift: float | None, t_c: float | None, history: str | None,
    goldenmem: bool | None, context_window: int | None, policy: str | None, kv_cache: bool,
    history_guidance: float | None = None, autoguidance: float | None = None,
) -> GenerationPlan:
    """Resolve the settings (argument > script setting the user wrote > pipeline default) and check them."""
    from storyreel.pipelines.scene import SOLVERS, GenerationPlan

    if not isinstance(script, SceneScript):
        raise _error(f"script must be a SceneScript (load it with storyreel.script.load_script), got {type(script).__name__}")
    d, written, n = pipe.defaults, script.settings.model_fields_set, script.n_shots

    # ---- mode
    if mode is None and "mode" in written:
        mode = script.settings.mode
    if mode is None:  # nobody chose: joint when the scene fits one pass, else shot by shot
        mode = "joint" if n <= pipe.max_shots else ("causal" if pipe.causal is not None else "autoregressive")
    if mode not in MODES:
        raise _error(f"mode {mode!r} is unknown; choose one of {', '.join(MODES)} (--mode or settings.mode)")
    if mode == "causal" and pipe.causal is None:
        raise _error(
            f"mode causal needs a context-causal model, but the pipeline {pipe.name!r} has none (no causal/ folder). Use "
            "--mode autoregressive (same history conditioning with the bidirectional model), or a pipeline with a causal "
            "model (train configs/scene-small-causal.yaml and save it as causal/)"
        )
    model = pipe.causal if mode == "causal" else pipe.scene
    assert model is not None
    max_shots = int(model.config.max_shots)

    # ---- numbers
    steps = steps if steps is not None else (script.settings.steps if "steps" in written else d.steps)
    steps = _number("steps", steps, low=1, integer=True)
    guidance = guidance if guidance is not None else (script.settings.guidance if "guidance" in written else d.guidance)
    guidance = float(_number("guidance", guidance, low=0))
    seed = _number("seed", seed if seed is not None else script.settings.seed, low=0, high=MAX_SEED, integer=True)
    solver = solver if solver is not None else d.solver
    if solver not in SOLVERS:
        raise _error(f"solver {solver!r} is unknown; choose {' or '.join(SOLVERS)}")
    shift = float(_number("shift", shift if shift is not None else d.shift, low=0, low_open=True))
    t_c = float(_number("t_c", t_c if t_c is not None else d.t_c, low=0, high=0.999))
    history_guidance = float(_number("history_guidance", history_guidance if history_guidance is not None
                                     else d.history_guidance_for(mode), low=0))
    autoguidance = float(_number("autoguidance", autoguidance if autoguidance is not None else d.autoguidance_for(mode), low=0))
    if autoguidance and mode == "causal":
        raise _error(
            f"autoguidance={autoguidance:g} does not apply to mode causal: the guide model is bidirectional and cannot "
            "share the causal model's KV cache. Use --autoguidance 0 with --mode causal, or --mode autoregressive"
        )
    if autoguidance and pipe.guide is None:
        raise _error(
            f"autoguidance={autoguidance:g} needs a guide model, but the pipeline {pipe.name!r} has none (no guide/ "
            "folder). Use --autoguidance 0, or export the pipeline with --guide FOLDER (a model trained with "
            "configs/scene-default-guide.yaml)"
        )
    history = history if history is not None else d.history
    if history not in HISTORY_STRATEGIES:
        raise _error(f"history strategy {history!r} is unknown; choose one of {', '.join(HISTORY_STRATEGIES)}")
    goldenmem_set = goldenmem
    goldenmem = bool(goldenmem if goldenmem is not None else d.goldenmem)
    window = context_window if context_window is not None else (d.context_window or max_shots)
    window = _number("context_window", window, low=1, integer=True)
    if window > max_shots:
        raise _error(
            f"context_window={window} exceeds the {max_shots} shots the {'causal' if mode == 'causal' else 'scene'} model "
            f"was trained to see in one pass; use a context window of at most {max_shots}"
        )

    # ---- mode-specific limits
    if mode == "joint":
        if n > max_shots:
            raise _error(
                f"mode joint denoises all {n} shots in one pass, but the scene model was trained on at most {max_shots} "
                f"shots per pass. Use --mode autoregressive{' or --mode causal' if pipe.causal is not None else ''} "
                f"(shot by shot, earlier shots as history), or split the script into scenes of <= {max_shots} shots"
            )
        if goldenmem_set:
            raise _error("goldenmem compresses the history of shot-by-shot modes; mode joint has no history. Drop "
                         "goldenmem or use --mode autoregressive / causal")
    if policy is not None:
        if mode == "causal":
            raise _error(f"policy={policy!r} cannot be used in mode causal: the KV cache is only exact under the causal "
                         "model's own context-causal attention; leave the policy unset")
        try:
            layer_policies(policy, model.config.depth)
        except (ValueError, TypeError) as err:
            raise _error(f"policy={policy!r} is not a mask policy: {err}") from None
    if mode != "joint":
        slots = window - 1
        for i in range(1, n):
            shot = script.shots[i]
            required = [] if shot.cut else [i - 1]
            user = [h - 1 for h in shot.history] if shot.history is not None else None
            need = sorted(set((user or []) + required))
            if len(need) > slots:
                parts = ([f"continues shot {i} (cut: false)"] if required else []) + (
                    [f"names history {shot.history}"] if user is not None else [])
                what = " and ".join(parts)
                raise _error(
                    f"shots[{i}] {what}, which needs {len(need)} history shot(s), but the context window of {window} "
                    f"shot(s) leaves {slots} for history. Name fewer shots in shots[{i}].history, or raise "
                    f"context_window (at most {max_shots} for this model)"
                )

    # ---- resolution and frames the autoencoder and the backbone can serve
    ae = pipe.autoencoder
    height, width = script.resolution_hw
    pt, ph, pw = model.config.patch_size
    for side, value, p in (("height", height, ph), ("width", width, pw)):
        factor = ae.spatial_factor * p
        if value % factor:
            lo, hi = value // factor * factor, value // factor * factor + factor
            alt = f"{lo} or {hi}" if lo else f"{hi}"
            raise _error(
                f"settings.resolution: {side} {value} cannot be served: it must be a multiple of {factor} (autoencoder "
                f"downsampling {ae.spatial_factor} x model patch {p}); use {alt}"
            )
    frames = tuple(script.shot_frames(i) for i in range(n))
    bad = [(i, f) for i, f in enumerate(frames) if not _frames_ok(f, ae.temporal_factor, pt)]
    if bad:
        parts = []
        for i, f in bad:
            lo, hi = allowed_frames(f, ae.temporal_factor, pt)
            parts.append(f"shots[{i}] has {f} frames (use {lo} or {hi})" if lo else f"shots[{i}] has {f} frames (use {hi})")
        raise _error(
            f"frame counts the model cannot serve: {'; '.join(parts)}. The autoencoder compresses time by "
            f"{ae.temporal_factor} (latent frames = 1 + ceil((frames - 1) / {ae.temporal_factor})) and the model's temporal "
            f"patch is {pt}, so latent frames must be 1 or a multiple of {pt}; set shots[i].frames or settings.frames"
        )
    shapes = tuple(tuple(int(v) for v in ae.latent_shape(f, height, width)) for f in frames)
    return GenerationPlan(
        mode=mode, steps=int(steps), guidance=guidance, seed=int(seed), solver=solver, shift=shift, t_c=t_c, history=history,
        goldenmem=goldenmem and mode != "joint", window=int(window), policy=policy, kv_cache=bool(kv_cache),
        frames=frames, latent_shapes=shapes, height=height, width=width, history_guidance=history_guidance,  # type: ignore[arg-type]
        autoguidance=autoguidance,
    )
