"""Multi-shot sampling strategies as plain functions over a model function (design.md, Principle 2).

* joint — every shot denoised together from noise (LCT's scene-level joint diffusion; Mask²DiT);
* autoregressive — a target shot denoised from noise while earlier shots sit frozen at ``t_c`` as conditions
  (LCT §3.3, history conditioning at noise level ``t_c``; Mask²DiT scene extension);
* causal-KV — the same with a context-causal model whose history K/V come from a :class:`KVCache`, so the model
  only sees the new segments each step (LCT §3.3, context-causal attention + KV cache).

State: a list of per-segment latents ``[B, C, T_i, H_i, W_i]`` (segments may differ in grid, e.g. GoldenMem
history frames), each belonging to one *state shot*; the timestep row is ``[B, n_state_shots]``. Internally the
list is packed into one ``[B, C, N]`` tensor so the rectified-flow solvers of ``storyreel.diffusion`` step every
token with its own shot's timestep. A segment whose timestep does not change between rows (a condition at
``t_c``) is left exactly as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from storyreel.diffusion import inference_timesteps
from storyreel.nn.kvcache import KVCache
from storyreel.nn.layout import Segment, SequenceLayout
from storyreel.sampling.guidance import classifier_free_guidance
from storyreel.sampling.joint import sample_flow

__all__ = [
    "SegmentFn",
    "guided_segment_fn",
    "history_guided_segment_fn",
    "mmdit_segment_fn",
    "pack_segments",
    "renoise",
    "sample_autoregressive",
    "sample_causal_kv",
    "sample_joint",
    "sample_segments",
    "shot_timestep_grid",
    "unpack_segments",
    "write_kv_cache",
]

SegmentFn = Callable[[list[Tensor], Tensor], list[Tensor]]
"""``fn(latents, t) -> velocities``: per-segment latents ``[B, C, T_i, H_i, W_i]``, ``t`` ``[B, n_state_shots]``."""


# ----------------------------------------------------------------------------------------------- packing


def pack_segments(latents: Sequence[Tensor]) -> Tensor:
    """Per-segment latents ``[B, C, T_i, H_i, W_i]`` → one ``[B, C, N]`` with ``N = Σ T_i·H_i·W_i``."""
    if not latents:
        raise ValueError("pack_segments needs at least one latent")
    return torch.cat([z.flatten(2) for z in latents], dim=2)  # each [B, C, T·H·W] → [B, C, N]


def unpack_segments(x: Tensor, shapes: Sequence[torch.Size | tuple[int, ...]]) -> list[Tensor]:
    """Inverse of :func:`pack_segments`: ``[B, C, N]`` → latents of the given ``[B, C, T, H, W]`` shapes."""
    sizes = [int(s[2] * s[3] * s[4]) for s in shapes]
    if x.ndim != 3 or x.shape[2] != sum(sizes):
        raise ValueError(f"packed state {tuple(x.shape)} does not hold segments of sizes {sizes} (sum {sum(sizes)})")
    return [part.reshape(s) for part, s in zip(torch.split(x, sizes, dim=2), shapes)]  # [B, C, n_i] → [B, C, T, H, W]


def _expander(shapes: Sequence[tuple[int, ...]], seg_shot: Sequence[int]) -> Callable[[Tensor], Tensor]:
    """Map a timestep row ``[B, n_state_shots]`` to ``[B, 1, N]`` (every packed element takes its segment's shot t)."""
    counts = torch.tensor([int(s[2] * s[3] * s[4]) for s in shapes], dtype=torch.long)
    shots = torch.tensor(list(seg_shot), dtype=torch.long)
    total = int(counts.sum())
    on: dict[torch.device, tuple[Tensor, Tensor]] = {}  # the index tensors, copied to each device once

    def expand(t_row: Tensor) -> Tensor:
        if t_row.device not in on:
            on[t_row.device] = (shots.to(t_row.device), counts.to(t_row.device))
        idx, reps = on[t_row.device]
        per_seg = t_row[:, idx]  # [B, n_segments]
        # output_size: no device->host read of the counts' sum
        return torch.repeat_interleave(per_seg, reps, dim=1, output_size=total)[:, None, :]  # [B, 1, N]

    return expand


# ---------------------------------------------------------------------------------------------- schedules


def shot_timestep_grid(
    steps: int, *, generate: Sequence[bool], t_c: float = 0.0, shift: float = 1.0, batch: int = 1,
) -> Tensor:
    """Timesteps ``[steps + 1, batch, n_shots]``: shots with ``generate[i]`` go from 1 to 0 on the (shifted) grid,
    the others stay at ``t_c`` (conditions)."""
    if not 0.0 <= t_c < 1.0:
        raise ValueError(f"t_c={t_c!r} must be in [0, 1) (0 = clean conditions)")
    grid = inference_timesteps(steps, shift=shift)  # [steps + 1]
    gen = torch.tensor([bool(g) for g in generate])  # [n]
    rows = torch.where(gen[None, :], grid[:, None], torch.full((1, gen.numel()), float(t_c)))  # [steps + 1, n]
    return rows[:, None, :].expand(-1, batch, -1).contiguous()  # [steps + 1, B, n]


def renoise(latent: Tensor, noise: Tensor, t_c: float) -> Tensor:
    """A finished latent moved to noise level ``t_c``: ``(1 - t_c)·x0 + t_c·ε`` (``t_c = 0`` returns it unchanged)."""
    if t_c == 0.0:
        return latent
    return (1.0 - t_c) * latent + t_c * noise


# ---------------------------------------------------------------------------------------------- core loop


def sample_segments(
    model_fn: SegmentFn,
    latents: Sequence[Tensor],
    seg_shot: Sequence[int],
    timesteps: Tensor,
    *,
    solver: Literal["euler", "heun"] = "euler",
    callback: Callable[[int, int, list[Tensor]], None] | None = None,
) -> list[Tensor]:
    """Integrate the flow ODE over per-segment latents with per-shot timesteps.

    Args:
        model_fn: ``(latents, t_row [B, n_state_shots]) -> velocities`` (lists like ``latents``).
        latents: starting latents ``[B, C, T_i, H_i, W_i]`` (noise for shots starting at 1, conditions at ``t_c``).
        seg_shot: the state shot (column of ``timesteps``) of every segment.
        timesteps: ``[N + 1, B, n_state_shots]``, non-increasing rows.
        callback: ``callback(step, n_steps, latents)`` after every step.
    Returns:
        the latents at ``timesteps[-1]``.
    """
    latents = list(latents)
    if len(seg_shot) != len(latents):
        raise ValueError(f"seg_shot has {len(seg_shot)} entries but there are {len(latents)} segments")
    shapes = [tuple(z.shape) for z in latents]

    def packed_fn(x: Tensor, t_row: Tensor) -> Tensor:
        return pack_segments(model_fn(unpack_segments(x, shapes), t_row))  # [B, C, N]

    def on_step(i: int, n: int, x: Tensor) -> None:
        if callback is not None:
            callback(i, n, unpack_segments(x, shapes))

    x = sample_flow(packed_fn, pack_segments(latents), timesteps, expand=_expander(shapes, seg_shot), solver=solver,
                    callback=on_step)
    return unpack_segments(x, shapes)


def sample_joint(
    model_fn: SegmentFn, noise: Sequence[Tensor], seg_shot: Sequence[int], *, steps: int, shift: float = 1.0,
    solver: Literal["euler", "heun"] = "euler", callback: Callable[[int, int, list[Tensor]], None] | None = None,
) -> list[Tensor]:
    """Joint sampling: every shot from noise (``t = 1``) to data together. ``noise``: per segment ``[B, C, T, H, W]``."""
    n_shots = max(seg_shot) + 1
    grid = shot_timestep_grid(steps, generate=[True] * n_shots, shift=shift, batch=noise[0].shape[0])
    return sample_segments(model_fn, noise, seg_shot, grid, solver=solver, callback=callback)


def sample_autoregressive(
    model_fn: SegmentFn, history: Sequence[Tensor], history_shot: Sequence[int], noise: Sequence[Tensor],
    noise_shot: Sequence[int], *, steps: int, t_c: float = 0.0, shift: float = 1.0,
    solver: Literal["euler", "heun"] = "euler", callback: Callable[[int, int, list[Tensor]], None] | None = None,
) -> list[Tensor]:
    """Generate the ``noise`` segments' shots with ``history`` segments held at ``t_c`` as conditions.

    ``history`` latents must already be at noise level ``t_c`` (see :func:`renoise`); segments are passed to the
    model as ``history + noise`` in that order. Returns the generated segments only.
    """
    seg_shot = list(history_shot) + list(noise_shot)
    n_shots = max(seg_shot) + 1
    gen = [s in set(noise_shot) for s in range(n_shots)]
    if set(history_shot) & set(noise_shot):
        raise ValueError(f"history shots {sorted(set(history_shot))} and generated shots {sorted(set(noise_shot))} overlap")
    grid = shot_timestep_grid(steps, generate=gen, t_c=t_c, shift=shift, batch=noise[0].shape[0])
    n_hist = len(history)

    def cb(i: int, n: int, lat: list[Tensor]) -> None:
        if callback is not None:
            callback(i, n, lat[n_hist:])

    out = sample_segments(model_fn, list(history) + list(noise), seg_shot, grid, solver=solver, callback=cb)
    return out[n_hist:]


def sample_causal_kv(
    model_fn: SegmentFn, noise: Sequence[Tensor], seg_shot: Sequence[int], *, steps: int, shift: float = 1.0,
    solver: Literal["euler", "heun"] = "euler", callback: Callable[[int, int, list[Tensor]], None] | None = None,
) -> list[Tensor]:
    """Causal-KV sampling of new shots: ``model_fn`` (e.g. :func:`mmdit_segment_fn` with a ``kv_cache`` and
    ``t_prefix``) sees only the new segments; the history lives in its cache. Same integration as joint."""
    return sample_joint(model_fn, noise, seg_shot, steps=steps, shift=shift, solver=solver, callback=callback)


# ---------------------------------------------------------------------------------------------- model glue


def mmdit_segment_fn(
    model: Any, layout: SequenceLayout, context: Tensor, *, policy: Any = None, backend: str = "auto",
    kv_cache: KVCache | None = None, t_prefix: Tensor | None = None,
) -> SegmentFn:
    """A :data:`SegmentFn` over a :class:`~storyreel.models.MultiShotMMDiT`.

    ``layout`` is the FULL layout (cached prefix + the state's segments); ``context`` ``[B, L_ctx, D]`` the states
    of the new text segments. With a cache, ``t_prefix`` ``[B, n_cached_shots]`` gives the cached shots' timesteps
    (they are already baked into the cache; the model reads only the new shots' entries).
    """

    def fn(latents: list[Tensor], t_row: Tensor) -> list[Tensor]:
        t = t_row if t_prefix is None else torch.cat([t_prefix.to(t_row), t_row], dim=1)  # [B, n_shots of layout]
        with torch.no_grad():
            out = model(latents, t, context, layout, policy=policy, backend=backend, kv_cache=kv_cache)
        return list(out)

    return fn


def guided_segment_fn(cond: SegmentFn, uncond: SegmentFn, scale: float) -> SegmentFn:
    """Classifier-free guidance ``u + scale·(c - u)`` over segment functions (``scale == 1`` calls ``cond`` only)."""
    if scale == 1.0:
        return cond

    def packed(fn: SegmentFn, shapes: list[tuple[int, ...]]) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda x, t: pack_segments(fn(unpack_segments(x, shapes), t))

    def fn(latents: list[Tensor], t_row: Tensor) -> list[Tensor]:
        shapes = [tuple(z.shape) for z in latents]
        guided = classifier_free_guidance(packed(cond, shapes), packed(uncond, shapes), scale)
        return unpack_segments(guided(pack_segments(latents), t_row), shapes)

    return fn


def history_guided_segment_fn(cond: SegmentFn, uncond: SegmentFn | None, alone: SegmentFn | None, scale: float,
                              history_scale: float, *, weak: SegmentFn | None = None, weak_scale: float = 0.0) -> SegmentFn:
    """Text, history and autoguidance over segment functions:
    ``u + scale·(c − u) + history_scale·(c − a) + weak_scale·(c − w)``.

    ``c``: the prompted model with the scene's other shots in view; ``u``: unprompted (``None``: no text guidance,
    ``scale`` ignored); ``a``: prompted, but every shot alone (no attention to other shots; ``None``: no history
    term). The history term pushes a shot towards what the other shots imply beyond what its prompt does (history
    guidance, Song et al. 2025, "History-Guided Video Diffusion"); ``history_scale = 0`` is plain classifier-free
    guidance. ``w``: a weaker model given the same inputs (``None``: no autoguidance); its term moves every step away
    from what the weak model predicts (autoguidance, Karras et al. 2024, "Guiding a Diffusion Model with a Bad
    Version of Itself"). Each function is called once per step.
    """

    def fn(latents: list[Tensor], t_row: Tensor) -> list[Tensor]:
        c = cond(latents, t_row)
        a = alone(latents, t_row) if alone is not None and history_scale else None
        u = uncond(latents, t_row) if uncond is not None else None
        w = weak(latents, t_row) if weak is not None and weak_scale else None
        out = []
        for k, ck in enumerate(c):
            v = ck if u is None else u[k] + scale * (ck - u[k])
            if a is not None:
                v = v + history_scale * (ck - a[k])
            if w is not None:
                v = v + weak_scale * (ck - w[k])
            out.append(v)
        return out

    return fn


def write_kv_cache(
    model: Any, cache: KVCache, segments: Sequence[Segment], latents: Sequence[Tensor], context: Tensor | None,
    t: Tensor, *, policy: Any = None, backend: str = "auto",
) -> None:
    """One forward over ``segments`` (appended after the cache) with ``cache_write=True``: their K/V join the cache.

    ``latents``: the new visual segments' latents (e.g. a finished shot at ``t_c``), ``[]`` for text-only segments;
    ``t``: ``[B, n_shots]`` over the full layout (cached + new shots).
    """
    layout = cache.full_layout(list(segments))
    with torch.no_grad():
        model(list(latents) if latents else None, t, context, layout, policy=policy, backend=backend, kv_cache=cache,
              cache_write=True)
