"""StoryWorld render speed: shots per second at the defaults (64×64, 16 frames per shot).

Samples many random scenes, renders warm-up passes (~2 s: shape caches, allocator), then times several
passes over the same scenes and reports the median. Also times sampling, end-to-end sampling +
rendering, long takes and larger resolutions. Writes ``benchmarks/results/storyworld-render.md``.

Usage: ``python benchmarks/storyworld_render.py [--scenes 400] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from storyreel.utils import atomic_write
from storyreel.world import render_scene, sample_scene

from _machine import cores, cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

RESULT = Path(__file__).resolve().parent / "results" / "storyworld-render.md"


def _time_render(specs: list, repeats: int) -> tuple[float, float, float]:
    """Median and best wall-clock shots/s, and median shots per CPU-second, of rendering ``specs``
    (after ~2 s of warm-up passes). CPU time is less disturbed by other processes on a shared machine."""
    shots = sum(len(s.shots) for s in specs)
    t_end = time.perf_counter() + 2.0  # warm-up: shape caches, allocator, CPU clocks (>= 1 pass, ~2 s)
    while True:
        for s in specs:
            render_scene(s)
        if time.perf_counter() >= t_end:
            break
    rates, cpu_rates = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for s in specs:
            render_scene(s)
        rates.append(shots / (time.perf_counter() - t0))
        cpu_rates.append(shots / (time.process_time() - c0))
    return statistics.median(rates), max(rates), statistics.median(cpu_rates)


def _load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=400, help="random scenes per configuration")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes (median reported)")
    ap.add_argument("--out", type=Path, default=RESULT, help="markdown file to write")
    args = ap.parse_args(argv)

    rows: list[tuple[str, ...]] = []

    def run(name: str, **kw) -> float:
        specs = [sample_scene(seed, **kw) for seed in range(args.scenes)]
        med, best, cpu = _time_render(specs, args.repeats)
        shots = sum(len(s.shots) for s in specs)
        rows.append((name, str(shots), f"{med:,.0f}", f"{best:,.0f}", f"{cpu:,.0f}", f"{med * 16:,.0f}"))
        print(f"{name:<40} {shots:>6} shots  median {med:7.0f}  best {best:7.0f}  per CPU-s {cpu:7.0f} shots/s")
        return med

    load0 = _load()
    headline = run("64×64, 16 frames (default)")
    run("64×64, 16 frames, long takes (p=0.5)", long_take_prob=0.5)
    run("128×128, 16 frames", resolution=(128, 128))
    run("256×256, 16 frames", resolution=(256, 256))

    t0 = time.perf_counter()
    specs = [sample_scene(seed) for seed in range(args.scenes)]
    sample_rate = sum(len(s.shots) for s in specs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    shots = 0
    for seed in range(args.scenes, 2 * args.scenes):
        shots += len(render_scene(sample_scene(seed)).shots)
    e2e = shots / (time.perf_counter() - t0)
    print(f"sampling only: {sample_rate:,.0f} shots/s; sample + render (default): {e2e:,.0f} shots/s")

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# StoryWorld render speed",
        "",
        f"- date: {now}",
        f"- machine: {cpu_name()}, {cores()} cores available ({platform.system()} {platform.machine()})",
        f"- python {platform.python_version()}, numpy {np.__version__}",
        f"- method: `python benchmarks/storyworld_render.py --scenes {args.scenes} --repeats {args.repeats}`;"
        f" {args.scenes} random scenes per row (seeds 0..{args.scenes - 1}, 2–8 shots each), ~2 s of"
        f" warm-up passes, then {args.repeats} timed passes of `render_scene` (frames, boxes and character masks),"
        " single process.",
        f"- load average while running (1/5/15 min, before → after): {load0} → {_load()}",
        "",
        "| configuration | shots | shots/s (wall, median) | shots/s (wall, best) | shots per CPU-second | frames/s (wall, median) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        f"Sampling alone: {sample_rate:,.0f} shots/s. Sampling + rendering fresh scenes at the defaults:"
        f" {e2e:,.0f} shots/s.",
        "",
        f"Headline: **{headline:,.0f} shots/s** (wall clock, one process) at 64×64×16 on this machine;"
        " the spec asks for well over 100 shots/s on a 2-core CPU. Other jobs sharing the machine lower"
        " the wall-clock figures (see the load average); shots per CPU-second is the less disturbed number.",
        "",
    ]
    with atomic_write(args.out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
