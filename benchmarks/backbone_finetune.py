"""GPU benchmark of backbone fine-tuning steps (LoRA / full) and of context-parallel joint denoising steps.

Random weights at real size: Wan2.1-T2V-1.3B and CogVideoX-2B (the configurations of ``benchmarks/backbones.py``).
Training rows: one optimiser step (bf16 autocast forward with the recipe's objective — flow for Wan, v for CogVideoX
— backward with activation checkpointing per block, AdamW) on 1 and 3 shots; LoRA rank 64 on the attention / FFN
linears (frozen weights in bf16) or full fine-tuning (fp32 master weights). Context-parallel rows (under
``torchrun``, N GPUs): one joint forward of 8 shots (Mask²DiT v2 mask) on one GPU and split over N GPUs, with the
largest difference between the two outputs.

    python benchmarks/backbone_finetune.py --out benchmarks/results/backbone-finetune.md            # 1 GPU, ~3 min
    torchrun --nproc-per-node 2 benchmarks/backbone_finetune.py --cp --out benchmarks/results/backbone-cp.md
    python benchmarks/backbone_finetune.py --tiny                                                   # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from storyreel.models.adapters import load_backbone
from storyreel.nn import SequenceLayout
from storyreel.train.backbone_task import _TrainForward, apply_lora, noise_for_backbone
from storyreel.train.config import ParallelConfig
from storyreel.train.parallelize import parallelize
from storyreel.train.scene_task import shot_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backbones import NAMES, REAL, TINY  # noqa: E402  (the inference benchmark's configurations)

from _machine import cpu_name, emit  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, device: torch.device, warmup: int, iters: int) -> float:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "n/a"


def _case(kind: str, tiny: bool, shots: int, device: torch.device, dtype: torch.dtype):  # noqa: ANN202
    cfg, frames, lh, lw, text = (TINY if tiny else REAL)[kind]
    grid_t = frames
    layout = SequenceLayout.scene(text_lens=[text] * shots, video_grids=[(grid_t, lh // 2, lw // 2)] * shots,
                                  global_text_len=text)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, cfg["in_channels"], frames * shots, lh, lw, generator=g).to(device)
    ctx = (torch.randn(1, text * (shots + 1), cfg.get("text_dim", cfg.get("text_embed_dim")), generator=g) * 0.1).to(device, dtype)
    return cfg, layout, x0, ctx, [frames] * shots


def train_rows(args: argparse.Namespace, device: torch.device) -> list[str]:
    rows = []
    for kind in args.backbones:
        for mode in ("lora", "full"):
            base = torch.float32 if (mode == "full" or device.type == "cpu") else torch.bfloat16
            torch.manual_seed(0)
            _peak_reset(device)
            adapter = load_backbone(kind, (TINY if args.tiny else REAL)[kind][0], dtype=base, device=device)
            n_train = (apply_lora(adapter, rank=64, alpha=64.0, dropout=0.0,
                                  targets=["to_q", "to_k", "to_v", "to_out.0", "net.0.proj", "net.2"])
                       if mode == "lora" else sum(p.numel() for p in adapter.parameters()))
            module = parallelize(_TrainForward(adapter), ParallelConfig(strategy="none", activation_checkpointing=True),
                                 device=device, world_size=1)
            opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=1e-5)
            abar = None
            if kind == "cogvideox":
                from diffusers import CogVideoXDDIMScheduler

                abar = CogVideoXDDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True).alphas_cumprod
            for shots in args.shots:
                _, layout, x0, ctx, frames = _case(kind, args.tiny, shots, device, base)
                g = torch.Generator().manual_seed(2)
                noise = torch.randn(x0.shape, generator=g).to(device)
                t = torch.rand(1, shots, generator=g).to(device)
                clean = torch.zeros(1, shots, dtype=torch.bool, device=device)
                xt, target, tm = noise_for_backbone(adapter.prediction, x0, noise, t, clean, frames, alphas_cumprod=abar)
                autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda"
                            else contextlib.nullcontext())

                def step() -> None:
                    opt.zero_grad(set_to_none=True)
                    with autocast:
                        pred = module(xt.to(base), tm, ctx, layout, policy="mask2dit")
                        loss, _ = shot_loss(pred, target, frames, torch.ones(1, shots, device=device))
                    loss.backward()
                    opt.step()

                _peak_reset(device)
                ms = _median_ms(step, device, args.warmup, args.iters)
                tokens = sum(s.length for s in layout.segments if s.is_visual)
                rows.append(f"| {NAMES[kind]} | {mode} | {n_train / 1e6:.1f} M | {shots} | {tokens} | {ms:.0f} | "
                            f"{_peak_gib(device)} |")
                print(rows[-1], flush=True)
            del adapter, module, opt
            _peak_reset(device)
    return ["| backbone | fine-tune | trainable params | shots | video tokens | step ms | peak GiB |",
            "| --- | --- | --- | --- | --- | --- | --- |", *rows]


def cp_rows(args: argparse.Namespace, device: torch.device) -> list[str]:
    from storyreel.pipelines.context_parallel import context_parallel_forward

    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    rows = []
    for kind in args.backbones:
        torch.manual_seed(0)
        adapter = load_backbone(kind, (TINY if args.tiny else REAL)[kind][0], dtype=dtype, device=device).eval()
        _, layout, x0, ctx, _ = _case(kind, args.tiny, args.cp_shots, device, dtype)
        t = torch.full((1, args.cp_shots), 500.0, device=device)
        x = x0.to(dtype)
        with torch.no_grad():
            _peak_reset(device)
            one_ms = _median_ms(lambda: adapter(x, t, ctx, layout, policy="mask2dit"), device, args.warmup, args.iters)
            one_peak = _peak_gib(device)
            ref = adapter(x, t, ctx, layout, policy="mask2dit")
            _peak_reset(device)
            cp_ms = _median_ms(lambda: context_parallel_forward(adapter, x, t, ctx, layout, policy="mask2dit"),
                               device, args.warmup, args.iters)
            cp_peak = _peak_gib(device)
            err = float((context_parallel_forward(adapter, x, t, ctx, layout, policy="mask2dit") - ref).abs().max())
        tokens = sum(s.length for s in layout.segments if s.is_visual)
        rows.append(f"| {NAMES[kind]} | {args.cp_shots} | {tokens} | {world} | {one_ms:.0f} | {cp_ms:.0f} | "
                    f"{one_ms / cp_ms:.2f}x | {one_peak} | {cp_peak} | {err:.2e} |")
        if rank == 0:
            print(rows[-1], flush=True)
        del adapter, ref
        _peak_reset(device)
    return ["| backbone | shots | video tokens | GPUs | 1 GPU ms | split ms | speed-up | 1 GPU peak GiB | split peak GiB "
            "(rank) | max abs diff |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke test)")
    ap.add_argument("--cp", action="store_true", help="context-parallel rows (launch with torchrun, N >= 2)")
    ap.add_argument("--backbones", nargs="+", default=["wan", "cogvideox"], choices=["wan", "cogvideox"])
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--cp-shots", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        ap.error("real-size backbones need a GPU; use --tiny on CPU")
    t0 = time.perf_counter()
    if args.cp:
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            ap.error("--cp needs torchrun --nproc-per-node N (N >= 2)")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
        table = cp_rows(args, device)
        title = "# Context-parallel joint denoising steps (all-gather K/V)"
    else:
        device = torch.device("cuda") if cuda else torch.device("cpu")
        table = train_rows(args, device)
        title = "# Backbone fine-tuning steps (LoRA / full, activation checkpointing)"
    import diffusers

    lines = [
        title, "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({cpu_name()})'}; torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}",
        f"- configs: {'TINY smoke-test configs (not real size)' if args.tiny else 'Wan2.1-T2V-1.3B and CogVideoX-2B, random weights'}; "
        "per-shot sizes as in benchmarks/backbones.py; batch 1; Mask²DiT v2 mask; global prompt segment",
        f"- median of {args.iters} steps after {args.warmup} warm-up; peak = max memory allocated (weights, optimiser "
        f"state and activations); total time {time.perf_counter() - t0:.0f} s",
        "", *table, "",
    ]
    if not args.cp or dist.get_rank() == 0:
        emit("\n".join(lines), args.out)
    if args.cp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
