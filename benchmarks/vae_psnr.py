"""Reconstruction PSNR of an autoencoder on held-out StoryWorld shots (64×64, 16 frames).

    python benchmarks/vae_psnr.py --autoencoder storyreel/weights/default/autoencoder --n 24 \\
        --out benchmarks/results/vae-psnr.md

Held-out scenes use StoryWorld seeds 10000000, 10000001, … (training data uses ``scene_seed(0, j)``,
63-bit seeds that never collide with these); the first ``--n`` shots of those scenes are encoded and
decoded; PSNR is over uint8 pixels (peak 255), one value per shot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _machine import cpu_name, emit  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from storyreel.autoencoders import get_autoencoder  # noqa: E402
from storyreel.world import render_scene, sample_scene  # noqa: E402

HELD_OUT_SEED = 10_000_000


def held_out_shots(n: int, *, frames: int = 16) -> list[np.ndarray]:
    """The first ``n`` shots (uint8 ``[T, H, W, 3]``) of held-out scenes."""
    shots: list[np.ndarray] = []
    seed = HELD_OUT_SEED
    while len(shots) < n:
        rendered = render_scene(sample_scene(seed, resolution=(64, 64), frames=frames))
        shots += [np.asarray(s.frames, dtype=np.uint8) for s in rendered.shots]
        seed += 1
    return shots[:n]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


@torch.no_grad()
def reconstruct(ae: torch.nn.Module, shot: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(shot).permute(3, 0, 1, 2)[None].to(device, torch.float32) / 127.5 - 1.0  # [1, 3, T, H, W]
    y = ae.decode(ae.encode(x))  # [1, 3, T, H, W] in [-1, 1]
    y = y[:, :, : shot.shape[0]]  # a causal VAE decodes 1 + 4k frames; keep the input's (as the pipeline does)
    return ((y[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()  # [T, H, W, 3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--autoencoder", action="append", required=True, help="autoencoder folder (repeat to compare)")
    ap.add_argument("--n", type=int, default=24, help="held-out shots")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    shots = held_out_shots(args.n)
    rows = []
    for folder in args.autoencoder:
        ae = get_autoencoder(folder).to(device).eval()
        t0 = time.perf_counter()
        values = [psnr(shot, reconstruct(ae, shot, device)) for shot in shots]
        rows.append((folder, float(np.mean(values)), float(np.min(values)), float(np.median(values)), time.perf_counter() - t0))
    lines = [
        "# Autoencoder reconstruction on held-out StoryWorld shots",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu_name()} ({platform.machine()}), "
        f"torch {torch.__version__}, device {device}",
        f"- {args.n} held-out shots (64×64, 16 frames; scenes from StoryWorld seed {HELD_OUT_SEED} on); PSNR over uint8 pixels",
        f"- command: `python benchmarks/vae_psnr.py {' '.join('--autoencoder ' + a for a in args.autoencoder)} --n {args.n}`",
        "",
        "| autoencoder | mean PSNR (dB) | min | median | time (s) |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {f} | {m:.2f} | {lo:.2f} | {med:.2f} | {t:.1f} |" for f, m, lo, med, t in rows],
        "",
        "Target (issue: shipped default): mean ≥ 30 dB at 64×64.",
    ]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
