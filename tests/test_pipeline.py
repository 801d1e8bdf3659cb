"""Scene generation on debug pipelines: modes, KV cache, resume, determinism, extend, long takes, errors."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from storyreel.autoencoders import PatchAutoencoder
from storyreel.media import read_video
from storyreel.memory import PHI
from storyreel.models import MultiShotMMDiT, get_model_config
from storyreel.outputs import SceneWriter
from storyreel.pipelines import GenerationError, ScenePipeline, generate_to_dir, resolve_device, resolve_dtype, shot_seed
from storyreel.pipelines import scene as scene_module
from storyreel.pipelines.scene import PipelineDefaults
from storyreel.script import parse_script
from storyreel.text import HashingEncoder

PROMPTS = [
    "Wide shot of Character 1 moving right.",
    "Close-up of Character 2 spinning.",
    "Medium shot of Character 1 jumping.",
    "Wide shot of Character 2 exiting.",
    "Close-up of Character 1 entering.",
]


def debug_extra(**changes):
    """The training facts (``config.json`` ``_extra``) of a debug scene model on the hashing encoder and patch
    autoencoder, with ``changes`` applied."""
    return {"text_encoder": "hashing", "text_encoder_kwargs": {"dim": 64}, "text_len": 8, "autoencoder": "patch",
            "autoencoder_kwargs": {"patch": [1, 2, 2]}, "latent_scale": 1.0, "global_prompt": True, "frames": 4,
            **changes}


def make_script(n=4, *, frames=3, seed=3, mode=None, cuts=None, history=None, resolution=(16, 16), shot_frames=None,
                prompts=None, **settings):
    shots = []
    for i in range(n):
        shot = {"prompt": (prompts or PROMPTS)[i % len(prompts or PROMPTS)]}
        if shot_frames and i in shot_frames:
            shot["frames"] = shot_frames[i]
        if cuts is not None and not cuts[i]:
            shot["cut"] = False
        if history and i in history:
            shot["history"] = history[i]
        shots.append(shot)
    sett = {"resolution": list(resolution), "frames": frames, "fps": 8, "seed": seed, **settings}
    if mode is not None:
        sett["mode"] = mode
    return parse_script({
        "title": "test scene",
        "global": {"characters": [{"id": 1, "description": "a red circle"}, {"id": 2, "description": "a blue square"}],
                   "setting": "a slate room", "story": "Character 1 meets Character 2."},
        "shots": shots, "settings": sett,
    })


@pytest.fixture(scope="module")
def pipe():
    return ScenePipeline.debug(seed=0)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory, pipe):
    return pipe.save_pretrained(tmp_path_factory.mktemp("pipe") / "debug-pipeline")


def files_state(out, names):
    return {n: ((out / "shots" / n).stat().st_mtime_ns, (out / "shots" / n).read_bytes()) for n in names}


# ------------------------------------------------------------------------------------------ modes


@pytest.mark.parametrize("mode,n", [("joint", 3), ("autoregressive", 4), ("causal", 4)])
def test_every_mode_runs_and_writes_all_outputs(tmp_path, pipe_dir, mode, n):
    out = tmp_path / "run"
    scene = generate_to_dir(make_script(n), out, mode=mode, model=str(pipe_dir), progress=False)
    for i in range(1, n + 1):
        assert (out / "shots" / f"{i:02d}.mp4").is_file() and (out / "shots" / f"{i:02d}.json").is_file()
    assert (out / "scene.mp4").is_file() and (out / "storyboard.png").is_file()
    on_disk = json.loads((out / "scene.json").read_text())
    assert on_disk == scene
    assert scene["mode"] == mode and scene["n_shots"] == n and scene["total_frames"] == 3 * n
    assert scene["seed"] == 3 and scene["steps"] == 3 and scene["guidance"] == 2.0
    assert scene["model"]["sha256"] == ScenePipeline.from_pretrained(pipe_dir).weights_sha256()
    assert scene["model"]["id"] == str(pipe_dir)
    assert scene["script"]["settings"]["mode"] == mode and scene["script"]["shots"][0]["prompt"] == PROMPTS[0]
    assert scene["generation"]["shot_seeds"] == [shot_seed(3, i) for i in range(n)]
    assert scene["generation"]["generated"] == list(range(1, n + 1))
    assert len(scene["timings"]["shots_s"]) == n and scene["timings"]["total_s"] > 0
    video = read_video(out / "scene.mp4")
    assert video.shape == (3 * n, 16, 16, 3) and video.std() > 1  # not a constant image
    side = json.loads((out / "shots" / "02.json").read_text())
    assert side["meta"]["model_prompt"] == "[SHOT CUT] " + PROMPTS[1]
    if mode != "joint":
        assert scene["generation"]["history"]["4"] == [2, 3]  # window 3 = 2 history shots, most recent


def test_history_changes_the_shot(pipe):
    """A shot generated with history differs from the same shot generated alone (the history is really used)."""
    script = make_script(2)
    with_history = pipe.generate(script, mode="autoregressive")
    alone = pipe.generate(script, mode="autoregressive", history="script")  # no shot names a history: none
    assert alone.meta["generation"]["history"] == {"1": [], "2": []}
    assert torch.equal(with_history.latents[0], alone.latents[0])
    assert (with_history.latents[1] - alone.latents[1]).abs().max() > 1e-3


@pytest.mark.parametrize("options", [{}, {"goldenmem": True}, {"solver": "heun", "t_c": 0.0}, {"guidance": 1.0},
                                     {"history_guidance": 2.0}, {"history_guidance": 2.0, "guidance": 1.0}])
def test_causal_kv_cache_equals_recomputing_history(pipe, options):
    script = make_script(5)
    cached = pipe.generate(script, mode="causal", kv_cache=True, **options)
    full = pipe.generate(script, mode="causal", kv_cache=False, **options)
    assert cached.meta["generation"]["history"] == full.meta["generation"]["history"]
    if not options.get("goldenmem"):  # (GoldenMem keeps only the frames that fit its budget, see test_goldenmem_*)
        assert cached.meta["generation"]["history"]["5"] == [3, 4]
    for a, b in zip(cached.latents, full.latents):
        assert (a - b).abs().max().item() <= 1e-5
    for a, b in zip(cached.videos, full.videos):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.parametrize("mode", ["joint", "causal"])
def test_bf16_weights_give_close_video_and_are_recorded(tmp_path, pipe_dir, mode):
    """--dtype bf16 casts the scene models only; the video stays close to float32's, scene.json and the hash say so."""
    full = generate_to_dir(make_script(3), tmp_path / "fp32", mode=mode, model=str(pipe_dir), progress=False)
    half = generate_to_dir(make_script(3), tmp_path / "bf16", mode=mode, model=str(pipe_dir), progress=False, dtype="bf16")
    assert full["dtype"] == "float32" and half["dtype"] == "bfloat16"
    assert half["model"]["sha256"] != full["model"]["sha256"]  # a resume cannot mix the two runs
    a, b = read_video(tmp_path / "fp32" / "scene.mp4"), read_video(tmp_path / "bf16" / "scene.mp4")
    diff = np.abs(a.astype(float) - b.astype(float))
    assert 0 < diff.mean() < 8 and np.isfinite(b).all()
    pipe = ScenePipeline.from_pretrained(pipe_dir, dtype="bf16")
    assert pipe.dtype == torch.bfloat16 and next(pipe.autoencoder.parameters(), torch.zeros(1)).dtype == torch.float32
    assert pipe.causal is not None and next(pipe.causal.parameters()).dtype == torch.bfloat16
    with pytest.raises(GenerationError, match=r"dtype 'int8' is unknown; use bf16, fp16 or fp32"):
        ScenePipeline.from_pretrained(pipe_dir, dtype="int8")
    assert resolve_dtype("FP16") == torch.float16 and resolve_dtype(None) is None


def test_goldenmem_bounds_history_tokens(pipe):
    script = make_script(4, frames=4)
    frame_tokens = 4 * 4  # 16x16 pixels -> 8x8 latent -> 4x4 tokens
    gm = pipe.generate(script, mode="autoregressive", goldenmem=True).meta["generation"]["history_tokens"]
    plain = pipe.generate(script, mode="autoregressive").meta["generation"]["history_tokens"]
    assert plain == {"1": 0, "2": 4 * frame_tokens, "3": 8 * frame_tokens, "4": 8 * frame_tokens}
    assert gm["1"] == 0 and all(frame_tokens <= gm[k] < PHI * frame_tokens for k in ("2", "3", "4"))


def test_history_guidance_math_over_segment_functions():
    from storyreel.sampling.strategies import history_guided_segment_fn

    def const(v):
        return lambda latents, t: [torch.full_like(z, v) for z in latents]

    z = [torch.zeros(1, 2, 1, 2, 2), torch.zeros(1, 2, 3, 2, 2)]
    out = history_guided_segment_fn(const(5.0), const(1.0), const(4.0), 3.0, 2.0)(z, torch.zeros(1, 2))
    assert [o.shape for o in out] == [x.shape for x in z]
    assert all(torch.all(o == 1.0 + 3.0 * (5.0 - 1.0) + 2.0 * (5.0 - 4.0)) for o in out)  # u + g(c-u) + h(c-a)
    out = history_guided_segment_fn(const(5.0), None, const(4.0), 3.0, 2.0)(z, torch.zeros(1, 2))
    assert all(torch.all(o == 5.0 + 2.0 * (5.0 - 4.0)) for o in out)  # no text guidance: c + h(c-a)


@pytest.mark.parametrize("mode", ["joint", "autoregressive", "causal"])
def test_history_guidance_pushes_shots_by_the_other_shots_only(pipe, mode):
    script = make_script(3)
    plain = pipe.generate(script, mode=mode)
    guided = pipe.generate(script, mode=mode, history_guidance=2.0)
    assert guided.meta["history_guidance"] == 2.0 and plain.meta["history_guidance"] == 0.0
    assert (guided.latents[1] - plain.latents[1]).abs().max() > 1e-4  # the term is really applied
    if mode == "causal":
        # the context-causal model's global prompt sees only itself, so for a shot without history "alone" is
        # exactly "with the others" and the term vanishes (the bidirectional model's global prompt also reads the
        # shots, which the alone branch cuts off)
        assert (guided.latents[0] - plain.latents[0]).abs().max() <= 1e-5
        single = make_script(1)
        a, b = pipe.generate(single, mode=mode), pipe.generate(single, mode=mode, history_guidance=2.0)
        assert (a.latents[0] - b.latents[0]).abs().max() <= 1e-5


def test_causal_mode_has_its_own_history_guidance_default(pipe):
    """``defaults.history_guidance_causal`` applies to causal mode only; an explicit weight wins in every mode."""
    script = make_script(3)
    old = pipe.defaults
    try:
        pipe.defaults = dataclasses.replace(old, history_guidance=2.0, history_guidance_causal=4.0)
        assert pipe.check(script, mode="causal").history_guidance == 4.0
        assert pipe.check(script, mode="joint").history_guidance == 2.0
        assert pipe.check(script, mode="autoregressive").history_guidance == 2.0
        assert pipe.check(script, mode="causal", history_guidance=1.0).history_guidance == 1.0
        by_default = pipe.generate(script, mode="causal")
        explicit = pipe.generate(script, mode="causal", history_guidance=4.0)
        assert by_default.meta["history_guidance"] == 4.0
        torch.testing.assert_close(by_default.latents[2], explicit.latents[2], atol=0, rtol=0)
        pipe.defaults = dataclasses.replace(old, history_guidance=2.0)  # unset: causal follows history_guidance
        assert pipe.check(script, mode="causal").history_guidance == 2.0
    finally:
        pipe.defaults = old
    for bad in (-1.0, float("inf"), True):
        with pytest.raises(ValueError, match="history_guidance_causal"):
            PipelineDefaults(history_guidance_causal=bad)


def test_joint_mask_policy_is_selectable(pipe):
    script = make_script(3)
    default = pipe.generate(script, mode="joint")
    diag = pipe.generate(script, mode="joint", policy="block_diagonal")
    assert diag.meta["policy"] == "block_diagonal"
    assert (default.latents[1] - diag.latents[1]).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_same_video_and_seed_changes_it(pipe):
    script = make_script(3)
    a = pipe.generate(script, mode="autoregressive")
    b = pipe.generate(script, mode="autoregressive")
    c = pipe.generate(script, mode="autoregressive", seed=4)
    for x, y in zip(a.latents, b.latents):
        assert torch.equal(x, y)
    for x, y in zip(a.videos, b.videos):
        assert np.array_equal(x, y)
    assert (a.latents[0] - c.latents[0]).abs().max() > 1e-3


def test_shot_noise_does_not_depend_on_other_shots(pipe):
    """Shot 1 (no history) comes out the same whatever the later shots are (their count, their frames)."""
    short = pipe.generate(make_script(2, frames=3), mode="autoregressive")
    long_ = pipe.generate(make_script(4, frames=3), mode="causal")
    other = make_script(3, shot_frames={1: 5}, prompts=[PROMPTS[0], PROMPTS[3], PROMPTS[4]])
    other_run = pipe.generate(other, mode="autoregressive")
    assert torch.equal(short.latents[0], other_run.latents[0])
    # causal: shot 2 of a 4-shot scene equals shot 2 of a 2-shot scene (same noise, same history, causal attention)
    assert torch.equal(long_.latents[1], pipe.generate(make_script(2, frames=3), mode="causal").latents[1])
    assert shot_seed(3, 0) != shot_seed(3, 1) and shot_seed(3, 0) == shot_seed(3, 0)


# ------------------------------------------------------------------------------------------ resume / extend


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("mode", ["autoregressive", "causal"])
def test_resume_after_crash_gives_the_uninterrupted_video(tmp_path, pipe, mode):
    script = make_script(4)
    ref_dir, out = tmp_path / "ref", tmp_path / "out"
    pipe.generate(script, mode=mode, writer=SceneWriter(ref_dir, fps=8))

    def crash_at_shot_3(event):
        if event.kind == "step" and event.shots == (2,) and event.step == 2:
            raise Crash("simulated crash")

    with pytest.raises(Crash):
        pipe.generate(script, mode=mode, writer=SceneWriter(out, fps=8), callback=crash_at_shot_3)
    writer = SceneWriter(out, fps=8)
    assert writer.finished_shots() == [0, 1] and not (out / "scene.json").exists()
    before = files_state(out, ["01.mp4", "01.json", "02.mp4", "02.json"])
    with pytest.raises(GenerationError, match="--resume"):
        pipe.generate(script, mode=mode, writer=writer)  # refuses to touch a run without resume
    result = pipe.generate(script, mode=mode, writer=writer, resume=True)
    assert result.reused == [0, 1] and result.generated == [2, 3]
    assert files_state(out, ["01.mp4", "01.json", "02.mp4", "02.json"]) == before
    for i in range(4):
        assert np.array_equal(read_video(out / "shots" / f"{i + 1:02d}.mp4"), read_video(ref_dir / "shots" / f"{i + 1:02d}.mp4"))
    assert np.array_equal(read_video(out / "scene.mp4"), read_video(ref_dir / "scene.mp4"))
    assert result.scene["generation"]["reused"] == [1, 2]


def test_resume_refuses_a_different_run(tmp_path, pipe):
    out = tmp_path / "out"
    pipe.generate(make_script(2), mode="autoregressive", writer=SceneWriter(out, fps=8))
    before = files_state(out, ["01.mp4", "02.mp4"])
    with pytest.raises(GenerationError, match="different run"):
        pipe.generate(make_script(2, seed=9), mode="autoregressive", writer=SceneWriter(out, fps=8), resume=True)
    assert files_state(out, ["01.mp4", "02.mp4"]) == before


def test_joint_resume_rewrites_only_missing_shots(tmp_path, pipe):
    out = tmp_path / "out"
    script = make_script(3)
    pipe.generate(script, mode="joint", writer=SceneWriter(out, fps=8))
    ref = read_video(out / "scene.mp4")
    (out / "shots" / "03.json").unlink()  # as if the run died while writing shot 3
    (out / "scene.json").unlink()
    before = files_state(out, ["01.mp4", "02.mp4"])
    result = pipe.generate(script, mode="joint", writer=SceneWriter(out, fps=8), resume=True)
    assert result.reused == [0, 1] and result.generated == [2]
    assert files_state(out, ["01.mp4", "02.mp4"]) == before
    assert np.array_equal(read_video(out / "scene.mp4"), ref)


def test_extend_adds_shots_from_saved_outputs(tmp_path, pipe):
    out, ref = tmp_path / "out", tmp_path / "ref"
    pipe.generate(make_script(2), mode="autoregressive", writer=SceneWriter(out, fps=8))
    before = files_state(out, ["01.mp4", "01.json", "02.mp4", "02.json"])
    result = pipe.generate(make_script(4), mode="extend", writer=SceneWriter(out, fps=8))
    assert result.reused == [0, 1] and result.generated == [2, 3]
    assert files_state(out, ["01.mp4", "01.json", "02.mp4", "02.json"]) == before
    scene = json.loads((out / "scene.json").read_text())
    assert scene["n_shots"] == 4 and scene["mode"] == "extend" and scene["generation"]["history"]["3"] == [1, 2]
    # extending equals generating the whole scene shot by shot (same seed, same saved history)
    full = pipe.generate(make_script(4), mode="autoregressive", writer=SceneWriter(ref, fps=8))
    for i in (2, 3):
        assert torch.allclose(result.latents[i], full.latents[i], atol=1e-5)
    with pytest.raises(GenerationError, match="holds no finished shots"):
        pipe.generate(make_script(3), mode="extend", writer=SceneWriter(tmp_path / "empty", fps=8))
    with pytest.raises(GenerationError, match="extend"):
        pipe.generate(make_script(3), mode="extend")


def test_long_take_conditions_on_the_previous_shot(tmp_path, pipe):
    script = make_script(4, cuts=[True, True, False, True])
    out = tmp_path / "out"
    result = pipe.generate(script, mode="autoregressive", history="script", writer=SceneWriter(out, fps=8))
    assert result.meta["generation"]["history"] == {"1": [], "2": [], "3": [2], "4": []}
    side = json.loads((out / "shots" / "03.json").read_text())
    assert side["meta"]["model_prompt"] == PROMPTS[2]  # no [SHOT CUT]: it continues shot 2
    named = pipe.generate(make_script(4, history={3: [1]}), mode="autoregressive")
    assert named.meta["generation"]["history"]["4"] == [1]


# ------------------------------------------------------------------------------------------ loading


def test_save_and_load_round_trip(tmp_path, pipe, pipe_dir):
    loaded = ScenePipeline.from_pretrained(pipe_dir)
    assert loaded.weights_sha256() == pipe.weights_sha256()
    assert loaded.defaults == pipe.defaults and loaded.causal is not None
    script = make_script(2)
    a, b = pipe.generate(script, mode="causal"), loaded.generate(script, mode="causal")
    assert all(torch.equal(x, y) for x, y in zip(a.latents, b.latents))
    assert json.loads((pipe_dir / "pipeline.json").read_text())["autoencoder"] == {"name": "patch", "kwargs": {"patch": [1, 2, 2]}}


def test_shared_causal_serves_causal_mode_with_the_scene_weights(tmp_path, pipe):
    shared = ScenePipeline(scene=pipe.scene, causal="shared", autoencoder=pipe.autoencoder, text_encoder=pipe.text_encoder,
                           defaults=pipe.defaults, autoencoder_spec=pipe.autoencoder_spec, text_encoder_spec=pipe.text_encoder_spec)
    assert shared.causal_shared and shared.causal.config.attn_policy == "causal_shots"
    assert shared.causal.config.depth == pipe.scene.config.depth
    scene_params = dict(pipe.scene.named_parameters())
    assert all(p is scene_params[n] for n, p in shared.causal.named_parameters())  # the same objects, nothing copied
    script = make_script(3)
    with_cache = shared.generate(script, mode="causal")
    recomputed = shared.generate(script, mode="causal", kv_cache=False)
    assert all((a - b).abs().max().item() <= 1e-5 for a, b in zip(with_cache.latents, recomputed.latents))
    # context-causal attention, not the scene model's: differs from joint mode's video and from the separate causal twin
    joint = shared.generate(script, mode="joint")
    assert not torch.equal(with_cache.latents[0], joint.latents[0])
    # saved once: pipeline.json says "shared", no causal/ folder; loading restores the sharing and the same video
    folder = shared.save_pretrained(tmp_path / "shared")
    assert json.loads((folder / "pipeline.json").read_text())["causal"] == "shared" and not (folder / "causal").exists()
    loaded = ScenePipeline.from_pretrained(folder)
    assert loaded.causal_shared and loaded.weights_sha256() == shared.weights_sha256()
    assert all(torch.equal(a, b) for a, b in zip(loaded.generate(script, mode="causal").latents, with_cache.latents))
    loaded.to("cpu", "bf16")  # casting the scene model casts the shared causal view with it
    assert all(p.dtype == torch.bfloat16 for p in loaded.causal.parameters())
    with pytest.raises(ValueError, match="'sharde' is not a model"):
        ScenePipeline(scene=pipe.scene, causal="sharde", autoencoder=pipe.autoencoder, text_encoder=pipe.text_encoder)


def test_export_shared_causal_needs_causal_training(tmp_path):
    from storyreel.pipelines.export import main as export_main

    extra = debug_extra(frames=3)
    cfg = get_model_config("debug", in_channels=12, text_dim=64, text_len=8, max_shots=3)
    MultiShotMMDiT(cfg).save_pretrained(tmp_path / "bidir", extra={**extra, "causal_prob": 0.0})
    with pytest.raises(GenerationError, match=r"trained without context-causal batches.*train.causal_prob=0.3"):
        ScenePipeline.from_model_folders(tmp_path / "bidir", causal="shared")
    MultiShotMMDiT(cfg).save_pretrained(tmp_path / "mixed", extra={**extra, "causal_prob": 0.35})
    assert export_main([str(tmp_path / "mixed"), "--causal", "shared", "--out", str(tmp_path / "pipe")]) == 0
    loaded = ScenePipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.causal_shared and loaded.trained["causal_prob"] == 0.35


def test_trained_autoencoder_is_saved_in_the_pipeline_folder(tmp_path):
    from storyreel.autoencoders import get_autoencoder

    torch.manual_seed(1)
    ae = get_autoencoder("vae-debug")  # 8x space, 4x time, 4 latent channels
    cfg = get_model_config("debug", in_channels=ae.latent_channels, text_dim=64, text_len=8, max_shots=2)
    pipe = ScenePipeline(scene=MultiShotMMDiT(cfg), autoencoder=ae, text_encoder=HashingEncoder(dim=64, max_length=8),
                         text_encoder_spec={"name": "hashing", "kwargs": {"dim": 64}}, latent_scale=0.5)
    folder = pipe.save_pretrained(tmp_path / "p")
    assert (folder / "autoencoder" / "config.json").is_file() and not (folder / "causal").exists()
    loaded = ScenePipeline.from_pretrained(folder)
    assert loaded.weights_sha256() == pipe.weights_sha256() and loaded.latent_scale == 0.5
    plan = loaded.check(make_script(2, frames=5))  # 5 frames -> 2 latent frames; 16 px -> 2 latent px
    assert plan.latent_shapes == ((4, 2, 2, 2), (4, 2, 2, 2))
    result = loaded.generate(make_script(2, frames=5), mode="autoregressive", steps=1)
    assert [v.shape for v in result.videos] == [(5, 16, 16, 3)] * 2


def test_export_can_ship_a_decoder_only_fine_tune_and_refuses_another_encoder(tmp_path):
    from storyreel.autoencoders import get_autoencoder

    torch.manual_seed(1)
    ae = get_autoencoder("vae-debug")
    ae.save_pretrained(tmp_path / "ae")
    with torch.no_grad():  # a decoder-only fine-tune: same encoder, new decoder
        for name, p in ae.named_parameters():
            if name.startswith("decoder."):
                p.add_(0.01)
    ae.save_pretrained(tmp_path / "ae-decoder")
    with torch.no_grad():
        next(p for n, p in ae.named_parameters() if n.startswith("encoder.")).add_(0.01)
    ae.save_pretrained(tmp_path / "ae-other")
    extra = {"text_encoder": "hashing", "text_encoder_kwargs": {"dim": 64}, "text_len": 8, "autoencoder": str(tmp_path / "ae"),
             "latent_scale": 1.0, "global_prompt": True, "frames": 5}
    cfg = get_model_config("debug", in_channels=ae.latent_channels, text_dim=64, text_len=8, max_shots=2)
    MultiShotMMDiT(cfg).save_pretrained(tmp_path / "scene", extra=extra)
    pipe = ScenePipeline.from_model_folders(tmp_path / "scene", autoencoder=tmp_path / "ae-decoder")
    shipped = get_autoencoder(tmp_path / "ae-decoder").state_dict()
    assert all(torch.equal(v, shipped[k]) for k, v in pipe.autoencoder.state_dict().items())
    with pytest.raises(GenerationError, match="encoder weights differ.*decoder-only fine-tune"):
        ScenePipeline.from_model_folders(tmp_path / "scene", autoencoder=tmp_path / "ae-other")


def test_pipeline_from_training_export(tmp_path):
    cfg = get_model_config("debug", in_channels=12, text_dim=64, text_len=8, max_shots=3)
    model = MultiShotMMDiT(cfg)
    extra = debug_extra(global_prompt=False)
    model.save_pretrained(tmp_path / "model", extra=extra)
    pipe = ScenePipeline.from_pretrained(tmp_path / "model")
    assert not pipe.global_prompt and pipe.causal is None and pipe.trained["frames"] == 4
    result = pipe.generate(make_script(2), mode="joint", steps=1)
    assert len(result.videos) == 2


def test_export_stores_half_precision_weights_that_load_back(tmp_path):
    from safetensors import safe_open

    from storyreel.pipelines.export import main as export_main

    cfg = get_model_config("debug", in_channels=12, text_dim=64, text_len=8, max_shots=3)
    torch.manual_seed(0)
    extra = debug_extra()
    MultiShotMMDiT(cfg).save_pretrained(tmp_path / "scene", extra=extra)
    MultiShotMMDiT(get_model_config("debug", in_channels=12, text_dim=64, text_len=8, max_shots=3, attn_policy="causal_shots")
                   ).save_pretrained(tmp_path / "causal", extra=extra)
    assert export_main([str(tmp_path / "scene"), "--causal", str(tmp_path / "causal"), "--out", str(tmp_path / "p"),
                        "--dtype", "float16", "--history-guidance", "2", "--history-guidance-causal", "4"]) == 0
    defaults = json.loads((tmp_path / "p" / "pipeline.json").read_text())["defaults"]
    assert defaults["history_guidance"] == 2.0 and defaults["history_guidance_causal"] == 4.0
    with safe_open(str(tmp_path / "p" / "scene" / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    full = ScenePipeline.from_model_folders(tmp_path / "scene", causal=tmp_path / "causal")
    half = ScenePipeline.from_pretrained(tmp_path / "p")
    assert half.defaults.history_guidance == 2.0 and full.defaults.history_guidance == 0.0
    assert half.defaults.history_guidance_for("causal") == 4.0 and half.defaults.history_guidance_for("joint") == 2.0
    assert half.causal is not None and next(half.scene.parameters()).dtype == torch.float32
    for (name, p), q in zip(full.scene.named_parameters(), half.scene.parameters()):
        torch.testing.assert_close(q, p, atol=1e-3, rtol=1e-3, msg=name)  # fp16 rounding only
    assert export_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "q")]) == 2  # clear error, no crash


# ------------------------------------------------------------------------------------------ errors before compute


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran although the request should have been refused first")

    monkeypatch.setattr(MultiShotMMDiT, "forward", refuse)


def test_joint_with_too_many_shots_is_refused(tmp_path, pipe_dir, no_compute):
    out = tmp_path / "out"
    with pytest.raises(GenerationError, match=r"mode joint .* 4 shots .* at most 3 .*--mode autoregressive"):
        generate_to_dir(make_script(4), out, mode="joint", model=str(pipe_dir), progress=False)
    assert not out.exists()


def test_mode_is_chosen_when_nobody_sets_it(pipe):
    assert pipe.check(make_script(3)).mode == "joint"
    assert pipe.check(make_script(4)).mode == "causal"
    assert pipe.check(make_script(4, mode="autoregressive")).mode == "autoregressive"
    no_causal = ScenePipeline.debug(causal=False)
    assert no_causal.check(make_script(5)).mode == "autoregressive"
    with pytest.raises(GenerationError, match="context-causal model"):
        no_causal.check(make_script(2), mode="causal")


def _wide_pipeline(patch_ae, patch_model):
    ae = PatchAutoencoder(patch_ae)
    cfg = get_model_config("debug", in_channels=ae.latent_channels, text_dim=64, text_len=8, patch_size=patch_model)
    return ScenePipeline(scene=MultiShotMMDiT(cfg), autoencoder=ae, text_encoder=HashingEncoder(dim=64, max_length=8))


def test_resolution_and_frames_the_model_cannot_serve(no_compute):
    pipe = _wide_pipeline((1, 8, 8), (1, 2, 2))  # 16 pixels per token side
    with pytest.raises(GenerationError, match=r"width 24 .* multiple of 16 .* use 16 or 32"):
        pipe.check(make_script(2, resolution=(24, 32)))
    pipe = _wide_pipeline((2, 2, 2), (2, 2, 2))  # time: 2x autoencoder, 2x patch
    with pytest.raises(GenerationError, match=r"shots\[0\] has 5 frames \(use 3 or 6\)"):
        pipe.check(make_script(2, frames=5))
    assert pipe.check(make_script(2, frames=6)).latent_shapes[0][1] == 4


def test_history_beyond_the_window_is_refused(pipe, no_compute):
    with pytest.raises(GenerationError, match=r"shots\[3\] names history \[1, 2, 3\].*leaves 2"):
        pipe.check(make_script(4, history={3: [1, 2, 3]}), mode="autoregressive")
    with pytest.raises(GenerationError, match="cut: false"):
        pipe.check(make_script(3, cuts=[True, True, False]), mode="autoregressive", context_window=1)
    with pytest.raises(GenerationError, match="exceeds"):
        pipe.check(make_script(3), mode="autoregressive", context_window=9)


def test_bad_settings_are_refused(pipe, no_compute):
    with pytest.raises(GenerationError, match="steps=0"):
        pipe.check(make_script(2), steps=0)
    with pytest.raises(GenerationError, match="solver"):
        pipe.check(make_script(2), solver="rk4")
    with pytest.raises(GenerationError, match="history strategy"):
        pipe.check(make_script(2), history="random")
    with pytest.raises(GenerationError, match="mode 'fast'"):
        pipe.check(make_script(2), mode="fast")
    with pytest.raises(GenerationError, match="policy"):
        pipe.check(make_script(2), mode="causal", policy="full")
    with pytest.raises(GenerationError, match="goldenmem"):
        pipe.check(make_script(2), mode="joint", goldenmem=True)
    with pytest.raises(GenerationError, match="history_guidance"):
        pipe.check(make_script(2), history_guidance=-1.0)


def test_missing_model_and_missing_default(tmp_path, monkeypatch):
    with pytest.raises(GenerationError, match=r"does not exist.*--model"):
        generate_to_dir(make_script(2), tmp_path / "out", model=str(tmp_path / "nowhere"), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GenerationError, match="not a pipeline folder"):
        ScenePipeline.from_pretrained(tmp_path / "empty")
    monkeypatch.setattr(scene_module, "DEFAULT_PIPELINE_DIR", tmp_path / "weights" / "default")
    with pytest.raises(GenerationError, match=r"no default model is shipped.*--model PATH"):
        ScenePipeline.from_pretrained("default")
    assert not (tmp_path / "out").exists()


def test_unavailable_device(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GenerationError, match=r"no usable CUDA GPU.*--device cpu"):
        generate_to_dir(make_script(2), tmp_path / "out", device="cuda", model="debug", progress=False)
    with pytest.raises(GenerationError, match="not a device name"):
        resolve_device("gpu0")
    assert resolve_device("cpu") == torch.device("cpu")
    assert not (tmp_path / "out").exists()


def test_existing_run_folder_is_not_overwritten_by_accident(tmp_path, pipe):
    out = tmp_path / "out"
    pipe.generate(make_script(2), mode="joint", writer=SceneWriter(out, fps=8))
    before = files_state(out, ["01.mp4", "02.mp4"])
    with pytest.raises(GenerationError, match="--overwrite"):
        pipe.generate(make_script(2, seed=5), mode="joint", writer=SceneWriter(out, fps=8))
    assert files_state(out, ["01.mp4", "02.mp4"]) == before
    pipe.generate(make_script(2, seed=5), mode="joint", writer=SceneWriter(out, fps=8), overwrite=True)
    assert json.loads((out / "scene.json").read_text())["seed"] == 5


def test_events_report_progress(pipe):
    events = []
    pipe.generate(make_script(2), mode="autoregressive", callback=events.append)
    steps = [e for e in events if e.kind == "step"]
    shots = [e.shots for e in events if e.kind == "shot"]
    assert [(e.shots, e.step) for e in steps] == [((0,), 1), ((0,), 2), ((0,), 3), ((1,), 1), ((1,), 2), ((1,), 3)]
    assert shots == [(0,), (1,)]
    assert math.isclose(steps[0].n_steps, 3)


def test_character_expansion_follows_the_training_export(tmp_path):
    """A model trained with data.expand_characters reads shot prompts with each named character's description;
    the pipeline folder records it, and the prompt the model saw is in the shot's metadata."""
    cfg = get_model_config("debug", in_channels=12, text_dim=64, text_len=8, max_shots=3)
    torch.manual_seed(0)
    extra = debug_extra(expand_characters=True)
    MultiShotMMDiT(cfg).save_pretrained(tmp_path / "model", extra=extra)
    pipe = ScenePipeline.from_pretrained(tmp_path / "model")
    assert pipe.expand_characters
    folder = pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((folder / "pipeline.json").read_text())["expand_characters"] is True
    loaded = ScenePipeline.from_pretrained(folder)
    assert loaded.expand_characters
    script = make_script(2)
    assert loaded.model_prompt(script, 1) == "[SHOT CUT] Close-up of Character 2 (a blue square) spinning."
    generate_to_dir(script, tmp_path / "run", mode="autoregressive", model=str(folder), progress=False, steps=1)
    side = json.loads((tmp_path / "run" / "shots" / "02.json").read_text())
    assert side["meta"]["model_prompt"] == "[SHOT CUT] Close-up of Character 2 (a blue square) spinning."
    # a pipeline without the flag (every earlier folder) reads the prompt as written
    assert ScenePipeline.debug(seed=0).model_prompt(script, 1) == "[SHOT CUT] " + PROMPTS[1]


def test_causal_cache_survives_a_shot_with_its_own_history(pipe, monkeypatch):
    """Shots 3 and 4 name their own history (LCT's human selection). Shot 3's cache shares the global prompt with
    the main line [global, 1] and the main line is kept, so shot 4 (history [1]) writes nothing; shot 5 (recency,
    the window holds 2 history shots) starts from the shared global prompt. The video equals the uncached path."""
    from storyreel.pipelines import scene_run

    writes = []
    real = scene_run.write_kv_cache
    monkeypatch.setattr(scene_run, "write_kv_cache", lambda *a, **k: (writes.append(1), real(*a, **k))[1])
    script = make_script(5, history={2: [2], 3: [1]})
    cached = pipe.generate(script, mode="causal", kv_cache=True, guidance=1.0)
    history = cached.meta["generation"]["history"]
    assert (history["3"], history["4"], history["5"]) == ([2], [1], [3, 4])
    # shot 2: global + shot 1; shot 3: shot 2; shot 4: nothing; shot 5: shots 3 and 4 (one CFG branch)
    assert len(writes) == 2 + 1 + 0 + 2
    full = pipe.generate(script, mode="causal", kv_cache=False, guidance=1.0)
    for a, b in zip(cached.latents, full.latents):
        assert (a - b).abs().max().item() <= 1e-5


def test_debug_pipeline_is_a_function_of_its_seed():
    """Two debug pipelines of one seed hold the same weights whatever the global generator did before; seeds differ."""
    torch.manual_seed(123)
    a = ScenePipeline.debug(seed=5)
    torch.rand(7)  # the global generator moves on
    b = ScenePipeline.debug(seed=5)
    assert a.weights_sha256() == b.weights_sha256()
    assert ScenePipeline.debug(seed=6).weights_sha256() != a.weights_sha256()
    state = torch.random.get_rng_state()
    ScenePipeline.debug(seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # building one leaves the caller's generator alone
