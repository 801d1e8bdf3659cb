"""Train StoryCLIP on StoryWorld shots: ``python -m storyreel.eval.storyclip_train --help``.

Symmetric InfoNCE with a learnable temperature after CLIP (Radford et al. 2021, "Learning
Transferable Visual Models From Natural Language Supervision").

Data: a pool of StoryWorld scenes rendered once into memory (64×64, 16 frames, 2–8 shots, long
takes with p = 0.1), scene seeds ``train_seed_base + j`` for ``j < train_scenes``; held-out scenes
use ``heldout_seed_base + j`` (default 30,000,000 + j), a disjoint range that the config checks.
The text of a shot is :func:`storyreel.eval.storyclip.shot_text` (characters expanded by their
global descriptions, plus the setting); its frozen MiniLM token states are computed once per
distinct text. Batches take up to ``shots_per_scene`` shots of each scene they draw, so shots of
one scene (same characters, same setting, different actions / shot types) are each other's hard
negatives; shots with identical texts count as positives of each other. Each shot also gets one
counterfactual caption (hard negative text after NegCLIP — Yuksekgonul et al. 2023, "When and Why
Vision-Language Models Behave like Bags-of-Words"): one character's action changed (p = 0.5), a
colour changed or two colours swapped (0.2), a shape changed (0.15) or the shot type changed
(0.15); these texts join the video→text softmax as extra negatives, which pushes the video
encoder to see actions and colour–shape binding, not only colours and the setting. Batches, frame offsets
and the initialisation depend only on ``seed`` and the step, so a resumed run sees the same data.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from storyreel.eval.storyclip import (
    DEFAULT_STORYCLIP,
    STORYCLIP_CONFIGS,
    StoryCLIP,
    expand_prompt,
    prepare_clips,
    retrieval_accuracy,
    scene_texts,
)
from storyreel.utils import atomic_path, atomic_write, seed_everything

__all__ = ["HELDOUT_SEED_BASE", "TRAIN_SEED_BASE", "ShotPool", "StoryCLIPTrainConfig", "TrainResult",
           "contrastive_loss", "counterfactual_text", "encode_pool_texts", "heldout_galleries", "main", "render_pool", "train_storyclip"]

TRAIN_SEED_BASE = 20_000_000
HELDOUT_SEED_BASE = 30_000_000
CHECKPOINT_NAME = "storyclip-checkpoint.pt"


@dataclass(frozen=True, kw_only=True)
class StoryCLIPTrainConfig:
    """Training run. Seeds: train scenes ``train_seed_base + j`` (j < train_scenes), held-out
    scenes ``heldout_seed_base + j`` (j < heldout_scenes); the two ranges must not overlap."""

    model: str = "default"
    out: str = str(DEFAULT_STORYCLIP)
    checkpoint_dir: str = "runs/storyclip"
    train_scenes: int = 1500
    train_seed_base: int = TRAIN_SEED_BASE
    heldout_seed_base: int = HELDOUT_SEED_BASE
    heldout_scenes: int = 10_000
    resolution: int = 64
    clip_frames: int = 16
    long_take_prob: float = 0.1
    steps: int = 800
    batch_size: int = 64
    shots_per_scene: int = 4
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 40
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    eval_galleries: int = 10
    max_minutes: float = 0.0
    device: str = "cpu"
    threads: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, allowed: str) -> None:
            if not ok:
                raise ValueError(f"StoryCLIPTrainConfig.{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        check("model", self.model in STORYCLIP_CONFIGS, f"one of {sorted(STORYCLIP_CONFIGS)}")
        for name in ("train_scenes", "steps", "batch_size", "shots_per_scene", "checkpoint_every", "clip_frames"):
            check(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 1, "an int >= 1")
        for name in ("train_seed_base", "heldout_seed_base", "seed", "warmup", "threads", "heldout_scenes",
                     "eval_galleries"):
            check(name, isinstance(getattr(self, name), int) and getattr(self, name) >= 0, "an int >= 0")
        check("batch_size", self.batch_size >= 2, "an int >= 2 (contrastive batches need negatives)")
        check("resolution", 32 <= self.resolution <= 256 and self.resolution % 8 == 0, "32..256, a multiple of 8")
        check("long_take_prob", 0.0 <= self.long_take_prob <= 1.0, "a float in [0, 1]")
        check("lr", self.lr > 0, "a float > 0")
        check("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "a float in [0, 1]")
        check("weight_decay", self.weight_decay >= 0, "a float >= 0")
        check("grad_clip", self.grad_clip > 0, "a float > 0")
        check("max_minutes", self.max_minutes >= 0, "a float >= 0 (0 = no limit)")
        check("device", self.device == "cpu" or self.device.startswith("cuda"), "'cpu', 'cuda' or 'cuda:N'")
        a0, a1 = self.train_seed_base, self.train_seed_base + self.train_scenes
        b0, b1 = self.heldout_seed_base, self.heldout_seed_base + self.heldout_scenes
        check("heldout_seed_base", a1 <= b0 or b1 <= a0,
              f"a seed range disjoint from the training seeds {a0}..{a1 - 1} (held-out would be {b0}..{b1 - 1})")


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class ShotPool:
    """Rendered shots: ``clips [N, T, H, W, 3]`` uint8, ``text_ids [N]`` into ``texts`` (distinct),
    ``neg_ids [N]`` the shot's counterfactual caption (:func:`counterfactual_text`) in ``texts``,
    ``scene [N]`` scene index, ``seeds [S]`` scene seeds; ``states [U, L, 384]`` fp16 and
    ``mask [U, L]`` the frozen token states of ``texts`` (filled by :func:`encode_pool_texts`)."""

    clips: np.ndarray
    texts: list[str]
    text_ids: np.ndarray
    neg_ids: np.ndarray
    scene: np.ndarray
    seeds: np.ndarray
    states: torch.Tensor | None = None
    mask: torch.Tensor | None = None


def _scene(seed: int, resolution: int, frames: int, long_take_prob: float) -> Any:
    from storyreel.world import sample_scene

    return sample_scene(int(seed), resolution=(resolution, resolution), frames=frames, long_take_prob=long_take_prob)


def counterfactual_text(spec: Any, i: int, rng: np.random.Generator) -> str:
    """A caption of shot ``i`` of ``spec`` that is wrong in one detail (see the module docstring).

    Same form as :func:`storyreel.eval.storyclip.shot_text`; never equal to the true caption.
    """
    from storyreel.world.vocab import COLORS, EVENTS, SHAPES, SHOT_TYPES, character_description, shot_caption

    shot = spec.shots[i]
    looks = {c.index: (c.color, c.shape) for c in spec.characters}
    events, shot_type = dict(shot.events), shot.shot_type
    present = list(events)
    kinds = ["action", "colour", "shape", "type"] if present else ["type"]
    probs = np.array([0.5, 0.2, 0.15, 0.15])[: len(kinds)] if present else np.ones(1)
    kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
    n = present[int(rng.integers(len(present)))] if present else 0
    if kind == "action":
        events[n] = str(rng.choice([e for e in EVENTS if e != events[n]]))
    elif kind == "colour" and len(present) >= 2:
        a, b = present[0], present[1]
        (ca, sa), (cb, sb) = looks[a], looks[b]
        if ca != cb and (sa != sb):
            looks[a], looks[b] = (cb, sa), (ca, sb)  # colours swapped between the two characters
        else:
            looks[n] = (str(rng.choice([c for c in COLORS if c != looks[n][0]])), looks[n][1])
    elif kind == "colour":
        used = {c for c, _ in looks.values()}
        looks[n] = (str(rng.choice([c for c in COLORS if c not in used])), looks[n][1])
    elif kind == "shape":
        looks[n] = (looks[n][0], str(rng.choice([x for x in SHAPES if x != looks[n][1]])))
    else:
        shot_type = str(rng.choice([t for t in SHOT_TYPES if t != shot_type]))
    described = {k: character_description(c, sh) for k, (c, sh) in looks.items()}
    return expand_prompt(shot_caption(shot_type, events), described, f"a {spec.setting}")


def render_pool(seeds: list[int], *, resolution: int = 64, frames: int = 16, long_take_prob: float = 0.1,
                progress: bool = True) -> ShotPool:
    """Render every shot of the StoryWorld scenes ``sample_scene(seed, ...)`` for ``seeds`` into memory."""
    from storyreel.world import render_scene, scene_to_script

    specs = [_scene(s, resolution, frames, long_take_prob) for s in seeds]
    n = sum(len(s.shots) for s in specs)
    clips = np.empty((n, frames, resolution, resolution, 3), dtype=np.uint8)  # [N, T, H, W, 3]
    text_index: dict[str, int] = {}
    text_ids, neg_ids, scene = (np.empty(n, dtype=np.int64) for _ in range(3))
    k = 0
    for j, spec in enumerate(tqdm(specs, disable=not progress, unit="scene", desc="render")):
        rendered = render_scene(spec)
        for i, text in enumerate(scene_texts(scene_to_script(spec))):
            clips[k] = rendered.shots[i].frames
            text_ids[k] = text_index.setdefault(text, len(text_index))
            neg = counterfactual_text(spec, i, np.random.default_rng([spec.seed, i]))
            neg_ids[k] = text_index.setdefault(neg, len(text_index))
            scene[k] = j
            k += 1
    return ShotPool(clips=clips, texts=list(text_index), text_ids=text_ids, neg_ids=neg_ids, scene=scene,
                    seeds=np.asarray(seeds, dtype=np.int64))


def encode_pool_texts(pool: ShotPool, model: StoryCLIP, *, chunk: int = 256, progress: bool = True,
                      cache_dir: str | Path | None = None) -> ShotPool:
    """Fill ``pool.states`` / ``pool.mask`` with the frozen encoder's token states of ``pool.texts``.

    With ``cache_dir``, the states are kept in ``text-states-<hash>.pt`` there (the hash covers the
    texts, the encoder and its length), so a resumed or repeated run does not encode them again.
    """
    mc = model.config
    key = hashlib.sha256("\n".join([mc.text_encoder, str(mc.text_max_length), str(mc.text_dim), *pool.texts])
                         .encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"text-states-{key}.pt" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        pool.states, pool.mask = saved["states"], saved["mask"]
        return pool
    encoder = model.text_encoder()
    states, masks = [], []
    for s in tqdm(range(0, len(pool.texts), chunk), disable=not progress, unit="chunk", desc="text states"):
        ts = encoder.encode(pool.texts[s : s + chunk])
        states.append(ts.states.half().cpu())  # [c, L, 384]
        masks.append(ts.mask.cpu())  # [c, L]
    encoder.clear_cache()
    pool.states, pool.mask = torch.cat(states), torch.cat(masks)
    if cache is not None:
        with atomic_path(cache) as tmp:
            torch.save({"states": pool.states, "mask": pool.mask}, tmp)
    return pool


def heldout_galleries(n_galleries: int, gallery_size: int = 32, *, seed_base: int = HELDOUT_SEED_BASE,
                      pick_seed: int = 0, resolution: int = 64, frames: int = 16,
                      long_take_prob: float = 0.1) -> list[tuple[list[np.ndarray], list[str]]]:
    """Retrieval galleries: gallery ``g`` holds one shot (drawn with ``pick_seed``) of each of the
    scenes ``seed_base + g·gallery_size + k``, ``k < gallery_size`` — every shot from another scene.
    Returns ``[(clips uint8 [T, H, W, 3] each, texts)]``."""
    from storyreel.world import render_scene, scene_to_script

    out = []
    for g in range(n_galleries):
        clips, texts = [], []
        for k in range(gallery_size):
            spec = _scene(seed_base + g * gallery_size + k, resolution, frames, long_take_prob)
            i = int(np.random.default_rng([pick_seed, g, k]).integers(len(spec.shots)))
            clips.append(render_scene(spec).shots[i].frames)
            texts.append(scene_texts(scene_to_script(spec))[i])
        out.append((clips, texts))
    return out


def _batch(pool: ShotPool, cfg: StoryCLIPTrainConfig, step: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Shot indices ``[B]`` (up to ``shots_per_scene`` per drawn scene) and frame indices ``[B, frames]``."""
    rng = np.random.default_rng([cfg.seed, step])
    by_scene = np.split(np.arange(len(pool.scene)), np.flatnonzero(np.diff(pool.scene)) + 1)
    picked: list[int] = []
    for j in rng.permutation(len(by_scene)):
        shots = by_scene[j]
        take = rng.permutation(shots)[: cfg.shots_per_scene]
        picked.extend(take[: cfg.batch_size - len(picked)].tolist())
        if len(picked) == cfg.batch_size:
            break
    idx = np.asarray(picked)
    t = pool.clips.shape[1]
    if frames > 1 and t >= frames:  # evenly strided frames from a random start (augmentation)
        base = np.arange(frames) * ((t - 1) // (frames - 1))
    else:  # clips shorter than the model's frame count: repeat frames
        base = np.linspace(0, t - 1, frames).round().astype(np.int64)
    offsets = rng.integers(0, t - int(base[-1]), size=len(idx))
    return idx, base[None, :] + offsets[:, None]  # [B], [B, frames]


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, text_ids: torch.Tensor,
                     neg_text: torch.Tensor | None = None,
                     neg_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over unit vectors ``video [B, D]``, ``text [B, D]``; items with equal
    ``text_ids [B]`` are positives of each other. ``neg_text [K, D]`` (ids ``neg_ids [K]``) are
    extra texts in the video→text softmax (positives where their id equals the clip's text id).
    Returns (loss, text→video in-batch top-1)."""
    logits = scale * text @ video.T  # [B texts, B clips]
    same = (text_ids[:, None] == text_ids[None, :]).float()  # [B, B]
    t2v = -(same / same.sum(dim=1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    v_logits, v_same = logits.T, same  # [B clips, B texts]
    if neg_text is not None and neg_ids is not None:
        v_logits = torch.cat([v_logits, scale * video @ neg_text.T], dim=1)  # [B, B + K]
        v_same = torch.cat([same, (text_ids[:, None] == neg_ids[None, :]).float()], dim=1)
    v2t = -(v_same / v_same.sum(dim=1, keepdim=True) * F.log_softmax(v_logits, dim=1)).sum(1).mean()
    acc = same.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
    return 0.5 * (t2v + v2t), acc


# ----------------------------------------------------------------------------------------------
# training


@dataclass
class TrainResult:
    """Outcome of :func:`train_storyclip`: final step, mean loss of the last 50 steps, wall time,
    held-out retrieval (``t2v_top1``, ``v2t_top1`` over ``eval_galleries`` galleries of 32), paths."""

    step: int
    loss: float
    wall_s: float
    retrieval: dict[str, float]
    out: Path
    history: list[dict[str, float]]


def _lr(cfg: StoryCLIPTrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def _optimizer(model: StoryCLIP, cfg: StoryCLIPTrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith("pos")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not n.endswith("pos"))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.98))


def _run_key(cfg: StoryCLIPTrainConfig) -> dict[str, Any]:
    """Config fields that must match for a checkpoint to be resumed."""
    skip = {"out", "checkpoint_dir", "steps", "max_minutes", "device", "threads", "resume", "progress", "eval_galleries",
            "checkpoint_every"}
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}


def _save_checkpoint(path: Path, model: StoryCLIP, opt: torch.optim.Optimizer, step: int, cfg: StoryCLIPTrainConfig,
                     history: list[dict[str, float]], wall_s: float) -> None:
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "run": _run_key(cfg),
               "history": history, "wall_s": wall_s}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def evaluate(model: StoryCLIP, galleries: list[tuple[list[np.ndarray], list[str]]]) -> dict[str, float]:
    """Mean top-1 retrieval over galleries (see :func:`heldout_galleries`)."""
    model.eval()
    res = [retrieval_accuracy(model, clips, texts) for clips, texts in galleries]
    return {"t2v_top1": float(np.mean([r["t2v_top1"] for r in res])),
            "v2t_top1": float(np.mean([r["v2t_top1"] for r in res])), "queries": float(sum(r["n"] for r in res))}


def train_storyclip(cfg: StoryCLIPTrainConfig) -> TrainResult:
    """Train StoryCLIP (resuming from ``checkpoint_dir`` when allowed) and export fp16 weights to ``cfg.out``."""
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    seed_everything(cfg.seed)
    model = StoryCLIP(STORYCLIP_CONFIGS[cfg.model]).to(device)
    opt = _optimizer(model, cfg)
    ckpt = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME
    start, history, wall_before = 0, [], 0.0
    if cfg.resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        if state["run"] != _run_key(cfg):
            diff = sorted(k for k in _run_key(cfg) if state["run"].get(k) != _run_key(cfg)[k])
            raise ValueError(f"checkpoint {ckpt} was written by a run with other settings ({', '.join(diff)}); "
                             "use the same settings, another --checkpoint-dir, or --no-resume to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, history, wall_before = int(state["step"]), list(state["history"]), float(state["wall_s"])
    train_seeds = [cfg.train_seed_base + j for j in range(cfg.train_scenes)]
    pool = render_pool(train_seeds, resolution=cfg.resolution, frames=cfg.clip_frames,
                       long_take_prob=cfg.long_take_prob, progress=cfg.progress)
    encode_pool_texts(pool, model, progress=cfg.progress, cache_dir=cfg.checkpoint_dir)
    prep_s = time.perf_counter() - t_start
    assert pool.states is not None and pool.mask is not None
    mc = model.config
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc="storyclip", disable=not cfg.progress, dynamic_ncols=True)
    step, recent = start, [h["loss"] for h in history[-50:]]
    model.train()
    while step < cfg.steps:
        if cfg.max_minutes and wall_before + time.perf_counter() - t_start > 60 * cfg.max_minutes:
            bar.write(f"time limit of {cfg.max_minutes} min reached at step {step}; stopping")
            break
        idx, fidx = _batch(pool, cfg, step, mc.frames)
        video = prepare_clips(pool.clips[idx[:, None], fidx], frames=mc.frames, size=mc.size).to(device)  # [B, 3, F, S, S]
        tids = torch.from_numpy(pool.text_ids[idx]).to(device)  # [B]
        nids = torch.from_numpy(pool.neg_ids[idx]).to(device)  # [B] counterfactual captions
        both = torch.cat([tids, nids]).cpu()  # [2B]
        states, mask = pool.states[both].to(device), pool.mask[both].to(device)  # [2B, L, 384], [2B, L]
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        text = model.text_features(states, mask)  # [2B, D]
        b = len(idx)
        loss, acc = contrastive_loss(model.video_features(video), text[:b], model.scale(), tids, text[b:], nids)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower --lr or resume from the checkpoint")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        loss_v, acc_v, scale_v = loss.item(), acc.item(), model.scale().item()
        history.append({"step": step, "loss": loss_v, "acc": acc_v, "scale": scale_v})
        recent = (recent + [loss_v])[-50:]
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(recent):.3f}", acc=f"{acc_v:.2f}", scale=f"{scale_v:.1f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            _save_checkpoint(ckpt, model, opt, step, cfg, history, wall_before + time.perf_counter() - t_start)
    bar.close()
    if step != start and step % cfg.checkpoint_every:
        _save_checkpoint(ckpt, model, opt, step, cfg, history, wall_before + time.perf_counter() - t_start)
    retrieval = evaluate(model, heldout_galleries(cfg.eval_galleries, seed_base=cfg.heldout_seed_base,
                                                  resolution=cfg.resolution, frames=cfg.clip_frames,
                                                  long_take_prob=cfg.long_take_prob)) if cfg.eval_galleries else {}
    wall = wall_before + time.perf_counter() - t_start
    loss_now = float(np.mean(recent)) if recent else float("nan")
    extra = {"training": {"steps": step, "loss_last50": loss_now, "wall_s": round(wall, 1),
                          "data_prep_s_last_session": round(prep_s, 1), "device": cfg.device,
                          "train_scenes": cfg.train_scenes, "train_shots": int(len(pool.scene)),
                          "distinct_texts": len(pool.texts),
                          "train_seeds": f"{cfg.train_seed_base}..{cfg.train_seed_base + cfg.train_scenes - 1}",
                          "heldout_seed_base": cfg.heldout_seed_base, "batch_size": cfg.batch_size,
                          "heldout_retrieval": retrieval, "config": dataclasses.asdict(cfg)}}
    out = model.save_pretrained(cfg.out, extra=extra)
    log = Path(cfg.checkpoint_dir) / "history.json"
    with atomic_write(log, "w") as fh:
        json.dump({"history": history, **extra}, fh)
    return TrainResult(step=step, loss=loss_now, wall_s=wall, retrieval=retrieval, out=out, history=history)


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    """``python -m storyreel.eval.storyclip_train [--steps N] [--device cuda] ...`` (one flag per config field)."""
    parser = argparse.ArgumentParser(prog="python -m storyreel.eval.storyclip_train",
                                     description="Train StoryCLIP on StoryWorld shots and export fp16 weights "
                                                 "(default: storyreel/weights/storyclip).")
    for f in dataclasses.fields(StoryCLIPTrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default, help=f"(default: {f.default})")
    args = vars(parser.parse_args(argv))
    try:
        cfg = StoryCLIPTrainConfig(**args)
        result = train_storyclip(cfg)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"done: step {result.step}, loss {result.loss:.4f}, {result.wall_s:.0f} s, held-out retrieval "
          f"{result.retrieval}; weights in {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
