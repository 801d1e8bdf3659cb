"""Copy or recall? Does a scene model carry a character's unspoken pattern from earlier shots, or recall it?

    python benchmarks/copy_or_recall.py --model outputs/train/overfit64/model --data-seed 7 --scenes 64 --device cuda

Shot 4 of a StoryWorld scene is generated from shots 1-3 given as clean history (`mode="extend"`), twice:
- with the history as drawn. The share of shot 4's characters that keep the history's pattern is the
  "last shot from ground-truth history" row of `default_model.py`;
- with the history rendered after swapping every character's pattern (solid → stripes, dots → stripes,
  stripes → solid). Prompts, shapes, colours, layout and motion are unchanged, and the prompts never state a
  pattern.

A model that reads the pattern from the history follows the swap. A model that memorised the scene (on scenes it
was trained on) draws the scene's own pattern instead. The scenes are those of a training dataset,
`synth_storyworld(seed=--data-seed)`: the first `--n` of its first `--scenes` with at least 4 shots, cut to 4
shots. For the shipped default and for held-out behaviour use `--data-seed` of a dataset the model never saw.
Findings: `benchmarks/results/default-model.md`, "What binds".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from _machine import cpu_name, emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from default_model import MemoryRun  # noqa: E402

from storyreel.data.synth import scene_seed  # noqa: E402
from storyreel.eval import score_scene  # noqa: E402
from storyreel.pipelines.scene import DEFAULT_PIPELINE_DIR, PIPELINE_FILE, PipelineDefaults, ScenePipeline  # noqa: E402
from storyreel.world import render_scene, sample_scene, scene_to_script  # noqa: E402

SWAP = {"solid": "stripes", "dots": "stripes", "stripes": "solid"}
FOLLOWS, OWN = "follows history", "draws the scene's own"


def training_specs(data_seed: int, scenes: int, n: int, *, long_take_prob: float = 0.1) -> list:
    """The first ``n`` scenes among ``synth_storyworld(seed=data_seed)``'s first ``scenes`` (64 px, 16 frames) with
    at least 4 cut shots, cut to their first 4 shots (rendered exactly as in the dataset)."""
    out = []
    for j in range(scenes):
        spec = sample_scene(scene_seed(data_seed, j), resolution=(64, 64), frames=16, fps=8, long_take_prob=long_take_prob)
        if len(spec.shots) >= 4:
            spec = dataclasses.replace(spec, shots=spec.shots[:4])
            if all(s.cut for s in spec.shots):
                out.append(spec)
        if len(out) == n:
            break
    return out


def swapped(spec):
    """``spec`` with every character's pattern replaced by :data:`SWAP`'s (everything else unchanged)."""
    return dataclasses.replace(spec, characters=tuple(dataclasses.replace(c, pattern=SWAP[c.pattern]) for c in spec.characters))


def tally(video: list, spec, shown) -> Counter:
    """For each character of the last shot that the history shows too: ``n``, whether the last shot's detected pattern
    is the one ``shown`` in the history (``follows history``) and, where that differs from the scene's own, whether
    it is the scene's own (``draws the scene's own``). ``shown``: the spec the history was rendered from."""
    script, last = scene_to_script(spec), len(spec.shots) - 1
    own = {c.index: c.pattern for c in spec.characters}
    seen = {c.index: c.pattern for c in shown.characters}
    c: Counter = Counter()
    for it in score_scene(video, script)["appearance_consistency"].items:
        if last in it["shots"] and len(it["shots"]) >= 2:
            got = it["patterns"][it["shots"].index(last)]
            c["n"] += 1
            c[FOLLOWS] += got == seen[it["character"]]
            if seen[it["character"]] != own[it["character"]]:
                c[OWN] += got == own[it["character"]]
    return c


def run(pipe: ScenePipeline, specs: list, *, swap: bool) -> Counter:
    total: Counter = Counter()
    for spec in specs:
        shown = swapped(spec) if swap else spec
        history = [s.frames for s in render_scene(shown).shots][:-1]
        h, w = history[0].shape[1:3]
        video = pipe.generate(scene_to_script(spec), mode="extend", writer=MemoryRun(history, w, h)).videos
        total += tally(video, spec, shown)
    return total


def _share(c: Counter, key: str) -> str:
    return f"{c[key] / c['n']:.3f}" if c["n"] else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["default"], help="pipelines or trained model folders to compare")
    ap.add_argument("--autoencoder", default=None, help="for a trained model folder: ship this decoder (as in export)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-seed", type=int, default=7, help="synth_storyworld seed of the scenes")
    ap.add_argument("--scenes", type=int, default=64, help="scenes of that dataset to look at")
    ap.add_argument("--n", type=int, default=29, help="scenes to score (those with >= 4 cut shots)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    specs = training_specs(args.data_seed, args.scenes, args.n)
    rows, t0 = [], time.perf_counter()
    for name in args.model:
        path = Path(name)
        if name not in ("default", "debug") and not (path / PIPELINE_FILE).is_file():
            pipe = ScenePipeline.from_model_folders(path, device=args.device, autoencoder=args.autoencoder)
            shipped = json.loads((DEFAULT_PIPELINE_DIR / PIPELINE_FILE).read_text())["defaults"]
            pipe.defaults = PipelineDefaults(**shipped)  # sample as the shipped default does
        else:
            pipe = ScenePipeline.from_pretrained(name, device=args.device)
        kept, swap = run(pipe, specs, swap=False), run(pipe, specs, swap=True)
        rows.append(f"| {name} | {_share(kept, FOLLOWS)} (n={kept['n']}) | {_share(swap, FOLLOWS)} | {_share(swap, OWN)} "
                    f"(n={swap['n']}) |")
        print(rows[-1], flush=True)
    lines = [
        "# Copy or recall",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu_name()}, torch {torch.__version__}, device {args.device}",
        f"- {len(specs)} scenes of synth_storyworld(seed={args.data_seed}) (first {args.scenes}), 4 shots; wall time "
        f"{time.perf_counter() - t0:.0f} s",
        f"- command: `python benchmarks/copy_or_recall.py --model {' '.join(args.model)} --data-seed {args.data_seed} "
        f"--scenes {args.scenes} --n {args.n}" + (f" --autoencoder {args.autoencoder}" if args.autoencoder else "")
        + (f" --device {args.device}" if args.device != "cpu" else "") + "`",
        "",
        "| model | history as drawn: shot 4 keeps its pattern | swapped history: shot 4 follows it | ... draws the scene's own |",
        "| --- | --- | --- | --- |",
        *rows,
    ]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
