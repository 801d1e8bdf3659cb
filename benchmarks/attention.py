"""Benchmark the multi-shot attention backends against unmasked flash attention.

For Mask²DiT v2, causal_shots and full attention at 3 and 8 shots (226 text + 4×32×32 video tokens
per shot, 24 heads × 64, bf16, batch 1) it times ``dense``, ``grouped``, ``flex`` and ``auto``
plus unmasked flash SDPA over the same tokens, and reports milliseconds (CUDA events, warm-up,
median of N), peak memory, effective TFLOP/s counting only allowed (q, k) pairs
(4·pairs·D·heads FLOPs) and the ratio to the unmasked-flash effective throughput. Every backend is
first checked against ``dense`` on a smaller layout.

    python benchmarks/attention.py --out benchmarks/results/attention.md     # GPU, full sizes
    python benchmarks/attention.py --device cpu --small                      # CPU smoke test
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from storyreel.nn.attention import attention, clear_plan_cache, plan_attention
from storyreel.nn.layout import SequenceLayout
from storyreel.nn.masks import get_policy, segment_mask
from storyreel.utils import atomic_write

BACKENDS = ("dense", "grouped", "flex", "auto")


def allowed_pairs(layout: SequenceLayout, policy: str) -> int:
    """Number of allowed (query, key) pairs, from the segment mask."""
    seg = segment_mask(layout, policy).to(torch.int64)
    lens = torch.tensor([s.length for s in layout.segments], dtype=torch.int64)
    return int(lens @ seg @ lens)


def timeit(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` (CUDA events on GPU, perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def flash_unmasked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked SDPA forced to the flash kernel on CUDA (plain SDPA elsewhere)."""
    if q.is_cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def check_correctness(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Every backend vs dense on a small layout; returns markdown lines."""
    layout = SequenceLayout.scene(text_lens=[30, 17, 30], video_grids=[(2, 8, 8), (1, 8, 8), (2, 8, 8)])
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, 4, layout.seq_len, 64, generator=gen).to(device, dtype) for _ in range(3))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    lines = ["| policy | backend | max abs err vs dense | ok |", "| --- | --- | --- | --- |"]
    bad = 0
    for pol in args.policies:
        ref = attention(q, k, v, plan_attention(layout, pol, backend="dense", device=device)).float()
        for be in BACKENDS[1:]:
            try:
                out = attention(q, k, v, plan_attention(layout, pol, backend=be, device=device)).float()
            except (RuntimeError, ValueError) as err:
                lines.append(f"| {pol} | {be} | n/a ({type(err).__name__}) | - |")
                continue
            err = (out - ref).abs().max().item()
            bad += err > tol
            lines.append(f"| {pol} | {be} | {err:.2e} | {'yes' if err <= tol else 'NO'} |")
    if bad:
        print(f"WARNING: {bad} backend(s) differ from dense beyond {tol}", file=sys.stderr)
    return lines


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    if hasattr(torch, "_dynamo"):  # one flex kernel per (policy kind, shape): allow more than the default 8
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    heads, head_dim = args.heads, args.head_dim
    report = [
        "# Multi-shot attention benchmark",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'}), "
        f"python {platform.python_version()}",
        f"- device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
        f"- per shot: {args.text} text + {'x'.join(map(str, args.grid))} video tokens; {heads} heads x {head_dim}, "
        f"{args.dtype}, batch 1; median of {args.iters} after {args.warmup} warm-up",
        "- effective TFLOP/s counts allowed pairs only (4 * pairs * head_dim * heads); "
        "ratio = effective throughput / unmasked flash effective throughput; peak = memory allocated while "
        "attending above what q/k/v and the plan (e.g. a dense mask) already hold",
        "",
        "## Correctness vs dense (small layout)",
        "",
        *check_correctness(args, device, dtype),
        "",
        "## Timings",
        "",
        "| shots | L | policy | backend | plan | ms | peak MiB | eff. TFLOP/s | vs flash | calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n_shots in args.shots:
        layout = SequenceLayout.scene(text_lens=[args.text] * n_shots, video_grids=[tuple(args.grid)] * n_shots)
        L = layout.seq_len
        gen = torch.Generator(device="cpu").manual_seed(n_shots)
        q, k, v = (torch.randn(1, heads, L, head_dim, generator=gen).to(device, dtype) for _ in range(3))
        flops_per_pair = 4 * head_dim * heads
        t_flash = timeit(lambda: flash_unmasked(q, k, v), device, args.warmup, args.iters)
        flash_eff = L * L * flops_per_pair / t_flash / 1e9
        report.append(f"| {n_shots} | {L} | (all pairs) | flash, unmasked | - | {t_flash:.3f} | - | {flash_eff:.3g} | 1.00 | 1 |")
        print(report[-1], flush=True)
        for pol in args.policies:
            pairs = allowed_pairs(layout, pol)
            for be in args.backends:
                try:
                    t0 = time.perf_counter()
                    plan = plan_attention(layout, pol, backend=be, device=device)
                    t_plan = time.perf_counter() - t0
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                        base = torch.cuda.memory_allocated(device)
                    iters = max(3, args.iters // 4) if plan.backend == "dense" else args.iters
                    ms = timeit(lambda p=plan: attention(q, k, v, p), device, args.warmup, iters)
                except (RuntimeError, ValueError, torch.OutOfMemoryError) as err:
                    report.append(f"| {n_shots} | {L} | {get_policy(pol).name} | {be} | - | failed: {type(err).__name__} |  |  |  |  |")
                    print(report[-1], str(err)[:300], flush=True)
                    clear_plan_cache()
                    continue
                peak = f"{(torch.cuda.max_memory_allocated(device) - base) / 2**20:.0f}" if device.type == "cuda" else "-"
                eff = pairs * flops_per_pair / ms / 1e9
                name = be if be != "auto" else f"auto ({plan.backend})"
                report.append(
                    f"| {n_shots} | {L} | {get_policy(pol).name} | {name} | {t_plan * 1e3:.0f} ms | {ms:.3f} | "
                    f"{peak} | {eff:.3g} | {eff / flash_eff:.2f} | {plan.n_calls} |"
                )
                print(report[-1], flush=True)
                if args.verbose and plan.backend == "grouped":
                    print(plan.describe(), flush=True)
            clear_plan_cache()
    return "\n".join(report) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="small sizes (CPU smoke test)")
    ap.add_argument("--shots", type=int, nargs="+", default=[3, 8])
    ap.add_argument("--policies", nargs="+", default=["mask2dit", "causal_shots", "full"])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--text", type=int, default=226)
    ap.add_argument("--grid", type=int, nargs=3, default=[4, 32, 32])
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--verbose", action="store_true", help="print the grouped tiling of every plan")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    if args.small:
        args.text, args.grid, args.heads, args.head_dim, args.iters = 16, [2, 8, 8], 4, 32, 5
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available; use --device cpu --small for a smoke test")
    text = run(args)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
