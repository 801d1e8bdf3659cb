"""GoldenMem (Captain Cinema): history tokens and time per sampling step, with and without compression.

    python benchmarks/goldenmem.py --out benchmarks/results/goldenmem.md [--device cuda]

Layouts are built as the scene pipeline builds them for shot-by-shot generation: the global prompt, then per
history shot its prompt and its latent (all 5 latent frames, or the GoldenMem frames that survive: the k-th
previous frame at 1/φ^k per side, shots with no surviving frame dropped), then the new shot. One "step" is one
forward of the shipped default's scene model (batch 1). Tokens: the whole sequence and the history visuals alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from _machine import cpu_name, emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from storyreel.memory.goldenmem import PHI, goldenmem_sizes  # noqa: E402
from storyreel.nn.layout import Modality, Segment, SequenceLayout  # noqa: E402
from storyreel.pipelines.scene import ScenePipeline  # noqa: E402


def layouts(n_hist: int, *, text_len: int, grid: tuple[int, int, int], compress: bool) -> tuple[SequenceLayout, int]:
    """Layout for generating shot ``n_hist`` after ``n_hist`` history shots; returns it and the history visual tokens."""
    t, h, w = grid
    segs = [Segment(Modality.TEXT, -1, (text_len, 1, 1))]
    hist_tokens = 0
    if compress:
        sizes = goldenmem_sizes(n_hist * t, (h, w))  # most recent frame first
        per_shot: dict[int, list[tuple[int, int]]] = {}
        for k, hw in enumerate(sizes):
            shot = n_hist - 1 - k // t
            per_shot.setdefault(shot, []).insert(0, hw)
        pos = 0
        for shot in sorted(per_shot):
            segs.append(Segment(Modality.TEXT, pos, (text_len, 1, 1)))
            for hk, wk in per_shot[shot]:
                segs.append(Segment(Modality.IMAGE, pos, (1, hk, wk)))
                hist_tokens += hk * wk
            pos += 1
    else:
        for pos in range(n_hist):
            segs += [Segment(Modality.TEXT, pos, (text_len, 1, 1)), Segment(Modality.VIDEO, pos, grid)]
            hist_tokens += t * h * w
        pos = n_hist
    segs += [Segment(Modality.TEXT, pos, (text_len, 1, 1)), Segment(Modality.VIDEO, pos, grid)]
    return SequenceLayout(segs), hist_tokens


def time_forward(model, layout: SequenceLayout, *, device: str, repeats: int) -> float:
    cfg = model.config
    pt, ph, pw = cfg.patch_size
    xs = [torch.randn(1, cfg.in_channels, s.grid[0] * (pt if s.grid[0] > 1 else 1), s.grid[1] * ph, s.grid[2] * pw, device=device)
          for s in layout.segments if s.modality in (Modality.VIDEO, Modality.IMAGE)]
    n_text = sum(s.length for s in layout.segments if s.modality == Modality.TEXT)
    ctx = torch.randn(1, n_text, cfg.text_dim, device=device)
    t = torch.rand(1, layout.n_shots, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.inference_mode():
        model(xs, t, ctx, layout)  # warm-up (plans, kernels)
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            model(xs, t, ctx, layout)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--history", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    pipe = ScenePipeline.from_pretrained(args.model, device=args.device)
    model = pipe.scene.eval()
    grid = (5, 8, 8)  # a 16-frame 64x64 shot under the default VAE (4x time, 4x space) and 2x2 patches
    text_len = model.config.text_len
    rows = []
    for n in args.history:
        row = [str(n)]
        for compress in (False, True):
            layout, hist = layouts(n, text_len=text_len, grid=grid, compress=compress)
            ms = 1000 * time_forward(model, layout, device=args.device, repeats=args.repeats)
            row += [str(layout.seq_len), str(hist), f"{ms:.0f}"]
        rows.append(row)
        print(" | ".join(row), flush=True)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{cpu_name()}, {torch.get_num_threads()} threads"
    lines = [
        "# GoldenMem: history cost with and without compression",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {dev}; torch {torch.__version__}",
        f"- model: {pipe.name} scene model ({model.num_parameters() / 1e6:.1f} M params), batch 1, fp32, median of {args.repeats}",
        f"- shot latent token grid {grid} ({grid[0] * grid[1] * grid[2]} tokens), {text_len} text tokens per prompt; "
        f"GoldenMem bound on history visual tokens: φ × one frame = {PHI * grid[1] * grid[2]:.0f}",
        "- command: `python benchmarks/goldenmem.py`",
        "",
        "| history shots | tokens (full) | history visual tokens (full) | ms/step (full) | tokens (GoldenMem) | history visual tokens (GoldenMem) | ms/step (GoldenMem) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        "At this small grid (8×8 tokens per frame) GoldenMem keeps only the five most recent frames "
        "(8×8, 4×4, 3×3, 1×1, 1×1), i.e. the last history shot; with larger frames more history survives. "
        "The shipped v0 was not trained with GoldenMem history (docs/generation.md), and rows past its trained "
        f"context ({model.config.max_shots} shots) measure cost only.",
        "",
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
