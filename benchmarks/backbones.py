"""GPU benchmark of the diffusers backbone adapters at real size (random weights, bf16).

Backbones: Wan2.1-T2V-1.3B (30 layers, dim 1536 = 12 heads x 128, ffn 8960, patch (1,2,2), 16 latent channels,
UMT5 text 4096-d x 512 tokens per prompt) and CogVideoX-2B (30 layers, 30 heads x 64, patch 2, 16 channels, sin-cos
positions, T5 text 4096-d x 226 tokens per prompt). Per shot 49 video frames = 13 latent frames: Wan at 480x832
(latent 60x104, 20280 video tokens), CogVideoX at its native 480x720 (latent 60x90, 17550 video tokens). Chosen so
that the whole run (1, 3 and 8 shots, joint and causal) stays well under 6 minutes on one H100 and under 80 GB (the
8-shot KV caches hold ~27 / ~29 GB); 8 shots of Wan at its full 81 frames (21 latent frames) would still fit in
memory for inference, but one joint step alone takes ~25 s.

Rows, per backbone and shot count:
    joint      one denoising step over every shot (Mask²DiT v2 mask: text_i only with video_i, video across shots)
    joint, t/shot  the same with a different timestep per shot (per-token modulation path)
    causal     one step of the LAST shot with every earlier shot in the KV cache (causal_shots); "cache fill" is the
               sum of the cache-writing passes of the earlier shots (one each)
Each row: median step time (after a warm-up), peak memory, attention share of the step (CUDA events around every
attention call of the timed steps), and the FLOP-model check
    predicted = t_1 * ((1 - a_1) * linear_n / linear_1 + a_1 * attention_n / attention_1)
with t_1, a_1 the one-shot joint step time and attention share, linear FLOPs counted per token and attention FLOPs
per ALLOWED (query, key) pair (``adapter.flops_breakdown``); target measured / predicted <= 1.1.

    python benchmarks/backbones.py --out benchmarks/results/backbones.md     # GPU (H100), ~3-4 minutes
    python benchmarks/backbones.py --tiny                                    # CPU smoke test, tiny configs
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from storyreel.models.adapters import _common, load_backbone
from storyreel.nn import KVCache, SequenceLayout
from storyreel.nn.attention import clear_plan_cache

from _machine import cpu_name, emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6)
COG_2B = dict(num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16, time_embed_dim=512,
              text_embed_dim=4096, num_layers=30, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
              temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=False)
# real-size runs: (config, latent frames per shot, latent H, latent W, text tokens per shot)
REAL = {"wan": (WAN_1_3B, 13, 60, 104, 512), "cogvideox": (COG_2B, 13, 60, 90, 226)}
TINY = {
    "wan": (dict(WAN_1_3B, num_attention_heads=2, attention_head_dim=12, text_dim=16, freq_dim=32, ffn_dim=48,
                 num_layers=2, in_channels=4, out_channels=4), 2, 8, 8, 6),
    "cogvideox": (dict(COG_2B, num_attention_heads=2, attention_head_dim=16, time_embed_dim=8, text_embed_dim=12,
                       num_layers=2, in_channels=4, out_channels=4, sample_width=8, sample_height=8, sample_frames=9,
                       max_text_seq_length=6), 2, 8, 8, 6),
}
NAMES = {"wan": "Wan2.1-T2V-1.3B", "cogvideox": "CogVideoX-2B"}


class AttentionTimer:
    """Times every attention call of the adapters (CUDA events; perf_counter on CPU) while ``active``."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.active, self.spans = device, False, []
        self._orig = _common.masked_attention

    def __call__(self, q, k, v, plan):  # noqa: ANN001, ANN204
        if not self.active:
            return self._orig(q, k, v, plan)
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self._orig(q, k, v, plan)
            end.record()
            self.spans.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self._orig(q, k, v, plan)
        self.spans.append(time.perf_counter() - t0)
        return out

    def total_ms(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.spans)
        return sum(self.spans) * 1e3


def step_ms(fn: Callable[[], object], device: torch.device, warmup: int, iters: int,
            timer: AttentionTimer | None = None) -> tuple[float, float]:
    """Median milliseconds of ``fn`` and the median share of it spent in attention calls (with ``timer``)."""
    for _ in range(warmup):
        fn()
    times, shares = [], []
    for _ in range(iters):
        if timer is not None:
            timer.spans, timer.active = [], True
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        if timer is not None:
            timer.active = False
            shares.append(timer.total_ms() / times[-1])
    return statistics.median(times), (statistics.median(shares) if shares else 0.0)


def run_backbone(kind: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, t_start: float) -> list[str]:
    cfg, frames, lh, lw, text = (TINY if args.tiny else REAL)[kind]
    name = NAMES[kind] + (" (tiny)" if args.tiny else "")
    print(f"[{time.perf_counter() - t_start:6.1f}s] building {name} ({'tiny' if args.tiny else 'real size'})", flush=True)
    torch.manual_seed(0)
    with torch.device(device):
        adapter = load_backbone(kind, cfg, dtype=dtype, device=device)
    adapter.eval()
    pt, ph, pw = adapter.patch_size
    grid = (frames // pt, lh // ph, lw // pw)
    scale = 1000.0 if kind == "wan" else 999.0
    timer = AttentionTimer(device)
    _common.masked_attention = timer
    rows: list[str] = []
    base: dict[str, float] = {}
    g = torch.Generator(device="cpu").manual_seed(1)

    def inputs(n: int):  # noqa: ANN202
        x = torch.randn(1, adapter.in_channels, frames * n, lh, lw, generator=g).to(device, dtype)
        ctx = (torch.randn(1, text * n, adapter.text_dim, generator=g) * 0.1).to(device, dtype)
        return x, ctx

    def measure(label: str, n: int, fn: Callable[[], object], layout: SequenceLayout, policy: str, n_cached: int,
                extra: str = "") -> None:
        if time.perf_counter() - t_start > args.budget_s:
            rows.append(f"| {name} | {label} | {n} | - | skipped: time budget of {args.budget_s:.0f} s reached | | | | | |")
            print(rows[-1], flush=True)
            return
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        ms, share = step_ms(fn, device, args.warmup, args.iters, timer)
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "-"
        fl = adapter.flops_breakdown(layout, policy=policy, n_cached_segments=n_cached)
        if not base:
            base.update(ms=ms, share=share, lin=fl["linear"], att=fl["attention"])
        pred = base["ms"] * ((1 - base["share"]) * fl["linear"] / base["lin"] + base["share"] * fl["attention"] / base["att"])
        ratio = ms / pred
        n_new = layout.seq_len - (layout.prefix(n_cached).seq_len if n_cached else 0)
        rows.append(
            f"| {name} | {label} | {n} | {n_new} / {layout.seq_len} | {ms:.0f} | {peak} | {100 * share:.0f}% | "
            f"{sum(fl.values()) / 1e12:.1f} | {pred:.0f} | {ratio:.2f} {'ok' if ratio <= 1.1 else 'OVER'}{extra} |"
        )
        print(f"[{time.perf_counter() - t_start:6.1f}s] {rows[-1]}", flush=True)

    try:
        with torch.inference_mode():
            # ---- sanity: one shot through the adapter equals the stock forward (same dtype)
            layout1 = SequenceLayout.scene(text_lens=[text], video_grids=[grid])
            x, ctx = inputs(1)
            t = torch.full((1,), 0.7 * scale, device=device)
            ours = adapter(x, t, ctx, layout1, policy="full")
            if kind == "wan":
                ref = adapter.transformer(x, t, ctx).sample
            else:
                ref = adapter.transformer(x.transpose(1, 2), ctx, t).sample.transpose(1, 2)
            err = (ours.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
            rows.append(f"| {name} | one shot vs stock forward | 1 | max abs diff / max abs = {err:.1e} | | | | | | |")
            print(rows[-1], flush=True)
            del ours, ref
            for n in args.shots:
                layout = SequenceLayout.scene(text_lens=[text] * n, video_grids=[grid] * n)
                x, ctx = inputs(n)
                t = torch.full((1, n), 0.7 * scale, device=device)
                measure("joint", n, lambda: adapter(x, t, ctx, layout, policy="mask2dit"), layout, "mask2dit", 0)
                if n == 3:
                    tn = torch.linspace(0.2, 0.9, n, device=device)[None] * scale
                    measure("joint, t/shot", n, lambda: adapter(x, tn, ctx, layout, policy="mask2dit"), layout, "mask2dit", 0)
                if n > 1:
                    cache = KVCache()
                    fill = 0.0
                    for i in range(n - 1):  # earlier shots, one cache-writing pass each (history at t_c = 0)
                        sub = layout.prefix(2 * (i + 1))
                        xi, ci = x[:, :, i * frames : (i + 1) * frames], ctx[:, i * text : (i + 1) * text]
                        fill += step_ms(lambda: adapter(xi, t[:, : i + 1] * 0, ci, sub, policy="causal_shots",
                                                        kv_cache=cache, cache_write=True), device, 0, 1)[0]
                    xl, cl = x[:, :, (n - 1) * frames :], ctx[:, (n - 1) * text :]
                    measure("causal, last shot", n, lambda: adapter(xl, t, cl, layout, policy="causal_shots", kv_cache=cache),
                            layout, "causal_shots", 2 * (n - 1), extra=f"; cache fill {fill:.0f} ms, cache {cache.nbytes / 2**30:.1f} GiB")
                    del cache
                del x, ctx
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    finally:
        _common.masked_attention = timer._orig
    del adapter
    clear_plan_cache()
    _common.clear_caches()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def run(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    dtype = torch.float32 if args.tiny or device.type == "cpu" else torch.bfloat16
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny CPU steps: thread hand-offs would dominate
    import diffusers

    t_start = time.perf_counter()
    table = [
        "| backbone | step | shots | tokens new / keys | ms | peak GiB | attention | TFLOP | FLOP-model ms | measured / model |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in args.backbones:
        table += run_backbone(kind, args, device, dtype, t_start)
    elapsed = time.perf_counter() - t_start
    sizes = TINY if args.tiny else REAL
    lines = [
        "# Backbone adapters: multi-shot denoising steps at real size",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({cpu_name()})'}; "
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, diffusers {diffusers.__version__}; {dtype}, batch 1",
        f"- configs: {'TINY smoke-test configs (not real size)' if args.tiny else 'Wan2.1-T2V-1.3B and CogVideoX-2B, random weights'}",
        *(f"- {NAMES[k]} per shot: {sizes[k][1]} latent frames x {sizes[k][2]}x{sizes[k][3]} latent "
          f"({sizes[k][1]}x{sizes[k][2] // 2}x{sizes[k][3] // 2} = {sizes[k][1] * sizes[k][2] * sizes[k][3] // 4} video "
          f"tokens, patch 1x2x2) + {sizes[k][4]} text tokens" for k in args.backbones),
        f"- median of {args.iters} steps after {args.warmup} warm-up; attention share = time inside the attention calls "
        "(CUDA events around each) / step time; peak = max memory allocated during the row (weights and cache included)",
        "- joint steps use the Mask²DiT v2 mask (cross-attention of Wan: own prompt only); causal steps use causal_shots "
        "with the earlier shots' K/V cached (each written by one pass at t = 0)",
        "- FLOP model: predicted = t_1 * ((1 - a_1) * linear_n / linear_1 + a_1 * attention_n / attention_1), "
        "t_1 and a_1 from the 1-shot joint row; attention FLOPs count allowed (query, key) pairs only; target <= 1.1",
        f"- total benchmark time: {elapsed:.0f} s",
        "",
        *table,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny configs and sizes (CPU smoke test)")
    ap.add_argument("--backbones", nargs="+", default=["wan", "cogvideox"], choices=["wan", "cogvideox"])
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 3, 8])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip the remaining rows after this many seconds")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = ap.parse_args(argv)
    if args.shots[0] != 1:
        ap.error("--shots must start with 1 (the FLOP model scales the one-shot step)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available; use --tiny (CPU) for a smoke test")
    if not args.tiny and not args.device.startswith("cuda"):
        ap.error("real-size backbones need a GPU; use --tiny on CPU")
    emit(run(args), args.out)
    if args.out is not None:
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
