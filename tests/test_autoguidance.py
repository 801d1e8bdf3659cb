"""Autoguidance: a weak guide model's term in the sampler, the pipeline's guide folder, and its checks."""

import copy
import dataclasses
import json

import pytest
import torch

from storyreel.models import MultiShotMMDiT, get_model_config
from storyreel.pipelines import GenerationError, ScenePipeline
from storyreel.pipelines.scene import DEFAULT_PIPELINE_DIR, PipelineDefaults
from storyreel.sampling.strategies import history_guided_segment_fn

from test_pipeline import debug_extra, make_script


def _const(v, calls=None):
    def fn(latents, t):
        if calls is not None:
            calls.append(v)
        return [torch.full_like(z, v) for z in latents]
    return fn


def test_autoguidance_term_over_segment_functions():
    z = [torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 3, 2, 2)]
    t = torch.zeros(1, 2)
    calls: list[float] = []
    out = history_guided_segment_fn(_const(5.0, calls), _const(1.0, calls), _const(4.0, calls), 3.0, 2.0,
                                    weak=_const(2.5, calls), weak_scale=0.5)(z, t)
    assert sorted(calls) == [1.0, 2.5, 4.0, 5.0]  # every function once per step
    expect = 1.0 + 3.0 * (5.0 - 1.0) + 2.0 * (5.0 - 4.0) + 0.5 * (5.0 - 2.5)  # u + g(c-u) + h(c-a) + w(c-weak)
    assert [o.shape for o in out] == [x.shape for x in z] and all(torch.all(o == expect) for o in out)
    calls.clear()
    out = history_guided_segment_fn(_const(5.0, calls), None, None, 3.0, 0.0, weak=_const(2.0, calls), weak_scale=2.0)(z, t)
    assert sorted(calls) == [2.0, 5.0]  # no text, no history branch: only the model and its guide run
    assert all(torch.all(o == 5.0 + 2.0 * (5.0 - 2.0)) for o in out)


@pytest.fixture(scope="module")
def guided_pipe():
    pipe = ScenePipeline.debug(seed=0)
    base = copy.copy(pipe)  # the same models, without a guide
    pipe.guide = ScenePipeline.debug(seed=1, causal=False).scene  # same shape, other weights: a 'weaker' model
    return pipe, base


@pytest.mark.parametrize("mode", ["joint", "autoregressive"])
def test_autoguidance_changes_the_video_only_when_weighted(guided_pipe, mode):
    pipe, base = guided_pipe
    script = make_script(3)
    plain = base.generate(script, mode=mode)
    off = pipe.generate(script, mode=mode, autoguidance=0.0)
    on = pipe.generate(script, mode=mode, autoguidance=2.0)
    for a, b in zip(plain.latents, off.latents):  # weight 0: the guide is never called, same video as no guide
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert on.meta["autoguidance"] == 2.0 and off.meta["autoguidance"] == 0.0
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(on.latents, off.latents))
    assert on.meta["generation"]["run"] != off.meta["generation"]["run"]  # a resumed run cannot mix the two


def test_autoguidance_is_checked_before_compute(guided_pipe):
    pipe, base = guided_pipe
    script = make_script(2)
    with pytest.raises(GenerationError, match="needs a guide model.*--guide"):
        base.check(script, mode="joint", autoguidance=1.0)
    with pytest.raises(GenerationError, match="does not apply to mode causal"):
        pipe.check(script, mode="causal", autoguidance=1.0)
    with pytest.raises(GenerationError, match="autoguidance"):
        pipe.check(script, mode="joint", autoguidance=-1.0)
    old = pipe.defaults
    try:  # the pipeline default applies to every mode but causal
        pipe.defaults = dataclasses.replace(old, autoguidance=3.0)
        assert pipe.check(script, mode="joint").autoguidance == 3.0
        assert pipe.check(script, mode="autoregressive").autoguidance == 3.0
        assert pipe.check(script, mode="causal").autoguidance == 0.0
    finally:
        pipe.defaults = old
    with pytest.raises(ValueError, match="autoguidance"):
        PipelineDefaults(autoguidance=float("nan"))


def test_guide_must_match_the_scene_model():
    pipe = ScenePipeline.debug(seed=0)
    wrong = MultiShotMMDiT(dataclasses.replace(pipe.scene.config, text_len=pipe.scene.config.text_len + 1))
    with pytest.raises(ValueError, match="guide model text_len"):
        ScenePipeline(scene=pipe.scene, autoencoder=pipe.autoencoder, text_encoder=pipe.text_encoder, guide=wrong)


def test_guide_round_trips_through_a_pipeline_folder(tmp_path, guided_pipe):
    pipe, base = guided_pipe
    pipe.defaults = dataclasses.replace(pipe.defaults, autoguidance=1.5)
    try:
        pipe.save_pretrained(tmp_path / "p")
    finally:
        pipe.defaults = dataclasses.replace(pipe.defaults, autoguidance=0.0)
    meta = json.loads((tmp_path / "p" / "pipeline.json").read_text())
    assert meta["guide"] == "guide" and meta["defaults"]["autoguidance"] == 1.5
    loaded = ScenePipeline.from_pretrained(tmp_path / "p")
    assert loaded.guide is not None and loaded.defaults.autoguidance == 1.5
    for p, q in zip(pipe.guide.parameters(), loaded.guide.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
    assert loaded.weights_sha256() != base.weights_sha256()
    base.save_pretrained(tmp_path / "q")  # no guide: no guide entry, and the hash of a pipeline without one is unchanged
    assert "guide" not in json.loads((tmp_path / "q" / "pipeline.json").read_text())
    assert ScenePipeline.from_pretrained(tmp_path / "q").weights_sha256() == base.weights_sha256()


def test_export_adds_a_guide(tmp_path):
    from storyreel.pipelines.export import main as export_main

    cfg = get_model_config("debug", in_channels=12, text_dim=64, text_len=8, max_shots=3)
    extra = debug_extra()
    torch.manual_seed(0)
    MultiShotMMDiT(cfg).save_pretrained(tmp_path / "scene", extra=extra)
    MultiShotMMDiT(cfg).save_pretrained(tmp_path / "guide", extra=extra)
    assert export_main([str(tmp_path / "scene"), "--out", str(tmp_path / "bad"), "--autoguidance", "2"]) == 2
    assert export_main([str(tmp_path / "scene"), "--guide", str(tmp_path / "guide"), "--autoguidance", "2",
                        "--out", str(tmp_path / "p")]) == 0
    pipe = ScenePipeline.from_pretrained(tmp_path / "p")
    assert pipe.guide is not None and pipe.defaults.autoguidance == 2.0


def test_shipped_default_has_its_guide():
    """The shipped pipeline carries the weak guide model (autoguidance is opt-in: ``--autoguidance 3``)."""
    meta = json.loads((DEFAULT_PIPELINE_DIR / "pipeline.json").read_text())
    assert meta.get("guide") == "guide"
    pipe = ScenePipeline.from_pretrained("default")
    assert pipe.guide is not None and pipe.guide.config.text_len == pipe.scene.config.text_len
    assert sum(p.numel() for p in pipe.guide.parameters()) < sum(p.numel() for p in pipe.scene.parameters()) / 4


def test_cli_autoguidance_without_a_guide_fails_before_compute(tmp_path):
    from typer.testing import CliRunner

    from storyreel.cli import app

    script = tmp_path / "s.yaml"
    script.write_text(
        "title: t\nglobal:\n  characters:\n    - {id: 1, description: a red circle}\n  setting: a slate room\n"
        "shots:\n  - {prompt: Wide shot of Character 1 moving right.}\nsettings: {resolution: [16, 16], frames: 3, seed: 1}\n")
    result = CliRunner().invoke(app, ["generate", str(script), "-o", str(tmp_path / "g"), "--model", "debug",
                                      "--autoguidance", "2"])
    assert result.exit_code == 2, result.output
    assert "needs a guide model" in result.output and "--autoguidance 0" in result.output
    assert not (tmp_path / "g" / "shots").exists()
    help_text = CliRunner().invoke(app, ["generate", "--help"]).output
    assert "--autoguidance" in help_text
