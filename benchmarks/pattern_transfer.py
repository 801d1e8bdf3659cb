"""Where pattern transfer from history is lost: the model's belief about a character's pattern at every noise level.

    python benchmarks/pattern_transfer.py --n 20 --out benchmarks/results/pattern-transfer.md

Setting of the `last shot from ground-truth history` row of `default_model.py`: shots 1-3 of a held-out script
are the ground-truth renders, held as clean history (`mode="extend"`), and the model generates shot 4 with the
pipeline's sampler (rectified-flow Euler, CFG and history guidance as shipped). At every step the sampler's own
estimate of the clean shot, `x0 = x_t - t·v` (v the guided velocity), is decoded and measured like a finished
video: for each character of shot 4 that also appears in the history, the dark share of its body
(`storyreel.eval`: 0 solid, 0.15 dots, 0.45 stripes when drawn) and whether its pattern class equals the one in
the history.

Reading: if the model copies patterns, the rows for the three true patterns separate early (high t) and the
agreement climbs to the end; if it does not, the dark shares stay near one average and agreement stays near
what drawing the pattern anew gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import cpu_name, emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from default_model import MemoryRun, held_out, load_text_cache, through_autoencoder  # noqa: E402

import storyreel.sampling.strategies as strategies  # noqa: E402
from storyreel.eval import score_scene  # noqa: E402
from storyreel.pipelines.scene import ScenePipeline  # noqa: E402
from storyreel.scene_inputs import decode_frames  # noqa: E402
from storyreel.world import render_script  # noqa: E402

PATTERNS = ("solid", "dots", "stripes")


class Recorder:
    """Stands in for ``strategies.sample_segments`` (Euler only): the library's own integration, with the model
    function wrapped so that at every step the clean estimate ``x - t·v`` of the last segment (the shot being
    generated) is kept."""

    def __init__(self, sample_segments=strategies.sample_segments) -> None:  # noqa: ANN001
        self._sample = sample_segments
        self.estimates: list[tuple[float, torch.Tensor]] = []

    def __call__(self, model_fn, latents, seg_shot, timesteps, *, solver="euler", callback=None):  # noqa: ANN001
        if solver != "euler":
            raise ValueError("the probe records one estimate per step, i.e. Euler, the shipped solver")
        shot = list(seg_shot)[-1]
        self.estimates = []

        def recording(lat, t_row):  # noqa: ANN001
            v = model_fn(lat, t_row)
            t = t_row[:, shot].reshape(-1, *([1] * (lat[-1].ndim - 1))).to(lat[-1])
            self.estimates.append((float(t_row[:, shot].max()), (lat[-1] - t * v[-1]).clone()))
            return v

        out = self._sample(recording, latents, seg_shot, timesteps, solver=solver, callback=callback)
        self.estimates.append((0.0, out[-1].clone()))
        return out


def last_shot_patterns(video: list, script, last: int) -> list[tuple[str, str, float]]:
    """``(pattern in the history, pattern in shot last, its dark share)`` of every character of shot ``last`` that the
    history shows too, from the appearance-consistency items of ``video``."""
    found = []
    for it in score_scene(video, script)["appearance_consistency"].items:
        if last in it["shots"] and len(it["shots"]) >= 2:
            j = it["shots"].index(last)
            history = next(p for s, p in zip(it["shots"], it["patterns"]) if s != last)
            found.append((history, it["patterns"][j], float(it["dark_share"][j])))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=20, help="held-out scripts (4 shots each)")
    ap.add_argument("--first", type=int, default=0, help="index of the first held-out script")
    ap.add_argument("--every", type=int, default=4, help="decode the clean estimate every this many steps (and the end)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the pipeline's)")
    ap.add_argument("--history-guidance", type=float, default=None, help="history guidance weight (default: the pipeline's)")
    ap.add_argument("--text-cache", type=Path, default=None, help="prompt states written by default_model.py --write-text-cache")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    pipe = ScenePipeline.from_pretrained(args.model, device=args.device)
    if args.text_cache is not None:
        load_text_cache(pipe, args.text_cache)
    if args.guidance is not None:
        pipe.defaults = dataclasses.replace(pipe.defaults, guidance=args.guidance)
    if args.history_guidance is not None:
        pipe.defaults = dataclasses.replace(pipe.defaults, history_guidance=args.history_guidance)
    steps = pipe.defaults.steps
    rec = Recorder()
    strategies.sample_segments = rec  # sample_autoregressive (extend mode) looks it up at call time
    dark: dict[tuple[float, str], list[float]] = defaultdict(list)
    agree: dict[float, list[bool]] = defaultdict(list)
    confusion: dict[tuple[str, str], int] = defaultdict(int)  # (pattern in the history, pattern drawn in shot 4)
    confusion_ae: dict[tuple[str, str], int] = defaultdict(int)  # the same for the true shot 4 through the autoencoder
    t0 = time.perf_counter()
    for k, script in enumerate(held_out(args.n, args.first)):
        truth = [s.frames for s in render_script(script).shots]
        width, height = truth[0].shape[2], truth[0].shape[1]
        pipe.generate(script, mode="extend", steps=steps, writer=MemoryRun(truth[:-1], width, height))
        last = script.n_shots - 1
        ae_last = through_autoencoder(pipe, truth[-1:])[0]  # the ceiling: shot 4 as drawn, through the autoencoder
        for true_pat, got, _ in last_shot_patterns([*truth[:-1], ae_last], script, last):
            confusion_ae[(true_pat, got)] += 1
        for i, (t, x0) in enumerate(rec.estimates):
            if i % args.every and i != len(rec.estimates) - 1:
                continue
            frames = decode_frames(pipe.autoencoder, x0, truth[-1].shape[0], latent_scale=pipe.latent_scale)
            for true_pat, got, share in last_shot_patterns([*truth[:-1], frames], script, last):
                dark[(t, true_pat)].append(share)
                agree[t].append(got == true_pat)
                if t == 0.0:
                    confusion[(true_pat, got)] += 1
        print(f"{k + 1}/{args.n} scripts, {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0

    ts = sorted(agree, reverse=True)
    lines = [
        "# Pattern transfer from ground-truth history, step by step",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu_name()}, torch {torch.__version__}, device {args.device}",
        f"- model: {pipe.name}; {args.n} held-out scripts (seeds {10_000_000 + args.first}…{10_000_000 + args.first + args.n - 1}); "
        f"steps {steps}, guidance {pipe.defaults.guidance}, history guidance {pipe.defaults.history_guidance:g}; wall time {wall:.0f} s",
        f"- command: `python benchmarks/pattern_transfer.py --n {args.n}" + (f" --first {args.first}" if args.first else "")
        + (f" --model {args.model}" if args.model != "default" else "")
        + (f" --guidance {args.guidance:g}" if args.guidance is not None else "")
        + (f" --history-guidance {args.history_guidance:g}" if args.history_guidance is not None else "") + "`",
        "- shot 4 generated with shots 1-3 as clean ground-truth history; at noise level t the sampler's clean estimate "
        "`x_t - t·v` is decoded and measured; t = 0 is the finished shot. Dark share: 0 solid, 0.15 dots, 0.45 stripes "
        "as drawn; *agreement*: shot 4's detected pattern equals the history's",
        "",
        "| t | mean dark share, true solid | true dots | true stripes | agreement | characters |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for t in ts:
        cells = []
        for p in PATTERNS:
            vals = [d for d in dark[(t, p)] if np.isfinite(d)]
            cells.append(f"{np.mean(vals):.3f} (n={len(vals)})" if vals else "none")
        lines.append(f"| {t:.2f} | " + " | ".join(cells) + f" | {np.mean(agree[t]):.3f} | {len(agree[t])} |")
    lines += ["", "Pattern in the history (rows) against the pattern detected in shot 4 (columns): the generated shot 4 "
              "(t = 0), then the true shot 4 through the autoencoder (what a perfect generator would score).", "",
              "| history \\ shot 4 | " + " | ".join(f"{p} (generated)" for p in PATTERNS) + " | "
              + " | ".join(f"{p} (true, through the AE)" for p in PATTERNS) + " |", "| --- |" + " --- |" * (2 * len(PATTERNS))]
    lines += [f"| {a} | " + " | ".join(str(confusion[(a, b)]) for b in PATTERNS) + " | "
              + " | ".join(str(confusion_ae[(a, b)]) for b in PATTERNS) + " |" for a in PATTERNS]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
