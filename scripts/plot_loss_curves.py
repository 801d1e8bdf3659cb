"""Plot training loss curves from `log.jsonl` files (one panel per run).

    python scripts/plot_loss_curves.py outputs/train/vae-default outputs/train/scene-default \
        outputs/train/scene-default-causal --out docs/images/default-loss-curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from storyreel.utils import atomic_path  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (or log.jsonl files)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    fig, axes = plt.subplots(1, len(args.runs), figsize=(4.2 * len(args.runs), 3.2), squeeze=False)
    for ax, run in zip(axes[0], args.runs):
        log = run if run.suffix == ".jsonl" else run / "log.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
        ax.plot(steps, loss, lw=1.5)
        stages: dict[str, int] = {}
        for r in rows:
            if r.get("stage") and r["stage"] not in stages:
                stages[r["stage"]] = r["step"]
        for name, step in list(stages.items())[1:]:
            ax.axvline(step, color="grey", ls=":", lw=1)
            ax.text(step, max(loss), f" {name}", fontsize=7, va="top", color="grey")
        ax.set_title(log.parent.name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
