"""The StoryWorld benchmark suites end to end on tiny scripts with random-weight debug pipelines."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from storyreel.eval import bench
from storyreel.eval.bench import SUITES, bench_command, held_out_scripts, held_out_seed, run_suite
from storyreel.media import read_image
from storyreel.pipelines import ScenePipeline
from storyreel.world import sample_scene, scene_to_script

TINY = dict(resolution=(32, 32), frames=4)


@pytest.fixture(scope="module")
def scripts():
    """Two 3-shot scripts at 32x32, 4 frames per shot (held-out seeds)."""
    return [scene_to_script(sample_scene(held_out_seed(k, 3), n_shots=3, **TINY)) for k in range(2)]


@pytest.fixture(scope="module")
def pipe():
    return ScenePipeline.debug(max_shots=4, steps=2)


@pytest.mark.parametrize("suite", list(SUITES))
def test_every_suite_writes_its_table_and_plots(suite, scripts, pipe, tmp_path, one_thread):
    scripts = scripts if suite in ("goldenmem", "history-tc") else scripts[:1]
    res = run_suite(suite, model=pipe, scripts=scripts, out_dir=tmp_path, steps=2, progress=False, storyclip=None)
    md = tmp_path / f"bench-{suite}.md"
    assert res.paths[0] == md and md.read_text(encoding="utf-8") == res.markdown
    text = res.markdown
    assert f"`{suite}`" in text and SUITES[suite].mirrors in text and "| variant |" in text
    assert "s wall" in text and "s CPU" in text and "StoryCLIP: off" in text
    names = {p.name for p in res.paths}
    expected = {f"bench-{suite}-bars.png", f"bench-{suite}-shots.png", f"bench-{suite}-cases.png"}
    if suite == "goldenmem":
        expected.add("bench-goldenmem-cost.png")
    assert expected <= names
    for p in res.paths[1:]:
        img = read_image(p)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
        assert f"]({p.name})" in text
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temporary files left behind
    gt = next(r for r in res.rows if r["variant"] == "ground truth")
    assert gt["available"] and gt["identity_fidelity"] == 1.0 and gt["layout_ap"] >= 0.9
    generated = [r for r in res.rows if r["variant"] != "ground truth"]
    assert generated and all(r["available"] for r in generated)
    assert all(r["seconds_per_scene"] > 0 and r["scenes"] == len(scripts) for r in generated)
    assert res.per_shot["identity fidelity"]["ground truth"] == [1.0, 1.0, 1.0]
    if suite == "history-tc":
        assert {r["variant"] for r in generated} == {f"t_c = {t:g}" for t in bench.T_C_VALUES}
        assert gt["history_fidelity"] == 1.0 and "history fidelity" in text
    if suite == "goldenmem":
        rows = {c["history_shots"]: c for c in res.cost}
        assert sorted(rows) == [0, 1, 2]  # shots 1, 2, 3 of a 3-shot scene, window 4
        assert rows[2]["full history: tokens"] == 2 * rows[1]["full history: tokens"] > 0
        assert 0 < rows[2]["GoldenMem: tokens"] < rows[2]["full history: tokens"]
        assert "| history shots |" in text


def test_missing_features_are_reported_plainly(scripts, tmp_path, one_thread):
    no_causal = ScenePipeline.debug(max_shots=4, steps=2, causal=False)
    res = run_suite("modes", model=no_causal, scripts=scripts[:1], out_dir=tmp_path, steps=2, progress=False, storyclip=None)
    causal = next(r for r in res.rows if r["variant"] == "causal (KV cache)")
    assert not causal["available"] and causal["note"].startswith("not available:") and "context-causal" in causal["note"]
    line = next(ln for ln in res.markdown.splitlines() if ln.startswith("| causal (KV cache)"))
    assert "not available" in line and "n/a" not in line and "0." not in line  # a sentence, not a number
    assert next(r for r in res.rows if r["variant"] == "joint")["available"]
    # joint mode cannot take more shots than the model was trained on: every mask variant says so
    small = ScenePipeline.debug(max_shots=2, steps=2)
    res = run_suite("masks", model=small, scripts=scripts[:1], out_dir=tmp_path, steps=2, progress=False, storyclip=None)
    masks = [r for r in res.rows if r["variant"].startswith("mask2dit")]
    assert len(masks) == 5 and all(not r["available"] and "at most 2" in r["note"] for r in masks)
    assert "StoryCLIP: off" in res.markdown


def test_storyclip_columns_when_it_loads_and_a_note_when_missing(scripts, pipe, tmp_path, one_thread):
    from storyreel.eval.storyclip import STORYCLIP_CONFIGS, StoryCLIP

    torch.manual_seed(0)
    cfg = dataclasses.replace(STORYCLIP_CONFIGS["debug"], text_encoder="hashing", text_dim=64)
    StoryCLIP(cfg).save_pretrained(tmp_path / "clip")
    res = run_suite("baselines", model=pipe, scripts=scripts[:1], out_dir=tmp_path / "a", steps=2, progress=False,
                    storyclip=tmp_path / "clip")
    assert "StoryCLIP: loaded from" in res.markdown and "| visual | semantic | sequence | FD ↓ |" in res.markdown
    gt = next(r for r in res.rows if r["variant"] == "ground truth")
    assert gt["storyclip_fd"] == pytest.approx(0.0, abs=1e-6)
    for r in res.rows:
        assert -1.0 <= r["visual_consistency"] <= 1.0 and not math.isnan(r["sequence_consistency"])
    assert "StoryCLIP similarity to earlier shots" in res.per_shot
    res = run_suite("baselines", model=pipe, scripts=scripts[:1], out_dir=tmp_path / "b", steps=2, progress=False,
                    storyclip=tmp_path / "nowhere")
    assert "StoryCLIP: missing" in res.markdown and "pixel metrics only" in res.markdown
    assert "| visual |" not in res.markdown


def test_results_are_written_atomically(scripts, pipe, tmp_path, monkeypatch, one_thread):
    md = tmp_path / "bench-baselines.md"
    md.write_text("previous result\n", encoding="utf-8")
    seen = []
    real = bench.atomic_write

    def spy(path, *args, **kwargs):
        seen.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(bench, "atomic_write", spy)

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    with monkeypatch.context() as m:
        from storyreel.eval import bench_plots

        m.setattr(bench_plots, "bar_chart", broken)
        with pytest.raises(RuntimeError, match="plot failed"):
            run_suite("baselines", model=pipe, scripts=scripts[:1], out_dir=tmp_path, steps=2, progress=False, storyclip=None)
    assert md.read_text(encoding="utf-8") == "previous result\n"  # a failed run leaves the old table as it was
    run_suite("baselines", model=pipe, scripts=scripts[:1], out_dir=tmp_path, steps=2, progress=False, storyclip=None)
    assert seen == [md] and md.read_text(encoding="utf-8").startswith("# StoryWorld benchmark `baselines`")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_held_out_set_is_fixed_and_disjoint_from_training():
    from storyreel.data.synth import scene_seed

    a, b = held_out_scripts(3), held_out_scripts(3)
    assert a == b and [s.settings.seed for s in a] == [10_000_000, 10_000_001, 10_000_002]
    assert all(s.n_shots == 4 and s.settings.resolution == (64, 64) for s in a)
    assert [s.settings.seed for s in held_out_scripts(2, n_shots=8)] == [10_400_000, 10_400_001]
    lo, hi = held_out_seed(0, 1), held_out_seed(bench.HELD_OUT_STRIDE - 1, 16)
    train = np.array([scene_seed(0, j) for j in range(5000)], dtype=np.uint64)  # training scenes use dataset seed 0
    assert not ((train >= lo) & (train <= hi)).any()
    with pytest.raises(ValueError, match="n_shots"):
        held_out_seed(0, 17)
    with pytest.raises(ValueError, match="unknown suite 'mask'"):
        run_suite("mask", model="debug")


def test_bench_command_help_and_errors(tmp_path, one_thread):
    app = typer.Typer()
    app.command()(bench_command)
    runner = CliRunner()
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "--suite" in out.output and "history-tc" in out.output and "goldenmem" in out.output
    bad = runner.invoke(app, ["--suite", "nope"])
    assert bad.exit_code == 2 and "unknown suite" in bad.output
    # the debug pipeline sees at most 3 shots, so joint mode cannot run the 4-shot held-out scripts: the table says so
    ok = runner.invoke(app, ["--suite", "masks", "--n", "1", "--model", "debug", "--steps", "2", "--out", str(tmp_path),
                             "--storyclip", "none"])
    assert ok.exit_code == 0, ok.output
    text = (tmp_path / "bench-masks.md").read_text(encoding="utf-8")
    assert text.count("not available") == 5 and "| ground truth" in text


def test_pattern_transfer_probe_integrates_like_the_sampler():
    """benchmarks/pattern_transfer.py re-implements the Euler loop to see the clean estimates; it must land where
    the library's sampler does, and its last estimate is the result."""
    import importlib
    import sys
    from pathlib import Path

    from storyreel.sampling import strategies

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        probe = importlib.import_module("pattern_transfer")
    finally:
        sys.path.pop(0)
    g = torch.Generator().manual_seed(0)
    hist, noise = torch.randn(1, 2, 2, 3, 3, generator=g), torch.randn(1, 2, 1, 3, 3, generator=g)
    w = torch.randn(2, 2, generator=g)

    def model_fn(latents, t_row):  # a velocity that depends on the state, the shot's t and the history
        return [torch.einsum("oc,bcthw->bothw", w, z) * t_row[0, s] + latents[0].mean() for s, z in enumerate(latents)]

    grid = strategies.shot_timestep_grid(5, generate=[False, True])
    want = strategies.sample_segments(model_fn, [hist, noise], [0, 1], grid)
    rec = probe.Recorder()
    got = rec(model_fn, [hist, noise], [0, 1], grid)
    assert all(torch.allclose(a, b) for a, b in zip(got, want))
    assert torch.equal(got[0], hist)  # the held condition does not move
    assert [round(t, 3) for t, _ in rec.estimates] == [round(float(t), 3) for t in grid[:, 0, 1]]
    assert torch.equal(rec.estimates[-1][1], got[-1])
    t0, x0 = rec.estimates[0]
    assert t0 == 1.0 and torch.allclose(x0, noise - model_fn([hist, noise], grid[0])[1])


def test_copy_or_recall_scores_a_perfect_copier_and_a_perfect_recaller():
    """benchmarks/copy_or_recall.py: with ground-truth renders as the 'generated' last shot, the swapped scene's own
    shot 4 follows the swapped history (a copier), the unswapped shot 4 draws the scene's own pattern (a recaller)."""
    import importlib
    import sys
    from pathlib import Path

    from storyreel.world import render_scene

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        cr = importlib.import_module("copy_or_recall")
    finally:
        sys.path.pop(0)
    specs = cr.training_specs(7, 64, 3)
    assert len(specs) == 3 and all(len(s.shots) == 4 for s in specs)
    scored = 0
    for spec in specs:
        sw = cr.swapped(spec)
        assert all(a.pattern != b.pattern and dataclasses.replace(a, pattern=b.pattern) == b
                   for a, b in zip(spec.characters, sw.characters))
        own = [s.frames for s in render_scene(spec).shots]
        other = [s.frames for s in render_scene(sw).shots]
        copier = cr.tally([*other[:3], other[3]], spec, sw)
        recaller = cr.tally([*other[:3], own[3]], spec, sw)
        as_drawn = cr.tally(own, spec, spec)
        assert copier["n"] == recaller["n"] == as_drawn["n"]
        scored += copier["n"]
        if copier["n"]:
            assert copier[cr.FOLLOWS] == copier["n"] and copier[cr.OWN] == 0
            assert recaller[cr.OWN] == recaller["n"] and recaller[cr.FOLLOWS] == 0
            assert as_drawn[cr.FOLLOWS] == as_drawn["n"] and as_drawn[cr.OWN] == 0
    assert scored >= 2  # characters of shot 4 seen before: the test scores something
