"""Training metrics: console progress bar, a JSONL log, optional TensorBoard, throughput and MFU.

MFU = achieved model FLOP/s ÷ the device's dense bf16 peak. Model FLOPs of a step are
``3 × model.flops_per_forward(layout, batch=B)`` (forward + backward ≈ 2 × forward) summed over
micro-batches and ranks; an unknown device (CPU included) reports ``mfu = None``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from storyreel.utils import atomic_write

__all__ = ["MetricsLogger", "peak_flops"]

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts).
_PEAKS = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("a10g", 70e12),
    ("l4", 121e12),
    ("4090", 165e12),
)


def peak_flops(device: torch.device | str) -> float | None:
    """Peak dense bf16 FLOP/s of ``device`` (H100/H200 ≈ 989 TFLOP/s), or None when unknown (e.g. CPU)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(dev).lower()
    for key, peak in _PEAKS:
        if key in name:
            return peak
    return None


class MetricsLogger:
    """Per-step metrics to a progress bar (rank 0), ``log.jsonl`` and, if importable and asked for, TensorBoard.

    Args:
        run_dir: the run folder (``log.jsonl`` goes there).
        total_steps: for the progress bar.
        start_step: first step of this session (resume); log lines of later steps are dropped from ``log.jsonl``.
        log_every: write a JSONL line every this many steps (and at the last step).
        enabled: False on non-zero ranks (nothing is printed or written).
        progress: show a tqdm bar.
        tensorboard: also write TensorBoard scalars when ``torch.utils.tensorboard`` imports.
        peak: device peak FLOP/s for MFU (None → mfu reported as None).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        total_steps: int,
        start_step: int = 0,
        log_every: int = 10,
        enabled: bool = True,
        progress: bool = True,
        tensorboard: bool = False,
        peak: float | None = None,
        world_size: int = 1,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "log.jsonl"
        self.total = total_steps
        self.log_every = log_every
        self.enabled = enabled
        self.peak = peak
        self.world_size = world_size
        self.records: list[dict[str, Any]] = []
        self._bar = None
        self._tb = None
        self._window: list[dict[str, float]] = []
        self._t_last = time.perf_counter()
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate(start_step)
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc="train")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = None
                self.message("tensorboard is not installed; logging to log.jsonl only (pip install tensorboard to enable)")
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def _truncate(self, start_step: int) -> None:
        """Keep only log lines of steps < ``start_step`` (a resumed run rewrites what follows)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(rec.get("step", 0)) <= start_step:
                kept.append(line)
        with atomic_write(self.path, "w") as fh:
            fh.write("".join(k + "\n" for k in kept))

    def step(self, step: int, metrics: dict[str, Any], *, tokens: int, flops: float | None) -> dict[str, Any] | None:
        """Record step ``step`` (1-based count of finished steps); returns the JSONL record when one is written.

        ``tokens``/``flops``: processed by this step over every rank (FLOPs for fwd+bwd).
        """
        now = time.perf_counter()
        dt = max(now - self._t_last, 1e-9)
        self._t_last = now
        self._window.append({"dt": dt, "tokens": float(tokens), "flops": float(flops) if flops is not None else math.nan,
                             **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}})
        if not self.enabled:
            return None
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{metrics.get('loss', math.nan):.4f}", refresh=False)
        if step % self.log_every and step != self.total:
            return None
        win, self._window = self._window, []
        elapsed = sum(w["dt"] for w in win)
        rec: dict[str, Any] = {"step": step}
        keys = [k for k in win[-1] if k not in ("dt", "tokens", "flops")]
        for k in keys:
            vals = [w[k] for w in win if k in w]
            rec[k] = sum(vals) / len(vals)
        rec.update({k: v for k, v in metrics.items() if not isinstance(v, (int, float)) or isinstance(v, bool)})
        rec["steps_per_s"] = len(win) / elapsed
        rec["tokens_per_s"] = sum(w["tokens"] for w in win) / elapsed
        total_flops = sum(w["flops"] for w in win)
        if self.peak is None or math.isnan(total_flops):
            rec["mfu"] = None
        else:
            rec["mfu"] = total_flops / elapsed / (self.peak * self.world_size)
        self.records.append(rec)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(f"train/{k}", v, step)
        if self._bar is not None:
            mfu = f" mfu {rec['mfu']:.1%}" if rec["mfu"] is not None else ""
            self._bar.set_postfix_str(f"loss {rec.get('loss', math.nan):.4f} {rec['tokens_per_s']:.0f} tok/s{mfu}")
        return rec

    def reset_timer(self) -> None:
        """Do not count the time since the last step (e.g. after writing a checkpoint)."""
        self._t_last = time.perf_counter()

    def message(self, text: str) -> None:
        """Print a line (above the progress bar) on the logging rank."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
