"""One scene generation: the joint / autoregressive / causal-KV loops, history, outputs and resume.

Joint diffusion over all shots, autoregressive history conditioning at ``t_c`` and context-causal generation with
a KV cache after LCT (Guo et al. 2025, §3.2-3.3); scene extension with Mask²DiT (Qi et al. 2025); GoldenMem
history compression and relevance retrieval after Captain Cinema (Xiao et al. 2025).

History is always what the user sees: a finished shot is decoded, written (when there is a writer), read back and
re-encoded, and that latent conditions later shots. A resumed or extended run re-encodes the saved videos the
same way, so resuming gives exactly the video an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from storyreel.memory.goldenmem import goldenmem_compress
from storyreel.memory.history import HistoryPool
from storyreel.nn.embeddings import patch_grid
from storyreel.nn.kvcache import KVCache, KVCachePool
from storyreel.nn.layout import Modality, Segment, SequenceLayout
from storyreel.sampling.strategies import (
    SegmentFn,
    guided_segment_fn,
    history_guided_segment_fn,
    mmdit_segment_fn,
    renoise,
    sample_autoregressive,
    sample_causal_kv,
    sample_joint,
    write_kv_cache,
)
from storyreel.scene_inputs import decode_frames, encode_context, encode_frames, segment_prompts

if TYPE_CHECKING:
    from storyreel.pipelines.scene import GenerationEvent, GenerationPlan, ScenePipeline, SceneResult
    from storyreel.script import SceneScript

__all__ = ["SceneRun"]

_ISOLATED = "isolated_shots"  # the mask of history guidance's "alone" branch: no path from one shot to another
_RENOISE_STREAM = 0x7E40  # seed stream of the noise that moves history to t_c


@dataclass(frozen=True)
class _Visual:
    """One visual segment of a history shot: modality, token grid, latent at ``t_c`` and an identity for caching."""

    modality: Modality
    grid: tuple[int, int, int]
    latent: Tensor
    key: tuple[int, ...]


@dataclass(frozen=True)
class _Item:
    """A history shot as the model sees it: its shot index, prompt and visual segments."""

    shot: int
    prompt: str
    visuals: tuple[_Visual, ...]

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.shot, tuple(v.key for v in self.visuals))


def _error(message: str) -> Exception:
    from storyreel.pipelines.scene import GenerationError

    return GenerationError(" ".join(message.split()))


class SceneRun:
    """State of one :meth:`ScenePipeline.generate` call (built by it; use that method)."""

    def __init__(
        self, pipe: ScenePipeline, script: SceneScript, plan: GenerationPlan, *, writer: Any, progress: bool,
        callback: Callable[[GenerationEvent], None] | None, resume: bool, overwrite: bool, backend: str, model_id: str,
    ) -> None:
        self.pipe, self.script, self.plan = pipe, script, plan
        self.writer, self.progress, self.callback = writer, progress, callback
        self.resume, self.overwrite, self.backend, self.model_id = resume, overwrite, backend, model_id
        self.n = script.n_shots
        self.device = pipe.device
        self.model = pipe.causal if plan.mode == "causal" else pipe.scene
        assert self.model is not None
        self.patch = tuple(self.model.config.patch_size)
        self.text_len = pipe.text_len
        self.pool = HistoryPool(embed=pipe.text_encoder.embed)
        self.videos: list[np.ndarray | None] = [None] * self.n
        self.latents: list[Tensor | None] = [None] * self.n
        self.seconds: list[float | None] = [None] * self.n
        self.history_used: dict[int, list[int]] = {}
        self.history_tokens: dict[int, int] = {}
        self._caches: dict[bool, KVCachePool] = {}  # per CFG branch
        self._bar: Any = None
        self.run_key = self._run_key()

    # ------------------------------------------------------------------------------------ identity

    def resolved_script(self) -> dict[str, Any]:
        """The script with the settings this run actually uses (JSON-able)."""
        data = self.script.model_dump(by_alias=True, mode="json")
        p = self.plan
        data["settings"].update(mode=p.mode, steps=p.steps, guidance=p.guidance, seed=p.seed)
        return data

    def _run_key(self) -> str:
        p = self.plan
        payload = {
            "script": self.resolved_script(), "solver": p.solver, "shift": p.shift, "t_c": p.t_c, "history": p.history,
            "goldenmem": p.goldenmem, "window": p.window, "policy": p.policy, "model": self.pipe.weights_sha256(),
            **({"history_guidance": p.history_guidance} if p.history_guidance else {}),  # older run keys stay valid
            **({"autoguidance": p.autoguidance} if p.autoguidance else {}),
            "global_prompt": self.pipe.global_prompt, "latent_scale": self.pipe.latent_scale,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    # ------------------------------------------------------------------------------------ folder state

    def _finished_before(self) -> list[int]:
        """Shots to take from the run folder (checked before any compute)."""
        w, mode = self.writer, self.plan.mode
        if w is None:
            if self.resume:
                raise _error("resume=True needs the run folder of the interrupted run; pass writer=SceneWriter(OUT) "
                             "(the CLI: -o OUT --resume)")
            if mode == "extend":
                raise _error("mode extend adds shots to a scene generated before, from its run folder; pass "
                             "writer=SceneWriter(OUT) for that folder (the CLI: -o OUT)")
            return []
        found = w.finished_shots()
        where = str(w.out_dir)
        if mode == "extend":
            if not found:
                raise _error(
                    f"mode extend adds shots to a scene generated before, but {where} holds no finished shots. Generate "
                    "the first shots there (e.g. --mode autoregressive), or point -o at the earlier run folder"
                )
            beyond = [i + 1 for i in found if i >= self.n]
            if beyond:
                raise _error(
                    f"{where} holds shots {beyond}, but the script has only {self.n} shots; an extended script lists the "
                    "earlier shots first and then the new ones"
                )
            for i in found:
                rec = w.shot_record(i) or {}
                if (rec.get("width"), rec.get("height")) != (self.plan.width, self.plan.height):
                    raise _error(
                        f"shot {i + 1} in {where} is {rec.get('width')}x{rec.get('height')} but the script asks for "
                        f"{self.plan.width}x{self.plan.height}; set settings.resolution to [{rec.get('width')}, "
                        f"{rec.get('height')}] to extend this scene"
                    )
            return found
        if not found or self.overwrite:
            return []
        if not self.resume:
            raise _error(
                f"{where} already holds finished shots {[i + 1 for i in found]} of a scene. Pass --resume to continue "
                "that run, --mode extend to add shots after them, --overwrite to generate everything again, or choose "
                "a new output folder"
            )
        other = [i + 1 for i in found if ((w.shot_record(i) or {}).get("meta") or {}).get("run") != self.run_key]
        if other:
            raise _error(
                f"shots {other} in {where} were made by a different run (another script, seed, setting or model), so "
                "--resume cannot continue it. Use --mode extend to keep the saved shots as history, --overwrite to "
                "start again, or a new output folder"
            )
        return found

    # ------------------------------------------------------------------------------------ main

    def execute(self) -> SceneResult:
        from storyreel.pipelines.scene import SceneResult

        finished = self._finished_before()
        t_start = time.perf_counter()
        for i in finished:
            frames = self.writer.read_shot(i)
            self.videos[i] = frames
            if self.plan.mode != "joint":
                self.pool.add(i, prompt=self.script.shots[i].prompt, latent=self._encode(frames))
        todo = [i for i in range(self.n) if i not in finished]
        total = self.plan.steps * ((1 if todo else 0) if self.plan.mode == "joint" else len(todo))
        if self.progress and total:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="generating", unit="step", leave=False)
        try:
            if self.plan.mode == "joint":
                if todo:
                    self._joint(todo)
            else:
                for i in todo:
                    self._one_shot(i)
        finally:
            if self._bar is not None:
                self._bar.close()
        meta = self._meta(finished, todo, time.perf_counter() - t_start)
        scene = None
        if self.writer is not None:
            scene = self.writer.finalize(prompts=[s.prompt for s in self.script.shots], meta=meta)
        videos = [v for v in self.videos if v is not None]
        assert len(videos) == self.n
        return SceneResult(videos=videos, latents=self.latents, meta=meta, generated=todo, reused=finished, scene=scene)

    # ------------------------------------------------------------------------------------ pieces

    def _randn(self, shape: Sequence[int], stream: int, *key: int) -> Tensor:
        """Standard normal noise drawn on the CPU from its own seed (so it is the same on every device)."""
        from storyreel.pipelines.scene import shot_seed

        gen = torch.Generator().manual_seed(shot_seed(self.plan.seed, key[0], stream=stream, extra=key[1:]))
        return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(self.device)

    def _noise(self, i: int) -> Tensor:
        """Initial noise of shot ``i`` ``[1, C, T', h, w]``: a function of (seed, i) only."""
        from storyreel.pipelines.scene import SHOT_STREAM

        return self._randn((1, *self.plan.latent_shapes[i]), SHOT_STREAM, i)

    def _grid(self, latent: Tensor) -> tuple[int, int, int]:
        return patch_grid(tuple(latent.shape[2:]), self.patch, what="latent")  # type: ignore[arg-type]

    @staticmethod
    def _modality(latent: Tensor) -> Modality:
        return Modality.IMAGE if latent.shape[2] == 1 else Modality.VIDEO  # one-frame shots are images, as in training

    def _encode(self, frames: np.ndarray) -> Tensor:
        """uint8 ``[T, H, W, 3]`` → latent ``[1, C, T', h, w]`` on the pipeline device."""
        return encode_frames(self.pipe.autoencoder, frames, latent_scale=self.pipe.latent_scale, device=self.device)

    def _decode(self, latent: Tensor, frames: int) -> np.ndarray:
        return decode_frames(self.pipe.autoencoder, latent, frames, latent_scale=self.pipe.latent_scale)

    def _context(self, layout: SequenceLayout, shot_prompts: list[str], *, drop: bool, segments: Sequence[int] | None = None) -> Tensor:
        prompts = segment_prompts(layout, global_prompt=self.script.global_prompt_text(), shot_prompts=shot_prompts,
                                  drop=drop, segments=segments)
        return encode_context(self.pipe.text_encoder, [prompts], text_len=self.text_len).to(self.device)  # [1, S·L, D]

    def _text(self, shot: int) -> Segment:
        return Segment(Modality.TEXT, shot, (self.text_len, 1, 1))

    def _global(self) -> list[Segment]:
        return [self._text(-1)] if self.pipe.global_prompt else []

    def _guided(self, make: Callable[..., SegmentFn]) -> SegmentFn:
        """Text guidance ``u + g·(c − u)``, plus history guidance ``h·(c − c_alone)`` when ``plan.history_guidance``
        is set: ``c_alone`` is the prompted model with every shot cut off from the other shots (``isolated_shots``);
        plus autoguidance ``w·(c − c_guide)`` when ``plan.autoguidance`` is set: ``c_guide`` is the pipeline's weak
        guide model given the same inputs as ``c``."""
        g, h, w = self.plan.guidance, self.plan.history_guidance, self.plan.autoguidance
        if not h and not w:
            return make(False) if g == 1.0 else guided_segment_fn(make(False), make(True), g)
        return history_guided_segment_fn(
            make(False), None if g == 1.0 else make(True), make(False, isolate=True) if h else None, g, h,
            weak=make(False, model=self.pipe.guide) if w else None, weak_scale=w)

    def _step_callback(self, shots: tuple[int, ...]) -> Callable[[int, int, list[Tensor]], None]:
        from storyreel.pipelines.scene import GenerationEvent

        def cb(step: int, n_steps: int, latents: list[Tensor]) -> None:
            if self._bar is not None:
                self._bar.set_description(f"shot {'+'.join(str(s + 1) for s in shots)}/{self.n}")
                self._bar.update(1)
            if self.callback is not None:
                self.callback(GenerationEvent("step", shots, step, n_steps, latents))

        return cb

    # ------------------------------------------------------------------------------------ joint

    def _joint(self, todo: list[int]) -> None:
        t0 = time.perf_counter()
        segs, noise = self._global(), []
        for i in range(self.n):
            z = self._noise(i)
            segs += [self._text(i), Segment(self._modality(z), i, self._grid(z))]
            noise.append(z)
        layout = SequenceLayout(segs)
        prompts = [self.pipe.model_prompt(self.script, i) for i in range(self.n)]

        def make(drop: bool, isolate: bool = False, model: Any = None) -> SegmentFn:
            ctx = self._context(layout, prompts, drop=drop)
            return mmdit_segment_fn(self.model if model is None else model, layout, ctx, policy=_ISOLATED if isolate else self.plan.policy,
                                    backend=self.backend)

        out = sample_joint(self._guided(make), noise, list(range(self.n)), steps=self.plan.steps, shift=self.plan.shift,
                           solver=self.plan.solver, callback=self._step_callback(tuple(range(self.n))))  # type: ignore[arg-type]
        elapsed = (time.perf_counter() - t0) / max(len(todo), 1)
        for i in todo:
            self._finish(i, out[i], [], elapsed)

    # ------------------------------------------------------------------------------------ shot by shot

    def _one_shot(self, i: int) -> None:
        t0 = time.perf_counter()
        shot = self.script.shots[i]
        required = [] if shot.cut else [i - 1]
        user = [h - 1 for h in shot.history] if shot.history is not None else None
        chosen = self.pool.select(i, prompt=shot.prompt, k=self.plan.window - 1, strategy=self.plan.history,
                                  required=required, user=user)
        items = self._history_items(chosen)
        self.history_tokens[i] = sum(v.grid[0] * v.grid[1] * v.grid[2] for it in items for v in it.visuals)
        noise = self._noise(i)
        if self.plan.mode == "causal" and self.plan.kv_cache:
            latent = self._sample_cached(i, items, noise)
        else:
            latent = self._sample_full(i, items, noise)
        self._finish(i, latent, [it.shot for it in items], time.perf_counter() - t0)

    def _history_items(self, shots: list[int]) -> list[_Item]:
        """History shots at ``t_c`` as visual segments: whole latents, or GoldenMem frames (oldest first)."""
        t_c, items = self.plan.t_c, []
        if not self.plan.goldenmem:
            for j in shots:
                z = self.pool.entry(j).latent
                noisy = renoise(z, self._randn(z.shape, _RENOISE_STREAM, j), t_c) if t_c else z
                vis = _Visual(self._modality(z), self._grid(z), noisy, (-1,))
                items.append(_Item(j, self.pipe.model_prompt(self.script, j), (vis,)))
            return items
        kept = goldenmem_compress([self.pool.entry(j).latent for j in shots], patch=self.patch[1:])  # type: ignore[arg-type]
        for pos, j in enumerate(shots):
            visuals = []
            for fr in (f for f in kept if f.item == pos):
                hk, wk = fr.grid
                noisy = renoise(fr.latent, self._randn(fr.latent.shape, _RENOISE_STREAM, j, fr.frame + 1, hk, wk), t_c) if t_c else fr.latent
                visuals.append(_Visual(Modality.IMAGE, (1, hk, wk), noisy, (fr.frame, hk, wk)))
            if visuals:
                items.append(_Item(j, self.pipe.model_prompt(self.script, j), tuple(visuals)))
        return items

    def _item_segments(self, item: _Item, pos: int) -> list[Segment]:
        return [self._text(pos)] + [Segment(v.modality, pos, v.grid) for v in item.visuals]

    def _sample_full(self, i: int, items: list[_Item], noise: Tensor) -> Tensor:
        """History + target in one layout every step (autoregressive; causal without the KV cache)."""
        segs, hist, hist_shot = self._global(), [], []
        for pos, it in enumerate(items):
            segs += self._item_segments(it, pos)
            hist += [v.latent for v in it.visuals]
            hist_shot += [pos] * len(it.visuals)
        p = len(items)
        segs += [self._text(p), Segment(self._modality(noise), p, self._grid(noise))]
        layout = SequenceLayout(segs)
        prompts = [it.prompt for it in items] + [self.pipe.model_prompt(self.script, i)]
        policy = self.plan.policy if self.plan.mode != "causal" else None

        def make(drop: bool, isolate: bool = False, model: Any = None) -> SegmentFn:
            return mmdit_segment_fn(self.model if model is None else model, layout, self._context(layout, prompts, drop=drop),
                                    policy=_ISOLATED if isolate else policy, backend=self.backend)

        out = sample_autoregressive(self._guided(make), hist, hist_shot, [noise], [p], steps=self.plan.steps,
                                    t_c=self.plan.t_c, shift=self.plan.shift, solver=self.plan.solver,  # type: ignore[arg-type]
                                    callback=self._step_callback((i,)))
        return out[0]

    def _ensure_cache(self, items: list[_Item], drop: bool) -> KVCache:
        """Make the cache of the (cond / uncond) branch hold exactly ``[global] + items``; reuse the longest prefix."""
        want = ([("global",)] if self.pipe.global_prompt else []) + [it.key for it in items]
        cache, have = self._caches.setdefault(drop, KVCachePool()).get(want)
        offset = 1 if self.pipe.global_prompt else 0
        for idx in range(len(have), len(want)):
            if want[idx] == ("global",):
                segs = [self._text(-1)]
                ctx = self._context(SequenceLayout(segs), [], drop=drop)
                write_kv_cache(self.model, cache, segs, [], ctx, torch.zeros(1, 0, device=self.device), backend=self.backend)
            else:
                pos = idx - offset
                it = items[pos]
                segs = self._item_segments(it, pos)
                ctx = encode_context(self.pipe.text_encoder, [["" if drop else it.prompt]], text_len=self.text_len).to(self.device)
                t = torch.full((1, pos + 1), self.plan.t_c, device=self.device)  # the new shot sits at t_c
                write_kv_cache(self.model, cache, segs, [v.latent for v in it.visuals], ctx, t, backend=self.backend)
            have.append(want[idx])
        return cache

    def _sample_cached(self, i: int, items: list[_Item], noise: Tensor) -> Tensor:
        """Causal model, history K/V from the cache: each step computes only the new shot's tokens."""
        p = len(items)
        target = [self._text(p), Segment(self._modality(noise), p, self._grid(noise))]
        t_prefix = torch.full((1, p), self.plan.t_c, device=self.device)
        prompt = self.pipe.model_prompt(self.script, i)

        def make(drop: bool, isolate: bool = False) -> SegmentFn:
            cache = self._ensure_cache(items, drop)
            layout = cache.full_layout(target)
            ctx = encode_context(self.pipe.text_encoder, [["" if drop else prompt]], text_len=self.text_len).to(self.device)
            return mmdit_segment_fn(self.model, layout, ctx, backend=self.backend, kv_cache=cache, t_prefix=t_prefix,
                                    policy=_ISOLATED if isolate else None)

        out = sample_causal_kv(self._guided(make), [noise], [0], steps=self.plan.steps, shift=self.plan.shift,
                               solver=self.plan.solver, callback=self._step_callback((i,)))  # type: ignore[arg-type]
        return out[0]

    # ------------------------------------------------------------------------------------ outputs

    def _finish(self, i: int, latent: Tensor, history: list[int], seconds: float) -> None:
        """Decode shot ``i``, write it (when there is a writer), and add what was saved to the history pool."""
        from storyreel.pipelines.scene import GenerationEvent, shot_seed

        shot = self.script.shots[i]
        frames = self._decode(latent, self.plan.frames[i])
        self.history_used[i] = history
        self.seconds[i] = round(seconds, 4)
        if self.writer is not None:
            meta = {
                "run": self.run_key, "mode": self.plan.mode, "seed": shot_seed(self.plan.seed, i),
                "model_prompt": self.pipe.model_prompt(self.script, i), "history": [j + 1 for j in history],
                "model_sha256": self.pipe.weights_sha256(), "seconds": self.seconds[i],
            }
            self.writer.write_shot(i, frames, prompt=shot.prompt, meta=meta)
            frames = self.writer.read_shot(i)  # history = the saved video, exactly as a resumed run sees it
        self.videos[i] = frames
        self.latents[i] = latent
        if self.plan.mode != "joint":
            self.pool.add(i, prompt=shot.prompt, latent=self._encode(frames))
        if self.callback is not None:
            self.callback(GenerationEvent("shot", (i,), self.plan.steps, self.plan.steps, [latent]))

    def _meta(self, reused: list[int], generated: list[int], total_s: float) -> dict[str, Any]:
        from storyreel import __version__
        from storyreel.pipelines.scene import shot_seed

        p = self.plan
        return {
            "title": self.script.title,
            "generator": "storyreel.pipelines.scene",
            "storyreel_version": __version__,
            "mode": p.mode, "seed": p.seed, "steps": p.steps, "guidance": p.guidance, "solver": p.solver, "shift": p.shift,
            "t_c": p.t_c, "history": p.history, "goldenmem": p.goldenmem, "context_window": p.window, "policy": p.policy,
            "history_guidance": p.history_guidance, "autoguidance": p.autoguidance,
            "kv_cache": p.kv_cache if p.mode == "causal" else None,
            "resolution": [p.width, p.height],
            "model": {"id": self.model_id, "name": self.pipe.name, "sha256": self.pipe.weights_sha256()},
            "device": str(self.device),
            "dtype": str(self.pipe.dtype).removeprefix("torch."),
            "script": self.resolved_script(),
            "generation": {
                "run": self.run_key,
                "generated": [i + 1 for i in generated],
                "reused": [i + 1 for i in reused],
                "shot_seeds": [shot_seed(p.seed, i) for i in range(self.n)],
                "history": {str(i + 1): [j + 1 for j in h] for i, h in sorted(self.history_used.items())},
                "history_tokens": {str(i + 1): n for i, n in sorted(self.history_tokens.items())},
            },
            "timings": {"total_s": round(total_s, 4), "shots_s": self.seconds},
        }
