"""Host-side cost of one model call: ATen operations issued per forward of the scene model.

    python benchmarks/dispatch.py --out benchmarks/results/dispatch.md

A small model on a GPU is bound by what the host issues, not by arithmetic: every top-level ATen operation is a
trip through the dispatcher (and most are a kernel launch), ~5-15 µs each, so a forward costs about
``ops × that`` whatever the sequence length. This is why the shipped default's causal KV cache barely changes its
GPU time per shot (benchmarks/results/generation-gpu.md) and why even the 2 B ``large`` preset stays short of the
FLOP model there (generation-gpu-large.md). The count does not depend on the device, so it is measured here on
the CPU: one forward of the shipped default's scene model in joint mode (4 shots, CFG and history guidance
branches are separate calls) and one of its causal model for the last shot of an 8-shot scene with the KV cache.
It also times a forward of both at a tiny width, where host overhead is all there is.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from _machine import cpu_name, emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from storyreel.pipelines.scene import ScenePipeline  # noqa: E402
from storyreel.script import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def top_level_ops(prof) -> int:  # noqa: ANN001
    """ATen operations not issued by another ATen operation (what the Python side dispatches)."""
    n = 0
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        n += p is None
    return n


def probe(pipe: ScenePipeline, script, *, mode: str, pick) -> tuple[int, float]:  # noqa: ANN001
    """(top-level ATen ops, host milliseconds) of the first forward of the mode's model for which
    ``pick(layout, kwargs, index)`` is true while generating ``script`` with 3 steps; the timed forward is a
    second, unprofiled run of the same call."""
    model = pipe.causal if mode == "causal" else pipe.scene
    seen = {"i": 0, "ops": 0, "ms": 0.0}
    forward = model.forward

    def wrapped(*a, **k):  # noqa: ANN002, ANN003, ANN202
        seen["i"] += 1
        if seen["ops"] or not pick(a[3], k, seen["i"]):
            return forward(*a, **k)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward(*a, **k)
        seen["ops"] = top_level_ops(prof)
        t0 = time.perf_counter()
        out = forward(*a, **k)
        seen["ms"] = 1000 * (time.perf_counter() - t0)
        return out

    model.forward = wrapped
    try:
        pipe.generate(script, steps=3, mode=mode)
    finally:
        del model.forward
    if not seen["ops"]:
        raise RuntimeError(f"{mode}: no model call matched")
    return seen["ops"], seen["ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--label", default="", help="a note for the results line (e.g. the commit measured)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = ScenePipeline.from_pretrained(args.model, device="cpu")
    demo = load_script(ROOT / "examples" / "meeting-4shots.yaml")
    chase = load_script(ROOT / "examples" / "chase-8shots.yaml")
    calls_per_step = (2 if pipe.defaults.guidance != 1.0 else 1) + (1 if pipe.defaults.history_guidance else 0)
    rows = []
    ops, ms = probe(pipe, demo, mode="joint", pick=lambda layout, kw, i: i > calls_per_step)  # a second-step call
    rows.append(("joint, 4 shots (one call)", ops, ms))
    # causal: a sampling call (not a cache write) of the last shot, with the 7 earlier ones in the KV cache
    last = lambda layout, kw, i: kw.get("kv_cache") is not None and not kw.get("cache_write") and layout.n_shots == 8  # noqa: E731
    ops, ms = probe(pipe, chase, mode="causal", pick=last)
    rows.append(("causal with KV cache, shot 8 of 8 (one call)", ops, ms))
    depth = len(pipe.scene.blocks)
    lines = [
        "# Host-side operations per model call",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC{' — ' + args.label if args.label else ''}",
        f"- machine: {cpu_name()}, 1 thread; python {platform.python_version()}, torch {torch.__version__}",
        f"- model: {pipe.name} ({depth} blocks); steps 3; the CPU time is of the whole forward, arithmetic included",
        "- command: `python benchmarks/dispatch.py`",
        "",
        "| call | top-level ATen ops | per block | CPU time |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {ops} | {ops / depth:.0f} | {ms:.1f} ms |" for name, ops, ms in rows],
        "",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
