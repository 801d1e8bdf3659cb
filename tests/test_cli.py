"""The `storyreel` command as a user runs it (typer's CliRunner, in-process)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from storyreel.cli import app
from storyreel.media import read_video, video_info

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


@pytest.mark.parametrize("name", ["meeting-2shots.yaml", "meeting-4shots.yaml", "chase-8shots.yaml"])
def test_validate_examples_ok(name):
    result = runner.invoke(app, ["validate", str(EXAMPLES / name)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_validate_reports_every_problem_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "global: {characters: [{id: 1, description: a red circle}], setting: a slate room}\n"
        "shots:\n  - prompt: Wide shot of Character 3.\n    frames: -1\n"
        "settings: {resolution: [60, 64]}\n"
    )
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    out = result.output
    assert "shots[0].prompt" in out and "Character 3" in out
    assert "shots[0].frames" in out
    assert "settings.resolution" in out and "[width, height]" in out  # markup must not eat brackets


def test_data_render_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["data", "render", str(EXAMPLES / "meeting-2shots.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    scene = json.loads((out / "scene.json").read_text())
    assert scene["n_shots"] == 2 and len(scene["shots"]) == 2
    assert (out / "storyboard.png").stat().st_size > 1000
    assert video_info(out / "scene.mp4")["frames"] == 32
    shot = read_video(out / "shots" / "02.mp4")
    assert shot.shape == (16, 64, 64, 3)


def test_data_render_rejects_words_outside_the_vocabulary(tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text(
        "global: {characters: [{id: 1, description: a teal dragon}], setting: a slate room}\n"
        "shots: [{prompt: Wide shot of Character 1 jumping.}]\n"
    )
    result = runner.invoke(app, ["data", "render", str(script), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "global.characters[0].description" in result.output
    assert "red" in result.output and "circle" in result.output  # lists the vocabulary
    assert not (tmp_path / "o" / "scene.json").exists()


def test_data_synth_small(tmp_path):
    out = tmp_path / "ds"
    result = runner.invoke(app, ["data", "synth", "--scenes", "3", "--out", str(out), "--per-shard", "2", "--shots", "2"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["scenes"] for s in manifest["shards"]) == 3


def test_generate_with_debug_model_writes_outputs(tmp_path):
    out = tmp_path / "gen"
    result = runner.invoke(app, ["generate", str(EXAMPLES / "meeting-2shots.yaml"), "-o", str(out), "--model", "debug", "--steps", "2",
                                 "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    scene = json.loads((out / "scene.json").read_text())
    assert len(scene["shots"]) == 2 and scene["dtype"] == "bfloat16"
    assert read_video(out / "shots" / "01.mp4").shape[0] == 16


def test_generate_reports_bad_requests_before_compute(tmp_path):
    result = runner.invoke(app, ["generate", str(EXAMPLES / "meeting-2shots.yaml"), "-o", str(tmp_path / "g"), "--model", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist" in result.output
    assert not (tmp_path / "g" / "shots").exists()


def test_shipped_default_pipeline_loads():
    from storyreel.pipelines.scene import ScenePipeline

    pipe = ScenePipeline.from_pretrained("default")
    assert pipe.causal is not None
    assert pipe.scene.config.max_shots >= 4
    assert pipe.text_encoder.max_length == pipe.scene.config.text_len


def test_eval_scores_a_rendered_run_at_the_top_and_writes_eval_json(tmp_path):
    out = tmp_path / "gt"
    assert runner.invoke(app, ["data", "render", str(EXAMPLES / "meeting-2shots.yaml"), "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["scores"]["identity_fidelity"] == 1.0
    assert report["scores"]["text_shot_alignment"] == 1.0
    assert report["ground_truth"]["identity_fidelity"] == 1.0


def test_eval_of_a_run_against_another_script_scores_lower(tmp_path):
    out = tmp_path / "gt"
    assert runner.invoke(app, ["data", "render", str(EXAMPLES / "meeting-2shots.yaml"), "-o", str(out)]).exit_code == 0
    other = tmp_path / "other.yaml"
    other.write_text((EXAMPLES / "meeting-2shots.yaml").read_text().replace("a red circle", "a green circle").replace("a blue square", "a yellow square"))
    result = runner.invoke(app, ["eval", str(out), "--script", str(other)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "eval.json").read_text())["scores"]["identity_fidelity"] < 0.5


def test_eval_needs_a_finished_run(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2
    assert "scene.json" in result.output
