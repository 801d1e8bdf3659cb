"""The StoryWorld benchmark suites: the seed papers' ablations as tables and plots on fixed held-out scripts.

* ``masks`` — Mask²DiT (Qi et al. 2025) Table 2: attention-mask variants v1–v5 at generation time (joint mode);
* ``modes`` — LCT (Guo et al. 2025) Table 2: joint vs autoregressive vs context-causal (KV-cached) generation;
* ``history-tc`` — LCT Fig. 7–8: the history noise level ``t_c`` over 8 sequential shots (autoregressive);
* ``goldenmem`` — Captain Cinema (Xiao et al. 2025) Table 3: compute and quality with and without GoldenMem as
  the history grows;
* ``baselines`` — each shot generated alone (Mask²DiT's CogVideoX-concatenation baseline) and the ground truth.

Every scene is scored from pixels (:func:`storyreel.eval.score_scene`) against its StoryWorld ground truth and,
when StoryCLIP (:mod:`storyreel.eval.storyclip`) and its weights load, with StoryCLIP's visual / semantic /
sequence consistency and Fréchet distance. :func:`run_suite` writes ``bench-<suite>.md`` and PNG plots; the CLI
entry is :func:`bench_command` (``storyreel bench storyworld --suite NAME``). See ``docs/bench.md``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from storyreel.eval.metrics import MetricResult, SettingConfig, pool_scores, score_scene, summarize
from storyreel.script import SceneScript
from storyreel.utils import atomic_write

__all__ = ["HELD_OUT_BASE", "SUITES", "SuiteInfo", "SuiteResult", "bench_command", "held_out_scripts", "held_out_seed",
           "machine_info", "run_suite"]

HELD_OUT_BASE = 10_000_000
HELD_OUT_STRIDE = 100_000  # seeds per shot count; at most this many scripts per set
T_C_VALUES = (0.0, 0.1, 0.3, 0.5)


@dataclass(frozen=True)
class SuiteInfo:
    """A benchmark suite: its title, the paper table it mirrors, shots per held-out script and what it varies."""

    name: str
    title: str
    mirrors: str
    n_shots: int
    varies: str


SUITES: dict[str, SuiteInfo] = {s.name: s for s in (
    SuiteInfo("masks", "Attention-mask variants at generation time", "Mask²DiT Table 2", 4,
              "the scene model's mask policy in joint mode: mask2dit:v1 … v5"),
    SuiteInfo("modes", "Generation modes", "LCT Table 2", 4, "joint vs autoregressive vs causal (KV cache)"),
    SuiteInfo("history-tc", "History noise level t_c over 8 sequential shots", "LCT Fig. 7–8", 8,
              "t_c of the history shots in autoregressive mode"),
    SuiteInfo("goldenmem", "GoldenMem at growing history", "Captain Cinema Table 3", 8,
              "full history vs GoldenMem-compressed history (autoregressive)"),
    SuiteInfo("baselines", "Per-shot baseline and ground truth", "Mask²DiT Table 2 (baselines)", 4,
              "each shot generated alone vs the scene model vs the ground truth"),
)}

PIXEL_COLUMNS = (("identity_fidelity", "identity"), ("appearance_consistency", "appearance"),
                 ("pattern_distribution", "pattern dist."), ("setting_consistency", "setting"),
                 ("text_shot_alignment", "text–shot F1"), ("layout_ap", "layout AP@0.5"),
                 ("motion_smoothness", "motion smooth."), ("flicker", "flicker ↓"))
CLIP_COLUMNS = (("visual_consistency", "visual"), ("semantic_consistency", "semantic"),
                ("sequence_consistency", "sequence"), ("storyclip_fd", "FD ↓"))


# ----------------------------------------------------------------------------------------------
# held-out scripts and machine facts


def held_out_seed(k: int, n_shots: int) -> int:
    """StoryWorld seed of held-out script ``k`` with ``n_shots`` shots: ``10_000_000 + (n_shots - 4)·100_000 + k``.

    The 4-shot set is the one ``benchmarks/default_model.py`` uses. Training data draws 63-bit scene seeds
    (``storyreel.data.synth.scene_seed``), so it meets this range with probability ~1e-12 per scene.
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < HELD_OUT_STRIDE:
        raise ValueError(f"held-out script index k={k!r} is invalid; allowed: 0 <= k < {HELD_OUT_STRIDE}")
    if isinstance(n_shots, bool) or not isinstance(n_shots, int) or not 1 <= n_shots <= 16:
        raise ValueError(f"n_shots={n_shots!r} is invalid; allowed: an integer in 1..16")
    return HELD_OUT_BASE + (n_shots - 4) * HELD_OUT_STRIDE + k


def held_out_scripts(n: int, *, n_shots: int = 4) -> list[SceneScript]:
    """The first ``n`` held-out scripts with ``n_shots`` shots (64×64, 16 frames, 8 fps, all cuts):
    ``scene_to_script(sample_scene(held_out_seed(k, n_shots), n_shots=n_shots))`` for ``k < n``."""
    from storyreel.world import sample_scene, scene_to_script

    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= HELD_OUT_STRIDE:
        raise ValueError(f"n={n!r} held-out scripts is invalid; allowed: 1..{HELD_OUT_STRIDE}")
    return [scene_to_script(sample_scene(held_out_seed(k, n_shots), n_shots=n_shots)) for k in range(n)]


def machine_info(device: str = "cpu") -> dict[str, str]:
    """What a result records about where it ran: CPU, cores, torch threads, GPU, versions, date (UTC)."""
    import torch

    from storyreel import __version__

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info = {"date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "cpu": cpu, "cores": str(cores),
            "torch_threads": str(torch.get_num_threads()), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "storyreel": __version__, "device": str(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# ----------------------------------------------------------------------------------------------
# StoryCLIP (optional)


class _StoryCLIP:
    """StoryCLIP metrics of a scene through :mod:`storyreel.eval.storyclip` (one embedding pass per scene)."""

    NEEDED = ("load_storyclip", "embed_scene", "visual_consistency", "semantic_consistency", "sequence_consistency",
              "frechet_distance")

    def __init__(self, module: Any, model: Any, source: str) -> None:
        self.sc, self.model, self.source = module, model, source

    def scene(self, videos: Sequence[np.ndarray], script: SceneScript) -> tuple[dict[str, MetricResult], np.ndarray, np.ndarray]:
        """Scores and unit embeddings ``video [N, D]``, ``text [N, D]`` of one scene."""
        e = self.sc.embed_scene(list(videos), script, model=self.model)
        scores = {name: getattr(self.sc, name)(list(videos), script, embeddings=e)
                  for name in ("visual_consistency", "semantic_consistency", "sequence_consistency")}
        return scores, e.video.float().cpu().numpy(), e.text.float().cpu().numpy()


def load_storyclip_scorer(storyclip: Any, device: str) -> tuple[_StoryCLIP | None, str]:
    """``(scorer, status)``: the StoryCLIP scorer, or None and a sentence saying why it is missing.
    ``storyclip``: ``"default"`` (the shipped weights), a folder, a loaded ``StoryCLIP`` model, or None (off)."""
    if storyclip is None:
        return None, "StoryCLIP: off (run without --storyclip none to add visual / semantic / sequence consistency)"
    try:
        from storyreel.eval import storyclip as sc
    except ImportError as err:
        return None, f"StoryCLIP: missing (storyreel.eval.storyclip cannot be imported: {err}); pixel metrics only"
    lacking = [n for n in _StoryCLIP.NEEDED if not hasattr(sc, n)]
    if lacking:
        return None, f"StoryCLIP: missing (storyreel.eval.storyclip has no {', '.join(lacking)}); pixel metrics only"
    if not isinstance(storyclip, (str, os.PathLike)):
        return _StoryCLIP(sc, storyclip, "given model"), "StoryCLIP: the model passed in"
    try:
        model = sc.load_storyclip(storyclip, device=device)
    except (OSError, ValueError, RuntimeError) as err:
        return None, f"StoryCLIP: missing ({err}); pixel metrics only"
    return _StoryCLIP(sc, model, str(storyclip)), f"StoryCLIP: loaded from {storyclip}"


# ----------------------------------------------------------------------------------------------
# accumulation


@dataclass
class _Variant:
    name: str
    options: dict[str, Any] | None  # ScenePipeline.generate options; None = the ground truth
    per_shot: bool = False  # each shot generated alone (the per-shot baseline)
    note: str = ""


@dataclass
class _Acc:
    variant: _Variant
    missing: str = ""
    scores: list[dict[str, MetricResult]] = field(default_factory=list)
    clip: list[dict[str, MetricResult]] = field(default_factory=list)
    vectors: list[np.ndarray] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    shots: dict[str, list[np.ndarray]] = field(default_factory=dict)  # series -> [sum [S], count [S]]
    cost: dict[int, list[tuple[int, float]]] = field(default_factory=dict)  # history shots -> (tokens, s/step)

    def add_series(self, name: str, shot: int, value: float, weight: float = 1.0) -> None:
        s, c = self.shots.setdefault(name, [np.zeros(0), np.zeros(0)])
        if shot >= s.size:
            s, c = np.pad(s, (0, shot + 1 - s.size)), np.pad(c, (0, shot + 1 - c.size))
        s[shot] += value * weight
        c[shot] += weight
        self.shots[name] = [s, c]

    def series(self, name: str) -> list[float]:
        s, c = self.shots.get(name, [np.zeros(0), np.zeros(0)])
        return [float(a / b) if b else float("nan") for a, b in zip(s, c, strict=True)]

    def pooled_series(self, name: str, shots: slice) -> float:
        s, c = self.shots.get(name, [np.zeros(0), np.zeros(0)])
        return float(s[shots].sum() / c[shots].sum()) if c[shots].sum() else float("nan")


def _record_shots(acc: _Acc, scores: dict[str, MetricResult], n: int, video: np.ndarray | None,
                  text: np.ndarray | None) -> None:
    """Per-shot series of one scene: identity, history fidelity, motion smoothness (+ StoryCLIP ones)."""
    for it in scores["identity_fidelity"].items:
        acc.add_series("identity fidelity", it["shot"], float(it["ok"]))
    for it in scores["motion_smoothness"].items:
        if it["pixels"]:
            acc.add_series("motion smoothness", it["shot"], it["smoothness"], it["pixels"])
    # history fidelity: an unspoken detail established earlier is kept (pattern of each character as first
    # measured; the setting's dominant colour as in shot 1)
    for it in scores["appearance_consistency"].items:
        for s, p in zip(it["shots"][1:], it["patterns"][1:], strict=True):
            acc.add_series("history fidelity", s, float(p == it["patterns"][0]))
    dom = {it["shot"]: it["dominant"] for it in scores["setting_consistency"].items if "dominant" in it}
    tolerance = SettingConfig().color_tolerance
    if dom.get(0) is not None:
        for s in range(1, n):
            if s in dom:
                ok = dom[s] is not None and float(np.linalg.norm(np.subtract(dom[s], dom[0]))) <= tolerance
                acc.add_series("history fidelity", s, float(ok))
    if video is not None and text is not None:
        for s in range(n):
            acc.add_series("StoryCLIP semantic (shot vs its prompt)", s, float(video[s] @ text[s]))
            if s:
                acc.add_series("StoryCLIP similarity to earlier shots", s, float((video[:s] @ video[s]).mean()))


def _scene_quality(scores: dict[str, MetricResult]) -> float:
    vals = [scores[k].value for k in ("identity_fidelity", "text_shot_alignment", "appearance_consistency", "layout_ap")]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


# ----------------------------------------------------------------------------------------------
# generation


def _per_shot(pipe: Any, script: SceneScript, *, seed: int, steps: int | None) -> tuple[list[np.ndarray], dict]:
    """Each shot alone: a one-shot script with the same global prompt, seed ``seed + i``, joint mode."""
    videos, secs = [], []
    for i, shot in enumerate(script.shots):
        single = script.model_copy(update={"shots": [shot.model_copy(update={"cut": True, "history": None})]})
        r = pipe.generate(single, mode="joint", seed=seed + i, steps=steps)
        videos.append(r.videos[0])
        secs += r.meta["timings"]["shots_s"]
    return videos, {"timings": {"shots_s": secs}, "generation": {}}


def _variants(suite: str, pipe: Any) -> list[_Variant]:
    gt = _Variant("ground truth", None, note="StoryWorld render, upper bound")
    if suite == "masks":
        trained = {"mask2dit": "mask2dit:v2", "full": "mask2dit:v5"}.get(str(pipe.scene.config.attn_policy),
                                                                          str(pipe.scene.config.attn_policy))
        return [gt] + [_Variant(f"mask2dit:v{v}", {"mode": "joint", "policy": f"mask2dit:v{v}"},
                                note="the mask the model was trained with" if trained == f"mask2dit:v{v}" else "")
                       for v in range(1, 6)]
    if suite == "modes":
        return [gt, _Variant("joint", {"mode": "joint"}), _Variant("autoregressive", {"mode": "autoregressive"}),
                _Variant("causal (KV cache)", {"mode": "causal"})]
    if suite == "history-tc":
        return [gt] + [_Variant(f"t_c = {t:g}", {"mode": "autoregressive", "t_c": t}) for t in T_C_VALUES]
    if suite == "goldenmem":
        return [gt, _Variant("full history", {"mode": "autoregressive", "goldenmem": False}),
                _Variant("GoldenMem", {"mode": "autoregressive", "goldenmem": True})]
    return [gt, _Variant("scene model (joint)", {"mode": "joint"}),
            _Variant("per-shot (each shot alone)", {}, per_shot=True, note="Mask²DiT's concatenation baseline")]


def _precheck(pipe: Any, var: _Variant, script: SceneScript, *, seed: int, steps: int | None) -> str:
    """'' when the pipeline can serve this variant, else 'not available: <why>' (checked before any compute)."""
    from storyreel.pipelines import GenerationError

    try:
        if var.per_shot:
            pipe.check(script.model_copy(update={"shots": [script.shots[0].model_copy(update={"cut": True, "history": None})]}),
                       mode="joint", seed=seed, steps=steps)
        elif var.options is not None:
            pipe.check(script, seed=seed, steps=steps, **var.options)
    except GenerationError as err:
        return f"not available: {err}"
    return ""


# ----------------------------------------------------------------------------------------------
# the run


@dataclass
class SuiteResult:
    """What :func:`run_suite` measured and wrote.

    ``rows``: one dict per variant (``variant``, ``note``, ``available``, every metric of the table, ``seconds_per_scene``);
    ``per_shot[series][variant]``: per-shot values; ``cost``: GoldenMem rows (``history-tc`` and others: empty);
    ``markdown``: the table file's text; ``paths``: the files written (markdown first, then PNGs).
    """

    suite: str
    rows: list[dict[str, Any]]
    per_shot: dict[str, dict[str, list[float]]]
    cost: list[dict[str, Any]]
    markdown: str
    paths: list[Path]
    storyclip: str
    wall_seconds: float
    cpu_seconds: float


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _rows(accs: list[_Acc], clip_on: bool, gt_vectors: np.ndarray | None, sc: Any) -> list[dict[str, Any]]:
    rows = []
    for acc in accs:
        row: dict[str, Any] = {"variant": acc.variant.name, "note": acc.missing or acc.variant.note,
                               "available": not acc.missing and bool(acc.scores), "scenes": len(acc.scores)}
        if row["available"]:
            pooled = pool_scores(acc.scores)
            row.update(summarize(pooled))
            row["appearance_characters"] = int(pooled["appearance_consistency"].totals["count"])
            if clip_on and acc.clip:
                row.update(summarize(pool_scores(acc.clip)))
                vec = np.concatenate(acc.vectors)  # [all shots, D]
                ok = gt_vectors is not None and len(vec) >= 2 and len(gt_vectors) >= 2
                row["storyclip_fd"] = sc.frechet_distance(vec, gt_vectors) if ok else float("nan")
            row["history_fidelity"] = acc.pooled_series("history fidelity", slice(1, None))
            row["identity_first2"] = acc.pooled_series("identity fidelity", slice(0, 2))
            n = len(acc.series("identity fidelity"))
            row["identity_last2"] = acc.pooled_series("identity fidelity", slice(max(n - 2, 0), None))
            row["seconds_per_scene"] = float(np.mean(acc.seconds)) if acc.seconds else float("nan")
        rows.append(row)
    return rows


def _columns(suite: str, clip_on: bool) -> list[tuple[str, str]]:
    cols = list(CLIP_COLUMNS) if clip_on else []
    if suite in ("history-tc", "goldenmem"):
        cols += [("history_fidelity", "history fidelity"), ("identity_first2", "identity shots 1–2"),
                 ("identity_last2", "identity last 2 shots")]
    return cols + list(PIXEL_COLUMNS) + [("seconds_per_scene", "s / scene")]


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> list[str]:
    lines = ["| variant | " + " | ".join(label for _, label in cols) + " |", "| --- |" + " --- |" * len(cols)]
    for r in rows:
        name = r["variant"] + (f" ({r['note']})" if r["note"] and r["available"] else "")
        if not r["available"]:
            why = r["note"] or "not run"
            lines.append(f"| {name} | {why} |" + " — |" * (len(cols) - 1))
        else:
            cells = [_fmt(r.get(k)) + (f" ({r['appearance_characters']})" if k == "appearance_consistency" else "")
                     for k, _ in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def run_suite(name: str, *, model: Any = "default", n_scripts: int = 8, device: str = "cpu",
              out_dir: str | os.PathLike[str] = Path("benchmarks/results"), steps: int | None = None, seed: int = 0,
              progress: bool = True, scripts: Sequence[SceneScript] | None = None, storyclip: Any = "default",
              command: str | None = None) -> SuiteResult:
    """Run benchmark suite ``name`` (a key of :data:`SUITES`) and write ``out_dir/bench-<name>.md`` + PNG plots.

    Args:
        model: ``"default"``, ``"debug"``, a pipeline folder, or a :class:`~storyreel.pipelines.ScenePipeline`.
        n_scripts: held-out scripts (:func:`held_out_scripts`, the suite's shot count) unless ``scripts`` is given.
        device: ``cpu``, ``cuda``, ``cuda:N`` (generation and StoryCLIP; metrics run on the CPU).
        steps: sampling steps (default: the pipeline's).
        seed: added to each script's own seed to make its generation seed (0 = the script's seed).
        scripts: score these scripts instead of the held-out set (e.g. tiny scripts in tests).
        storyclip: ``"default"``, a StoryCLIP folder or model, or None (pixel metrics only).
        command: the command line recorded in the table file (default: the equivalent ``storyreel bench``).

    Returns:
        A :class:`SuiteResult`. Variants the pipeline cannot serve are reported as such, not scored.
    """
    from storyreel.pipelines import GenerationError, ScenePipeline
    from storyreel.world import render_script

    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    info = SUITES[name]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} is invalid; allowed: an integer >= 0")
    scripts = list(scripts) if scripts is not None else held_out_scripts(n_scripts, n_shots=info.n_shots)
    if not scripts:
        raise ValueError("scripts is empty; pass at least one SceneScript or leave it None for the held-out set")
    pipe = model if isinstance(model, ScenePipeline) else ScenePipeline.from_pretrained(model, device=device)
    scorer, clip_status = load_storyclip_scorer(storyclip, device)
    out = Path(out_dir)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    accs = [_Acc(v) for v in _variants(name, pipe)]
    for acc in accs:
        acc.missing = _precheck(pipe, acc.variant, scripts[0], seed=scripts[0].settings.seed + seed, steps=steps)
    jobs = len(scripts) * sum(1 for a in accs if not a.missing)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=jobs, desc=f"bench {name}", unit="scene", file=sys.stderr)
    gt_vectors: list[np.ndarray] = []
    cases: list[tuple[float, str, int, list[np.ndarray]]] = []  # (quality, variant, script, videos)
    for k, script in enumerate(scripts):
        truth = render_script(script)
        gt_frames = [s.frames for s in truth.shots]
        gen_seed = script.settings.seed + seed
        for acc in accs:
            if acc.missing:
                continue
            var = acc.variant
            t0 = time.perf_counter()
            meta: dict[str, Any] = {}
            try:
                if var.options is None:
                    videos = gt_frames
                elif var.per_shot:
                    videos, meta = _per_shot(pipe, script, seed=gen_seed, steps=steps)
                else:
                    r = pipe.generate(script, seed=gen_seed, steps=steps, **var.options)
                    videos, meta = r.videos, r.meta
            except GenerationError as err:
                acc.missing = f"not available: {err}"
                continue
            if var.options is not None:
                acc.seconds.append(time.perf_counter() - t0)
            scores = score_scene(videos, script, truth=truth)
            acc.scores.append(scores)
            vec = txt = None
            if scorer is not None:
                clip, vec, txt = scorer.scene(videos, script)
                acc.clip.append(clip)
                acc.vectors.append(vec)
                if var.options is None:
                    gt_vectors.append(vec)
            _record_shots(acc, scores, script.n_shots, vec, txt)
            gen = meta.get("generation") or {}
            per_step = [s / max(1, int(meta.get("steps") or 1)) for s in (meta.get("timings") or {}).get("shots_s") or []]
            for i, hist in (gen.get("history") or {}).items():
                tokens = (gen.get("history_tokens") or {}).get(i, 0)
                acc.cost.setdefault(len(hist), []).append((int(tokens), per_step[int(i) - 1]))
            if var.options is not None:
                cases.append((_scene_quality(scores), f"{var.name}, script {k + 1}", k, list(videos)))
                cases = sorted((c for c in cases if not math.isnan(c[0])), key=lambda c: c[0])
                cases = cases[:1] + cases[-1:] if len(cases) > 2 else cases
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    gt_vec = np.concatenate(gt_vectors) if gt_vectors else None
    rows = _rows(accs, scorer is not None, gt_vec, scorer.sc if scorer is not None else None)
    per_shot = {s: {a.variant.name: a.series(s) for a in accs if a.shots.get(s)} for s in
                dict.fromkeys(k for a in accs for k in a.shots)}
    cost = _cost_rows(accs) if name == "goldenmem" else []
    paths = _write(name, out, pipe=pipe, rows=rows, per_shot=per_shot, cost=cost, cases=cases, scripts=scripts,
                   clip_status=clip_status, clip_on=scorer is not None, wall=wall, cpu=cpu, device=device, steps=steps,
                   seed=seed, model=model, command=command)
    return SuiteResult(suite=name, rows=rows, per_shot=per_shot, cost=cost, markdown=paths[0].read_text(encoding="utf-8"),
                       paths=paths, storyclip=clip_status, wall_seconds=wall, cpu_seconds=cpu)


def _cost_rows(accs: list[_Acc]) -> list[dict[str, Any]]:
    """GoldenMem suite: per number of history shots, mean history tokens and seconds per step of each variant."""
    sizes = sorted({h for a in accs for h in a.cost})
    rows = []
    for h in sizes:
        row: dict[str, Any] = {"history_shots": h}
        for a in accs:
            vals = a.cost.get(h)
            if vals:
                row[f"{a.variant.name}: tokens"] = float(np.mean([v[0] for v in vals]))
                row[f"{a.variant.name}: s/step"] = float(np.mean([v[1] for v in vals]))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# output


def _write(name: str, out: Path, *, pipe: Any, rows: list[dict[str, Any]], per_shot: dict, cost: list[dict[str, Any]],
           cases: list, scripts: list[SceneScript], clip_status: str, clip_on: bool, wall: float, cpu: float, device: str,
           steps: int | None, seed: int, model: Any, command: str | None) -> list[Path]:
    from storyreel.eval import bench_plots  # matplotlib: loaded only when a suite writes its plots

    info = SUITES[name]
    mach = machine_info(device)
    stem = f"bench-{name}"
    out.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    bar_metrics = [(k, lab) for k, lab in (*CLIP_COLUMNS[:3], *PIXEL_COLUMNS[:7]) if clip_on or (k, lab) not in CLIP_COLUMNS]
    if name in ("history-tc", "goldenmem"):
        bar_metrics.insert(0, ("history_fidelity", "history fidelity"))
    plots.append(bench_plots.bar_chart(out / f"{stem}-bars.png", {r["variant"]: r for r in rows if r["available"]},
                                       metrics=bar_metrics, title=f"{info.title} ({info.mirrors} analogue)"))
    if per_shot:
        plots.append(bench_plots.per_shot_curves(out / f"{stem}-shots.png", per_shot, title=f"{info.title}: per shot"))
    if cost:
        variants = [r["variant"] for r in rows if r["available"] and r["variant"] != "ground truth"]
        hist = [c["history_shots"] for c in cost]
        plots.append(bench_plots.cost_curves(out / f"{stem}-cost.png", hist, {
            q: {v: [c.get(f"{v}: {q}") for c in cost] for v in variants} for q in ("tokens", "s/step")},
            title="history cost with and without GoldenMem"))
    if cases:
        from storyreel.world import render_script

        board = []
        for quality, label, k, videos in [cases[-1], cases[0]] if len(cases) > 1 else cases:
            prompts = [scripts[k].shot_prompt_text(i) for i in range(scripts[k].n_shots)]
            board.append((f"{label} (score {quality:.2f})", videos, prompts))
            board.append((f"ground truth, script {k + 1}", [s.frames for s in render_script(scripts[k]).shots], prompts))
        plots.append(bench_plots.storyboard_grid(out / f"{stem}-cases.png", board))
    model_name = getattr(pipe, "name", str(model))
    seeds = [s.settings.seed for s in scripts]
    cmd = command or (f"storyreel bench storyworld --suite {name} --n {len(scripts)} --device {device}"
                      + (f" --steps {steps}" if steps else "") + f" --seed {seed} --model {model if isinstance(model, str) else model_name}")
    where = mach.get("gpu") or f"{mach['cpu']}, {mach['cores']} cores, {mach['torch_threads']} torch threads"
    lines = [
        f"# StoryWorld benchmark `{name}`: {info.title} ({info.mirrors} analogue)", "",
        f"- date: {mach['date']}; machine: {where}; device {device}",
        f"- versions: storyreel {mach['storyreel']}, python {mach['python']}, torch {mach['torch']}, numpy {mach['numpy']}",
        f"- model: {model_name} (weights sha256 {pipe.weights_sha256()[:12]}); steps {steps or pipe.defaults.steps}, guidance "
        f"{pipe.defaults.guidance}, solver {pipe.defaults.solver}; scene model trained with mask {pipe.scene.config.attn_policy}",
        f"- scripts: {len(scripts)} × {scripts[0].n_shots} shots, StoryWorld seeds {min(seeds)}…{max(seeds)} "
        f"(`storyreel.eval.bench.held_out_scripts`); generation seed = script seed + {seed}",
        f"- varies: {info.varies}",
        f"- {clip_status}",
        f"- time: {wall:.0f} s wall, {cpu:.0f} s CPU (process, all threads) for the whole suite",
        f"- command: `{cmd}`", "",
        *_table(rows, _columns(name, clip_on)), "",
    ]
    if cost:
        variants = [r["variant"] for r in rows if r["available"] and r["variant"] != "ground truth"]
        lines += ["History cost per generated shot (mean over shots with that many history shots; seconds per sampling "
                  "step include guidance's two passes and decoding):", "",
                  "| history shots | " + " | ".join(f"{v}: {q}" for v in variants for q in ("tokens", "s/step")) + " |",
                  "| --- |" + " --- |" * (2 * len(variants))]
        lines += ["| " + " | ".join([str(c["history_shots"])] + [_fmt(c.get(f"{v}: {q}"), 0 if q == "tokens" else 3)
                                                                   for v in variants for q in ("tokens", "s/step")]) + " |"
                  for c in cost]
        lines.append("")
    lines += ["Columns: see docs/bench.md (metrics: docs/evaluation.md). ↓ = lower is better; n/a = nothing measurable; "
              "appearance (k): k characters measured in two or more shots. Reading notes: layout AP compares with the "
              "StoryWorld positions, which no prompt states, so a pipeline that ignores layouts scores about 0 here; "
              "setting consistency is below 1 on ground truth (pans and re-centred shots show other parts of the set), "
              "so a static background can score above it.", "",
              *[f"![{p.stem}]({p.name})" for p in plots], ""]
    md = out / f"{stem}.md"
    with atomic_write(md, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return [md, *plots]


# ----------------------------------------------------------------------------------------------
# command line


def bench_command(
    suite: Annotated[str, typer.Option("--suite", help=f"Suite to run: {', '.join(SUITES)} (see docs/bench.md).")],
    n: Annotated[int, typer.Option("--n", min=1, max=HELD_OUT_STRIDE, help="Held-out scripts to run (4 shots each; "
                                   "8 for history-tc and goldenmem). CPU: about 15 s per scene and variant.")] = 50,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (generation and StoryCLIP).")] = "cpu",
    steps: Annotated[Optional[int], typer.Option(min=1, help="Sampling steps (default: the model's).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for bench-SUITE.md and its PNG plots.")] = Path("benchmarks/results"),
    seed: Annotated[int, typer.Option(min=0, help="Added to each script's seed to make its generation seed.")] = 0,
    model: Annotated[str, typer.Option(help="Pipeline: default, debug, or a pipeline / model folder.")] = "default",
    storyclip: Annotated[str, typer.Option(help="StoryCLIP weights folder, 'default', or 'none' for pixel metrics "
                                           "only.")] = "default",
) -> None:
    """Run a StoryWorld benchmark suite on fixed held-out scripts; write a markdown table and plots.

    Suites: masks (Mask²DiT Table 2: mask variants v1-v5), modes (LCT Table 2: joint / autoregressive / causal),
    history-tc (LCT Fig. 7-8: t_c over 8 shots), goldenmem (Captain Cinema Table 3), baselines (per-shot
    generation and ground truth).
    """
    from storyreel.pipelines import GenerationError

    if suite not in SUITES:
        typer.echo(f"error: unknown suite {suite!r}; choose one of {', '.join(SUITES)} (docs/bench.md)", err=True)
        raise typer.Exit(2)
    try:
        res = run_suite(suite, model=model, n_scripts=n, device=device, out_dir=out, steps=steps, seed=seed,
                        storyclip=None if storyclip.lower() == "none" else storyclip)
    except (GenerationError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(res.markdown)
    typer.echo(f"wrote {', '.join(str(p) for p in res.paths)}")
