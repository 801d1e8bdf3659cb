"""Plots of the StoryWorld benchmark suites (:mod:`storyreel.eval.bench`): bars per variant, per-shot
curves, compute-vs-history curves and a storyboard grid of the best and worst scenes.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch) and
written atomically as PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from storyreel.media import make_storyboard, write_image
from storyreel.utils import atomic_path

__all__ = ["bar_chart", "cost_curves", "per_shot_curves", "storyboard_grid"]

PathLike = str | os.PathLike[str]
_FILL = 24  # the storyboard's dark background


def _save(fig: Figure, path: PathLike) -> Path:
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out


def _style_line_panel(ax, title: str, xlabel: str, *, legend_size: int) -> None:  # noqa: ANN001
    """Title, integer x axis, grid and legend of a line-plot panel."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def _finite(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def bar_chart(path: PathLike, values: Mapping[str, Mapping[str, float | None]], *, metrics: Sequence[tuple[str, str]],
              title: str, ylabel: str = "score (higher is better)") -> Path:
    """Grouped bars: one group per metric (``(key, label)`` of ``metrics``), one bar per variant.

    ``values[variant][key]``: the score (None / NaN: no bar). Variants without any value (features that
    are not available) are left out of the legend. Returns ``path``.
    """
    variants = [v for v, row in values.items() if any(_finite(row.get(k)) for k, _ in metrics)]
    fig = Figure(figsize=(max(6.0, 1.1 * len(metrics) * max(1, len(variants)) / 2.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(variants))
    x = np.arange(len(metrics))  # [M] group centres
    for j, name in enumerate(variants):
        ys = [values[name].get(k) for k, _ in metrics]
        heights = [float(y) if _finite(y) else 0.0 for y in ys]
        bars = ax.bar(x - 0.4 + (j + 0.5) * width, heights, width, label=name)
        for bar, y in zip(bars, ys, strict=True):
            if not _finite(y):
                bar.set_alpha(0.0)  # nothing measured: no bar
    ax.set_xticks(x, [label for _, label in metrics], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.subplots_adjust(bottom=0.22, top=0.9, left=0.08, right=0.98)
    if variants:
        ax.legend(fontsize=8, ncols=min(3, len(variants)))
    return _save(fig, path)


def per_shot_curves(path: PathLike, series: Mapping[str, Mapping[str, Sequence[float | None]]], *, title: str) -> Path:
    """One panel per series (e.g. ``"identity fidelity"``), one line per variant over shot 1..N.

    ``series[panel][variant]``: per-shot values (None / NaN where nothing was measured). Returns ``path``.
    """
    panels = [p for p, lines in series.items() if any(any(_finite(v) for v in ys) for ys in lines.values())]
    n = max(1, len(panels))
    cols = min(2, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows))
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        for name, ys in series[panel].items():
            vals = np.array([float(v) if _finite(v) else np.nan for v in ys], dtype=np.float64)  # [N]
            if np.isfinite(vals).any():
                ax.plot(np.arange(1, vals.size + 1), vals, marker="o", label=name)
        _style_line_panel(ax, panel, "shot", legend_size=7)
    fig.suptitle(title)
    fig.subplots_adjust(hspace=0.5, wspace=0.25, top=1 - 0.5 / (3.4 * rows), bottom=0.45 / (3.4 * rows))
    return _save(fig, path)


def cost_curves(path: PathLike, history: Sequence[int], cost: Mapping[str, Mapping[str, Sequence[float | None]]], *,
                title: str) -> Path:
    """Compute against history length: one panel per quantity (``cost[panel][variant]`` per entry of
    ``history``), e.g. tokens and seconds per step with and without GoldenMem. Returns ``path``."""
    fig = Figure(figsize=(5.2 * max(1, len(cost)), 3.6))
    for k, (panel, lines) in enumerate(cost.items()):
        ax = fig.add_subplot(1, max(1, len(cost)), k + 1)
        for name, ys in lines.items():
            vals = np.array([float(v) if _finite(v) else np.nan for v in ys], dtype=np.float64)  # [H]
            ax.plot(list(history), vals, marker="o", label=name)
        _style_line_panel(ax, panel, "history shots", legend_size=8)
    fig.suptitle(title)
    fig.subplots_adjust(wspace=0.25, top=0.84, bottom=0.15)
    return _save(fig, path)


def storyboard_grid(path: PathLike, cases: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str]]], *,
                    columns: int = 2, cell: int = 64) -> Path:
    """Storyboards (:func:`storyreel.media.make_storyboard`) of several scenes side by side.

    ``cases``: ``(title, shots, prompts)`` with ``shots[i]`` uint8 ``[T_i, H, W, 3]``; laid out
    ``columns`` per row (e.g. best generated | its ground truth, worst generated | its ground truth).
    Returns ``path`` (PNG, written atomically).
    """
    if not cases:
        raise ValueError("storyboard_grid got no cases; pass at least one (title, shots, prompts)")
    boards = [make_storyboard(list(shots), list(prompts), frames_per_shot=4, cell=cell, title=title)
              for title, shots, prompts in cases]
    h = max(b.shape[0] for b in boards)
    w = max(b.shape[1] for b in boards)
    gap = 8
    padded = [np.pad(b, ((0, h - b.shape[0]), (0, w - b.shape[1]), (0, 0)), constant_values=_FILL) for b in boards]
    while len(padded) % columns:
        padded.append(np.full((h, w, 3), _FILL, dtype=np.uint8))
    rows = []
    for r in range(0, len(padded), columns):
        parts = []
        for b in padded[r : r + columns]:
            parts += [b, np.full((h, gap, 3), _FILL, dtype=np.uint8)]
        rows += [np.concatenate(parts[:-1], axis=1), np.full((gap, parts[0].shape[1] * columns + gap * (columns - 1), 3),
                                                               _FILL, dtype=np.uint8)]
    grid = np.concatenate(rows[:-1], axis=0)  # [rows·h + gaps, columns·w + gaps, 3]
    return write_image(path, grid)
