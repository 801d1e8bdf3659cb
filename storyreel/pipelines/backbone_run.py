"""One backbone generation: settings checks and the joint / shot-by-shot loops on the backbone's own scheduler.

Joint diffusion over all shots, history held at ``t_c`` and context-causal generation with a KV cache after LCT
(Guo et al. 2025, §3.2-3.3); mask policies after Mask²DiT (Qi et al. 2025). The run folder, resume, history pool
and shot bookkeeping are :class:`~storyreel.pipelines.scene_run.SceneRun`'s; what differs is the noise schedule:
the backbone's diffusers scheduler steps the packed latents of the generated shots (all at one timestep), while
history shots sit at ``t_c`` in the backbone's timestep convention (flow: ``1000·t_c``, noised
``(1 - t_c)·x0 + t_c·ε``; DDPM v-prediction: an integer timestep, noised ``√ᾱ·x0 + √(1-ᾱ)·ε``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from storyreel.memory.history import HISTORY_STRATEGIES, HistoryPool
from storyreel.nn.kvcache import KVCache, KVCachePool
from storyreel.nn.layout import Segment, SequenceLayout
from storyreel.nn.masks import layer_policies
from storyreel.pipelines.scene_checks import _number
from storyreel.pipelines.scene_run import _RENOISE_STREAM, SceneRun, _Item, _Visual
from storyreel.sampling.strategies import SegmentFn, pack_segments, unpack_segments
from storyreel.scene_inputs import encode_context
from storyreel.script import MAX_SEED, MODES, SceneScript

if TYPE_CHECKING:
    from storyreel.pipelines.backbone import BackbonePipeline
    from storyreel.pipelines.scene import GenerationEvent, GenerationPlan

__all__ = ["BackboneRun", "backbone_depth", "check_backbone_plan"]

_STEP_STREAM = 0x57E9  # seed stream of a stochastic scheduler's per-step noise (CogVideoX DPM)


def _error(message: str) -> Exception:
    from storyreel.pipelines.scene import GenerationError

    return GenerationError(" ".join(message.split()))


def backbone_depth(backbone: Any) -> int:
    """Transformer layers of an adapter (its diffusers config's ``num_layers``)."""
    cfg = getattr(getattr(backbone, "transformer", None), "config", None)
    depth = getattr(cfg, "num_layers", None) or getattr(backbone, "num_layers", None)
    if not depth:
        raise ValueError(f"cannot tell the depth of {type(backbone).__name__}; it has no transformer.config.num_layers")
    return int(depth)


def _nearest_frames(frames: int, ok: Callable[[int], bool]) -> str:
    lo = next((f for f in range(frames - 1, 0, -1) if ok(f)), None)
    hi = next(f for f in range(frames + 1, frames + 64) if ok(f))
    return f"{lo} or {hi}" if lo else str(hi)


def check_backbone_plan(
    pipe: BackbonePipeline, script: SceneScript, *, mode: str | None, steps: int | None, guidance: float | None,
    seed: int | None, shift: float | None, t_c: float | None, history: str | None, context_window: int | None,
    policy: str | None, kv_cache: bool,
) -> GenerationPlan:
    """Resolve the settings (argument > script setting the user wrote > pipeline default) and check them all."""
    from storyreel.pipelines.scene import GenerationPlan

    if not isinstance(script, SceneScript):
        raise _error(f"script must be a SceneScript (load it with storyreel.script.load_script), got {type(script).__name__}")
    d, written, n = pipe.defaults, script.settings.model_fields_set, script.n_shots
    if mode is None and "mode" in written:
        mode = script.settings.mode
    if mode is None:
        mode = "joint" if n <= pipe.max_shots else "causal"
    if mode not in MODES:
        raise _error(f"mode {mode!r} is unknown; choose one of {', '.join(MODES)} (--mode or settings.mode)")
    steps = _number("steps", steps if steps is not None else (script.settings.steps if "steps" in written else d.steps),
                    low=1, integer=True)
    guidance = float(_number("guidance", guidance if guidance is not None else
                             (script.settings.guidance if "guidance" in written else d.guidance), low=0))
    seed = _number("seed", seed if seed is not None else script.settings.seed, low=0, high=MAX_SEED, integer=True)
    shift = shift if shift is not None else d.shift
    if shift is not None:
        shift = float(_number("shift", shift, low=0, low_open=True))
    scheduler = pipe.make_scheduler(shift)  # GenerationError when a shift is given to a DDPM scheduler
    resolved_shift = float(shift if shift is not None else
                           getattr(scheduler.config, "flow_shift", None) or getattr(scheduler.config, "shift", None) or 1.0)
    t_c = float(_number("t_c", t_c if t_c is not None else d.t_c, low=0, high=0.999))
    history = history if history is not None else d.history
    if history not in HISTORY_STRATEGIES:
        raise _error(f"history strategy {history!r} is unknown; choose one of {', '.join(HISTORY_STRATEGIES)}")
    window = _number("context_window", context_window if context_window is not None else d.context_window, low=1, integer=True)
    if policy is not None:
        if mode == "causal":
            raise _error(f"policy={policy!r} cannot be used in mode causal: the KV cache is only exact under the "
                         "causal_shots policy that causal mode uses; leave the policy unset")
        try:
            layer_policies(policy, backbone_depth(pipe.backbone))
        except (ValueError, TypeError) as err:
            raise _error(f"policy={policy!r} is not a mask policy: {err}") from None
    if mode != "joint":
        for i in range(1, n):
            shot = script.shots[i]
            need = sorted(set(([h - 1 for h in shot.history] if shot.history is not None else []) + ([] if shot.cut else [i - 1])))
            if len(need) > window - 1:
                raise _error(
                    f"shots[{i}] needs {len(need)} history shot(s) (cut: false continues the previous shot; history "
                    f"names {shot.history}), but the context window of {window} shot(s) leaves {window - 1}; raise "
                    "--context-window or name fewer history shots"
                )

    ae = pipe.autoencoder
    height, width = script.resolution_hw
    pt, ph, pw = (int(p) for p in pipe.backbone.patch_size)
    for side, value, p in (("height", height, ph), ("width", width, pw)):
        factor = ae.spatial_factor * p
        if value % factor:
            lo = value // factor * factor
            raise _error(f"settings.resolution: {side} {value} cannot be served by {pipe.kind}: it must be a multiple of "
                         f"{factor} (VAE downsampling {ae.spatial_factor} x patch {p}); use {f'{lo} or ' if lo else ''}{lo + factor}")

    def ok(f: int) -> bool:
        t = 1 + (f - 1) // ae.temporal_factor
        return ae.frames_ok(f) and (t == 1 or t % pt == 0)

    frames = tuple(script.shot_frames(i) for i in range(n))
    bad = [f"shots[{i}] has {f} frames (use {_nearest_frames(f, ok)})" for i, f in enumerate(frames) if not ok(f)]
    if bad:
        raise _error(f"frame counts {pipe.kind}'s VAE cannot serve: {'; '.join(bad)}. Its shots have 1 + "
                     f"{ae.frame_step}·k frames (e.g. {1 + ae.frame_step * 4}); set shots[i].frames or settings.frames")
    shapes = tuple(tuple(int(v) for v in ae.latent_shape(f, height, width)) for f in frames)
    return GenerationPlan(
        mode=mode, steps=int(steps), guidance=guidance, seed=int(seed), solver=type(scheduler).__name__,
        shift=resolved_shift, t_c=t_c, history=history, goldenmem=False, window=int(window), policy=policy,
        kv_cache=bool(kv_cache), frames=frames, latent_shapes=shapes, height=height, width=width,  # type: ignore[arg-type]
    )


class BackboneRun(SceneRun):
    """State of one :meth:`BackbonePipeline.generate` call: SceneRun's bookkeeping, the backbone's scheduler."""

    def __init__(
        self, pipe: BackbonePipeline, script: SceneScript, plan: GenerationPlan, *, writer: Any, progress: bool,
        callback: Callable[[GenerationEvent], None] | None, resume: bool, overwrite: bool, backend: str, model_id: str,
    ) -> None:
        self.pipe, self.script, self.plan = pipe, script, plan  # type: ignore[assignment]
        self.writer, self.progress, self.callback = writer, progress, callback
        self.resume, self.overwrite, self.backend, self.model_id = resume, overwrite, backend, model_id
        self.n = script.n_shots
        self.device = pipe.device
        self.model = pipe.backbone
        self.patch = tuple(int(p) for p in pipe.backbone.patch_size)
        self.text_len = pipe.text_len
        self.pool = HistoryPool(embed=pipe.text_encoder.embed)
        self.videos = [None] * self.n
        self.latents = [None] * self.n
        self.seconds = [None] * self.n
        self.history_used = {}
        self.history_tokens = {}
        self._caches: dict[bool, KVCachePool] = {}  # per CFG branch
        self._bar = None
        self.t_cond = pipe.model_timestep(plan.t_c)  # history timestep in the backbone's convention
        self.cp_group: Any = None  # a process group: forwards without a cache run context-parallel
        self.run_key = self._run_key()

    # ------------------------------------------------------------------------------------ noise levels

    def _renoise(self, z: Tensor, noise: Tensor) -> Tensor:
        """A finished latent moved to ``t_c`` along the backbone's own forward process."""
        t_c = self.plan.t_c
        if t_c == 0.0:
            return z
        if self.pipe.prediction == "flow":
            return (1.0 - t_c) * z + t_c * noise
        abar = float(self.pipe.make_scheduler().alphas_cumprod[int(self.t_cond)])
        return math.sqrt(abar) * z + math.sqrt(1.0 - abar) * noise

    def _history_items(self, shots: list[int]) -> list[_Item]:
        items = []
        for j in shots:
            z = self.pool.entry(j).latent
            noisy = self._renoise(z, self._randn(z.shape, _RENOISE_STREAM, j))
            items.append(_Item(j, self.pipe.model_prompt(self.script, j), (_Visual(self._modality(z), self._grid(z), noisy, (-1,)),)))
        return items

    # ------------------------------------------------------------------------------------ model glue

    def _segment_fn(self, layout: SequenceLayout, context: Tensor | None, *, policy: Any,
                    kv_cache: KVCache | None = None, t_prefix: Tensor | None = None) -> SegmentFn:
        """A :data:`SegmentFn` over the backbone: latents concatenated along time in its dtype, float32 out."""
        dtype = self.pipe.dtype

        def fn(latents: list[Tensor], t_row: Tensor) -> list[Tensor]:
            t = t_row if t_prefix is None else torch.cat([t_prefix.to(t_row), t_row], dim=1)  # [B, n_shots of layout]
            x = torch.cat([z.to(dtype) for z in latents], dim=2)  # [B, C, ΣT_i, h, w]
            ctx = context.to(self.device, dtype) if context is not None else None
            with torch.no_grad():
                if self.cp_group is not None and kv_cache is None:
                    from storyreel.pipelines.context_parallel import context_parallel_forward

                    v = context_parallel_forward(self.model, x, t, ctx, layout, policy=policy, backend=self.backend,
                                                 group=self.cp_group)
                else:
                    v = self.model(x, t, ctx, layout, policy=policy, backend=self.backend, kv_cache=kv_cache)
            return [part.float() for part in torch.split(v, [z.shape[2] for z in latents], dim=2)]

        return fn

    def _sample(self, fn: SegmentFn, cond: Sequence[Tensor], cond_shot: Sequence[int], noise: Sequence[Tensor],
                noise_shot: Sequence[int]) -> list[Tensor]:
        """Step the ``noise`` segments with a fresh scheduler; ``cond`` segments stay at ``t_c`` (given already noised).

        Returns the generated segments ``[B, C, T_i, h, w]`` (float32).
        """
        from diffusers import CogVideoXDPMScheduler

        from storyreel.pipelines.scene import shot_seed

        has_shift = any(k in self.pipe.scheduler_config for k in ("flow_shift", "shift"))
        sched = self.pipe.make_scheduler(self.plan.shift if has_shift else None)
        sched.set_timesteps(self.plan.steps, device=self.device)
        timesteps = sched.timesteps
        shapes = [tuple(z.shape) for z in noise]
        n_state = max([*cond_shot, *noise_shot]) + 1
        gen_cols = torch.tensor(list(noise_shot), dtype=torch.long)
        x = pack_segments(noise) * float(sched.init_noise_sigma)  # [B, C, N]
        dpm = isinstance(sched, CogVideoXDPMScheduler)
        gen = torch.Generator().manual_seed(shot_seed(self.plan.seed, noise_shot[0], stream=_STEP_STREAM))
        old_pred = None
        cb = self._step_callback(tuple(noise_shot))
        for i, tau in enumerate(timesteps):
            t_row = torch.full((x.shape[0], n_state), self.t_cond, dtype=torch.float32, device=self.device)
            t_row[:, gen_cols] = float(tau)  # generated shots at the scheduler's timestep, history at t_c
            x_in = sched.scale_model_input(x, tau)
            out = fn([*cond, *unpack_segments(x_in, shapes)], t_row)
            v = pack_segments(out[len(cond):])  # [B, C, N]
            if dpm:
                prev = timesteps[i - 1] if i > 0 else None
                x, old_pred = sched.step(v, old_pred, tau, prev, x, generator=gen, return_dict=False)
            else:
                x = sched.step(v, tau, x, return_dict=False)[0]
            cb(i + 1, len(timesteps), unpack_segments(x, shapes))
        return unpack_segments(x.float(), shapes)

    # ------------------------------------------------------------------------------------ strategies

    def _joint(self, todo: list[int]) -> None:
        import time

        t0 = time.perf_counter()
        segs, noise = self._global(), []
        for i in range(self.n):
            z = self._noise(i)
            segs += [self._text(i), Segment(self._modality(z), i, self._grid(z))]
            noise.append(z)
        layout = SequenceLayout(segs)
        prompts = [self.pipe.model_prompt(self.script, i) for i in range(self.n)]

        def make(drop: bool) -> SegmentFn:
            return self._segment_fn(layout, self._context(layout, prompts, drop=drop), policy=self.plan.policy)

        out = self._sample(self._guided(make), [], [], noise, list(range(self.n)))
        elapsed = (time.perf_counter() - t0) / max(len(todo), 1)
        for i in todo:
            self._finish(i, out[i], [], elapsed)

    def _sample_full(self, i: int, items: list[_Item], noise: Tensor) -> Tensor:
        segs, hist, hist_shot = self._global(), [], []
        for pos, it in enumerate(items):
            segs += self._item_segments(it, pos)
            hist += [v.latent for v in it.visuals]
            hist_shot += [pos] * len(it.visuals)
        p = len(items)
        segs += [self._text(p), Segment(self._modality(noise), p, self._grid(noise))]
        layout = SequenceLayout(segs)
        prompts = [it.prompt for it in items] + [self.pipe.model_prompt(self.script, i)]
        policy = "causal_shots" if self.plan.mode == "causal" else self.plan.policy

        def make(drop: bool) -> SegmentFn:
            return self._segment_fn(layout, self._context(layout, prompts, drop=drop), policy=policy)

        return self._sample(self._guided(make), hist, hist_shot, [noise], [p])[0]

    def _ensure_cache(self, items: list[_Item], drop: bool) -> KVCache:
        """The cache of one CFG branch holds exactly ``[global] + items`` (longest matching prefix reused)."""
        want = ([("global",)] if self.pipe.global_prompt else []) + [it.key for it in items]
        cache, have = self._caches.setdefault(drop, KVCachePool()).get(want)
        offset = 1 if self.pipe.global_prompt else 0
        dtype = self.pipe.dtype
        for idx in range(len(have), len(want)):
            if want[idx] == ("global",):
                segs, lat, prompt = [self._text(-1)], None, self.script.global_prompt_text()
                t = torch.zeros(1, device=self.device)  # [B]: a global-only layout has no shot columns
            else:
                pos = idx - offset
                it = items[pos]
                segs = self._item_segments(it, pos)
                lat = torch.cat([v.latent.to(dtype) for v in it.visuals], dim=2)  # [1, C, ΣT, h, w]
                prompt = it.prompt
                t = torch.full((1, pos + 1), self.t_cond, device=self.device)
            ctx = encode_context(self.pipe.text_encoder, [["" if drop else prompt]], text_len=self.text_len).to(self.device, dtype)
            with torch.no_grad():
                self.model(lat, t, ctx, cache.full_layout(segs), policy="causal_shots", backend=self.backend,
                           kv_cache=cache, cache_write=True)
            have.append(want[idx])
        return cache

    def _sample_cached(self, i: int, items: list[_Item], noise: Tensor) -> Tensor:
        p = len(items)
        target = [self._text(p), Segment(self._modality(noise), p, self._grid(noise))]
        t_prefix = torch.full((1, p), self.t_cond, device=self.device)
        prompt = self.pipe.model_prompt(self.script, i)

        def make(drop: bool) -> SegmentFn:
            cache = self._ensure_cache(items, drop)
            ctx = encode_context(self.pipe.text_encoder, [["" if drop else prompt]], text_len=self.text_len)
            return self._segment_fn(cache.full_layout(target), ctx, policy="causal_shots", kv_cache=cache, t_prefix=t_prefix)

        # the state holds only the new shot: column 0 of the row, the cached shots' timesteps come from t_prefix
        return self._sample(self._guided(make), [], [], [noise], [0])[0]

    # ------------------------------------------------------------------------------------ outputs

    def _meta(self, reused: list[int], generated: list[int], total_s: float) -> dict[str, Any]:
        meta = super()._meta(reused, generated, total_s)
        meta["generator"] = "storyreel.pipelines.backbone"
        meta["backbone"] = {"kind": self.pipe.kind, "prediction": self.pipe.prediction, "scheduler": self.plan.solver,
                            "dtype": str(self.pipe.dtype).replace("torch.", ""), "text_len": self.text_len,
                            "global_prompt": self.pipe.global_prompt}
        return meta
