"""Training batches: shot windows, frame substitution, text dropout, conditional masks, timesteps, latents.

Data schedule after Mask²DiT (Qi et al. 2025: pretraining on concatenations of unrelated shots, then
SFT on coherent scenes; segment-level conditional mask), LCT (Guo et al. 2025: joint single/multi-shot
training, independent per-shot timesteps, global prompt as its own segment) and Captain Cinema
(Xiao et al. 2025: progressive context length, dynamic stride sampling of shots).

Every random choice is drawn from generators seeded by ``(seed, step, micro-batch[, rank])``, and the
data order is a :class:`~storyreel.train.scenes.SceneOrder` position, so a resumed run rebuilds the
same batches. Choices that shape the sequence (shot count, which shots are images) are shared by the
whole step on every rank, so one :class:`SequenceLayout` serves a batch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from storyreel.data import select_shots
from storyreel.diffusion import sample_train_timesteps
from storyreel.nn.embeddings import patch_grid
from storyreel.scene_inputs import encode_context, encode_pixels, scene_layout, segment_prompts
from storyreel.script import character_descriptions, expand_character_refs
from storyreel.train.config import DataConfig, ScheduleConfig, StageConfig, TimestepConfig
from storyreel.train.scenes import SceneIndex, SceneOrder

__all__ = [
    "BatchBuilder", "ShotSpec", "StepPlan", "TrainBatch", "WindowSampler", "character_cells", "plan_step", "sample_conditioning",
]

# stream ids of the seeded generators (one per kind of decision)
_PLAN, _DRAW, _SAMPLE, _TORCH, _POLICY = 101, 202, 303, 404, 505


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _torch_gen(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class StepPlan:
    """Sequence structure of one optimiser step (identical on every rank and micro-batch)."""

    stage: StageConfig
    stage_index: int
    n_shots: int
    image_shots: tuple[bool, ...]  # per shot position: a one-frame IMAGE shot (frame substitution)


def plan_step(schedule: ScheduleConfig, data: DataConfig, *, seed: int, step: int) -> StepPlan:
    """Shot count (1 with ``data.single_shot_prob``, else uniform in the stage's [min_shots, max_shots]) and
    frame substitution (each shot position independently with ``data.frame_substitution``) for ``step``."""
    stage = schedule.stage_at(step)
    index = schedule.stages.index(stage)
    rng = _rng(seed, _PLAN, step)
    single = rng.random() < data.single_shot_prob
    n = 1 if single else int(rng.integers(stage.min_shots, stage.max_shots + 1))
    images = tuple(bool(rng.random() < data.frame_substitution) for _ in range(n))
    return StepPlan(stage=stage, stage_index=index, n_shots=n, image_shots=images)


@dataclass(frozen=True)
class ShotSpec:
    """One shot of a training window: scene, shot and the frame indices to take."""

    scene: int
    shot: int
    frames: tuple[int, ...]


class WindowSampler:
    """Cuts windows of ``n`` shots with equal frame counts from a :class:`SceneIndex` in a resumable order.

    ``scene`` mode: ``n`` shots of one scene with at least ``n`` usable shots, picked contiguously or with
    Captain Cinema's dynamic stride (``data.stride_sampling``). ``concat`` mode: ``n`` shots from ``n``
    different scenes (Mask²DiT pretraining), each keeping its own prompt.
    A shot is usable when it has ``(frames - 1) * frame_stride + 1`` frames.
    """

    def __init__(self, index: SceneIndex, data: DataConfig, *, seed: int) -> None:
        self.index = index
        self.data = data
        self.order = SceneOrder(len(index), seed=seed)
        self.need = (data.frames - 1) * data.frame_stride + 1
        self._usable = [tuple(i for i, f in enumerate(index.frames(s)) if f >= self.need) for s in range(len(index))]
        self.max_usable = max(len(u) for u in self._usable)
        self._cells: dict[tuple[int, int, tuple[int, int]], np.ndarray] = {}  # see frame_cells
        if self.max_usable == 0:
            longest = max(max(index.frames(s)) for s in range(len(index)))
            raise ValueError(
                f"data.frames={data.frames} with data.frame_stride={data.frame_stride} needs shots of {self.need} frames, "
                f"but the longest shot in {index.root} has {longest}; lower data.frames/frame_stride or re-synthesise"
            )

    def _next_scene(self, min_shots: int) -> int:
        if min_shots > self.max_usable:
            raise ValueError(
                f"the schedule asks for {min_shots} shots per scene but no scene in {self.index.root} has more than "
                f"{self.max_usable} usable shots (of >= {self.need} frames); lower schedule.stages[*].max_shots or "
                "synthesise scenes with more shots (data.synth.n_shots)"
            )
        while True:
            s = self.order.next()
            if len(self._usable[s]) >= min_shots:
                return s

    def _frames(self, scene: int, shot: int, image: bool, rng: np.random.Generator) -> tuple[int, ...]:
        total = self.index.frames(scene)[shot]
        if image:
            return (int(rng.integers(0, total)),)
        start = int(rng.integers(0, total - self.need + 1))
        return tuple(start + k * self.data.frame_stride for k in range(self.data.frames))

    def draw(self, plan: StepPlan, count: int, rng: np.random.Generator) -> list[list[ShotSpec]]:
        """``count`` windows (metadata only; advances the data order)."""
        out = []
        n = plan.n_shots
        for _ in range(count):
            if plan.stage.mode == "scene":
                s = self._next_scene(n)
                usable = self._usable[s]
                picks = select_shots(len(usable), max_shots=n, stride_sampling=self.data.stride_sampling, rng=rng)
                shots = [(s, usable[p]) for p in picks]
            else:
                shots = []
                for _ in range(n):
                    s = self._next_scene(1)
                    usable = self._usable[s]
                    shots.append((s, usable[int(rng.integers(0, len(usable)))]))
            out.append([ShotSpec(scene=s, shot=k, frames=self._frames(s, k, plan.image_shots[j], rng)) for j, (s, k) in enumerate(shots)])
        return out

    def frame_cells(self, scene: int, shot: int, grid: tuple[int, int]) -> np.ndarray:
        """bool ``[F, h, w]``: per stored frame of a shot, the cells of an ``h × w`` grid inside a ``Character N``
        box (cached per shot: boxes never change)."""
        key = (scene, shot, grid)
        if key not in self._cells:
            record = self.index.load(scene)
            F, H, W = record.frames[shot].shape[:3]
            h, w = grid
            sy, sx = H / h, W / w
            cells = np.zeros((F, h, w), dtype=bool)
            for f, boxes in enumerate(record.boxes[shot]):
                for box in boxes:
                    if str(box.get("label", "")).startswith("Character"):
                        x0, y0, x1, y1 = box["box"]
                        cells[f, max(0, int(y0 // sy)) : min(h, int(-(-y1 // sy))), max(0, int(x0 // sx)) : min(w, int(-(-x1 // sx)))] = True
            self._cells[key] = cells
        return self._cells[key]

    def pixels(self, spec: ShotSpec) -> Tensor:
        """uint8 ``[F, 3, H, W]`` frames of one window shot."""
        arr = self.index.load(spec.scene).frames[spec.shot][list(spec.frames)]  # [F, H, W, 3]
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)  # [F, 3, H, W]

    def materialise(self, window: list[ShotSpec], *, mode: str, pixels: bool = True) -> dict[str, Any]:
        """Pixels ``frames`` (per shot uint8 ``[F_i, 3, H, W]``; omitted with ``pixels=False``), ``shot_prompts``,
        ``global_prompt``, ``sources`` and the window ``specs``."""
        frames, prompts, sources = [], [], []
        for spec in window:
            scene = self.index.load(spec.scene)
            if pixels:
                frames.append(self.pixels(spec))
            prompt = scene.shot_prompts[spec.shot]
            if self.data.expand_characters:  # each shot from its own scene's characters (concat windows too)
                prompt = expand_character_refs(prompt, character_descriptions(scene.global_prompt))
            prompts.append(prompt)
            sources.append((scene.key, spec.shot))
        glob = self.index.load(window[0].scene).global_prompt if mode == "scene" else ""
        out = {"shot_prompts": prompts, "global_prompt": glob, "sources": sources, "specs": list(window)}
        if pixels:
            out["frames"] = frames
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state["order"])


def sample_conditioning(
    *, batch: int, n_shots: int, image_shots: tuple[bool, ...], cond_mask_prob: float, image_condition_prob: float,
    text_dropout: float, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample conditioning decisions.

    Returns ``clean [B, n]`` (shot held at t = 0 as context, no loss), ``cond_mask [B]`` (Mask²DiT segment-level
    conditional mask: every shot but the last is clean) and ``dropped [B]`` (all prompts emptied for CFG).
    Substituted image shots are held clean with ``image_condition_prob``; at least one shot per sample keeps its loss.
    """
    clean = np.zeros((batch, n_shots), dtype=bool)
    cond = np.zeros(batch, dtype=bool)
    dropped = np.zeros(batch, dtype=bool)
    for b in range(batch):
        if n_shots > 1 and rng.random() < cond_mask_prob:
            cond[b] = True
            clean[b, :-1] = True
        else:
            for j, img in enumerate(image_shots):
                if img and rng.random() < image_condition_prob:
                    clean[b, j] = True
            if clean[b].all():
                clean[b, -1] = False
        dropped[b] = rng.random() < text_dropout
    return clean, cond, dropped


@dataclass
class TrainBatch:
    """One micro-batch, ready for the model.

    latents/noise: ``[B, C, T_total, h, w]`` (shots concatenated along latent time in layout order);
    t: ``[B, n_shots]``; weights: ``[B, n_shots]`` (1 where a shot carries loss); context: ``[B, L_text, D]``.
    """

    latents: Tensor
    noise: Tensor
    t: Tensor
    weights: Tensor
    context: Tensor
    layout: Any
    frames_per_shot: list[int]
    plan: StepPlan
    prompts: list[list[str]]  # per sample: [global?] + shot prompts as fed to the encoder
    dropped: Tensor  # [B] bool
    cond_mask: Tensor  # [B] bool
    sources: list[list[tuple[str, int]]] = field(default_factory=list)
    cell_weights: Tensor | None = None  # [B, 1, T_total, h, w] per-latent-cell loss weights (None: all 1)
    causal: bool = False  # run with context-causal attention (train.causal_prob) instead of the model's policy

    @property
    def tokens(self) -> int:
        """Tokens processed: batch × sequence length."""
        return int(self.latents.shape[0]) * int(self.layout.seq_len)

    def to(self, device: torch.device) -> TrainBatch:
        for name in ("latents", "noise", "t", "weights", "context"):
            setattr(self, name, getattr(self, name).to(device, non_blocking=True))
        if self.cell_weights is not None:
            self.cell_weights = self.cell_weights.to(device, non_blocking=True)
        return self


def character_cells(sampler: WindowSampler, specs: list[ShotSpec], latent_frames: list[int],
                    grid: tuple[int, int]) -> Tensor:
    """Which latent cells of a window show a character: float ``[T_total, h, w]``, 1 inside the box of any
    ``Character N`` in the frames a latent frame covers (a causal autoencoder's latent frame ``k`` covers window
    frames ``(k-1)·r+1 .. k·r``, frame 0 alone), 0 elsewhere. Boxes are the dataset's per-frame boxes."""
    out = []
    for spec, tl in zip(specs, latent_frames):
        frames = sampler.frame_cells(spec.scene, spec.shot, grid)[list(spec.frames)]  # [n, h, w]
        n = frames.shape[0]
        r = max(1, round((n - 1) / (tl - 1))) if tl > 1 else max(1, n)  # window frames per latent frame
        k = np.minimum(tl - 1, -(-np.arange(n) // r))  # [n] latent frame of each window frame: ceil(j / r)
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])  # k is sorted: one run of frames per latent frame
        cells = np.zeros((tl, *grid), dtype=bool)
        cells[k[starts]] = np.logical_or.reduceat(frames, starts, axis=0)
        out.append(cells)
    return torch.from_numpy(np.concatenate(out, axis=0).astype(np.float32))  # [T_total, h, w]


class BatchBuilder:
    """Builds :class:`TrainBatch` es for (step, micro-batch) on one rank.

    Args:
        sampler: the window sampler (its order is advanced by every call, identically on all ranks).
        text_encoder: ``.encode(prompts) -> TextStates``.
        autoencoder: ``.encode(video [B, 3, T, H, W] in [-1, 1]) -> [B, C, T', h, w]``.
        patch_size: the backbone's ``(pt, ph, pw)``.
        text_len: tokens per prompt segment.
    """

    def __init__(
        self, *, sampler: WindowSampler, text_encoder: Any, autoencoder: Any, data: DataConfig, schedule: ScheduleConfig,
        timesteps: TimestepConfig, cond_mask_prob: float, batch_size: int, patch_size: tuple[int, int, int], text_len: int,
        latent_scale: float = 1.0, seed: int = 0, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
        character_weight: float = 0.0, causal_prob: float = 0.0,
    ) -> None:
        self.sampler = sampler
        self.text_encoder = text_encoder
        self.autoencoder = autoencoder
        self.data = data
        self.schedule = schedule
        self.timesteps = timesteps
        self.cond_mask_prob = cond_mask_prob
        self.character_weight = float(character_weight)
        self.causal_prob = float(causal_prob)
        self.batch_size = batch_size
        self.patch_size = tuple(patch_size)
        self.text_len = text_len
        self.latent_scale = latent_scale
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.cache_size = int(data.cache_latents)
        self._latents: OrderedDict[tuple[int, int, tuple[int, ...]], Tensor] = OrderedDict()  # LRU of [C, T', h, w]
        self.cache_hits = 0
        self.cache_misses = 0

    def plan(self, step: int) -> StepPlan:
        return plan_step(self.schedule, self.data, seed=self.seed, step=step)

    def build(self, step: int, micro: int) -> TrainBatch:
        """The micro-batch ``micro`` of optimiser step ``step`` (0-based) for this rank."""
        plan = self.plan(step)
        b, n = self.batch_size, plan.n_shots
        windows = self.sampler.draw(plan, b * self.world_size, _rng(self.seed, _DRAW, step, micro))
        mine = windows[self.rank * b : (self.rank + 1) * b]
        items = [self.sampler.materialise(w, mode=plan.stage.mode, pixels=self.cache_size == 0) for w in mine]
        rng = _rng(self.seed, _SAMPLE, step, micro, self.rank)
        clean, cond, dropped = sample_conditioning(
            batch=b, n_shots=n, image_shots=plan.image_shots, cond_mask_prob=self.cond_mask_prob,
            image_condition_prob=self.data.image_condition_prob, text_dropout=self.data.text_dropout, rng=rng,
        )
        gen = _torch_gen(self.seed, _TORCH, step, micro, self.rank)
        ts = self.timesteps
        t = sample_train_timesteps(b, n, distribution=ts.distribution, independent=ts.independent, mean=ts.mean,
                                   std=ts.std, shift=ts.shift, generator=gen)  # [B, n]
        clean_t = torch.from_numpy(clean)
        t = torch.where(clean_t, torch.zeros_like(t), t)
        weights = (~clean_t).to(torch.float32)  # [B, n]

        latents, frames_per_shot, grids = self._encode(items, n)
        noise = torch.randn(latents.shape, generator=gen, dtype=latents.dtype)
        layout = self._layout(grids, plan)
        context, prompts = self._context(items, dropped, layout)
        cells = None
        if self.character_weight > 0:
            cells = [character_cells(self.sampler, it["specs"], frames_per_shot, tuple(latents.shape[-2:])) for it in items]
            cells = 1.0 + self.character_weight * torch.stack(cells)[:, None]  # [B, 1, T_total, h, w]
        return TrainBatch(
            latents=latents, noise=noise, t=t, weights=weights, context=context, layout=layout,
            frames_per_shot=frames_per_shot, plan=plan, prompts=prompts, dropped=torch.from_numpy(dropped),
            cond_mask=torch.from_numpy(cond), sources=[it["sources"] for it in items], cell_weights=cells,
            causal=self.causal_prob > 0 and bool(_rng(self.seed, _POLICY, step, micro).random() < self.causal_prob),
        )

    @torch.no_grad()
    def _encode(self, items: list[dict[str, Any]], n: int) -> tuple[Tensor, list[int], list[tuple[int, int, int]]]:
        """Pixels → latents per shot position (no grad); returns ``[B, C, T_total, h, w]``, latent frames, token grids."""
        parts, frames, grids = [], [], []
        ae_device = next((p.device for p in self.autoencoder.parameters()), self.device) if hasattr(self.autoencoder, "parameters") else self.device
        for j in range(n):
            if self.cache_size:
                z = self._cached_latents([it["specs"][j] for it in items], ae_device)  # [B, C, T', h, w]
            else:
                video = torch.stack([it["frames"][j] for it in items])  # [B, F, 3, H, W] uint8
                z = encode_pixels(self.autoencoder, video, latent_scale=self.latent_scale, device=ae_device)  # [B, C, T', h, w]
            parts.append(z)
            frames.append(int(z.shape[2]))
            grids.append(patch_grid(tuple(z.shape[2:]), self.patch_size, what=f"latent of shot {j}"))
        return torch.cat(parts, dim=2), frames, grids  # [B, C, T_total, h, w]

    def _cached_latents(self, specs: list[ShotSpec], device: torch.device) -> Tensor:
        """Latents ``[B, C, T', h, w]`` (on the autoencoder's device) of one shot position, encoding only the
        windows not in the LRU cache (``data.cache_latents`` entries; the autoencoder is frozen, so a window's
        latent never changes during training)."""
        keys = [(s.scene, s.shot, s.frames) for s in specs]
        missing = list(dict.fromkeys(k for k in keys if k not in self._latents))
        self.cache_hits += len(keys) - len(missing)
        self.cache_misses += len(missing)
        if missing:
            video = torch.stack([self.sampler.pixels(ShotSpec(scene=k[0], shot=k[1], frames=k[2])) for k in missing])  # [M, F, 3, H, W]
            z = encode_pixels(self.autoencoder, video, latent_scale=self.latent_scale, device=device).to(device)  # [M, C, T', h, w]
            for k, zk in zip(missing, z):
                self._latents[k] = zk
        out = torch.stack([self._latents[k] for k in keys])  # [B, C, T', h, w]
        for k in keys:
            self._latents.move_to_end(k)
        while len(self._latents) > self.cache_size:
            self._latents.popitem(last=False)
        return out

    def _layout(self, grids: list[tuple[int, int, int]], plan: StepPlan) -> Any:
        return scene_layout(grids, text_len=self.text_len, global_prompt=self.data.global_prompt, image_shots=plan.image_shots)

    def _context(self, items: list[dict[str, Any]], dropped: np.ndarray, layout: Any) -> tuple[Tensor, list[list[str]]]:
        """Text states ``[B, L_text_total, D]`` in layout order (global prompt: shot −1); dropped samples get ''."""
        prompts = [
            segment_prompts(layout, global_prompt=it["global_prompt"], shot_prompts=it["shot_prompts"], drop=bool(drop))
            for it, drop in zip(items, dropped)
        ]
        return encode_context(self.text_encoder, prompts, text_len=self.text_len), prompts  # [B, S_text * text_len, D]



class Prefetcher:
    """Builds the batches of upcoming steps on a background thread, in ``(step, micro)`` order.

    Before each build the thread records ``get_state()`` (the data position), so :meth:`state_dict`
    reports the position *as if nothing had been prefetched* and checkpoints stay exact. A request out
    of order stops the thread, rewinds the data order (``set_state``) to the first batch not handed
    out, and restarts at the request. ``depth <= 0`` builds synchronously.
    """

    def __init__(self, build: Any, get_state: Any, set_state: Any, *, accum: int, depth: int = 2) -> None:
        import collections
        import threading

        self._build, self._get_state, self._set_state = build, get_state, set_state
        self.accum = accum
        self.depth = depth
        self._cond = threading.Condition()
        self._items: collections.deque = collections.deque()  # (step, micro, state_before, batch, error)
        self._thread: threading.Thread | None = None
        self._stop = False

    def _run(self, step: int, micro: int) -> None:
        while True:
            with self._cond:
                while len(self._items) >= self.depth and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
            state = self._get_state()
            try:
                batch, err = self._build(step, micro), None
            except BaseException as exc:  # handed to the consumer, which re-raises it
                batch, err = None, exc
            with self._cond:
                self._items.append((step, micro, state, batch, err))  # kept even after a stop: close() rewinds to it
                self._cond.notify_all()
                if self._stop or err is not None:
                    return
            micro += 1
            if micro == self.accum:
                step, micro = step + 1, 0

    def _start(self, step: int, micro: int) -> None:
        import threading

        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(step, micro), daemon=True, name="storyreel-prefetch")
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and rewind the data order to the first batch not handed out."""
        if self._thread is None:
            return
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._thread = None
        if self._items:
            self._set_state(self._items[0][2])
        self._items.clear()

    def get(self, step: int, micro: int) -> Any:
        """The batch ``(step, micro)``."""
        if self.depth <= 0:
            return self._build(step, micro)
        if self._thread is None:
            self._start(step, micro)
        with self._cond:
            while not self._items:
                self._cond.wait()
            s, m, _, batch, err = self._items[0]
            if (s, m) == (step, micro):
                self._items.popleft()
                self._cond.notify_all()
        if (s, m) != (step, micro):
            self.close()
            self._start(step, micro)
            return self.get(step, micro)
        if err is not None:
            self.close()
            raise err
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position before the next batch to be handed out."""
        if self._thread is not None:
            with self._cond:
                if self._items:
                    return self._items[0][2]
            self.close()  # a build is under way: stop (and rewind) to read a consistent position
        return self._get_state()
